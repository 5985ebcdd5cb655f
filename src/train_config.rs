//! Config sections of the training stage (`model`, `train`, `infer`). Always compiled, so config
//! files parse and validate the same with or without the `train` feature (libtorch).

use anyhow::Result;
use serde::{Deserialize, Serialize};

/// UNet architecture (SPEC section 7).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ModelConfig {
    /// Number of levels (reference: 8).
    pub levels: usize,
    /// Filters at the first level; level i has base_filters * 2^i.
    pub base_filters: usize,
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            levels: 8,
            base_filters: 16,
        }
    }
}

/// Training loop settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {}

/// Inference settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(default, deny_unknown_fields)]
pub struct InferConfig {}

/// Range checks for the training sections; messages name the field.
pub fn validate(_model: &ModelConfig, _train: &TrainConfig, _infer: &InferConfig) -> Result<()> {
    Ok(())
}
