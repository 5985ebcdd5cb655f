//! `unet3plus`: UNet 3+ (Huang et al. 2020, "UNet 3+: A Full-Scale Connected UNet for Medical
//! Image Segmentation"). Encoder of conv-BN-ReLU pairs (64..1024 filters); every decoder level
//! i takes all scales (paper Fig. 2): the finer encoder maps max-pooled down to it, the encoder
//! map of its own level, the coarser decoder maps (and the deepest encoder map) upsampled
//! bilinearly to it, each through a 3x3 conv-BN-ReLU to `base_filters` channels; the
//! `levels` x `base_filters` concatenation is fused by a 3x3 conv-BN-ReLU. Full-scale deep
//! supervision: each decoder level and the deepest encoder level has a 3x3 head to one channel,
//! upsampled bilinearly to the input size. Training takes the loss over every head
//! ([`SegNet::forward_heads`]); inference uses the top one (level 1). The paper's
//! classification-guided module (organ present or not) is not built.
//!
//! Tensor names follow the authors' PyTorch code (ZJUGiveLab/UNet-Version, `UNet_3Plus_DeepSup`),
//! generalised from 5 levels to `levels`: `conv1.conv1.0.weight`, `h1_PT_hd4_conv.weight`,
//! `h4_Cat_hd4_bn.running_mean`, `hd5_UT_hd4_conv.weight`, `conv4d_1.weight`, `bn4d_1.bias`,
//! `outconv1.weight`.

use tch::nn::{ModuleT, Path};
use tch::{Kind, Tensor};

use super::layers::{conv_params, pool, resize, Conv, ConvBn, ConvSpec};
use super::ArchSpec;
use crate::model::SegNet;
use fundus_pipeline::train_config::{Arch, ModelConfig, Unet3PlusConfig};

/// The registry entry of `unet3plus`.
pub const SPEC: ArchSpec = ArchSpec {
    arch: Arch::Unet3Plus,
    paper: "Huang et al. 2020, UNet 3+",
    build,
    param_count,
    small,
};

fn build(root: &Path, cfg: &ModelConfig) -> Box<dyn SegNet> {
    Box::new(Unet3Plus::new(root, &cfg.unet3plus))
}

/// CPU preset: 4 levels, 8 base filters.
fn small() -> ModelConfig {
    ModelConfig {
        arch: Arch::Unet3Plus,
        unet3plus: Unet3PlusConfig {
            levels: 4,
            base_filters: 8,
        },
        ..ModelConfig::default()
    }
}

/// conv3x3-BN-ReLU twice (`unetConv2`: `conv1.0`, `conv1.1`, `conv2.0`, `conv2.1`).
#[derive(Debug)]
struct DoubleConv(ConvBn, ConvBn);

impl DoubleConv {
    fn new(p: Path, cin: i64, cout: i64) -> Self {
        Self(
            ConvBn::new(
                &p / "conv1" / "0",
                &p / "conv1" / "1",
                ConvSpec::new(cin, cout, 3),
                true,
            ),
            ConvBn::new(
                &p / "conv2" / "0",
                &p / "conv2" / "1",
                ConvSpec::new(cout, cout, 3),
                true,
            ),
        )
    }

    fn forward(&self, x: &Tensor, train: bool, kind: Kind) -> Tensor {
        self.1.forward(&self.0.forward(x, train, kind), train, kind)
    }
}

/// One source of a decoder level: where it comes from and its conv-BN-ReLU.
#[derive(Debug)]
struct Source {
    /// 1-based level the map comes from.
    from: usize,
    unit: ConvBn,
}

/// Decoder level i: its `levels` sources and the fusion conv-BN-ReLU.
#[derive(Debug)]
struct Stage {
    sources: Vec<Source>,
    fuse: ConvBn,
}

/// The sizes of the network.
struct Dims {
    levels: usize,
    /// Encoder widths of levels 1..=L.
    ch: Vec<i64>,
    /// Channels of each full-scale skip.
    cat: i64,
}

impl Dims {
    fn of(c: &Unet3PlusConfig) -> Self {
        Self {
            levels: c.levels,
            ch: (0..c.levels)
                .map(|i| (c.base_filters << i) as i64)
                .collect(),
            cat: c.base_filters as i64,
        }
    }

