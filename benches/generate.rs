//! End-to-end generation benchmark: the reference preset (33 variants, PNG output) on 24
//! synthetic 1500x1152 sources = 792 pairs per iteration, all cores. Target (issue 2):
//! >= 220 pairs/s on the 2-core development machine. Throughput is reported in pairs.

use std::path::Path;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use fundus_pipeline::config::Config;
use fundus_pipeline::dataset::synth::{write_synthetic, SynthOptions};
use fundus_pipeline::generate::{generate, GenerateOptions};

fn reference_config(data: &Path, out: &Path) -> Config {
    let preset =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("generator-configs/hemorrhages-reference.json");
    let mut cfg = Config::load(&preset).expect("reference preset");
    cfg.data = data.to_path_buf();
    cfg.out = out.to_path_buf();
    cfg
}

fn end_to_end(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let opts = SynthOptions {
        count: 24,
        ..SynthOptions::default()
    };
    write_synthetic(&data, &opts).unwrap();
    let cfg = reference_config(&data, &dir.path().join("out"));
    let run = GenerateOptions {
        force: true,
        ..Default::default()
    };
    let mut g = c.benchmark_group("generate");
    g.sample_size(10);
    g.throughput(Throughput::Elements(24 * 33));
    g.bench_function("reference_preset_24_sources_1500x1152", |b| {
        b.iter(|| {
            let r = generate(&cfg, &run).unwrap();
            assert_eq!(r.pairs, 792);
        })
    });
    g.finish();
}

criterion_group!(benches, end_to_end);
criterion_main!(benches);
