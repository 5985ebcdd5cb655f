//! The training run: start or resume, then per epoch the steps ([`super::epoch`]), validation
//! ([`super::batches`]), reduce-on-plateau and early stopping on the validation loss, and the
//! saved epoch: best/last checkpoints, CSVs, curves and previews.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use tch::{Device, Kind};

use super::adam::Adam;
use super::batches::eval_batches_with;
use super::checkpoint::{self, EpochRow, TrainState};
use super::data::{scan_split, split_hash, Batch, Sample};
use super::epoch::{epoch_order, torch_seed, train_epoch};
use super::model::{param_count, Model};
use super::patch_data::Recipe;
use super::{device, io, plot, probs_to_vec};
use fundus_pipeline::cli::DeviceChoice;
use fundus_pipeline::config::Config;
use fundus_pipeline::io::{encode_jpeg_rgb, encode_png_rgb, write_atomic, write_csv};
use fundus_pipeline::run_layout::Split;

/// What a training run did (the files hold the same; tests read this).
#[derive(Debug, Clone)]
pub struct TrainReport {
    /// The device it trained on.
    pub device: Device,
    /// Every finished epoch, including those of earlier runs continued with `--resume`.
    pub history: Vec<EpochRow>,
    /// Epoch (1-based) of the lowest validation loss: the `best` checkpoint.
    pub best_epoch: usize,
    /// That validation loss.
    pub best_val_loss: f64,
    /// Whether early stopping ended the run.
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

/// A training run between its start and its last epoch: the data, the model, the optimizer
/// and the loop state.
struct Session<'a> {
    cfg: &'a Config,
    out: PathBuf,
    train: Vec<Sample>,
    valid: Vec<Sample>,
    model: Model,
    opt: Adam,
    /// Compute precision of the training forward pass.
    compute: Kind,
    st: TrainState,
    /// Fixed validation images predicted after every epoch.
    preview: Option<Batch>,
}

/// Trains `cfg.model` on `<run>/dataset/{train,valid}` and writes `<run>/train/`.
pub fn train_run(cfg: &Config, choice: DeviceChoice, resume: bool) -> Result<TrainReport> {
    let device = device::select_for("train", choice)?;
    let mut s = Session::start(cfg, device, resume)?;
    let t = &cfg.train;
    if s.st.stopped_early {
        println!(
            "train: the run stopped early at epoch {}; nothing to resume",
            s.st.epoch
        );
        return Ok(TrainReport::from_state(device, &s.st));
    }
    if s.st.epoch >= t.epochs {
        println!(
            "train: already trained {} epochs (`train.epochs` = {}); nothing to do",
            s.st.epoch, t.epochs
        );
        return Ok(TrainReport::from_state(device, &s.st));
    }
    for epoch in s.st.epoch + 1..=t.epochs {
        let improved = s.run_epoch(epoch)?;
        s.save_epoch()?;
        let row = s.st.history.last().expect("just pushed");
        println!(
            "epoch {epoch}/{}: loss {:.4} dice_coef {:.4} val_loss {:.4} val_dice_coef {:.4} lr {:.3e} \
             {:.1}s {:.2} images/s{}",
            t.epochs,
            row.loss,
            row.dice_coef,
            row.val_loss,
            row.val_dice_coef,
            row.lr,
            row.seconds,
            row.images_per_s,
            if improved { " (best)" } else { "" }
        );
        if s.st.stopped_early {
            println!(
                "train: early stop: val_loss has not improved for {} epochs",
                s.st.epochs_without_improvement
            );
            break;
        }
    }
    println!(
        "train: best val_loss {:.4} at epoch {}; outputs in {}",
        s.st.best_val_loss,
        s.st.best_epoch,
        s.out.display()
    );
    Ok(TrainReport::from_state(device, &s.st))
}

