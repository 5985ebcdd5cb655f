//! `attention_unet`: Attention U-Net (Oktay et al. 2018, "Attention U-Net: Learning Where to
//! Look for the Pancreas"). A UNet of conv-BN-ReLU pairs whose skip connections pass through
//! additive attention gates: at each decoder level the gating signal g is the coarser decoder
//! map, the skip x is brought to g's grid by W_x (2x2, stride 2, no bias, the paper's
//! sub-sampled gate), q = psi(ReLU(W_x x + W_g g + b_g)) + b_psi, alpha = sigmoid(q) resampled
//! bilinearly to x's grid, and the decoder receives alpha * x (paper eq. 1-2, Fig. 2).
//!
//! Tensor names follow the common PyTorch implementation (LeeJunHyun/Image_Segmentation's
//! `AttU_Net`): `Conv1.conv.0.weight`, `Up5.up.1.weight`, `Att5.W_g.0.weight`,
//! `Att5.W_x.0.weight`, `Att5.psi.0.weight`, `Up_conv5.conv.3.weight`, `Conv_1x1.weight`. Two
//! differences, both the paper's: `Att*.W_x.0` is 2x2 stride 2 (theirs 1x1 on the fine grid) and
//! the gates have no batch norm (theirs do); see docs/training.md#the-model.

use tch::nn::{ModuleT, Path};
use tch::{Kind, Tensor};

use super::layers::{conv_params, pool, resize, Conv, ConvBn, ConvSpec};
use super::ArchSpec;
use crate::model::SegNet;
use fundus_pipeline::train_config::{Arch, AttentionUnetConfig, ModelConfig};

/// The registry entry of `attention_unet`.
pub const SPEC: ArchSpec = ArchSpec {
    arch: Arch::AttentionUnet,
    paper: "Oktay et al. 2018, Attention U-Net",
    build,
    param_count,
    small,
};

fn build(root: &Path, cfg: &ModelConfig) -> Box<dyn SegNet> {
    Box::new(AttentionUnet::new(root, &cfg.attention_unet))
}

/// CPU preset: 4 levels, 8 base filters.
fn small() -> ModelConfig {
    ModelConfig {
        arch: Arch::AttentionUnet,
        attention_unet: AttentionUnetConfig {
            levels: 4,
            base_filters: 8,
        },
        ..ModelConfig::default()
    }
}

fn widths(c: &AttentionUnetConfig) -> Vec<i64> {
    (0..c.levels)
        .map(|i| (c.base_filters << i) as i64)
        .collect()
}

/// Intermediate channels of the gate on a skip of `f` channels (F_int = F_l / 2).
fn f_int(f: i64) -> i64 {
    (f / 2).max(1)
}

/// conv3x3-BN-ReLU twice (`nn.Sequential` indices 0, 1 and 3, 4).
#[derive(Debug)]
struct DoubleConv(ConvBn, ConvBn);

impl DoubleConv {
    fn new(p: Path, cin: i64, cout: i64) -> Self {
        let q = &p / "conv";
        Self(
            ConvBn::new(&q / "0", &q / "1", ConvSpec::new(cin, cout, 3), true),
            ConvBn::new(&q / "3", &q / "4", ConvSpec::new(cout, cout, 3), true),
        )
    }

    fn forward(&self, x: &Tensor, train: bool, kind: Kind) -> Tensor {
        self.1.forward(&self.0.forward(x, train, kind), train, kind)
    }

    fn params(cin: i64, cout: i64) -> u64 {
        ConvSpec::new(cin, cout, 3).params_with_bn() + ConvSpec::new(cout, cout, 3).params_with_bn()
    }
}

/// The additive attention gate (paper Fig. 2).
#[derive(Debug)]
struct Gate {
    w_x: Conv,
    w_g: Conv,
    psi: Conv,
}

impl Gate {
    /// Skip of `fx` channels, gating signal of `fg` channels.
    fn new(p: Path, fx: i64, fg: i64) -> Self {
        let fi = f_int(fx);
        Self {
            w_x: Conv::with(&p / "W_x" / "0", fx, fi, 2, 2, 1, false),
            w_g: Conv::new(&p / "W_g" / "0", fg, fi, 1),
            psi: Conv::new(&p / "psi" / "0", fi, 1, 1),
        }
    }

    fn params(fx: i64, fg: i64) -> u64 {
        let (fx, fg, fi) = (fx as u64, fg as u64, f_int(fx) as u64);
        conv_params(fx, fi, 2, false) + conv_params(fg, fi, 1, true) + conv_params(fi, 1, 1, true)
    }

    /// The attention coefficients alpha [N, 1, H, W] of skip `x` [N, fx, H, W] under gating
    /// signal `g` [N, fg, H/2, W/2].
    fn alpha(&self, x: &Tensor, g: &Tensor, kind: Kind) -> Tensor {
        let q = (self.w_x.forward(x, kind) + self.w_g.forward(g, kind)).relu();
        let a = self.psi.forward(&q, kind).sigmoid();
        let s = x.size();
        resize(&a, s[2], s[3])
    }
}

/// Nearest 2x upsampling, then conv3x3-BN-ReLU (`up.1`, `up.2`).
#[derive(Debug)]
struct UpConv(ConvBn);

