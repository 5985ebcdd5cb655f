//! Evaluation of the best checkpoint on the test split: `evaluation.csv` in the reference's
//! format (`loss,<v>` / `dice_coef,<v>`) and `evaluation.json` with per-image and pooled hard
//! scores at threshold 0.5 (laid out like nnU-Net's summary.json).

use anyhow::Result;
use serde_json::json;
use tch::nn::VarStore;
use tch::Kind;

use super::data::{scan_split, Loader};
use super::metrics::{bce_dice_loss, mean_defined, Confusion};
use super::unet::UNet;
use super::{check_size, checkpoint, device, io, probs_to_vec};
use crate::cli::DeviceChoice;
use crate::config::Config;
use crate::io::{write_atomic, write_json};

pub const THRESHOLD: f32 = 0.5;

/// What `evaluate` computed (also written to `<run>/eval/`).
#[derive(Debug, Clone)]
pub struct EvalReport {
    pub loss: f64,
    pub dice_coef: f64,
    /// (stem, counts) per test image, sorted by stem.
    pub per_image: Vec<(String, Confusion)>,
    /// Counts over all test pixels.
    pub pooled: Confusion,
}

pub fn evaluate_run(cfg: &Config, choice: DeviceChoice) -> Result<EvalReport> {
    let device = device::select(choice)?;
    println!("evaluate: device {}", device::describe(device));
    let size = cfg.generate.size;
    check_size(&cfg.model, size)?;
    let run = cfg.run_dir();
    let test = scan_split(&run, "test")?;
    let ckpt_dir = run.join("train");
    let mut vs = VarStore::new(device);
    let unet = UNet::new(&vs.root(), &cfg.model);
    let state = checkpoint::load(&ckpt_dir, "best", &mut vs, &cfg.model)?;
    let out = run.join("eval");
    io::create_dir(&out)?;

    let order: Vec<usize> = (0..test.len()).collect();
    let bs = cfg.train.batch_size;
    let (mut sl, mut sd, mut n) = (0.0, 0.0, 0usize);
    let mut per_image = Vec::with_capacity(test.len());
    let mut pooled = Confusion::default();
    let px = (size * size) as usize;
    for batch in Loader::new(&test, &order, bs, size) {
        let batch = batch?;
        let (x, y) = batch.tensors(device);
        let (loss, dice, probs) = tch::no_grad(|| {
            let logits = unet.forward(&x, false, Kind::Float);
            let (l, d) = bce_dice_loss(&logits, &y);
            (l, d, logits.sigmoid())
        });
        sl += loss.double_value(&[]) * batch.len() as f64;
        sd += dice.double_value(&[]) * batch.len() as f64;
        n += batch.len();
        let probs = probs_to_vec(&probs)?;
        for (i, stem) in batch.stems.iter().enumerate() {
            let c = Confusion::from_probs(
                &probs[i * px..(i + 1) * px],
                &batch.masks[i * px..(i + 1) * px],
                THRESHOLD,
            );
            pooled.add(&c);
            per_image.push((stem.clone(), c));
        }
    }
    let report = EvalReport {
        loss: sl / n as f64,
        dice_coef: sd / n as f64,
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
        "checkpoint": checkpoint::paths(&ckpt_dir, "best").0,
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
