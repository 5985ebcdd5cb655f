//! Config of the real-photograph recipe (issue 9): the training loss, patch sampling, the
//! inference geometry and the `evaluate` section. Always compiled (no libtorch), so config files
//! validate the same in every build. The keys live in `train`, `infer` and `evaluate`; this
//! module holds their types, defaults (with their source) and range checks.

use std::path::PathBuf;

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

/// The training loss (`train.loss`).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum LossKind {
    /// (BCE-with-logits + (1 - soft Dice)) / 2: the reference project's loss.
    BceDice,
    /// 1 - Tversky index TI = (TP + 1) / (TP + alpha FN + beta FP + 1) (Salehi et al. 2017).
    Tversky,
    /// (1 - TI)^(1/gamma) (Abraham & Khan 2019, ISBI: alpha 0.7, beta 0.3, gamma 4/3).
    FocalTversky,
}

impl std::fmt::Display for LossKind {
    /// The loss as users write it in the config (`bce-dice`, `tversky`, `focal-tversky`).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LossKind::BceDice => "bce-dice",
            LossKind::Tversky => "tversky",
            LossKind::FocalTversky => "focal-tversky",
        })
    }
}

/// How `infer` and `evaluate` run the network over a photograph (`infer.mode`).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum InferMode {
    /// Tiles of the training input size (`train.patch_size`, else `generate.size`) over the
    /// photograph squared and resized to `generate.size`, gaussian-weighted (nnU-Net).
    SlidingWindow,
    /// One pass over the photograph squared and resized to `generate.size` (the seed's mode).
    Whole,
}

/// Where the field of view comes from when scoring (`evaluate.fov`).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum FovSource {
    /// DIARETDB1's `resources/images/ddb1_fundusmask/fmask.tif` when it exists and has the
    /// photograph's size, else estimated from the photograph.
    Auto,
    /// The fmask file; an error when it is missing or of another size.
    Fmask,
    /// Estimated from each photograph (`scoring::fov_from_image` at `evaluate.fov_min_level`).
    Estimate,
    /// Every pixel counts.
    None,
}

/// `evaluate`: how predictions are scored against the ground truth, at the photograph's original
/// resolution.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct EvaluateConfig {
    /// Reference lesion where the ground-truth confidence v satisfies v / 252 >= this (v > 0);
    /// DIARETDB1's protocol uses 0.75 (v >= 189).
    pub gt_threshold: f64,
    /// Further ground-truth thresholds reported beside it (0.3: v >= 76, "most experts' marks").
    pub extra_gt_thresholds: Vec<f64>,
    /// Field of view: `auto`, `fmask`, `estimate` or `none`.
    pub fov: FovSource,
    /// Brightest-channel level (0..255) above which a pixel starts the estimated FOV of its row.
    pub fov_min_level: u8,
    /// Score this folder of photographs instead of the test split's sources (with `truth`;
    /// `pipeline evaluate --images`).
    pub images: Option<PathBuf>,
    /// Folder of their ground-truth confidence maps, paired by file stem (`--truth`).
    pub truth: Option<PathBuf>,
}

impl Default for EvaluateConfig {
    fn default() -> Self {
        Self {
            gt_threshold: 0.75,
            extra_gt_thresholds: vec![0.3],
            fov: FovSource::Auto,
            fov_min_level: crate::scoring::FOV_MIN_LEVEL,
            images: None,
            truth: None,
        }
    }
}

/// `train.input_norm`: a fixed per-channel affine map of the network input, x' = (x - mean) / std
/// on the [0, 1] RGB scale (applied in training, validation, evaluation and inference alike),
/// optionally after local contrast normalization x - G_sigma * x.
/// DIARETDB1 photographs are dark and low-contrast: inside the field of view the green channel
/// has std ~0.06 and blue ~0.02 on [0, 1], and a hemorrhage is a local green dip of ~0.007 under
/// an illumination gradient larger than that; the reference feeds the raw [0, 1] (or 0..255)
/// values.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct InputNorm {
    /// Per-channel (R, G, B) mean subtracted, on the [0, 1] scale; finite.
    pub mean: [f64; 3],
    /// Per-channel (R, G, B) divisor, on the [0, 1] scale; finite and > 0.
    pub std: [f64; 3],
    /// Local contrast normalization first: each channel minus its gaussian blur of this sigma,
    /// in pixels of the network input (Graham 2015, the Kaggle diabetic-retinopathy winner's
    /// `4 (x - G_sigma * x)`; removes the illumination gradient). The blur covers the field of
    /// view only (normalized convolution) and the output is 0 outside it
    /// (`train::input_norm::local_contrast`). Null = off; within 0.5..=256 (below half a pixel the blur is the pixel and nothing is left).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_contrast_sigma: Option<f64>,
}

/// Defaults of the new `train` keys, with their source.
pub mod defaults {
    /// nnU-Net's `oversample_foreground_percent` (Isensee et al. 2021): a third of the patches
    /// centred on foreground.
    pub const FOREGROUND_SHARE: f64 = 0.33;
    /// Abraham & Khan 2019: alpha (weight of false negatives) 0.7, beta 0.3, gamma 4/3.
    pub const TVERSKY_ALPHA: f64 = 0.7;
    /// Tversky beta (weight of false positives), Abraham & Khan 2019.
    pub const TVERSKY_BETA: f64 = 0.3;
    /// Focal exponent gamma of the focal Tversky loss, Abraham & Khan 2019.
    pub const FOCAL_GAMMA: f64 = 4.0 / 3.0;

