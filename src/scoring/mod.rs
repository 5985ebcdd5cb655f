//! Scoring segmentations the way the field does, at the photograph's own resolution and inside
//! its field of view (FOV). No libtorch: a probability map is plain `f32` pixels, so this module is
//! built and tested without libtorch (in the generator package, not `fundus-train`).
//!
//! - pixel scores at a probability threshold: Dice, IoU, precision, recall ([`Confusion`]);
//! - pixel AUPR of the probability map ([`aupr`], the IDRiD challenge's score);
//! - lesion-wise detection ([`lesions`]: 8-connected reference lesions found by overlap);
//! - the field of view: DIARETDB1's `fmask.tif` when present, else estimated from the photograph
//!   ([`fov_from_image`]);
//! - per-image and pooled summaries in nnU-Net's `summary.json` layout ([`summary`]).

pub mod aupr;
pub mod lesions;
pub mod photos;

use std::path::PathBuf;

use anyhow::{ensure, Result};
use image::{GrayImage, ImageBuffer, Luma, RgbImage};
use serde::{Deserialize, Serialize};

pub use aupr::{MaxDice, PrHistogram};
pub use lesions::LesionCounts;

/// A probability map: one `f32` in [0, 1] per pixel, row-major, width x height.
pub type ProbMap = ImageBuffer<Luma<f32>, Vec<f32>>;

/// Pixel counts of a thresholded prediction against the reference.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Confusion {
    /// True positives: predicted lesion, lesion in the reference.
    pub tp: u64,
    /// False positives: predicted lesion, background in the reference.
    pub fp: u64,
    /// False negatives: predicted background, lesion in the reference (JSON key `fn`).
    #[serde(rename = "fn")]
    pub fn_: u64,
    /// True negatives: background in both.
    pub tn: u64,
}

impl Confusion {
    /// Counts pixels: predicted lesion where `prob >= threshold`, true lesion where `truth > 0`.
    /// Panics when the two slices differ in length.
    pub fn from_probs(probs: &[f32], truth: &[u8], threshold: f32) -> Self {
        assert_eq!(
            probs.len(),
            truth.len(),
            "prediction and truth differ in size"
        );
        let mut c = Confusion::default();
        for (&p, &t) in probs.iter().zip(truth) {
            match (p >= threshold, t > 0) {
                (true, true) => c.tp += 1,
                (true, false) => c.fp += 1,
                (false, true) => c.fn_ += 1,
                (false, false) => c.tn += 1,
            }
        }
        c
    }

    /// Adds the counts of `o` (pooling).
    pub fn add(&mut self, o: &Confusion) {
        self.tp += o.tp;
        self.fp += o.fp;
        self.fn_ += o.fn_;
        self.tn += o.tn;
    }

    /// 2TP / (2TP + FP + FN); None when prediction and reference are both empty (nnU-Net's NaN).
    pub fn dice(&self) -> Option<f64> {
        ratio(2 * self.tp, 2 * self.tp + self.fp + self.fn_)
    }

    /// TP / (TP + FP + FN); None when both are empty.
    pub fn iou(&self) -> Option<f64> {
        ratio(self.tp, self.tp + self.fp + self.fn_)
    }

    /// TP / (TP + FP); None when nothing is predicted.
    pub fn precision(&self) -> Option<f64> {
        ratio(self.tp, self.tp + self.fp)
    }

    /// TP / (TP + FN); None when the reference is empty.
    pub fn recall(&self) -> Option<f64> {
        ratio(self.tp, self.tp + self.fn_)
    }
}

fn ratio(num: u64, den: u64) -> Option<f64> {
    (den > 0).then(|| num as f64 / den as f64)
}

/// Mean of the defined values (nnU-Net's nanmean); None when none is defined.
pub fn mean_defined(values: impl IntoIterator<Item = Option<f64>>) -> Option<f64> {
    let (sum, n) = values
        .into_iter()
        .flatten()
        .fold((0.0, 0usize), |(s, n), v| (s + v, n + 1));
    (n > 0).then(|| sum / n as f64)
}

/// Everything scored on one image (or pooled over images: the sums).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ImageScore {
    /// Pixels inside the FOV at the probability threshold.
    pub pixels: Confusion,
    /// Probability histogram of the FOV pixels, for the AUPR.
    pub pr: PrHistogram,
    /// Lesion-wise detection counts (8-connected components inside the FOV).
    pub lesions: LesionCounts,
    /// Pixels inside the FOV (the scored pixels).
    pub fov_pixels: u64,
}

