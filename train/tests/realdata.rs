//! The real-photograph recipe through the binary (issue 9), on tiny synthetic data: patch
//! training with a lesion-aware loss, evaluation at the photographs' own resolution with every
//! choice stated, and scoring of any folder of photographs.

#[path = "../../tests/common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};

use common::{config, pipeline, pipeline_ok, tiny_dataset, IMAGES, TRUTH};
use serde_json::Value;

/// 6 sources of 96x72; 32x32 pairs; a 2-level UNet trained 1 short epoch on 16x16 patches.
fn trained_run(tmp: &Path, extra_train: &str) -> PathBuf {
    let data = tmp.join("data");
    tiny_dataset(&data, 6, 96, 72);
    let cfg = config(
        tmp,
        "cfg",
        &format!(
            r#"{{"name": "t", "seed": 3, "data": "{}", "out": "{}",
            "generate": {{"size": 32, "variants": {{"rotate": [90], "shrink": [], "shear_x": [], "shear_y": [],
              "elastic": [], "distort": [], "lens": {{"barrel": false, "pincushion": false}}}}}},
            "split": {{"train": 0.5, "valid": 0.17, "test": 0.33}},
            "model": {{"levels": 2, "base_filters": 4}},
            "train": {{"epochs": 1, "batch_size": 4, "learning_rate": 0.01, "preview_images": 0,
              "patch_size": 16, "epoch_length": 3{extra_train}}}}}"#,
            data.display(),
            tmp.join("out").display()
        ),
    );
    let c = cfg.to_str().unwrap();
    pipeline_ok(&["generate", "--config", c]);
    pipeline_ok(&["split", "--config", c]);
    cfg
}

fn json(path: PathBuf) -> Value {
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

#[test]
fn patch_training_with_focal_tversky_inside_the_fov_runs_and_logs_its_recipe() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = trained_run(
        tmp.path(),
        r#", "loss": "focal-tversky", "loss_in_fov": true, "foreground_share": 1.0"#,
    );
    let out = pipeline_ok(&[
        "train",
        "--config",
        cfg.to_str().unwrap(),
        "--device",
        "cpu",
    ]);
    assert!(
        out.contains("patches of 16x16, 100% centred on lesion pixels, loss focal-tversky inside the field of view"),
        "{out}"
    );
    let losses = std::fs::read_to_string(tmp.path().join("out/t/train/train_losses.csv")).unwrap();
    let row: Vec<f64> = losses
        .lines()
        .nth(1)
        .unwrap()
        .split(',')
        .map(|v| v.parse().unwrap())
        .collect();
    // Focal-Tversky lies in [0, 1].
    assert!(
        row[1] > 0.0 && row[1] <= 1.0 && row[2] > 0.0 && row[2] <= 1.0,
        "{losses}"
    );
}

#[test]
fn evaluate_scores_at_full_resolution_and_states_every_choice() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = trained_run(tmp.path(), "");
    let c = cfg.to_str().unwrap();
    pipeline_ok(&["train", "--config", c, "--device", "cpu"]);
    let out = pipeline_ok(&["evaluate", "--config", c, "--device", "cpu"]);
    assert!(out.contains("at full resolution"), "{out}");
    let j = json(tmp.path().join("out/t/eval/evaluation.json"));
    let ch = &j["choices"];
    assert_eq!(ch["gt_threshold"].as_f64(), Some(0.75));
    assert_eq!(ch["gt_min_value"].as_u64(), Some(189));
    assert_eq!(ch["threshold"].as_f64(), Some(0.5));
    assert_eq!(ch["inference"]["mode"], "sliding-window");
    assert_eq!(ch["inference"]["tile"].as_u64(), Some(16));
    assert_eq!(ch["inference"]["overlap"].as_f64(), Some(0.5));
    assert!(ch["resolution"].as_str().unwrap().contains("original"));
    assert!(
        ch["fov"][0].as_str().unwrap().starts_with("estimated"),
        "{ch}"
    );
    assert!(ch["aupr_rule"]
        .as_str()
        .unwrap()
        .contains("(R_n - R_{n-1}) P_n"));
    let cases = j["metric_per_case"].as_array().unwrap();
    assert_eq!(cases.len(), 2, "test split: 2 of 6 sources");
    for case in cases {
        assert_eq!(
            (case["width"].as_u64(), case["height"].as_u64()),
            (Some(96), Some(72))
        );
        let m = &case["metrics"];
        assert!(
            m.get("AUPR").is_some() && m["lesion_wise"]["n_ref"].as_u64() == Some(1),
            "{m}"
        );
    }
    // The second ground-truth threshold (0.3: v >= 76) also counts the rim (105) of each lesion.
    let extra = &j["extra_gt_thresholds"][0];
    assert_eq!(extra["gt_min_value"].as_u64(), Some(76));
    let n_ref = |v: &Value| v["pooled"]["n_ref"].as_u64().unwrap();
    assert!(
        n_ref(extra) > n_ref(&j),
        "{} vs {}",
        n_ref(extra),
        n_ref(&j)
    );
    assert!(tmp.path().join("out/t/eval/evaluation.csv").is_file());
}

#[test]
fn evaluate_scores_any_folder_of_photographs_with_their_ground_truth() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = trained_run(tmp.path(), "");
    let c = cfg.to_str().unwrap();
    pipeline_ok(&["train", "--config", c, "--device", "cpu"]);
    let data = tmp.path().join("data");
    let (images, truth) = (data.join(IMAGES), data.join(TRUTH));
    let (i, t) = (images.to_str().unwrap(), truth.to_str().unwrap());
    let out = pipeline(&["evaluate", "--config", c, "--device", "cpu", "--images", i]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("`evaluate.truth` go together"),
        "{err}"
    );
    pipeline_ok(&[
        "evaluate", "--config", c, "--device", "cpu", "--images", i, "--truth", t,
    ]);
    let j = json(tmp.path().join("out/t/eval/evaluation.json"));
    assert_eq!(j["metric_per_case"].as_array().unwrap().len(), 6);
    assert!(j["choices"]["images"].as_str().unwrap().contains(i));
    assert!(j["loss"].is_null());
}
