//! Full-resolution prediction and scoring of fundus photographs (issue 9): square and resize the
//! photograph to `generate.size` exactly as the generator does, run the network over it as a
//! sliding window of the training input size (or in one pass), take the probabilities back to the
//! photograph's own frame in `f32`, and score them there against the original ground-truth
//! confidence map inside the field of view ([`fundus_pipeline::scoring`]).

use anyhow::{ensure, Context, Result};
use image::RgbImage;
use serde::{Deserialize, Serialize};
use tch::{Device, Tensor};

use super::data::images_tensor;
use super::probs_to_vec;
use fundus_pipeline::config::Config;
use fundus_pipeline::io::open_image;
use fundus_pipeline::prep::{binarize, fill_colour, square_image};
use fundus_pipeline::recipe_config::FovSource;
use fundus_pipeline::recipe_config::InferMode;
use fundus_pipeline::scoring::photos::{fov_for, load_fmask, Photo};
use fundus_pipeline::scoring::{score_image, summary, Case, CaseFiles, ProbMap, Summary};
use fundus_pipeline::sliding::{predict_map, to_original_frame, Mode, Window};

/// How photographs are run through the network (resolved from `generate.size`,
/// `train.patch_size`, `infer.{mode,overlap,flips}` and `train.batch_size`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Inference {
    /// Side of the square the photograph is resized to (`generate.size`).
    pub size: u32,
    /// Whole image or sliding tiles (tile side `train.patch_size`, else `generate.size`), and
    /// whether to average mirrored predictions.
    pub window: Window,
    /// Tiles per forward pass.
    pub batch: usize,
}

impl Inference {
    /// The inference `cfg` describes.
    pub fn from_config(cfg: &Config) -> Self {
        let tile = cfg.train.patch_size.unwrap_or(cfg.generate.size);
        let mode = match cfg.infer.mode {
            InferMode::SlidingWindow => Mode::Sliding {
                tile,
                overlap: cfg.infer.overlap,
            },
            InferMode::Whole => Mode::Whole,
        };
        Self {
            size: cfg.generate.size,
            window: Window {
                mode,
                flips: cfg.infer.flips,
            },
            batch: cfg.train.batch_size,
        }
    }

    /// The choices, as evaluation.json and `infer` state them.
    pub fn choices(&self) -> InferenceChoices {
        let (mode, tile, overlap, weighting) = match self.window.mode {
            Mode::Whole => ("whole", None, None, None),
            Mode::Sliding { tile, overlap } => (
                "sliding-window",
                Some(tile),
                Some(overlap),
                Some(format!(
                    "gaussian, sigma = tile/8 = {} px",
                    f64::from(tile) / 8.0
                )),
            ),
        };
        InferenceChoices {
            resized_to: format!(
                "padded to a centred square (fill = pixel (2,2)), resized to {0}x{0}; probabilities resized back (bilinear, f32) to the photograph's frame",
                self.size
            ),
            flips: self.window.flips,
            tiles_per_pass: self.batch,
            mode: mode.into(),
            tile,
            overlap,
            weighting,
        }
    }
}

/// How photographs went through the network (`choices.inference` of evaluation.json).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InferenceChoices {
    /// How a photograph was brought to the network's input size and its probabilities back to
    /// its frame, in words (names the input size, e.g. `resized to 512x512`).
    pub resized_to: String,
    /// Flip test-time augmentation.
    pub flips: bool,
    /// Network inputs per forward pass (`train.batch_size`).
    pub tiles_per_pass: usize,
    /// `whole` or `sliding-window`.
    pub mode: String,
    /// Sliding window: tile side (px), overlap (fraction of the tile) and tile weighting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tile: Option<u32>,
    /// Sliding window only: overlap of neighbouring tiles, fraction of the tile side.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overlap: Option<f64>,
    /// Sliding window only: how overlapping tiles are weighted, in words (e.g.
    /// `gaussian, sigma = tile/8 = 64 px`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weighting: Option<String>,
}