impl ImageScore {
    /// Adds `o`'s counts and histogram to these (pooling over images).
    pub fn add(&mut self, o: &ImageScore) {
        self.pixels.add(&o.pixels);
        self.pr.add(&o.pr);
        self.lesions.add(&o.lesions);
        self.fov_pixels += o.fov_pixels;
    }

    /// nnU-Net's per-case scores of these counts; undefined scores are `None` (null).
    pub fn metrics(&self) -> Metrics {
        let c = &self.pixels;
        Metrics {
            dice: c.dice(),
            iou: c.iou(),
            precision: c.precision(),
            recall: c.recall(),
            tp: c.tp,
            fp: c.fp,
            fn_: c.fn_,
            tn: c.tn,
            n_pred: c.tp + c.fp,
            n_ref: c.tp + c.fn_,
            aupr: self.pr.aupr(),
            max_dice: self.pr.max_dice(),
            fov_pixels: self.fov_pixels,
            lesion_wise: LesionWise {
                recall: self.lesions.recall(),
                precision: self.lesions.precision(),
                counts: self.lesions,
            },
        }
    }
}

/// nnU-Net's per-case keys (`Dice`, `IoU`, `Precision`, `Recall`, `TP`, `FP`, `FN`, `TN`,
/// `n_pred`, `n_ref`) plus `AUPR`, `fov_pixels` (pixels scored) and `lesion_wise`. Scores are
/// fractions in [0, 1], null where undefined (an empty denominator); counts are pixels.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    /// `Dice`: 2TP / (2TP + FP + FN) ([`Confusion::dice`]); null when prediction and reference
    /// are both empty.
    #[serde(rename = "Dice")]
    pub dice: Option<f64>,
    /// `IoU` (Jaccard): TP / (TP + FP + FN); null when prediction and reference are both empty.
    #[serde(rename = "IoU")]
    pub iou: Option<f64>,
    /// `Precision`: TP / (TP + FP); null when nothing is predicted.
    #[serde(rename = "Precision")]
    pub precision: Option<f64>,
    /// `Recall` (sensitivity): TP / (TP + FN); null when the reference has no lesion pixel.
    #[serde(rename = "Recall")]
    pub recall: Option<f64>,
    /// `TP`: pixels predicted lesion and lesion in the reference.
    #[serde(rename = "TP")]
    pub tp: u64,
    /// `FP`: pixels predicted lesion, background in the reference.
    #[serde(rename = "FP")]
    pub fp: u64,
    /// `FN`: pixels predicted background, lesion in the reference.
    #[serde(rename = "FN")]
    pub fn_: u64,
    /// `TN`: pixels background in both.
    #[serde(rename = "TN")]
    pub tn: u64,
    /// Pixels predicted lesion (TP + FP).
    pub n_pred: u64,
    /// Lesion pixels of the reference (TP + FN).
    pub n_ref: u64,
    /// `AUPR`: area under the pixel precision-recall curve of the probabilities, as average
    /// precision sum (R_n - R_{n-1}) P_n ([`PrHistogram::aupr`], the IDRiD challenge's score);
    /// null when the reference has no lesion pixel.
    #[serde(rename = "AUPR")]
    pub aupr: Option<f64>,
    /// `max_Dice`: the best Dice over all probability thresholds and the threshold giving it
    /// ([`PrHistogram::max_dice`]); an oracle for choosing `infer.threshold` on training or
    /// cross-validation folds, not a test score. Null when the reference has no lesion pixel.
    #[serde(rename = "max_Dice")]
    pub max_dice: Option<aupr::MaxDice>,
    /// Pixels scored, those inside the field of view (TP + FP + FN + TN).
    pub fov_pixels: u64,
    /// Lesion-wise detection: recall, precision and their counts ([`LesionWise`]).
    pub lesion_wise: LesionWise,
}

/// Lesion-wise detection scores ([`lesions`]) with the counts they come from.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LesionWise {
    /// `Recall`: reference lesions found / reference lesions ([`LesionCounts::recall`]); null
    /// when there is no reference lesion.
    #[serde(rename = "Recall")]
    pub recall: Option<f64>,
    /// `Precision`: predicted components that overlap a reference lesion / predicted components
    /// ([`LesionCounts::precision`]); null when nothing is predicted.
    #[serde(rename = "Precision")]
    pub precision: Option<f64>,
    /// The component counts (`n_ref`, `found`, `n_pred`, `n_pred_true`), flattened into this
    /// object.
    #[serde(flatten)]
    pub counts: LesionCounts,
}

