//! `unet`: the reference UNet, layer for layer the PyTorch model of the reference project
//! (docs/training.md, "The model"): same blocks, same kernel sizes, same dropout, same
//! initialisation bounds, and the same parameter names as its `state_dict` (`down.0.0.weight`,
//! `up.0.bias`, `dec.3.3.weight`, `head.weight`), so a checkpoint can be read by either side.

use tch::nn::{ModuleT, Path};
use tch::{Kind, Tensor};

use super::layers::{Conv, Up2};
use super::ArchSpec;
use crate::model::SegNet;
use fundus_pipeline::train_config::{Arch, ModelConfig};

/// The registry entry of `unet`.
pub const SPEC: ArchSpec = ArchSpec {
    arch: Arch::Unet,
    paper: "Ronneberger et al. 2015, as the reference project's PyTorch model builds it",
    build,
    param_count,
    small: ModelConfig::small,
};

fn build(root: &Path, cfg: &ModelConfig) -> Box<dyn SegNet> {
    Box::new(UNet::new(root, cfg))
}

/// Kernel size of level i: max(3, 9 - 2i) -> 9, 7, 5, 3, 3, ...
pub fn kernel(level: usize) -> i64 {
    (9 - 2 * level as i64).max(3)
}

/// Dropout between the two convolutions of a block at level i.
pub fn dropout(level: usize) -> f64 {
    0.05 * level as f64
}

/// conv -> ReLU -> dropout -> conv -> ReLU (`nn.Sequential` indices 0 and 3 hold the convs).
#[derive(Debug)]
struct Block {
    c1: Conv,
    c2: Conv,
    p: f64,
}

impl Block {
    fn new(p: Path, cin: i64, cout: i64, level: usize) -> Self {
        let k = kernel(level);
        Self {
            c1: Conv::new(&p / "0", cin, cout, k),
            c2: Conv::new(&p / "3", cout, cout, k),
            p: dropout(level),
        }
    }

    fn forward(&self, x: &Tensor, train: bool, kind: Kind) -> Tensor {
        let x = self.c1.forward(x, kind).relu();
        let x = if self.p > 0.0 && train {
            x.dropout(self.p, true)
        } else {
            x
        };
        self.c2.forward(&x, kind).relu()
    }
}

/// The network. `forward` returns logits (sigmoid is applied by the loss and the predictions).
#[derive(Debug)]
pub struct UNet {
    down: Vec<Block>,
    up: Vec<Up2>,
    dec: Vec<Block>,
    head: Conv,
}

impl UNet {
    /// Creates the variables under `root`, drawing initial weights from libtorch's global
    /// generator (seed it with `tch::manual_seed` first).
    pub fn new(root: &Path, cfg: &ModelConfig) -> Self {
        let ch: Vec<i64> = (0..cfg.levels)
            .map(|i| (cfg.base_filters << i) as i64)
            .collect();
        let mut c = cfg.in_channels as i64;
        let mut down = Vec::new();
        for (i, &ci) in ch.iter().enumerate() {
            down.push(Block::new(root / "down" / i, c, ci, i));
            c = ci;
        }
        let (mut up, mut dec) = (Vec::new(), Vec::new());
        for (j, lvl) in (0..cfg.levels.saturating_sub(1)).rev().enumerate() {
            up.push(Up2::new(root / "up" / j, c, ch[lvl]));
            dec.push(Block::new(root / "dec" / j, 2 * ch[lvl], ch[lvl], lvl));
            c = ch[lvl];
        }
        let head = Conv::new(root / "head", c, 1, 1);
        Self {
            down,
            up,
            dec,
            head,
        }
    }

