//! Config of the real-photograph recipe (issue 9): the training loss, patch sampling, the
//! inference geometry and the `evaluate` section. Always compiled (no libtorch), so config files
//! validate the same in every build. The keys live in `train`, `infer` and `evaluate`; this
//! module holds their types, defaults (with their source) and range checks.

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
}

impl Default for EvaluateConfig {
    fn default() -> Self {
        Self {
            gt_threshold: 0.75,
            extra_gt_thresholds: vec![0.3],
            fov: FovSource::Auto,
            fov_min_level: crate::scoring::FOV_MIN_LEVEL,
        }
    }
}

/// Defaults of the new `train` keys, with their source.
pub mod defaults {
    /// nnU-Net's `oversample_foreground_percent` (Isensee et al. 2021): a third of the patches
    /// centred on foreground.
    pub const FOREGROUND_SHARE: f64 = 0.33;
    /// Abraham & Khan 2019: alpha (weight of false negatives) 0.7, beta 0.3, gamma 4/3.
    pub const TVERSKY_ALPHA: f64 = 0.7;
    pub const TVERSKY_BETA: f64 = 0.3;
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
