//! Checkpoints: `<name>.safetensors` (the VarStore, fp32) + `<name>.json` (the model config with
//! its `arch`, the image size, and the loop state `--resume` needs) + for `last`,
//! `last.optim.safetensors` (Adam's moment estimates). Loading checks the model config first, so
//! a checkpoint of another architecture or shape gives an error naming both instead of a tensor
//! copy failure.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use tch::nn::VarStore;
use tch::Tensor;

use crate::io::write_atomic_with;
use crate::io::write_json;
use crate::train_config::{ModelConfig, TrainConfig};

pub const FORMAT: &str = "fundus-pipeline/checkpoint/v1";

/// One finished epoch (the CSV rows and the curves are drawn from these).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EpochRow {
    pub epoch: usize,
    pub loss: f64,
    pub val_loss: f64,
    pub dice_coef: f64,
    pub val_dice_coef: f64,
    /// Learning rate used during this epoch.
    pub lr: f64,
    pub seconds: f64,
    /// Training images per second (steps after the first; the first includes warm-up).
    pub images_per_s: f64,
}

/// Everything besides tensors that a checkpoint records.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TrainState {
    pub format: String,
    pub model: ModelConfig,
    /// Image side the model was trained on.
    pub size: u32,
    /// Last finished epoch (1-based).
    pub epoch: usize,
    pub optimizer_step: i64,
    /// Learning rate for the next epoch.
    pub lr: f64,
    pub best_val_loss: f64,
    pub best_epoch: usize,
    /// Epochs since the last improvement (early stopping).
    pub epochs_without_improvement: usize,
    /// Epochs since the last improvement or learning-rate reduction (reduce-on-plateau).
    pub plateau_wait: usize,
    pub stopped_early: bool,
    pub history: Vec<EpochRow>,
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

pub fn paths(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    (
        dir.join(format!("{name}.safetensors")),
        dir.join(format!("{name}.json")),
    )
}

pub fn optim_path(dir: &Path) -> PathBuf {
    dir.join("last.optim.safetensors")
}

/// Writes `<name>.safetensors` then `<name>.json` (each atomically; the JSON goes last, so a JSON
/// always describes weights at least as new as itself).
pub fn save(dir: &Path, name: &str, vs: &VarStore, state: &TrainState) -> Result<()> {
    let (weights, json) = paths(dir, name);
    write_atomic_with(&weights, |tmp| {
        vs.save(tmp)
            .with_context(|| format!("cannot save weights to {}", tmp.display()))
    })?;
    write_json(&json, state)
}

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

/// Loads checkpoint `name` from `dir` into `vs` (built for `model`); returns its state.
pub fn load(dir: &Path, name: &str, vs: &mut VarStore, model: &ModelConfig) -> Result<TrainState> {
    let (weights, json) = paths(dir, name);
    if !weights.is_file() {
        bail!(
            "no checkpoint at {} (run `pipeline train` first)",
            weights.display()
        );
    }
    let state = read_state(&json)?;
    if &state.model != model {
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
