//! Alignment and identity properties of every variant.

use super::*;
use crate::config::{ElasticParams, LensConfig, VariantsConfig};
use image::{GrayImage, Luma, Rgb, RgbImage};

/// A synthetic pair whose red channel is 255 exactly where the mask is set: a few blobs and bars of
/// different sizes, so every warp has boundaries to move.
fn marked_pair(n: u32) -> Pair {
    let inside = |x: u32, y: u32| {
        let (xf, yf) = (x as f64, y as f64);
        let n = n as f64;
        let blob = |cx: f64, cy: f64, r: f64| (xf - cx).powi(2) + (yf - cy).powi(2) < r * r;
        blob(0.3 * n, 0.3 * n, 0.08 * n)
            || blob(0.7 * n, 0.35 * n, 0.05 * n)
            || blob(0.5 * n, 0.5 * n, 0.1 * n)
            || blob(0.25 * n, 0.72 * n, 0.06 * n)
            || (xf > 0.6 * n && xf < 0.9 * n && yf > 0.7 * n && yf < 0.78 * n)
    };
    let image = RgbImage::from_fn(n, n, |x, y| {
        Rgb([if inside(x, y) { 255 } else { 0 }, (x % 200) as u8, 60])
    });
    let mask = GrayImage::from_fn(n, n, |x, y| Luma([if inside(x, y) { 255 } else { 0 }]));
    Pair {
        image,
        mask,
        fill: Rgb([0, 0, 0]),
    }
}

fn agreement(p: &Pair) -> f64 {
    let same = p
        .image
        .pixels()
        .zip(p.mask.pixels())
        .filter(|(px, m)| (px[0] > 127) == (m[0] == 255))
        .count();
    same as f64 / (p.mask.width() * p.mask.height()) as f64
}

fn all_variants() -> Vec<Variant> {
    let mut cfg = VariantsConfig {
        rotate: vec![20.0, 45.0, 90.0, 180.0, 340.0],
        shrink: vec![0.5, 0.8],
        shear_x: vec![0.1, -0.3],
        shear_y: vec![0.1, -0.3],
        ..Default::default()
    };
    let mut v = plan(&cfg);
    cfg.lens.chained = true;
    v.extend(
        plan(&cfg)
            .into_iter()
            .filter(|v| matches!(v, Variant::Lens(_))),
    );
    v
}

#[test]
fn every_variant_keeps_image_and_mask_aligned() {
    let src = marked_pair(256);
    for v in all_variants() {
        let out = v.apply(&src, 7, "image001");
        assert!(out.mask.pixels().all(|m| m[0] == 0 || m[0] == 255));
        let a = agreement(&out);
        assert!(
            a >= 0.99,
            "{}: mask == (red > 127) on only {:.4}",
            v.name(),
            a
        );
        let fg = out.mask.pixels().filter(|m| m[0] == 255).count();
        assert!(fg > 1000, "{} lost the lesions ({fg} px)", v.name());
    }
}

#[test]
fn zero_strength_variants_are_the_identity() {
    let src = marked_pair(128);
    let lens = |pincushion| {
        Variant::Lens(LensVariant {
            index: 1,
            pincushion,
            amount: 0.0,
            radius: 0.3,
            centres: vec![[0.5, 0.5]],
        })
    };
    for v in [
        Variant::Rotate(0.0),
        Variant::Shrink(1.0),
        Variant::ShearX(0.0),
        Variant::ShearY(0.0),
        Variant::Elastic {
            alpha: 0.0,
            sigma: 8.0,
        },
        Variant::Distort {
            amount: 0.0,
            sigma: 40.0,
        },
        lens(false),
        lens(true),
    ] {
        assert_eq!(v.apply(&src, 1, "s"), src, "{}", v.name());
    }
}

#[test]
fn flipping_twice_is_the_identity() {
    let src = marked_pair(64);
    for v in [Variant::HFlip, Variant::VFlip] {
        assert_eq!(v.apply(&v.apply(&src, 0, "s"), 0, "s"), src);
    }
}

