//! Lesion-wise detection: a reference lesion is an 8-connected component of the binarized ground
//! truth (inside the field of view); it counts as found when at least one predicted pixel overlaps
//! it. Recall is over reference lesions, precision over predicted components (8-connected): a
//! predicted component is a true detection when it overlaps any reference lesion pixel.
//! Components come from `imageproc::region_labelling::connected_components`.

use image::{GrayImage, Luma};
use imageproc::region_labelling::{connected_components, Connectivity};
use serde::{Deserialize, Serialize};

/// Lesion-wise counts of one image (or pooled: the sums).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LesionCounts {
    /// Reference lesions (8-connected ground-truth components inside the field of view).
    pub n_ref: u64,
    /// Reference lesions overlapped by the prediction.
    pub found: u64,
    /// Predicted components.
    pub n_pred: u64,
    /// Predicted components that overlap a reference lesion.
    pub n_pred_true: u64,
}

impl LesionCounts {
    /// `pred` and `truth`: lesion where the value is > 0 (both already restricted to the field of
    /// view). Panics when the sizes differ (callers check).
    pub fn count(pred: &GrayImage, truth: &GrayImage) -> Self {
        assert_eq!(pred.dimensions(), truth.dimensions(), "pred/truth sizes");
        let (n_ref, found) = overlapped_components(truth, pred);
        let (n_pred, n_pred_true) = overlapped_components(pred, truth);
        Self {
            n_ref,
            found,
            n_pred,
            n_pred_true,
        }
    }

    /// Adds `o`'s counts to these (pooling over images).
    pub fn add(&mut self, o: &LesionCounts) {
        self.n_ref += o.n_ref;
        self.found += o.found;
        self.n_pred += o.n_pred;
        self.n_pred_true += o.n_pred_true;
    }

    /// found / n_ref; None without reference lesions.
    pub fn recall(&self) -> Option<f64> {
        (self.n_ref > 0).then(|| self.found as f64 / self.n_ref as f64)
    }

    /// n_pred_true / n_pred; None when nothing is predicted.
    pub fn precision(&self) -> Option<f64> {
        (self.n_pred > 0).then(|| self.n_pred_true as f64 / self.n_pred as f64)
    }
}

/// (number of 8-connected components of `a`, how many of them touch a pixel of `b`).
fn overlapped_components(a: &GrayImage, b: &GrayImage) -> (u64, u64) {
    let labels = connected_components(a, Connectivity::Eight, Luma([0u8]));
    let n = labels.pixels().map(|p| p[0]).max().unwrap_or(0) as usize;
    let mut hit = vec![false; n + 1];
    for (l, v) in labels.pixels().zip(b.pixels()) {
        if l[0] > 0 && v[0] > 0 {
            hit[l[0] as usize] = true;
        }
    }
    (n as u64, hit.iter().filter(|h| **h).count() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn img(rows: &[&str]) -> GrayImage {
        GrayImage::from_fn(rows[0].len() as u32, rows.len() as u32, |x, y| {
            Luma([if rows[y as usize].as_bytes()[x as usize] == b'#' {
                255
            } else {
                0
            }])
        })
    }

    #[test]
    fn counts_by_hand() {
        // Truth: lesion A (2 px) and lesion C (a diagonal pair: one 8-connected lesion), lesion E.
        // Prediction: touches A, misses C and E, and has two false components.
        let truth = img(&[
            "##......", //
            "........", //
            "....#...", //
            ".....#..", //
            "#.......", //
        ]);
        let pred = img(&[
            ".##...##", //
            "........", //
            "........", //
            "........", //
            "..#.....", //
        ]);
        let c = LesionCounts::count(&pred, &truth);
        assert_eq!(
            c,
            LesionCounts {
                n_ref: 3,
                found: 1,
                n_pred: 3,
                n_pred_true: 1
            }
        );
        assert_eq!(c.recall(), Some(1.0 / 3.0));
        assert_eq!(c.precision(), Some(1.0 / 3.0));
    }

    #[test]
    fn diagonal_neighbours_are_one_lesion_and_empty_is_undefined() {
        let truth = img(&["#..", ".#.", "..#"]);
        let pred = img(&["...", "...", "..#"]);
        let c = LesionCounts::count(&pred, &truth);
        assert_eq!((c.n_ref, c.found, c.n_pred, c.n_pred_true), (1, 1, 1, 1));
        let none = LesionCounts::count(&img(&["..."]), &img(&["..."]));
        assert_eq!((none.recall(), none.precision()), (None, None));
    }
}
