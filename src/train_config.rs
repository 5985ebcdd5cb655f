//! Config sections of the training stage (`model`, `train`, `infer`). Always compiled, so config
//! files parse and validate the same with or without the `train` feature (libtorch).

use std::path::PathBuf;

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

use crate::arch_config::check_unet_like;
pub use crate::arch_config::{
    AttentionUnetConfig, DeepLabV3PlusConfig, MultiResUnetConfig, Unet3PlusConfig,
};
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
    /// Attention U-Net (Oktay et al. 2018): additive attention gates on the skips.
    AttentionUnet,
    /// UNet 3+ (Huang et al. 2020): full-scale skips and deep supervision.
    #[serde(rename = "unet3plus")]
    Unet3Plus,
    /// MultiResUNet (Ibtehaz & Rahman 2020): MultiRes blocks and Res paths.
    #[serde(rename = "multiresunet")]
    MultiResUnet,
    /// DeepLabV3+ (Chen et al. 2018): ResNet with atrous convolutions, ASPP, v3+ decoder.
    #[serde(rename = "deeplabv3plus")]
    DeepLabV3Plus,
}

impl Arch {
    /// Every architecture, in the order the docs list them.
    pub const ALL: [Arch; 5] = [
        Arch::Unet,
        Arch::AttentionUnet,
        Arch::Unet3Plus,
        Arch::MultiResUnet,
        Arch::DeepLabV3Plus,
    ];

    /// The name as the config writes it (`unet`, `attention_unet`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Arch::Unet => "unet",
            Arch::AttentionUnet => "attention_unet",
            Arch::Unet3Plus => "unet3plus",
            Arch::MultiResUnet => "multiresunet",
            Arch::DeepLabV3Plus => "deeplabv3plus",
        }
    }
}

impl std::fmt::Display for Arch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The network (`model` section). The defaults are the reference UNet (8 levels, 16 base
/// filters, ~125M parameters); [`ModelConfig::small`] is a preset that trains on a CPU. The
/// other architectures read their own sub-section (`model.<arch>`); a sub-section or a UNet knob
/// set for an architecture that is not selected is a config error, never silently ignored (by
/// value in [`ModelConfig::validate`], by presence, even empty or at its defaults, in a config
/// file: [`check_model_keys`]). Serialized with the knobs `arch` reads only, so a written config
/// reads back.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ModelConfig {
    /// Architecture (`unet`, `attention_unet`, `unet3plus`, `multiresunet`, `deeplabv3plus`).
    pub arch: Arch,
    /// `unet` only: number of levels (reference: 8). The input side must be divisible by
    /// 2^(levels-1).
    pub levels: usize,
    /// `unet` only: filters at the first level; level i has base_filters * 2^i.
    pub base_filters: usize,
    /// Input channels (RGB: 3).
    pub in_channels: usize,
    /// Knobs of `attention_unet`.
    pub attention_unet: AttentionUnetConfig,
    /// Knobs of `unet3plus`.
    pub unet3plus: Unet3PlusConfig,
    /// Knobs of `multiresunet`.
    pub multiresunet: MultiResUnetConfig,
    /// Knobs of `deeplabv3plus`.
    pub deeplabv3plus: DeepLabV3PlusConfig,
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            arch: Arch::Unet,
            levels: 8,
            base_filters: 16,
            in_channels: 3,
            attention_unet: AttentionUnetConfig::default(),
            unet3plus: Unet3PlusConfig::default(),
            multiresunet: MultiResUnetConfig::default(),
            deeplabv3plus: DeepLabV3PlusConfig::default(),
        }
    }
}

impl Serialize for ModelConfig {
    /// `arch`, the knobs it reads (`levels` and `base_filters` for `unet`, its sub-section
    /// otherwise) and `in_channels`: what [`check_model_keys`] accepts.
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let unet = self.arch == Arch::Unet;
        let mut st = s.serialize_struct("ModelConfig", if unet { 4 } else { 3 })?;
        st.serialize_field("arch", &self.arch)?;
        if unet {
            st.serialize_field("levels", &self.levels)?;
            st.serialize_field("base_filters", &self.base_filters)?;
        }
        st.serialize_field("in_channels", &self.in_channels)?;
        let name = self.arch.name();
        match self.arch {
            Arch::Unet => {}
            Arch::AttentionUnet => st.serialize_field(name, &self.attention_unet)?,
            Arch::Unet3Plus => st.serialize_field(name, &self.unet3plus)?,
            Arch::MultiResUnet => st.serialize_field(name, &self.multiresunet)?,
            Arch::DeepLabV3Plus => st.serialize_field(name, &self.deeplabv3plus)?,
        }
        st.end()
    }
}

