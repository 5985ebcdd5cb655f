//! Loss, the soft Dice metric (tensors), and the hard per-image scores of the evaluation (plain
//! numbers, testable without libtorch tensors).

use serde::Serialize;
use tch::{Kind, Reduction, Tensor};

/// Soft Dice over the whole batch with smooth 1: (2 sum(p y) + 1) / (sum p + sum y + 1).
pub fn soft_dice(probs: &Tensor, y: &Tensor) -> Tensor {
    ((probs * y).sum(Kind::Float) * 2.0 + 1.0) / (probs.sum(Kind::Float) + y.sum(Kind::Float) + 1.0)
}

/// (BCE-with-logits + (1 - soft Dice)) / 2, and the soft Dice itself (detached), both scalars.
pub fn bce_dice_loss(logits: &Tensor, y: &Tensor) -> (Tensor, Tensor) {
    let logits = logits.to_kind(Kind::Float);
    let bce = logits.binary_cross_entropy_with_logits::<Tensor>(y, None, None, Reduction::Mean);
    let dice = soft_dice(&logits.sigmoid(), y);
    let loss = (bce + 1.0 - &dice) / 2.0;
    (loss, dice.detach())
}

/// Pixel counts of a thresholded prediction against the truth.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Confusion {
    pub tp: u64,
    pub fp: u64,
    #[serde(rename = "fn")]
    pub fn_: u64,
    pub tn: u64,
}

impl Confusion {
    /// Counts pixels: predicted lesion where `prob >= threshold`, true lesion where `truth > 0`.
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

    pub fn add(&mut self, o: &Confusion) {
        self.tp += o.tp;
        self.fp += o.fp;
        self.fn_ += o.fn_;
        self.tn += o.tn;
    }

    /// 2TP / (2TP + FP + FN); None when both prediction and truth are empty (nnU-Net's NaN).
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

    /// TP / (TP + FN); None when the truth is empty.
    pub fn recall(&self) -> Option<f64> {
        ratio(self.tp, self.tp + self.fn_)
    }

    /// The scores and counts as one JSON object, nnU-Net's key names (undefined scores are null).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "Dice": self.dice(),
            "IoU": self.iou(),
            "Precision": self.precision(),
            "Recall": self.recall(),
            "TP": self.tp,
            "FP": self.fp,
            "FN": self.fn_,
            "TN": self.tn,
            "n_pred": self.tp + self.fp,
            "n_ref": self.tp + self.fn_,
        })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn confusion_and_scores_by_hand() {
        // truth:  1 1 0 0 1 0 ; pred (>= 0.5): 1 0 1 0 1 0 -> TP 2, FP 1, FN 1, TN 2
        let truth = [255, 255, 0, 0, 1, 0];
        let probs = [0.9, 0.2, 0.5, 0.49, 0.7, 0.0];
        let c = Confusion::from_probs(&probs, &truth, 0.5);
        assert_eq!(
            c,
            Confusion {
                tp: 2,
                fp: 1,
                fn_: 1,
                tn: 2
            }
        );
        assert_eq!(c.dice(), Some(4.0 / 6.0));
        assert_eq!(c.iou(), Some(0.5));
        assert_eq!(c.precision(), Some(2.0 / 3.0));
        assert_eq!(c.recall(), Some(2.0 / 3.0));
        let empty = Confusion::from_probs(&[0.1, 0.2], &[0, 0], 0.5);
        assert_eq!(empty.dice(), None);
        assert_eq!(mean_defined([Some(1.0), None, Some(0.5)]), Some(0.75));
    }

    #[test]
    fn loss_is_half_bce_plus_half_one_minus_dice() {
        let logits = Tensor::from_slice(&[2.0f32, -1.0, 0.5, -3.0]).view([1, 1, 2, 2]);
        let y = Tensor::from_slice(&[1.0f32, 0.0, 1.0, 0.0]).view([1, 1, 2, 2]);
        let (loss, dice) = bce_dice_loss(&logits, &y);
        let l = [2.0f64, -1.0, 0.5, -3.0];
        let t = [1.0f64, 0.0, 1.0, 0.0];
        let p: Vec<f64> = l.iter().map(|v| 1.0 / (1.0 + (-v).exp())).collect();
        let bce = (0..4)
            .map(|i| -(t[i] * p[i].ln() + (1.0 - t[i]) * (1.0 - p[i]).ln()))
            .sum::<f64>()
            / 4.0;
        let inter: f64 = (0..4).map(|i| p[i] * t[i]).sum();
        let d = (2.0 * inter + 1.0) / (p.iter().sum::<f64>() + 2.0 + 1.0);
        assert!((dice.double_value(&[]) - d).abs() < 1e-6);
        assert!((loss.double_value(&[]) - (bce + 1.0 - d) / 2.0).abs() < 1e-6);
    }
}