/// Probabilities of `img` in its own frame (same width and height). `net` maps a float batch
/// [N, 3, S, S] in [0, 1] on `device` to probabilities [N, 1, S, S].
pub fn predict_photo(
    net: &dyn Fn(&Tensor) -> Tensor,
    device: Device,
    img: &RgbImage,
    inf: &Inference,
) -> Result<ProbMap> {
    let (sq, geom) = square_image(img, fill_colour(img), inf.size)?;
    let map = predict_map(&sq, &inf.window, inf.batch, |bytes, n, s| {
        let x = images_tensor(bytes, n as i64, i64::from(s), device);
        probs_to_vec(&net(&x))
    })?;
    to_original_frame(&map, &geom)
}

/// The lowest ground-truth value that counts as lesion at `threshold` (as `prep::binarize`).
pub fn gt_min_value(threshold: f64) -> u16 {
    ((threshold * 252.0).ceil().max(1.0) as u16).min(256)
}

/// Predicts and scores `photos`; returns the body of evaluation.json (choices, the primary
/// ground-truth threshold in nnU-Net's layout, and the extra thresholds) and the per-photo
/// probability maps are dropped after scoring. `source` says where the photographs came from.
pub fn evaluate_photos(
    net: &dyn Fn(&Tensor) -> Tensor,
    device: Device,
    cfg: &Config,
    photos: &[Photo],
    source: &str,
) -> Result<PhotoEvaluation> {
    let inf = Inference::from_config(cfg);
    let e = &cfg.evaluate;
    let thresholds: Vec<f64> = std::iter::once(e.gt_threshold)
        .chain(e.extra_gt_thresholds.iter().copied())
        .collect();
    let fmask = load_fmask(cfg)?;
    let mut cases: Vec<Vec<Case>> = vec![Vec::new(); thresholds.len()];
    let mut fov_used = Vec::new();
    let p_thr = cfg.infer.threshold as f32;
    for photo in photos {
        let img = open_image(&photo.image)?.to_rgb8();
        let gt = open_image(&photo.truth)?.to_luma8();
        ensure!(
            img.dimensions() == gt.dimensions(),
            "photograph {} is {}x{} but its ground truth {} is {}x{}",
            photo.image.display(),
            img.width(),
            img.height(),
            photo.truth.display(),
            gt.width(),
            gt.height()
        );
        let fov = fov_for(&img, cfg, fmask.as_ref())
            .with_context(|| format!("field of view of {}", photo.image.display()))?;
        let prob = predict_photo(net, device, &img, &inf)?;
        for (k, &t) in thresholds.iter().enumerate() {
            let truth = binarize(&gt, t);
            let score = score_image(&prob, &truth, fov.mask.as_ref(), p_thr)
                .with_context(|| format!("scoring {}", photo.image.display()))?;
            cases[k].push(Case {
                image: photo.stem.clone(),
                files: CaseFiles {
                    image_file: photo.image.clone(),
                    reference_file: photo.truth.clone(),
                    width: img.width(),
                    height: img.height(),
                    fov: fov.how.clone(),
                },
                score,
            });
        }
        let pooled_note = &cases[0].last().expect("pushed").score;
        println!(
            "evaluate: {} ({}x{}): Dice {} AUPR {} lesions found {}/{}",
            photo.stem,
            img.width(),
            img.height(),
            fmt(pooled_note.pixels.dice()),
            fmt(pooled_note.pr.aupr()),
            pooled_note.lesions.found,
            pooled_note.lesions.n_ref
        );
        fov_used.push(fov.how);
    }
    fov_used.dedup();
    let block = |k: usize| ThresholdSummary {
        summary: summary(&cases[k]),
        gt_threshold: thresholds[k],
        gt_min_value: gt_min_value(thresholds[k]),
    };
    let choices = Choices {
        images: source.into(),
        resolution: "original photograph (each case's width x height)".into(),
        threshold: cfg.infer.threshold,
        threshold_rule: "predicted lesion where probability >= threshold".into(),
        gt_threshold: e.gt_threshold,
        gt_rule: "reference lesion where ground-truth value v > 0 and v / 252 >= gt_threshold".into(),
        gt_min_value: gt_min_value(e.gt_threshold),
        fov: fov_used,
        fov_setting: e.fov,
        inference: inf.choices(),
        aupr_rule: "average precision: sum over thresholds of (R_n - R_{n-1}) P_n, every distinct probability (quantized to 1/65535) a threshold, no interpolation; pixels inside the FOV".into(),
        lesion_rule: "reference lesions: 8-connected components of the binarized ground truth inside the FOV, found when a predicted pixel overlaps; lesion precision over 8-connected predicted components that overlap a reference pixel".into(),
        mean_rule: "mean over the images where the score is defined (nnU-Net's nanmean)".into(),
        pooled_rule: "scores of the counts summed over all images".into(),
    };
    Ok(PhotoEvaluation {
        primary: block(0),
        choices,
        images: photos.len(),
        extra_gt_thresholds: (1..thresholds.len()).map(block).collect(),
    })
}

