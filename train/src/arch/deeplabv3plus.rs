//! `deeplabv3plus`: DeepLabV3+ (Chen et al. 2018, "Encoder-Decoder with Atrous Separable
//! Convolution for Semantic Image Segmentation") on a ResNet encoder (He et al. 2016, bottleneck
//! blocks, the stride on the 3x3 convolution) made atrous (Chen et al. 2017, DeepLabv3): at
//! output stride 16 the last stage keeps stride 1 with rate 2 and Multi-Grid (1, 2, 4), so its
//! rates are 2, 4, 8; at output stride 8 the third stage has rate 2 and the last 4 x (1, 2, 4).
//! ASPP: a 1x1 branch, three 3x3 branches at rates 6, 12, 18 (12, 24, 36 at stride 8) and an
//! image-pooling branch, each conv-BN-ReLU to 4 x `base_filters` (256), concatenated, 1x1
//! conv-BN-ReLU, dropout 0.5. Decoder (the v3+ part): the stride-4 features (ResNet stage 1)
//! through a 1x1 conv-BN-ReLU to 48 (3/4 x `base_filters`), the ASPP output upsampled
//! bilinearly x4 and concatenated with them, two 3x3 conv-BN-ReLU (dropout 0.5, 0.1), a 1x1
//! head, bilinear x4 to the input size. Sized for 512x512 fundus input: ASPP sees 32x32 maps
//! at output stride 16. Trained from scratch (He's normal init, fan-out), no ImageNet weights.
//!
//! With one image in a training batch the image-pooling branch has a single value per channel,
//! which batch statistics cannot normalise; its batch norm then uses the running statistics
//! (PyTorch would stop with an error).
//!
//! Tensor names follow torchvision's ResNet for the encoder under `backbone.`
//! (`backbone.conv1.weight`, `backbone.layer1.0.downsample.0.weight`,
//! `backbone.layer4.2.bn3.running_var`) and jfzhang95/pytorch-deeplab-xception for the head
//! (`aspp.aspp1.atrous_conv.weight`, `aspp.global_avg_pool.1.weight`, `aspp.conv1.weight`,
//! `decoder.conv1.weight`, `decoder.last_conv.8.weight`).

use tch::nn::{ModuleT, Path};
use tch::{Kind, Tensor};

use super::layers::{bn_params, conv_params, resize, BatchNorm, Conv};
use super::ArchSpec;
use crate::model::SegNet;
use fundus_pipeline::train_config::{Arch, DeepLabV3PlusConfig, ModelConfig};

/// The registry entry of `deeplabv3plus`.
pub const SPEC: ArchSpec = ArchSpec {
    arch: Arch::DeepLabV3Plus,
    paper: "Chen et al. 2018, DeepLabV3+ (ResNet encoder, atrous, ASPP)",
    build,
    param_count,
    small,
};

fn build(root: &Path, cfg: &ModelConfig) -> Box<dyn SegNet> {
    Box::new(DeepLabV3Plus::new(root, &cfg.deeplabv3plus))
}

/// CPU preset: ResNet-50, output stride 16, stem width 8 (ASPP 32 channels).
fn small() -> ModelConfig {
    ModelConfig {
        arch: Arch::DeepLabV3Plus,
        deeplabv3plus: DeepLabV3PlusConfig {
            resnet_depth: 50,
            output_stride: 16,
            base_filters: 8,
        },
        ..ModelConfig::default()
    }
}

/// Bottleneck expansion (He et al. 2016).
const EXPANSION: i64 = 4;

/// The stride and the atrous rates of each block of each stage.
fn stage_plan(c: &DeepLabV3PlusConfig) -> [(i64, Vec<i64>); 4] {
    let blocks = c.blocks();
    let plain = |n: usize, rate: i64| vec![rate; n];
    let grid = |n: usize, rate: i64| (0..n).map(|i| rate * [1, 2, 4][i % 3]).collect();
    if c.output_stride == 8 {
        [
            (1, plain(blocks[0], 1)),
            (2, plain(blocks[1], 1)),
            (1, plain(blocks[2], 2)),
            (1, grid(blocks[3], 4)),
        ]
    } else {
        [
            (1, plain(blocks[0], 1)),
            (2, plain(blocks[1], 1)),
            (2, plain(blocks[2], 1)),
            (1, grid(blocks[3], 2)),
        ]
    }
}

