//! `multiresunet`: MultiResUNet (Ibtehaz & Rahman 2020, "MultiResUNet: Rethinking the U-Net
//! architecture for multimodal biomedical image segmentation", Neural Networks 121). Each UNet
//! conv pair becomes a MultiRes block: with W = alpha U, three chained 3x3 conv-BN-ReLU of
//! int(0.167 W), int(0.333 W), int(0.5 W) filters (a factorised 3x3 / 5x5 / 7x7), concatenated
//! and batch-normalised, plus a 1x1 conv-BN shortcut, then ReLU and a batch norm. Each skip is a
//! Res path of (levels - 1 - i) steps of [3x3 conv-BN-ReLU + 1x1 conv-BN shortcut, ReLU, BN] with
//! U filters. Decoder: 2x2 transposed convolution to U, concatenation with the Res path, a
//! MultiRes block; head: 1x1 conv-BN to one channel (logits). Layer order as the authors' Keras
//! code (the paper's reference implementation).
//!
//! Tensor names and shapes follow the authors' PyTorch port (nibtehaz/MultiResUNet,
//! `pytorch/MultiResUNet.py`): `multiresblock1.conv_3x3.conv1.weight`,
//! `multiresblock1.shortcut.batchnorm.running_var`, `multiresblock1.batch_norm1.weight`,
//! `respath1.shortcuts.0.conv1.weight`, `respath1.convs.3.batchnorm.bias`, `respath1.bns.0.weight`,
//! `upsample6.weight`, `conv_final.conv1.weight`. Where the port differs from the Keras code and
//! the paper (Res path widths of the block output instead of U, two output classes) this file
//! follows the paper; see docs/training.md#the-model.

use tch::nn::{ModuleT, Path};
use tch::{Kind, Tensor};

use super::layers::{bn_params, pool, up2_params, BatchNorm, ConvBn, ConvSpec, Up2};
use super::ArchSpec;
use crate::model::SegNet;
use fundus_pipeline::train_config::{Arch, ModelConfig, MultiResUnetConfig};

/// The registry entry of `multiresunet`.
pub const SPEC: ArchSpec = ArchSpec {
    arch: Arch::MultiResUnet,
    paper: "Ibtehaz & Rahman 2020, MultiResUNet",
    build,
    param_count,
    small,
};

fn build(root: &Path, cfg: &ModelConfig) -> Box<dyn SegNet> {
    Box::new(MultiResUnet::new(root, &cfg.multiresunet))
}

/// CPU preset: 4 levels, U = 8.
fn small() -> ModelConfig {
    ModelConfig {
        arch: Arch::MultiResUnet,
        multiresunet: MultiResUnetConfig {
            levels: 4,
            base_filters: 8,
            alpha: 1.67,
        },
        ..ModelConfig::default()
    }
}

/// Filters of the three chained convolutions of a MultiRes block for U = `u`.
fn split(u: i64, alpha: f64) -> [i64; 3] {
    let w = alpha * u as f64;
    [(w * 0.167) as i64, (w * 0.333) as i64, (w * 0.5) as i64]
}

/// `Conv2d_batchnorm` of the port: conv (`conv1`) and batch norm (`batchnorm`).
fn conv_bn(p: &Path, cin: i64, cout: i64, k: i64, relu: bool) -> ConvBn {
    ConvBn::new(
        p / "conv1",
        p / "batchnorm",
        ConvSpec::new(cin, cout, k),
        relu,
    )
}

fn conv_bn_params(cin: i64, cout: i64, k: i64) -> u64 {
    ConvSpec::new(cin, cout, k).params_with_bn()
}

#[derive(Debug)]
struct MultiResBlock {
    shortcut: ConvBn,
    convs: [ConvBn; 3],
    bn1: BatchNorm,
    bn2: BatchNorm,
}

impl MultiResBlock {
    fn new(p: Path, cin: i64, u: i64, alpha: f64) -> Self {
        let [a, b, c] = split(u, alpha);
        let out = a + b + c;
        Self {
            shortcut: conv_bn(&(&p / "shortcut"), cin, out, 1, false),
            convs: [
                conv_bn(&(&p / "conv_3x3"), cin, a, 3, true),
                conv_bn(&(&p / "conv_5x5"), a, b, 3, true),
                conv_bn(&(&p / "conv_7x7"), b, c, 3, true),
            ],
            bn1: BatchNorm::new(&p / "batch_norm1", out),
            bn2: BatchNorm::new(&p / "batch_norm2", out),
        }
    }

