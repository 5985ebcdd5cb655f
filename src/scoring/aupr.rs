//! Pixel AUPR: the area under the precision-recall curve of a probability map, as the IDRiD
//! challenge scores lesion segmentation (Porwal et al. 2020, Med. Image Anal. 59: "area under the
//! precision-recall curve", per lesion type).
//!
//! Integration rule (average precision, the step rule of scikit-learn's
//! `average_precision_score`): probabilities are quantized to 16 bits (`q = round(p * 65535)`), every
//! distinct quantized value t, from the highest down, is a threshold (predicted lesion where
//! `q >= t`), and
//!
//! ```text
//! AUPR = sum_n (R_n - R_{n-1}) * P_n,    R_0 = 0,
//! P_n = TP_n / (TP_n + FP_n),  R_n = TP_n / (number of lesion pixels)
//! ```
//!
//! No interpolation (trapezoids overestimate on PR curves, Davis & Goadrich 2006). Undefined
//! (None) when the reference has no lesion pixel. The histograms add, so the pooled curve of many
//! images is exact without holding their pixels.

/// Number of quantization levels of the probabilities (16 bits).
pub const LEVELS: usize = 65536;

/// Counts of lesion (`pos`) and background (`neg`) pixels per quantized probability.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrHistogram {
    pos: Vec<u64>,
    neg: Vec<u64>,
}

impl Default for PrHistogram {
    fn default() -> Self {
        Self {
            pos: vec![0; LEVELS],
            neg: vec![0; LEVELS],
        }
    }
}

/// The best Dice over probability thresholds ([`PrHistogram::max_dice`]).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct MaxDice {
    /// The Dice at `threshold`, in [0, 1].
    #[serde(rename = "Dice")]
    pub dice: f64,
    /// The probability threshold (lesion where probability >= it, on the 16-bit grid).
    pub threshold: f64,
}

/// The 16-bit level of a probability (clamped to [0, 1]; NaN counts as 0).
pub fn quantize(p: f32) -> usize {
    let p = if p.is_nan() { 0.0 } else { p.clamp(0.0, 1.0) };
    (f64::from(p) * (LEVELS - 1) as f64).round() as usize
}

impl PrHistogram {
    /// Adds one pixel with probability `p` and reference label `lesion`.
    pub fn add_pixel(&mut self, p: f32, lesion: bool) {
        let q = quantize(p);
        if lesion {
            self.pos[q] += 1;
        } else {
            self.neg[q] += 1;
        }
    }

    /// Adds another histogram (pooling over images).
    pub fn add(&mut self, o: &PrHistogram) {
        for (a, b) in self.pos.iter_mut().zip(&o.pos) {
            *a += b;
        }
        for (a, b) in self.neg.iter_mut().zip(&o.neg) {
            *a += b;
        }
    }

    /// Lesion pixels counted.
    pub fn positives(&self) -> u64 {
        self.pos.iter().sum()
    }

    /// The precision-recall points (recall, precision), one per distinct level, from the highest
    /// threshold down.
    pub fn curve(&self) -> Vec<(f64, f64)> {
        let npos = self.positives();
        let (mut tp, mut fp) = (0u64, 0u64);
        let mut out = Vec::new();
        for q in (0..LEVELS).rev() {
            if self.pos[q] + self.neg[q] == 0 {
                continue;
            }
            tp += self.pos[q];
            fp += self.neg[q];
            let recall = if npos == 0 {
                0.0
            } else {
                tp as f64 / npos as f64
            };
            out.push((recall, tp as f64 / (tp + fp) as f64));
        }
        out
    }

    /// The highest Dice 2TP / (2TP + FP + FN) over every threshold of the curve (predicted
    /// lesion where q >= level) and the threshold giving it, (level - 1/2)/65535, the lowest
    /// probability that quantizes to the level (so `p >= threshold` reproduces the Dice): the F1 at the
    /// optimal threshold (Maximum F1; for pooled histograms the "optimal dataset scale" of
    /// Martin et al. 2004). An oracle for choosing `infer.threshold` on training folds, never a
    /// test score. None without lesion pixels.
    pub fn max_dice(&self) -> Option<MaxDice> {
        let npos = self.positives();
        if npos == 0 {
            return None;
        }
        let (mut tp, mut fp) = (0u64, 0u64);
        let mut best = MaxDice {
            dice: 0.0,
            threshold: 1.0,
        };
        for q in (0..LEVELS).rev() {
            if self.pos[q] + self.neg[q] == 0 {
                continue;
            }
            tp += self.pos[q];
            fp += self.neg[q];
            let dice = 2.0 * tp as f64 / (tp + fp + npos) as f64;
            if dice > best.dice {
                // Level q holds the probabilities that round to q: p >= (q - 1/2) / 65535, so
                // thresholding the map there reproduces this Dice.
                best = MaxDice {
                    dice,
                    threshold: ((q as f64 - 0.5) / (LEVELS - 1) as f64).max(0.0),
                };
            }
        }
        Some(best)
    }