    /// nnU-Net's default tile overlap: half a tile (step 0.5).
    pub const OVERLAP: f64 = 0.5;
}

/// Range checks of the `evaluate` section; messages name the field.
pub fn validate_evaluate(e: &EvaluateConfig) -> Result<()> {
    in_unit("evaluate.gt_threshold", e.gt_threshold)?;
    for (i, t) in e.extra_gt_thresholds.iter().enumerate() {
        in_unit(&format!("evaluate.extra_gt_thresholds[{i}]"), *t)?;
    }
    if e.images.is_some() != e.truth.is_some() {
        bail!("`evaluate.images` and `evaluate.truth` go together (photographs and their ground truth)");
    }
    Ok(())
}

/// `train.input_norm`: finite means, positive stds.
pub fn validate_input_norm(n: &InputNorm) -> Result<()> {
    for c in 0..3 {
        if !n.mean[c].is_finite() {
            bail!(
                "`train.input_norm.mean[{c}]` must be finite, got {}",
                n.mean[c]
            );
        }
        if !(n.std[c].is_finite() && n.std[c] > 0.0) {
            bail!("`train.input_norm.std[{c}]` must be > 0, got {}", n.std[c]);
        }
    }
    if let Some(s) = n.local_contrast_sigma {
        // Below half a pixel the blur is the pixel itself and the input would be all zeros.
        if !(s.is_finite() && (0.5..=256.0).contains(&s)) {
            bail!(
                "`train.input_norm.local_contrast_sigma` must be within 0.5..=256 pixels, got {s}"
            );
        }
    }
    Ok(())
}

/// `field` must be a finite number in [0, 1].
pub fn in_unit(field: &str, x: f64) -> Result<()> {
    if !(x.is_finite() && (0.0..=1.0).contains(&x)) {
        bail!("`{field}` must be within 0..=1, got {x}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loss_names_in_messages_are_the_config_names() {
        for k in [LossKind::BceDice, LossKind::Tversky, LossKind::FocalTversky] {
            let config_name = serde_json::to_value(k).unwrap();
            assert_eq!(config_name.as_str(), Some(k.to_string().as_str()));
        }
    }

    #[test]
    fn evaluate_defaults_and_checks() {
        let e = EvaluateConfig::default();
        assert_eq!(
            (e.gt_threshold, e.extra_gt_thresholds.clone()),
            (0.75, vec![0.3])
        );
        validate_evaluate(&e).unwrap();
        let bad = EvaluateConfig {
            extra_gt_thresholds: vec![0.3, 1.5],
            ..e
        };
        let err = validate_evaluate(&bad).unwrap_err().to_string();
        assert!(err.contains("`evaluate.extra_gt_thresholds[1]`"), "{err}");
        let parsed: EvaluateConfig = serde_json::from_str(r#"{"fov": "estimate"}"#).unwrap();
        assert_eq!(parsed.fov, FovSource::Estimate);
        assert!(serde_json::from_str::<EvaluateConfig>(r#"{"fov": "x"}"#).is_err());
        assert_eq!(
            serde_json::from_str::<LossKind>(r#""focal-tversky""#).unwrap(),
            LossKind::FocalTversky
        );
    }
}

#[cfg(test)]
mod preset_tests {
    use crate::config::Config;
    use std::path::Path;

    #[test]
    fn the_hemorrhage_presets_load_and_use_the_recipe() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("generator-configs");
        for (file, patch, size) in [
            ("hemorrhages-cpu.json", 128, 256),
            ("hemorrhages-gpu.json", 256, 512),
        ] {
            let cfg = Config::load(&root.join(file)).unwrap();
            assert_eq!(cfg.train.patch_size, Some(patch), "{file}");
            assert_eq!(cfg.generate.size, size, "{file}");
            assert_eq!(cfg.train.loss, super::LossKind::BceDice, "{file}");
            assert!(cfg.train.loss_in_fov, "{file}");
            // Local contrast at the same physical scale: sigma 4 px at 256, 8 px at 512.
            let sigma = cfg.train.input_norm.and_then(|n| n.local_contrast_sigma);
            assert_eq!(sigma, Some(f64::from(size) / 64.0), "{file}");
            // The tile must survive the model's halvings.
            assert_eq!(patch % (1 << (cfg.model.levels - 1)), 0, "{file}");
        }
        let check = |j: &str| Config::from_json(j).and_then(|c| c.validate());
        let err = check(r#"{"train": {"input_norm": {"mean": [0, 0, 0], "std": [1, 0, 1]}}}"#)
            .unwrap_err();
        assert!(
            format!("{err:#}").contains("`train.input_norm.std[1]`"),
            "{err:#}"
        );
        let err = check(
            r#"{"train": {"input_norm": {"mean": [0, 0, 0], "std": [1, 1, 1], "local_contrast_sigma": 0.1}}}"#,
        )
        .unwrap_err();
        assert!(
            format!("{err:#}").contains("`train.input_norm.local_contrast_sigma`"),
            "{err:#}"
        );
        let err = check(r#"{"generate": {"size": 64}, "train": {"patch_size": 128}}"#).unwrap_err();
        assert!(
            format!("{err:#}").contains("`train.patch_size` (128)"),
            "{err:#}"
        );
    }
}
