//! The libtorch stages of fundus-pipeline (the `pipeline-torch` executable): training, evaluation and inference of the
//! segmentation networks of `model.arch`. Reads only the split folders
//! `<run>/dataset/{train,valid,test}/{images,masks}`.
//!
//! - [`model`]: the seam: [`model::SegNet`] and [`model::Model`] (build / load a checkpoint).
//! - [`arch`]: the architectures, one file each, and their registry.
//! - [`device`]: loads the CUDA backend, resolves `--device`.
//! - [`metrics`]: loss, soft Dice, hard per-image scores.
//! - [`adam`]: Adam with gradient value clipping and savable moments.
//! - [`data`]: split scanning, pairing, per-batch decoding on a background thread.
//! - [`checkpoint`]: safetensors + JSON state, config-checked loading.
//! - [`epoch`]: one training epoch and the training step; [`batches`]: evaluation batches.
//! - [`trainer`], [`evaluate`](mod@evaluate), [`infer`](mod@infer): the three stages.

pub mod adam;
pub mod arch;
pub mod batches;
pub mod checkpoint;
pub mod data;
pub mod device;
pub mod epoch;
pub mod evaluate;
pub mod fullres;
pub mod infer;
pub mod input_norm;
pub mod io;
pub mod losses;
pub mod metrics;
pub mod model;
pub mod patch_data;
pub mod plot;
pub mod trainer;

use std::path::Path;

use anyhow::{Context, Result};
use tch::{Kind, Tensor};

use fundus_pipeline::cli::DeviceChoice;
use fundus_pipeline::config::Config;

pub use evaluate::{evaluate_run, EvalReport, Evaluation};
pub use infer::{infer_run, InferOutput};
pub use model::{Model, SegNet};
pub use trainer::{train_run, TrainReport};

/// The libtorch stages, as [`fundus_pipeline::run`] calls them (the `pipeline-torch` binary's
/// [`fundus_pipeline::Training`]).
pub struct Libtorch;

impl fundus_pipeline::Training for Libtorch {
    fn train(&self, cfg: &Config, device: DeviceChoice, resume: bool) -> Result<()> {
        train_run(cfg, device, resume).map(|_| ())
    }
    fn evaluate(&self, cfg: &Config, device: DeviceChoice) -> Result<()> {
        evaluate_run(cfg, device).map(|_| ())
    }
    fn infer(
        &self,
        cfg: &Config,
        device: DeviceChoice,
        images: Option<&Path>,
        infer_dir: Option<&Path>,
        shard: Option<&fundus_pipeline::shard::Shard>,
    ) -> Result<()> {
        infer::infer_run_shard(cfg, device, images, infer_dir, shard).map(|_| ())
    }
}

/// Any float tensor -> its values on the CPU, flattened.
pub fn probs_to_vec(t: &Tensor) -> Result<Vec<f32>> {
    let flat = t
        .to_kind(Kind::Float)
        .to_device(tch::Device::Cpu)
        .flatten(0, -1);
    Vec::<f32>::try_from(&flat).context("tensor to Vec<f32>")
}