    /// Average precision, sum_n (R_n - R_{n-1}) P_n (module docs); None without lesion pixels.
    pub fn aupr(&self) -> Option<f64> {
        if self.positives() == 0 {
            return None;
        }
        let mut prev_r = 0.0;
        let mut ap = 0.0;
        for (r, p) in self.curve() {
            ap += (r - prev_r) * p;
            prev_r = r;
        }
        Some(ap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hist(pixels: &[(f32, bool)]) -> PrHistogram {
        let mut h = PrHistogram::default();
        for &(p, l) in pixels {
            h.add_pixel(p, l);
        }
        h
    }

    #[test]
    fn max_dice_by_hand() {
        // 0.9 L, 0.8 B, 0.7 L, 0.6 L, 0.3 B, 0.1 L (4 lesion pixels). Dice per threshold:
        // 0.9: 2/5; 0.8: 2/6; 0.7: 4/7; 0.6: 6/8; 0.3: 6/9; 0.1: 8/10 -> best 0.8 at 0.1.
        let h = hist(&[
            (0.9, true),
            (0.8, false),
            (0.7, true),
            (0.6, true),
            (0.3, false),
            (0.1, true),
        ]);
        let m = h.max_dice().unwrap();
        assert!((m.dice - 0.8).abs() < 1e-12, "{m:?}");
        assert!((m.threshold - 0.1).abs() < 1e-4, "{m:?}");
        // Without the low lesion pixel (3 lesion pixels): 0.9: 2/4; 0.8: 2/5; 0.7: 4/6;
        // 0.6: 6/7; 0.3: 6/8 -> best 6/7 at 0.6.
        let h = hist(&[
            (0.9, true),
            (0.8, false),
            (0.7, true),
            (0.6, true),
            (0.3, false),
        ]);
        let m = h.max_dice().unwrap();
        assert!(
            (m.dice - 6.0 / 7.0).abs() < 1e-12 && (m.threshold - 0.6).abs() < 1e-4,
            "{m:?}"
        );
        assert_eq!(hist(&[(0.5, false)]).max_dice(), None);
    }

    #[test]
    fn average_precision_by_hand() {
        // Sorted by probability: 0.9 L, 0.8 B, 0.7 L, 0.6 L, 0.3 B, 0.1 L (4 lesion pixels).
        // Thresholds: 0.9 -> R 1/4 P 1; 0.8 -> R 1/4 P 1/2; 0.7 -> R 2/4 P 2/3;
        // 0.6 -> R 3/4 P 3/4; 0.3 -> R 3/4 P 3/5; 0.1 -> R 1 P 4/6.
        // AP = 1/4*1 + 0 + 1/4*2/3 + 1/4*3/4 + 0 + 1/4*4/6 = 0.25 + 1/6 + 3/16 + 1/6
        let h = hist(&[
            (0.9, true),
            (0.8, false),
            (0.7, true),
            (0.6, true),
            (0.3, false),
            (0.1, true),
        ]);
        let want = 0.25 + 1.0 / 6.0 + 3.0 / 16.0 + 1.0 / 6.0;
        assert!((h.aupr().unwrap() - want).abs() < 1e-12, "{:?}", h.aupr());
    }

    #[test]
    fn ties_form_one_threshold() {
        // Two pixels at 0.5 (one lesion, one not) and a lesion at 0.2:
        // 0.5 -> R 1/2 P 1/2; 0.2 -> R 1 P 2/3. AP = 1/4 + 1/3.
        let h = hist(&[(0.5, true), (0.5, false), (0.2, true)]);
        assert!((h.aupr().unwrap() - (0.25 + 1.0 / 3.0)).abs() < 1e-12);
        assert_eq!(h.curve().len(), 2);
    }

    #[test]
    fn perfect_and_undefined_and_pooled() {
        let perfect = hist(&[(0.9, true), (0.8, true), (0.2, false)]);
        assert_eq!(perfect.aupr(), Some(1.0));
        assert_eq!(hist(&[(0.9, false)]).aupr(), None);
        // Pooling adds the histograms: same as scoring all pixels at once.
        let a = [(0.9, true), (0.4, false)];
        let b = [(0.6, false), (0.3, true)];
        let mut pooled = hist(&a);
        pooled.add(&hist(&b));
        let all: Vec<_> = a.iter().chain(&b).copied().collect();
        assert_eq!(pooled.aupr(), hist(&all).aupr());
        // 0.9 L -> R 1/2 P 1; 0.6 B; 0.4 B; 0.3 L -> R 1 P 2/4: AP = 1/2 + 1/4.
        assert!((pooled.aupr().unwrap() - 0.75).abs() < 1e-12);
    }

    #[test]
    fn quantization_clamps() {
        assert_eq!(quantize(-1.0), 0);
        assert_eq!(quantize(2.0), LEVELS - 1);
        assert_eq!(quantize(f32::NAN), 0);
        assert_eq!(quantize(0.5), 32768);
    }
}
