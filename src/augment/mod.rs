//! Variants: what each one is called, its parameters, and how it turns a prepared square pair into
//! a new pair. Every geometric variant is one coordinate map fed to the remap core in [`warp`];
//! the same map moves the image and the mask, so they cannot drift apart.

pub mod affine;
pub mod field;
pub mod lens;
pub mod warp;

use serde_json::{json, Value};

use crate::config::VariantsConfig;
use crate::rng::rng_for;
use affine::Affine;
use lens::{Lens, LensChain};
pub use warp::{remap, Border, Pair, SampleMap};

/// One output variant of a source.
#[derive(Debug, Clone, PartialEq)]
pub enum Variant {
    Orig,
    HFlip,
    VFlip,
    Rotate(f64),
    Shrink(f64),
    ShearX(f64),
    ShearY(f64),
    Elastic { alpha: f64, sigma: f64 },
    Distort { amount: f64, sigma: f64 },
    Lens(LensVariant),
}

/// A barrel (amount > 0) or pincushion (amount < 0) output: warps around `centres` in order.
#[derive(Debug, Clone, PartialEq)]
pub struct LensVariant {
    /// 1-based index of the output in its kind (`barrel_<index>`).
    pub index: usize,
    /// Pincushion (the source pushed outwards) rather than barrel.
    pub pincushion: bool,
    /// Signed exponent: +amount for barrel, -amount for pincushion.
    pub amount: f64,
    pub radius: f64,
    /// Centres (fractions of width, height) applied in turn: one, or 1..=index when chained.
    pub centres: Vec<[f64; 2]>,
}

impl Variant {
    /// The name used in file names, e.g. `rotate_20`, `elastic_1300_8`, `barrel_3`.
    pub fn name(&self) -> String {
        match self {
            Variant::Orig => "orig".into(),
            Variant::HFlip => "hflip".into(),
            Variant::VFlip => "vflip".into(),
            Variant::Rotate(a) => format!("rotate_{a}"),
            Variant::Shrink(r) => format!("shrink_{r}"),
            Variant::ShearX(s) => format!("shear_x_{s}"),
            Variant::ShearY(s) => format!("shear_y_{s}"),
            Variant::Elastic { alpha, sigma } => format!("elastic_{alpha}_{sigma}"),
            Variant::Distort { amount, .. } => format!("distort_{amount}"),
            Variant::Lens(l) => format!("{}_{}", self.kind(), l.index),
        }
    }

