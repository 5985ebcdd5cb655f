//! Evaluation batches: the model over samples of a split in a fixed order, dropout off, fp32, no
//! gradients. Shared by the validation after every epoch and by `evaluate`.

use anyhow::Result;
use tch::Kind;

use super::data::{load_batches, Batch, Sample};
use super::model::Model;
use super::patch_data::Recipe;
use super::probs_to_vec;

/// Means over the images of an evaluation pass. Batch means weighted by batch size, as Keras
/// reports them: (sum over batches of mean x batch length) / images.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LossDice {
    /// Mean loss ([`bce_dice_loss`]).
    pub loss: f64,
    /// Mean soft Dice (per-batch soft Dice, smooth 1).
    pub dice: f64,
    /// Images seen.
    pub images: usize,
}

/// Called with each evaluation batch and its probabilities.
pub type BatchSink<'a> = &'a mut dyn FnMut(&Batch, &[f32]) -> Result<()>;

/// Runs `model` over `samples` (the first `max_batches` batches of `batch_size` when given, in
/// sample order) at `size` x `size`. With `each`, also computes the probabilities and calls
/// `each(batch, probs)` per batch, `probs` being N x size x size values in [0, 1], image-major.
/// Errors: a sample that cannot be decoded or has the wrong size (named by the loader), or an
/// error from `each`.
pub fn eval_batches(
    model: &Model,
    samples: &[Sample],
    batch_size: usize,
    size: u32,
    max_batches: Option<usize>,
    each: Option<BatchSink>,
) -> Result<LossDice> {
    let reference = Recipe::reference();
    eval_batches_with(
        model,
        samples,
        batch_size,
        size,
        max_batches,
        &reference,
        each,
    )
}

/// [`eval_batches`] with the loss of `recipe` (and its field-of-view restriction); patches are
/// not cut: the whole pairs are scored.
pub fn eval_batches_with(
    model: &Model,
    samples: &[Sample],
    batch_size: usize,
    size: u32,
    max_batches: Option<usize>,
    recipe: &Recipe,
    mut each: Option<BatchSink>,
) -> Result<LossDice> {
    let mut order: Vec<usize> = (0..samples.len()).collect();
    if let Some(max) = max_batches {
        order.truncate(max * batch_size);
    }
    let device = model.device();
    let (mut sl, mut sd, mut n) = (0.0, 0.0, 0usize);
    for batch in load_batches(samples, &order, batch_size, size) {
        let batch = batch?;
        let (x, y) = batch.tensors(device);
        let fov = recipe.fov(&batch, None, device);
        let (loss, dice, probs) = tch::no_grad(|| {
            let logits = model.forward(&x, false, Kind::Float);
            let (l, d) = recipe.loss.compute(&logits, &y, fov.as_ref());
            let p = each.is_some().then(|| logits.sigmoid());
            (l, d, p)
        });
        sl += loss.double_value(&[]) * batch.len() as f64;
        sd += dice.double_value(&[]) * batch.len() as f64;
        n += batch.len();
        if let (Some(f), Some(p)) = (each.as_mut(), probs) {
            f(&batch, &probs_to_vec(&p)?)?;
        }
    }
    Ok(LossDice {
        loss: sl / n as f64,
        dice: sd / n as f64,
        images: n,
    })
}