/// Refuses, in the raw `model` object of a config file, a knob of an architecture `model.arch`
/// does not select: the sub-section `model.<arch>` of another architecture, and `model.levels` or
/// `model.base_filters` with another `arch` than `unet`, even when empty or at their defaults
/// (the typed config cannot tell those from absent ones). The message names the field. A
/// `model` that is not an object or an unreadable `arch` is left to the typed parse.
pub fn check_model_keys(model: &serde_json::Value) -> Result<()> {
    let Some(obj) = model.as_object() else {
        return Ok(());
    };
    let arch = match obj.get("arch") {
        None => Arch::Unet,
        Some(v) => match Arch::deserialize(v) {
            Ok(a) => a,
            Err(_) => return Ok(()),
        },
    };
    if arch != Arch::Unet {
        if let Some(k) = ["levels", "base_filters"]
            .into_iter()
            .find(|k| obj.contains_key(*k))
        {
            bail!(
                "`model.{k}` is set but `model.arch` is {arch}: `model.levels` and \
                 `model.base_filters` are the knobs of `unet`; set `model.{arch}` instead or \
                 remove `model.{k}`"
            );
        }
    }
    for other in Arch::ALL {
        if other != Arch::Unet && other != arch && obj.contains_key(other.name()) {
            bail!(
                "`model.{other}` is set but `model.arch` is {arch}; set `\"arch\": \"{other}\"` or \
                 remove `model.{other}`"
            );
        }
    }
    Ok(())
}

impl ModelConfig {
    /// The shape of a `model` object with every key any architecture reads (each sub-section at
    /// its defaults), for checks that walk a config file's keys.
    pub fn all_keys() -> serde_json::Value {
        let mut all = serde_json::Map::new();
        for arch in Arch::ALL {
            let one = Self {
                arch,
                ..Self::default()
            };
            if let Ok(serde_json::Value::Object(m)) = serde_json::to_value(one) {
                all.extend(m);
            }
        }
        serde_json::Value::Object(all)
    }

    /// A CPU-sized preset: 4 levels, 8 base filters (260,793 parameters; the reference has 124,996,849).
    pub fn small() -> Self {
        Self {
            levels: 4,
            base_filters: 8,
            ..Self::default()
        }
    }

    /// `arch=unet, levels=8, base_filters=16, in_channels=3`: how checkpoint errors name a model
    /// (the architecture and the knobs it reads).
    pub fn describe(&self) -> String {
        let knobs = match self.arch {
            Arch::Unet => format!("levels={}, base_filters={}", self.levels, self.base_filters),
            Arch::AttentionUnet => {
                let c = &self.attention_unet;
                format!("levels={}, base_filters={}", c.levels, c.base_filters)
            }
            Arch::Unet3Plus => {
                let c = &self.unet3plus;
                format!("levels={}, base_filters={}", c.levels, c.base_filters)
            }
            Arch::MultiResUnet => {
                let c = &self.multiresunet;
                format!(
                    "levels={}, base_filters={}, alpha={}",
                    c.levels, c.base_filters, c.alpha
                )
            }
            Arch::DeepLabV3Plus => {
                let c = &self.deeplabv3plus;
                format!(
                    "resnet_depth={}, output_stride={}, base_filters={}",
                    c.resnet_depth, c.output_stride, c.base_filters
                )
            }
        };
        format!(
            "arch={}, {knobs}, in_channels={}",
            self.arch, self.in_channels
        )
    }

    /// The same config with the knobs of the architectures it does not use at their defaults:
    /// two configs build the same network exactly when their `active()` are equal.
    pub fn active(&self) -> Self {
        let d = Self::default();
        let mut a = Self {
            arch: self.arch,
            in_channels: self.in_channels,
            ..d
        };
        match self.arch {
            Arch::Unet => (a.levels, a.base_filters) = (self.levels, self.base_filters),
            Arch::AttentionUnet => a.attention_unet = self.attention_unet.clone(),
            Arch::Unet3Plus => a.unet3plus = self.unet3plus.clone(),
            Arch::MultiResUnet => a.multiresunet = self.multiresunet.clone(),
            Arch::DeepLabV3Plus => a.deeplabv3plus = self.deeplabv3plus.clone(),
        }
        a
    }

