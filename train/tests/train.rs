//! The training stage on tiny synthetic data (CPU, seconds): 32x32 images with bright red squares
//! as lesions, UNets of 2-3 levels and 4 base filters.

#[path = "../../tests/common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use fundus_pipeline::cli::DeviceChoice;
use fundus_pipeline::config::{Config, SplitMode};
use fundus_pipeline::manifest::{Manifest, SourceRecord, SplitInfo};
use fundus_pipeline::run_layout::Split;
use fundus_pipeline::train_config::ModelConfig;
use fundus_train::adam::Adam;
use fundus_train::checkpoint::{self, TrainState};
use fundus_train::data::{scan_split, Batch};
use fundus_train::metrics::soft_dice;
use fundus_train::metrics::{bce_dice_loss, Confusion};
use fundus_train::{evaluate_run, infer_run, probs_to_vec, train_run, Model};
use image::{GrayImage, Luma, Rgb, RgbImage};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tch::{Device, Kind};

const SIZE: u32 = 32;

/// libtorch's random generator is global to the process and the test harness runs tests on
/// parallel threads: every test that seeds it and draws from it (weights, dropout) holds this.
static TORCH_RNG: Mutex<()> = Mutex::new(());

fn torch_lock() -> MutexGuard<'static, ()> {
    TORCH_RNG.lock().unwrap_or_else(|e| e.into_inner())
}

fn tiny(levels: usize) -> ModelConfig {
    ModelConfig {
        levels,
        base_filters: 4,
        ..ModelConfig::default()
    }
}

/// A fundus-like picture: dark orange with noise, and a bright red square (the lesion) at (x, y).
fn picture(w: u32, h: u32, sq: (u32, u32, u32), rng: &mut ChaCha8Rng) -> (RgbImage, GrayImage) {
    let (sx, sy, side) = sq;
    let inside = |x: u32, y: u32| (sx..sx + side).contains(&x) && (sy..sy + side).contains(&y);
    let img = RgbImage::from_fn(w, h, |x, y| {
        if inside(x, y) {
            Rgb([240, 20, 20])
        } else {
            let n: u8 = rng.random_range(0..30);
            Rgb([90 + n, 50 + n / 2, 20])
        }
    });
    let mask = GrayImage::from_fn(w, h, |x, y| Luma([if inside(x, y) { 255 } else { 0 }]));
    (img, mask)
}

/// Writes `<run>/dataset/<split>/{images,masks}/s<i>_<variant>.png`.
fn write_split(run: &Path, split: &str, n: usize, seed: u64) {
    let dir = run.join("dataset").join(split);
    std::fs::create_dir_all(dir.join("images")).unwrap();
    std::fs::create_dir_all(dir.join("masks")).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    for i in 0..n {
        let side = rng.random_range(5..10);
        let sq = (
            rng.random_range(0..SIZE - side),
            rng.random_range(0..SIZE - side),
            side,
        );
        let (img, mask) = picture(SIZE, SIZE, sq, &mut rng);
        let variant = if split == "test" { "orig" } else { "rotate_20" };
        img.save(dir.join(format!("images/s{i:02}_{variant}.png")))
            .unwrap();
        mask.save(dir.join(format!("masks/s{i:02}_{variant}.png")))
            .unwrap();
    }
}

/// A config for `<tmp>/out/run` with a fresh dataset of 12 train, 4 valid, 3 test pairs.
fn setup(tmp: &Path) -> Config {
    let mut cfg = Config {
        name: "run".into(),
        seed: 7,
        out: tmp.join("out"),
        data: tmp.join("data"),
        model: tiny(3),
        ..Config::default()
    };
    cfg.generate.size = SIZE;
    cfg.train.epochs = 2;
    cfg.train.batch_size = 4;
    cfg.train.learning_rate = 1e-2;
    cfg.train.preview_images = 2;
    cfg.validate().unwrap();
    let run = cfg.run_dir();
    write_split(&run, "train", 12, 1);
    write_split(&run, "valid", 4, 2);
    write_split(&run, "test", 3, 3);
    write_manifest(&cfg, 3);
    cfg
}

/// The manifest of a split run whose test sources are `s00..` (`n` of them), recorded with the
/// DIARETDB1 paths relative to `data` (what `evaluate` and `infer` take their photographs from).
fn write_manifest(cfg: &Config, n: usize) {
    let stems: Vec<String> = (0..n).map(|i| format!("s{i:02}")).collect();
    let m = Manifest {
        schema: fundus_pipeline::manifest::SCHEMA.into(),
        sources: stems
            .iter()
            .map(|stem| SourceRecord {
                stem: stem.clone(),
                image: format!("resources/images/ddb1_fundusimages/{stem}.png"),
                truth: format!("resources/images/ddb1_groundtruth/hemorrhages/{stem}.png"),
                image_hash: String::new(),
                truth_hash: String::new(),
                pixel_hash: String::new(),
                truth_warnings: Vec::new(),
            })
            .collect(),
        // Readers check that the run was generated with this config's settings.
        generation_key: cfg.generation_key(),
        generation: fundus_pipeline::manifest::Generation::of(cfg),
        split: Some(SplitInfo {
            mode: SplitMode::BySource,
            ratios: [0.8, 0.15, 0.05],
            test_originals_only: true,
            sources: [("test".to_string(), stems)].into_iter().collect(),
        }),
        ..Manifest::default()
    };
    m.save(&cfg.layout()).unwrap();
}

