//! The libtorch training stage (feature `train`): UNet training, evaluation and inference.
//! Reads only the split folders `<run>/dataset/{train,valid,test}/{images,masks}`.
//!
//! - [`device`]: loads the CUDA backend, resolves `--device`.
//! - [`unet`]: the model (the PyTorch reference's, parameter for parameter).
//! - [`metrics`]: loss, soft Dice, hard per-image scores.
//! - [`adam`]: Adam with gradient value clipping and savable moments.
//! - [`data`]: split scanning, pairing, per-batch decoding on a background thread.
//! - [`checkpoint`]: safetensors + JSON state, shape-checked loading.
//! - [`trainer`], [`evaluate`](mod@evaluate), [`infer`](mod@infer): the three stages.

pub mod adam;
pub mod checkpoint;
pub mod data;
pub mod device;
pub mod evaluate;
pub mod infer;
pub mod io;
pub mod metrics;
pub mod plot;
pub mod trainer;
pub mod unet;

use std::path::Path;

use anyhow::{bail, Context, Result};
use tch::{Kind, Tensor};

use crate::cli::DeviceChoice;
use crate::config::Config;
use crate::train_config::ModelConfig;

pub use evaluate::{evaluate_run, EvalReport};
pub use infer::{infer_run, InferOutput};
pub use trainer::{train_run, TrainReport};

/// Environment variable that turns `pipeline train` into the hidden throughput benchmark
/// ([`trainer::bench`]): its value is the number of timed steps.
pub const BENCH_ENV: &str = "PIPELINE_TRAIN_BENCH";

/// Trains the UNet of `cfg.model` on `<run>/dataset/{train,valid}`; writes `<run>/train/`.
pub fn train(cfg: &Config, device: DeviceChoice, resume: bool) -> Result<()> {
    if let Ok(steps) = std::env::var(BENCH_ENV) {
        let steps = steps
            .parse()
            .with_context(|| format!("{BENCH_ENV} must be a number of steps, got {steps:?}"))?;
        return trainer::bench(cfg, device, steps);
    }
    train_run(cfg, device, resume).map(|_| ())
}

/// Evaluates the best checkpoint on `<run>/dataset/test`; writes `<run>/eval/`.
pub fn evaluate(cfg: &Config, device: DeviceChoice) -> Result<()> {
    evaluate_run(cfg, device).map(|_| ())
}

/// Predicts masks for full-size fundus images; writes `<run>/infer/` (or `out`).
pub fn infer(
    cfg: &Config,
    device: DeviceChoice,
    images: Option<&Path>,
    out: Option<&Path>,
) -> Result<()> {
    infer_run(cfg, device, images, out).map(|_| ())
}

/// The image side must survive levels-1 halvings.
pub fn check_size(model: &ModelConfig, size: u32) -> Result<()> {
    let div = 1u64 << (model.levels - 1);
    if u64::from(size) % div != 0 {
        bail!(
            "`generate.size` ({size}) must be divisible by 2^(`model.levels` - 1) = {div}; \
             pick a multiple of {div} or fewer levels"
        );
    }
    Ok(())
}

/// Any float tensor -> its values on the CPU, flattened.
pub fn probs_to_vec(t: &Tensor) -> Result<Vec<f32>> {
    let flat = t
        .to_kind(Kind::Float)
        .to_device(tch::Device::Cpu)
        .flatten(0, -1);
    Vec::<f32>::try_from(&flat).context("tensor to Vec<f32>")
}

#[cfg(test)]
mod tests {
    use super::unet::{param_count, UNet};
    use super::*;
    use tch::nn::VarStore;

    #[test]
    fn parameter_count_matches_the_reference() {
        // Counts of torch_unet_ref.py's UNet(levels, f): sum(p.numel() for p in model.parameters()).
        for (levels, f, n) in [(8, 16, 124_996_849u64), (4, 8, 260_793), (2, 4, 11_029)] {
            let cfg = ModelConfig {
                levels,
                base_filters: f,
                in_channels: 3,
            };
            assert_eq!(param_count(&cfg), n, "levels {levels} f {f}");
            if levels <= 4 {
                let vs = VarStore::new(tch::Device::Cpu);
                let _net = UNet::new(&vs.root(), &cfg);
                let built: i64 = vs
                    .trainable_variables()
                    .iter()
                    .map(|t| t.numel() as i64)
                    .sum();
                assert_eq!(built as u64, n);
            }
        }
    }

    #[test]
    fn forward_keeps_the_spatial_size() {
        let cfg = ModelConfig {
            levels: 3,
            base_filters: 4,
            in_channels: 3,
        };
        let vs = VarStore::new(tch::Device::Cpu);
        let net = UNet::new(&vs.root(), &cfg);
        let x = Tensor::rand([2, 3, 32, 32], (Kind::Float, tch::Device::Cpu));
        let y = net.forward(&x, true, Kind::Float);
        assert_eq!(y.size(), [2, 1, 32, 32]);
        let yb = net.forward(&x, false, Kind::BFloat16);
        assert_eq!(yb.kind(), Kind::Float);
        let names: Vec<String> = vs.variables().into_keys().collect();
        for n in [
            "down.0.0.weight",
            "down.2.3.bias",
            "up.0.weight",
            "dec.1.3.weight",
            "head.bias",
        ] {
            assert!(names.iter().any(|x| x == n), "{n} not in {names:?}");
        }
        assert!(check_size(&cfg, 30).is_err());
    }
}
