//! The architecture registry. One file per architecture holds its layers and exposes a
//! [`ArchSpec`]; [`spec`] maps each [`Arch`] of the config to it.
//!
//! Adding an architecture: a file here with its layers, a `SPEC` and a `#[cfg(test)]` shape and
//! parameter-count test; a variant of [`Arch`] (with its name and size divisor in
//! `src/train_config.rs`); one line in [`spec`]. The compiler points at every `match` that misses
//! the new variant.

pub mod attention_unet;
pub mod deeplabv3plus;
pub mod layers;
pub mod multiresunet;
pub mod unet;
pub mod unet3plus;

use tch::nn::Path;

use super::model::SegNet;
use fundus_pipeline::train_config::{Arch, ModelConfig};

/// What an architecture provides to the model seam ([`super::model::Model`]).
#[derive(Clone, Copy)]
pub struct ArchSpec {
    /// The config's name for it (`model.arch`).
    pub arch: Arch,
    /// The paper (or reference implementation) it follows, for docs and messages.
    pub paper: &'static str,
    /// Creates the variables under the path (initial weights from libtorch's global generator)
    /// and returns the network.
    pub build: fn(&Path, &ModelConfig) -> Box<dyn SegNet>,
    /// Number of trainable parameters, computed from the config without building the network
    /// (the formula docs/training.md gives; unit tests check it against the built network).
    pub param_count: fn(&ModelConfig) -> u64,
    /// A preset that trains on a CPU (the benchmark's `cpu/<arch>_small` case).
    pub small: fn() -> ModelConfig,
}

/// The registry: the spec of `arch`.
pub fn spec(arch: Arch) -> ArchSpec {
    match arch {
        Arch::Unet => unet::SPEC,
        Arch::AttentionUnet => attention_unet::SPEC,
        Arch::Unet3Plus => unet3plus::SPEC,
        Arch::MultiResUnet => multiresunet::SPEC,
        Arch::DeepLabV3Plus => deeplabv3plus::SPEC,
    }
}
