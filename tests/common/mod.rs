//! Shared test fixtures: a tiny DIARETDB1-shaped tree written with plain shapes, and helpers to
//! run the `pipeline` binary. Independent of `pipeline synth` so generator tests stay focused.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use image::{GrayImage, Luma, Rgb, RgbImage};

pub const IMAGES: &str = "resources/images/ddb1_fundusimages";
pub const TRUTH: &str = "resources/images/ddb1_groundtruth/hemorrhages";

/// Writes `n` sources of `w` x `h`: a gray disc with dark-red lesions whose ground truth is a
/// confidence map (core 252, rim 105) and official split lists.
pub fn tiny_dataset(root: &Path, n: usize, w: u32, h: u32) {
    std::fs::create_dir_all(root.join(IMAGES)).unwrap();
    std::fs::create_dir_all(root.join(TRUTH)).unwrap();
    let mut train = String::new();
    let mut test = String::new();
    for i in 1..=n {
        let stem = format!("image{i:03}");
        let (cx, cy) = (
            (w as f64) * (0.3 + 0.05 * (i % 5) as f64),
            (h as f64) * (0.4 + 0.04 * (i % 4) as f64),
        );
        let r = (w.min(h) as f64) * 0.08;
        let d = |x: u32, y: u32| ((x as f64 - cx).powi(2) + (y as f64 - cy).powi(2)).sqrt();
        let img = RgbImage::from_fn(w, h, |x, y| {
            if d(x, y) < r {
                Rgb([90, 10, 10])
            } else {
                Rgb([200, (60 + (x + y) % 40) as u8, 30])
            }
        });
        let gt = GrayImage::from_fn(w, h, |x, y| {
            let v = d(x, y);
            Luma([if v < r {
                252
            } else if v < r + 2.0 {
                105
            } else {
                0
            }])
        });
        img.save(root.join(IMAGES).join(format!("{stem}.png")))
            .unwrap();
        gt.save(root.join(TRUTH).join(format!("{stem}.png")))
            .unwrap();
        let line = format!("images/ddb1_fundusimages/{stem}.png\n");
        if i % 3 == 0 {
            test += &line;
        } else {
            train += &line;
        }
    }
    for (dir, file, text) in [
        ("resources/traindatasets", "trainset.txt", train),
        ("resources/testdatasets", "testset.txt", test),
    ] {
        std::fs::create_dir_all(root.join(dir)).unwrap();
        std::fs::write(root.join(dir).join(file), text).unwrap();
    }
}

/// Writes a config file (JSON text) and returns its path.
pub fn config(dir: &Path, name: &str, json: &str) -> PathBuf {
    let p = dir.join(format!("{name}.json"));
    std::fs::write(&p, json).unwrap();
    p
}

/// The `pipeline` executable: this package's, or, in the tests of `fundus-train` (`train/`), the
/// workspace's `pipeline` beside `pipeline-torch` (both are built by `cargo test` in the project
/// root).
pub fn pipeline_bin() -> PathBuf {
    if let Some(p) = option_env!("CARGO_BIN_EXE_pipeline") {
        return PathBuf::from(p);
    }
    let Some(torch) = option_env!("CARGO_BIN_EXE_pipeline-torch") else {
        panic!("neither `pipeline` nor `pipeline-torch` is a binary of this package");
    };
    let p = Path::new(torch).with_file_name("pipeline");
    assert!(
        p.is_file(),
        "no {}: run the workspace's tests (`cargo test` in the project root), which build it",
        p.display()
    );
    p
}

/// Runs the binary with `args`.
pub fn pipeline(args: &[&str]) -> Output {
    let mut c = Command::new(pipeline_bin());
    // `generate` and `infer` take a shard index from a scheduler's environment: not in tests.
    for v in [
        "SLURM_ARRAY_TASK_ID",
        "SLURM_ARRAY_TASK_COUNT",
        "JOB_COMPLETION_INDEX",
    ] {
        c.env_remove(v);
    }
    c.args(args).output().expect("run pipeline")
}

/// Runs the binary and asserts success, returning stdout.
pub fn pipeline_ok(args: &[&str]) -> String {
    let out = pipeline(args);
    assert!(
        out.status.success(),
        "pipeline {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// All files under `dir` with their bytes, relative paths sorted.
pub fn tree(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<(String, Vec<u8>)> = walkdir::WalkDir::new(dir)
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_file())
        .map(|e| {
            (
                e.path().strip_prefix(dir).unwrap().display().to_string(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    out.sort();
    out
}