/// ASPP rates of the three 3x3 branches.
fn aspp_rates(c: &DeepLabV3PlusConfig) -> [i64; 3] {
    if c.output_stride == 8 {
        [12, 24, 36]
    } else {
        [6, 12, 18]
    }
}

/// Widths: stem, ASPP, decoder low-level channels.
fn widths(c: &DeepLabV3PlusConfig) -> (i64, i64, i64) {
    let b = c.base_filters as i64;
    (b, 4 * b, (3 * b / 4).max(1))
}

fn conv(p: Path, cin: i64, cout: i64, k: i64, stride: i64, rate: i64) -> Conv {
    Conv::with(p, cin, cout, k, stride, rate, false).he_fan_out()
}

#[derive(Debug)]
struct Bottleneck {
    c1: (Conv, BatchNorm),
    c2: (Conv, BatchNorm),
    c3: (Conv, BatchNorm),
    down: Option<(Conv, BatchNorm)>,
}

impl Bottleneck {
    fn new(p: Path, cin: i64, planes: i64, stride: i64, rate: i64) -> Self {
        let out = planes * EXPANSION;
        Self {
            c1: (
                conv(&p / "conv1", cin, planes, 1, 1, 1),
                BatchNorm::new(&p / "bn1", planes),
            ),
            c2: (
                conv(&p / "conv2", planes, planes, 3, stride, rate),
                BatchNorm::new(&p / "bn2", planes),
            ),
            c3: (
                conv(&p / "conv3", planes, out, 1, 1, 1),
                BatchNorm::new(&p / "bn3", out),
            ),
            down: (stride != 1 || cin != out).then(|| {
                (
                    conv(&p / "downsample" / "0", cin, out, 1, stride, 1),
                    BatchNorm::new(&p / "downsample" / "1", out),
                )
            }),
        }
    }

    fn params(cin: i64, planes: i64) -> u64 {
        let (cin, p, out) = (cin as u64, planes as u64, (planes * EXPANSION) as u64);
        let mut n = conv_params(cin, p, 1, false) + conv_params(p, p, 3, false);
        n += conv_params(p, out, 1, false) + bn_params(p) * 2 + bn_params(out);
        n
    }

    fn forward(&self, x: &Tensor, train: bool, kind: Kind) -> Tensor {
        let cbr = |(c, b): &(Conv, BatchNorm), x: &Tensor| b.forward(&c.forward(x, kind), train);
        let y = cbr(&self.c1, x).relu();
        let y = cbr(&self.c2, &y).relu();
        let y = cbr(&self.c3, &y);
        let id = match &self.down {
            Some(d) => cbr(d, x),
            None => x.shallow_clone(),
        };
        (y + id).relu()
    }
}

/// The network. `forward` returns logits.
#[derive(Debug)]
pub struct DeepLabV3Plus {
    stem: (Conv, BatchNorm),
    stages: Vec<Vec<Bottleneck>>,
    aspp: Vec<(Conv, BatchNorm)>,
    pool_branch: (Conv, BatchNorm),
    project: (Conv, BatchNorm),
    low: (Conv, BatchNorm),
    last: [(Conv, BatchNorm); 2],
    head: Conv,
}