    fn params(cin: i64, u: i64, alpha: f64) -> u64 {
        let [a, b, c] = split(u, alpha);
        let out = a + b + c;
        conv_bn_params(cin, out, 1)
            + conv_bn_params(cin, a, 3)
            + conv_bn_params(a, b, 3)
            + conv_bn_params(b, c, 3)
            + 2 * bn_params(out as u64)
    }

    fn forward(&self, x: &Tensor, train: bool, kind: Kind) -> Tensor {
        let sc = self.shortcut.forward(x, train, kind);
        let a = self.convs[0].forward(x, train, kind);
        let b = self.convs[1].forward(&a, train, kind);
        let c = self.convs[2].forward(&b, train, kind);
        let out = self.bn1.forward(&Tensor::cat(&[a, b, c], 1), train);
        self.bn2.forward(&(out + sc).relu(), train)
    }
}

#[derive(Debug)]
struct ResPath {
    shortcuts: Vec<ConvBn>,
    convs: Vec<ConvBn>,
    bns: Vec<BatchNorm>,
}

impl ResPath {
    fn new(p: Path, cin: i64, f: i64, length: usize) -> Self {
        let mut c = cin;
        let (mut shortcuts, mut convs, mut bns) = (Vec::new(), Vec::new(), Vec::new());
        for i in 0..length {
            shortcuts.push(conv_bn(&(&p / "shortcuts" / i), c, f, 1, false));
            convs.push(conv_bn(&(&p / "convs" / i), c, f, 3, true));
            bns.push(BatchNorm::new(&p / "bns" / i, f));
            c = f;
        }
        Self {
            shortcuts,
            convs,
            bns,
        }
    }

    fn params(cin: i64, f: i64, length: usize) -> u64 {
        (0..length)
            .map(|i| {
                let c = if i == 0 { cin } else { f };
                conv_bn_params(c, f, 1) + conv_bn_params(c, f, 3) + bn_params(f as u64)
            })
            .sum()
    }

    fn forward(&self, x: &Tensor, train: bool, kind: Kind) -> Tensor {
        let mut x = x.shallow_clone();
        for ((sc, conv), bn) in self.shortcuts.iter().zip(&self.convs).zip(&self.bns) {
            let s = sc.forward(&x, train, kind);
            x = bn.forward(&(conv.forward(&x, train, kind) + s).relu(), train);
        }
        x
    }
}

/// The widths: U of each level and the output channels of its MultiRes block.
fn widths(c: &MultiResUnetConfig) -> (Vec<i64>, Vec<i64>) {
    let u: Vec<i64> = (0..c.levels)
        .map(|i| (c.base_filters << i) as i64)
        .collect();
    let out = u.iter().map(|&u| split(u, c.alpha).iter().sum()).collect();
    (u, out)
}

/// The network. `forward` returns logits.
#[derive(Debug)]
pub struct MultiResUnet {
    enc: Vec<MultiResBlock>,
    paths: Vec<ResPath>,
    up: Vec<Up2>,
    dec: Vec<MultiResBlock>,
    head: ConvBn,
}

impl MultiResUnet {
    /// Creates the variables under `root` (initial weights from libtorch's global generator).
    pub fn new(root: &Path, c: &MultiResUnetConfig) -> Self {
        let l = c.levels;
        let (u, out) = widths(c);
        let mut cin = 3;
        let mut enc = Vec::new();
        for i in 0..l {
            enc.push(MultiResBlock::new(
                root / format!("multiresblock{}", i + 1),
                cin,
                u[i],
                c.alpha,
            ));
            cin = out[i];
        }
        let paths = (0..l - 1)
            .map(|i| ResPath::new(root / format!("respath{}", i + 1), out[i], u[i], l - 1 - i))
            .collect();
        let (mut up, mut dec) = (Vec::new(), Vec::new());
        for i in (0..l - 1).rev() {
            let k = 2 * l - 1 - i;
            up.push(Up2::new(root / format!("upsample{k}"), cin, u[i]));
            dec.push(MultiResBlock::new(
                root / format!("multiresblock{k}"),
                2 * u[i],
                u[i],
                c.alpha,
            ));
            cin = out[i];
        }
        let head = conv_bn(&(root / "conv_final"), cin, 1, 1, false);
        Self {
            enc,
            paths,
            up,
            dec,
            head,
        }
    }

