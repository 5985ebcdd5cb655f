//! Variants: what each one is called, its parameters, and how it turns a prepared square pair into
//! a new pair. [`Variant::operation`] says what a variant does, as one of three kinds of
//! [`Operation`]: an exact pixel permutation (orig, flips), a warp through a [`SampleMap`] (every
//! geometric variant: one coordinate map fed to the remap core in [`warp`], the same for image and
//! mask, so they cannot drift apart), or a per-pixel operation. Every caller dispatches on that
//! operation, and every `match` is exhaustive: a new kind of variant that is not handled
//! everywhere does not compile.
//!
//! Adding a variant kind: a `Variant` arm, its name/kind/params/randomness (the compiler lists
//! them), its [`Operation`] in [`Variant::operation`], and its config key in [`plan`].

pub mod affine;
pub mod field;
pub mod lens;
pub mod warp;

use std::borrow::Cow;
use std::collections::HashMap;

use image::{GrayImage, RgbImage};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::config::VariantsConfig;
use crate::rng::rng_for;
use affine::Affine;
use lens::{Lens, LensChain};
pub use warp::{remap, Border, Packed, Pair, SampleMap};

/// One output variant of a source.
#[derive(Debug, Clone, PartialEq)]
pub enum Variant {
    /// The prepared pair unchanged (`orig`).
    Orig,
    /// Mirrored left-right (`hflip`).
    HFlip,
    /// Mirrored top-bottom (`vflip`).
    VFlip,
    /// Rotation by this many degrees about the centre; positive turns the picture
    /// counter-clockwise on screen (see [`affine::rotation`]). Corners read the fill colour.
    Rotate(f64),
    /// Scaling by this factor in (0, 1] about the centre, pasted on the fill colour.
    Shrink(f64),
    /// Horizontal shear x' = x + s (y - cy), s the factor.
    ShearX(f64),
    /// Vertical shear y' = y + s (x - cx), s the factor.
    ShearY(f64),
    /// Elastic deformation (Simard et al. 2003): see [`field::elastic`].
    Elastic {
        /// Displacement scale, in pixels per unit of smoothed U(-1, 1) noise.
        alpha: f64,
        /// Gaussian sigma of the smoothing, in pixels.
        sigma: f64,
    },
    /// Gaussian-field distortion: see [`field::distortion`].
    Distort {
        /// Largest displacement as a fraction of the longer side (0..=0.5).
        amount: f64,
        /// Gaussian sigma of the field, in pixels.
        sigma: f64,
    },
    /// A barrel or pincushion warp (one or several chained discs).
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
    /// Radius of every warped disc as a fraction of the width (0, 1].
    pub radius: f64,

    /// Centres (fractions of width, height) applied in turn: one, or 1..=index when chained.
    pub centres: Vec<[f64; 2]>,
}

impl LensVariant {
    /// Its discs on a `w` x `h` picture, in pixels.
    fn chain(&self, w: u32, h: u32) -> LensChain {
        let (wf, hf) = (f64::from(w), f64::from(h));
        LensChain(
            self.centres
                .iter()
                .map(|[ox, oy]| Lens {
                    cx: ox * wf,
                    cy: oy * hf,
                    radius: self.radius * wf,
                    amount: self.amount,
                })
                .collect(),
        )
    }
}