    /// Channels of a decoder level's output (the concatenation, fused).
    fn up(&self) -> i64 {
        self.cat * self.levels as i64
    }

    /// Channels of the map a decoder level i gets from level j (1-based).
    fn source_channels(&self, i: usize, j: usize) -> i64 {
        if j <= i || j == self.levels {
            self.ch[j - 1]
        } else {
            self.up()
        }
    }

    /// The name of the unit that carries level j's map to decoder level i.
    fn source_name(i: usize, j: usize) -> String {
        use std::cmp::Ordering::*;
        match j.cmp(&i) {
            Less => format!("h{j}_PT_hd{i}"),
            Equal => format!("h{i}_Cat_hd{i}"),
            Greater => format!("hd{j}_UT_hd{i}"),
        }
    }

    /// Channels into deep-supervision head i.
    fn head_channels(&self, i: usize) -> i64 {
        if i == self.levels {
            self.ch[i - 1]
        } else {
            self.up()
        }
    }
}

/// The network. `forward` returns the logits of the top head.
#[derive(Debug)]
pub struct Unet3Plus {
    enc: Vec<DoubleConv>,
    /// Decoder levels L-1 down to 1.
    dec: Vec<Stage>,
    /// Heads of levels 1..=L.
    heads: Vec<Conv>,
}

impl Unet3Plus {
    /// Creates the variables under `root` (initial weights from libtorch's global generator).
    pub fn new(root: &Path, c: &Unet3PlusConfig) -> Self {
        let d = Dims::of(c);
        let mut cin = 3;
        let enc =
            d.ch.iter()
                .enumerate()
                .map(|(k, &f)| {
                    let b = DoubleConv::new(root / format!("conv{}", k + 1), cin, f);
                    cin = f;
                    b
                })
                .collect();
        let dec = (1..d.levels)
            .rev()
            .map(|i| Stage {
                sources: (1..=d.levels)
                    .map(|j| {
                        let name = Dims::source_name(i, j);
                        let spec = ConvSpec::new(d.source_channels(i, j), d.cat, 3);
                        Source {
                            from: j,
                            unit: ConvBn::new(
                                root / format!("{name}_conv"),
                                root / format!("{name}_bn"),
                                spec,
                                true,
                            ),
                        }
                    })
                    .collect(),
                fuse: ConvBn::new(
                    root / format!("conv{i}d_1"),
                    root / format!("bn{i}d_1"),
                    ConvSpec::new(d.up(), d.up(), 3),
                    true,
                ),
            })
            .collect();
        let heads = (1..=d.levels)
            .map(|i| Conv::new(root / format!("outconv{i}"), d.head_channels(i), 1, 3))
            .collect();
        Self { enc, dec, heads }
    }

    /// `x` [N, 3, H, W], H and W divisible by 2^(levels-1) -> fp32 logits [N, 1, H, W] of the
    /// top head, or of every head (level 1 first) when `all`.
    fn run(&self, x: &Tensor, train: bool, kind: Kind, all: bool) -> Vec<Tensor> {
        let levels = self.enc.len();
        let (h, w) = (x.size()[2], x.size()[3]);
        let mut x = x.to_kind(kind);
        let mut enc_maps = Vec::with_capacity(levels);
        for (k, blk) in self.enc.iter().enumerate() {
            if k > 0 {
                x = pool(&x, 2);
            }
            x = blk.forward(&x, train, kind);
            enc_maps.push(x.shallow_clone());
        }
        let mut dec_maps: Vec<Option<Tensor>> = (0..levels).map(|_| None).collect();
        dec_maps[levels - 1] = Some(x);
        for (stage, i) in self.dec.iter().zip((1..levels).rev()) {
            let (hi, wi) = (h >> (i - 1), w >> (i - 1));
            let parts: Vec<Tensor> = stage
                .sources
                .iter()
                .map(|s| {
                    let j = s.from;
                    let m = if j < i {
                        pool(&enc_maps[j - 1], 1 << (i - j))
                    } else if j == i {
                        enc_maps[i - 1].shallow_clone()
                    } else {
                        let src = dec_maps[j - 1].as_ref().expect("coarser level decoded");
                        resize(src, hi, wi)
                    };
                    s.unit.forward(&m, train, kind)
                })
                .collect();
            dec_maps[i - 1] = Some(stage.fuse.forward(&Tensor::cat(&parts, 1), train, kind));
        }
        let n_heads = if all { levels } else { 1 };
        (0..n_heads)
            .map(|k| {
                let m = dec_maps[k].as_ref().expect("every level decoded");
                let y = self.heads[k].forward(m, kind);
                resize(&y, h, w).to_kind(Kind::Float)
            })
            .collect()
    }
}

