//! Training losses for small, imbalanced lesions, optionally restricted to the field of view.
//!
//! All sums run over the whole batch (like the reference's soft Dice) and, with a FOV mask `m`
//! ({0,1}, same shape as the target), only over pixels where m = 1:
//!
//! - `bce-dice` (the reference's): (BCE + (1 - D)) / 2, BCE the mean over the counted pixels,
//!   D = (2 sum(p y) + 1) / (sum p + sum y + 1).
//! - `tversky` (Salehi et al. 2017, MLMI): 1 - TI, TI = (TP + 1) / (TP + alpha FN + beta FP + 1) with
//!   TP = sum(p y), FN = sum((1 - p) y), FP = sum(p (1 - y)).
//! - `focal-tversky` (Abraham & Khan 2019, ISBI, "A novel focal Tversky loss function with improved
//!   attention U-Net for lesion segmentation"): (1 - TI)^(1/gamma); the paper's alpha 0.7,
//!   beta 0.3, gamma 4/3 (exponent 0.75) are the defaults.
//!
//! The metric returned beside the loss is always the soft Dice D (detached), so curves of runs with
//! different losses compare.

use tch::{Kind, Reduction, Tensor};

use fundus_pipeline::recipe_config::LossKind;
use fundus_pipeline::train_config::TrainConfig;

/// The loss of a training config: kind and Tversky parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Loss {
    /// Which loss (`bce-dice`, `tversky`, `focal-tversky`).
    pub kind: LossKind,
    /// Tversky weight of false negatives (used by `tversky` and `focal-tversky`).
    pub alpha: f64,
    /// Tversky weight of false positives.
    pub beta: f64,
    /// Focal Tversky gamma: the loss is (1 - TI)^(1/gamma) (`focal-tversky` only).
    pub gamma: f64,
}

impl Loss {
    /// The loss of `t`: `train.loss`, `train.tversky_alpha`, `train.tversky_beta`,
    /// `train.focal_gamma`.
    pub fn from_config(t: &TrainConfig) -> Self {
        Self {
            kind: t.loss,
            alpha: t.tversky_alpha,
            beta: t.tversky_beta,
            gamma: t.focal_gamma,
        }
    }

    /// The reference's loss (BCE + Dice).
    pub fn reference() -> Self {
        Self {
            kind: LossKind::BceDice,
            alpha: 0.7,
            beta: 0.3,
            gamma: 4.0 / 3.0,
        }
    }

