//! The training loop: Adam + gradient value clip, reduce-on-plateau and early stopping on the
//! validation loss, best/last checkpoints, CSVs, curves and per-epoch previews.

use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rand::seq::SliceRandom;
use rand::RngCore;
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

use super::adam::Adam;
use super::checkpoint::{self, EpochRow, TrainState};
use super::data::{scan_split, Batch, Loader, Sample};
use super::metrics::bce_dice_loss;
use super::unet::{param_count, UNet};
use super::{check_size, device, io, plot, probs_to_vec};
use crate::cli::DeviceChoice;
use crate::config::Config;
use crate::io::{encode_jpeg_rgb, encode_png_rgb, write_atomic};
use crate::rng::rng_for;

/// What a training run did (the files hold the same; tests read this).
#[derive(Debug, Clone)]
pub struct TrainReport {
    pub device: Device,
    /// Every finished epoch, including those of earlier runs continued with `--resume`.
    pub history: Vec<EpochRow>,
    pub best_epoch: usize,
    pub best_val_loss: f64,
    pub stopped_early: bool,
}

impl TrainReport {
    fn from_state(device: Device, st: &TrainState) -> Self {
        Self {
            device,
            history: st.history.clone(),
            best_epoch: st.best_epoch,
            best_val_loss: st.best_val_loss,
            stopped_early: st.stopped_early,
        }
    }
}

/// The torch seed of an epoch: re-seeding per epoch makes dropout masks the same whether a run
/// went straight through or was resumed.
fn torch_seed(seed: u64, epoch: usize) -> i64 {
    (rng_for(seed, "train", &format!("torch{epoch}")).next_u64() >> 1) as i64
}

