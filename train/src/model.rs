//! The model seam: every architecture of [`super::arch`] behind one trait ([`SegNet`]), built or
//! loaded in one place ([`Model::build`], [`Model::load`]) for train, evaluate, infer and the
//! benchmark.

use std::path::Path;

use anyhow::{bail, Result};
use tch::nn::{ModuleT, VarStore};
use tch::{Device, Kind, Tensor};

use super::arch;
use super::checkpoint::{self, TrainState};
use super::input_norm::normalize;
use fundus_pipeline::recipe_config::InputNorm;
use fundus_pipeline::train_config::ModelConfig;

/// A segmentation network: RGB in, one channel of lesion logits out, same spatial size.
/// `ModuleT::forward_t` is the fp32 forward pass.
pub trait SegNet: ModuleT {
    /// `x`: [N, 3, H, W] float in [0, 1], H and W multiples of
    /// [`ModelConfig::size_divisor`]. `kind`: compute precision of the convolutions (Float, or
    /// BFloat16 for mixed precision: weights stay fp32 and are cast per call). Returns fp32
    /// logits [N, 1, H, W].
    fn forward_kind(&self, x: &Tensor, train: bool, kind: Kind) -> Tensor;

    /// The outputs the training loss is taken over: the main output first, then any
    /// deep-supervision heads, each fp32 logits [N, 1, H, W]. Inference uses only the first.
    /// Default: the main output alone.
    fn forward_heads(&self, x: &Tensor, train: bool, kind: Kind) -> Vec<Tensor> {
        vec![self.forward_kind(x, train, kind)]
    }
}

/// A network with its variables on a device.
pub struct Model {
    /// The variables (what checkpoints save and the optimizer updates).
    pub vs: VarStore,
    net: Box<dyn SegNet>,
    /// The config it was built from.
    pub config: ModelConfig,
    /// `train.input_norm`, applied to every input before the network (see [`Model::with_input_norm`]).
    pub input_norm: Option<InputNorm>,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model")
            .field("config", &self.config)
            .field("device", &self.device())
            .finish_non_exhaustive()
    }
}

impl Model {
    /// Builds `config` on `device` with fresh weights drawn from libtorch's global generator
    /// (seed it first with `tch::manual_seed` for a reproducible start).
    pub fn build(config: &ModelConfig, device: Device) -> Self {
        let vs = VarStore::new(device);
        let net = (arch::spec(config.arch).build)(&vs.root(), config);
        Self {
            vs,
            net,
            config: config.clone(),
            input_norm: None,
        }
    }

    /// Sets the input normalization (`train.input_norm`) every forward applies first.
    pub fn with_input_norm(mut self, norm: Option<InputNorm>) -> Self {
        self.input_norm = norm;
        self
    }

    /// Builds `config` on `device` and loads checkpoint `name` (`best` or `last`) of training
    /// folder `dir` (`<run>/train`, see [`checkpoint`]) into it.
    /// Errors: no checkpoint (names the file and says to train first), a checkpoint of another
    /// architecture or shape (names both), trained on another image side than `size`.
    pub fn load(
        config: &ModelConfig,
        size: u32,
        dir: &Path,
        name: &str,
        device: Device,
    ) -> Result<(Self, TrainState)> {
        let mut model = Self::build(config, device);
        let state = checkpoint::load(dir, name, &mut model.vs, config)?;
        if state.size != size {
            bail!(
                "checkpoint {} was trained on {}x{} images, but `generate.size` is {size}",
                checkpoint::resolve(dir, name)?.display(),
                state.size,
                state.size
            );
        }
        Ok((model, state))
    }

    /// The run's best checkpoint as evaluate and infer predict with: loaded for `cfg.model` at
    /// `generate.size` ([`Model::load`]), its recorded input settings checked against
    /// `cfg.train` ([`checkpoint::check_input`]), and `train.input_norm` applied. Errors name
    /// the checkpoint and both sides of a mismatch.
    pub fn load_best(
        cfg: &fundus_pipeline::config::Config,
        device: Device,
    ) -> Result<(Self, TrainState)> {
        let dir = cfg.layout().train_dir();
        let (model, state) = Self::load(&cfg.model, cfg.generate.size, &dir, "best", device)?;
        checkpoint::check_input(&state, &cfg.train, &checkpoint::resolve(&dir, "best")?)?;
        Ok((model.with_input_norm(cfg.train.input_norm), state))
    }

    /// Logits [N, 1, H, W] fp32; see [`SegNet::forward_kind`].
    pub fn forward(&self, x: &Tensor, train: bool, kind: Kind) -> Tensor {
        self.net
            .forward_kind(&normalize(x, self.input_norm.as_ref()), train, kind)
    }

    /// Main output and deep-supervision heads; see [`SegNet::forward_heads`].
    pub fn forward_heads(&self, x: &Tensor, train: bool, kind: Kind) -> Vec<Tensor> {
        self.net
            .forward_heads(&normalize(x, self.input_norm.as_ref()), train, kind)
    }

    /// Lesion probabilities [N, 1, H, W] in [0, 1]: fp32, dropout off, no gradients.
    pub fn predict(&self, x: &Tensor) -> Tensor {
        tch::no_grad(|| self.forward(x, false, Kind::Float).sigmoid())
    }

    /// The network as a plain `tch` module (fp32 forward).
    pub fn module(&self) -> &dyn SegNet {
        self.net.as_ref()
    }

    /// Trainable parameters of the built network.
    pub fn param_count(&self) -> u64 {
        self.vs
            .trainable_variables()
            .iter()
            .map(|t| t.numel() as u64)
            .sum()
    }

    /// The device the variables live on.
    pub fn device(&self) -> Device {
        self.vs.device()
    }
}

/// Parameters of `config` without building it (the architecture's formula).
pub fn param_count(config: &ModelConfig) -> u64 {
    (arch::spec(config.arch).param_count)(config)
}