    /// (loss, soft Dice) as scalars for logits and {0,1} targets of shape [N,1,H,W]; `fov` ({0,1},
    /// same shape) restricts both to its pixels. The Dice is detached.
    pub fn compute(&self, logits: &Tensor, y: &Tensor, fov: Option<&Tensor>) -> (Tensor, Tensor) {
        let logits = logits.to_kind(Kind::Float);
        let p = logits.sigmoid();
        let (pm, ym) = match fov {
            Some(m) => (&p * m, y * m),
            None => (p.shallow_clone(), y.shallow_clone()),
        };
        let tp = (&pm * &ym).sum(Kind::Float);
        let sum_p = pm.sum(Kind::Float);
        let sum_y = ym.sum(Kind::Float);
        let dice = (&tp * 2.0 + 1.0) / (&sum_p + &sum_y + 1.0);
        let loss = match self.kind {
            LossKind::BceDice => {
                let bce = match fov {
                    None => logits.binary_cross_entropy_with_logits::<Tensor>(
                        y,
                        None,
                        None,
                        Reduction::Mean,
                    ),
                    Some(m) => {
                        let per = logits.binary_cross_entropy_with_logits::<Tensor>(
                            y,
                            None,
                            None,
                            Reduction::None,
                        );
                        (per * m).sum(Kind::Float) / m.sum(Kind::Float).clamp_min(1.0)
                    }
                };
                (bce + 1.0 - &dice) / 2.0
            }
            LossKind::Tversky | LossKind::FocalTversky => {
                let fn_ = &sum_y - &tp;
                let fp = &sum_p - &tp;
                let ti = (&tp + 1.0) / (&tp + fn_ * self.alpha + fp * self.beta + 1.0);
                let one_minus = (-ti + 1.0).clamp_min(0.0);
                if self.kind == LossKind::FocalTversky {
                    // d/dx x^0.75 is unbounded at 0: keep x away from it.
                    (one_minus + 1e-7).pow_tensor_scalar(1.0 / self.gamma)
                } else {
                    one_minus
                }
            }
        };
        (loss, dice.detach())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(v: &[f32]) -> Tensor {
        Tensor::from_slice(v).view([1, 1, 2, 2])
    }
    const L: [f64; 4] = [2.0, -1.0, 0.5, -3.0];
    const Y: [f64; 4] = [1.0, 0.0, 1.0, 1.0];

    fn probs() -> Vec<f64> {
        L.iter().map(|v| 1.0 / (1.0 + (-v).exp())).collect()
    }

    fn loss(kind: LossKind, fov: Option<&Tensor>) -> (f64, f64) {
        let l = Loss {
            kind,
            ..Loss::reference()
        };
        let (a, d) = l.compute(&t(&L.map(|v| v as f32)), &t(&Y.map(|v| v as f32)), fov);
        (a.double_value(&[]), d.double_value(&[]))
    }

    #[test]
    fn tversky_and_focal_tversky_by_hand() {
        let p = probs();
        let tp: f64 = (0..4).map(|i| p[i] * Y[i]).sum();
        let fn_: f64 = (0..4).map(|i| (1.0 - p[i]) * Y[i]).sum();
        let fp: f64 = (0..4).map(|i| p[i] * (1.0 - Y[i])).sum();
        let ti = (tp + 1.0) / (tp + 0.7 * fn_ + 0.3 * fp + 1.0);
        let (tv, _) = loss(LossKind::Tversky, None);
        assert!((tv - (1.0 - ti)).abs() < 1e-6, "{tv} vs {}", 1.0 - ti);
        let (ftv, _) = loss(LossKind::FocalTversky, None);
        assert!((ftv - (1.0 - ti + 1e-7).powf(0.75)).abs() < 1e-6);
        // The focal form weighs a small loss up: x^0.75 > x for x in (0, 1).
        assert!(ftv > tv);
    }

    #[test]
    fn fov_restricts_every_term() {
        // FOV drops pixel 3 (a missed lesion): same as scoring the first three pixels alone.
        let fov = t(&[1.0, 1.0, 1.0, 0.0]);
        let p = probs();
        let tp: f64 = (0..3).map(|i| p[i] * Y[i]).sum();
        let d = (2.0 * tp + 1.0) / (p[..3].iter().sum::<f64>() + 2.0 + 1.0);
        let bce = (0..3)
            .map(|i| -(Y[i] * p[i].ln() + (1.0 - Y[i]) * (1.0 - p[i]).ln()))
            .sum::<f64>()
            / 3.0;
        let (l, dice) = loss(LossKind::BceDice, Some(&fov));
        assert!((dice - d).abs() < 1e-6);
        assert!((l - (bce + 1.0 - d) / 2.0).abs() < 1e-6);
        let (l_all, _) = loss(LossKind::BceDice, None);
        assert!((l - l_all).abs() > 1e-3);
    }

    #[test]
    fn bce_dice_matches_the_reference_metric_function() {
        let (l, d) = loss(LossKind::BceDice, None);
        let (rl, rd) = super::super::metrics::bce_dice_loss(
            &t(&L.map(|v| v as f32)),
            &t(&Y.map(|v| v as f32)),
        );
        assert!((l - rl.double_value(&[])).abs() < 1e-6);
        assert!((d - rd.double_value(&[])).abs() < 1e-6);
    }
}
