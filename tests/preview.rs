//! `pipeline preview` and the sample sheets of `pipeline stats`, through the binary on tiny data.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use fundus_pipeline::preview::{sheet_size, GAP, HEADER, LABEL, OUTLINE, TILE};

/// 3 variant kinds: orig, hflip, vflip, rotate_30, rotate_200, shrink_0.8, ... as the config says.
fn setup(dir: &Path, sources: usize) -> PathBuf {
    let data = dir.join("data");
    tiny_dataset(&data, sources, 90, 80);
    let json = format!(
        r#"{{
  "name": "t", "seed": 9, "data": "{}", "out": "{}",
  "generate": {{ "size": 64, "variants": {{ "rotate": [30, 200], "shrink": [0.8],
    "elastic": [], "distort": [], "lens": {{ "barrel": true, "pincushion": false }} }} }},
  "stats": {{ "samples_per_split": 5 }}
}}"#,
        data.display(),
        dir.join("out").display()
    );
    config(dir, "cfg", &json)
}

fn manifest_variants(dir: &Path) -> Vec<String> {
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("out/t/manifest.json")).unwrap()).unwrap();
    m["generation"]["variants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect()
}

#[test]
fn preview_has_one_tile_per_variant_with_outlines_and_same_bytes_twice() {
    let d = tempfile::tempdir().unwrap();
    let cfg = setup(d.path(), 3);
    let c = cfg.to_str().unwrap();
    pipeline_ok(&["generate", "--config", c]);
    let variants = manifest_variants(d.path());
    assert_eq!(variants[0], "orig");
    assert!(variants.len() >= 10, "{variants:?}");

    let out = pipeline_ok(&["preview", "--config", c]);
    let sheet = d.path().join("out/t/preview_image001.png");
    assert!(out.contains("preview_image001.png"), "{out}");
    let img = image::open(&sheet).unwrap().to_rgb8();
    assert_eq!(img.dimensions(), sheet_size(variants.len()));
    // Every tile holds some outline (each tiny source has a lesion in every variant), and the
    // label bands hold none.
    for i in 0..variants.len() as u32 {
        let (x, y) = (
            GAP + (i % 8) * (TILE + GAP),
            HEADER + (i / 8) * (TILE + LABEL + GAP),
        );
        let tile = image::imageops::crop_imm(&img, x, y, TILE, TILE).to_image();
        let n = tile.pixels().filter(|p| **p == OUTLINE).count();
        assert!(
            n > 20,
            "tile {i} ({}) has {n} outline pixels",
            variants[i as usize]
        );
        let band = image::imageops::crop_imm(&img, x, y + TILE, TILE, LABEL).to_image();
        assert!(band.pixels().all(|p| *p != OUTLINE));
        assert!(
            band.pixels().any(|p| p[0] > 150),
            "tile {i} has no label text"
        );
    }

    // Same config, same bytes; --source and --sheet-dir pick the source and the folder.
    let first = std::fs::read(&sheet).unwrap();
    pipeline_ok(&["preview", "--config", c]);
    assert!(first == std::fs::read(&sheet).unwrap(), "two runs differ");
    let other = d.path().join("sheets");
    pipeline_ok(&[
        "preview",
        "--config",
        c,
        "--source",
        "image003",
        "--sheet-dir",
        other.to_str().unwrap(),
    ]);
    let third = std::fs::read(other.join("preview_image003.png")).unwrap();
    assert!(third != first);
    // No temporaries left beside the sheets (the folder's record of its own files aside).
    let names: Vec<String> = std::fs::read_dir(&other)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != ".pipeline-owned")
        .collect();
    assert_eq!(names, vec!["preview_image003.png".to_string()]);
}

#[test]
fn unknown_source_and_missing_generation_are_clear_errors() {
    let d = tempfile::tempdir().unwrap();
    let cfg = setup(d.path(), 2);
    let c = cfg.to_str().unwrap();
    let out = pipeline(&["preview", "--config", c]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("manifest.json") && err.contains("pipeline generate"),
        "{err}"
    );

    pipeline_ok(&["generate", "--config", c]);
    let out = pipeline(&["preview", "--config", c, "--source", "image999"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("image999"), "{err}");
    assert!(
        err.contains("image001") && err.contains("image002"),
        "{err}"
    );
    assert!(!d.path().join("out/t/preview_image999.png").exists());
}

#[test]
fn stats_writes_sample_sheets_per_split() {
    let d = tempfile::tempdir().unwrap();
    let cfg = setup(d.path(), 10);
    let c = cfg.to_str().unwrap();
    pipeline_ok(&["generate", "--config", c]);
    pipeline_ok(&["split", "--config", c]);
    let out = pipeline_ok(&["stats", "--config", c]);
    let mut bytes = Vec::new();
    for split in ["train", "valid", "test"] {
        let p = d.path().join(format!("out/t/samples_{split}.png"));
        assert!(out.contains(&format!("samples_{split}.png")), "{out}");
        let img = image::open(&p).unwrap().to_rgb8();
        // 10 sources split 8/1/1 (ratios 0.8/0.15/0.05): train and valid hold more than 5 pairs,
        // test holds the one original.
        let n = if split == "test" { 1 } else { 5 };
        assert_eq!(img.dimensions(), sheet_size(n), "{split}");
        assert!(img.pixels().any(|p| *p == OUTLINE), "{split}");
        bytes.push(std::fs::read(&p).unwrap());
    }
    pipeline_ok(&["stats", "--config", c]);
    for (i, split) in ["train", "valid", "test"].iter().enumerate() {
        let again = std::fs::read(d.path().join(format!("out/t/samples_{split}.png"))).unwrap();
        assert!(
            again == bytes[i],
            "samples_{split}.png differs between runs"
        );
    }
}

#[test]
fn all_without_training_writes_the_sheets_beside_stats() {
    let d = tempfile::tempdir().unwrap();
    let cfg = setup(d.path(), 4);
    let out = pipeline_ok(&["all", "--config", cfg.to_str().unwrap(), "--no-train"]);
    let run = d.path().join("out/t");
    for f in [
        "stats.json",
        "samples_train.png",
        "samples_valid.png",
        "samples_test.png",
        "preview_image001.png",
    ] {
        assert!(run.join(f).is_file(), "{f} missing");
    }
    assert!(
        out.contains("samples_train.png") && out.contains("preview_image001.png"),
        "{out}"
    );
}