impl DeepLabV3Plus {
    /// Creates the variables under `root` (initial weights from libtorch's global generator).
    pub fn new(root: &Path, c: &DeepLabV3PlusConfig) -> Self {
        let (b, a, l48) = widths(c);
        let bb = root / "backbone";
        let stem = (
            conv(&bb / "conv1", 3, b, 7, 2, 1),
            BatchNorm::new(&bb / "bn1", b),
        );
        let mut cin = b;
        let stages = stage_plan(c)
            .into_iter()
            .enumerate()
            .map(|(s, (stride, rates))| {
                let planes = b << s;
                rates
                    .iter()
                    .enumerate()
                    .map(|(k, &rate)| {
                        let st = if k == 0 { stride } else { 1 };
                        let p = &bb / format!("layer{}", s + 1) / k;
                        let blk = Bottleneck::new(p, cin, planes, st, rate);
                        cin = planes * EXPANSION;
                        blk
                    })
                    .collect()
            })
            .collect();
        let top = cin;
        let ap = root / "aspp";
        let mut aspp = vec![(
            conv(&ap / "aspp1" / "atrous_conv", top, a, 1, 1, 1),
            BatchNorm::new(&ap / "aspp1" / "bn", a),
        )];
        for (i, &r) in aspp_rates(c).iter().enumerate() {
            let q = &ap / format!("aspp{}", i + 2);
            aspp.push((
                conv(&q / "atrous_conv", top, a, 3, 1, r),
                BatchNorm::new(&q / "bn", a),
            ));
        }
        let gp = &ap / "global_avg_pool";
        let pool_branch = (
            conv(&gp / "1", top, a, 1, 1, 1),
            BatchNorm::new(&gp / "2", a),
        );
        let project = (
            conv(&ap / "conv1", 5 * a, a, 1, 1, 1),
            BatchNorm::new(&ap / "bn1", a),
        );
        let dp = root / "decoder";
        let low = (
            conv(&dp / "conv1", b * EXPANSION, l48, 1, 1, 1),
            BatchNorm::new(&dp / "bn1", l48),
        );
        let lc = &dp / "last_conv";
        let last = [
            (
                conv(&lc / "0", a + l48, a, 3, 1, 1),
                BatchNorm::new(&lc / "1", a),
            ),
            (conv(&lc / "4", a, a, 3, 1, 1), BatchNorm::new(&lc / "5", a)),
        ];
        let head = Conv::new(&lc / "8", a, 1, 1);
        Self {
            stem,
            stages,
            aspp,
            pool_branch,
            project,
            low,
            last,
            head,
        }
    }

    /// `x` [N, 3, H, W], H and W divisible by the output stride -> fp32 logits [N, 1, H, W].
    pub fn forward(&self, x: &Tensor, train: bool, kind: Kind) -> Tensor {
        let cbr = |(c, b): &(Conv, BatchNorm), x: &Tensor, train: bool| {
            b.forward(&c.forward(x, kind), train).relu()
        };
        let (h, w) = (x.size()[2], x.size()[3]);
        let x = cbr(&self.stem, &x.to_kind(kind), train);
        let mut x = x.max_pool2d([3, 3], [2, 2], [1, 1], [1, 1], false);
        let mut low = None;
        for (s, stage) in self.stages.iter().enumerate() {
            for blk in stage {
                x = blk.forward(&x, train, kind);
            }
            if s == 0 {
                low = Some(x.shallow_clone());
            }
        }
        let (fh, fw) = (x.size()[2], x.size()[3]);
        let mut branches: Vec<Tensor> = self.aspp.iter().map(|u| cbr(u, &x, train)).collect();
        let pooled = x.adaptive_avg_pool2d([1, 1]);
        // One value per channel cannot be batch-normalised: use the running statistics.
        let pool_train = train && pooled.size()[0] > 1;
        branches.push(resize(&cbr(&self.pool_branch, &pooled, pool_train), fh, fw));
        let y = cbr(&self.project, &Tensor::cat(&branches, 1), train).dropout(0.5, train);
        let low = cbr(&self.low, &low.expect("stage 1 ran"), train);
        let y = resize(&y, low.size()[2], low.size()[3]);
        let y = cbr(&self.last[0], &Tensor::cat(&[y, low], 1), train).dropout(0.5, train);
        let y = cbr(&self.last[1], &y, train).dropout(0.1, train);
        resize(&self.head.forward(&y, kind), h, w).to_kind(Kind::Float)
    }
}