/// Scores one probability map against a binary reference (lesion where > 0), counting only the
/// pixels where `fov` > 0 (all pixels when `fov` is None). Predicted lesion where
/// `prob >= threshold`. Errors when the three sizes differ.
pub fn score_image(
    prob: &ProbMap,
    truth: &GrayImage,
    fov: Option<&GrayImage>,
    threshold: f32,
) -> Result<ImageScore> {
    ensure!(
        prob.dimensions() == truth.dimensions(),
        "prediction is {}x{} but the ground truth is {}x{}",
        prob.width(),
        prob.height(),
        truth.width(),
        truth.height()
    );
    if let Some(f) = fov {
        ensure!(
            f.dimensions() == truth.dimensions(),
            "field-of-view mask is {}x{} but the ground truth is {}x{}",
            f.width(),
            f.height(),
            truth.width(),
            truth.height()
        );
    }
    let (w, h) = truth.dimensions();
    let inside = |i: usize| fov.is_none_or(|f| f.as_raw()[i] > 0);
    let mut s = ImageScore::default();
    let mut pred_mask = GrayImage::new(w, h);
    let mut ref_mask = GrayImage::new(w, h);
    for (i, (&p, &t)) in prob.as_raw().iter().zip(truth.as_raw()).enumerate() {
        if !inside(i) {
            continue;
        }
        let (pred, lesion) = (p >= threshold, t > 0);
        s.fov_pixels += 1;
        s.pr.add_pixel(p, lesion);
        match (pred, lesion) {
            (true, true) => s.pixels.tp += 1,
            (true, false) => s.pixels.fp += 1,
            (false, true) => s.pixels.fn_ += 1,
            (false, false) => s.pixels.tn += 1,
        }
        pred_mask.as_mut()[i] = 255 * u8::from(pred);
        ref_mask.as_mut()[i] = 255 * u8::from(lesion);
    }
    s.lesions = LesionCounts::count(&pred_mask, &ref_mask);
    Ok(s)
}

/// Estimated field of view of a fundus photograph (used when no `fmask.tif` exists): on each row,
/// the span from the first to the last pixel whose brightest channel is >= `min_level` (0..255).
/// The fundus disc is convex, so spans fill dark lesions inside it; the black surround stays out.
/// Returns 255 inside, 0 outside.
pub fn fov_from_image(img: &RgbImage, min_level: u8) -> GrayImage {
    let (w, h) = img.dimensions();
    let mut out = GrayImage::new(w, h);
    for y in 0..h {
        let bright = |x: &u32| img.get_pixel(*x, y).0.iter().any(|&v| v >= min_level);
        let first = (0..w).find(bright);
        let last = (0..w).rev().find(bright);
        if let (Some(a), Some(b)) = (first, last) {
            for x in a..=b {
                out.put_pixel(x, y, Luma([255]));
            }
        }
    }
    out
}

/// Default `min_level` of [`fov_from_image`]: DIARETDB1's surround is below ~10 on every channel,
/// the fundus edge above ~30.
pub const FOV_MIN_LEVEL: u8 = 20;

/// One scored image of a summary.
#[derive(Debug, Clone)]
pub struct Case {
    /// The image's name in the summary (its file stem).
    pub image: String,
    /// Where the image and its reference came from (written beside `image`).
    pub files: CaseFiles,
    /// The image's scores.
    pub score: ImageScore,
}

/// The files and frame of one scored photograph.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CaseFiles {
    /// The photograph scored (a test-split source, or a file of the `--images` folder).
    pub image_file: PathBuf,
    /// Its ground-truth map, binarized at the summary's ground-truth threshold before scoring.
    pub reference_file: PathBuf,
    /// The photograph's own size, pixels.
    pub width: u32,
    /// The photograph's own height, pixels.
    pub height: u32,
    /// How its field of view was obtained ([`photos::Fov::how`]).
    pub fov: String,
}

