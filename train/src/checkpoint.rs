//! Checkpoints, committed as one unit per epoch: `<train>/epochs/<epoch>/` holds
//! `weights.safetensors` (the VarStore, fp32), `optimizer.safetensors` (Adam's moment estimates)
//! and `state.json` (the model config with its `arch`, the image size, the loop state `--resume`
//! needs, the hash of the training data); `<train>/checkpoint.json`, switched atomically after
//! the three are written, names the `last` and the `best` epoch. Readers follow only the
//! pointer, so they never see a half-written set. Loading checks the model config first, so a
//! checkpoint of another architecture or shape gives an error naming both instead of a tensor
//! copy failure.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use tch::nn::VarStore;
use tch::Tensor;

use super::adam::Adam;
use fundus_pipeline::io::{write_atomic_with, write_json};
use fundus_pipeline::train_config::{ModelConfig, TrainConfig};

/// Format tag of [`TrainState`] files.
pub const FORMAT: &str = "fundus-pipeline/checkpoint/v2";

/// One finished epoch (the CSV rows and the curves are drawn from these).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EpochRow {
    /// The epoch, 1-based.
    pub epoch: usize,
    /// Training loss (the configured `train.loss`, averaged with the deep-supervision heads when
    /// there are any), mean over the epoch's training images.
    pub loss: f64,
    /// The same loss on the validation split: whole pairs, main output, at most
    /// `train.max_valid_steps` batches.
    pub val_loss: f64,
    /// Soft Dice (2 sum(p y) + 1) / (sum p + sum y + 1) of the training batches, mean over images
    /// (see [`super::losses`]).
    pub dice_coef: f64,
    /// Soft Dice on the validation split.
    pub val_dice_coef: f64,
    /// Learning rate used during this epoch.
    pub lr: f64,
    /// Wall-clock time of the epoch (training and validation), in seconds.
    pub seconds: f64,
    /// Training images per second (steps after the first; the first includes warm-up).
    pub images_per_s: f64,
}

/// Everything besides tensors that a checkpoint records.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TrainState {
    /// [`FORMAT`] of the writer; other formats are refused on load.
    pub format: String,
    /// The model config the weights belong to (checked against the run's config on load).
    pub model: ModelConfig,
    /// Image side the model was trained on.
    pub size: u32,
    /// Last finished epoch (1-based).
    pub epoch: usize,
    /// Adam steps taken so far (bias correction continues from here on `--resume`).
    pub optimizer_step: i64,
    /// Learning rate for the next epoch.
    pub lr: f64,
    /// Lowest validation loss so far (infinity before the first epoch).
    pub best_val_loss: f64,
    /// Epoch of [`TrainState::best_val_loss`] (0 before the first epoch).
    pub best_epoch: usize,
    /// Epochs since the last improvement (early stopping).
    pub epochs_without_improvement: usize,
    /// Epochs since the last improvement or learning-rate reduction (reduce-on-plateau).
    pub plateau_wait: usize,
    /// True when early stopping ended the run (`train.early_stopping_patience` epochs without
    /// improvement).
    pub stopped_early: bool,
    /// Every finished epoch, in order.
    pub history: Vec<EpochRow>,

    /// blake3 over the train and valid pairs the run trains on (names and bytes,
    /// [`super::data::split_hash`]); `--resume` refuses when they changed, `evaluate` refuses
    /// to score the test split. Empty (not checked) in a checkpoint written without it.
    #[serde(default)]
    pub data_hash: String,

    /// How the network saw its input ([`InputSettings`]); evaluate, infer and `--resume` refuse
    /// a config that says otherwise ([`check_input`]). Absent (not checked) in checkpoints
    /// written before it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<InputSettings>,
}

/// The training settings that change what the network's output means, recorded with the weights:
/// the input transform (`train.input_norm`, with its local contrast sigma) and whether the loss
/// covered only the field of view (`train.loss_in_fov`: `infer` then reports nothing outside it).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct InputSettings {
    /// `train.input_norm` (null: the raw [0, 1] input).
    pub input_norm: Option<fundus_pipeline::recipe_config::InputNorm>,
    /// `train.loss_in_fov`.
    pub loss_in_fov: bool,
}

impl InputSettings {
    /// The settings of a `train` section.
    pub fn of(t: &TrainConfig) -> Self {
        Self {
            input_norm: t.input_norm,
            loss_in_fov: t.loss_in_fov,
        }
    }
}

