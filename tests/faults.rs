//! Faults and bad input, one test per case, through the real binary on temporary copies of tiny
//! synthetic data. Every case asserts: the exit status, a message that names the offending file or
//! config field, no panic, and no temporary or half-written file left in the output tree.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use common::*;

/// A dataset of `n` tiny sources and a config pointing at it (small variant set, size 48).
struct Case {
    _dir: tempfile::TempDir,
    root: PathBuf,
    data: PathBuf,
    config: PathBuf,
}

impl Case {
    fn new(n: usize) -> Case {
        Case::with_config(n, "")
    }

    fn with_config(n: usize, extra: &str) -> Case {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let data = root.join("data");
        tiny_dataset(&data, n, 64, 48);
        let config = write_config(&root, &data, extra);
        Case {
            _dir: dir,
            root,
            data,
            config,
        }
    }

    fn cfg(&self) -> &str {
        self.config.to_str().unwrap()
    }

    fn out(&self) -> PathBuf {
        self.root.join("out")
    }

    /// Replaces `from` (which must occur) by `to` in the config file.
    fn edit_config(&self, from: &str, to: &str) {
        let text = std::fs::read_to_string(&self.config).unwrap();
        assert!(text.contains(from), "config lacks {from}");
        std::fs::write(&self.config, text.replace(from, to)).unwrap();
    }

    fn generate(&self) -> Output {
        pipeline(&["generate", "--config", self.cfg()])
    }
}

fn write_config(root: &Path, data: &Path, extra: &str) -> PathBuf {
    let json = format!(
        r#"{{"name": "t", "seed": 3, "data": "{}", "out": "{}",
  "generate": {{"size": 48, "variants": {{"rotate": [90], "shrink": [], "shear_x": [], "shear_y": [],
    "distort": [0.02], "distort_sigma": 6, "elastic": [{{"alpha": 40, "sigma": 4}}],
    "lens": {{"centres": [[0.5, 0.5]]}}}}}},
  "model": {{"levels": 2, "base_filters": 4}},
  "train": {{"epochs": 1, "batch_size": 2, "preview_images": 1}}{extra}}}"#,
        data.display(),
        root.join("out").display()
    );
    config(root, "cfg", &json)
}

/// Non-zero exit, `needles` in stderr, no panic, no temporaries under `out`.
fn assert_fails(out: &Output, needles: &[&str], tree_root: &Path) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "expected failure; stderr: {stderr}");
    for n in needles {
        assert!(stderr.contains(n), "stderr lacks {n:?}:\n{stderr}");
    }
    assert_clean(out, tree_root);
}

/// No panic and no temporary files.
fn assert_clean(out: &Output, tree_root: &Path) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked at"), "panic:\n{stderr}");
    if tree_root.exists() {
        for e in walkdir::WalkDir::new(tree_root)
            .into_iter()
            .filter_map(Result::ok)
        {
            let name = e.file_name().to_string_lossy();
            assert!(
                !name.starts_with(".pipeline-tmp-") && !name.ends_with(".tmp"),
                "temporary file left: {}",
                e.path().display()
            );
        }
    }
}

fn image_path(c: &Case, stem: &str) -> PathBuf {
    c.data.join(IMAGES).join(format!("{stem}.png"))
}

fn truth_path(c: &Case, stem: &str) -> PathBuf {
    c.data.join(TRUTH).join(format!("{stem}.png"))
}

fn manifest_sources(c: &Case) -> usize {
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(c.out().join("t/manifest.json")).unwrap()).unwrap();
    m["sources"].as_array().unwrap().len()
}

#[test]
fn missing_dataset_root() {
    let c = Case::new(2);
    let out = pipeline(&[
        "generate",
        "--config",
        c.cfg(),
        "--data",
        "/nonexistent/ddb1",
    ]);
    assert_fails(&out, &["/nonexistent/ddb1", "does not exist"], &c.out());
}

#[test]
fn empty_image_folder() {
    let c = Case::new(2);
    for s in ["image001", "image002"] {
        std::fs::remove_file(image_path(&c, s)).unwrap();
    }
    assert_fails(
        &c.generate(),
        &[
            "no images (png, jpg, jpeg, tif, tiff, bmp) in",
            "ddb1_fundusimages",
        ],
        &c.out(),
    );
}

#[test]
fn image_without_ground_truth_fails_alone() {
    let c = Case::new(3);
    std::fs::remove_file(truth_path(&c, "image002")).unwrap();
    let out = c.generate();
    assert_fails(
        &out,
        &["image002", "has no ground truth", "1 source(s) failed"],
        &c.out(),
    );
    assert_eq!(out.status.code(), Some(2));
    // The good sources were still generated.
    assert_eq!(manifest_sources(&c), 2);
}