#[test]
fn rotating_by_90_moves_a_right_blob_to_the_top() {
    // A single bright pixel-block right of the centre ends up above it (counter-clockwise).
    let n = 65;
    let image = RgbImage::from_fn(n, n, |x, y| {
        Rgb([
            if (48..52).contains(&x) && (30..34).contains(&y) {
                255
            } else {
                0
            },
            0,
            0,
        ])
    });
    let mask = GrayImage::new(n, n);
    let src = Pair {
        image,
        mask,
        fill: Rgb([0, 0, 0]),
    };
    let out = Variant::Rotate(90.0).apply(&src, 0, "s");
    let (mut sx, mut sy, mut k) = (0.0, 0.0, 0.0);
    for (x, y, p) in out.image.enumerate_pixels() {
        if p[0] > 127 {
            sx += x as f64;
            sy += y as f64;
            k += 1.0;
        }
    }
    let (cx, cy) = (sx / k, sy / k);
    assert!(
        (cx - 31.5).abs() < 1.0 && (cy - 14.5).abs() < 1.0,
        "{cx} {cy}"
    );
}

#[test]
fn random_variants_depend_on_seed_and_stem_only() {
    let src = marked_pair(96);
    let v = Variant::Elastic {
        alpha: 300.0,
        sigma: 6.0,
    };
    let a = v.apply(&src, 1, "image001");
    assert_eq!(a, v.apply(&src, 1, "image001"));
    assert_ne!(a, v.apply(&src, 2, "image001"));
    assert_ne!(a, v.apply(&src, 1, "image002"));
}

#[test]
fn default_plan_names_are_unique_and_reference_plan_has_33() {
    let d = plan(&VariantsConfig::default());
    assert_eq!(d[0], Variant::Orig);
    assert_eq!(d.len(), 1 + 2 + 17 + 1 + 2 + 1 + 2 + 10);
    let reference = VariantsConfig {
        shrink: vec![],
        shear_x: vec![],
        shear_y: vec![],
        elastic: vec![ElasticParams::default()],
        lens: LensConfig {
            chained: true,
            ..Default::default()
        },
        ..Default::default()
    };
    let r = plan(&reference);
    assert_eq!(r.len(), 33);
    let names: Vec<String> = r.iter().map(Variant::name).collect();
    assert!(names.contains(&"rotate_20".to_string()));
    assert!(names.contains(&"elastic_1300_8".to_string()));
    assert!(names.contains(&"pincushion_5".to_string()));
    assert!(names.contains(&"distort_0.03".to_string()));
}

proptest::proptest! {
    // A fixed seed: the cases are the same on every run and machine (no flaky CI).
    #![proptest_config(proptest::prelude::ProptestConfig {
        cases: 24,
        rng_seed: proptest::test_runner::RngSeed::Fixed(42),
        failure_persistence: None,
        ..proptest::prelude::ProptestConfig::default()
    })]

    /// Any affine variant in range keeps the pair aligned and the mask binary.
    #[test]
    fn affine_variants_keep_alignment(
        angle in -180.0f64..180.0,
        shear in -0.4f64..0.4,
        ratio in 0.5f64..1.0,
    ) {
        let src = marked_pair(128);
        for v in [Variant::Rotate(angle), Variant::ShearX(shear), Variant::ShearY(shear), Variant::Shrink(ratio)] {
            let out = v.apply(&src, 1, "p");
            proptest::prop_assert!(out.mask.pixels().all(|m| m[0] == 0 || m[0] == 255));
            let a = agreement(&out);
            proptest::prop_assert!(a >= 0.98, "{}: agreement {}", v.name(), a);
        }
    }

    /// Random variants are a function of (seed, stem): the same inputs give the same pair.
    #[test]
    fn random_variants_are_reproducible(seed in 0u64..1000, alpha in 0.0f64..200.0) {
        let src = marked_pair(48);
        let v = Variant::Elastic { alpha, sigma: 5.0 };
        proptest::prop_assert_eq!(v.apply(&src, seed, "s"), v.apply(&src, seed, "s"));
    }
}

#[test]
fn shared_operations_are_the_variants_own() {
    // Chained and single discs, both kinds, with the other deterministic variants beside them
    // and the random ones left out; a size that is not square.
    for chained in [true, false] {
        let cfg = VariantsConfig {
            lens: LensConfig {
                chained,
                ..Default::default()
            },
            ..Default::default()
        };
        let variants = plan(&cfg);
        let (w, h) = (96, 80);
        let shared = shared_operations(&variants, w, h);
        let deterministic: Vec<&Variant> = variants.iter().filter(|v| !v.is_random()).collect();
        assert_eq!(shared.len(), deterministic.len(), "chained {chained}");
        assert!(deterministic.iter().any(|v| v.kind() == "pincushion"));
        for v in deterministic {
            let own = v.operation(w, h, 0, "");
            assert!(shared[&v.name()] == own, "{} (chained {chained})", v.name());
        }
    }
}