/// One image of a summary as written: its name, files and scores.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CaseRecord {
    /// The image's name (its file stem, e.g. `image001`).
    pub image: String,
    /// Its files, size and field-of-view source ([`CaseFiles`]), flattened into this object.
    #[serde(flatten)]
    pub files: CaseFiles,
    /// Its scores ([`Metrics`]).
    pub metrics: Metrics,
}

/// Means over the images where each score is defined (nnU-Net's nanmean); null when none is.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Mean {
    /// Mean `Dice` over the images where it is defined.
    #[serde(rename = "Dice")]
    pub dice: Option<f64>,
    /// Mean `IoU` over the images where it is defined.
    #[serde(rename = "IoU")]
    pub iou: Option<f64>,
    /// Mean `Precision` over the images where it is defined (something predicted).
    #[serde(rename = "Precision")]
    pub precision: Option<f64>,
    /// Mean `Recall` over the images where it is defined (a reference lesion pixel).
    #[serde(rename = "Recall")]
    pub recall: Option<f64>,
    /// Mean `AUPR` over the images where it is defined (a reference lesion pixel).
    #[serde(rename = "AUPR")]
    pub aupr: Option<f64>,
    /// Mean lesion-wise recall over the images where it is defined (a reference lesion).
    pub lesion_recall: Option<f64>,
    /// Mean lesion-wise precision over the images where it is defined (a predicted component).
    pub lesion_precision: Option<f64>,
    /// Images whose Dice is defined (a reference lesion or a predicted pixel).
    pub cases_with_defined_dice: usize,
}

/// nnU-Net `summary.json` layout: `mean` (see [`Mean`]), `pooled` (the scores of the counts
/// summed over the images) and `metric_per_case`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// The per-image scores averaged ([`Mean`]).
    pub mean: Mean,
    /// The scores of the pixel counts, probability histograms and lesion counts summed over all
    /// images.
    pub pooled: Metrics,
    /// One record per image, in the order scored.
    pub metric_per_case: Vec<CaseRecord>,
}

