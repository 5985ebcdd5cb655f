//! Config sections of the training stage (`model`, `train`, `infer`). Always compiled, so config
//! files parse and validate the same with or without the `train` feature (libtorch).

use std::path::PathBuf;

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

use crate::recipe_config::{
    defaults, in_unit, validate_input_norm, InferMode, InputNorm, LossKind,
};

/// The network architectures (`model.arch`). Each has its layers in one file of
/// `src/train/arch/` and one line in that folder's registry (`arch::spec`); an unknown name is
/// a config error naming `model.arch`.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum Arch {
    /// The reference UNet (docs/training.md#the-model): `levels` levels of two convolutions.
    #[default]
    Unet,
}

impl Arch {
    /// Every architecture, in the order the docs list them.
    pub const ALL: [Arch; 1] = [Arch::Unet];

    /// The name as the config writes it (`unet`).
    pub fn name(self) -> &'static str {
        match self {
            Arch::Unet => "unet",
        }
    }
}

impl std::fmt::Display for Arch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The network (`model` section). The defaults are the reference UNet (8 levels, 16 base
/// filters, ~125M parameters); [`ModelConfig::small`] is a preset that trains on a CPU.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct ModelConfig {
    /// Architecture (`unet`).
    pub arch: Arch,
    /// Number of levels (reference: 8). The input side must be divisible by 2^(levels-1).
    pub levels: usize,
    /// Filters at the first level; level i has base_filters * 2^i.
    pub base_filters: usize,
    /// Input channels (RGB: 3).
    pub in_channels: usize,
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            arch: Arch::Unet,
            levels: 8,
            base_filters: 16,
            in_channels: 3,
        }
    }
}

impl ModelConfig {
    /// A CPU-sized preset: 4 levels, 8 base filters (260,793 parameters; the reference has 124,996,849).
    pub fn small() -> Self {
        Self {
            levels: 4,
            base_filters: 8,
            ..Self::default()
        }
    }

    /// `arch=unet, levels=8, base_filters=16, in_channels=3`: how checkpoint errors name a model.
    pub fn describe(&self) -> String {
        format!(
            "arch={}, levels={}, base_filters={}, in_channels={}",
            self.arch, self.levels, self.base_filters, self.in_channels
        )
    }

    /// The input side must be a multiple of this (the network halves it this many times).
    pub fn size_divisor(&self) -> u64 {
        match self.arch {
            Arch::Unet => 1u64 << (self.levels.clamp(1, 63) - 1),
        }
    }

    /// Checks that a `size` x `size` input fits the network; the message names both fields.
    pub fn check_size(&self, size: u32) -> Result<()> {
        let div = self.size_divisor();
        if u64::from(size) % div != 0 {
            bail!(
                "`generate.size` ({size}) must be divisible by {div} for `model.arch` {} with \
                 `model.levels` {} (2^(levels - 1)); pick a multiple of {div} or fewer levels",
                self.arch,
                self.levels
            );
        }
        Ok(())
    }
}

