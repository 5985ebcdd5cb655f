//! Kill and resume of the training stage through the real binary, on tiny synthetic data: a
//! run killed at any commit point (`PIPELINE_ABORT_AT_COMMIT=N` aborts at the N-th) and then
//! resumed ends with the same bytes as a run that went straight through.

#[path = "../../tests/common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::{pipeline, pipeline_ok};

const ABORT: &str = "PIPELINE_ABORT_AT_COMMIT";

/// Synthetic data, and a config for `<root>/out/r`: 32x32, 3 variants, 2-level UNet, 2 epochs.
fn setup(root: &Path) -> PathBuf {
    let data = root.join("data");
    pipeline_ok(&[
        "synth",
        "--out",
        data.to_str().unwrap(),
        "--count",
        "4",
        "--size",
        "96x72",
        "--seed",
        "2",
    ]);
    let json = format!(
        r#"{{"name": "r", "seed": 3, "data": "{}", "out": "{}",
  "generate": {{"size": 32, "variants": {{"vflip": false, "rotate": [90], "shrink": [], "shear_x": [],
    "shear_y": [], "elastic": [], "distort": [], "lens": {{"barrel": false, "pincushion": false}}}}}},
  "split": {{"train": 0.5, "valid": 0.25, "test": 0.25}},
  "model": {{"levels": 2, "base_filters": 4}},
  "train": {{"epochs": 2, "batch_size": 2, "learning_rate": 0.003, "preview_images": 1}}}}"#,
        data.display(),
        root.join("out").display()
    );
    common::config(root, "cfg", &json)
}

fn run_dir(root: &Path) -> PathBuf {
    root.join("out/r")
}

/// Every file of the training folder with its bytes; in `state.json` the wall-clock fields
/// (`seconds`, `images_per_s`) are blanked, as they differ between any two runs.
fn train_files(root: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    for (name, bytes) in common::tree(&run_dir(root).join("train")) {
        let bytes = if name.ends_with("state.json") {
            let mut v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
            for row in v["history"].as_array_mut().unwrap() {
                row["seconds"] = 0.into();
                row["images_per_s"] = 0.into();
            }
            serde_json::to_vec(&v).unwrap()
        } else {
            bytes
        };
        out.insert(name, bytes);
    }
    out
}

/// `pipeline <args>` with the abort hook set to `n`; returns whether it was aborted.
fn aborted_at(n: usize, args: &[&str]) -> bool {
    let out = std::process::Command::new(common::pipeline_bin())
        .args(args)
        .env(ABORT, n.to_string())
        // Count the training stage's commit points only (`all` commits generate/split/stats first).
        .env("PIPELINE_ABORT_ONLY", "train:")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    if out.status.success() {
        return false;
    }
    assert!(
        stderr.contains(&format!("{ABORT}: aborting at commit point {n} (train: ")),
        "failed, but not at the hook: {stderr}"
    );
    true
}

#[test]
fn train_resume_after_a_kill_at_every_commit_point_matches_a_straight_run() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = setup(tmp.path());
    let cfg = cfg.to_str().unwrap();
    for cmd in ["generate", "split"] {
        pipeline_ok(&[cmd, "-c", cfg]);
    }
    let train = ["train", "-c", cfg, "--device", "cpu"];
    pipeline_ok(&train);
    let straight = train_files(tmp.path());
    assert!(
        straight.contains_key("checkpoint.json"),
        "{:?}",
        straight.keys()
    );
    assert!(straight.contains_key("train_losses.csv"));

    let mut points = 0;
    for n in 1.. {
        if !aborted_at(n, &train) {
            break;
        }
        points = n;
        let out = pipeline_ok(&["train", "-c", cfg, "--device", "cpu", "--resume"]);
        let resumed = train_files(tmp.path());
        for (name, bytes) in &straight {
            assert!(
                resumed.get(name) == Some(bytes),
                "killed at commit point {n}, then resumed: {name} differs or is missing\n{out}"
            );
        }
        let extra: Vec<_> = resumed
            .keys()
            .filter(|k| !straight.contains_key(*k))
            .collect();
        assert!(extra.is_empty(), "commit point {n}: extra files {extra:?}");
    }
    // 2 epochs x (weights, optimizer, state, pointer, cleanup, 2 CSVs, curves, previews).
    assert_eq!(points, 18);
}

#[test]
fn all_resume_continues_training_after_a_kill() {
    let straight_root = tempfile::tempdir().unwrap();
    let cfg = setup(straight_root.path());
    pipeline_ok(&["all", "-c", cfg.to_str().unwrap(), "--device", "cpu"]);
    let straight = train_files(straight_root.path());

    let tmp = tempfile::tempdir().unwrap();
    let cfg = setup(tmp.path());
    let cfg = cfg.to_str().unwrap();
    // Point 12: epoch 1 committed, epoch 2's set part-written.
    assert!(aborted_at(12, &["all", "-c", cfg, "--device", "cpu"]));
    let out = pipeline_ok(&["all", "-c", cfg, "--device", "cpu", "--resume"]);
    assert!(out.contains("train: resuming after epoch 1"), "{out}");
    assert!(!out.contains("epoch 1/2:"), "epoch 1 trained again:\n{out}");
    assert_eq!(train_files(tmp.path()), straight);
    let eval = |root: &Path| std::fs::read(run_dir(root).join("eval/evaluation.csv")).unwrap();
    assert_eq!(eval(tmp.path()), eval(straight_root.path()));
}

#[test]
fn resume_refuses_changed_training_data() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = setup(tmp.path());
    let cfg = cfg.to_str().unwrap();
    for cmd in ["generate", "split"] {
        pipeline_ok(&[cmd, "-c", cfg]);
    }
    // Epoch 1 committed (points 1-9), then killed in epoch 2.
    assert!(aborted_at(10, &["train", "-c", cfg, "--device", "cpu"]));
    let images = run_dir(tmp.path()).join("dataset/train/images");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&images)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    let other = std::fs::read(&files[1]).unwrap();
    // A hard link into master: replace the file rather than write through it.
    std::fs::remove_file(&files[0]).unwrap();
    std::fs::write(&files[0], other).unwrap();
    let out = pipeline(&["train", "-c", cfg, "--device", "cpu", "--resume"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("the training data changed since epoch 1")
            && err.contains("dataset/train")
            && err.contains("without --resume"),
        "{err}"
    );
    // Without --resume it starts over.
    pipeline_ok(&["train", "-c", cfg, "--device", "cpu"]);
}

#[test]
fn evaluate_after_a_kill_mid_commit_reads_the_last_complete_set() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = setup(tmp.path());
    let cfg = cfg.to_str().unwrap();
    for cmd in ["generate", "split"] {
        pipeline_ok(&[cmd, "-c", cfg]);
    }
    // Points 10-12: epoch 2's weights, optimizer and state written, the pointer not switched.
    assert!(aborted_at(12, &["train", "-c", cfg, "--device", "cpu"]));
    let train = run_dir(tmp.path()).join("train");
    assert!(train.join("epochs/0002/state.json").is_file());
    pipeline_ok(&["evaluate", "-c", cfg, "--device", "cpu"]);
    let json: serde_json::Value = serde_json::from_slice(
        &std::fs::read(run_dir(tmp.path()).join("eval/evaluation.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(json["checkpoint_epoch"], 1);
    assert!(
        json["checkpoint"]
            .as_str()
            .unwrap()
            .ends_with("epochs/0001/weights.safetensors"),
        "{json}"
    );
}
