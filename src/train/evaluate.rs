//! Evaluation of the best checkpoint at the photographs' own resolution (issue 9): the test
//! split's source photographs (or any folder, `--images` with `--truth`) go through the inference
//! of `infer` ([`super::fullres`]: sliding window or one pass, `infer.*`) and are scored against
//! their original ground-truth confidence maps inside the field of view: Dice, IoU, precision,
//! recall, pixel AUPR and lesion-wise detection, per image and pooled, at
//! `evaluate.gt_threshold` and each of `evaluate.extra_gt_thresholds` (`evaluation.json`,
//! nnU-Net's summary.json layout, every choice stated under `choices`). On the test split it also
//! writes the reference's `evaluation.csv` (`loss,<v>` / `dice_coef,<v>`: BCE + soft Dice over the
//! test pairs at `generate.size`).

use anyhow::Result;
use serde_json::{json, Value};

use super::batches::eval_batches;
use super::data::scan_split;
use super::fullres::evaluate_photos;
use super::model::Model;
use super::{checkpoint, device, io};
use crate::cli::DeviceChoice;
use crate::config::Config;
use crate::io::{write_atomic, write_json};
use crate::run_layout::Split;
use crate::scoring::photos::{folder_photos, test_split_photos};

/// What `evaluate` computed (also written to `<run>/eval/`).
#[derive(Debug, Clone)]
pub struct EvalReport {
    /// The reference's loss and soft Dice over the test pairs (None when scoring a folder).
    pub loss: Option<f64>,
    /// The soft Dice of that pass (None when scoring a folder).
    pub dice_coef: Option<f64>,

    /// The whole evaluation.json.
    pub summary: Value,
}

/// Evaluates the `best` checkpoint of `<run>/train/` and writes `<run>/eval/evaluation.json`
/// (and `evaluation.csv` on the test split). Errors: no checkpoint, a checkpoint of another
/// model, a missing test split or source photograph, a photograph and ground truth of different
/// sizes (both named).
pub fn evaluate_run(cfg: &Config, choice: DeviceChoice) -> Result<EvalReport> {
    let device = device::select_for("evaluate", choice)?;
    let size = cfg.generate.size;
    cfg.model.check_size(size)?;
    let run = cfg.layout();
    let ckpt_dir = run.train_dir();
    let (model, state) = Model::load(&cfg.model, size, &ckpt_dir, "best", device)?;
    let model = model.with_input_norm(cfg.train.input_norm);
    let (photos, source) = match (&cfg.evaluate.images, &cfg.evaluate.truth) {
        (Some(i), Some(t)) => (
            folder_photos(i, t)?,
            format!("folder {} with ground truth {}", i.display(), t.display()),
        ),
        _ => (
            test_split_photos(cfg, &crate::split::require_complete(&run)?)?,
            "the test split's source photographs".to_string(),
        ),
    };
    let out = run.eval_dir();
    io::create_dir(&out)?;

    let (mut loss, mut dice_coef) = (None, None);
    if cfg.evaluate.images.is_none() {
        let test = scan_split(&run, Split::Test)?;
        let m = eval_batches(&model, &test, cfg.train.batch_size, size, None, None)?;
        write_atomic(
            &out.join("evaluation.csv"),
            format!("loss,{}\ndice_coef,{}\n", m.loss, m.dice).as_bytes(),
        )?;
        (loss, dice_coef) = (Some(m.loss), Some(m.dice));
    }

    let net = |x: &tch::Tensor| model.predict(x);
    let body = evaluate_photos(&net, device, cfg, &photos, &source)?;
    let mut summary = json!({
        "schema": "fundus-pipeline/evaluation/v2",
        "checkpoint": checkpoint::resolve(&ckpt_dir, "best")?.join(checkpoint::WEIGHTS),
        "checkpoint_epoch": state.epoch,
        "model": state.model,
        "loss": loss,
        "dice_coef": dice_coef,
        "loss_note": "loss and dice_coef: the reference's BCE + soft Dice over the test pairs at generate.size (null when scoring a folder)",
    });
    let obj = summary.as_object_mut().expect("object");
    for (k, v) in body.as_object().expect("object") {
        obj.insert(k.clone(), v.clone());
    }
    write_json(&out.join("evaluation.json"), &summary)?;
    let f = |v: &Value| v.as_f64().map_or("n/a".to_string(), |v| format!("{v:.4}"));
    let p = &summary["pooled"];
    println!(
        "evaluate: {} photographs at full resolution, ground truth >= {} (of 252): pooled Dice {} IoU {} AUPR {}, lesion recall {} precision {}; written to {}",
        photos.len(),
        summary["gt_min_value"],
        f(&p["Dice"]),
        f(&p["IoU"]),
        f(&p["AUPR"]),
        f(&p["lesion_wise"]["Recall"]),
        f(&p["lesion_wise"]["Precision"]),
        out.display()
    );
    for extra in summary["extra_gt_thresholds"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let p = &extra["pooled"];
        println!(
            "evaluate: ground truth >= {}: pooled Dice {} AUPR {}, lesion recall {}",
            extra["gt_min_value"],
            f(&p["Dice"]),
            f(&p["AUPR"]),
            f(&p["lesion_wise"]["Recall"])
        );
    }
    Ok(EvalReport {
        loss,
        dice_coef,
        summary,
    })
}