/// Errors when the checkpoint at `folder` was trained with other input settings than `t` says:
/// the same weights under another input transform score and predict something else, silently.
/// Both settings are named. A checkpoint without the record passes.
pub fn check_input(state: &TrainState, t: &TrainConfig, folder: &Path) -> Result<()> {
    let Some(rec) = state.input else {
        return Ok(());
    };
    let now = InputSettings::of(t);
    if rec != now {
        let show = |s: &InputSettings| {
            format!(
                "input_norm {}, loss_in_fov {}",
                serde_json::to_string(&s.input_norm).unwrap_or_default(),
                s.loss_in_fov
            )
        };
        bail!(
            "checkpoint {} was trained with train {{{}}}, but the config says train {{{}}}: \
             use the config it was trained with (its values are in {})",
            folder.display(),
            show(&rec),
            show(&now),
            folder.join(STATE).display()
        );
    }
    Ok(())
}

impl TrainState {
    /// The state before the first epoch of a fresh run.
    pub fn fresh(model: &ModelConfig, size: u32, lr: f64) -> Self {
        Self {
            format: FORMAT.to_string(),
            model: model.clone(),
            size,
            epoch: 0,
            optimizer_step: 0,
            lr,
            best_val_loss: f64::INFINITY,
            best_epoch: 0,
            epochs_without_improvement: 0,
            plateau_wait: 0,
            stopped_early: false,
            history: Vec::new(),
            data_hash: String::new(),
            input: None,
        }
    }

    /// Books an epoch's validation loss: best so far (strictly lower), reduce-on-plateau
    /// (`lr *= reduce_lr_factor`, not below `min_lr`, after `reduce_lr_patience` epochs without
    /// improvement; the wait restarts after a reduction, as in Keras) and early stopping. Returns
    /// whether the loss improved.
    pub fn after_validation(&mut self, epoch: usize, val_loss: f64, t: &TrainConfig) -> bool {
        let improved = val_loss < self.best_val_loss;
        if improved {
            self.best_val_loss = val_loss;
            self.best_epoch = epoch;
            self.epochs_without_improvement = 0;
            self.plateau_wait = 0;
        } else {
            self.epochs_without_improvement += 1;
            self.plateau_wait += 1;
            if self.plateau_wait >= t.reduce_lr_patience {
                self.lr = (self.lr * t.reduce_lr_factor).max(t.min_lr).min(self.lr);
                self.plateau_wait = 0;
            }
        }
        self.stopped_early = t.early_stopping_patience > 0
            && self.epochs_without_improvement >= t.early_stopping_patience;
        improved
    }
}

/// The commit pointer in the training folder: which epoch folders hold the last and the best
/// complete checkpoint set. Written last, atomically: the commit.
pub const POINTER: &str = "checkpoint.json";
/// Folder of the epoch folders (`epochs/0003/`).
pub const EPOCHS: &str = "epochs";
/// File names inside an epoch folder.
pub const WEIGHTS: &str = "weights.safetensors";
/// Adam's moment estimates.
pub const OPTIMIZER: &str = "optimizer.safetensors";
/// The [`TrainState`].
pub const STATE: &str = "state.json";
const POINTER_FORMAT: &str = "fundus-pipeline/checkpoint-pointer/v1";

/// One commit point of a training run ([`fundus_pipeline::io::commit_point`], label `train: <what>`):
/// with `PIPELINE_ABORT_AT_COMMIT=N` the crash tests kill a run after every write.
pub fn commit_point(what: &str) {
    fundus_pipeline::io::commit_point(&format!("train: {what}"));
}

/// The content of [`POINTER`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Pointer {
    format: String,
    /// The last finished epoch (its folder holds the optimizer state `--resume` needs).
    pub last: usize,
    /// The epoch of the lowest validation loss.
    pub best: usize,
}

/// `<dir>/epochs/<epoch, 4 digits>`.
pub fn epoch_dir(dir: &Path, epoch: usize) -> PathBuf {
    dir.join(EPOCHS).join(format!("{epoch:04}"))
}

/// Reads the commit pointer of training folder `dir`; `None` when no epoch was committed.
pub fn read_pointer(dir: &Path) -> Result<Option<Pointer>> {
    let path = dir.join(POINTER);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let p: Pointer = serde_json::from_str(&text)
        .with_context(|| format!("invalid checkpoint pointer {}", path.display()))?;
    if p.format != POINTER_FORMAT {
        bail!(
            "checkpoint pointer {} has format {:?}, expected {POINTER_FORMAT:?}",
            path.display(),
            p.format
        );
    }
    Ok(Some(p))
}