impl SegNet for DeepLabV3Plus {
    fn forward_kind(&self, x: &Tensor, train: bool, kind: Kind) -> Tensor {
        self.forward(x, train, kind)
    }
}

impl ModuleT for DeepLabV3Plus {
    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        self.forward(x, train, Kind::Float)
    }
}

/// Trainable parameters: ResNet stem and bottleneck stages (a projection shortcut on each
/// stage's first block), ASPP (five conv-BN units and the 1x1 projection), decoder.
pub fn param_count(cfg: &ModelConfig) -> u64 {
    let c = &cfg.deeplabv3plus;
    let (b, a, l48) = widths(c);
    let cb = |cin: i64, cout: i64, k: u64| {
        conv_params(cin as u64, cout as u64, k, false) + bn_params(cout as u64)
    };
    let mut n = cb(3, b, 7);
    let mut cin = b;
    for (s, (_, rates)) in stage_plan(c).iter().enumerate() {
        let planes = b << s;
        for _ in rates {
            n += Bottleneck::params(cin, planes);
            if cin != planes * EXPANSION {
                n += cb(cin, planes * EXPANSION, 1);
            }
            cin = planes * EXPANSION;
        }
    }
    n += cb(cin, a, 1) + 3 * cb(cin, a, 3) + cb(cin, a, 1) + cb(5 * a, a, 1);
    n += cb(b * EXPANSION, l48, 1) + cb(a + l48, a, 3) + cb(a, a, 3);
    n + conv_params(a as u64, 1, 1, true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::layers::trainable;
    use crate::model::Model;

    #[test]
    fn parameter_count_matches_the_built_network_and_the_shape_is_kept() {
        for (depth, stride, base) in [(50, 16, 8), (101, 8, 4)] {
            let mut cfg = small();
            cfg.deeplabv3plus = DeepLabV3PlusConfig {
                resnet_depth: depth,
                output_stride: stride,
                base_filters: base,
            };
            let model = Model::build(&cfg, tch::Device::Cpu);
            assert_eq!(trainable(&model.vs), param_count(&cfg), "{cfg:?}");
        }
        // The default: torchvision's ResNet-101 (44,549,160) less its 1000-class fc layer
        // (2048 x 1000 + 1000), plus ASPP and decoder counted by hand (docs/training.md).
        let d = ModelConfig {
            arch: Arch::DeepLabV3Plus,
            ..ModelConfig::default()
        };
        let head = 59_339_169 - 42_500_160;
        assert_eq!(param_count(&d), 44_549_160 - 2_049_000 + head);
        let mut cfg = small();
        cfg.deeplabv3plus.base_filters = 4;
        let model = Model::build(&cfg, tch::Device::Cpu);
        // One image per batch in training (the image-pooling branch's special case) and two.
        for n in [1, 2] {
            let x = Tensor::rand([n, 3, 64, 64], (Kind::Float, tch::Device::Cpu));
            assert_eq!(model.forward(&x, true, Kind::Float).size(), [n, 1, 64, 64]);
            assert_eq!(model.forward(&x, false, Kind::Float).size(), [n, 1, 64, 64]);
        }
        let names: Vec<String> = model.vs.variables().into_keys().collect();
        for n in [
            "backbone.conv1.weight",
            "backbone.bn1.running_mean",
            "backbone.layer1.0.downsample.0.weight",
            "backbone.layer3.5.conv2.weight",
            "backbone.layer4.2.bn3.bias",
            "aspp.aspp1.atrous_conv.weight",
            "aspp.aspp4.bn.weight",
            "aspp.global_avg_pool.1.weight",
            "aspp.global_avg_pool.2.running_var",
            "aspp.conv1.weight",
            "aspp.bn1.bias",
            "decoder.conv1.weight",
            "decoder.last_conv.4.weight",
            "decoder.last_conv.8.bias",
        ] {
            assert!(names.iter().any(|x| x == n), "{n} not in {names:?}");
        }
    }
}