    /// `x`: [N, 3, H, W] float in [0, 1], H and W divisible by 2^(levels-1). `kind`: the compute
    /// precision of the convolutions (Float, or BFloat16 for mixed precision: the fp32 weights are
    /// cast per call, so their gradients stay fp32). Returns fp32 logits [N, 1, H, W].
    pub fn forward(&self, x: &Tensor, train: bool, kind: Kind) -> Tensor {
        let mut x = x.to_kind(kind);
        let mut skips = Vec::new();
        let last = self.down.len() - 1;
        for (i, blk) in self.down.iter().enumerate() {
            x = blk.forward(&x, train, kind);
            if i < last {
                let pooled = x.max_pool2d([2, 2], [2, 2], [0, 0], [1, 1], false);
                skips.push(x);
                x = pooled;
            }
        }
        for (up, dec) in self.up.iter().zip(&self.dec) {
            let skip = skips.pop().expect("one skip per level");
            x = dec.forward(&Tensor::cat(&[up.forward(&x, kind), skip], 1), train, kind);
        }
        self.head.forward(&x, kind).to_kind(Kind::Float)
    }
}

impl SegNet for UNet {
    fn forward_kind(&self, x: &Tensor, train: bool, kind: Kind) -> Tensor {
        self.forward(x, train, kind)
    }
}

impl ModuleT for UNet {
    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        self.forward(x, train, Kind::Float)
    }
}

/// Number of parameters of a model config, without building it (same formula as the layers).
pub fn param_count(cfg: &ModelConfig) -> u64 {
    let conv = |cin: u64, cout: u64, k: u64| cout * cin * k * k + cout;
    let ch: Vec<u64> = (0..cfg.levels)
        .map(|i| (cfg.base_filters << i) as u64)
        .collect();
    let mut c = cfg.in_channels as u64;
    let mut n = 0;
    for (i, &ci) in ch.iter().enumerate() {
        let k = kernel(i) as u64;
        n += conv(c, ci, k) + conv(ci, ci, k);
        c = ci;
    }
    for lvl in (0..cfg.levels.saturating_sub(1)).rev() {
        let k = kernel(lvl) as u64;
        n += c * ch[lvl] * 4 + ch[lvl];
        n += conv(2 * ch[lvl], ch[lvl], k) + conv(ch[lvl], ch[lvl], k);
        c = ch[lvl];
    }
    n + conv(c, 1, 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Model;
    use tch::nn::VarStore;

    #[test]
    fn parameter_count_matches_the_reference() {
        // The reference PyTorch UNet(levels, f)'s sum(p.numel() for p in model.parameters()), as
        // docs/training.md ("The model") lists them.
        for (levels, f, n) in [(8, 16, 124_996_849u64), (4, 8, 260_793), (2, 4, 11_029)] {
            let cfg = ModelConfig {
                levels,
                base_filters: f,
                ..ModelConfig::default()
            };
            assert_eq!(param_count(&cfg), n, "levels {levels} f {f}");
            if levels <= 4 {
                let vs = VarStore::new(tch::Device::Cpu);
                let _net = UNet::new(&vs.root(), &cfg);
                let built: i64 = vs
                    .trainable_variables()
                    .iter()
                    .map(|t| t.numel() as i64)
                    .sum();
                assert_eq!(built as u64, n);
            }
        }
    }

    #[test]
    fn forward_keeps_the_spatial_size() {
        let cfg = ModelConfig {
            levels: 3,
            base_filters: 4,
            ..ModelConfig::default()
        };
        let model = Model::build(&cfg, tch::Device::Cpu);
        assert_eq!(model.param_count(), param_count(&cfg));
        let x = Tensor::rand([2, 3, 32, 32], (Kind::Float, tch::Device::Cpu));
        let y = model.forward(&x, true, Kind::Float);
        assert_eq!(y.size(), [2, 1, 32, 32]);
        let yb = model.forward(&x, false, Kind::BFloat16);
        assert_eq!(yb.kind(), Kind::Float);
        assert_eq!(model.forward_heads(&x, false, Kind::Float).len(), 1);
        let names: Vec<String> = model.vs.variables().into_keys().collect();
        for n in [
            "down.0.0.weight",
            "down.2.3.bias",
            "up.0.weight",
            "dec.1.3.weight",
            "head.bias",
        ] {
            assert!(names.iter().any(|x| x == n), "{n} not in {names:?}");
        }
        assert!(cfg.check_size(30).is_err());
        assert!(cfg.check_size(32).is_ok());
    }
}