impl SegNet for Unet3Plus {
    fn forward_kind(&self, x: &Tensor, train: bool, kind: Kind) -> Tensor {
        self.run(x, train, kind, false).remove(0)
    }

    fn forward_heads(&self, x: &Tensor, train: bool, kind: Kind) -> Vec<Tensor> {
        self.run(x, train, kind, true)
    }
}

impl ModuleT for Unet3Plus {
    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        self.forward_kind(x, train, Kind::Float)
    }
}

/// Trainable parameters: encoder pairs; per decoder level `levels` 3x3 conv-BN units to
/// `base_filters` and the fusion conv-BN; `levels` 3x3 heads to one channel.
pub fn param_count(cfg: &ModelConfig) -> u64 {
    let d = Dims::of(&cfg.unet3plus);
    let mut n = 0;
    let mut cin = 3;
    for &f in &d.ch {
        n += ConvSpec::new(cin, f, 3).params_with_bn() + ConvSpec::new(f, f, 3).params_with_bn();
        cin = f;
    }
    for i in 1..d.levels {
        for j in 1..=d.levels {
            n += ConvSpec::new(d.source_channels(i, j), d.cat, 3).params_with_bn();
        }
        n += ConvSpec::new(d.up(), d.up(), 3).params_with_bn();
    }
    for i in 1..=d.levels {
        n += conv_params(d.head_channels(i) as u64, 1, 3, true);
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::layers::trainable;
    use crate::model::Model;

    #[test]
    fn parameter_count_matches_the_built_network_and_every_head_has_the_input_shape() {
        for (levels, base_filters) in [(5, 64), (3, 4)] {
            let mut cfg = small();
            cfg.unet3plus = Unet3PlusConfig {
                levels,
                base_filters,
            };
            let model = Model::build(&cfg, tch::Device::Cpu);
            assert_eq!(trainable(&model.vs), param_count(&cfg), "{cfg:?}");
        }
        // The default: the paper's 26.97M (Table 1) plus the five deep-supervision heads
        // (4 x (320 x 9 + 1) + 1024 x 9 + 1 = 20,741).
        let d = ModelConfig {
            arch: Arch::Unet3Plus,
            ..ModelConfig::default()
        };
        assert_eq!(param_count(&d), 26_968_896 + 20_741);
        let mut cfg = small();
        cfg.unet3plus.levels = 3;
        cfg.unet3plus.base_filters = 4;
        let model = Model::build(&cfg, tch::Device::Cpu);
        let x = Tensor::rand([2, 3, 32, 32], (Kind::Float, tch::Device::Cpu));
        let heads = model.forward_heads(&x, true, Kind::Float);
        assert_eq!(heads.len(), 3);
        for h in &heads {
            assert_eq!(h.size(), [2, 1, 32, 32]);
        }
        // Inference is the top head.
        let top = model.forward(&x, false, Kind::Float);
        let top_heads = model.forward_heads(&x, false, Kind::Float);
        assert_eq!(top, top_heads[0]);
        let names: Vec<String> = model.vs.variables().into_keys().collect();
        for n in [
            "conv1.conv1.0.weight",
            "conv3.conv2.1.running_mean",
            "h1_PT_hd2_conv.weight",
            "h2_Cat_hd2_bn.bias",
            "hd3_UT_hd1_conv.weight",
            "hd2_UT_hd1_conv.bias",
            "conv1d_1.weight",
            "bn2d_1.weight",
            "outconv3.weight",
        ] {
            assert!(names.iter().any(|x| x == n), "{n} not in {names:?}");
        }
    }
}
