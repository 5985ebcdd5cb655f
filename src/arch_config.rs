//! The per-architecture knobs of the `model` section: one sub-section per architecture besides
//! the reference UNet (whose `levels` and `base_filters` sit at the top of `model`), each with its
//! paper's defaults, `deny_unknown_fields`, and range checks that name the field. Always compiled
//! (no libtorch), like the rest of the config. The layers live in `src/train/arch/`.

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

/// `model.attention_unet`: Attention U-Net (Oktay et al. 2018), a UNet whose skips pass through
/// additive attention gates. Defaults: 5 levels of 64 * 2^i filters (64..1024).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AttentionUnetConfig {
    /// Resolution levels (4 poolings = 5 levels); the side must divide by 2^(levels-1).
    pub levels: usize,
    /// Filters of level 0; level i has base_filters * 2^i.
    pub base_filters: usize,
}

impl Default for AttentionUnetConfig {
    fn default() -> Self {
        Self {
            levels: 5,
            base_filters: 64,
        }
    }
}

/// `model.unet3plus`: UNet 3+ (Huang et al. 2020), full-scale skip connections and deep
/// supervision. Defaults: 5 levels of 64 * 2^i filters; every decoder stage concatenates
/// `levels` maps of `base_filters` channels (the paper's 5 x 64 = 320).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Unet3PlusConfig {
    /// Resolution levels (5 in the paper); the side must divide by 2^(levels-1).
    pub levels: usize,
    /// Filters of encoder level 0 (level i has base_filters * 2^i) and channels of each
    /// full-scale skip in the decoder.
    pub base_filters: usize,
}

impl Default for Unet3PlusConfig {
    fn default() -> Self {
        Self {
            levels: 5,
            base_filters: 64,
        }
    }
}

/// `model.multiresunet`: MultiResUNet (Ibtehaz & Rahman 2020), MultiRes blocks and Res paths.
/// Defaults: 5 levels, U = 32 * 2^i, alpha 1.67 (W = alpha U).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct MultiResUnetConfig {
    /// Resolution levels (5 in the paper); the side must divide by 2^(levels-1).
    pub levels: usize,
    /// U of level 0 (the filters of the UNet it stands in for); level i has base_filters * 2^i.
    pub base_filters: usize,
    /// W = alpha * U: a MultiRes block has int(0.167 W) + int(0.333 W) + int(0.5 W) filters.
    pub alpha: f64,
}

impl Default for MultiResUnetConfig {
    fn default() -> Self {
        Self {
            levels: 5,
            base_filters: 32,
            alpha: 1.67,
        }
    }
}

/// `model.deeplabv3plus`: DeepLabV3+ (Chen et al. 2018) on a ResNet encoder with atrous
/// convolutions. Defaults: ResNet-101, output stride 16, stem width 64 (ASPP 256 channels,
/// decoder 48 low-level channels).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct DeepLabV3PlusConfig {
    /// ResNet depth: 50, 101 or 152 (bottleneck blocks 3-4-6-3, 3-4-23-3, 3-8-36-3).
    pub resnet_depth: usize,
    /// Input side over encoder output side: 16 (ASPP rates 6, 12, 18) or 8 (12, 24, 36).
    pub output_stride: usize,
    /// ResNet stem width (64); stage widths, ASPP (4x) and decoder (3/4x) scale with it.
    pub base_filters: usize,
}

impl Default for DeepLabV3PlusConfig {
    fn default() -> Self {
        Self {
            resnet_depth: 101,
            output_stride: 16,
            base_filters: 64,
        }
    }
}

impl DeepLabV3PlusConfig {
    /// Bottleneck blocks per ResNet stage (He et al. 2016, Table 1).
    pub fn blocks(&self) -> [usize; 4] {
        match self.resnet_depth {
            50 => [3, 4, 6, 3],
            152 => [3, 8, 36, 3],
            _ => [3, 4, 23, 3],
        }
    }
}

/// Checks `levels` and `base_filters` of a UNet-like section named `field` (`model.<arch>`).
pub fn check_unet_like(field: &str, levels: usize, base_filters: usize) -> Result<()> {
    if !(2..=9).contains(&levels) {
        bail!("`{field}.levels` must be within 2..=9, got {levels}");
    }
    if base_filters < 1 {
        bail!("`{field}.base_filters` must be >= 1, got {base_filters}");
    }
    if base_filters.saturating_mul(1 << (levels - 1)) > 65536 {
        bail!(
            "`{field}.base_filters` * 2^(`{field}.levels`-1) must be <= 65536, got {base_filters} \
             * 2^{}",
            levels - 1
        );
    }
    Ok(())
}

impl MultiResUnetConfig {
    /// Range checks; messages name the field.
    pub fn validate(&self) -> Result<()> {
        check_unet_like("model.multiresunet", self.levels, self.base_filters)?;
        if !(self.alpha.is_finite() && self.alpha > 0.0 && self.alpha <= 16.0) {
            bail!(
                "`model.multiresunet.alpha` must be in (0, 16], got {}",
                self.alpha
            );
        }
        if ((self.alpha * self.base_filters as f64) * 0.167) < 1.0 {
            bail!(
                "`model.multiresunet.alpha` * `model.multiresunet.base_filters` must be >= 6 (the \
                 first convolution of a MultiRes block has int(0.167 alpha U) filters), got {} * {}",
                self.alpha,
                self.base_filters
            );
        }
        Ok(())
    }
}

impl DeepLabV3PlusConfig {
    /// Range checks; messages name the field.
    pub fn validate(&self) -> Result<()> {
        if ![50, 101, 152].contains(&self.resnet_depth) {
            bail!(
                "`model.deeplabv3plus.resnet_depth` must be 50, 101 or 152, got {}",
                self.resnet_depth
            );
        }
        if ![8, 16].contains(&self.output_stride) {
            bail!(
                "`model.deeplabv3plus.output_stride` must be 8 or 16, got {}",
                self.output_stride
            );
        }
        if !(1..=1024).contains(&self.base_filters) {
            bail!(
                "`model.deeplabv3plus.base_filters` must be within 1..=1024, got {}",
                self.base_filters
            );
        }
        Ok(())
    }
}
