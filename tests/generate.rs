//! `pipeline generate` / `split` / `stats` / `verify` through the binary on tiny synthetic data.

mod common;

use common::*;
use serde_json::Value;

fn small_config(dir: &std::path::Path, data: &std::path::Path, extra: &str) -> std::path::PathBuf {
    let json = format!(
        r#"{{
  "name": "t", "seed": 5, "data": "{}", "out": "{}",
  "generate": {{ "size": 64, "variants": {{ "rotate": [30, 200], "distort": [0.03], "distort_sigma": 8,
    "elastic": [{{"alpha": 60, "sigma": 4}}] }} }}{extra}
}}"#,
        data.display(),
        dir.join("out").display()
    );
    config(dir, "cfg", &json)
}

fn manifest(dir: &std::path::Path) -> Value {
    serde_json::from_slice(&std::fs::read(dir.join("out/t/manifest.json")).unwrap()).unwrap()
}

#[test]
fn same_config_same_bytes_with_1_and_4_threads() {
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("data");
    tiny_dataset(&data, 5, 120, 90);
    let mut trees = Vec::new();
    for (i, threads) in ["1", "4", "4"].iter().enumerate() {
        let run = d.path().join(format!("run{i}"));
        std::fs::create_dir_all(&run).unwrap();
        let cfg = small_config(&run, &data, "");
        let out = pipeline_ok(&[
            "generate",
            "--config",
            cfg.to_str().unwrap(),
            "--threads",
            threads,
        ]);
        assert!(out.contains("generated 100 pairs from 5 sources"), "{out}");
        let master = tree(&run.join("out/t/master"));
        trees.push((
            master,
            std::fs::read(run.join("out/t/manifest.json")).unwrap(),
        ));
    }
    assert_eq!(trees[0].0.len(), 200);
    assert!(trees[0] == trees[1], "1 thread and 4 threads differ");
    assert!(trees[1] == trees[2], "two runs differ");
}

#[test]
fn masks_are_one_channel_png_with_only_0_and_255() {
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("data");
    tiny_dataset(&data, 2, 100, 100);
    let cfg = small_config(d.path(), &data, "");
    pipeline_ok(&["generate", "--config", cfg.to_str().unwrap()]);
    let masks = d.path().join("out/t/master/masks");
    let mut n = 0;
    let mut fg = 0;
    for e in std::fs::read_dir(&masks).unwrap() {
        let img = image::open(e.unwrap().path()).unwrap();
        assert!(
            matches!(img, image::DynamicImage::ImageLuma8(_)),
            "not 1-channel 8-bit"
        );
        let g = img.to_luma8();
        assert!(g.pixels().all(|p| p[0] == 0 || p[0] == 255));
        fg += g.pixels().filter(|p| p[0] == 255).count();
        n += 1;
    }
    assert_eq!(n, 40);
    assert!(fg > 0);
}

#[test]
fn by_source_split_has_no_leak_and_test_holds_originals() {
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("data");
    tiny_dataset(&data, 10, 80, 80);
    let cfg = small_config(d.path(), &data, "");
    let c = cfg.to_str().unwrap();
    pipeline_ok(&["generate", "--config", c]);
    let out = pipeline_ok(&["split", "--config", c]);
    assert!(out.contains("train 160 pairs / 8 sources"), "{out}");
    let m = manifest(d.path());
    let mut seen = std::collections::HashMap::new();
    for p in m["pairs"].as_array().unwrap() {
        let Some(split) = p["split"].as_str() else {
            continue;
        };
        let prev = seen.insert(p["source"].as_str().unwrap().to_string(), split.to_string());
        assert!(
            prev.is_none() || prev.as_deref() == Some(split),
            "{} leaks",
            p["source"]
        );
        if split == "test" {
            assert_eq!(p["variant"], "orig");
        }
    }
    for split in ["train", "valid", "test"] {
        assert!(
            d.path()
                .join(format!("out/t/dataset/{split}/images"))
                .read_dir()
                .unwrap()
                .count()
                > 0
        );
    }
    // Stats and verify on the split tree.
    let out = pipeline_ok(&["stats", "--config", c]);
    assert!(out.contains("train:"), "{out}");
    let stats: Value =
        serde_json::from_slice(&std::fs::read(d.path().join("out/t/stats.json")).unwrap()).unwrap();
    assert_eq!(stats["schema"], "fundus-pipeline/stats/v1");
    assert_eq!(stats["splits"]["train"]["pairs"], 160);
    assert_eq!(stats["splits"]["test"]["pairs"], 1);
    assert_eq!(stats["counts"]["train"]["rotate_30"], 8);
    let fg = stats["splits"]["train"]["foreground_fraction"]["mean"]
        .as_f64()
        .unwrap();
    assert!(fg > 0.005 && fg < 0.1, "{fg}");
    assert!(d.path().join("out/t/stats.png").is_file());
    let out = pipeline_ok(&["verify", "--config", c]);
    assert!(out.contains("all match"), "{out}");
}