impl<'a> Session<'a> {
    /// Start or resume: reads the splits, builds the model from `tch::manual_seed(seed)`, and
    /// either clears an earlier run's outputs or loads the last checkpoint and Adam's moments.
    fn start(cfg: &'a Config, device: Device, resume: bool) -> Result<Self> {
        let t = &cfg.train;
        let size = cfg.generate.size;
        cfg.model.check_size(size)?;
        let run = cfg.layout();
        let train = scan_split(&run, Split::Train)?;
        let valid = scan_split(&run, Split::Valid)?;
        let out = run.train_dir();
        io::create_dir(&out)?;
        // The fixed outputs are claimed up front; the per-epoch previews as they are written.
        fundus_pipeline::owned::claim(&out, &OWN_FILES)?;

        tch::manual_seed(cfg.seed as i64);
        let mut model = Model::build(&cfg.model, device).with_input_norm(t.input_norm);
        if let Some(p) = t.patch_size {
            cfg.model.check_size(p).map_err(|e| {
                anyhow::anyhow!("`train.patch_size` ({p}) does not fit the model: {e:#}")
            })?;
        }
        if let Some(line) = Recipe::from_config(cfg).describe() {
            println!("train: {line}");
        }
        let mut opt = Adam::new(&model.vs, t.learning_rate);
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

        let data_hash = split_hash(&[("train", &train), ("valid", &valid)])?;
        let committed = checkpoint::read_pointer(&out)?;
        let st = match committed {
            Some(_) if resume => {
                let st = checkpoint::load(&out, "last", &mut model.vs, &cfg.model)?;
                let folder = checkpoint::resolve(&out, "last")?;
                if st.size != size {
                    bail!(
                        "--resume: checkpoint {} was trained on {}x{} images, `generate.size` is {size}",
                        folder.display(),
                        st.size,
                        st.size
                    );
                }
                checkpoint::check_input(&st, t, &folder).context("--resume")?;
                if st.data_hash != data_hash {
                    bail!(
                        "--resume: the training data changed since epoch {} was saved: the pairs of \
                         {} and {} (names and bytes) no longer match the checkpoint's record \
                         ({} in {}); train without --resume to start over, or restore the split",
                        st.epoch,
                        run.split_root(Split::Train).display(),
                        run.split_root(Split::Valid).display(),
                        st.data_hash,
                        folder.join(checkpoint::STATE).display()
                    );
                }
                opt.load(&folder.join(checkpoint::OPTIMIZER), st.optimizer_step)?;
                opt.lr = st.lr;
                // An interrupted epoch's partial set goes; the committed one stays.
                checkpoint::remove_uncommitted(&out, committed.as_ref())?;
                println!(
                    "train: resuming after epoch {} (lr {:.3e}, best val_loss {:.4} at epoch {})",
                    st.epoch, st.lr, st.best_val_loss, st.best_epoch
                );
                st
            }
            _ => {
                if resume {
                    println!(
                        "train: --resume: no epoch was saved in {} yet; starting at epoch 1",
                        out.display()
                    );
                }
                remove_previous_run(&out)?;
                let mut st = TrainState::fresh(&cfg.model, size, t.learning_rate);
                st.data_hash = data_hash;
                st.input = Some(checkpoint::InputSettings::of(t));
                st
            }
        };
        let preview: Vec<&Sample> = valid.iter().take(t.preview_images).collect();
        let preview = if preview.is_empty() {
            None
        } else {
            Some(Batch::load(&preview, size)?)
        };
        let session = Self {
            cfg,
            out,
            train,
            valid,
            model,
            opt,
            compute,
            st,
            preview,
        };
        if session.st.epoch > 0 {
            // A kill after the commit may have cut the derived files short: write them again
            // from the committed state (same bytes as the first time).
            session.write_outputs()?;
        }
        Ok(session)
    }

    /// One epoch: training steps, validation, the state's bookkeeping (best, reduce-on-plateau,
    /// early stopping) and its history row. Returns whether val_loss improved.
    fn run_epoch(&mut self, epoch: usize) -> Result<bool> {
        let (cfg, t) = (self.cfg, &self.cfg.train);
        let size = cfg.generate.size;
        tch::manual_seed(torch_seed(cfg.seed, epoch));
        let recipe = Recipe::from_config(cfg);
        let order = recipe
            .patch_order(self.train.len(), t, epoch)
            .unwrap_or_else(|| epoch_order(cfg.seed, epoch, self.train.len(), t));
        let lr = self.opt.lr;
        let started = Instant::now();
        let st = &self.st;
        let out = &self.out;
        let trained = train_epoch(
            &self.model,
            &mut self.opt,
            &self.train,
            &order,
            t,
            size,
            self.compute,
            (epoch, t.epochs),
            &recipe,
            &|| last_good(out, st),
        )?;
        let val = eval_batches_with(
            &self.model,
            &self.valid,
            t.batch_size,
            size,
            t.max_valid_steps,
            &recipe,
            None,
        )?;
        if !val.loss.is_finite() {
            bail!(
                "training stopped: the validation loss became {} at epoch {epoch} (lr {lr:.3e}); {}",
                val.loss,
                last_good(&self.out, &self.st)
            );
        }

        let before = self.opt.lr;
        let improved = self.st.after_validation(epoch, val.loss, t);
        if self.st.lr < before {
            println!(
                "train: val_loss has not improved for {} epochs: lr {before:.3e} -> {:.3e}",
                t.reduce_lr_patience, self.st.lr
            );
        }
        self.opt.lr = self.st.lr;
        self.st.epoch = epoch;
        self.st.optimizer_step = self.opt.step;
        self.st.history.push(EpochRow {
            epoch,
            loss: trained.loss,
            val_loss: val.loss,
            dice_coef: trained.dice,
            val_dice_coef: val.dice,
            lr,
            seconds: started.elapsed().as_secs_f64(),
            images_per_s: trained.images_per_s,
        });
        Ok(improved)
    }