/// The epoch folder of checkpoint `name` (`best` or `last`) in training folder `dir`. Errors: no
/// committed epoch (names the folder and says to train first), another name.
pub fn resolve(dir: &Path, name: &str) -> Result<PathBuf> {
    let Some(p) = read_pointer(dir)? else {
        let legacy = dir.join(format!("{name}.safetensors"));
        if legacy.is_file() {
            bail!(
                "no checkpoint in {}: {} was written by an older version of this tool (no {POINTER}); \
                 train again (`pipeline train`)",
                dir.display(),
                legacy.display()
            );
        }
        bail!(
            "no checkpoint in {} ({POINTER} is missing: run `pipeline train` first)",
            dir.display()
        );
    };
    match name {
        "best" => Ok(epoch_dir(dir, p.best)),
        "last" => Ok(epoch_dir(dir, p.last)),
        _ => bail!("unknown checkpoint {name:?} (expected `best` or `last`)"),
    }
}

/// Commits the checkpoint set of the finished epoch `state.epoch` as one unit: weights, Adam's
/// moments and the state go into a fresh `epochs/<epoch>/` (each file atomically; leftovers of
/// an interrupted attempt at the same epoch are replaced), then the pointer is switched to it
/// (the commit; `best` moves to it when `state.best_epoch` is this epoch), then epoch folders
/// that neither `last` nor `best` names are removed. A kill before the switch leaves the
/// previous set in force; readers follow only the pointer.
pub fn commit_epoch(dir: &Path, vs: &VarStore, opt: &Adam, state: &TrainState) -> Result<()> {
    let folder = epoch_dir(dir, state.epoch);
    remove_epoch_dir(&folder)?;
    std::fs::create_dir_all(&folder)
        .with_context(|| format!("cannot create checkpoint folder {}", folder.display()))?;
    write_atomic_with(&folder.join(WEIGHTS), |tmp| {
        vs.save(tmp)
            .with_context(|| format!("cannot save weights to {}", tmp.display()))
    })?;
    commit_point("weights");
    write_atomic_with(&folder.join(OPTIMIZER), |tmp| opt.save(tmp))?;
    commit_point("optimizer state");
    write_json(&folder.join(STATE), state)?;
    commit_point("training state");
    let pointer = Pointer {
        format: POINTER_FORMAT.to_string(),
        last: state.epoch,
        best: state.best_epoch,
    };
    write_json(&dir.join(POINTER), &pointer)?;
    commit_point("checkpoint pointer");
    remove_uncommitted(dir, Some(&pointer))?;
    commit_point("old epoch folders removed");
    Ok(())
}

/// Removes the epoch folders the pointer does not name (all of them without a pointer): older
/// sets, and the partial set of an interrupted epoch. Only folders named like an epoch, and
/// only the files this module writes in them, are removed; anything else stays (and keeps its
/// folder).
pub fn remove_uncommitted(dir: &Path, pointer: Option<&Pointer>) -> Result<()> {
    let epochs = dir.join(EPOCHS);
    let entries = match std::fs::read_dir(&epochs) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", epochs.display())),
    };
    let mut names: Vec<String> = Vec::new();
    for entry in entries {
        let entry = entry.with_context(|| format!("cannot read {}", epochs.display()))?;
        names.push(entry.file_name().to_string_lossy().into_owned());
    }
    names.sort();
    for name in names {
        let Ok(epoch) = name.parse::<usize>() else {
            continue;
        };
        if format!("{epoch:04}") != name {
            continue; // not a folder this module names
        }
        if pointer.is_some_and(|p| p.last == epoch || p.best == epoch) {
            continue;
        }
        remove_epoch_dir(&epochs.join(&name))?;
    }
    let _ = std::fs::remove_dir(&epochs); // only when empty
    Ok(())
}

/// Removes the files of one epoch folder (and its temporaries), then the folder when empty.
fn remove_epoch_dir(folder: &Path) -> Result<()> {
    let entries = match std::fs::read_dir(folder) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", folder.display())),
    };
    for entry in entries {
        let path = entry
            .with_context(|| format!("cannot read {}", folder.display()))?
            .path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if [WEIGHTS, OPTIMIZER, STATE].contains(&name) || name.starts_with(".tmp-") {
            std::fs::remove_file(&path)
                .with_context(|| format!("cannot remove {}", path.display()))?;
        }
    }
    let _ = std::fs::remove_dir(folder); // kept when something else is in it
    Ok(())
}