#[test]
fn official_split_follows_the_lists_without_leak() {
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("data");
    tiny_dataset(&data, 9, 64, 64);
    let cfg = small_config(d.path(), &data, r#", "split": {"mode": "official"}"#);
    let c = cfg.to_str().unwrap();
    pipeline_ok(&["generate", "--config", c]);
    pipeline_ok(&["split", "--config", c]);
    let m = manifest(d.path());
    let sources = &m["split"]["sources"];
    // Lists: every third image is test.
    assert_eq!(
        sources["test"],
        serde_json::json!(["image003", "image006", "image009"])
    );
    let train: Vec<&str> = sources["train"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    let valid: Vec<&str> = sources["valid"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    assert_eq!(train.len() + valid.len(), 6);
    assert_eq!(valid.len(), 1);
    assert!(train.iter().all(|s| !valid.contains(s)));
}

#[test]
fn reference_preset_counts_on_89_sources() {
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("data");
    // The synthetic DIARETDB1 tree, small pictures: counts do not depend on the size.
    pipeline_ok(&[
        "synth",
        "--out",
        data.to_str().unwrap(),
        "--count",
        "89",
        "--size",
        "64x48",
    ]);
    let preset = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("generator-configs/hemorrhages-reference.json"),
    )
    .unwrap();
    let mut cfg: Value = serde_json::from_str(&preset).unwrap();
    cfg["data"] = data.display().to_string().into();
    cfg["out"] = d.path().join("out").display().to_string().into();
    cfg["generate"]["size"] = 32.into(); // counts do not depend on the size
    let path = config(d.path(), "ref", &cfg.to_string());
    let c = path.to_str().unwrap();
    let out = pipeline_ok(&["generate", "--config", c]);
    assert!(
        out.contains("generated 2937 pairs from 89 sources"),
        "{out}"
    );
    let out = pipeline(&["split", "--config", c]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("train 2349 pairs"), "{stdout}");
    assert!(stdout.contains("valid 440 pairs"), "{stdout}");
    assert!(stdout.contains("test 148 pairs"), "{stdout}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("by-file"),
        "no leak warning"
    );
}

#[test]
fn verify_reports_changed_missing_and_extra_files() {
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("data");
    tiny_dataset(&data, 3, 64, 64);
    let cfg = small_config(d.path(), &data, "");
    let c = cfg.to_str().unwrap();
    pipeline_ok(&["generate", "--config", c]);
    pipeline_ok(&["verify", "--config", c]);
    let master = d.path().join("out/t/master");
    std::fs::write(master.join("images/image001_hflip.png"), b"changed").unwrap();
    std::fs::remove_file(master.join("masks/image002_vflip.png")).unwrap();
    std::fs::write(master.join("images/stray.png"), b"x").unwrap();
    let out = pipeline(&["verify", "--config", c]);
    assert_eq!(out.status.code(), Some(1));
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(
        s.contains("changed: master/images/image001_hflip.png"),
        "{s}"
    );
    assert!(
        s.contains("missing: master/masks/image002_vflip.png"),
        "{s}"
    );
    assert!(s.contains("extra: master/images/stray.png"), "{s}");
    // A link the manifest does not record is listed, whatever it points to.
    std::os::unix::fs::symlink("/etc/passwd", master.join("masks/link.png")).unwrap();
    let s = String::from_utf8_lossy(&pipeline(&["verify", "--config", c]).stdout).to_string();
    assert!(
        s.contains("extra: master/masks/link.png (symbolic link)"),
        "{s}"
    );
    // A recorded file replaced by a link to a copy of its own bytes is a change: the tool
    // writes regular files, and a write through the link would land elsewhere.
    let recorded = master.join("images/image003_orig.png");
    let copy = d.path().join("copy.png");
    std::fs::copy(&recorded, &copy).unwrap();
    std::fs::remove_file(&recorded).unwrap();
    std::os::unix::fs::symlink(&copy, &recorded).unwrap();
    let out = pipeline(&["verify", "--config", c]);
    assert_eq!(out.status.code(), Some(1));
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(
        s.contains("changed: master/images/image003_orig.png (symbolic link)"),
        "{s}"
    );
    // A config whose generation settings are not the set's: refused before hashing, naming the
    // setting (the files match their manifest, not what this config makes).
    let other = d.path().join("other.json");
    let json = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(&other, json.replace(r#""seed": 5"#, r#""seed": 7"#)).unwrap();
    let out = pipeline(&["verify", "--config", other.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(
        e.contains("does not match the master set") && e.contains("`seed` is 7"),
        "{e}"
    );
}

/// `generate.png_filter` changes the files' bytes, never their pixels; a config without it keeps
/// the generation key it had before the setting existed (adaptive, left out of the key); and a
/// run made with one filter is not silently reused by a config with another.
#[test]
fn png_filter_keeps_the_pixels_and_is_part_of_the_generation_key() {
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("data");
    tiny_dataset(&data, 2, 100, 80);
    let mut runs = Vec::new();
    for (name, filter) in [("adaptive", ""), ("avg", r#""png_filter": "avg", "#)] {
        let run = d.path().join(name);
        std::fs::create_dir_all(&run).unwrap();
        let json = format!(
            r#"{{ "name": "t", "seed": 5, "data": "{}", "out": "{}",
  "generate": {{ {filter}"size": 64, "variants": {{ "rotate": [30], "elastic": [{{"alpha": 60, "sigma": 4}}] }} }} }}"#,
            data.display(),
            run.join("out").display()
        );
        let cfg = config(&run, "cfg", &json);
        pipeline_ok(&["generate", "--config", cfg.to_str().unwrap()]);
        runs.push((run, cfg));
    }
    let (a, b) = (manifest(&runs[0].0), manifest(&runs[1].0));
    assert_ne!(a["generation_key"], b["generation_key"]);
    assert!(a["generation"]["generate"].get("png_filter").is_none());
    assert_eq!(b["generation"]["generate"]["png_filter"], "avg");
    let (ta, tb) = (
        tree(&runs[0].0.join("out/t/master")),
        tree(&runs[1].0.join("out/t/master")),
    );
    assert_eq!(ta.len(), tb.len());
    let mut bytes_differ = 0;
    for ((na, ba), (nb, bb)) in ta.iter().zip(&tb) {
        assert_eq!(na, nb);
        bytes_differ += usize::from(ba != bb);
        let pa = image::load_from_memory(ba).unwrap();
        let pb = image::load_from_memory(bb).unwrap();
        assert!(pa.as_bytes() == pb.as_bytes(), "{na}: pixels differ");
    }
    assert!(bytes_differ > 0, "the filter changed no file");
    // `generate` with the avg config over the adaptive run: refused, naming the setting.
    let avg_cfg = runs[1].1.to_str().unwrap().to_string();
    let moved = runs[0].0.join("avg-over-adaptive.json");
    let text = std::fs::read_to_string(&avg_cfg)
        .unwrap()
        .replace("/avg/out", "/adaptive/out");
    std::fs::write(&moved, text).unwrap();
    let o = pipeline(&["generate", "--config", moved.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        e.contains("holds a different run") && e.contains("`generate.png_filter` is \"avg\""),
        "{e}"
    );
    // The avg run read with the adaptive config: refused, naming the setting.
    let cfg = runs[0].1.to_str().unwrap().replace("adaptive", "avg");
    std::fs::copy(&runs[0].1, &cfg).unwrap();
    let edited = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("/adaptive/out", "/avg/out");
    std::fs::write(&cfg, edited).unwrap();
    let o = pipeline(&["split", "--config", &cfg]);
    assert_eq!(o.status.code(), Some(2));
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        e.contains("`generate.png_filter` is \"avg\" in manifest.json but left at its default in this config"),
        "{e}"
    );
}

/// Chroma sampling factors (h, v) of each component, from a baseline JPEG's SOF0 segment.
fn jpeg_sampling(bytes: &[u8]) -> Vec<(u8, u8)> {
    let sof = bytes
        .windows(2)
        .position(|m| m == [0xFF, 0xC0])
        .expect("a baseline SOF0 marker");
    let n = bytes[sof + 9] as usize;
    (0..n)
        .map(|i| {
            let f = bytes[sof + 11 + 3 * i];
            (f >> 4, f & 15)
        })
        .collect()
}

/// JPEG output: libjpeg-turbo baseline, full chroma at quality 90 and up (4:2:0 below) unless
/// `jpeg_subsampling` says otherwise, close to the PNG run's pixels, the same bytes with 1 and 4 threads, and its encoder recorded in the
/// manifest and the generation key (a PNG run records none).
#[test]
fn jpeg_output_is_deterministic_full_chroma_and_its_encoder_is_recorded() {
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("data");
    tiny_dataset(&data, 2, 100, 80);
    let run = |name: &str, generate: &str, threads: &str| {
        let dir = d.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let json = format!(
            r#"{{ "name": "t", "seed": 5, "data": "{}", "out": "{}",
  "generate": {{ {generate}"size": 64, "variants": {{ "rotate": [30], "elastic": [{{"alpha": 60, "sigma": 4}}] }} }} }}"#,
            data.display(),
            dir.join("out").display()
        );
        let cfg = config(&dir, "cfg", &json);
        pipeline_ok(&[
            "generate",
            "--config",
            cfg.to_str().unwrap(),
            "--threads",
            threads,
        ]);
        (tree(&dir.join("out/t/master/images")), manifest(&dir))
    };
    let (png, png_manifest) = run("png", "", "1");
    let q95 = r#""image_format": "jpeg", "jpeg_quality": 95, "#;
    let (jpeg, jpeg_manifest) = run("jpeg1", q95, "1");
    let (jpeg4, _) = run("jpeg4", q95, "4");
    assert!(jpeg == jpeg4, "1 and 4 threads give different JPEG files");
    assert_eq!(jpeg.len(), png.len());
    for ((nj, bj), (_, bp)) in jpeg.iter().zip(&png) {
        assert!(nj.ends_with(".jpg"), "{nj}");
        assert_eq!(jpeg_sampling(bj), vec![(1, 1); 3], "{nj}: not 4:4:4");
        let j = image::load_from_memory(bj).unwrap().to_rgb8();
        let p = image::load_from_memory(bp).unwrap().to_rgb8();
        let err: f64 = j
            .as_raw()
            .iter()
            .zip(p.as_raw())
            .map(|(a, b)| (f64::from(*a) - f64::from(*b)).abs())
            .sum::<f64>()
            / p.as_raw().len() as f64;
        assert!(err < 3.0, "{nj}: mean error {err} levels against the PNG");
    }
    let (jpeg80, _) = run(
        "jpeg80",
        r#""image_format": "jpeg", "jpeg_quality": 80, "#,
        "1",
    );
    assert_eq!(jpeg_sampling(&jpeg80[0].1), vec![(2, 2), (1, 1), (1, 1)]);
    // `jpeg_subsampling` overrides the rule, and is part of the key when it is not "auto".
    let (half, half_manifest) = run(
        "half",
        r#""image_format": "jpeg", "jpeg_quality": 95, "jpeg_subsampling": "4:2:0", "#,
        "1",
    );
    assert_eq!(jpeg_sampling(&half[0].1), vec![(2, 2), (1, 1), (1, 1)]);
    assert_ne!(
        half_manifest["generation_key"],
        jpeg_manifest["generation_key"]
    );
    let (full, _) = run(
        "full",
        r#""image_format": "jpeg", "jpeg_quality": 80, "jpeg_subsampling": "4:4:4", "#,
        "1",
    );
    assert_eq!(jpeg_sampling(&full[0].1), vec![(1, 1); 3]);
    let encoder = &jpeg_manifest["generation"]["jpeg_encoder"];
    assert!(
        encoder.as_str().unwrap().starts_with("libjpeg-turbo"),
        "{encoder}"
    );
    assert!(png_manifest["generation"].get("jpeg_encoder").is_none());
}

#[test]
fn verify_checks_the_records_the_split_settings_and_prints_names_safely() {
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("data");
    tiny_dataset(&data, 3, 64, 64);
    let cfg = small_config(d.path(), &data, "");
    let c = cfg.to_str().unwrap();
    pipeline_ok(&["generate", "--config", c]);
    let run = d.path().join("out/t");
    let path = run.join("manifest.json");
    let original = std::fs::read(&path).unwrap();
    let edit = |f: &dyn Fn(&mut Value)| {
        let mut m: Value = serde_json::from_slice(&original).unwrap();
        f(&mut m);
        std::fs::write(&path, serde_json::to_vec(&m).unwrap()).unwrap();
    };
    // A pair trimmed from the records (its files too): the set matches its files but lacks a
    // variant the config makes.
    edit(&|m| {
        let pairs = m["pairs"].as_array_mut().unwrap();
        let i = pairs
            .iter()
            .position(|p| p["name"] == "image002_hflip")
            .unwrap();
        pairs.remove(i);
    });
    let hidden = d.path().join("hidden");
    std::fs::create_dir_all(&hidden).unwrap();
    for f in ["images/image002_hflip.png", "masks/image002_hflip.png"] {
        let name = f.replace('/', "_");
        std::fs::rename(run.join("master").join(f), hidden.join(name)).unwrap();
    }
    let out = pipeline(&["verify", "--config", c]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(s.contains("missing record: image002_hflip"), "{s}");
    // A record listed twice.
    for f in ["images/image002_hflip.png", "masks/image002_hflip.png"] {
        let name = f.replace('/', "_");
        std::fs::rename(hidden.join(name), run.join("master").join(f)).unwrap();
    }
    edit(&|m| {
        let pairs = m["pairs"].as_array_mut().unwrap();
        let first = pairs[0].clone();
        pairs.push(first);
    });
    let s = String::from_utf8_lossy(&pipeline(&["verify", "--config", c]).stdout).to_string();
    assert!(s.contains("duplicate record: image001_"), "{s}");
    std::fs::write(&path, &original).unwrap();
    pipeline_ok(&["verify", "--config", c]);
    // A file name with a line break cannot forge a line of the report.
    let sneaky = run.join("master/images/a\nverified 9 files: all match manifest.json");
    std::fs::write(&sneaky, b"x").unwrap();
    let out = pipeline(&["verify", "--config", c]);
    assert_eq!(out.status.code(), Some(1));
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(
        s.contains("extra: master/images/a\\nverified 9 files") && !s.contains("\nverified 9"),
        "{s}"
    );
    std::fs::remove_file(&sneaky).unwrap();
    // A folder at a recorded name is named as a folder.
    let rec = run.join("master/masks/image003_orig.png");
    std::fs::remove_file(&rec).unwrap();
    std::fs::create_dir(&rec).unwrap();
    let s = String::from_utf8_lossy(&pipeline(&["verify", "--config", c]).stdout).to_string();
    assert!(
        s.contains("changed: master/masks/image003_orig.png (folder)"),
        "{s}"
    );
    std::fs::remove_dir(&rec).unwrap();
    pipeline_ok(&["generate", "--config", c]);
    // A config whose split section differs from the recorded split: refused like stats does.
    pipeline_ok(&["split", "--config", c]);
    pipeline_ok(&["verify", "--config", c]);
    let other = d.path().join("other.json");
    let json = std::fs::read_to_string(&cfg).unwrap();
    let json = json.replacen(
        r#""name": "t","#,
        r#""name": "t", "split": {"train": 0.5, "valid": 0.25, "test": 0.25},"#,
        1,
    );
    std::fs::write(&other, json).unwrap();
    let out = pipeline(&["verify", "--config", other.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(e.contains("does not match the split"), "{e}");
    // Generating again replaces the set and removes its split: said, not silent.
    let out = pipeline(&["generate", "--config", c]);
    assert!(out.status.success(), "{out:?}");
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(
        e.contains("split of the set this generation replaced was removed"),
        "{e}"
    );
}