    /// Saves the finished epoch: the checkpoint set as one unit ([`checkpoint::commit_epoch`]),
    /// then the files derived from it (CSVs, curves, previews).
    fn save_epoch(&self) -> Result<()> {
        checkpoint::commit_epoch(&self.out, &self.model.vs, &self.opt, &self.st)?;
        self.write_outputs()
    }

    /// The CSVs and curves of the history so far, and the previews of the current epoch.
    fn write_outputs(&self) -> Result<()> {
        let out = &self.out;
        write_csvs(out, &self.st.history)?;
        let curves = plot::curves(&self.st.history)?;
        write_atomic(&out.join("train_curves.png"), &encode_png_rgb(&curves)?)?;
        checkpoint::commit_point("curves");
        if let Some(p) = &self.preview {
            write_previews(out, self.st.epoch, &self.model, p)?;
            checkpoint::commit_point("previews");
        }
        Ok(())
    }
}

/// Where the last checkpoint written before a failure is (nothing after it was saved).
fn last_good(out: &Path, st: &TrainState) -> String {
    if st.epoch > 0 {
        format!(
            "the last good checkpoint is {} (epoch {}); try a lower `train.learning_rate`",
            checkpoint::epoch_dir(out, st.epoch).display(),
            st.epoch
        )
    } else {
        "no checkpoint was written yet; try a lower `train.learning_rate`".to_string()
    }
}

/// A fresh run replaces the outputs of an earlier one, so no stale checkpoint outlives it. The
/// pointer goes first: a kill part-way leaves no committed checkpoint, never a mix. Only the
/// files a training run writes are removed (and those of the layout before `checkpoint.json`).
/// The fixed files of `train/` a training run writes or removes (see [`fundus_pipeline::owned`]).
const OWN_FILES: [&str; 9] = [
    checkpoint::POINTER,
    "best.safetensors",
    "best.json",
    "last.safetensors",
    "last.json",
    "last.optim.safetensors",
    "train_losses.csv",
    "train_metrics.csv",
    "train_curves.png",
];

fn remove_previous_run(out: &Path) -> Result<()> {
    let pointer = out.join(checkpoint::POINTER);
    if pointer.exists() {
        std::fs::remove_file(&pointer)
            .with_context(|| format!("cannot remove {}", pointer.display()))?;
    }
    checkpoint::remove_uncommitted(out, None)?;
    let owned = fundus_pipeline::owned::Owned::open(out)?;
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
        ) || (name.starts_with("Epoch_") && name.ends_with(".jpg") && owned.owns(name));
        if ours {
            std::fs::remove_file(&path)
                .with_context(|| format!("cannot remove {}", path.display()))?;
        }
    }
    Ok(())
}

/// `train_losses.csv` (`epoch,loss,val_loss`) and `train_metrics.csv`
/// (`epoch,dice_coef,val_dice_coef`): the reference's Keras CSV logs, one row per epoch.
fn write_csvs(out: &Path, rows: &[EpochRow]) -> Result<()> {
    #[derive(serde::Serialize)]
    struct Losses {
        epoch: usize,
        loss: f64,
        val_loss: f64,
    }
    #[derive(serde::Serialize)]
    struct Metrics {
        epoch: usize,
        dice_coef: f64,
        val_dice_coef: f64,
    }
    let losses = rows.iter().map(|r| Losses {
        epoch: r.epoch,
        loss: r.loss,
        val_loss: r.val_loss,
    });
    write_csv(&out.join("train_losses.csv"), losses, true)?;
    checkpoint::commit_point("train_losses.csv");
    let metrics = rows.iter().map(|r| Metrics {
        epoch: r.epoch,
        dice_coef: r.dice_coef,
        val_dice_coef: r.val_dice_coef,
    });
    write_csv(&out.join("train_metrics.csv"), metrics, true)?;
    checkpoint::commit_point("train_metrics.csv");
    Ok(())
}

/// `Epoch_<e>_<stem>.jpg`: input | ground truth | predicted probability, side by side.
fn write_previews(out: &Path, epoch: usize, model: &Model, batch: &Batch) -> Result<()> {
    let (x, _) = batch.tensors(model.device());
    let probs = probs_to_vec(&model.predict(&x))?;
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
        let name = format!("Epoch_{epoch}_{stem}.jpg");
        fundus_pipeline::owned::claim(out, &[&name])?;
        write_atomic(&out.join(name), &encode_jpeg_rgb(&sheet, 90)?)?;
    }
    Ok(())
}
