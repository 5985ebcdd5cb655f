//! Loss, the soft Dice metric (tensors), and the hard per-image scores of the evaluation (plain
//! numbers, testable without libtorch tensors).

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

/// The hard per-image scores are the evaluation's own ([`fundus_pipeline::scoring`]): one `Confusion`.
pub use fundus_pipeline::scoring::{mean_defined, Confusion};

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