/// The operations of the deterministic variants of `variants` (those that are not
/// [`Variant::is_random`]) for a `w` x `h` pair, by [`Variant::name`]: built once per run and
/// shared by every source, in parallel (rayon, on the current pool).
///
/// Each is the operation [`Variant::operation`] builds, with one saving: the coordinates of a
/// chained lens output (`barrel_k` is `barrel_(k-1)` and one more disc) are built on those of
/// the chain one disc shorter ([`LensChain::field`]), so the chain's `sin` and `pow` run only for
/// the pixels inside the new disc. The maps are the same bit for bit (tested).
pub fn shared_operations(variants: &[Variant], w: u32, h: u32) -> HashMap<String, Operation> {
    let (wu, hu) = (w as usize, h as usize);
    let lenses: Vec<&LensVariant> = variants
        .iter()
        .filter_map(|v| match v {
            Variant::Lens(l) => Some(l),
            _ => None,
        })
        .collect();
    // Families of chains that extend each other: the same kind, exponent and radius, shortest
    // first. Each family's fields are built in turn, the families in parallel.
    let mut families: Vec<Vec<&LensVariant>> = Vec::new();
    for l in lenses {
        let same = |f: &Vec<&LensVariant>| {
            f[0].pincushion == l.pincushion
                && f[0].amount.to_bits() == l.amount.to_bits()
                && f[0].radius.to_bits() == l.radius.to_bits()
        };
        match families.iter_mut().find(|f| same(f)) {
            Some(f) => f.push(l),
            None => families.push(vec![l]),
        }
    }
    let fields: Vec<(&LensVariant, Vec<[f32; 2]>)> = families
        .into_par_iter()
        .flat_map_iter(|mut family| {
            family.sort_by_key(|l| l.centres.len());
            let mut built: Vec<(&LensVariant, Vec<[f32; 2]>)> = Vec::new();
            for l in family {
                let shorter = built
                    .iter()
                    .find(|(s, _)| {
                        l.centres.len() >= 2 && s.centres[..] == l.centres[..l.centres.len() - 1]
                    })
                    .map(|(_, f)| f.as_slice());
                let field = l.chain(w, h).field(wu, hu, shorter);
                built.push((l, field));
            }
            built
        })
        .collect();
    let lens_ops = fields.par_iter().map(|(l, field)| {
        let map = lens::Field { field, w: wu };
        let op = Operation::Warp(SampleMap::new(w, h, &map, Border::Fill));
        (Variant::Lens((*l).clone()).name(), op)
    });
    variants
        .par_iter()
        .filter(|v| !v.is_random() && !matches!(v, Variant::Lens(_)))
        .map(|v| (v.name(), v.operation(w, h, 0, "")))
        .chain(lens_ops)
        .collect()
}

