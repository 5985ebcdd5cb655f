//! Adam (PyTorch's algorithm and defaults: betas 0.9/0.999, eps 1e-8, no weight decay) written on
//! tensors, with gradient value clipping. tch's optimizer wraps the C++ one, whose moment
//! estimates cannot be read or written; this one saves them, so `--resume` continues exactly.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use tch::nn::VarStore;
use tch::Tensor;

/// Adam (Kingma & Ba 2015) over every variable of a `VarStore`, in PyTorch's formulation:
/// m = b1 m + (1 - b1) g, v = b2 v + (1 - b2) g^2,
/// p -= lr / (1 - b1^t) * m / (sqrt(v / (1 - b2^t)) + eps).
pub struct Adam {
    /// (name, parameter, first moment, second moment), sorted by name.
    params: Vec<(String, Tensor, Tensor, Tensor)>,
    /// Learning rate (changed by reduce-on-plateau between epochs).
    pub lr: f64,
    /// Optimizer steps taken (the bias-correction exponent).
    pub step: i64,
    beta1: f64,
    beta2: f64,
    eps: f64,
}

impl Adam {
    /// Fresh moments (zeros shaped like each variable) for every variable of `vs`, step 0.
    pub fn new(vs: &VarStore, lr: f64) -> Self {
        // Trainable variables only: batch-norm running statistics are buffers, not parameters.
        let mut vars: Vec<(String, Tensor)> = vs
            .variables()
            .into_iter()
            .filter(|(_, t)| t.requires_grad())
            .collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        let params = vars
            .into_iter()
            .map(|(name, p)| {
                let m = p.zeros_like();
                let v = p.zeros_like();
                (name, p, m, v)
            })
            .collect();
        Self {
            params,
            lr,
            step: 0,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
        }
    }

    /// Zeroes the gradient of every parameter (before a backward pass).
    pub fn zero_grad(&mut self) {
        for (_, p, _, _) in &mut self.params {
            p.zero_grad();
        }
    }

    /// Clamps every gradient value to [-clip, clip] (Keras `clipvalue`; 0 = off), then updates.
    pub fn step(&mut self, clip: f64) {
        self.step += 1;
        let bc1 = 1.0 - self.beta1.powi(self.step as i32);
        let bc2 = 1.0 - self.beta2.powi(self.step as i32);
        let step_size = self.lr / bc1;
        let (b1, b2, eps) = (self.beta1, self.beta2, self.eps);
        tch::no_grad(|| {
            for (_, p, m, v) in &mut self.params {
                let mut g = p.grad();
                if !g.defined() {
                    continue;
                }
                if clip > 0.0 {
                    let _ = g.clamp_(-clip, clip);
                }
                let _ = m.lerp_(&g, 1.0 - b1);
                *v *= b2;
                let _ = v.addcmul_(&(&g * (1.0 - b2)), &g);
                let denom = v.sqrt() / bc2.sqrt() + eps;
                *p -= &*m / denom * step_size;
            }
        });
    }

    /// Writes the moment estimates as safetensors (`m.<name>`, `v.<name>`).
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut named = Vec::with_capacity(2 * self.params.len());
        for (name, _, m, v) in &self.params {
            named.push((format!("m.{name}"), m));
            named.push((format!("v.{name}"), v));
        }
        Tensor::write_safetensors(&named, path)
            .with_context(|| format!("cannot write optimizer state {}", path.display()))
    }

    /// Reads moment estimates written by [`Adam::save`] for the same model.
    pub fn load(&mut self, path: &Path, step: i64) -> Result<()> {
        let saved: HashMap<String, Tensor> = Tensor::read_safetensors(path)
            .with_context(|| format!("cannot read optimizer state {}", path.display()))?
            .into_iter()
            .collect();
        tch::no_grad(|| -> Result<()> {
            for (name, _, m, v) in &mut self.params {
                for (prefix, t) in [("m", m), ("v", v)] {
                    let key = format!("{prefix}.{name}");
                    let Some(src) = saved.get(&key) else {
                        bail!("optimizer state {} has no tensor {key}", path.display());
                    };
                    if src.size() != t.size() {
                        bail!(
                            "optimizer state {}: {key} is {:?}, the model needs {:?}",
                            path.display(),
                            src.size(),
                            t.size()
                        );
                    }
                    t.copy_(src);
                }
            }
            Ok(())
        })?;
        self.step = step;
        Ok(())
    }
}