/// Reads and checks a [`TrainState`] file.
pub fn read_state(json: &Path) -> Result<TrainState> {
    let text = std::fs::read_to_string(json)
        .with_context(|| format!("cannot read checkpoint state {}", json.display()))?;
    let state: TrainState = serde_json::from_str(&text)
        .with_context(|| format!("invalid checkpoint state {}", json.display()))?;
    if state.format != FORMAT {
        bail!(
            "checkpoint state {} has format {:?}, expected {FORMAT:?}",
            json.display(),
            state.format
        );
    }
    Ok(state)
}

/// Loads checkpoint `name` (`best` or `last`) of training folder `dir` into `vs` (built for
/// `model`); returns its state. Errors: nothing committed, a state of another architecture or
/// shape (both named), weights that do not fit.
pub fn load(dir: &Path, name: &str, vs: &mut VarStore, model: &ModelConfig) -> Result<TrainState> {
    let folder = resolve(dir, name)?;
    let weights = folder.join(WEIGHTS);
    let state = read_state(&folder.join(STATE))?;
    if state.model.active() != model.active() {
        bail!(
            "checkpoint {} was trained with model {{{}}}, but the config asks for model {{{}}}: \
             change `model` back or train again",
            weights.display(),
            state.model.describe(),
            model.describe()
        );
    }
    load_weights(vs, &weights, model)?;
    Ok(state)
}

/// Copies the tensors of a safetensors file into `vs`, checking every name and shape first.
pub fn load_weights(vs: &mut VarStore, weights: &Path, model: &ModelConfig) -> Result<()> {
    let saved: HashMap<String, Tensor> = Tensor::read_safetensors(weights)
        .with_context(|| format!("cannot read checkpoint {}", weights.display()))?
        .into_iter()
        .collect();
    let mut vars: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, var) in &vars {
        let found = saved.get(name).map(|t| t.size());
        if found.as_ref() != Some(&var.size()) {
            bail!(
                "checkpoint {} does not fit model {{{}}}: tensor `{name}` is {} in the checkpoint \
                 but {:?} in the model",
                weights.display(),
                model.describe(),
                found.map_or("missing".to_string(), |s| format!("{s:?}")),
                var.size()
            );
        }
    }
    if saved.len() != vars.len() {
        bail!(
            "checkpoint {} has {} tensors, model {{{}}} has {}",
            weights.display(),
            saved.len(),
            model.describe(),
            vars.len()
        );
    }
    tch::no_grad(|| {
        for (name, mut var) in vars {
            var.copy_(&saved[&name]);
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plateau_reduces_the_lr_and_patience_stops_the_run() {
        let t = TrainConfig {
            reduce_lr_patience: 2,
            early_stopping_patience: 5,
            learning_rate: 1.0,
            min_lr: 0.1,
            ..TrainConfig::default()
        };
        let mut st = TrainState::fresh(&ModelConfig::small(), 64, 1.0);
        let mut lrs = vec![];
        let mut improved = vec![];
        // Improves at 1 and 2, then never again (an equal loss is no improvement).
        for (e, v) in [0.9, 0.8, 0.8, 0.85, 0.9, 0.81, 0.95]
            .into_iter()
            .enumerate()
        {
            improved.push(st.after_validation(e + 1, v, &t));
            lrs.push(st.lr);
            if st.stopped_early {
                break;
            }
        }
        assert_eq!(improved, [true, true, false, false, false, false, false]);
        // Reduced after 2 and 4 epochs without improvement: 1 -> 0.4 -> 0.16; then min_lr 0.1.
        let expect = [1.0, 1.0, 1.0, 0.4, 0.4, 0.16, 0.16];
        for (a, b) in lrs.iter().zip(expect) {
            assert!((a - b).abs() < 1e-12, "{lrs:?}");
        }
        assert_eq!((st.best_epoch, st.best_val_loss), (2, 0.8));
        assert!(
            st.stopped_early,
            "5 epochs without improvement stop the run"
        );
        assert_eq!(st.epochs_without_improvement, 5);
        st.plateau_wait = 1;
        st.after_validation(8, 0.9, &t);
        assert!((st.lr - 0.1).abs() < 1e-12, "never below min_lr");
    }
}