#[test]
fn ground_truth_without_image_fails_alone() {
    let c = Case::new(3);
    std::fs::remove_file(image_path(&c, "image003")).unwrap();
    let out = c.generate();
    assert_fails(&out, &["image003.png", "has no image"], &c.out());
    assert_eq!(manifest_sources(&c), 2);
}

#[test]
fn zero_byte_png() {
    let c = Case::new(2);
    std::fs::write(image_path(&c, "image001"), b"").unwrap();
    assert_fails(
        &c.generate(),
        &["image001.png", "empty (0 bytes)"],
        &c.out(),
    );
    assert_eq!(manifest_sources(&c), 1);
}

#[test]
fn truncated_png() {
    let c = Case::new(2);
    let p = truth_path(&c, "image002");
    let bytes = std::fs::read(&p).unwrap();
    std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
    assert_fails(
        &c.generate(),
        &["image002.png", "corrupt or truncated"],
        &c.out(),
    );
}

#[test]
fn text_file_named_png() {
    let c = Case::new(2);
    std::fs::write(image_path(&c, "image001"), "this is not a picture\n").unwrap();
    assert_fails(
        &c.generate(),
        &["image001.png", "not an image file"],
        &c.out(),
    );
}

#[test]
fn image_and_ground_truth_of_different_sizes() {
    let c = Case::new(2);
    image::GrayImage::new(30, 20)
        .save(truth_path(&c, "image001"))
        .unwrap();
    assert_fails(
        &c.generate(),
        &["image001.png", "is 64x48 but its ground truth", "30x20"],
        &c.out(),
    );
}

#[test]
fn stray_non_image_file_is_a_warning() {
    let c = Case::new(2);
    std::fs::write(c.data.join(IMAGES).join("Thumbs.db"), b"junk").unwrap();
    let out = c.generate();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("warning: ignoring non-image file") && stderr.contains("Thumbs.db"));
    assert_clean(&out, &c.out());
}

fn config_error(extra: &str, needles: &[&str]) {
    let c = Case::with_config(1, extra);
    let out = c.generate();
    let mut all = vec!["cfg.json"];
    all.extend_from_slice(needles);
    assert_fails(&out, &all, &c.out());
    assert!(!c.out().exists(), "output written despite a bad config");
}

#[test]
fn config_unknown_key() {
    config_error(
        r#", "stats": {"samples": 3}"#,
        &["unknown field `samples`", "stats"],
    );
}

#[test]
fn config_wrong_type() {
    config_error(
        r#", "stats": {"samples_per_split": "many"}"#,
        &["`stats.samples_per_split`", "invalid type"],
    );
}