/// Trains `cfg.model` on `<run>/dataset/{train,valid}` and writes `<run>/train/`.
pub fn train_run(cfg: &Config, choice: DeviceChoice, resume: bool) -> Result<TrainReport> {
    let t = &cfg.train;
    let device = device::select(choice)?;
    println!("train: device {}", device::describe(device));
    let size = cfg.generate.size;
    check_size(&cfg.model, size)?;
    let run = cfg.run_dir();
    let train = scan_split(&run, "train")?;
    let valid = scan_split(&run, "valid")?;
    let out = run.join("train");
    io::create_dir(&out)?;

    tch::manual_seed(cfg.seed as i64);
    let mut vs = VarStore::new(device);
    let unet = UNet::new(&vs.root(), &cfg.model);
    let mut opt = Adam::new(&vs, t.learning_rate);
    let compute = if t.mixed_precision && device.is_cuda() {
        Kind::BFloat16
    } else {
        if t.mixed_precision {
            println!("train: `train.mixed_precision` applies on CUDA only; training in fp32");
        }
        Kind::Float
    };
    println!(
        "train: model {{{}}}, {} parameters, {}x{} images, {} train / {} valid pairs, batch {}, {}",
        cfg.model.describe(),
        param_count(&cfg.model),
        size,
        size,
        train.len(),
        valid.len(),
        t.batch_size,
        if compute == Kind::BFloat16 {
            "bf16 mixed precision"
        } else {
            "fp32"
        }
    );

    let mut st = if resume {
        let (_, json) = checkpoint::paths(&out, "last");
        if !json.is_file() {
            bail!(
                "--resume: no checkpoint state at {} (train without --resume first)",
                json.display()
            );
        }
        let st = checkpoint::load(&out, "last", &mut vs, &cfg.model)?;
        if st.size != size {
            bail!(
                "--resume: checkpoint {} was trained on {}x{} images, `generate.size` is {size}",
                json.display(),
                st.size,
                st.size
            );
        }
        opt.load(&checkpoint::optim_path(&out), st.optimizer_step)?;
        opt.lr = st.lr;
        println!(
            "train: resuming after epoch {} (lr {:.3e}, best val_loss {:.4} at epoch {})",
            st.epoch, st.lr, st.best_val_loss, st.best_epoch
        );
        st
    } else {
        remove_previous_run(&out)?;
        TrainState {
            format: checkpoint::FORMAT.to_string(),
            model: cfg.model.clone(),
            size,
            epoch: 0,
            optimizer_step: 0,
            lr: t.learning_rate,
            best_val_loss: f64::INFINITY,
            best_epoch: 0,
            epochs_without_improvement: 0,
            plateau_wait: 0,
            stopped_early: false,
            history: Vec::new(),
        }
    };
    if st.stopped_early {
        println!(
            "train: the run stopped early at epoch {}; nothing to resume",
            st.epoch
        );
        return Ok(TrainReport::from_state(device, &st));
    }
    if st.epoch >= t.epochs {
        println!(
            "train: already trained {} epochs (`train.epochs` = {}); nothing to do",
            st.epoch, t.epochs
        );
        return Ok(TrainReport::from_state(device, &st));
    }

    let preview: Vec<&Sample> = valid.iter().take(t.preview_images).collect();
    let preview = if preview.is_empty() {
        None
    } else {
        Some(Batch::load(&preview, size)?)
    };

    for epoch in st.epoch + 1..=t.epochs {
        tch::manual_seed(torch_seed(cfg.seed, epoch));
        let mut order: Vec<usize> = (0..train.len()).collect();
        order.shuffle(&mut rng_for(cfg.seed, "train", &format!("epoch{epoch}")));
        let mut steps = train.len().div_ceil(t.batch_size);
        if let Some(max) = t.max_steps_per_epoch {
            steps = steps.min(max);
        }
        order.truncate((steps * t.batch_size).min(order.len()));

        let lr = opt.lr;
        let bar = progress(steps, &format!("epoch {epoch}/{}", t.epochs));
        let started = Instant::now();
        let (mut sum_loss, mut sum_dice, mut seen) = (0.0, 0.0, 0usize);
        let mut after_first: Option<(Instant, usize)> = None;
        for batch in Loader::new(&train, &order, t.batch_size, size) {
            let batch = batch?;
            let (x, y) = batch.tensors(device);
            opt.zero_grad();
            let (loss, dice) = bce_dice_loss(&unet.forward(&x, true, compute), &y);
            loss.backward();
            let (lv, dv) = (loss.double_value(&[]), dice.double_value(&[]));
            if !lv.is_finite() {
                bar.abandon();
                bail!(
                    "training stopped: the loss became {lv} at epoch {epoch}, step {} (lr {lr:.3e}); {}",
                    seen / t.batch_size + 1,
                    last_good(&out, &st)
                );
            }
            opt.step(t.clip_value);
            let n = batch.len();
            sum_loss += lv * n as f64;
            sum_dice += dv * n as f64;
            seen += n;
            after_first.get_or_insert((Instant::now(), seen));
            bar.inc(1);
            bar.set_message(format!(
                "loss {:.4} dice {:.4}",
                sum_loss / seen as f64,
                sum_dice / seen as f64
            ));
        }
        bar.finish_and_clear();
        let train_secs = started.elapsed().as_secs_f64();
        let images_per_s = match after_first {
            Some((t0, n0)) if seen > n0 => (seen - n0) as f64 / t0.elapsed().as_secs_f64(),
            _ => seen as f64 / train_secs,
        };
        let (val_loss, val_dice) =
            loss_and_dice(&unet, &valid, t.batch_size, size, device, t.max_valid_steps)?;
        if !val_loss.is_finite() {
            bail!(
                "training stopped: the validation loss became {val_loss} at epoch {epoch} (lr {lr:.3e}); {}",
                last_good(&out, &st)
            );
        }

        let before = opt.lr;
        let improved = st.after_validation(epoch, val_loss, t);
        if st.lr < before {
            println!(
                "train: val_loss has not improved for {} epochs: lr {before:.3e} -> {:.3e}",
                t.reduce_lr_patience, st.lr
            );
        }
        opt.lr = st.lr;
        st.epoch = epoch;
        st.optimizer_step = opt.step;
        st.history.push(EpochRow {
            epoch,
            loss: sum_loss / seen as f64,
            val_loss,
            dice_coef: sum_dice / seen as f64,
            val_dice_coef: val_dice,
            lr,
            seconds: started.elapsed().as_secs_f64(),
            images_per_s,
        });

        if improved {
            checkpoint::save(&out, "best", &vs, &st)?;
        }
        crate::io::write_atomic_with(&checkpoint::optim_path(&out), |tmp| opt.save(tmp))?;
        checkpoint::save(&out, "last", &vs, &st)?;
        write_csvs(&out, &st.history)?;
        let curves = plot::curves(&st.history)?;
        write_atomic(&out.join("train_curves.png"), &encode_png_rgb(&curves)?)?;
        if let Some(p) = &preview {
            write_previews(&out, epoch, &unet, p, device)?;
        }
        let row = st.history.last().expect("just pushed");
        println!(
            "epoch {epoch}/{}: loss {:.4} dice_coef {:.4} val_loss {:.4} val_dice_coef {:.4} lr {lr:.3e} \
             {:.1}s {:.2} images/s{}",
            t.epochs,
            row.loss,
            row.dice_coef,
            row.val_loss,
            row.val_dice_coef,
            row.seconds,
            row.images_per_s,
            if improved { " (best)" } else { "" }
        );
        if st.stopped_early {
            println!(
                "train: early stop: val_loss has not improved for {} epochs",
                st.epochs_without_improvement
            );
            break;
        }
    }
    println!(
        "train: best val_loss {:.4} at epoch {}; outputs in {}",
        st.best_val_loss,
        st.best_epoch,
        out.display()
    );
    Ok(TrainReport::from_state(device, &st))
}

