//! Synthetic DIARETDB1 v1.1 tree: fundus-like RGB images with drawn lesions and ground-truth
//! confidence maps that coincide with them, the field-of-view mask and the official split lists.
//!
//! `root` plays the role of `diaretdb1_v_1_1`:
//!
//! ```text
//! root/resources/images/ddb1_fundusimages/image001.png ..      width x height RGB
//! root/resources/images/ddb1_fundusmask/fmask.tif              8-bit gray, 255 inside the FOV
//! root/resources/images/ddb1_groundtruth/<lesion>/imageNNN.png 8-bit gray, multiples of 21 <= 252
//! root/resources/traindatasets/trainset.txt                    images/ddb1_fundusimages/imageNNN.png
//! root/resources/testdatasets/testset.txt
//! ```
//!
//! Each image is a pure function of (seed, stem, width, height): every draw comes from
//! `rng_for(seed, stem, "synth")`, so the same options give byte-identical files whatever the
//! thread count. All geometry is expressed in units of the field-of-view radius, so tiny test
//! sizes give the same picture, only coarser.
//!
//! Ground truth mimics the real maps: several "experts" marked each lesion, so a map holds a core
//! (usually 210 or 252, sometimes an uncertain 168) inside the drawn lesion, a blob-shaped 84..126
//! margin around it and sometimes a faint 42..84 circle around the whole thing. Overlaps take the
//! maximum, so values stay multiples of 21 in 0..=252.

use std::f32::consts::{PI, TAU};
use std::fs;
use std::io::{BufWriter, Write};
use std::path::Path;

use anyhow::{bail, Context, Result};
use image::codecs::png::{CompressionType, FilterType, PngEncoder};
use image::codecs::tiff::TiffEncoder;
use image::{ExtendedColorType, ImageEncoder};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use crate::config::Lesion;
use crate::rng::rng_for;

/// Folder of the fundus images, relative to `resources/` (also the prefix used in the lists).
pub const IMAGES_DIR: &str = "images/ddb1_fundusimages";
/// Folder of the field-of-view mask, relative to `resources/`.
pub const MASK_DIR: &str = "images/ddb1_fundusmask";
/// Folder of the ground-truth maps (one subfolder per lesion), relative to `resources/`.
pub const GROUNDTRUTH_DIR: &str = "images/ddb1_groundtruth";
/// The official DIARETDB1 v1.1 training images (by number); every other image is a test image.
pub const OFFICIAL_TRAIN: [usize; 28] = [
    1, 3, 4, 9, 10, 11, 13, 14, 20, 22, 24, 25, 26, 27, 28, 29, 35, 36, 38, 42, 53, 55, 57, 64, 70,
    79, 84, 86,
];

/// What to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SynthOptions {
    /// Number of images (1..=999; named image001.png ..).
    pub count: usize,
    pub seed: u64,
    pub width: u32,
    pub height: u32,
}

impl Default for SynthOptions {
    fn default() -> Self {
        SynthOptions {
            count: 89,
            seed: 1,
            width: 1500,
            height: 1152,
        }
    }
}

/// The stem of image number `i` (1-based): `image001`.
pub fn stem(i: usize) -> String {
    format!("image{i:03}")
}

/// Writes the whole tree under `root` (created if missing; existing files of the same names are
/// replaced, each through a temporary file renamed into place).
pub fn write_synthetic(root: &Path, opts: &SynthOptions) -> Result<()> {
    if opts.count == 0 || opts.count > 999 {
        bail!(
            "synthetic image count must be in 1..=999, got {}",
            opts.count
        );
    }
    if opts.width < 32 || opts.height < 32 {
        bail!(
            "synthetic image size must be at least 32x32, got {}x{}",
            opts.width,
            opts.height
        );
    }
    let res = root.join("resources");
    let img_dir = res.join(IMAGES_DIR);
    let mask_dir = res.join(MASK_DIR);
    let gt_dir = res.join(GROUNDTRUTH_DIR);
    let train_dir = res.join("traindatasets");
    let test_dir = res.join("testdatasets");
    let mut dirs = vec![
        img_dir.clone(),
        mask_dir.clone(),
        train_dir.clone(),
        test_dir.clone(),
    ];
    dirs.extend(Lesion::ALL.iter().map(|l| gt_dir.join(l.folder())));
    for d in &dirs {
        fs::create_dir_all(d).with_context(|| format!("creating folder {}", d.display()))?;
    }

    let fov = Fov::new(opts.width, opts.height);
    let mask = fov.mask(opts.width, opts.height);
    write_atomic(&mask_dir.join("fmask.tif"), |w| {
        TiffEncoder::new(w).write_image(&mask, opts.width, opts.height, ExtendedColorType::L8)?;
        Ok(())
    })?;

    let (train, test) = split_lists(opts.count);
    for (ids, path) in [
        (&train, train_dir.join("trainset.txt")),
        (&test, test_dir.join("testset.txt")),
    ] {
        let text: String = ids
            .iter()
            .map(|&i| format!("{IMAGES_DIR}/{}.png\n", stem(i)))
            .collect();
        write_atomic(&path, |w| Ok(w.write_all(text.as_bytes())?))?;
    }

    (1..=opts.count).into_par_iter().try_for_each(|i| {
        let stem = stem(i);
        let sample = render(opts.seed, &stem, opts.width, opts.height);
        write_png(
            &img_dir.join(format!("{stem}.png")),
            &sample.rgb,
            opts.width,
            opts.height,
            ExtendedColorType::Rgb8,
        )?;
        for (lesion, map) in Lesion::ALL.iter().zip(&sample.truth) {
            write_png(
                &gt_dir.join(lesion.folder()).join(format!("{stem}.png")),
                map,
                opts.width,
                opts.height,
                ExtendedColorType::L8,
            )?;
        }
        Ok(())
    })
}