    /// The field that sets how deep the network downsamples and its value, for messages.
    fn depth_field(&self) -> (&'static str, usize) {
        match self.arch {
            Arch::Unet => ("model.levels", self.levels),
            Arch::AttentionUnet => ("model.attention_unet.levels", self.attention_unet.levels),
            Arch::Unet3Plus => ("model.unet3plus.levels", self.unet3plus.levels),
            Arch::MultiResUnet => ("model.multiresunet.levels", self.multiresunet.levels),
            Arch::DeepLabV3Plus => (
                "model.deeplabv3plus.output_stride",
                self.deeplabv3plus.output_stride,
            ),
        }
    }

    /// The input side must be a multiple of this (the network halves it this many times).
    pub fn size_divisor(&self) -> u64 {
        let (_, n) = self.depth_field();
        match self.arch {
            Arch::DeepLabV3Plus => n.max(1) as u64,
            _ => 1u64 << (n.clamp(1, 63) - 1),
        }
    }

    /// Checks that a `size` x `size` input fits the network; the message names both fields.
    pub fn check_size(&self, size: u32) -> Result<()> {
        let div = self.size_divisor();
        if u64::from(size) % div != 0 {
            let (field, n) = self.depth_field();
            let rule = match self.arch {
                Arch::DeepLabV3Plus => "the output stride",
                _ => "2^(levels - 1)",
            };
            bail!(
                "`generate.size` ({size}) must be divisible by {div} for `model.arch` {} with \
                 `{field}` {n} ({rule}); pick a multiple of {div} or a shallower network",
                self.arch,
            );
        }
        Ok(())
    }