    /// The variant's kind (name without parameters), e.g. `rotate`.
    pub fn kind(&self) -> &'static str {
        match self {
            Variant::Orig => "orig",
            Variant::HFlip => "hflip",
            Variant::VFlip => "vflip",
            Variant::Rotate(_) => "rotate",
            Variant::Shrink(_) => "shrink",
            Variant::ShearX(_) => "shear_x",
            Variant::ShearY(_) => "shear_y",
            Variant::Elastic { .. } => "elastic",
            Variant::Distort { .. } => "distort",
            Variant::Lens(l) if l.pincushion => "pincushion",
            Variant::Lens(_) => "barrel",
        }
    }

    /// Parameters as JSON, for the manifest.
    pub fn params(&self) -> Value {
        match self {
            Variant::Orig | Variant::HFlip | Variant::VFlip => json!({}),
            Variant::Rotate(a) => json!({ "degrees": a }),
            Variant::Shrink(r) => json!({ "ratio": r }),
            Variant::ShearX(s) | Variant::ShearY(s) => json!({ "shear": s }),
            Variant::Elastic { alpha, sigma } => json!({ "alpha": alpha, "sigma": sigma }),
            Variant::Distort { amount, sigma } => json!({ "amount": amount, "sigma": sigma }),
            Variant::Lens(l) => json!({
                "amount": l.amount, "radius": l.radius, "centres": l.centres,
            }),
        }
    }

    /// True when the variant draws random numbers (its map differs per source).
    pub fn is_random(&self) -> bool {
        matches!(self, Variant::Elastic { .. } | Variant::Distort { .. })
    }

    /// The resampling map of this variant for a `w` x `h` picture, or `None` for the exact pixel
    /// permutations (orig, flips). Random variants draw from the generator of
    /// (seed, stem, variant name), so the map does not depend on order or threads; the others
    /// ignore seed and stem, and one map serves every source.
    pub fn sample_map(&self, w: u32, h: u32, seed: u64, stem: &str) -> Option<SampleMap> {
        let affine = |m| Some(SampleMap::new(w, h, &Affine(m), Border::Fill));
        match self {
            Variant::Orig | Variant::HFlip | Variant::VFlip => None,
            Variant::Rotate(a) => affine(affine::rotation(*a, w, h)),
            Variant::Shrink(r) => affine(affine::shrink(*r, w, h)),
            Variant::ShearX(s) => affine(affine::shear_x(*s, w, h)),
            Variant::ShearY(s) => affine(affine::shear_y(*s, w, h)),
            Variant::Elastic { alpha, sigma } => {
                let mut rng = rng_for(seed, stem, &self.name());
                let d = field::elastic(w as usize, h as usize, *alpha, *sigma, &mut rng);
                Some(SampleMap::new(w, h, &d, Border::Clamp))
            }
            Variant::Distort { amount, sigma } => {
                let mut rng = rng_for(seed, stem, &self.name());
                let max = amount * f64::from(w.max(h));
                let d = field::distortion(w as usize, h as usize, *sigma, max, &mut rng);
                Some(SampleMap::new(w, h, &d, Border::Clamp))
            }
            Variant::Lens(l) => {
                let (wf, hf) = (f64::from(w), f64::from(h));
                let chain = l
                    .centres
                    .iter()
                    .map(|[ox, oy]| Lens {
                        cx: ox * wf,
                        cy: oy * hf,
                        radius: l.radius * wf,
                        amount: l.amount,
                    })
                    .collect();
                Some(SampleMap::new(w, h, &LensChain(chain), Border::Fill))
            }
        }
    }

    /// Produces this variant of `src` with a map from [`Variant::sample_map`] (`None` for orig
    /// and flips).
    pub fn apply_map(&self, src: &Pair, map: Option<&SampleMap>) -> Pair {
        match (self, map) {
            (Variant::HFlip, _) => Pair {
                image: image::imageops::flip_horizontal(&src.image),
                mask: image::imageops::flip_horizontal(&src.mask),
                fill: src.fill,
            },
            (Variant::VFlip, _) => Pair {
                image: image::imageops::flip_vertical(&src.image),
                mask: image::imageops::flip_vertical(&src.mask),
                fill: src.fill,
            },
            (_, Some(m)) => m.apply(src),
            (_, None) => src.clone(),
        }
    }

    /// Produces this variant of `src` (builds the map and applies it).
    pub fn apply(&self, src: &Pair, seed: u64, stem: &str) -> Pair {
        let (w, h) = src.image.dimensions();
        let map = self.sample_map(w, h, seed, stem);
        self.apply_map(src, map.as_ref())
    }
}

/// Every variant the config asks for, `orig` first, in a fixed order. Names are unique.
pub fn plan(v: &VariantsConfig) -> Vec<Variant> {
    let mut out = vec![Variant::Orig];
    if v.hflip {
        out.push(Variant::HFlip);
    }
    if v.vflip {
        out.push(Variant::VFlip);
    }
    out.extend(v.rotate.iter().map(|a| Variant::Rotate(*a)));
    out.extend(v.shrink.iter().map(|r| Variant::Shrink(*r)));
    out.extend(v.shear_x.iter().map(|s| Variant::ShearX(*s)));
    out.extend(v.shear_y.iter().map(|s| Variant::ShearY(*s)));
    out.extend(v.elastic.iter().map(|e| Variant::Elastic {
        alpha: e.alpha,
        sigma: e.sigma,
    }));
    out.extend(v.distort.iter().map(|d| Variant::Distort {
        amount: *d,
        sigma: v.distort_sigma,
    }));
    let l = &v.lens;
    for (on, pincushion, amount) in [(l.barrel, false, l.amount), (l.pincushion, true, -l.amount)] {
        if !on {
            continue;
        }
        for k in 0..l.centres.len() {
            let centres = if l.chained {
                l.centres[..=k].to_vec()
            } else {
                vec![l.centres[k]]
            };
            out.push(Variant::Lens(LensVariant {
                index: k + 1,
                pincushion,
                amount,
                radius: l.radius,
                centres,
            }));
        }
    }
    let mut seen = std::collections::HashSet::new();
    out.retain(|v| seen.insert(v.name()));
    out
}

#[cfg(test)]
mod tests;