    /// `x` [N, 3, H, W], H and W divisible by 2^(levels-1) -> fp32 logits [N, 1, H, W].
    pub fn forward(&self, x: &Tensor, train: bool, kind: Kind) -> Tensor {
        let mut x = x.to_kind(kind);
        let mut skips = Vec::new();
        for (i, blk) in self.enc.iter().enumerate() {
            if i > 0 {
                x = pool(&x, 2);
            }
            x = blk.forward(&x, train, kind);
            if let Some(path) = self.paths.get(i) {
                skips.push(path.forward(&x, train, kind));
            }
        }
        for (up, dec) in self.up.iter().zip(&self.dec) {
            let skip = skips.pop().expect("one Res path per level");
            x = dec.forward(&Tensor::cat(&[up.forward(&x, kind), skip], 1), train, kind);
        }
        self.head.forward(&x, train, kind).to_kind(Kind::Float)
    }
}

impl SegNet for MultiResUnet {
    fn forward_kind(&self, x: &Tensor, train: bool, kind: Kind) -> Tensor {
        self.forward(x, train, kind)
    }
}

impl ModuleT for MultiResUnet {
    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        self.forward(x, train, Kind::Float)
    }
}

/// Trainable parameters: MultiRes blocks (encoder and decoder), Res paths, transposed
/// convolutions, and the 1x1 conv-BN head.
pub fn param_count(cfg: &ModelConfig) -> u64 {
    let c = &cfg.multiresunet;
    let l = c.levels;
    let (u, out) = widths(c);
    let mut n = 0;
    let mut cin = 3;
    for i in 0..l {
        n += MultiResBlock::params(cin, u[i], c.alpha);
        cin = out[i];
    }
    for i in 0..l - 1 {
        n += ResPath::params(out[i], u[i], l - 1 - i);
    }
    for i in (0..l - 1).rev() {
        n += up2_params(cin as u64, u[i] as u64);
        n += MultiResBlock::params(2 * u[i], u[i], c.alpha);
        cin = out[i];
    }
    n + conv_bn_params(cin, 1, 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::layers::trainable;
    use crate::model::Model;

    #[test]
    fn parameter_count_matches_the_built_network_and_the_shape_is_kept() {
        for (levels, base_filters) in [(5, 32), (3, 8)] {
            let mut cfg = small();
            cfg.multiresunet.levels = levels;
            cfg.multiresunet.base_filters = base_filters;
            let model = Model::build(&cfg, tch::Device::Cpu);
            assert_eq!(trainable(&model.vs), param_count(&cfg), "{cfg:?}");
        }
        // An independent count of the default (docs/training.md).
        let d = ModelConfig {
            arch: Arch::MultiResUnet,
            ..ModelConfig::default()
        };
        assert_eq!(param_count(&d), 7_251_322);
        // The paper's widths: U = 32 -> 8 + 17 + 26 = 51 filters, U = 512 -> 142 + 284 + 427.
        assert_eq!(split(32, 1.67), [8, 17, 26]);
        assert_eq!(split(512, 1.67), [142, 284, 427]);

        let mut cfg = small();
        cfg.multiresunet.levels = 3;
        let model = Model::build(&cfg, tch::Device::Cpu);
        let x = Tensor::rand([2, 3, 32, 32], (Kind::Float, tch::Device::Cpu));
        assert_eq!(model.forward(&x, true, Kind::Float).size(), [2, 1, 32, 32]);
        assert_eq!(model.forward(&x, false, Kind::Float).size(), [2, 1, 32, 32]);
        let names: Vec<String> = model.vs.variables().into_keys().collect();
        for n in [
            "multiresblock1.conv_3x3.conv1.weight",
            "multiresblock1.shortcut.batchnorm.running_var",
            "multiresblock2.batch_norm1.weight",
            "multiresblock5.batch_norm2.bias",
            "respath1.shortcuts.1.conv1.weight",
            "respath1.convs.0.batchnorm.bias",
            "respath2.bns.0.weight",
            "upsample4.weight",
            "upsample5.bias",
            "conv_final.conv1.weight",
        ] {
            assert!(names.iter().any(|x| x == n), "{n} not in {names:?}");
        }
    }
}