/// The official split restricted to images 1..=count, as (train, test) image numbers. When that
/// leaves fewer than 2 training images or no test image, every third image (1, 4, 7, ..) trains
/// instead, so both lists are non-empty whenever count >= 2.
fn split_lists(count: usize) -> (Vec<usize>, Vec<usize>) {
    let official: Vec<usize> = OFFICIAL_TRAIN
        .iter()
        .copied()
        .filter(|&i| i <= count)
        .collect();
    let is_train: Box<dyn Fn(usize) -> bool> = if official.len() >= 2 && official.len() < count {
        Box::new(move |i| official.contains(&i))
    } else {
        Box::new(|i| (i - 1) % 3 == 0)
    };
    (1..=count).partition(|&i| is_train(i))
}

/// Writes `path` through a temporary file in the same folder, renamed into place at the end.
fn write_atomic(
    path: &Path,
    write: impl FnOnce(&mut BufWriter<tempfile::NamedTempFile>) -> Result<()>,
) -> Result<()> {
    let dir = path
        .parent()
        .with_context(|| format!("{} has no parent folder", path.display()))?;
    let mut builder = tempfile::Builder::new();
    builder.prefix(".synth-").suffix(".tmp");
    // Like an ordinary new file (0666 minus umask), not tempfile's private 0600.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        builder.permissions(fs::Permissions::from_mode(0o666));
    }
    let tmp = builder
        .tempfile_in(dir)
        .with_context(|| format!("creating a temporary file for {}", path.display()))?;
    let mut w = BufWriter::new(tmp);
    write(&mut w).with_context(|| format!("writing {}", path.display()))?;
    let tmp = w
        .into_inner()
        .map_err(|e| e.into_error())
        .with_context(|| format!("writing {}", path.display()))?;
    tmp.persist(path)
        .map_err(|e| e.error)
        .with_context(|| format!("renaming a temporary file to {}", path.display()))?;
    Ok(())
}

fn write_png(path: &Path, buf: &[u8], w: u32, h: u32, color: ExtendedColorType) -> Result<()> {
    write_atomic(path, |out| {
        PngEncoder::new_with_quality(out, CompressionType::Fast, FilterType::Adaptive)
            .write_image(buf, w, h, color)?;
        Ok(())
    })
}

// ------------------------------------------------------------------------------------------------
// Geometry

/// The circular field of view, the same for every image of a tree (one fmask for all).
#[derive(Debug, Clone, Copy)]
struct Fov {
    cx: f32,
    cy: f32,
    r: f32,
}

impl Fov {
    /// Centred; cut at the top and bottom when the image is landscape, as in DIARETDB1.
    fn new(w: u32, h: u32) -> Fov {
        let (w, h) = (w as f32, h as f32);
        Fov {
            cx: w / 2.0,
            cy: h / 2.0,
            r: (0.61 * h).min(0.47 * w),
        }
    }

    fn d2(&self, x: f32, y: f32) -> f32 {
        (x - self.cx).powi(2) + (y - self.cy).powi(2)
    }

    /// 255 where the pixel centre lies inside the circle.
    fn mask(&self, w: u32, h: u32) -> Vec<u8> {
        let mut m = vec![0u8; (w * h) as usize];
        for y in 0..h {
            for x in 0..w {
                if self.d2(x as f32 + 0.5, y as f32 + 0.5) <= self.r * self.r {
                    m[(y * w + x) as usize] = 255;
                }
            }
        }
        m
    }
}

/// Pixel index ranges `[x0, x1) x [y0, y1)` covering the square of half-side `rad` around
/// (cx, cy), clipped to the image; `None` when empty.
fn pixel_box(
    w: usize,
    h: usize,
    cx: f32,
    cy: f32,
    rad: f32,
) -> Option<(usize, usize, usize, usize)> {
    let x0 = (cx - rad).floor().max(0.0) as usize;
    let y0 = (cy - rad).floor().max(0.0) as usize;
    let x1 = ((cx + rad).ceil().max(0.0) as usize + 1).min(w);
    let y1 = ((cy + rad).ceil().max(0.0) as usize + 1).min(h);
    (x0 < x1 && y0 < y1).then_some((x0, x1, y0, y1))
}

/// A coverage layer of one kind of structure in 1/255 steps, combined by maximum (bytes, not
/// floats: a quarter of the memory to fault in and stream through per image).
struct Plane {
    w: usize,
    h: usize,
    v: Vec<u8>,
}

impl Plane {
    fn new(w: usize, h: usize) -> Plane {
        Plane {
            w,
            h,
            v: vec![0; w * h],
        }
    }

    /// A tapered segment (capsule) from p0 (radius r0) to p1 (radius r1), antialiased, with a
    /// rounded cross-section: centre `strength`, edges lighter.
    fn capsule(&mut self, p0: (f32, f32), p1: (f32, f32), r0: f32, r1: f32, strength: f32) {
        // Sub-pixel vessels: keep a 0.7 px core and lower the contrast instead.
        let thin = 0.7;
        let (r0, r1, strength) = if r0.max(r1) < thin {
            (thin, thin, strength * r0.max(r1) / thin)
        } else {
            (r0.max(thin), r1.max(thin), strength)
        };
        let (mx, my) = ((p0.0 + p1.0) / 2.0, (p0.1 + p1.1) / 2.0);
        let half = ((p1.0 - p0.0).hypot(p1.1 - p0.1)) / 2.0 + r0.max(r1) + 1.0;
        let Some((x0, x1, y0, y1)) = pixel_box(self.w, self.h, mx, my, half) else {
            return;
        };
        let (ex, ey) = (p1.0 - p0.0, p1.1 - p0.1);
        let len2 = (ex * ex + ey * ey).max(1e-6);
        for y in y0..y1 {
            let py = y as f32 + 0.5 - p0.1;
            let row = &mut self.v[y * self.w..(y + 1) * self.w];
            for (x, slot) in row.iter_mut().enumerate().take(x1).skip(x0) {
                let px = x as f32 + 0.5 - p0.0;
                let t = ((px * ex + py * ey) / len2).clamp(0.0, 1.0);
                let (qx, qy) = (px - t * ex, py - t * ey);
                let dist = (qx * qx + qy * qy).sqrt();
                let r = r0 + (r1 - r0) * t;
                let cover = (r - dist + 0.5).clamp(0.0, 1.0);
                if cover > 0.0 {
                    let rel = (dist / r).min(1.0);
                    let a = strength * cover * (1.0 - 0.3 * rel * rel);
                    *slot = (*slot).max(quantize(a));
                }
            }
        }
    }
}