/// The [`Summary`] of `cases`.
pub fn summary(cases: &[Case]) -> Summary {
    let mut pooled = ImageScore::default();
    for c in cases {
        pooled.add(&c.score);
    }
    let mean =
        |f: &dyn Fn(&ImageScore) -> Option<f64>| mean_defined(cases.iter().map(|c| f(&c.score)));
    Summary {
        mean: Mean {
            dice: mean(&|s| s.pixels.dice()),
            iou: mean(&|s| s.pixels.iou()),
            precision: mean(&|s| s.pixels.precision()),
            recall: mean(&|s| s.pixels.recall()),
            aupr: mean(&|s| s.pr.aupr()),
            lesion_recall: mean(&|s| s.lesions.recall()),
            lesion_precision: mean(&|s| s.lesions.precision()),
            cases_with_defined_dice: cases
                .iter()
                .filter(|c| c.score.pixels.dice().is_some())
                .count(),
        },
        pooled: pooled.metrics(),
        metric_per_case: cases
            .iter()
            .map(|c| CaseRecord {
                image: c.image.clone(),
                files: c.files.clone(),
                metrics: c.score.metrics(),
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prob(w: u32, h: u32, v: &[f32]) -> ProbMap {
        ProbMap::from_raw(w, h, v.to_vec()).unwrap()
    }
    fn gray(w: u32, h: u32, v: &[u8]) -> GrayImage {
        GrayImage::from_raw(w, h, v.to_vec()).unwrap()
    }

    #[test]
    fn pixel_scores_by_hand_inside_the_fov() {
        // 4x2. Truth lesions at x=0,1 (row 0) and x=3 (row 1); FOV excludes column 3.
        let p = prob(4, 2, &[0.9, 0.2, 0.6, 0.7, 0.1, 0.1, 0.1, 0.95]);
        let t = gray(4, 2, &[255, 255, 0, 0, 0, 0, 0, 255]);
        let fov = gray(4, 2, &[255, 255, 255, 0, 255, 255, 255, 0]);
        let s = score_image(&p, &t, Some(&fov), 0.5).unwrap();
        // Inside: (0.9,L) TP, (0.2,L) FN, (0.6,B) FP, (0.1,B) TN x3.
        assert_eq!(
            s.pixels,
            Confusion {
                tp: 1,
                fp: 1,
                fn_: 1,
                tn: 3
            }
        );
        assert_eq!(s.fov_pixels, 6);
        assert_eq!(s.pixels.dice(), Some(0.5));
        assert_eq!(s.pixels.iou(), Some(1.0 / 3.0));
        // AP: 0.9 L -> R 1/2 P 1; 0.6 B -> P 1/2; 0.2 L -> R 1 P 2/3; 0.1 B. AP = 1/2 + 1/3.
        assert!((s.pr.aupr().unwrap() - (0.5 + 1.0 / 3.0)).abs() < 1e-12);
        // One reference lesion (x 0..1, row 0), found; predicted components: {x0} and {x2}.
        assert_eq!(
            (
                s.lesions.n_ref,
                s.lesions.found,
                s.lesions.n_pred,
                s.lesions.n_pred_true
            ),
            (1, 1, 2, 1)
        );
        // Without the FOV the lesion and prediction in column 3 count too.
        let all = score_image(&p, &t, None, 0.5).unwrap();
        assert_eq!((all.pixels.tp, all.pixels.fp, all.fov_pixels), (2, 2, 8));
    }

    #[test]
    fn sizes_must_agree() {
        let err = score_image(&prob(2, 1, &[0.0, 0.0]), &gray(1, 1, &[0]), None, 0.5).unwrap_err();
        assert!(err.to_string().contains("2x1"), "{err}");
        let err = score_image(
            &prob(1, 1, &[0.0]),
            &gray(1, 1, &[0]),
            Some(&gray(2, 2, &[0; 4])),
            0.5,
        )
        .unwrap_err();
        assert!(err.to_string().contains("field-of-view"), "{err}");
    }

    #[test]
    fn estimated_fov_fills_dark_lesions_inside_the_disc() {
        // Row 1: surround 5, fundus 80 with a dark lesion (12) in the middle, surround again.
        let img = RgbImage::from_fn(7, 3, |x, y| {
            let v = match (y, x) {
                (1, 1..=5) if x == 3 => 12,
                (1, 1..=5) => 80,
                _ => 5,
            };
            image::Rgb([v, v / 2, 0])
        });
        let f = fov_from_image(&img, FOV_MIN_LEVEL);
        let row: Vec<u8> = (0..7).map(|x| f.get_pixel(x, 1)[0]).collect();
        assert_eq!(row, [0, 255, 255, 255, 255, 255, 0]);
        assert!(f.pixels().take(7).all(|p| p[0] == 0));
    }

    #[test]
    fn summary_pools_counts_and_means_defined_scores() {
        let t = gray(2, 1, &[255, 0]);
        let good = score_image(&prob(2, 1, &[0.9, 0.1]), &t, None, 0.5).unwrap();
        let empty = score_image(&prob(2, 1, &[0.1, 0.1]), &gray(2, 1, &[0, 0]), None, 0.5).unwrap();
        let files = |name: &str| CaseFiles {
            image_file: format!("{name}.png").into(),
            reference_file: format!("truth/{name}.png").into(),
            width: 2,
            height: 1,
            fov: "none".into(),
        };
        let cases = vec![
            Case {
                image: "a".into(),
                files: files("a"),
                score: good,
            },
            Case {
                image: "b".into(),
                files: files("b"),
                score: empty,
            },
        ];
        let s = summary(&cases);
        assert_eq!(s.mean.dice, Some(1.0));
        assert_eq!(s.mean.cases_with_defined_dice, 1);
        assert_eq!(s.pooled.tn, 3);
        assert_eq!(s.pooled.aupr, Some(1.0));
        assert_eq!(s.metric_per_case[1].metrics.dice, None);
        // The written layout: nnU-Net's keys, the files beside `image`, null where undefined.
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(v["metric_per_case"][0]["image_file"], "a.png");
        assert_eq!(
            v["metric_per_case"][1]["metrics"]["Dice"],
            serde_json::Value::Null
        );
        assert_eq!(v["pooled"]["lesion_wise"]["n_ref"], 1);
        let keys: Vec<&String> = v["pooled"].as_object().unwrap().keys().collect();
        assert_eq!(
            keys,
            [
                "Dice",
                "IoU",
                "Precision",
                "Recall",
                "TP",
                "FP",
                "FN",
                "TN",
                "n_pred",
                "n_ref",
                "AUPR",
                "max_Dice",
                "fov_pixels",
                "lesion_wise"
            ]
        );
        let back: Summary = serde_json::from_value(v).unwrap();
        assert_eq!(back, s);
    }
}