/// A variant's parameters as the manifest records them (`params` of a pair record): a JSON
/// object whose keys tell the kind (the record's `variant` names it too); `{}` for orig and
/// the flips. Angles in degrees, `ratio` and `shear` unitless, `alpha`/`sigma` in pixels,
/// `amount` a fraction of the side (distortion) or the lens exponent, `radius` and `centres`
/// fractions of the width/height.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum VariantParams {
    /// `rotate_*`: a rotation about the centre ([`Variant::Rotate`]).
    Rotate {
        /// Angle in degrees; positive turns the picture counter-clockwise on screen.
        degrees: f64,
    },
    /// `shrink_*`: a scaling about the centre, pasted on the fill colour ([`Variant::Shrink`]).
    Shrink {
        /// Scale factor in (0, 1].
        ratio: f64,
    },
    /// `shear_x_*` or `shear_y_*` (the record's `variant` says which): a shear about the centre.
    Shear {
        /// Shear factor s, unitless: x' = x + s (y - cy) for `shear_x`, y' = y + s (x - cx) for
        /// `shear_y`.
        shear: f64,
    },
    /// `elastic_*`: an elastic deformation (Simard et al. 2003; [`Variant::Elastic`]).
    Elastic {
        /// Displacement scale, pixels per unit of smoothed U(-1, 1) noise.
        alpha: f64,
        /// Gaussian sigma of the smoothing, pixels.
        sigma: f64,
    },
    /// Before `Distort`: its keys are a superset of one of distort's.
    Lens {
        /// Signed lens exponent: positive for barrel, negative for pincushion.
        amount: f64,
        /// Radius of every warped disc, fraction of the width in (0, 1].
        radius: f64,
        /// Disc centres as [x, y] fractions of the width and height, applied in order.
        centres: Vec<[f64; 2]>,
    },
    /// `distort_*`: a Gaussian-field distortion ([`Variant::Distort`]).
    Distort {
        /// Largest displacement, fraction of the longer side (0..=0.5).
        amount: f64,
        /// Gaussian sigma of the field, pixels.
        sigma: f64,
    },
    /// Last: an untagged empty struct matches any object.
    None {},
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

    /// Parameters, for the manifest's pair records.
    pub fn params(&self) -> VariantParams {
        match self {
            Variant::Orig | Variant::HFlip | Variant::VFlip => VariantParams::None {},
            Variant::Rotate(a) => VariantParams::Rotate { degrees: *a },
            Variant::Shrink(r) => VariantParams::Shrink { ratio: *r },
            Variant::ShearX(s) | Variant::ShearY(s) => VariantParams::Shear { shear: *s },
            Variant::Elastic { alpha, sigma } => VariantParams::Elastic {
                alpha: *alpha,
                sigma: *sigma,
            },
            Variant::Distort { amount, sigma } => VariantParams::Distort {
                amount: *amount,
                sigma: *sigma,
            },
            Variant::Lens(l) => VariantParams::Lens {
                amount: l.amount,
                radius: l.radius,
                centres: l.centres.clone(),
            },
        }
    }

    /// True when the variant draws random numbers: its operation differs per source (built from
    /// the generator of (seed, stem, name)). Otherwise one operation serves every source.
    pub fn is_random(&self) -> bool {
        match self {
            Variant::Elastic { .. } | Variant::Distort { .. } => true,
            Variant::Orig
            | Variant::HFlip
            | Variant::VFlip
            | Variant::Rotate(_)
            | Variant::Shrink(_)
            | Variant::ShearX(_)
            | Variant::ShearY(_)
            | Variant::Lens(_) => false,
        }
    }

    /// What this variant does to a `w` x `h` pair. Random variants draw from the generator of
    /// (seed, stem, variant name), so the operation does not depend on order or threads; the
    /// others ignore seed and stem (see [`Variant::is_random`]).
    pub fn operation(&self, w: u32, h: u32, seed: u64, stem: &str) -> Operation {
        let warp =
            |map: &dyn warp::CoordMap, border| Operation::Warp(SampleMap::new(w, h, map, border));
        let affine = |m| warp(&Affine(m), Border::Fill);
        match self {
            Variant::Orig => Operation::Permute(Permutation::Identity),
            Variant::HFlip => Operation::Permute(Permutation::FlipHorizontal),
            Variant::VFlip => Operation::Permute(Permutation::FlipVertical),
            Variant::Rotate(a) => affine(affine::rotation(*a, w, h)),
            Variant::Shrink(r) => affine(affine::shrink(*r, w, h)),
            Variant::ShearX(s) => affine(affine::shear_x(*s, w, h)),
            Variant::ShearY(s) => affine(affine::shear_y(*s, w, h)),
            Variant::Elastic { alpha, sigma } => {
                let mut rng = rng_for(seed, stem, &self.name());
                let d = field::elastic(w as usize, h as usize, *alpha, *sigma, &mut rng);
                warp(&d, Border::Clamp)
            }
            Variant::Distort { amount, sigma } => {
                let mut rng = rng_for(seed, stem, &self.name());
                let max = amount * f64::from(w.max(h));
                let d = field::distortion(w as usize, h as usize, *sigma, max, &mut rng);
                warp(&d, Border::Clamp)
            }
            Variant::Lens(l) => warp(&l.chain(w, h), Border::Fill),
        }
    }

    /// Produces this variant of `src` (builds the operation and applies it).
    pub fn apply(&self, src: &Pair, seed: u64, stem: &str) -> Pair {
        let (w, h) = src.image.dimensions();
        self.operation(w, h, seed, stem).apply(src).into_owned()
    }
}

/// What a variant does to a pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Operation {
    /// An exact pixel permutation: every output byte is a source byte, nothing is resampled.
    Permute(Permutation),
    /// Resampling through a map (image bilinear, mask thresholded; see [`warp`]).
    Warp(SampleMap),
    /// A per-pixel operation that keeps the geometry (the place for colour jitters).
    PerPixel(PixelOp),
}

