//! One training epoch: the seeded shuffle of the training pairs, the optimizer steps, and the
//! running means of loss and soft Dice. [`train_step`] is the step the benchmark times too.

use std::time::Instant;

use anyhow::{bail, Result};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rand::seq::SliceRandom;
use rand::RngCore;
use tch::{Kind, Tensor};

use super::adam::Adam;
use super::data::Sample;
use super::losses::Loss;
use super::model::Model;
use super::patch_data::Recipe;
use fundus_pipeline::rng::rng_for;
use fundus_pipeline::train_config::TrainConfig;

/// What the training half of an epoch measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EpochTrain {
    /// Mean training loss (batch means weighted by batch size).
    pub loss: f64,
    /// Mean training soft Dice, weighted the same way.
    pub dice: f64,
    /// Training images per second over the steps after the first (the first includes warm-up).
    pub images_per_s: f64,
}

/// The torch seed of an epoch: re-seeding per epoch makes dropout masks the same whether a run
/// went straight through or was resumed.
pub fn torch_seed(seed: u64, epoch: usize) -> i64 {
    (rng_for(seed, "train", &format!("torch{epoch}")).next_u64() >> 1) as i64
}

/// The training pairs of `epoch` (indices into the sorted train split): all of them shuffled by
/// ChaCha8 seeded from (`seed`, epoch), cut to `max_steps_per_epoch` batches.
pub fn epoch_order(seed: u64, epoch: usize, n: usize, t: &TrainConfig) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut rng_for(seed, "train", &format!("epoch{epoch}")));
    let mut steps = n.div_ceil(t.batch_size);
    if let Some(max) = t.max_steps_per_epoch {
        steps = steps.min(max);
    }
    order.truncate((steps * t.batch_size).min(order.len()));
    order
}

/// One optimizer step on a batch: zero the gradients, forward (dropout on, `kind` precision),
/// loss over the output heads (their mean; deep supervision), backward, and, when the loss is
/// finite, Adam with gradient value clipping at `clip` (0 = off). Returns (loss, soft Dice of
/// the main output); a non-finite loss leaves the weights untouched.
pub fn train_step(
    model: &Model,
    opt: &mut Adam,
    x: &Tensor,
    y: &Tensor,
    kind: Kind,
    clip: f64,
) -> (f64, f64) {
    train_step_with(model, opt, (x, y, None), &Loss::reference(), kind, clip)
}

/// [`train_step`] with the configured loss ([`Loss`]) and an optional field-of-view mask `fov`
/// ({0,1}, shaped like `y`) restricting it.
pub fn train_step_with(
    model: &Model,
    opt: &mut Adam,
    (x, y, fov): (&Tensor, &Tensor, Option<&Tensor>),
    loss_fn: &Loss,
    kind: Kind,
    clip: f64,
) -> (f64, f64) {
    opt.zero_grad();
    let heads = model.forward_heads(x, true, kind);
    let (main, dice) = loss_fn.compute(&heads[0], y, fov);
    let loss = if heads.len() == 1 {
        main
    } else {
        let mut all = vec![main];
        all.extend(heads[1..].iter().map(|h| loss_fn.compute(h, y, fov).0));
        Tensor::stack(&all, 0).mean(Kind::Float)
    };
    loss.backward();
    let (lv, dv) = (loss.double_value(&[]), dice.double_value(&[]));
    if lv.is_finite() {
        opt.step(clip);
    }
    (lv, dv)
}

/// Trains one epoch (`epoch`, 1-based, of `epochs`) on the pairs `order` of `train`. Errors: a
/// pair that cannot be decoded, or a non-finite loss (the message names the epoch, the step and
/// the learning rate, then `on_diverge`).
#[allow(clippy::too_many_arguments)]
pub fn train_epoch(
    model: &Model,
    opt: &mut Adam,
    train: &[Sample],
    order: &[usize],
    t: &TrainConfig,
    size: u32,
    kind: Kind,
    (epoch, epochs): (usize, usize),
    recipe: &Recipe,
    on_diverge: &dyn Fn() -> String,
) -> Result<EpochTrain> {
    let device = model.device();
    let steps = order.len().div_ceil(t.batch_size);
    let bar = progress(steps, &format!("epoch {epoch}/{epochs}"));
    let started = Instant::now();
    let (mut sum_loss, mut sum_dice, mut seen) = (0.0, 0.0, 0usize);
    let mut after_first: Option<(Instant, usize)> = None;
    for batch in recipe.batches(train, order, t.batch_size, size, epoch) {
        let (batch, patch_fov) = batch?;
        let (x, y) = batch.tensors(device);
        let fov = recipe.fov(&batch, patch_fov.as_deref(), device);
        let lr = opt.lr;
        let (lv, dv) = train_step_with(
            model,
            opt,
            (&x, &y, fov.as_ref()),
            &recipe.loss,
            kind,
            t.clip_value,
        );
        if !lv.is_finite() {
            bar.abandon();
            bail!(
                "training stopped: the loss became {lv} at epoch {epoch}, step {} (lr {lr:.3e}); {}",
                seen / t.batch_size + 1,
                on_diverge()
            );
        }
        let n = batch.len();
        sum_loss += lv * n as f64;
        sum_dice += dv * n as f64;
        seen += n;
        after_first.get_or_insert((Instant::now(), seen));
        bar.inc(1);
        bar.set_message(format!(
            "loss {:.4} dice {:.4}",
            sum_loss / seen as f64,
            sum_dice / seen as f64
        ));
    }
    bar.finish_and_clear();
    let seconds = started.elapsed().as_secs_f64();
    let images_per_s = match after_first {
        Some((t0, n0)) if seen > n0 => (seen - n0) as f64 / t0.elapsed().as_secs_f64(),
        _ => seen as f64 / seconds,
    };
    Ok(EpochTrain {
        loss: sum_loss / seen as f64,
        dice: sum_dice / seen as f64,
        images_per_s,
    })
}

fn progress(steps: usize, prefix: &str) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(steps as u64), ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template(
            "{prefix} [{bar:30}] {pos}/{len} {elapsed_precise}<{eta_precise} {msg}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    bar.set_prefix(prefix.to_string());
    bar
}