fn read(path: PathBuf) -> String {
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn loss_decreases_over_steps_on_a_fixed_batch() {
    let _torch = torch_lock();
    let tmp = tempfile::tempdir().unwrap();
    let cfg = setup(tmp.path());
    let samples = scan_split(&cfg.layout(), Split::Train).unwrap();
    let refs: Vec<_> = samples.iter().take(4).collect();
    let (x, y) = Batch::load(&refs, SIZE).unwrap().tensors(Device::Cpu);
    tch::manual_seed(1);
    let net = Model::build(&tiny(2), Device::Cpu);
    let mut opt = Adam::new(&net.vs, 1e-2);
    let mut losses = Vec::new();
    for _ in 0..25 {
        opt.zero_grad();
        let (loss, _) = bce_dice_loss(&net.forward(&x, true, Kind::Float), &y);
        loss.backward();
        opt.step(0.5);
        losses.push(loss.double_value(&[]));
    }
    assert!(
        losses[24] < 0.8 * losses[0],
        "loss did not decrease: {losses:?}"
    );
}

/// Our Adam (clipping off) against libtorch's own `torch.optim.Adam` (tch's `nn::Adam`, same
/// defaults: betas 0.9/0.999, eps 1e-8, no weight decay) over 30 steps from the same weights on
/// the same batch: the weights stay equal to float rounding.
#[test]
fn adam_matches_libtorch_adam_over_30_steps() {
    use tch::nn::OptimizerConfig;
    let _torch = torch_lock();
    let tmp = tempfile::tempdir().unwrap();
    let cfg = setup(tmp.path());
    let samples = scan_split(&cfg.layout(), Split::Train).unwrap();
    let refs: Vec<_> = samples.iter().take(4).collect();
    let (x, y) = Batch::load(&refs, SIZE).unwrap().tensors(Device::Cpu);
    tch::manual_seed(3);
    let ours = Model::build(&tiny(2), Device::Cpu);
    let mut theirs = Model::build(&tiny(2), Device::Cpu);
    theirs.vs.copy(&ours.vs).unwrap();
    let lr = 1e-2;
    let mut adam = Adam::new(&ours.vs, lr);
    let mut torch_adam = tch::nn::Adam::default().build(&theirs.vs, lr).unwrap();
    for step in 0..30 {
        // Dropout off (train = false) so both see the same function.
        adam.zero_grad();
        bce_dice_loss(&ours.forward(&x, false, Kind::Float), &y)
            .0
            .backward();
        adam.step(0.0);
        let (loss, _) = bce_dice_loss(&theirs.forward(&x, false, Kind::Float), &y);
        torch_adam.backward_step(&loss);

        let a = ours.vs.variables();
        let b = theirs.vs.variables();
        let mut worst = 0f64;
        for (name, t) in &a {
            let diff = (t - &b[name]).abs().max().double_value(&[]);
            worst = worst.max(diff);
        }
        assert!(worst < 1e-5, "step {step}: weights differ by {worst}");
    }
    // And they moved: 30 steps of lr 1e-2 change the weights.
    tch::manual_seed(3);
    let start = Model::build(&tiny(2), Device::Cpu);
    let moved = (&ours.vs.variables()["head.weight"] - &start.vs.variables()["head.weight"])
        .abs()
        .max()
        .double_value(&[]);
    assert!(moved > 1e-3, "{moved}");
}

#[test]
fn training_writes_every_output_and_same_seed_gives_same_curve() {
    let _torch = torch_lock();
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = setup(tmp.path());
    let report = train_run(&cfg, DeviceChoice::Cpu, false).unwrap();
    assert_eq!(report.device, Device::Cpu);
    assert_eq!(report.history.len(), 2);
    let dir = cfg.run_dir().join("train");
    let pointer = checkpoint::read_pointer(&dir).unwrap().unwrap();
    assert_eq!((pointer.last, pointer.best), (2, report.best_epoch));
    for f in [
        "checkpoint.json",
        "epochs/0002/weights.safetensors",
        "epochs/0002/optimizer.safetensors",
        "epochs/0002/state.json",
        "train_curves.png",
        "Epoch_1_s00_rotate_20.jpg",
        "Epoch_2_s01_rotate_20.jpg",
    ] {
        assert!(dir.join(f).is_file(), "{f} missing");
    }
    let curves = image::open(dir.join("train_curves.png")).unwrap();
    assert_eq!((curves.width(), curves.height()), (1200, 450));
    let losses = read(dir.join("train_losses.csv"));
    let metrics = read(dir.join("train_metrics.csv"));
    assert!(losses.starts_with("epoch,loss,val_loss\n1,"), "{losses}");
    assert!(
        metrics.starts_with("epoch,dice_coef,val_dice_coef\n1,"),
        "{metrics}"
    );
    assert_eq!(losses.lines().count(), 3);
    let leftovers: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");

    // Same seed: the same curve, bit for bit (the run is replaced, not appended to).
    train_run(&cfg, DeviceChoice::Cpu, false).unwrap();
    assert_eq!(read(dir.join("train_losses.csv")), losses);
    assert_eq!(read(dir.join("train_metrics.csv")), metrics);
    // Another seed: another curve.
    cfg.seed = 8;
    train_run(&cfg, DeviceChoice::Cpu, false).unwrap();
    assert_ne!(read(dir.join("train_losses.csv")), losses);
}

#[test]
fn resume_continues_exactly_where_the_run_stopped() {
    let _torch = torch_lock();
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = setup(tmp.path());
    cfg.train.epochs = 3;
    cfg.train.preview_images = 0;
    let straight = train_run(&cfg, DeviceChoice::Cpu, false).unwrap();

    cfg.train.epochs = 1;
    train_run(&cfg, DeviceChoice::Cpu, false).unwrap();
    cfg.train.epochs = 3;
    let resumed = train_run(&cfg, DeviceChoice::Cpu, true).unwrap();
    assert_eq!(resumed.history.len(), 3);
    for (a, b) in straight.history.iter().zip(&resumed.history) {
        assert_eq!(a.epoch, b.epoch);
        assert!((a.loss - b.loss).abs() < 1e-6, "{a:?} vs {b:?}");
        assert!((a.val_loss - b.val_loss).abs() < 1e-6, "{a:?} vs {b:?}");
        assert_eq!(a.lr, b.lr);
    }
    let state: TrainState =
        checkpoint::read_state(&cfg.run_dir().join("train/epochs/0003/state.json")).unwrap();
    assert_eq!(state.epoch, 3);
    assert_eq!(state.optimizer_step, 9); // 3 epochs x 3 steps of 4
                                         // Nothing left to do: a second resume returns at once.
    let again = train_run(&cfg, DeviceChoice::Cpu, true).unwrap();
    assert_eq!(again.history.len(), 3);
}

#[test]
fn checkpoint_reload_gives_identical_predictions() {
    let _torch = torch_lock();
    let tmp = tempfile::tempdir().unwrap();
    let cfg = setup(tmp.path());
    let samples = scan_split(&cfg.layout(), Split::Valid).unwrap();
    let refs: Vec<_> = samples.iter().collect();
    let (x, _) = Batch::load(&refs, SIZE).unwrap().tensors(Device::Cpu);
    let model = tiny(3);

    tch::manual_seed(11);
    let net = Model::build(&model, Device::Cpu);
    let before = probs_to_vec(&net.predict(&x)).unwrap();
    let mut state = TrainState::fresh(&model, SIZE, 1e-3);
    state.epoch = 1;
    state.best_epoch = 1;
    state.best_val_loss = 1.0;
    checkpoint::commit_epoch(tmp.path(), &net.vs, &Adam::new(&net.vs, 1e-3), &state).unwrap();

    tch::manual_seed(12); // different initial weights, overwritten by the load
    let (net2, loaded) = Model::load(&model, SIZE, tmp.path(), "best", Device::Cpu).unwrap();
    assert_eq!(loaded, state);
    let after = probs_to_vec(&net2.predict(&x)).unwrap();
    assert_eq!(before, after);

    // Another image side than the checkpoint's.
    let err = Model::load(&model, 2 * SIZE, tmp.path(), "best", Device::Cpu).unwrap_err();
    assert!(format!("{err:#}").contains("32x32"), "{err:#}");

    // A checkpoint of another model shape: the error names both shapes.
    let err = Model::load(&tiny(2), SIZE, tmp.path(), "best", Device::Cpu).unwrap_err();
    let msg = format!("{err:#}");
    assert!(
        msg.contains("arch=unet, levels=3") && msg.contains("arch=unet, levels=2"),
        "{msg}"
    );
    // Without the JSON, the tensor shape check still catches it.
    let mut net4 = Model::build(&tiny(2), Device::Cpu);
    let err = checkpoint::load_weights(
        &mut net4.vs,
        &tmp.path().join("epochs/0001/weights.safetensors"),
        &tiny(2),
    )
    .unwrap_err();
    assert!(format!("{err:#}").contains("levels=2"), "{err:#}");

    // A checkpoint of an architecture this build does not know is refused, naming it.
    let json = tmp.path().join("epochs/0001/state.json");
    let text = read(json.clone());
    assert!(text.contains(r#""arch": "unet""#), "{text}");
    std::fs::write(
        &json,
        text.replace(r#""arch": "unet""#, r#""arch": "segformer""#),
    )
    .unwrap();
    let err = Model::load(&model, SIZE, tmp.path(), "best", Device::Cpu).unwrap_err();
    let msg = format!("{err:#}");
    assert!(
        msg.contains("segformer") && msg.contains("state.json"),
        "{msg}"
    );
}

#[test]
fn evaluate_scores_match_an_independent_forward_pass() {
    let _torch = torch_lock();
    // Hand computation on a known prediction: 2 TP, 1 FP, 1 FN -> Dice 4/6, IoU 2/4.
    let c = Confusion::from_probs(&[1.0, 0.9, 0.6, 0.0, 0.2], &[255, 255, 0, 255, 0], 0.5);
    assert_eq!((c.tp, c.fp, c.fn_, c.tn), (2, 1, 1, 1));
    assert_eq!(c.dice(), Some(4.0 / 6.0));
    assert_eq!(c.iou(), Some(0.5));

    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = setup(tmp.path());
    cfg.train.epochs = 1;
    cfg.train.preview_images = 0;
    train_run(&cfg, DeviceChoice::Cpu, false).unwrap();
    // evaluate scores the test pairs' source photographs at their own size: here the 32x32
    // test images themselves (so squaring and resizing are the identity), with ground-truth maps
    // at 252 where the mask is set (>= 189: lesion at the default threshold 0.75).
    let src = cfg.data.join("resources/images/ddb1_fundusimages");
    let gt = cfg
        .data
        .join("resources/images/ddb1_groundtruth/hemorrhages");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::create_dir_all(&gt).unwrap();
    for s in scan_split(&cfg.layout(), Split::Test).unwrap() {
        let stem = s.stem.strip_suffix("_orig").unwrap();
        std::fs::copy(&s.image, src.join(format!("{stem}.png"))).unwrap();
        let m = image::open(&s.mask).unwrap().to_luma8();
        GrayImage::from_fn(SIZE, SIZE, |x, y| {
            Luma([if m.get_pixel(x, y)[0] > 0 { 252 } else { 0 }])
        })
        .save(gt.join(format!("{stem}.png")))
        .unwrap();
    }
    cfg.infer.mode = fundus_pipeline::recipe_config::InferMode::Whole;
    let report = evaluate_run(&cfg, DeviceChoice::Cpu).unwrap();

    // The 3 test images in one tensor, through the best checkpoint, computed here without the
    // evaluation code: loss, soft Dice and thresholded counts per image.
    let (model, _) = Model::load(
        &cfg.model,
        SIZE,
        &cfg.run_dir().join("train"),
        "best",
        Device::Cpu,
    )
    .unwrap();
    let test = scan_split(&cfg.layout(), Split::Test).unwrap();
    let refs: Vec<_> = test.iter().collect();
    let batch = Batch::load(&refs, SIZE).unwrap();
    let (x, y) = batch.tensors(Device::Cpu);
    let logits = tch::no_grad(|| model.forward(&x, false, Kind::Float));
    let (loss, _) = bce_dice_loss(&logits, &y);
    let dice = soft_dice(&logits.sigmoid(), &y).double_value(&[]);
    let probs = probs_to_vec(&logits.sigmoid()).unwrap();
    let px = (SIZE * SIZE) as usize;
    let mut expected = Vec::new();
    for i in 0..3 {
        let (p, m) = (
            &probs[i * px..(i + 1) * px],
            &batch.masks[i * px..(i + 1) * px],
        );
        let tp = p
            .iter()
            .zip(m)
            .filter(|(p, m)| **p >= 0.5 && **m > 0)
            .count() as u64;
        let fp = p
            .iter()
            .zip(m)
            .filter(|(p, m)| **p >= 0.5 && **m == 0)
            .count() as u64;
        let fn_ = p
            .iter()
            .zip(m)
            .filter(|(p, m)| **p < 0.5 && **m > 0)
            .count() as u64;
        expected.push((tp, fp, fn_));
    }

    // evaluation.csv: the reference's two lines, values as computed above (batch size 4 > 3
    // images: one batch, so the batch mean is the mean).
    let eval = cfg.run_dir().join("eval");
    let csv = read(eval.join("evaluation.csv"));
    let rows: Vec<(&str, f64)> = csv
        .lines()
        .map(|l| {
            let (k, v) = l.split_once(',').unwrap();
            (k, v.parse().unwrap())
        })
        .collect();
    assert_eq!(rows.len(), 2, "{csv}");
    assert_eq!(rows[0].0, "loss");
    assert!((rows[0].1 - loss.double_value(&[])).abs() < 1e-6, "{csv}");
    assert_eq!(rows[1].0, "dice_coef");
    assert!((rows[1].1 - dice).abs() < 1e-6, "{csv}");

    let json: serde_json::Value =
        serde_json::from_str(&read(eval.join("evaluation.json"))).unwrap();
    let cases = json["metric_per_case"].as_array().unwrap();
    assert_eq!(cases.len(), 3);
    let (mut tp, mut fp, mut fn_) = (0, 0, 0);
    for (case, (etp, efp, efn)) in cases.iter().zip(&expected) {
        let m = &case["metrics"];
        let get = |k: &str| m[k].as_u64().unwrap();
        assert_eq!(
            (get("TP"), get("FP"), get("FN")),
            (*etp, *efp, *efn),
            "{case}"
        );
        assert_eq!(get("TP") + get("FP") + get("FN") + get("TN"), px as u64);
        assert_eq!(
            get("fov_pixels"),
            px as u64,
            "the pictures have no dark surround"
        );
        tp += etp;
        fp += efp;
        fn_ += efn;
    }
    assert_eq!(json["pooled"]["TP"].as_u64().unwrap(), tp);
    assert_eq!(json["pooled"]["FP"].as_u64().unwrap(), fp);
    assert_eq!(json["pooled"]["FN"].as_u64().unwrap(), fn_);
    assert_eq!(serde_json::to_value(&report.summary).unwrap(), json);
    assert_eq!(json["choices"]["threshold"].as_f64(), Some(0.5));
    assert_eq!(json["choices"]["inference"]["mode"].as_str(), Some("whole"));
    assert_eq!(json["model"]["arch"].as_str(), Some("unet"));
}

#[test]
fn trained_model_finds_red_squares_at_the_original_size() {
    let _torch = torch_lock();
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = setup(tmp.path());
    cfg.model = ModelConfig {
        base_filters: 8,
        ..tiny(2)
    };
    // A thin net at lr 1e-2 tends to collapse to "all background"; 1e-3 learns steadily.
    cfg.train.learning_rate = 2e-3;
    cfg.train.epochs = 20;
    cfg.train.preview_images = 0;
    cfg.train.early_stopping_patience = 0;
    write_split(&cfg.run_dir(), "train", 24, 11);
    let report = train_run(&cfg, DeviceChoice::Cpu, false).unwrap();
    assert!(report.best_val_loss < 0.4, "{:?}", report.history.last());

    // Full-size inputs of other shapes and colour types: RGB 96x64, gray 50x70.
    let inputs = tmp.path().join("inputs");
    std::fs::create_dir_all(&inputs).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let (img, truth) = picture(96, 64, (60, 20, 18), &mut rng);
    img.save(inputs.join("wide.png")).unwrap();
    image::DynamicImage::ImageRgb8(picture(50, 70, (10, 10, 12), &mut rng).0)
        .to_luma8()
        .save(inputs.join("gray.png"))
        .unwrap();
    let out = tmp.path().join("masks");
    let written = infer_run(&cfg, DeviceChoice::Cpu, Some(&inputs), Some(&out)).unwrap();
    assert_eq!(written.len(), 2);
    let gray = image::open(&written[0].mask).unwrap();
    assert_eq!((gray.width(), gray.height()), (50, 70));
    let wide = image::open(&written[1].mask).unwrap().to_luma8();
    assert_eq!(wide.dimensions(), (96, 64));
    for f in [&written[1].green, &written[1].overlay] {
        let i = image::open(f).unwrap();
        assert_eq!((i.width(), i.height()), (96, 64));
    }
    let c = Confusion::from_probs(
        &wide
            .pixels()
            .map(|p| f32::from(p[0]) / 255.0)
            .collect::<Vec<_>>(),
        truth.as_raw(),
        0.5,
    );
    assert!(
        c.dice().unwrap() > 0.6,
        "prediction misplaced or missing: {c:?}"
    );
}

#[test]
fn infer_defaults_to_the_test_split_sources() {
    let _torch = torch_lock();
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = setup(tmp.path());
    cfg.train.epochs = 1;
    cfg.train.preview_images = 0;
    train_run(&cfg, DeviceChoice::Cpu, false).unwrap();
    // Test pairs s00_orig..s02_orig -> <data>/resources/images/ddb1_fundusimages/s0N.png
    let err = infer_run(&cfg, DeviceChoice::Cpu, None, None).unwrap_err();
    assert!(format!("{err:#}").contains("s00.png"), "{err:#}");
    let src = cfg.data.join("resources/images/ddb1_fundusimages");
    std::fs::create_dir_all(&src).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    for i in 0..3 {
        picture(75, 57, (30, 20, 8), &mut rng)
            .0
            .save(src.join(format!("s{i:02}.png")))
            .unwrap();
    }
    let written = infer_run(&cfg, DeviceChoice::Cpu, None, None).unwrap();
    assert_eq!(written.len(), 3);
    assert!(
        written[2].mask.ends_with("infer/s02_mask.png"),
        "{:?}",
        written[2].mask
    );
    assert_eq!(image::open(&written[0].mask).unwrap().width(), 75);
}

#[test]
fn infer_reports_no_lesion_outside_the_fov_when_trained_inside_it() {
    let _torch = torch_lock();
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = setup(tmp.path());
    cfg.train.epochs = 1;
    cfg.train.preview_images = 0;
    cfg.train.loss_in_fov = true;
    train_run(&cfg, DeviceChoice::Cpu, false).unwrap();
    // A photograph whose left 20 columns are black (outside the field of view); at threshold 0
    // every pixel is a lesion candidate, so the mask is exactly what is allowed.
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    let (mut img, _) = picture(60, 40, (30, 10, 8), &mut rng);
    for y in 0..40 {
        for x in 0..20 {
            img.put_pixel(x, y, Rgb([0, 0, 0]));
        }
    }
    let dir = tmp.path().join("photos");
    std::fs::create_dir_all(&dir).unwrap();
    img.save(dir.join("p.png")).unwrap();
    cfg.infer.threshold = 0.0;
    let mask_of = |cfg: &Config, out: &str| {
        let w = infer_run(
            cfg,
            DeviceChoice::Cpu,
            Some(&dir),
            Some(&tmp.path().join(out)),
        )
        .unwrap();
        image::open(&w[0].mask).unwrap().to_luma8()
    };
    let m = mask_of(&cfg, "in_fov");
    for (x, y, v) in m.enumerate_pixels() {
        assert_eq!(v[0], if x < 20 { 0 } else { 255 }, "({x}, {y})");
    }
    // Trained with every pixel in the loss, a network may report lesions anywhere.
    cfg.train.loss_in_fov = false;
    train_run(&cfg, DeviceChoice::Cpu, false).unwrap();
    let m = mask_of(&cfg, "everywhere");
    assert!(m.pixels().all(|v| v[0] == 255));
}

#[test]
fn evaluate_and_infer_refuse_other_input_settings_than_training() {
    let _torch = torch_lock();
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = setup(tmp.path());
    cfg.train.epochs = 1;
    cfg.train.preview_images = 0;
    cfg.train.input_norm = Some(fundus_pipeline::recipe_config::InputNorm {
        mean: [0.0; 3],
        std: [0.1; 3],
        local_contrast_sigma: Some(2.0),
    });
    train_run(&cfg, DeviceChoice::Cpu, false).unwrap();
    let dir = tmp.path().join("photos");
    std::fs::create_dir_all(&dir).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    picture(40, 40, (10, 10, 8), &mut rng)
        .0
        .save(dir.join("p.png"))
        .unwrap();
    // Same settings: fine.
    infer_run(&cfg, DeviceChoice::Cpu, Some(&dir), None).unwrap();
    // Another input transform, or another FOV rule: refused, naming both.
    let mut other = cfg.clone();
    other.train.input_norm = None;
    let err = format!(
        "{:#}",
        infer_run(&other, DeviceChoice::Cpu, Some(&dir), None).unwrap_err()
    );
    assert!(
        err.contains("was trained with train {input_norm {")
            && err.contains("\"local_contrast_sigma\":2.0")
            && err.contains("but the config says train {input_norm null, loss_in_fov false}"),
        "{err}"
    );
    let mut other = cfg.clone();
    other.train.loss_in_fov = true;
    let err = format!("{:#}", evaluate_run(&other, DeviceChoice::Cpu).unwrap_err());
    assert!(err.contains("loss_in_fov true"), "{err}");
    let err = format!(
        "{:#}",
        train_run(&other, DeviceChoice::Cpu, true).unwrap_err()
    );
    assert!(
        err.contains("--resume") && err.contains("loss_in_fov"),
        "{err}"
    );
}

#[test]
fn bad_inputs_give_errors_that_name_the_problem() {
    let _torch = torch_lock();
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = setup(tmp.path());
    cfg.train.epochs = 1;
    cfg.train.preview_images = 0;
    let run = cfg.run_dir();
    let msg = |cfg: &Config| {
        format!(
            "{:#}",
            train_run(cfg, DeviceChoice::Cpu, false).unwrap_err()
        )
    };

    // Resume with nothing saved yet: a fresh start.
    let fresh = train_run(&cfg, DeviceChoice::Cpu, true).unwrap();
    assert_eq!(fresh.history.len(), 1);

    // Missing split folder.
    std::fs::rename(run.join("dataset/valid"), tmp.path().join("valid")).unwrap();
    let err = msg(&cfg);
    assert!(
        err.contains("dataset/valid/images") && err.contains("missing split folder"),
        "{err}"
    );
    std::fs::rename(tmp.path().join("valid"), run.join("dataset/valid")).unwrap();

    // Mismatched names: an image without a mask and a mask without an image.
    let masks = run.join("dataset/train/masks");
    std::fs::rename(
        masks.join("s03_rotate_20.png"),
        masks.join("s03_rotate_40.png"),
    )
    .unwrap();
    let err = msg(&cfg);
    assert!(
        err.contains("s03_rotate_20.png") && err.contains("s03_rotate_40.png"),
        "{err}"
    );
    std::fs::rename(
        masks.join("s03_rotate_40.png"),
        masks.join("s03_rotate_20.png"),
    )
    .unwrap();

    // Corrupt image.
    let bad = run.join("dataset/train/images/s05_rotate_20.png");
    let good = std::fs::read(&bad).unwrap();
    std::fs::write(&bad, b"not a png").unwrap();
    let err = msg(&cfg);
    assert!(
        err.contains("s05_rotate_20.png")
            && (err.contains("not an image") || err.contains("corrupt")),
        "{err}"
    );
    std::fs::write(&bad, good).unwrap();

    // A diverging run stops with a clear message instead of writing NaN weights.
    let mut wild = cfg.clone();
    wild.train.learning_rate = 1e30;
    wild.train.epochs = 3;
    let err = msg(&wild);
    assert!(
        err.contains("training stopped: the") && err.contains("loss became"),
        "{err}"
    );
    assert!(!run.join("train/checkpoint.json").exists());
    assert!(!run.join("train/epochs").exists());

    // Image size that does not fit the model.
    let mut odd = cfg.clone();
    odd.generate.size = 30;
    assert!(msg(&odd).contains("`generate.size` (30)"));

    // Evaluate before training.
    let err = format!("{:#}", evaluate_run(&cfg, DeviceChoice::Cpu).unwrap_err());
    assert!(
        err.contains("checkpoint.json") && err.contains("pipeline train"),
        "{err}"
    );

    // A checkpoint from another model config.
    train_run(&cfg, DeviceChoice::Cpu, false).unwrap();
    let mut other = cfg.clone();
    other.model = tiny(2);
    let err = format!("{:#}", evaluate_run(&other, DeviceChoice::Cpu).unwrap_err());
    assert!(
        err.contains("levels=3") && err.contains("levels=2"),
        "{err}"
    );
    let err = format!(
        "{:#}",
        train_run(&other, DeviceChoice::Cpu, true).unwrap_err()
    );
    assert!(
        err.contains("levels=3") && err.contains("levels=2"),
        "{err}"
    );

    // An output folder that cannot be created (its parent is a file; refused even for root).
    let blocker = tmp.path().join("blocker");
    std::fs::write(&blocker, b"a file").unwrap();
    let inputs = run.join("dataset/test/images");
    let err = format!(
        "{:#}",
        infer_run(
            &cfg,
            DeviceChoice::Cpu,
            Some(&inputs),
            Some(&blocker.join("out"))
        )
        .unwrap_err()
    );
    assert!(err.contains("blocker/out"), "{err}");
}

#[test]
fn cuda_request_uses_the_gpu_or_is_a_clear_error() {
    let _torch = torch_lock();
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = setup(tmp.path());
    cfg.train.epochs = 1;
    cfg.train.preview_images = 0;
    let result = train_run(&cfg, DeviceChoice::Cuda, false);
    let gpu = fundus_train::device::load_cuda_backend().is_ok() && tch::Cuda::is_available();
    match result {
        Ok(report) => {
            assert!(gpu, "trained with --device cuda although no GPU is visible");
            assert_eq!(report.device, Device::Cuda(0));
        }
        Err(err) => {
            assert!(!gpu, "a GPU is visible but training failed: {err:#}");
            assert!(
                format!("{err:#}").contains("CUDA is not available"),
                "{err:#}"
            );
        }
    }
}

/// `--out` is the output root on every training command; `infer --infer-dir` is infer's folder.
#[test]
fn infer_out_is_the_output_root_and_infer_dir_its_folder() {
    let _torch = torch_lock();
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = setup(tmp.path());
    cfg.train.epochs = 1;
    cfg.train.preview_images = 0;
    train_run(&cfg, DeviceChoice::Cpu, false).unwrap();
    // The config names another root; --out points at the real one.
    let real_root = cfg.out.clone();
    cfg.out = tmp.path().join("elsewhere");
    let file = common::config(tmp.path(), "cfg", &serde_json::to_string(&cfg).unwrap());
    let (file, root) = (file.to_str().unwrap(), real_root.to_str().unwrap());
    let inputs = real_root.join("run/dataset/test/images");
    let inputs = inputs.to_str().unwrap();
    common::pipeline_ok(&[
        "infer", "-c", file, "--out", root, "--device", "cpu", "--images", inputs,
    ]);
    assert!(real_root.join("run/infer/s00_orig_mask.png").is_file());
    let dir = tmp.path().join("masks");
    let args = [
        "--device",
        "cpu",
        "--images",
        inputs,
        "--infer-dir",
        dir.to_str().unwrap(),
    ];
    common::pipeline_ok(&[&["infer", "-c", file, "--out", root][..], &args].concat());
    assert!(dir.join("s02_orig_overlay.png").is_file());
    // evaluate scores photographs with their ground truth: here the test pairs themselves.
    let truth = real_root.join("run/dataset/test/masks");
    common::pipeline_ok(&[
        "evaluate",
        "-c",
        file,
        "--out",
        root,
        "--device",
        "cpu",
        "--images",
        inputs,
        "--truth",
        truth.to_str().unwrap(),
    ]);
    assert!(real_root.join("run/eval/evaluation.json").is_file());
    assert!(!tmp.path().join("elsewhere").exists());
}

/// A `generate.size` the network cannot take stops `pipeline all` before anything is written,
/// naming the config file and both fields; `--no-train` does not need the check.
#[test]
fn all_with_a_size_the_model_cannot_take_fails_before_generating() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    common::tiny_dataset(&data, 3, 60, 40);
    let out = tmp.path().join("out");
    let json = format!(
        r#"{{"name": "t", "data": "{}", "out": "{}", "generate": {{"size": 48, "variants": {{"rotate": []}}}}}}"#,
        data.display(),
        out.display()
    );
    let file = common::config(tmp.path(), "cfg", &json);
    let file = file.to_str().unwrap();
    let run = common::pipeline(&["all", "-c", file, "--device", "cpu"]);
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success());
    assert!(
        err.contains("cfg.json")
            && err.contains("`generate.size` (48)")
            && err.contains("`model.levels` 8"),
        "{err}"
    );
    assert!(!out.exists(), "all wrote before failing");
    common::pipeline_ok(&["all", "-c", file, "--no-train"]);
    assert!(out.join("t/dataset/train").is_dir());
}

/// An official list without test images (every photograph in training, as when training on
/// DIARETDB1's training list only): `all` trains and says evaluate and infer were skipped,
/// instead of failing on the empty test split.
#[test]
fn all_with_an_empty_test_list_trains_and_skips_evaluate_and_infer() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    common::tiny_dataset(&data, 4, 60, 40);
    let lists = data.join("resources");
    let all: String = (1..=4)
        .map(|i| format!("images/ddb1_fundusimages/image{i:03}.png\n"))
        .collect();
    std::fs::write(lists.join("traindatasets/trainset.txt"), all).unwrap();
    std::fs::write(lists.join("testdatasets/testset.txt"), "").unwrap();
    let out = tmp.path().join("out");
    let json = format!(
        r#"{{"name": "t", "data": "{}", "out": "{}",
  "generate": {{"size": 32, "variants": {{"vflip": false, "rotate": [], "shrink": [], "shear_x": [],
    "shear_y": [], "elastic": [], "distort": [], "lens": {{"barrel": false, "pincushion": false}}}}}},
  "split": {{"mode": "official", "train": 0.75, "valid": 0.25, "test": 0.0}},
  "model": {{"levels": 2, "base_filters": 4}},
  "train": {{"epochs": 1, "batch_size": 2, "preview_images": 0}}}}"#,
        data.display(),
        out.display()
    );
    let file = common::config(tmp.path(), "cfg", &json);
    let log = common::pipeline_ok(&["all", "-c", file.to_str().unwrap(), "--device", "cpu"]);
    assert!(
        log.contains("evaluate: skipped, the test split is empty")
            && log.contains("infer: skipped, the test split is empty"),
        "{log}"
    );
    assert!(out.join("t/train/checkpoint.json").is_file());
    assert!(!out.join("t/eval").exists() && !out.join("t/infer").exists());
}

/// `-h` of train, evaluate, infer and all: every option has a description.
#[test]
fn every_option_of_the_training_commands_has_help() {
    for cmd in ["train", "evaluate", "infer", "all"] {
        let help = common::pipeline_ok(&[cmd, "-h"]);
        let lines: Vec<&str> = help.lines().collect();
        let mut options = 0;
        for (i, line) in lines.iter().enumerate() {
            let t = line.trim_start();
            if !t.starts_with('-') {
                continue;
            }
            options += 1;
            // "  -c, --config <CONFIG>  Run configuration", or the text on the next line.
            let same_line = t
                .split_once("  ")
                .is_some_and(|(_, d)| !d.trim().is_empty());
            let next_line = lines
                .get(i + 1)
                .is_some_and(|n| !n.trim().is_empty() && !n.trim_start().starts_with('-'));
            assert!(
                same_line || next_line,
                "`pipeline {cmd}`: no help for {t:?}\n{help}"
            );
        }
        assert!(options >= 3, "{help}");
    }
}