/// Where the last checkpoint written before a failure is (nothing after it was saved).
fn last_good(out: &Path, st: &TrainState) -> String {
    if st.epoch > 0 {
        format!(
            "the last good checkpoint is {} (epoch {}); try a lower `train.learning_rate`",
            checkpoint::paths(out, "last").0.display(),
            st.epoch
        )
    } else {
        "no checkpoint was written yet; try a lower `train.learning_rate`".to_string()
    }
}

/// A fresh run replaces the outputs of an earlier one, so no stale checkpoint outlives it.
fn remove_previous_run(out: &Path) -> Result<()> {
    for entry in std::fs::read_dir(out).with_context(|| format!("cannot read {}", out.display()))? {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let ours = matches!(
            name,
            "best.safetensors"
                | "best.json"
                | "last.safetensors"
                | "last.json"
                | "last.optim.safetensors"
                | "train_losses.csv"
                | "train_metrics.csv"
                | "train_curves.png"
        ) || (name.starts_with("Epoch_") && name.ends_with(".jpg"));
        if ours {
            std::fs::remove_file(&path)
                .with_context(|| format!("cannot remove {}", path.display()))?;
        }
    }
    Ok(())
}

fn progress(steps: usize, prefix: &str) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(steps as u64), ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template(
            "{prefix} [{bar:30}] {pos}/{len} {elapsed_precise}<{eta_precise} {msg}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    bar.set_prefix(prefix.to_string());
    bar
}

/// Mean loss and soft Dice over `samples` (batch means weighted by batch size, as Keras
/// reports them), dropout off, fp32.
pub fn loss_and_dice(
    unet: &UNet,
    samples: &[Sample],
    batch_size: usize,
    size: u32,
    device: Device,
    max_steps: Option<usize>,
) -> Result<(f64, f64)> {
    let mut order: Vec<usize> = (0..samples.len()).collect();
    if let Some(max) = max_steps {
        order.truncate(max * batch_size);
    }
    let (mut sl, mut sd, mut n) = (0.0, 0.0, 0usize);
    for batch in Loader::new(samples, &order, batch_size, size) {
        let batch = batch?;
        let (x, y) = batch.tensors(device);
        let (loss, dice) =
            tch::no_grad(|| bce_dice_loss(&unet.forward(&x, false, Kind::Float), &y));
        sl += loss.double_value(&[]) * batch.len() as f64;
        sd += dice.double_value(&[]) * batch.len() as f64;
        n += batch.len();
    }
    Ok((sl / n as f64, sd / n as f64))
}

