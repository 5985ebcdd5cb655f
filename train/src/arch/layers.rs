//! Layers shared by the architectures (the reference UNet included): convolution (stride, atrous
//! dilation, optional bias), batch normalisation with running statistics, 2x2 transposed
//! convolution, bilinear resize, and the parameter counts that go with them. Weights are
//! created with PyTorch's default initialisation and PyTorch's `state_dict` names (`weight`,
//! `bias`, `running_mean`, `running_var`), and cast to the compute precision per call (mixed
//! precision keeps fp32 weights and gradients).

use tch::nn::{Init, Path};
use tch::{Kind, Tensor};

/// A 2-D convolution with padding `dilation * (k - 1) / 2` (PyTorch `nn.Conv2d`; "same" for odd k).
#[derive(Debug)]
pub struct Conv {
    w: Tensor,
    b: Option<Tensor>,
    stride: i64,
    pad: i64,
    dilation: i64,
}

/// PyTorch's default bound for a layer of fan-in `fan_in`: U(-1/sqrt(fan_in), 1/sqrt(fan_in))
/// (kaiming_uniform with a = sqrt 5, and the bias rule).
fn uniform(fan_in: i64) -> Init {
    let bound = 1.0 / (fan_in as f64).sqrt();
    Init::Uniform {
        lo: -bound,
        up: bound,
    }
}

impl Conv {
    /// `cin` -> `cout` channels, `k` x `k` kernel, stride 1, with bias (`nn.Conv2d` defaults).
    pub fn new(p: Path, cin: i64, cout: i64, k: i64) -> Self {
        Self::with(p, cin, cout, k, 1, 1, true)
    }

    /// The general form: `stride`, `dilation` (atrous rate), `bias` (false before a batch norm
    /// in ResNet-style blocks).
    pub fn with(
        p: Path,
        cin: i64,
        cout: i64,
        k: i64,
        stride: i64,
        dilation: i64,
        bias: bool,
    ) -> Self {
        let init = uniform(cin * k * k);
        Self {
            w: p.var("weight", &[cout, cin, k, k], init),
            b: bias.then(|| p.var("bias", &[cout], init)),
            stride,
            pad: dilation * ((k - 1) / 2),
            dilation,
        }
    }

    /// Replaces the weight's initialisation by He et al.'s normal with fan-out (torchvision's
    /// ResNet): N(0, 2 / (k * k * cout)).
    pub fn he_fan_out(self) -> Self {
        let s = self.w.size();
        let std = (2.0 / (s[0] * s[2] * s[3]) as f64).sqrt();
        tch::no_grad(|| {
            let fresh = Tensor::randn(s.as_slice(), (Kind::Float, self.w.device())) * std;
            let mut w = self.w.shallow_clone();
            w.copy_(&fresh);
        });
        self
    }

    /// `x` [N, cin, H, W] in precision `kind` -> [N, cout, H / stride, W / stride].
    pub fn forward(&self, x: &Tensor, kind: Kind) -> Tensor {
        x.conv2d(
            &self.w.to_kind(kind),
            self.b.as_ref().map(|b| b.to_kind(kind)),
            [self.stride, self.stride],
            [self.pad, self.pad],
            [self.dilation, self.dilation],
            1,
        )
    }
}

/// Parameters of a `k` x `k` convolution `cin` -> `cout`.
pub fn conv_params(cin: u64, cout: u64, k: u64, bias: bool) -> u64 {
    cin * cout * k * k + if bias { cout } else { 0 }
}

/// Batch normalisation (Ioffe & Szegedy 2015; PyTorch `nn.BatchNorm2d` defaults: momentum 0.1,
/// eps 1e-5, weight 1, bias 0). Training normalises with the batch statistics and updates the
/// running ones; evaluation uses the running ones. Computed in fp32 whatever the input precision.
#[derive(Debug)]
pub struct BatchNorm {
    w: Tensor,
    b: Tensor,
    mean: Tensor,
    var: Tensor,
}

impl BatchNorm {
    /// `c` channels; `running_mean` and `running_var` are buffers (not trained, but saved).
    pub fn new(p: Path, c: i64) -> Self {
        Self {
            w: p.var("weight", &[c], Init::Const(1.0)),
            b: p.var("bias", &[c], Init::Const(0.0)),
            mean: p.zeros_no_train("running_mean", &[c]),
            var: p.ones_no_train("running_var", &[c]),
        }
    }