    /// Range checks of the knobs `arch` reads, and no knob set for another architecture.
    fn validate(&self) -> Result<()> {
        let d = Self::default();
        if self.arch != Arch::Unet && (self.levels, self.base_filters) != (d.levels, d.base_filters)
        {
            bail!(
                "`model.levels` and `model.base_filters` are the knobs of `unet`; for `model.arch` \
                 {0} set them in `model.{0}`",
                self.arch
            );
        }
        for (arch, set) in [
            (Arch::AttentionUnet, self.attention_unet != d.attention_unet),
            (Arch::Unet3Plus, self.unet3plus != d.unet3plus),
            (Arch::MultiResUnet, self.multiresunet != d.multiresunet),
            (Arch::DeepLabV3Plus, self.deeplabv3plus != d.deeplabv3plus),
        ] {
            if set && self.arch != arch {
                bail!(
                    "`model.{arch}` is set but `model.arch` is {}; set `\"arch\": \"{arch}\"` or \
                     remove `model.{arch}`",
                    self.arch
                );
            }
        }
        match self.arch {
            Arch::Unet => {}
            Arch::AttentionUnet => check_unet_like(
                "model.attention_unet",
                self.attention_unet.levels,
                self.attention_unet.base_filters,
            )?,
            Arch::Unet3Plus => check_unet_like(
                "model.unet3plus",
                self.unet3plus.levels,
                self.unet3plus.base_filters,
            )?,
            Arch::MultiResUnet => self.multiresunet.validate()?,
            Arch::DeepLabV3Plus => self.deeplabv3plus.validate()?,
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
    model.validate()?;
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

    #[test]
    fn architecture_knobs_have_paper_defaults_and_bad_values_name_the_field() {
        for arch in [
            "attention_unet",
            "unet3plus",
            "multiresunet",
            "deeplabv3plus",
        ] {
            check(&format!(r#"{{"model": {{"arch": "{arch}"}}}}"#)).unwrap();
        }
        let d = ModelConfig::default();
        assert_eq!(
            (
                d.unet3plus.levels,
                d.unet3plus.base_filters,
                d.multiresunet.alpha
            ),
            (5, 64, 1.67)
        );
        for (json, field) in [
            (
                r#"{"model": {"arch": "unet3plus", "unet3plus": {"levels": 1}}}"#,
                "`model.unet3plus.levels`",
            ),
            (
                r#"{"model": {"arch": "attention_unet", "attention_unet": {"base_filters": 0}}}"#,
                "`model.attention_unet.base_filters`",
            ),
            (
                r#"{"model": {"arch": "multiresunet", "multiresunet": {"alpha": 0}}}"#,
                "`model.multiresunet.alpha`",
            ),
            (
                r#"{"model": {"arch": "multiresunet", "multiresunet": {"base_filters": 2}}}"#,
                "`model.multiresunet.alpha` * `model.multiresunet.base_filters`",
            ),
            (
                r#"{"model": {"arch": "deeplabv3plus", "deeplabv3plus": {"resnet_depth": 34}}}"#,
                "`model.deeplabv3plus.resnet_depth`",
            ),
            (
                r#"{"model": {"arch": "deeplabv3plus", "deeplabv3plus": {"output_stride": 32}}}"#,
                "`model.deeplabv3plus.output_stride`",
            ),
            // A knob of another architecture is an error, not silently ignored.
            (
                r#"{"model": {"arch": "unet3plus", "levels": 4}}"#,
                "`model.levels` and `model.base_filters` are the knobs of `unet`",
            ),
            (
                r#"{"model": {"unet3plus": {"levels": 4}}}"#,
                "`model.unet3plus` is set but `model.arch` is unet",
            ),
            (
                r#"{"model": {"arch": "deeplabv3plus", "deeplabv3plus": {"depth": 50}}}"#,
                "unknown field `depth`",
            ),
            (
                r#"{"model": {"arch": "segformer"}}"#,
                "unknown variant `segformer`",
            ),
        ] {
            let err = check(json).unwrap_err();
            assert!(format!("{err:#}").contains(field), "{json}: {err:#}");
        }
    }

    /// A sub-section of an architecture that is not selected, or a `unet` knob with another
    /// `arch`, is refused in a config file even when empty or at its defaults (the typed
    /// config cannot tell those from absent); a written config reads back.
    #[test]
    fn knobs_of_an_unselected_architecture_are_refused_even_empty_or_default() {
        use crate::config::Config;
        for (json, field) in [
            (
                r#"{"model": {"attention_unet": {}}}"#,
                "`model.attention_unet` is set but `model.arch` is unet",
            ),
            (
                r#"{"model": {"arch": "unet", "deeplabv3plus": {"resnet_depth": 101}}}"#,
                "`model.deeplabv3plus` is set but `model.arch` is unet",
            ),
            (
                r#"{"model": {"arch": "multiresunet", "unet3plus": {}}}"#,
                "`model.unet3plus` is set but `model.arch` is multiresunet",
            ),
            (
                r#"{"model": {"arch": "unet3plus", "levels": 8}}"#,
                "`model.levels` is set but `model.arch` is unet3plus",
            ),
            (
                r#"{"model": {"arch": "deeplabv3plus", "base_filters": 16}}"#,
                "`model.base_filters` is set but `model.arch` is deeplabv3plus",
            ),
            // The sub-sections are still objects, not arrays of their values.
            (
                r#"{"model": {"arch": "attention_unet", "attention_unet": [5, 64]}}"#,
                "`model.attention_unet` must be a JSON object",
            ),
        ] {
            let err = Config::from_json(json).unwrap_err();
            assert!(format!("{err:#}").contains(field), "{json}: {err:#}");
        }
        for json in [
            r#"{"model": {"arch": "attention_unet", "attention_unet": {}}}"#,
            r#"{"model": {"levels": 8, "base_filters": 16}}"#,
            r#"{"model": {"arch": "unet"}}"#,
        ] {
            Config::from_json(json).unwrap().validate().unwrap();
        }
        // What the tool writes (`stats.json`, a test's config file) it reads back, per arch.
        for arch in Arch::ALL {
            let mut c = Config::default();
            c.model.arch = arch;
            let text = serde_json::to_string(&c).unwrap();
            let back = Config::from_json(&text).unwrap_or_else(|e| panic!("{text}: {e:#}"));
            assert_eq!(back, c, "{text}");
        }
    }

    #[test]
    fn size_divisor_follows_each_architecture() {
        let mut m = ModelConfig {
            arch: Arch::Unet3Plus,
            ..ModelConfig::default()
        };
        assert_eq!(m.size_divisor(), 16);
        let err = m.check_size(40).unwrap_err().to_string();
        assert!(err.contains("`model.unet3plus.levels` 5"), "{err}");
        m.arch = Arch::DeepLabV3Plus;
        assert_eq!(m.size_divisor(), 16);
        m.deeplabv3plus.output_stride = 8;
        assert!(m.check_size(520).is_ok());
        let err = m.check_size(36).unwrap_err().to_string();
        assert!(
            err.contains("`model.deeplabv3plus.output_stride` 8"),
            "{err}"
        );
        m.arch = Arch::MultiResUnet;
        m.multiresunet.levels = 3;
        assert_eq!(m.size_divisor(), 4);
        // Checkpoints compare only the knobs the architecture reads.
        let mut other = m.clone();
        other.deeplabv3plus.output_stride = 16;
        assert_eq!(m.active(), other.active());
        assert_ne!(m.active(), ModelConfig::default().active());
    }
}