fn write_csvs(out: &Path, rows: &[EpochRow]) -> Result<()> {
    let mut losses = String::from("epoch,loss,val_loss\n");
    let mut metrics = String::from("epoch,dice_coef,val_dice_coef\n");
    for r in rows {
        losses.push_str(&format!("{},{},{}\n", r.epoch, r.loss, r.val_loss));
        metrics.push_str(&format!(
            "{},{},{}\n",
            r.epoch, r.dice_coef, r.val_dice_coef
        ));
    }
    write_atomic(&out.join("train_losses.csv"), losses.as_bytes())?;
    write_atomic(&out.join("train_metrics.csv"), metrics.as_bytes())
}

/// `Epoch_<e>_<stem>.jpg`: input | ground truth | predicted probability, side by side.
fn write_previews(
    out: &Path,
    epoch: usize,
    unet: &UNet,
    batch: &Batch,
    device: Device,
) -> Result<()> {
    let (x, _) = batch.tensors(device);
    let probs = probs_to_vec(&tch::no_grad(|| {
        unet.forward(&x, false, Kind::Float).sigmoid()
    }))?;
    let s = batch.size as usize;
    let px = s * s;
    for (i, stem) in batch.stems.iter().enumerate() {
        let img = &batch.images[i * px * 3..(i + 1) * px * 3];
        let mask = &batch.masks[i * px..(i + 1) * px];
        let prob = &probs[i * px..(i + 1) * px];
        let sheet = image::RgbImage::from_fn(3 * s as u32, s as u32, |x, y| {
            let (panel, x) = (x as usize / s, x as usize % s);
            let j = y as usize * s + x;
            match panel {
                0 => image::Rgb([img[3 * j], img[3 * j + 1], img[3 * j + 2]]),
                1 => image::Rgb([0, mask[j] * 255, 0]),
                _ => {
                    let v = (prob[j] * 255.0).round() as u8;
                    image::Rgb([0, v, 0])
                }
            }
        });
        write_atomic(
            &out.join(format!("Epoch_{epoch}_{stem}.jpg")),
            &encode_jpeg_rgb(&sheet, 90)?,
        )?;
    }
    Ok(())
}

/// Hidden benchmark (`PIPELINE_TRAIN_BENCH=<steps>` with `pipeline train`): the same model and
/// training step as `torch_unet_ref.py` on random inputs of `generate.size` x `train.batch_size`,
/// 3 warm-up steps, then `steps` timed. Prints one line in the reference script's format.
pub fn bench(cfg: &Config, choice: DeviceChoice, steps: usize) -> Result<()> {
    let device = device::select(choice)?;
    let t = &cfg.train;
    let size = i64::from(cfg.generate.size);
    check_size(&cfg.model, cfg.generate.size)?;
    tch::manual_seed(0);
    let vs = VarStore::new(device);
    let unet = UNet::new(&vs.root(), &cfg.model);
    let mut opt = Adam::new(&vs, t.learning_rate);
    let bf16 = t.mixed_precision && device.is_cuda();
    let kind = if bf16 { Kind::BFloat16 } else { Kind::Float };
    let bs = t.batch_size as i64;
    let x = Tensor::rand([bs, 3, size, size], (Kind::Float, device));
    let y = Tensor::rand([bs, 1, size, size], (Kind::Float, device))
        .gt(0.9)
        .to_kind(Kind::Float);
    let mut step = || {
        opt.zero_grad();
        let (loss, _) = bce_dice_loss(&unet.forward(&x, true, kind), &y);
        loss.backward();
        opt.step(t.clip_value);
        loss
    };
    for _ in 0..3 {
        let _ = step();
    }
    let sync = || {
        if let Device::Cuda(i) = device {
            tch::Cuda::synchronize(i as i64);
        }
    };
    sync();
    let t0 = Instant::now();
    let mut last = None;
    for _ in 0..steps {
        last = Some(step());
    }
    sync();
    let dt = t0.elapsed().as_secs_f64();
    let last_loss = last.map_or(f64::NAN, |l| l.double_value(&[]));
    println!(
        "pipeline-tch params={} device={} dtype={} size={size} batch={bs} steps={steps} images/s={:.2} last_loss={last_loss:.4}",
        param_count(&cfg.model),
        match device {
            Device::Cuda(i) => format!("cuda:{i}"),
            _ => "cpu".to_string(),
        },
        if bf16 { "bf16" } else { "fp32" },
        (steps as i64 * bs) as f64 / dt
    );
    Ok(())
}
