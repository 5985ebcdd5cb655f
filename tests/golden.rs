//! Golden values: the bytes the project promises to reproduce, pinned so that a change of ours or
//! of a dependency (rand, rand_chacha, blake3, image's encoders, the float formatting of serde_json)
//! that changes them is caught. Each value is a small text file under `tests/data/golden/`.
//!
//! When a change is intended (a new variant kind, a kernel fix, a version bump: the manifest
//! records `tool_version`), regenerate and commit the files, and say in the commit why the bytes
//! changed:
//!
//!     GOLDEN_REGENERATE=1 cargo test --test golden
//!
//! (imageproc's `tests/regression.rs` works the same way.)

mod common;

use std::path::{Path, PathBuf};

use fundus_pipeline::augment::field::elastic;
use fundus_pipeline::rng::rng_for;
use image::{GrayImage, Luma, Rgb, RgbImage};
use rand::Rng;

/// Set (to anything) to write the golden files instead of comparing with them.
const REGENERATE: &str = "GOLDEN_REGENERATE";

fn golden_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/golden")
        .join(name)
}

/// Compares `actual` with the golden file `name`, or writes it when [`REGENERATE`] is set.
/// Panics with the differing lines and how to regenerate.
fn check(name: &str, actual: &str) {
    let path = golden_path(name);
    if std::env::var_os(REGENERATE).is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "cannot read golden file {}: {e}; create it with {REGENERATE}=1 cargo test --test golden",
            path.display()
        )
    });
    if expected == actual {
        return;
    }
    let (want, got): (Vec<&str>, Vec<&str>) =
        (expected.lines().collect(), actual.lines().collect());
    let mut diff = String::new();
    for i in 0..want.len().max(got.len()) {
        let (w, g) = (want.get(i), got.get(i));
        if w != g {
            diff += &format!(
                "  line {}:\n    golden: {}\n    now:    {}\n",
                i + 1,
                w.unwrap_or(&"(none)"),
                g.unwrap_or(&"(none)")
            );
        }
    }
    panic!(
        "{} differs from the golden values ({} of {} lines):\n{diff}If the change is intended, \
         run `{REGENERATE}=1 cargo test --test golden` and commit the files with the reason.",
        path.display(),
        diff.matches("  line ").count(),
        want.len().max(got.len())
    );
}

/// Two 48x40 sources written as BMP (an encoding that does not change between versions of the
/// `image` crate, unlike PNG's compressor), with a lesion each.
fn bmp_dataset(root: &Path) {
    let (images, truth) = (root.join(common::IMAGES), root.join(common::TRUTH));
    std::fs::create_dir_all(&images).unwrap();
    std::fs::create_dir_all(&truth).unwrap();
    for (i, (cx, cy)) in [(14u32, 12u32), (30, 25)].into_iter().enumerate() {
        let stem = format!("image{:03}", i + 1);
        let lesion = |x: u32, y: u32| x.abs_diff(cx) < 5 && y.abs_diff(cy) < 4;
        let img = RgbImage::from_fn(48, 40, |x, y| {
            if lesion(x, y) {
                Rgb([90, 12, 10])
            } else {
                Rgb([(150 + 2 * x) as u8, (40 + 3 * y) as u8, 25])
            }
        });
        let gt = GrayImage::from_fn(48, 40, |x, y| Luma([if lesion(x, y) { 252 } else { 0 }]));
        img.save(images.join(format!("{stem}.bmp"))).unwrap();
        gt.save(truth.join(format!("{stem}.bmp"))).unwrap();
    }
}

/// A tiny generate + split: the blake3 of its manifest (which records every file's blake3) and
/// of each pair, so a difference names the variant that changed.
#[test]
fn tiny_run_manifest_matches_golden() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    bmp_dataset(&data);
    let cfg = common::config(
        tmp.path(),
        "cfg",
        &format!(
            r#"{{"name": "golden", "seed": 7, "data": "{}", "out": "{}",
                "generate": {{"size": 32, "variants": {{
                    "rotate": [30], "shrink": [0.8], "shear_x": [0.1], "shear_y": [],
                    "elastic": [{{"alpha": 40, "sigma": 4}}], "distort": [0.05],
                    "distort_sigma": 6,
                    "lens": {{"barrel": true, "pincushion": true, "centres": [[0.5, 0.5]]}}}}}},
                "split": {{"train": 0.5, "valid": 0.5, "test": 0.0}}}}"#,
            data.display(),
            tmp.path().join("out").display()
        ),
    );
    let cfg = cfg.to_str().unwrap();
    common::pipeline_ok(&["generate", "--config", cfg, "--threads", "2"]);
    common::pipeline_ok(&["split", "--config", cfg]);
    let run = tmp.path().join("out/golden");
    let manifest_bytes = std::fs::read(run.join("manifest.json")).unwrap();
    let manifest: serde_json::Value = serde_json::from_slice(&manifest_bytes).unwrap();
    let mut text = format!("manifest.json {}\n", blake3::hash(&manifest_bytes).to_hex());
    for p in manifest["pairs"].as_array().unwrap() {
        text += &format!(
            "{} {} {} {}\n",
            p["name"].as_str().unwrap(),
            p["image_hash"].as_str().unwrap(),
            p["mask_hash"].as_str().unwrap(),
            p["split"].as_str().unwrap_or("-"),
        );
    }
    check("tiny_run.txt", &text);
}

/// The generator of one (seed, source, variant) and the draws made from it: blake3 seeding,
/// ChaCha8, and rand's integer, uniform-float and normal sampling.
#[test]
fn seeded_draw_matches_golden() {
    let mut rng = rng_for(42, "image001", "elastic_1300_8");
    let mut text = String::new();
    for _ in 0..4 {
        text += &format!("u64 {}\n", rng.random::<u64>());
    }
    for _ in 0..4 {
        text += &format!("uniform(-1,1) {:?}\n", rng.random_range(-1.0f64..1.0));
    }
    for _ in 0..4 {
        let v: f64 = rng.sample(rand_distr::StandardNormal);
        text += &format!("normal {v:?}\n");
    }
    check("seeded_draw.txt", &text);
}

/// Elastic field samples (a 64x48 field, alpha 30, sigma 5): the noise draws, the recursive
/// gaussian and the scaling, to the bit.
#[test]
fn elastic_field_sample_matches_golden() {
    let (w, h) = (64, 48);
    let d = elastic(
        w,
        h,
        30.0,
        5.0,
        &mut rng_for(42, "image001", "elastic_30_5"),
    );
    let mut text = String::new();
    for (x, y) in [(0, 0), (5, 7), (31, 23), (63, 0), (40, 47), (12, 30)] {
        let i = y * w + x;
        text += &format!("({x}, {y}) dx {:?} dy {:?}\n", d.dx[i], d.dy[i]);
    }
    check("elastic_field.txt", &text);
}