/// Coverage in 0..=1 to 1/255 steps.
#[inline]
fn quantize(a: f32) -> u8 {
    (a * 255.0 + 0.5) as u8
}

/// An irregular ellipse: radius along direction psi (blob frame) is the ellipse radius times
/// 1 + sum_k amp_k cos(k psi + phase_k), k = 2, 3, 4.
#[derive(Debug, Clone)]
struct Blob {
    cx: f32,
    cy: f32,
    a: f32,
    b: f32,
    cos: f32,
    sin: f32,
    /// (amplitude, cos phase, sin phase) for k = 2, 3, 4.
    harm: [(f32, f32, f32); 3],
}

impl Blob {
    fn random(rng: &mut ChaCha8Rng, c: (f32, f32), a: f32, b: f32, irregular: f32) -> Blob {
        let rot: f32 = rng.random_range(0.0..PI);
        let mut harm = [(0.0, 1.0, 0.0); 3];
        for (k, h) in harm.iter_mut().enumerate() {
            let amp = irregular * rng.random::<f32>() / (k as f32 + 1.0);
            let ph: f32 = rng.random_range(0.0..TAU);
            *h = (amp, ph.cos(), ph.sin());
        }
        Blob {
            cx: c.0,
            cy: c.1,
            a,
            b,
            cos: rot.cos(),
            sin: rot.sin(),
            harm,
        }
    }

    /// Largest extent from the centre.
    fn rmax(&self) -> f32 {
        self.a.max(self.b) * (1.0 + self.harm.iter().map(|h| h.0).sum::<f32>())
    }

    /// Normalised distance: < 1 inside the outline, 1 on it.
    fn nd(&self, x: f32, y: f32) -> f32 {
        let (dx, dy) = (x - self.cx, y - self.cy);
        let u = dx * self.cos + dy * self.sin;
        let v = -dx * self.sin + dy * self.cos;
        let rr = (u * u + v * v).sqrt();
        if rr < 1e-4 {
            return 0.0;
        }
        let (c1, s1) = (u / rr, v / rr);
        let re = self.a * self.b / ((self.b * c1).powi(2) + (self.a * s1).powi(2)).sqrt();
        // Multiple angles without trigonometry.
        let (c2, s2) = (c1 * c1 - s1 * s1, 2.0 * s1 * c1);
        let (c3, s3) = (c2 * c1 - s2 * s1, s2 * c1 + c2 * s1);
        let (c4, s4) = (c2 * c2 - s2 * s2, 2.0 * s2 * c2);
        let mut m = 1.0;
        for ((ck, sk), (amp, cp, sp)) in [(c2, s2), (c3, s3), (c4, s4)].into_iter().zip(self.harm) {
            m += amp * (ck * cp - sk * sp);
        }
        rr / (re * m.max(0.2))
    }
}

/// How a lesion is marked in its ground-truth map.
struct Marking {
    /// (normalised-distance threshold, value), innermost first.
    levels: Vec<(f32, u8)>,
    /// An optional circle (radius in pixels, value) around the lesion.
    halo: Option<(f32, u8)>,
}

/// How a blob is drawn.
#[derive(Clone, Copy)]
enum Edge {
    /// A linear ramp of this width (normalised distance units) around nd = 1; darker centre.
    Sharp(f32),
    /// A soft cloud fading from nd = 0.2 to nd = 1.35.
    Fuzzy,
}

/// Draws `blob` into `plane` (max with `strength` coverage) and marks it in `gt`.
fn draw_blob(
    plane: &mut Plane,
    gt: &mut [u8],
    blob: &Blob,
    strength: f32,
    edge: Edge,
    mark: &Marking,
) {
    let rmax = blob.rmax();
    // At least ~1.2 px of ramp, whatever the blob size.
    let mean_r = (blob.a * blob.b).sqrt().max(0.5);
    let (ramp, drawn) = match edge {
        Edge::Sharp(w) => {
            let w = w.max(1.2 / mean_r);
            (w, 1.0 + w / 2.0)
        }
        Edge::Fuzzy => (0.0, 1.35),
    };
    // nd >= distance / rmax, so beyond `reach` pixels nothing is drawn or marked but the halo.
    let reach = rmax * mark.levels.iter().map(|l| l.0).fold(drawn, f32::max);
    let reach2 = reach * reach;
    let mut rad = reach + 1.0;
    if let Some((hr, _)) = mark.halo {
        rad = rad.max(hr + 1.0);
    }
    let Some((x0, x1, y0, y1)) = pixel_box(plane.w, plane.h, blob.cx, blob.cy, rad) else {
        return;
    };
    for y in y0..y1 {
        let fy = y as f32 + 0.5;
        for x in x0..x1 {
            let fx = x as f32 + 0.5;
            let d2 = (fx - blob.cx).powi(2) + (fy - blob.cy).powi(2);
            let nd = if d2 > reach2 {
                f32::INFINITY
            } else {
                blob.nd(fx, fy)
            };
            let a = match edge {
                Edge::Sharp(_) => {
                    let cover = ((1.0 - nd) / ramp + 0.5).clamp(0.0, 1.0);
                    cover * (0.82 + 0.18 * (1.0 - nd).clamp(0.0, 1.0))
                }
                Edge::Fuzzy => {
                    let t = ((1.35 - nd) / 1.15).clamp(0.0, 1.0);
                    t * t * (3.0 - 2.0 * t)
                }
            } * strength;
            let i = y * plane.w + x;
            plane.v[i] = plane.v[i].max(quantize(a));
            let mut val = 0u8;
            if let Some(&(_, v)) = mark.levels.iter().find(|l| nd <= l.0) {
                val = v;
            }
            if let Some((hr, hv)) = mark.halo {
                if d2 <= hr * hr {
                    val = val.max(hv);
                }
            }
            if val > gt[i] {
                gt[i] = val;
            }
        }
    }
}