impl Operation {
    /// Applies the operation to `src` (borrowed back unchanged for the identity).
    ///
    /// # Panics
    /// A warp panics if `src` is not the size its map was built for.
    pub fn apply<'a>(&self, src: &'a Pair) -> Cow<'a, Pair> {
        match self {
            Operation::Permute(p) => p.apply(src),
            Operation::Warp(map) => Cow::Owned(map.apply(src)),
            Operation::PerPixel(op) => Cow::Owned(op.apply(src)),
        }
    }

    /// [`apply`](Self::apply) to a source already packed for warps ([`warp::Packed`], made once
    /// and shared by all the variants of a source). Same result.
    pub fn apply_packed<'a>(&self, src: &Packed<'a>) -> Cow<'a, Pair> {
        match self {
            Operation::Warp(map) => Cow::Owned(map.apply_packed(src)),
            _ => self.apply(src.pair()),
        }
    }
}

/// Exact pixel permutations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permutation {
    /// The pair as it is.
    Identity,
    /// Mirror left-right (x -> w - 1 - x).
    FlipHorizontal,
    /// Mirror top-bottom (y -> h - 1 - y).
    FlipVertical,
}

impl Permutation {
    /// Applies the permutation as row copies (no per-pixel indexing).
    pub fn apply<'a>(&self, src: &'a Pair) -> Cow<'a, Pair> {
        let pair = |image, mask| {
            Cow::Owned(Pair {
                image,
                mask,
                fill: src.fill,
            })
        };
        match self {
            Permutation::Identity => Cow::Borrowed(src),
            Permutation::FlipHorizontal => pair(
                flip_rows::<3>(&src.image).into_rgb(),
                flip_rows::<1>(&src.mask).into_gray(),
            ),
            Permutation::FlipVertical => pair(
                reverse_rows(&src.image).into_rgb(),
                reverse_rows(&src.mask).into_gray(),
            ),
        }
    }
}

/// A raw `w` x `h` buffer on its way back into an image type.
struct Raw(u32, u32, Vec<u8>);

impl Raw {
    fn into_rgb(self) -> RgbImage {
        RgbImage::from_raw(self.0, self.1, self.2).expect("buffer size")
    }
    fn into_gray(self) -> GrayImage {
        GrayImage::from_raw(self.0, self.1, self.2).expect("buffer size")
    }
}

/// Each row's `C`-byte pixels in reverse order.
fn flip_rows<const C: usize>(
    img: &image::ImageBuffer<impl image::Pixel<Subpixel = u8>, Vec<u8>>,
) -> Raw {
    let (w, h) = img.dimensions();
    let row = (w as usize * C).max(1);
    let mut out = vec![0u8; img.as_raw().len()];
    for (o, i) in out
        .chunks_exact_mut(row)
        .zip(img.as_raw().chunks_exact(row))
    {
        for (op, ip) in o.chunks_exact_mut(C).zip(i.chunks_exact(C).rev()) {
            op.copy_from_slice(ip);
        }
    }
    Raw(w, h, out)
}

/// The rows in reverse order.
fn reverse_rows(img: &image::ImageBuffer<impl image::Pixel<Subpixel = u8>, Vec<u8>>) -> Raw {
    let (w, h) = img.dimensions();
    let row = img.as_raw().len() / h.max(1) as usize;
    let mut out = Vec::with_capacity(img.as_raw().len());
    for r in img.as_raw().chunks_exact(row.max(1)).rev() {
        out.extend_from_slice(r);
    }
    Raw(w, h, out)
}

/// Per-pixel operations. None exists yet: adding one (say a brightness jitter) makes
/// [`PixelOp::apply`] fail to compile until it says what the operation does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PixelOp {}

impl PixelOp {
    /// Applies the operation to every pixel of `src` (the mask stays as it is).
    pub fn apply(&self, _src: &Pair) -> Pair {
        match *self {}
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
