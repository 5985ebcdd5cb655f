//! The libtorch training stage (feature `train`): UNet training, evaluation and inference.
//! Reads only the split folders `<run>/dataset/{train,valid,test}/{images,masks}`.

use std::path::Path;

use anyhow::{bail, Result};

use crate::cli::DeviceChoice;
use crate::config::Config;

/// Trains the UNet of `cfg.model` on `<run>/dataset/{train,valid}`; writes `<run>/train/`.
pub fn train(_cfg: &Config, _device: DeviceChoice, _resume: bool) -> Result<()> {
    bail!("training is not implemented yet")
}

/// Evaluates the best checkpoint on `<run>/dataset/test`; writes `<run>/eval/`.
pub fn evaluate(_cfg: &Config, _device: DeviceChoice) -> Result<()> {
    bail!("evaluation is not implemented yet")
}

/// Predicts masks for full-size fundus images; writes `<run>/infer/` (or `out`).
pub fn infer(
    _cfg: &Config,
    _device: DeviceChoice,
    _images: Option<&Path>,
    _out: Option<&Path>,
) -> Result<()> {
    bail!("inference is not implemented yet")
}