/// The scores of the photographs at the primary ground-truth threshold (nnU-Net's layout,
/// flattened into the top level), the choices, and the same at each extra threshold.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PhotoEvaluation {
    /// The scores at `evaluate.gt_threshold` ([`ThresholdSummary`]), flattened into the top
    /// level.
    #[serde(flatten)]
    pub primary: ThresholdSummary,
    /// Every choice the scores depend on ([`Choices`]).
    pub choices: Choices,
    /// Photographs scored.
    pub images: usize,
    /// The same scores at each of `evaluate.extra_gt_thresholds`, in config order.
    pub extra_gt_thresholds: Vec<ThresholdSummary>,
}

/// A [`Summary`] at one ground-truth threshold.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ThresholdSummary {
    /// nnU-Net's `mean`, `pooled` and `metric_per_case` at this threshold, flattened into this
    /// object.
    #[serde(flatten)]
    pub summary: Summary,
    /// Fraction of 252 a ground-truth value must reach to count as lesion.
    pub gt_threshold: f64,
    /// The lowest ground-truth value (of 252) that counts ([`gt_min_value`]).
    pub gt_min_value: u16,
}

/// Every choice the scores depend on, stated (`choices` of evaluation.json).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Choices {
    /// Where the photographs came from.
    pub images: String,
    /// The resolution scored at, in words: always each photograph's own width x height.
    pub resolution: String,
    /// Probability threshold (`infer.threshold`).
    pub threshold: f64,
    /// The probability-threshold rule, in words (lesion where probability >= `threshold`).
    pub threshold_rule: String,
    /// The primary ground-truth threshold (`evaluate.gt_threshold`), a fraction of 252.
    pub gt_threshold: f64,
    /// The ground-truth rule, in words: lesion where the map's value v > 0 and v / 252 >=
    /// `gt_threshold` (DIARETDB1's ground-truth maps are on a 0..252 scale).
    pub gt_rule: String,
    /// The lowest ground-truth value (of 252) that counts as lesion at `gt_threshold`
    /// ([`gt_min_value`]).
    pub gt_min_value: u16,
    /// How the fields of view were obtained (consecutive repeats removed).
    pub fov: Vec<String>,
    /// The field-of-view setting (`evaluate.fov`: `auto`, `fmask`, `estimate` or `none`).
    pub fov_setting: FovSource,
    /// How the photographs went through the network ([`InferenceChoices`]).
    pub inference: InferenceChoices,
    /// How the AUPR is computed, in words: average precision over every distinct probability
    /// (quantized to 1/65535), no interpolation, pixels inside the field of view.
    pub aupr_rule: String,
    /// How lesion-wise detection is counted, in words: 8-connected components, found on overlap.
    pub lesion_rule: String,
    /// How `mean` is taken, in words: over the images where a score is defined (nnU-Net's
    /// nanmean).
    pub mean_rule: String,
    /// How `pooled` is taken, in words: the scores of the counts summed over all images.
    pub pooled_rule: String,
}

fn fmt(v: Option<f64>) -> String {
    v.map_or("n/a".to_string(), |v| format!("{v:.4}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gt_min_values_are_the_protocol_levels() {
        assert_eq!(gt_min_value(0.75), 189);
        assert_eq!(gt_min_value(0.3), 76);
        assert_eq!(gt_min_value(0.0), 1);
    }
}
