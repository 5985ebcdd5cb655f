//! Training throughput: one optimizer step of `pipeline train` ([`train_step`]: forward with
//! dropout, BCE + soft Dice loss, backward, Adam with gradient value clipping 0.5) on random
//! 512x512 inputs, batch 2: what the reference project's PyTorch timing script measures
//! (docs/training.md, "Throughput"; criterion's warm-up takes the place of its 3 warm-up steps).
//! Throughput is in images.
//!
//! Cases: the CPU-sized preset of every architecture on the CPU (`cpu/<arch>_small`); with a
//! visible CUDA device, also the reference UNet (8 levels, 16 filters) in fp32 and bf16
//! (`cuda/unet_reference_fp32`, `cuda/unet_reference_bf16`). Run one case with a filter:
//! `cargo bench --bench train -- cpu/unet_small`.

use criterion::{
    criterion_group, criterion_main, BenchmarkId, Criterion, SamplingMode, Throughput,
};
use fundus_pipeline::train_config::{Arch, ModelConfig};
use fundus_train::adam::Adam;
use fundus_train::arch;
use fundus_train::device::load_cuda_backend;
use fundus_train::epoch::train_step;
use fundus_train::Model;
use tch::{Device, Kind, Tensor};

const SIZE: i64 = 512;
const BATCH: i64 = 2;

fn bench_case(
    c: &mut Criterion,
    group: &str,
    name: &str,
    cfg: &ModelConfig,
    device: Device,
    kind: Kind,
) {
    tch::manual_seed(0);
    let model = Model::build(cfg, device);
    let mut opt = Adam::new(&model.vs, 7e-5);
    let x = Tensor::rand([BATCH, 3, SIZE, SIZE], (Kind::Float, device));
    let y = Tensor::rand([BATCH, 1, SIZE, SIZE], (Kind::Float, device))
        .gt(0.9)
        .to_kind(Kind::Float);
    let mut g = c.benchmark_group(group);
    g.sampling_mode(SamplingMode::Flat);
    g.sample_size(10);
    g.warm_up_time(std::time::Duration::from_secs(1));
    g.measurement_time(std::time::Duration::from_secs(5));
    g.throughput(Throughput::Elements(BATCH as u64));
    let id = BenchmarkId::new(
        name,
        format!("{SIZE}x{SIZE}_batch{BATCH}_{}params", model.param_count()),
    );
    g.bench_function(id, |b| {
        // train_step reads the loss back, which waits for the device: every step is complete.
        b.iter(|| train_step(&model, &mut opt, &x, &y, kind, 0.5))
    });
    g.finish();
}

fn training_step(c: &mut Criterion) {
    for a in Arch::ALL {
        let cfg = (arch::spec(a).small)();
        bench_case(
            c,
            "cpu",
            &format!("{a}_small"),
            &cfg,
            Device::Cpu,
            Kind::Float,
        );
    }
    if load_cuda_backend().is_ok() && tch::Cuda::is_available() {
        let reference = ModelConfig::default();
        for (kind, what) in [(Kind::Float, "fp32"), (Kind::BFloat16, "bf16")] {
            let name = format!("unet_reference_{what}");
            bench_case(c, "cuda", &name, &reference, Device::Cuda(0), kind);
        }
    }
}

criterion_group!(benches, training_step);
criterion_main!(benches);