/// Training loop settings (defaults mirror the reference's training config; the table is in
/// docs/training.md, "Config reference").
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    /// Maximum number of epochs.
    pub epochs: usize,
    /// Images per optimizer step (also used for validation and evaluation batches).
    pub batch_size: usize,
    /// Adam learning rate at the start.
    pub learning_rate: f64,
    /// Every gradient value is clamped to [-clip_value, clip_value] before the step; 0 = off.
    pub clip_value: f64,
    /// Reduce-on-plateau: multiply the learning rate by this factor ...
    pub reduce_lr_factor: f64,
    /// ... after this many epochs without a lower validation loss.
    pub reduce_lr_patience: usize,
    /// The learning rate never goes below this.
    pub min_lr: f64,
    /// Stop after this many epochs without a lower validation loss; 0 = never stop early.
    pub early_stopping_patience: usize,
    /// Cap on optimizer steps per epoch (quick runs, benchmarks); null = the whole train split.
    pub max_steps_per_epoch: Option<usize>,
    /// Cap on validation batches per epoch; null = the whole valid split.
    pub max_valid_steps: Option<usize>,
    /// bf16 mixed precision on CUDA (convolutions in bf16, weights and loss in fp32). Ignored on CPU.
    pub mixed_precision: bool,
    /// Number of fixed validation images (the first by name) predicted after every epoch and
    /// written as `Epoch_<e>_<stem>.jpg`; 0 = none.
    pub preview_images: usize,
    /// Side of the square training patches cut from the generated pairs (px); null = whole
    /// pairs. Must divide by 2^(`model.levels`-1) and be <= `generate.size`.
    pub patch_size: Option<u32>,
    /// Share of patches centred on a lesion pixel (nnU-Net: 0.33); the rest are placed uniformly.
    pub foreground_share: f64,
    /// Optimizer steps per epoch when sampling patches; null = one pass over the training pairs
    /// (ceil(pairs / batch_size)). nnU-Net uses 250.
    pub epoch_length: Option<usize>,
    /// `bce-dice` (the reference's), `tversky` or `focal-tversky` (Abraham & Khan 2019).
    pub loss: LossKind,
    /// Tversky weight of false negatives (Abraham & Khan 2019: 0.7).
    pub tversky_alpha: f64,
    /// Tversky weight of false positives (0.3).
    pub tversky_beta: f64,
    /// Focal-Tversky gamma: loss = (1 - TI)^(1/gamma) (4/3).
    pub focal_gamma: f64,
    /// Loss and soft Dice only over the field of view, estimated per image from its pixels
    /// (`scoring::fov_from_image`, level `evaluate.fov_min_level`).
    pub loss_in_fov: bool,
    /// Per-channel input normalization `{"mean": [r, g, b], "std": [r, g, b]}` on the [0, 1]
    /// scale; null = the reference's raw [0, 1] input.
    pub input_norm: Option<InputNorm>,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            epochs: 100,
            batch_size: 2,
            learning_rate: 7e-5,
            clip_value: 0.5,
            reduce_lr_factor: 0.4,
            reduce_lr_patience: 4,
            min_lr: 0.0,
            early_stopping_patience: 10,
            max_steps_per_epoch: None,
            max_valid_steps: None,
            mixed_precision: false,
            preview_images: 3,
            patch_size: None,
            foreground_share: defaults::FOREGROUND_SHARE,
            epoch_length: None,
            loss: LossKind::BceDice,
            tversky_alpha: defaults::TVERSKY_ALPHA,
            tversky_beta: defaults::TVERSKY_BETA,
            focal_gamma: defaults::FOCAL_GAMMA,
            loss_in_fov: false,
            input_norm: None,
        }
    }
}

/// Inference settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct InferConfig {
    /// Folder of full-size fundus images; null = the full-size sources of the test split.
    pub images: Option<PathBuf>,
    /// A pixel is lesion when its probability is >= threshold (0.5 = 128 on the 0..255 map).
    pub threshold: f64,
    /// Opacity of the green mask drawn over the image in `<stem>_overlay.png`.
    pub overlay_alpha: f64,
    /// `sliding-window` (tiles of the training input size, gaussian-weighted) or `whole` (one
    /// pass over the photograph resized to `generate.size`).
    pub mode: InferMode,
    /// Fraction of a tile shared by neighbouring tiles, in [0, 1) (nnU-Net: 0.5).
    pub overlap: f64,
    /// Test-time augmentation: also predict each tile flipped left-right, top-bottom and both,
    /// and average (nnU-Net's mirroring); 4x the compute.
    pub flips: bool,
}

impl Default for InferConfig {
    fn default() -> Self {
        Self {
            images: None,
            threshold: 0.5,
            overlay_alpha: 0.5,
            mode: InferMode::SlidingWindow,
            overlap: defaults::OVERLAP,
            flips: false,
        }
    }
}