/// Smooth value noise in [-1, 1]: random values on a grid of `cell` pixels, smoothstep-interpolated.
struct ValueGrid {
    gw: usize,
    cell: f32,
    v: Vec<f32>,
}

impl ValueGrid {
    fn new(rng: &mut ChaCha8Rng, w: usize, h: usize, cell: f32) -> ValueGrid {
        let cell = cell.max(2.0);
        let gw = (w as f32 / cell).ceil() as usize + 2;
        let gh = (h as f32 / cell).ceil() as usize + 2;
        let v = (0..gw * gh).map(|_| rng.random_range(-1.0..1.0)).collect();
        ValueGrid { gw, cell, v }
    }

    fn smooth(t: f32) -> f32 {
        t * t * (3.0 - 2.0 * t)
    }

    /// For each pixel column of a `w`-wide row: (grid column, smoothed weight of the next one).
    fn columns(&self, w: usize) -> Vec<(usize, f32)> {
        (0..w)
            .map(|x| {
                let g = (x as f32 + 0.5) / self.cell;
                (g as usize, Self::smooth(g.fract()))
            })
            .collect()
    }

    /// The grid interpolated vertically at pixel row `y` (one value per grid column), so that a
    /// pixel costs one horizontal interpolation.
    fn row(&self, y: usize, out: &mut Vec<f32>) {
        let g = (y as f32 + 0.5) / self.cell;
        let (iy, t) = (g as usize, Self::smooth(g.fract()));
        let (top, bot) = (
            &self.v[iy * self.gw..][..self.gw],
            &self.v[(iy + 1) * self.gw..][..self.gw],
        );
        out.clear();
        out.extend(top.iter().zip(bot).map(|(a, b)| a + (b - a) * t));
    }
}

/// Horizontal interpolation of a row made by [`ValueGrid::row`].
#[inline]
fn lerp_row(row: &[f32], (i, t): (usize, f32)) -> f32 {
    row[i] + (row[i + 1] - row[i]) * t
}

/// A stable per-pixel hash (fine noise without a generator call per pixel).
fn hash2(seed: u32, x: u32, y: u32) -> u32 {
    let mut h = seed ^ x.wrapping_mul(0x9E37_79B1) ^ y.wrapping_mul(0x85EB_CA77);
    h ^= h >> 15;
    h = h.wrapping_mul(0x2C1B_3C6D);
    h ^= h >> 12;
    h = h.wrapping_mul(0x297A_2D39);
    h ^= h >> 15;
    h
}

// ------------------------------------------------------------------------------------------------
// One image

/// One rendered image: RGB bytes and the four ground-truth maps in `Lesion::ALL` order.
struct Sample {
    rgb: Vec<u8>,
    truth: [Vec<u8>; 4],
}

/// A vessel segment growing step by step. Angles are in the eye's frame, where +x points from the
/// disc towards the macula (temporal); `side` mirrors that frame onto the screen.
struct Walker {
    x: f32,
    y: f32,
    theta: f32,
    target: f32,
    relax: f32,
    radius: f32,
    /// Radius factor per step.
    shrink: f32,
    left: f32,
    depth: u8,
    strength: f32,
}

fn pick<T: Copy>(rng: &mut ChaCha8Rng, items: &[T]) -> T {
    items[rng.random_range(0..items.len())]
}

/// Grows the vessel tree from the disc into `plane`.
fn grow_vessels(rng: &mut ChaCha8Rng, plane: &mut Plane, fov: &Fov, disc: (f32, f32), side: f32) {
    let r = fov.r;
    let ds = (0.01 * r).max(1.0);
    let walker = |rng: &mut ChaCha8Rng,
                  theta: f32,
                  target: f32,
                  relax: f32,
                  radius: f32,
                  len: f32,
                  strength: f32| {
        let off = 0.02 * r;
        Walker {
            x: disc.0 + rng.random_range(-off..off),
            y: disc.1 + rng.random_range(-off..off),
            theta,
            target,
            relax,
            radius,
            shrink: 0.3f32.powf(ds / len),
            left: len,
            depth: 0,
            strength,
        }
    };
    let mut stack = Vec::new();
    // Temporal arcades (upper and lower; a vein and an artery each), bending around the macula.
    for vert in [-1.0f32, 1.0] {
        for (radius, strength, start) in [(0.014, 0.85, 1.45), (0.0105, 0.65, 1.3)] {
            let theta = vert * (start + rng.random_range(-0.12..0.12));
            let target = vert * rng.random_range(-0.05..0.3);
            let len = r * rng.random_range(1.4..1.9);
            stack.push(walker(rng, theta, target, 0.022, radius * r, len, strength));
        }
    }
    // Nasal vessels.
    for _ in 0..rng.random_range(2..5) {
        let vert: f32 = if rng.random::<bool>() { 1.0 } else { -1.0 };
        let theta = PI + vert * rng.random_range(0.25..1.2);
        let radius = r * rng.random_range(0.005..0.009);
        let len = r * rng.random_range(0.7..1.1);
        stack.push(walker(
            rng,
            theta,
            theta + vert * 0.3,
            0.01,
            radius,
            len,
            0.72,
        ));
    }
    // Small vessels towards the macula.
    for _ in 0..rng.random_range(1..4) {
        let theta = rng.random_range(-0.4..0.4);
        let radius = r * rng.random_range(0.003..0.0045);
        let len = r * rng.random_range(0.2..0.4);
        stack.push(walker(rng, theta, theta, 0.01, radius, len, 0.6));
    }

    let limit2 = (0.985 * r).powi(2);
    while let Some(mut w) = stack.pop() {
        while w.left > 0.0 && w.radius >= 0.2 {
            w.target += rng.random_range(-0.02..0.02);
            w.theta += w.relax * (w.target - w.theta) + rng.random_range(-0.08..0.08);
            let nx = w.x + ds * side * w.theta.cos();
            let ny = w.y + ds * w.theta.sin();
            if fov.d2(nx, ny) > limit2 {
                break;
            }
            let nr = w.radius * w.shrink;
            plane.capsule((w.x, w.y), (nx, ny), w.radius, nr, w.strength);
            (w.x, w.y, w.radius) = (nx, ny, nr);
            w.left -= ds;
            let every = if w.depth == 0 { 0.25 } else { 0.4 } * r;
            if w.depth < 2 && w.left > 0.1 * r && rng.random::<f32>() < ds / every {
                let turn = pick(rng, &[-1.0f32, 1.0]) * rng.random_range(0.45..1.0);
                let theta = w.theta + turn;
                let len = (w.left * rng.random_range(0.5..0.95)).max(0.15 * r);
                stack.push(Walker {
                    x: w.x,
                    y: w.y,
                    theta,
                    target: theta + rng.random_range(-0.3..0.3),
                    relax: 0.02,
                    radius: w.radius * rng.random_range(0.5..0.75),
                    shrink: 0.3f32.powf(ds / len),
                    left: len,
                    depth: w.depth + 1,
                    strength: w.strength * rng.random_range(0.85..1.0),
                });
                w.radius *= 0.92;
            }
        }
    }
}

