//! One image: the per-image look (colour, illumination, disc and macula position), the vessel
//! tree and the lesions, composited pixel by pixel into RGB with radial falloff, macula
//! darkening, the disc glow and fine grain. Also the cheap noise sources the compositing uses.

use rand::Rng;
use rand_chacha::ChaCha8Rng;

use crate::rng::rng_for;

use super::lesions::{draw_lesions, Lesions};
use super::shapes::{Fov, Plane};
use super::vessels::grow_vessels;

/// One rendered image: RGB bytes and the four ground-truth maps in `Lesion::ALL` order.
pub(super) struct Sample {
    pub(super) rgb: Vec<u8>,
    pub(super) truth: [Vec<u8>; 4],
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

/// Renders image `stem` of the tree made with `seed`; a pure function of its arguments.
pub(super) fn render(seed: u64, stem: &str, width: u32, height: u32) -> Sample {
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

    let Lesions {
        truth,
        red,
        hard,
        soft,
    } = draw_lesions(rng, &fov, w, h, disc, disc_r);

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