impl UpConv {
    fn new(p: Path, cin: i64, cout: i64) -> Self {
        let q = &p / "up";
        Self(ConvBn::new(
            &q / "1",
            &q / "2",
            ConvSpec::new(cin, cout, 3),
            true,
        ))
    }

    fn forward(&self, x: &Tensor, train: bool, kind: Kind) -> Tensor {
        let s = x.size();
        let up = x.upsample_nearest2d([2 * s[2], 2 * s[3]], None, None);
        self.0.forward(&up, train, kind)
    }
}

/// The network. `forward` returns logits.
#[derive(Debug)]
pub struct AttentionUnet {
    enc: Vec<DoubleConv>,
    up: Vec<UpConv>,
    gate: Vec<Gate>,
    dec: Vec<DoubleConv>,
    head: Conv,
}

impl AttentionUnet {
    /// Creates the variables under `root` (initial weights from libtorch's global generator).
    pub fn new(root: &Path, c: &AttentionUnetConfig) -> Self {
        let ch = widths(c);
        let mut cin = 3;
        let enc = ch
            .iter()
            .enumerate()
            .map(|(i, &f)| {
                let b = DoubleConv::new(root / format!("Conv{}", i + 1), cin, f);
                cin = f;
                b
            })
            .collect();
        let (mut up, mut gate, mut dec) = (Vec::new(), Vec::new(), Vec::new());
        for l in (0..ch.len() - 1).rev() {
            let n = l + 2;
            up.push(UpConv::new(root / format!("Up{n}"), ch[l + 1], ch[l]));
            gate.push(Gate::new(root / format!("Att{n}"), ch[l], ch[l + 1]));
            dec.push(DoubleConv::new(
                root / format!("Up_conv{n}"),
                2 * ch[l],
                ch[l],
            ));
        }
        Self {
            enc,
            up,
            gate,
            dec,
            head: Conv::new(root / "Conv_1x1", ch[0], 1, 1),
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
            skips.push(x.shallow_clone());
        }
        skips.pop();
        let mut d = x;
        for ((up, gate), dec) in self.up.iter().zip(&self.gate).zip(&self.dec) {
            let skip = skips.pop().expect("one skip per level");
            let gated = &skip * gate.alpha(&skip, &d, kind);
            let u = up.forward(&d, train, kind);
            d = dec.forward(&Tensor::cat(&[gated, u], 1), train, kind);
        }
        self.head.forward(&d, kind).to_kind(Kind::Float)
    }
}

impl SegNet for AttentionUnet {
    fn forward_kind(&self, x: &Tensor, train: bool, kind: Kind) -> Tensor {
        self.forward(x, train, kind)
    }
}

impl ModuleT for AttentionUnet {
    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        self.forward(x, train, Kind::Float)
    }
}

/// Trainable parameters: encoder pairs, per decoder level an up-convolution, a gate and a pair,
/// and the 1x1 head (batch norms count weight and bias).
pub fn param_count(cfg: &ModelConfig) -> u64 {
    let ch = widths(&cfg.attention_unet);
    let mut n = 0;
    let mut cin = 3;
    for &f in &ch {
        n += DoubleConv::params(cin, f);
        cin = f;
    }
    for l in 0..ch.len() - 1 {
        n += ConvSpec::new(ch[l + 1], ch[l], 3).params_with_bn();
        n += Gate::params(ch[l], ch[l + 1]);
        n += DoubleConv::params(2 * ch[l], ch[l]);
    }
    n + conv_params(ch[0] as u64, 1, 1, true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::layers::trainable;
    use crate::model::Model;

    #[test]
    fn parameter_count_matches_the_built_network_and_the_shape_is_kept() {
        for (levels, base_filters) in [(5, 64), (3, 4)] {
            let mut cfg = small();
            cfg.attention_unet = AttentionUnetConfig {
                levels,
                base_filters,
            };
            let model = Model::build(&cfg, tch::Device::Cpu);
            assert_eq!(trainable(&model.vs), param_count(&cfg), "{cfg:?}");
        }
        // An independent count of the default (5 levels, 64..1024; docs/training.md).
        let d = ModelConfig {
            arch: Arch::AttentionUnet,
            ..ModelConfig::default()
        };
        assert_eq!(param_count(&d), 35_572_485);

        let mut cfg = small();
        cfg.attention_unet.levels = 3;
        cfg.attention_unet.base_filters = 4;
        let model = Model::build(&cfg, tch::Device::Cpu);
        let x = Tensor::rand([2, 3, 32, 32], (Kind::Float, tch::Device::Cpu));
        assert_eq!(model.forward(&x, true, Kind::Float).size(), [2, 1, 32, 32]);
        assert_eq!(model.forward(&x, false, Kind::Float).size(), [2, 1, 32, 32]);
        let names: Vec<String> = model.vs.variables().into_keys().collect();
        for n in [
            "Conv1.conv.0.weight",
            "Conv3.conv.4.running_var",
            "Up3.up.1.weight",
            "Att2.W_x.0.weight",
            "Att3.W_g.0.bias",
            "Att2.psi.0.weight",
            "Up_conv2.conv.3.weight",
            "Conv_1x1.bias",
        ] {
            assert!(names.iter().any(|x| x == n), "{n} not in {names:?}");
        }
    }
}
