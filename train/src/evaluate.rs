//! Evaluation of the best checkpoint at the photographs' own resolution (issue 9): the test
//! split's source photographs (or any folder, `--images` with `--truth`) go through the inference
//! of `infer` ([`super::fullres`]: sliding window or one pass, `infer.*`) and are scored against
//! their original ground-truth confidence maps inside the field of view: Dice, IoU, precision,
//! recall, pixel AUPR and lesion-wise detection, per image and pooled, at
//! `evaluate.gt_threshold` and each of `evaluate.extra_gt_thresholds` (`evaluation.json`,
//! nnU-Net's summary.json layout, every choice stated under `choices`). On the test split it also
//! writes the reference's `evaluation.csv` (`loss,<v>` / `dice_coef,<v>`: BCE + soft Dice over the
//! test pairs at `generate.size`).

use std::path::PathBuf;

use anyhow::Result;
use serde::{Deserialize, Serialize};

use super::batches::eval_batches;
use super::data::scan_split;
use super::fullres::{evaluate_photos, PhotoEvaluation};
use super::model::Model;
use super::{checkpoint, device, io};
use fundus_pipeline::cli::DeviceChoice;
use fundus_pipeline::config::Config;
use fundus_pipeline::io::{write_csv, write_json};
use fundus_pipeline::run_layout::Split;
use fundus_pipeline::scoring::photos::{folder_photos, test_split_photos};
use fundus_pipeline::train_config::ModelConfig;

/// What `evaluate` computed (also written to `<run>/eval/`).
#[derive(Debug, Clone)]
pub struct EvalReport {
    /// The reference's loss and soft Dice over the test pairs (None when scoring a folder).
    pub loss: Option<f64>,
    /// The soft Dice of that pass (None when scoring a folder).
    pub dice_coef: Option<f64>,

    /// The whole evaluation.json.
    pub summary: Evaluation,
}

/// Schema of evaluation.json; v2 since the full-resolution scores (issue 9).
pub const SCHEMA: &str = "fundus-pipeline/evaluation/v2";

/// `evaluation.json`: the checkpoint, the reference's loss and soft Dice, and the scores of the
/// photographs at full resolution ([`PhotoEvaluation`], whose fields sit at the top level).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    /// [`SCHEMA`] of the writer (`fundus-pipeline/evaluation/v2`).
    pub schema: String,
    /// The weights file scored.
    pub checkpoint: PathBuf,
    /// The epoch recorded in that checkpoint's training state.
    pub checkpoint_epoch: usize,
    /// The network's settings, as stored with the checkpoint.
    pub model: ModelConfig,
    /// BCE + soft Dice over the test pairs at `generate.size` (null when scoring a folder).
    pub loss: Option<f64>,
    /// The reference's soft Dice coefficient over the test pairs at `generate.size`, 0..1 (null
    /// when scoring a folder).
    pub dice_coef: Option<f64>,
    /// States what `loss` and `dice_coef` are, in words.
    pub loss_note: String,
    /// The full-resolution scores and their choices ([`PhotoEvaluation`]), flattened into the
    /// top level.
    #[serde(flatten)]
    pub photos: PhotoEvaluation,
}

/// Refuses to score the test split with a checkpoint trained on other data than the run's
/// train and valid splits now hold (a regeneration or a new split since training): its test
/// split may then hold photographs the model trained on. Checkpoints without the record (none
/// are written so any more) are not checked.
fn check_trained_on_this_split(
    run: &fundus_pipeline::run_layout::RunLayout,
    state: &checkpoint::TrainState,
    ckpt_dir: &std::path::Path,
) -> Result<()> {
    if state.data_hash.is_empty() {
        return Ok(());
    }
    let train = scan_split(run, Split::Train)?;
    let valid = scan_split(run, Split::Valid)?;
    let now = crate::data::split_hash(&[("train", &train), ("valid", &valid)])?;
    anyhow::ensure!(
        now == state.data_hash,
        "the checkpoint in {} was trained on other data than the train and valid splits in {} \
         now hold (its record {}, the splits now {}: the set was regenerated or split again \
         since), so the test split may hold photographs it trained on; run `pipeline train` \
         again before scoring the test split, or score other photographs with --images and \
         --truth",
        ckpt_dir.display(),
        run.dataset().display(),
        state.data_hash,
        now
    );
    Ok(())
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
    let (model, state) = Model::load_best(cfg, device)?;
    let (photos, source) = match (&cfg.evaluate.images, &cfg.evaluate.truth) {
        (Some(i), Some(t)) => (
            folder_photos(i, t)?,
            format!("folder {} with ground truth {}", i.display(), t.display()),
        ),
        _ => {
            let m = fundus_pipeline::split::require_complete(cfg)?;
            check_trained_on_this_split(&run, &state, &ckpt_dir)?;
            (
                test_split_photos(cfg, &m)?,
                "the test split's source photographs".to_string(),
            )
        }
    };
    let out = run.eval_dir();
    io::create_dir(&out)?;
    fundus_pipeline::owned::claim(&out, &["evaluation.csv", "evaluation.json"])?;

    let (mut loss, mut dice_coef) = (None, None);
    if cfg.evaluate.images.is_none() {
        let test = scan_split(&run, Split::Test)?;
        let m = eval_batches(&model, &test, cfg.train.batch_size, size, None, None)?;
        write_csv(
            &out.join("evaluation.csv"),
            [("loss", m.loss), ("dice_coef", m.dice)],
            false,
        )?;
        (loss, dice_coef) = (Some(m.loss), Some(m.dice));
    }

    let net = |x: &tch::Tensor| model.predict(x);
    let body = evaluate_photos(&net, device, cfg, &photos, &source)?;
    let summary = Evaluation {
        schema: SCHEMA.into(),
        checkpoint: checkpoint::resolve(&ckpt_dir, "best")?.join(checkpoint::WEIGHTS),
        checkpoint_epoch: state.epoch,
        model: state.model,
        loss,
        dice_coef,
        loss_note: "loss and dice_coef: the reference's BCE + soft Dice over the test pairs at generate.size (null when scoring a folder)".into(),
        photos: body,
    };
    write_json(&out.join("evaluation.json"), &summary)?;
    let f = |v: Option<f64>| v.map_or("n/a".to_string(), |v| format!("{v:.4}"));
    let best = |m: Option<fundus_pipeline::scoring::MaxDice>| {
        m.map_or("n/a".to_string(), |m| {
            format!("{:.4} at probability >= {:.3}", m.dice, m.threshold)
        })
    };
    let primary = &summary.photos.primary;
    let p = &primary.summary.pooled;
    println!(
        "evaluate: {} photographs at full resolution, ground truth >= {} (of 252): pooled Dice {} IoU {} AUPR {}, lesion recall {} precision {}; max Dice {} (oracle); written to {}",
        photos.len(),
        primary.gt_min_value,
        f(p.dice),
        f(p.iou),
        f(p.aupr),
        f(p.lesion_wise.recall),
        f(p.lesion_wise.precision),
        best(p.max_dice),
        out.display()
    );
    for extra in &summary.photos.extra_gt_thresholds {
        let p = &extra.summary.pooled;
        println!(
            "evaluate: ground truth >= {}: pooled Dice {} AUPR {}, lesion recall {}; max Dice {} (oracle)",
            extra.gt_min_value,
            f(p.dice),
            f(p.aupr),
            f(p.lesion_wise.recall),
            best(p.max_dice)
        );
    }
    Ok(EvalReport {
        loss,
        dice_coef,
        summary,
    })
}