#[test]
fn config_threshold_outside_0_1() {
    let c = Case::new(1);
    c.edit_config(r#""size": 48"#, r#""size": 48, "threshold": 1.2"#);
    assert_fails(&c.generate(), &["`generate.threshold`", "1.2"], &c.out());
}

#[test]
fn config_size_zero() {
    let c = Case::new(1);
    c.edit_config(r#""size": 48"#, r#""size": 0"#);
    assert_fails(&c.generate(), &["`generate.size`"], &c.out());
}

#[test]
fn config_split_ratios_not_summing_to_1() {
    config_error(
        r#", "split": {"train": 0.7, "valid": 0.1, "test": 0.1}"#,
        &["must sum to 1"],
    );
}

#[test]
fn config_negative_alpha() {
    let c = Case::new(1);
    c.edit_config(r#""alpha": 40"#, r#""alpha": -40"#);
    assert_fails(
        &c.generate(),
        &["`generate.variants.elastic[0].alpha`", ">= 0"],
        &c.out(),
    );
}

#[test]
fn config_non_finite_angle() {
    let c = Case::new(1);
    c.edit_config(r#""rotate": [90]"#, r#""rotate": [90, 1e999]"#);
    assert_fails(&c.generate(), &["generate.variants.rotate"], &c.out());
}

#[test]
fn output_folder_holding_a_different_run_is_refused_unless_forced() {
    let c = Case::new(2);
    assert!(c.generate().status.success());
    let before = tree(&c.out().join("t/master"));
    c.edit_config(r#""seed": 3"#, r#""seed": 4"#);
    let out = c.generate();
    assert_fails(&out, &["holds a different run", "--force"], &c.out());
    assert!(String::from_utf8_lossy(&out.stderr).contains(&c.out().join("t").display().to_string()));
    assert_eq!(
        tree(&c.out().join("t/master")),
        before,
        "the refused run touched the old one"
    );
    let out = pipeline(&["generate", "--config", c.cfg(), "--force"]);
    assert!(out.status.success());
    assert_ne!(tree(&c.out().join("t/master")), before);
}

#[test]
fn output_folder_not_writable() {
    // Root can write into read-only folders, so make the output root a regular file instead.
    let c = Case::new(1);
    std::fs::write(c.out(), b"a file, not a folder").unwrap();
    let out = c.generate();
    assert_fails(
        &out,
        &["cannot create output folder", "out"],
        &c.root.join("none"),
    );
}

/// `synth` writes a new tree only: into a folder that holds anything (a real dataset, an earlier
/// tree) it is refused and writes nothing; absurd sizes are refused before any allocation.
#[test]
fn synth_refuses_a_folder_that_is_not_empty_and_absurd_sizes() {
    let c = Case::new(2);
    let before = tree(&c.data);
    let o = pipeline(&["synth", "--out", c.data.to_str().unwrap(), "--count", "3"]);
    assert_fails(&o, &["is not empty", "nothing was written"], &c.data);
    assert!(tree(&c.data) == before, "synth changed an existing tree");
    let big = c.root.join("big");
    let o = pipeline(&[
        "synth",
        "--out",
        big.to_str().unwrap(),
        "--size",
        "100000x100000",
    ]);
    assert_fails(&o, &["within 32..=8192"], &c.root);
    assert!(!big.exists());
}

/// `synth` killed part-way leaves no tree that looks whole (`generate` refuses the folder), and
/// a rerun starts over and gives the bytes of an uninterrupted run.
#[test]
fn synth_killed_part_way_leaves_no_usable_tree_and_reruns() {
    let d = tempfile::tempdir().unwrap();
    let (killed, clean) = (d.path().join("killed"), d.path().join("clean"));
    let args = |out: &Path| {
        vec![
            "synth".to_string(),
            "--out".into(),
            out.display().to_string(),
            "--count".into(),
            "4".into(),
            "--size".into(),
            "64x48".into(),
        ]
    };
    let o = std::process::Command::new(pipeline_bin())
        .args(args(&killed))
        .env(fundus_pipeline::io::ABORT_ENV, "2")
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("synth: image written"));
    assert!(!killed.join("resources").exists());
    let cfg = write_config(d.path(), &killed, "");
    let o = pipeline(&["generate", "--config", cfg.to_str().unwrap()]);
    assert!(!o.status.success(), "generate used a half-written tree");
    let a: Vec<String> = args(&killed);
    pipeline_ok(&a.iter().map(String::as_str).collect::<Vec<_>>());
    let b: Vec<String> = args(&clean);
    pipeline_ok(&b.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(
        tree(&killed) == tree(&clean),
        "the rerun differs from a clean synth"
    );
}

/// A field-of-view mask path that is not a file is an error, as a corrupt mask is.
#[test]
fn field_of_view_mask_that_is_a_folder() {
    let c = Case::new(2);
    let fov = c.data.join("resources/images/ddb1_fundusmask/fmask.tif");
    let _ = std::fs::remove_file(&fov);
    std::fs::create_dir_all(&fov).unwrap();
    let out = c.generate();
    assert_fails(&out, &["fmask.tif", "not a readable file"], &c.out());
}

/// generate + split + a one-epoch tiny training run.
fn trained(c: &Case) {
    for cmd in ["generate", "split"] {
        pipeline_ok(&[cmd, "--config", c.cfg()]);
    }
    pipeline_ok(&["train", "--config", c.cfg(), "--device", "cpu"]);
}

#[test]
fn checkpoint_that_is_corrupt() {
    let c = Case::new(4);
    trained(&c);
    let best = c.out().join("t/train/epochs/0001/weights.safetensors");
    std::fs::write(&best, b"garbage").unwrap();
    let out = pipeline(&["evaluate", "--config", c.cfg(), "--device", "cpu"]);
    assert_fails(&out, &["epochs/0001/weights.safetensors"], &c.out());
}

/// A set regenerated (another seed) and split again after training: the checkpoint's training
/// data is no longer the run's, so scoring the test split is refused, naming both records.
#[test]
fn evaluate_refuses_a_checkpoint_trained_on_another_split() {
    let c = Case::new(4);
    trained(&c);
    c.edit_config(r#""seed": 3"#, r#""seed": 5"#);
    pipeline_ok(&["generate", "--config", c.cfg(), "--force"]);
    pipeline_ok(&["split", "--config", c.cfg()]);
    let out = pipeline(&["evaluate", "--config", c.cfg(), "--device", "cpu"]);
    assert_fails(
        &out,
        &["was trained on other data", "pipeline train", "t/train"],
        &c.out(),
    );
    // Retrained: scored.
    pipeline_ok(&["train", "--config", c.cfg(), "--device", "cpu"]);
    pipeline_ok(&["evaluate", "--config", c.cfg(), "--device", "cpu"]);
}

#[test]
fn checkpoint_from_another_model_shape() {
    let c = Case::new(4);
    trained(&c);
    c.edit_config(r#""base_filters": 4"#, r#""base_filters": 8"#);
    let out = pipeline(&["evaluate", "--config", c.cfg(), "--device", "cpu"]);
    assert_fails(&out, &["base_filters=4", "base_filters=8"], &c.out());
}

#[test]
fn infer_on_grayscale_and_rgba_images_converts_them() {
    let c = Case::new(4);
    trained(&c);
    let imgs = c.root.join("infer-in");
    std::fs::create_dir_all(&imgs).unwrap();
    let rgb = image::open(image_path(&c, "image001")).unwrap();
    rgb.to_luma8().save(imgs.join("gray.png")).unwrap();
    rgb.to_rgba8().save(imgs.join("rgba.png")).unwrap();
    let to = c.root.join("infer-out");
    let out = pipeline(&[
        "infer",
        "--config",
        c.cfg(),
        "--device",
        "cpu",
        "--images",
        imgs.to_str().unwrap(),
        "--infer-dir",
        to.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_clean(&out, &to);
    for stem in ["gray", "rgba"] {
        let m = image::open(to.join(format!("{stem}_mask.png"))).unwrap();
        assert_eq!((m.width(), m.height()), (64, 48), "{stem}");
    }
}

#[test]
fn killed_generation_resumes_to_the_same_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    tiny_dataset(&data, 40, 200, 150);
    let runs: Vec<PathBuf> = ["clean", "killed"]
        .iter()
        .map(|n| dir.path().join(n))
        .collect();
    let cfgs: Vec<PathBuf> = runs
        .iter()
        .map(|r| {
            std::fs::create_dir_all(r).unwrap();
            let json = format!(
                r#"{{"name": "t", "data": "{}", "out": "{}", "generate": {{"size": 128}}}}"#,
                data.display(),
                r.join("out").display()
            );
            config(r, "cfg", &json)
        })
        .collect();
    pipeline_ok(&["generate", "--config", cfgs[0].to_str().unwrap()]);

    // Start the same generation on one thread and kill -9 it part-way.
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_pipeline"))
        .args([
            "generate",
            "--config",
            cfgs[1].to_str().unwrap(),
            "--threads",
            "1",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let images = runs[1].join("out/t/staging/images");
    let start = std::time::Instant::now();
    loop {
        let n = std::fs::read_dir(&images).map(|d| d.count()).unwrap_or(0);
        if n >= 300 {
            break;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "generation ended before the kill"
        );
        assert!(
            start.elapsed().as_secs() < 120,
            "generation too slow to reach the kill point"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        !runs[1].join("out/t/manifest.json").exists(),
        "killed after the end"
    );

    let out = pipeline_ok(&[
        "generate",
        "--config",
        cfgs[1].to_str().unwrap(),
        "--resume",
    ]);
    assert!(out.contains("kept from the interrupted run"), "{out}");
    let a = std::fs::read(runs[0].join("out/t/manifest.json")).unwrap();
    let b = std::fs::read(runs[1].join("out/t/manifest.json")).unwrap();
    assert!(a == b, "resumed manifest differs from a clean run's");
    assert_eq!(
        tree(&runs[0].join("out/t/master")),
        tree(&runs[1].join("out/t/master"))
    );
    assert!(!runs[1].join("out/t/generate.journal").exists());
}

/// `pipeline generate | head -0`: the reader is gone before the first line. The process ends at
/// that line quietly (SIGPIPE, which a shell reports as status 141), with no panic message, and
/// the generation it had finished is complete (`verify` passes).
#[cfg(unix)]
#[test]
fn closed_stdout_ends_quietly() {
    use std::os::fd::FromRawFd;
    use std::os::unix::process::ExitStatusExt;
    let c = Case::new(2);
    let mut fds = [0; 2];
    // SAFETY: plain pipe(2)/close(2) on fresh descriptors; the write end is handed to Stdio,
    // which owns it from then on.
    let stdout = unsafe {
        assert_eq!(libc::pipe(fds.as_mut_ptr()), 0);
        libc::close(fds[0]);
        std::process::Stdio::from_raw_fd(fds[1])
    };
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pipeline"))
        .args(["generate", "--config", c.cfg()])
        .stdout(stdout)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGPIPE),
        "{:?} {err}",
        out.status
    );
    assert!(
        !err.contains("panicked") && !err.contains("Broken pipe"),
        "{err}"
    );
    let verified = pipeline_ok(&["verify", "--config", c.cfg()]);
    assert!(verified.contains("all match manifest.json"), "{verified}");
}
