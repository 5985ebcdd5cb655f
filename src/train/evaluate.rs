//! Evaluation of the best checkpoint on the test split: `evaluation.csv` in the reference's
//! format (`loss,<v>` / `dice_coef,<v>`) and `evaluation.json` with per-image and pooled hard
//! scores at threshold 0.5 (laid out like nnU-Net's summary.json).

use anyhow::Result;
use serde_json::json;

use super::batches::eval_batches;
use super::data::{scan_split, Batch};
use super::metrics::{mean_defined, Confusion};
use super::model::Model;
use super::{checkpoint, device, io};
use crate::cli::DeviceChoice;
use crate::config::Config;
use crate::io::{write_atomic, write_json};

/// Probability threshold of the hard scores (a pixel is lesion when p >= 0.5).
pub const THRESHOLD: f32 = 0.5;

/// What `evaluate` computed (also written to `<run>/eval/`).
#[derive(Debug, Clone)]
pub struct EvalReport {
    /// Mean loss over the test images (batch means weighted by batch size).
    pub loss: f64,
    /// Mean soft Dice, weighted the same way.
    pub dice_coef: f64,
    /// (stem, counts) per test image, sorted by stem.
    pub per_image: Vec<(String, Confusion)>,
    /// Counts over all test pixels.
    pub pooled: Confusion,
}

/// Evaluates the `best` checkpoint of `<run>/train/` on `<run>/dataset/test` and writes
/// `<run>/eval/evaluation.{csv,json}`. Errors: no checkpoint, a checkpoint of another model,
/// a missing or unreadable test split.
pub fn evaluate_run(cfg: &Config, choice: DeviceChoice) -> Result<EvalReport> {
    let device = device::select_for("evaluate", choice)?;
    let size = cfg.generate.size;
    cfg.model.check_size(size)?;
    let run = cfg.run_dir();
    let test = scan_split(&run, "test")?;
    let ckpt_dir = run.join("train");
    let (model, state) = Model::load(&cfg.model, size, &ckpt_dir, "best", device)?;
    let out = run.join("eval");
    io::create_dir(&out)?;

    let mut per_image = Vec::with_capacity(test.len());
    let mut pooled = Confusion::default();
    let px = (size * size) as usize;
    let mut score = |batch: &Batch, probs: &[f32]| -> Result<()> {
        for (i, stem) in batch.stems.iter().enumerate() {
            let c = Confusion::from_probs(
                &probs[i * px..(i + 1) * px],
                &batch.masks[i * px..(i + 1) * px],
                THRESHOLD,
            );
            pooled.add(&c);
            per_image.push((stem.clone(), c));
        }
        Ok(())
    };
    let means = eval_batches(
        &model,
        &test,
        cfg.train.batch_size,
        size,
        None,
        Some(&mut score),
    )?;
    let report = EvalReport {
        loss: means.loss,
        dice_coef: means.dice,
        per_image,
        pooled,
    };

    let csv = format!("loss,{}\ndice_coef,{}\n", report.loss, report.dice_coef);
    write_atomic(&out.join("evaluation.csv"), csv.as_bytes())?;
    let cases: Vec<serde_json::Value> = report
        .per_image
        .iter()
        .zip(&test)
        .map(|((stem, c), s)| {
            json!({
                "image": stem,
                "image_file": s.image,
                "reference_file": s.mask,
                "metrics": c.to_json(),
            })
        })
        .collect();
    let mean =
        |f: fn(&Confusion) -> Option<f64>| mean_defined(report.per_image.iter().map(|(_, c)| f(c)));
    let summary = json!({
        "schema": "fundus-pipeline/evaluation/v1",
        "checkpoint": checkpoint::resolve(&ckpt_dir, "best")?.join(checkpoint::WEIGHTS),
        "checkpoint_epoch": state.epoch,
        "model": state.model,
        "threshold": THRESHOLD,
        "test_images": report.per_image.len(),
        "loss": report.loss,
        "dice_coef": report.dice_coef,
        "mean": {
            "Dice": mean(Confusion::dice),
            "IoU": mean(Confusion::iou),
            "Precision": mean(Confusion::precision),
            "Recall": mean(Confusion::recall),
            "cases_with_defined_dice": report.per_image.iter().filter(|(_, c)| c.dice().is_some()).count(),
        },
        "pooled": report.pooled.to_json(),
        "metric_per_case": cases,
    });
    write_json(&out.join("evaluation.json"), &summary)?;
    let fmt = |v: Option<f64>| v.map_or("n/a".to_string(), |v| format!("{v:.4}"));
    println!(
        "evaluate: {} test images, loss {:.4}, dice_coef {:.4}; at {THRESHOLD}: mean Dice {}, pooled Dice {} IoU {}; written to {}",
        report.per_image.len(),
        report.loss,
        report.dice_coef,
        fmt(mean(Confusion::dice)),
        fmt(report.pooled.dice()),
        fmt(report.pooled.iou()),
        out.display()
    );
    Ok(report)
}