    /// `x` [N, c, H, W] -> same shape and precision.
    pub fn forward(&self, x: &Tensor, train: bool) -> Tensor {
        let kind = x.kind();
        Tensor::batch_norm(
            &x.to_kind(Kind::Float),
            Some(&self.w),
            Some(&self.b),
            Some(&self.mean),
            Some(&self.var),
            train,
            0.1,
            1e-5,
            true,
        )
        .to_kind(kind)
    }
}

/// Trainable parameters of a batch norm over `c` channels (weight and bias).
pub fn bn_params(c: u64) -> u64 {
    2 * c
}

/// conv -> batch norm (-> ReLU): the unit most of these networks are made of. Names: the
/// convolution and the norm under the given sub-paths.
#[derive(Debug)]
pub struct ConvBn {
    conv: Conv,
    bn: BatchNorm,
    relu: bool,
}

impl ConvBn {
    /// `conv` and `bn` are created under `pc` and `pb`.
    pub fn new(pc: Path, pb: Path, conv: ConvSpec, relu: bool) -> Self {
        let ConvSpec {
            cin,
            cout,
            k,
            stride,
            dilation,
            bias,
        } = conv;
        Self {
            conv: Conv::with(pc, cin, cout, k, stride, dilation, bias),
            bn: BatchNorm::new(pb, cout),
            relu,
        }
    }

    /// conv, norm, and ReLU when built with it.
    pub fn forward(&self, x: &Tensor, train: bool, kind: Kind) -> Tensor {
        let y = self.bn.forward(&self.conv.forward(x, kind), train);
        if self.relu {
            y.relu()
        } else {
            y
        }
    }
}

/// The shape of a convolution (see [`Conv::with`]).
#[derive(Debug, Clone, Copy)]
pub struct ConvSpec {
    /// Input channels.
    pub cin: i64,
    /// Output channels.
    pub cout: i64,
    /// Kernel side.
    pub k: i64,
    /// Stride.
    pub stride: i64,
    /// Atrous rate.
    pub dilation: i64,
    /// With a bias.
    pub bias: bool,
}

impl ConvSpec {
    /// Stride 1, no dilation, with bias.
    pub fn new(cin: i64, cout: i64, k: i64) -> Self {
        Self {
            cin,
            cout,
            k,
            stride: 1,
            dilation: 1,
            bias: true,
        }
    }

    /// Parameters of the convolution and of a batch norm after it.
    pub fn params_with_bn(&self) -> u64 {
        conv_params(self.cin as u64, self.cout as u64, self.k as u64, self.bias)
            + bn_params(self.cout as u64)
    }
}

/// 2x2 stride-2 transposed convolution (`nn.ConvTranspose2d(cin, cout, 2, 2)`: weight
/// [cin, cout, 2, 2], PyTorch's fan-in cout * 4).
#[derive(Debug)]
pub struct Up2 {
    w: Tensor,
    b: Tensor,
}

impl Up2 {
    /// `cin` -> `cout` channels, twice the side.
    pub fn new(p: Path, cin: i64, cout: i64) -> Self {
        let init = uniform(cout * 4);
        Self {
            w: p.var("weight", &[cin, cout, 2, 2], init),
            b: p.var("bias", &[cout], init),
        }
    }

    /// `x` [N, cin, H, W] -> [N, cout, 2H, 2W].
    pub fn forward(&self, x: &Tensor, kind: Kind) -> Tensor {
        x.conv_transpose2d(
            &self.w.to_kind(kind),
            Some(self.b.to_kind(kind)),
            [2, 2],
            [0, 0],
            [0, 0],
            1,
            [1, 1],
        )
    }
}

/// Parameters of [`Up2`].
pub fn up2_params(cin: u64, cout: u64) -> u64 {
    cin * cout * 4 + cout
}

/// Bilinear resize of `x` [N, C, H, W] to `h` x `w` (PyTorch `F.interpolate(mode="bilinear",
/// align_corners=False)`, `nn.Upsample`'s default).
pub fn resize(x: &Tensor, h: i64, w: i64) -> Tensor {
    let s = x.size();
    if s[2] == h && s[3] == w {
        return x.shallow_clone();
    }
    x.upsample_bilinear2d([h, w], false, None, None)
}

/// 2x2 (or `f` x `f`) max pooling with stride `f`.
pub fn pool(x: &Tensor, f: i64) -> Tensor {
    x.max_pool2d([f, f], [f, f], [0, 0], [1, 1], false)
}

/// Sum of the sizes of the trainable variables of a var store (for the parameter-count tests).
#[cfg(test)]
pub fn trainable(vs: &tch::nn::VarStore) -> u64 {
    vs.trainable_variables()
        .iter()
        .map(|t| t.numel() as u64)
        .sum()
}