/// A random point inside the field of view (within 0.88 R), away from the disc and from the
/// `avoid` circles; `None` after too many tries.
fn place(
    rng: &mut ChaCha8Rng,
    fov: &Fov,
    disc: (f32, f32, f32),
    margin: f32,
    avoid: &[(f32, f32, f32)],
) -> Option<(f32, f32)> {
    for _ in 0..60 {
        let rho = fov.r * 0.88 * rng.random::<f32>().sqrt();
        let ang = rng.random_range(0.0..TAU);
        let (x, y) = (fov.cx + rho * ang.cos(), fov.cy + rho * ang.sin());
        let far = |c: &(f32, f32, f32)| (x - c.0).hypot(y - c.1) > c.2 + margin;
        if far(&(disc.0, disc.1, 1.8 * disc.2)) && avoid.iter().all(far) {
            return Some((x, y));
        }
    }
    None
}

fn render(seed: u64, stem: &str, width: u32, height: u32) -> Sample {
    let (w, h) = (width as usize, height as usize);
    let mut rng = rng_for(seed, stem, "synth");
    let rng = &mut rng;
    let fov = Fov::new(width, height);
    let r = fov.r;

    // Per-image look.
    let side: f32 = if rng.random::<bool>() { 1.0 } else { -1.0 };
    let base = [
        rng.random_range(210.0..235.0f32),
        rng.random_range(122.0..150.0f32),
        rng.random_range(22.0..44.0f32),
    ];
    let gain: f32 = rng.random_range(0.85..1.05);
    let disc_r = r * rng.random_range(0.085..0.1);
    let disc = (
        fov.cx - side * r * rng.random_range(0.5..0.6),
        fov.cy + r * rng.random_range(-0.08..0.08),
    );
    let macula = (
        disc.0 + side * r * rng.random_range(0.5..0.6),
        disc.1 + r * rng.random_range(-0.05..0.05),
    );
    let illum = ValueGrid::new(rng, w, h, r / 3.0);
    let texture = ValueGrid::new(rng, w, h, r / 35.0);
    let noise_seed: u32 = rng.random();

    let mut vessels = Plane::new(w, h);
    grow_vessels(rng, &mut vessels, &fov, disc, side);

    let mut truth: [Vec<u8>; 4] = std::array::from_fn(|_| vec![0u8; w * h]);
    let [gt_hem, gt_hard, gt_soft, gt_dots] = &mut truth;
    let mut red = Plane::new(w, h);
    let mut hard = Plane::new(w, h);
    let mut soft = Plane::new(w, h);
    let disc3 = (disc.0, disc.1, disc_r);
    let min_px = 1.5f32;

    // Hemorrhages: none in ~10% of images, otherwise 1..12, skewed to few; some in clusters.
    let mut taken: Vec<(f32, f32, f32)> = Vec::new();
    let n_hem = if rng.random::<f32>() < 0.1 {
        0
    } else {
        1 + (rng.random::<f32>().powf(1.5) * 15.0) as usize
    };
    for _ in 0..n_hem {
        let a = (r * (rng.random_range(0.014f32.ln()..0.085f32.ln())).exp()).max(min_px);
        let b = (a * rng.random_range(0.45..1.0)).max(min_px);
        let near = taken.last().copied().filter(|_| rng.random::<f32>() < 0.3);
        let c = match near {
            Some(p) => {
                let ang = rng.random_range(0.0..TAU);
                let d = p.2 + a * rng.random_range(0.3..1.2);
                (p.0 + d * ang.cos(), p.1 + d * ang.sin())
            }
            None => match place(rng, &fov, disc3, a, &[]) {
                Some(c) => c,
                None => continue,
            },
        };
        if fov.d2(c.0, c.1) > (0.92 * r).powi(2) {
            continue;
        }
        let blob = Blob::random(rng, c, a, b, 0.18);
        let core = pick(rng, &[252u8, 252, 252, 210, 210, 231, 168]);
        let mark = Marking {
            levels: vec![
                (0.92, core),
                (rng.random_range(1.1..1.35), pick(rng, &[84u8, 105, 126])),
            ],
            halo: (rng.random::<f32>() < 0.5).then(|| {
                (
                    blob.rmax() * rng.random_range(1.4..1.9),
                    pick(rng, &[42u8, 63]),
                )
            }),
        };
        let strength = rng.random_range(0.8..0.97);
        let edge = Edge::Sharp(rng.random_range(0.1..0.3));
        draw_blob(&mut red, gt_hem, &blob, strength, edge, &mark);
        taken.push((c.0, c.1, blob.rmax()));
    }

    // Red small dots (microaneurysms).
    for _ in 0..rng.random_range(0..9) {
        let a = (r * rng.random_range(0.004..0.009)).max(1.0);
        let Some(c) = place(rng, &fov, disc3, a, &[]) else {
            continue;
        };
        let b = a * rng.random_range(0.8..1.0);
        let blob = Blob::random(rng, c, a, b, 0.05);
        let mark = Marking {
            levels: vec![(1.3, pick(rng, &[252u8, 210, 168]))],
            halo: (rng.random::<f32>() < 0.5).then_some((a * 2.6, 63)),
        };
        draw_blob(&mut red, gt_dots, &blob, 0.85, Edge::Sharp(0.2), &mark);
    }

    // Soft exudates (cotton-wool spots): few, large, fuzzy, pale.
    for _ in 0..pick(rng, &[0usize, 0, 1, 1, 2]) {
        let a = (r * rng.random_range(0.025..0.055)).max(min_px);
        let Some(c) = place(rng, &fov, disc3, 1.5 * a, &taken) else {
            continue;
        };
        let b = a * rng.random_range(0.55..1.0);
        let blob = Blob::random(rng, c, a, b, 0.2);
        let mark = Marking {
            levels: vec![(0.8, pick(rng, &[252u8, 210, 168])), (1.3, 84)],
            halo: None,
        };
        draw_blob(
            &mut soft,
            gt_soft,
            &blob,
            rng.random_range(0.55..0.8),
            Edge::Fuzzy,
            &mark,
        );
        taken.push((c.0, c.1, blob.rmax() * 1.3));
    }

    // Hard exudates: clusters of small sharp bright yellow spots.
    for _ in 0..pick(rng, &[0usize, 0, 1, 1, 2, 3, 4]) {
        let cr = r * rng.random_range(0.05..0.14);
        let Some(c) = place(rng, &fov, disc3, cr, &taken) else {
            continue;
        };
        let halo = (rng.random::<f32>() < 0.7).then(|| pick(rng, &[42u8, 63, 84]));
        if let Some(v) = halo {
            // The whole cluster circled by some experts.
            let ring = Blob::random(rng, c, cr * 1.25, cr * 1.25, 0.0);
            let mark = Marking {
                levels: vec![(1.0, v)],
                halo: None,
            };
            draw_blob(&mut hard, gt_hard, &ring, 0.0, Edge::Sharp(0.1), &mark);
        }
        for _ in 0..rng.random_range(4..20) {
            let a = (r * rng.random_range(0.003..0.012)).max(1.0);
            let ang = rng.random_range(0.0..TAU);
            let d = cr * rng.random::<f32>().sqrt();
            let p = (c.0 + d * ang.cos(), c.1 + d * ang.sin());
            let b = a * rng.random_range(0.5..1.0);
            let blob = Blob::random(rng, p, a, b, 0.25);
            let mark = Marking {
                levels: vec![(1.15, pick(rng, &[252u8, 231, 210]))],
                halo: None,
            };
            let strength = rng.random_range(0.75..0.97);
            draw_blob(
                &mut hard,
                gt_hard,
                &blob,
                strength,
                Edge::Sharp(0.12),
                &mark,
            );
        }
        taken.push((c.0, c.1, cr * 1.25));
    }

    // Colours.
    let vessel_tint = [0.74f32, 0.42, 0.52];
    let red_tint = [
        rng.random_range(0.5..0.6f32),
        rng.random_range(0.26..0.34f32),
        rng.random_range(0.35..0.5f32),
    ];
    let soft_col = [236.0f32, 214.0, 168.0];
    let hard_col = [250.0f32, 232.0, 112.0];
    let disc_col = [250.0f32, 212.0, 118.0];
    let cup_col = [255.0f32, 238.0, 180.0];

    // Radial falloff per channel, tabulated over rho^2.
    const LUT: usize = 1024;
    let falloff: Vec<[f32; 3]> = (0..LUT)
        .map(|i| {
            let rho = (i as f32 / (LUT - 1) as f32).sqrt();
            // A slightly darker rim (25% at the edge).
            let rim = 1.0 - 25.0 * (rho - 0.9).max(0.0).powi(2);
            [
                (1.0 - 0.32 * rho.powf(2.4)) * rim,
                (1.0 - 0.45 * rho.powf(2.1)) * rim,
                (1.0 - 0.5 * rho.powf(2.1)) * rim,
            ]
        })
        .collect();

    // Macula darkening over m^2 / reach^2, and the disc (glow, disc cover, cup) over d^2 / reach^2.
    const SLUT: usize = 4096;
    let mac_reach2 = (0.6 * r).powi(2);
    let macula_lut: Vec<f32> = (0..SLUT)
        .map(|i| {
            let m2 = i as f32 / (SLUT - 1) as f32 * mac_reach2;
            1.0 - 0.2 * (-m2 / (2.0 * (0.2 * r).powi(2))).exp()
                - 0.12 * (-m2 / (2.0 * (0.045 * r).powi(2))).exp()
        })
        .collect();
    let disc_reach2 = (2.8 * disc_r).powi(2);
    let disc_lut: Vec<[f32; 3]> = (0..SLUT)
        .map(|i| {
            let d = (i as f32 / (SLUT - 1) as f32 * disc_reach2).sqrt() / disc_r;
            [
                1.0 + 0.3 * (-(d / 1.6).powi(2)).exp(),
                ((1.0 - d) / 0.15 + 0.5).clamp(0.0, 1.0) * 0.9,
                0.85 * (-(d / 0.45).powi(2)).exp(),
            ]
        })
        .collect();
    let lut_at = |v2: f32, reach2: f32| ((v2 / reach2) * (SLUT - 1) as f32) as usize;

    let icols = illum.columns(w);
    let tcols = texture.columns(w);
    let (mut irow, mut trow) = (Vec::new(), Vec::new());
    let inner2 = (r - 1.0).max(0.0).powi(2);
    let mut rgb = vec![0u8; w * h * 3];
    for (y, out_row) in rgb.chunks_exact_mut(w * 3).enumerate() {
        let fy = y as f32 + 0.5;
        illum.row(y, &mut irow);
        texture.row(y, &mut trow);
        let (dy2, my2, ddy2) = (
            (fy - fov.cy).powi(2),
            (fy - macula.1).powi(2),
            (fy - disc.1).powi(2),
        );
        for (x, px) in out_row.chunks_exact_mut(3).enumerate() {
            let fx = x as f32 + 0.5;
            let hsh = hash2(noise_seed, x as u32, y as u32);
            let d2 = (fx - fov.cx).powi(2) + dy2;
            let edge = if d2 <= inner2 {
                1.0
            } else {
                (r - d2.sqrt() + 0.5).clamp(0.0, 1.0)
            };
            if edge <= 0.0 {
                let v = (hsh % 3) as u8;
                px.copy_from_slice(&[v, v, v / 2]);
                continue;
            }
            let f = falloff[((d2 / (r * r)) * (LUT - 1) as f32).min((LUT - 1) as f32) as usize];
            let tex = lerp_row(&trow, tcols[x]);
            let light = gain * (1.0 + 0.1 * lerp_row(&irow, icols[x]) + 0.04 * tex);
            let mut c = [
                base[0] * f[0] * light,
                base[1] * f[1] * light,
                base[2] * f[2] * light,
            ];
            let m2 = (fx - macula.0).powi(2) + my2;
            if m2 < mac_reach2 {
                let k = macula_lut[lut_at(m2, mac_reach2)];
                c[0] *= 0.5 + 0.5 * k;
                c[1] *= k;
                c[2] *= k;
            }
            let dd2 = (fx - disc.0).powi(2) + ddy2;
            if dd2 < disc_reach2 {
                let [glow, a, cup] = disc_lut[lut_at(dd2, disc_reach2)];
                for k in 0..3 {
                    let g = c[k] * glow;
                    let g = g + (disc_col[k] * gain - g) * a;
                    c[k] = g + (cup_col[k] - g) * cup;
                }
            }
            let i = y * w + x;
            let (vq, sq, rq, xq) = (vessels.v[i], soft.v[i], red.v[i], hard.v[i]);
            if vq | sq | rq | xq != 0 {
                // Most pixels have no structure on them: skip the blending there.
                const Q: f32 = 1.0 / 255.0;
                let (va, sa, xa) = (vq as f32 * Q, sq as f32 * Q, xq as f32 * Q);
                let ra = rq as f32 * Q * (0.9 + 0.1 * tex);
                let lum = 0.75 + 0.25 * f[0] * light;
                for k in 0..3 {
                    let mut v = c[k];
                    v *= 1.0 - va * (1.0 - vessel_tint[k]);
                    v += (soft_col[k] * lum - v) * sa;
                    v *= 1.0 - ra * (1.0 - red_tint[k]);
                    c[k] = v + (hard_col[k] * lum - v) * xa;
                }
            }
            let grain = ((hsh >> 8) & 0x3ff) as f32 / 1023.0 - 0.5;
            let n = 1.0 + 0.05 * grain;
            for k in 0..3 {
                let chan = ((hsh >> (20 + 4 * k)) & 0xf) as f32 / 15.0 - 0.5;
                let v = c[k] * (n + 0.02 * chan);
                // `as` saturates (and maps NaN to 0); + 0.5 rounds the non-negative values.
                px[k] = (v * edge + 0.5) as u8;
            }
        }
    }
    Sample { rgb, truth }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;
    use std::path::PathBuf;

    fn small(count: usize) -> SynthOptions {
        SynthOptions {
            count,
            seed: 7,
            width: 160,
            height: 128,
        }
    }

    fn list(path: &Path) -> Vec<String> {
        fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect()
    }

    fn files(root: &Path) -> Vec<(PathBuf, Vec<u8>)> {
        let mut out: Vec<_> = walkdir::WalkDir::new(root)
            .into_iter()
            .map(|e| e.unwrap())
            .filter(|e| e.file_type().is_file())
            .map(|e| {
                let rel = e.path().strip_prefix(root).unwrap().to_path_buf();
                (rel, fs::read(e.path()).unwrap())
            })
            .collect();
        out.sort();
        out
    }

    #[test]
    fn layout_is_complete_and_lists_partition_images() {
        let dir = tempfile::tempdir().unwrap();
        let opts = small(5);
        write_synthetic(dir.path(), &opts).unwrap();
        let res = dir.path().join("resources");
        let mask = image::open(res.join(MASK_DIR).join("fmask.tif")).unwrap();
        let mask = mask.as_luma8().expect("fmask is 8-bit gray");
        assert_eq!(mask.dimensions(), (160, 128));
        assert!(mask.pixels().all(|p| p.0[0] == 0 || p.0[0] == 255));
        assert_eq!(mask.get_pixel(80, 64).0[0], 255);
        assert_eq!(mask.get_pixel(0, 0).0[0], 0);

        let gt_folders: BTreeSet<String> = fs::read_dir(res.join(GROUNDTRUTH_DIR))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        let expected: BTreeSet<String> =
            Lesion::ALL.iter().map(|l| l.folder().to_string()).collect();
        assert_eq!(gt_folders, expected);

        let mut all = BTreeSet::new();
        for i in 1..=opts.count {
            let name = format!("{}.png", stem(i));
            let img = image::open(res.join(IMAGES_DIR).join(&name)).unwrap();
            let img = img.as_rgb8().expect("fundus image is RGB");
            assert_eq!(img.dimensions(), (160, 128));
            for l in Lesion::ALL {
                let gt =
                    image::open(res.join(GROUNDTRUTH_DIR).join(l.folder()).join(&name)).unwrap();
                let gt = gt.as_luma8().expect("ground truth is 8-bit gray");
                assert_eq!(gt.dimensions(), (160, 128));
            }
            all.insert(format!("{IMAGES_DIR}/{name}"));
        }
        // No temporary files left behind.
        for (path, _) in files(dir.path()) {
            assert!(
                !path.to_string_lossy().contains(".synth-"),
                "{}",
                path.display()
            );
        }

        let train = list(&res.join("traindatasets/trainset.txt"));
        let test = list(&res.join("testdatasets/testset.txt"));
        assert_eq!(
            train,
            [1, 3, 4].map(|i| format!("{IMAGES_DIR}/{}.png", stem(i)))
        );
        let (train, test): (BTreeSet<_>, BTreeSet<_>) =
            (train.into_iter().collect(), test.into_iter().collect());
        assert!(train.is_disjoint(&test));
        assert_eq!(&train | &test, all);
    }

    #[test]
    fn split_follows_official_list_with_fallback() {
        let (train, test) = split_lists(89);
        assert_eq!(train, OFFICIAL_TRAIN.to_vec());
        assert_eq!(test.len(), 61);
        for count in 2..=12 {
            let (train, test) = split_lists(count);
            assert!(!train.is_empty() && !test.is_empty(), "count {count}");
            assert_eq!(train.len() + test.len(), count);
        }
        assert_eq!(split_lists(2), (vec![1], vec![2]));
        assert_eq!(split_lists(3), (vec![1, 3], vec![2]));
        assert_eq!(split_lists(1), (vec![1], vec![]));
    }

    #[test]
    fn ground_truth_values_are_multiples_of_21() {
        let dir = tempfile::tempdir().unwrap();
        let opts = SynthOptions {
            count: 6,
            seed: 3,
            width: 300,
            height: 230,
        };
        write_synthetic(dir.path(), &opts).unwrap();
        let gt = dir.path().join("resources").join(GROUNDTRUTH_DIR);
        let mut seen = [false; 4];
        for i in 1..=opts.count {
            for (k, l) in Lesion::ALL.iter().enumerate() {
                let map = image::open(gt.join(l.folder()).join(format!("{}.png", stem(i))))
                    .unwrap()
                    .into_luma8();
                for p in map.pixels() {
                    assert_eq!(p.0[0] % 21, 0, "{} {}", l.folder(), p.0[0]);
                    assert!(p.0[0] <= 252);
                }
                seen[k] |= map.pixels().any(|p| p.0[0] >= 189);
            }
        }
        assert!(seen[0], "some hemorrhage core in 6 images");
    }

    #[test]
    fn same_options_give_identical_bytes() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let opts = small(4);
        write_synthetic(a.path(), &opts).unwrap();
        write_synthetic(b.path(), &opts).unwrap();
        let (fa, fb) = (files(a.path()), files(b.path()));
        assert_eq!(fa.len(), 1 + 2 + 4 * 5);
        assert!(fa == fb, "two runs differ");
        // Another seed gives other pictures.
        let c = tempfile::tempdir().unwrap();
        write_synthetic(c.path(), &SynthOptions { seed: 8, ..opts }).unwrap();
        let img = |root: &Path| {
            fs::read(root.join("resources").join(IMAGES_DIR).join("image001.png")).unwrap()
        };
        assert_ne!(img(a.path()), img(c.path()));
    }

    /// Learnability sanity check: hemorrhage cores (>= 189) are darker and redder than the rest of
    /// the field of view, and the images hold hemorrhages at all.
    #[test]
    fn hemorrhage_cores_are_dark_red() {
        let dir = tempfile::tempdir().unwrap();
        let opts = SynthOptions {
            count: 8,
            seed: 11,
            width: 375,
            height: 288,
        };
        write_synthetic(dir.path(), &opts).unwrap();
        let res = dir.path().join("resources");
        let mask = image::open(res.join(MASK_DIR).join("fmask.tif"))
            .unwrap()
            .into_luma8();
        let (mut les, mut bg) = ([0f64; 3], [0f64; 3]);
        let (mut n_les, mut n_bg) = (0f64, 0f64);
        let mut with_hem = 0;
        for i in 1..=opts.count {
            let name = format!("{}.png", stem(i));
            let img = image::open(res.join(IMAGES_DIR).join(&name))
                .unwrap()
                .into_rgb8();
            let maps: Vec<_> = Lesion::ALL
                .iter()
                .map(|l| {
                    image::open(res.join(GROUNDTRUTH_DIR).join(l.folder()).join(&name))
                        .unwrap()
                        .into_luma8()
                })
                .collect();
            let mut any = false;
            for (x, y, p) in img.enumerate_pixels() {
                if mask.get_pixel(x, y).0[0] == 0 {
                    continue;
                }
                let v: Vec<u8> = maps.iter().map(|m| m.get_pixel(x, y).0[0]).collect();
                if v[0] >= 189 {
                    any = true;
                    n_les += 1.0;
                    for (sum, &c) in les.iter_mut().zip(&p.0) {
                        *sum += c as f64;
                    }
                } else if v.iter().all(|&v| v == 0) {
                    n_bg += 1.0;
                    for (sum, &c) in bg.iter_mut().zip(&p.0) {
                        *sum += c as f64;
                    }
                }
            }
            with_hem += any as usize;
        }
        assert!(
            with_hem >= 5,
            "only {with_hem} of 8 images have hemorrhage cores"
        );
        let les = les.map(|s| s / n_les);
        let bg = bg.map(|s| s / n_bg);
        assert!(
            les.iter().sum::<f64>() < 0.75 * bg.iter().sum::<f64>(),
            "{les:?} vs {bg:?}"
        );
        assert!(les[1] < 0.6 * bg[1], "green: {les:?} vs {bg:?}");
        assert!(les[0] > les[1] && les[0] > les[2], "still red: {les:?}");
    }

    #[test]
    fn tiny_sizes_work_and_bad_options_fail() {
        let dir = tempfile::tempdir().unwrap();
        for (w, h) in [(32, 32), (64, 48), (160, 128)] {
            let opts = SynthOptions {
                count: 3,
                seed: 2,
                width: w,
                height: h,
            };
            write_synthetic(&dir.path().join(format!("{w}x{h}")), &opts).unwrap();
        }
        let opts = SynthOptions {
            width: 16,
            ..small(1)
        };
        assert!(write_synthetic(dir.path(), &opts).is_err());
        assert!(write_synthetic(dir.path(), &small(0)).is_err());
    }
}
