//! Criterion benchmarks of the generator's kernels, one number each so a regression shows:
//! building and applying each variant's operation at 512x512 (one pair: image + mask; the
//! remap, the flips, the exact copy), decoding and squaring a 1500x1152 source, and the PNG (with
//! the adaptive and the avg row filter) and JPEG encoders. Throughput is in pixels of the output
//! (of the source for decode and prepare).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use fundus_pipeline::augment::{plan, shared_operations, Packed, Pair, Variant};
use fundus_pipeline::config::PngFilter;
use fundus_pipeline::config::{LensConfig, VariantsConfig};
use fundus_pipeline::io::{
    decode_image, encode_jpeg_rgb, encode_png_gray, encode_png_rgb, encode_png_rgb_with,
};
use fundus_pipeline::prep::prepare;
use image::{GrayImage, Luma, Rgb, RgbImage};

fn source(w: u32, h: u32) -> (RgbImage, GrayImage) {
    let img = RgbImage::from_fn(w, h, |x, y| {
        Rgb([
            (x * 255 / w) as u8,
            (y * 255 / h) as u8,
            ((x ^ y) & 0xff) as u8,
        ])
    });
    let mask = GrayImage::from_fn(w, h, |x, y| {
        Luma([if (x / 40 + y / 40) % 7 == 0 { 255 } else { 0 }])
    });
    (img, mask)
}

fn variants(c: &mut Criterion) {
    let (img, mask) = source(1500, 1152);
    let pair: Pair = prepare(&img, &mask, 512).unwrap();
    let cfg = VariantsConfig {
        lens: LensConfig {
            chained: true,
            ..Default::default()
        },
        ..Default::default()
    };
    // One of each kind (the fifth chained lens is the costliest lens).
    let mut picked: Vec<Variant> = Vec::new();
    for v in plan(&cfg) {
        let dup = picked.iter().any(|p| p.kind() == v.kind());
        if !dup || v.name() == "barrel_5" {
            picked.retain(|p| !(v.name() == "barrel_5" && p.kind() == "barrel"));
            picked.push(v);
        }
    }
    // Building a variant's map (once per run for deterministic variants, once per source for
    // elastic and distort) and applying it (once per source).
    let mut g = c.benchmark_group("map_build_512");
    g.throughput(Throughput::Elements(512 * 512));
    for v in &picked {
        g.bench_with_input(BenchmarkId::from_parameter(v.name()), v, |b, v| {
            b.iter(|| v.operation(512, 512, 42, "image001"))
        });
    }
    // Every deterministic map of the plan at once, as `generate` builds them per run (chained
    // lens outputs on their shorter chain's coordinates).
    let all = plan(&cfg);
    g.bench_function("shared_operations", |b| {
        b.iter(|| shared_operations(&all, 512, 512))
    });
    g.finish();
    // Applying: to the source packed once, as `generate` does for all the variants of a source.
    let packed = Packed::new(&pair);
    let mut g = c.benchmark_group("map_apply_512");
    g.throughput(Throughput::Elements(512 * 512));
    for v in &picked {
        let op = v.operation(512, 512, 42, "image001");
        g.bench_with_input(BenchmarkId::from_parameter(v.name()), v, |b, _| {
            b.iter(|| op.apply_packed(&packed).into_owned())
        });
    }
    g.bench_function("pack_source", |b| b.iter(|| Packed::new(&pair)));
    g.finish();

    let mut g = c.benchmark_group("prepare");
    g.throughput(Throughput::Elements(1500 * 1152));
    let png = encode_png_rgb(&img).unwrap();
    g.bench_function("decode_png_1500x1152", |b| {
        b.iter(|| decode_image(std::path::Path::new("source.png"), &png).unwrap())
    });
    g.bench_function("square_1500x1152_to_512", |b| {
        b.iter(|| prepare(&img, &mask, 512).unwrap())
    });
    g.finish();

    let mut g = c.benchmark_group("encode_512");
    g.throughput(Throughput::Elements(512 * 512));
    g.bench_function("png_rgb_fast", |b| {
        b.iter(|| encode_png_rgb(&pair.image).unwrap())
    });
    g.bench_function("png_rgb_fast_avg_filter", |b| {
        b.iter(|| encode_png_rgb_with(&pair.image, PngFilter::Avg).unwrap())
    });
    g.bench_function("png_mask_fast", |b| {
        b.iter(|| encode_png_gray(&pair.mask).unwrap())
    });
    // libjpeg-turbo: 4:4:4 chroma at q95, 4:2:0 at q80 (encode_jpeg_rgb's rule).
    g.bench_function("jpeg_rgb_q95", |b| {
        b.iter(|| encode_jpeg_rgb(&pair.image, 95).unwrap())
    });
    g.bench_function("jpeg_rgb_q80", |b| {
        b.iter(|| encode_jpeg_rgb(&pair.image, 80).unwrap())
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).warm_up_time(std::time::Duration::from_millis(500)).measurement_time(std::time::Duration::from_secs(2));
    targets = variants
}
criterion_main!(benches);
