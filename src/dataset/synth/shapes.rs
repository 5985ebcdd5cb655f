//! Geometry shared by every drawing of a synthetic image: the circular field of view, coverage
//! planes (one per kind of structure, combined by maximum) with antialiased capsules for vessels,
//! and irregular blobs drawn into a plane and marked in a ground-truth map at the same time, so
//! that what is drawn and what is marked coincide.

use std::f32::consts::{PI, TAU};

use rand::Rng;
use rand_chacha::ChaCha8Rng;

/// The circular field of view, the same for every image of a tree (one fmask for all).
#[derive(Debug, Clone, Copy)]
pub(super) struct Fov {
    pub(super) cx: f32,
    pub(super) cy: f32,
    pub(super) r: f32,
}

impl Fov {
    /// Centred; cut at the top and bottom when the image is landscape, as in DIARETDB1.
    pub(super) fn new(w: u32, h: u32) -> Fov {
        let (w, h) = (w as f32, h as f32);
        Fov {
            cx: w / 2.0,
            cy: h / 2.0,
            r: (0.61 * h).min(0.47 * w),
        }
    }

    pub(super) fn d2(&self, x: f32, y: f32) -> f32 {
        (x - self.cx).powi(2) + (y - self.cy).powi(2)
    }

    /// 255 where the pixel centre lies inside the circle.
    pub(super) fn mask(&self, w: u32, h: u32) -> Vec<u8> {
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
pub(super) struct Plane {
    w: usize,
    h: usize,
    pub(super) v: Vec<u8>,
}

impl Plane {
    pub(super) fn new(w: usize, h: usize) -> Plane {
        Plane {
            w,
            h,
            v: vec![0; w * h],
        }
    }

    /// A tapered segment (capsule) from p0 (radius r0) to p1 (radius r1), antialiased, with a
    /// rounded cross-section: centre `strength`, edges lighter.
    pub(super) fn capsule(
        &mut self,
        p0: (f32, f32),
        p1: (f32, f32),
        r0: f32,
        r1: f32,
        strength: f32,
    ) {
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
pub(super) struct Blob {
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
    pub(super) fn random(
        rng: &mut ChaCha8Rng,
        c: (f32, f32),
        a: f32,
        b: f32,
        irregular: f32,
    ) -> Blob {
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
    pub(super) fn rmax(&self) -> f32 {
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
pub(super) struct Marking {
    /// (normalised-distance threshold, value), innermost first.
    pub(super) levels: Vec<(f32, u8)>,
    /// An optional circle (radius in pixels, value) around the lesion.
    pub(super) halo: Option<(f32, u8)>,
}

/// How a blob is drawn.
#[derive(Clone, Copy)]
pub(super) enum Edge {
    /// A linear ramp of this width (normalised distance units) around nd = 1; darker centre.
    Sharp(f32),
    /// A soft cloud fading from nd = 0.2 to nd = 1.35.
    Fuzzy,
}

/// Draws `blob` into `plane` (max with `strength` coverage) and marks it in `gt`.
pub(super) fn draw_blob(
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