/// Range checks for the training sections; messages name the field. The size check
/// ([`ModelConfig::check_size`]) is separate: a config used only to generate a dataset may have a
/// `generate.size` that the (default) model cannot take; every command that trains, evaluates or
/// infers checks it when it loads the config (`pipeline all` before it generates anything).
pub fn validate(model: &ModelConfig, train: &TrainConfig, infer: &InferConfig) -> Result<()> {
    if !(1..=12).contains(&model.levels) {
        bail!("`model.levels` must be within 1..=12, got {}", model.levels);
    }
    if model.base_filters < 1 {
        bail!(
            "`model.base_filters` must be >= 1, got {}",
            model.base_filters
        );
    }
    if model.base_filters.saturating_mul(1 << (model.levels - 1)) > 65536 {
        bail!(
            "`model.base_filters` * 2^(`model.levels`-1) must be <= 65536, got {} * 2^{}",
            model.base_filters,
            model.levels - 1
        );
    }
    if model.in_channels != 3 {
        bail!(
            "`model.in_channels` must be 3 (RGB input), got {}",
            model.in_channels
        );
    }
    if train.epochs < 1 {
        bail!("`train.epochs` must be >= 1, got {}", train.epochs);
    }
    if train.batch_size < 1 {
        bail!("`train.batch_size` must be >= 1, got {}", train.batch_size);
    }
    positive("train.learning_rate", train.learning_rate)?;
    if !(train.clip_value.is_finite() && train.clip_value >= 0.0) {
        bail!("`train.clip_value` must be >= 0, got {}", train.clip_value);
    }
    if !(train.reduce_lr_factor > 0.0 && train.reduce_lr_factor <= 1.0) {
        bail!(
            "`train.reduce_lr_factor` must be in (0, 1], got {}",
            train.reduce_lr_factor
        );
    }
    if !(train.min_lr.is_finite() && train.min_lr >= 0.0) {
        bail!("`train.min_lr` must be >= 0, got {}", train.min_lr);
    }
    if train.max_steps_per_epoch == Some(0) {
        bail!("`train.max_steps_per_epoch` must be >= 1 (or null), got 0");
    }
    if train.max_valid_steps == Some(0) {
        bail!("`train.max_valid_steps` must be >= 1 (or null), got 0");
    }
    if train.patch_size == Some(0) {
        bail!("`train.patch_size` must be >= 1 (or null), got 0");
    }
    in_unit("train.foreground_share", train.foreground_share)?;
    if train.epoch_length == Some(0) {
        bail!("`train.epoch_length` must be >= 1 (or null), got 0");
    }
    in_unit("train.tversky_alpha", train.tversky_alpha)?;
    in_unit("train.tversky_beta", train.tversky_beta)?;
    positive("train.focal_gamma", train.focal_gamma)?;
    if let Some(n) = &train.input_norm {
        validate_input_norm(n)?;
    }
    if !(infer.overlap.is_finite() && (0.0..1.0).contains(&infer.overlap)) {
        bail!(
            "`infer.overlap` must be within [0, 1), got {}",
            infer.overlap
        );
    }
    if !(infer.threshold.is_finite() && infer.threshold > 0.0 && infer.threshold <= 1.0) {
        bail!(
            "`infer.threshold` must be in (0, 1], got {}",
            infer.threshold
        );
    }
    if !(infer.overlay_alpha.is_finite() && (0.0..=1.0).contains(&infer.overlay_alpha)) {
        bail!(
            "`infer.overlay_alpha` must be within 0..=1, got {}",
            infer.overlay_alpha
        );
    }
    Ok(())
}

fn positive(field: &str, x: f64) -> Result<()> {
    if !(x.is_finite() && x > 0.0) {
        bail!("`{field}` must be > 0, got {x}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(json: &str) -> Result<()> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Sections {
            #[serde(default)]
            model: ModelConfig,
            #[serde(default)]
            train: TrainConfig,
            #[serde(default)]
            infer: InferConfig,
        }
        let s: Sections = serde_json::from_str(json)?;
        validate(&s.model, &s.train, &s.infer)
    }

    #[test]
    fn defaults_are_the_reference_and_valid() {
        check("{}").unwrap();
        let t = TrainConfig::default();
        assert_eq!((t.learning_rate, t.clip_value), (7e-5, 0.5));
        assert_eq!((t.reduce_lr_factor, t.reduce_lr_patience), (0.4, 4));
        assert_eq!(t.early_stopping_patience, 10);
        assert_eq!(ModelConfig::default().levels, 8);
        let small = ModelConfig::small();
        validate(&small, &t, &InferConfig::default()).unwrap();
    }

    #[test]
    fn bad_values_name_the_field() {
        for (json, field) in [
            (r#"{"train": {"epochs": 0}}"#, "`train.epochs` must be >= 1"),
            (r#"{"train": {"batch_size": 0}}"#, "`train.batch_size`"),
            (
                r#"{"train": {"learning_rate": -1}}"#,
                "`train.learning_rate`",
            ),
            (
                r#"{"train": {"reduce_lr_factor": 2}}"#,
                "`train.reduce_lr_factor`",
            ),
            (
                r#"{"train": {"max_steps_per_epoch": 0}}"#,
                "`train.max_steps_per_epoch`",
            ),
            (r#"{"model": {"levels": 0}}"#, "`model.levels`"),
            (r#"{"model": {"base_filters": 0}}"#, "`model.base_filters`"),
            (r#"{"model": {"in_channels": 1}}"#, "`model.in_channels`"),
            (r#"{"infer": {"threshold": 0}}"#, "`infer.threshold`"),
            (r#"{"infer": {"overlap": 1}}"#, "`infer.overlap`"),
            (r#"{"train": {"patch_size": 0}}"#, "`train.patch_size`"),
            (
                r#"{"train": {"foreground_share": 1.5}}"#,
                "`train.foreground_share`",
            ),
            (r#"{"train": {"focal_gamma": 0}}"#, "`train.focal_gamma`"),
        ] {
            let err = check(json).unwrap_err();
            assert!(format!("{err:#}").contains(field), "{json}: {err:#}");
        }
        let err = check(r#"{"train": {"epoch": 3}}"#).unwrap_err();
        assert!(format!("{err:#}").contains("epoch"), "{err:#}");
    }
}
