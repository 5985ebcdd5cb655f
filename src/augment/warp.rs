//! The one remap core behind every geometric variant: for each output pixel a map gives the source
//! coordinate; the image is sampled bilinearly and the mask is warped as a {0,1} field bilinearly,
//! then thresholded at 0.5 (binary, without nearest-neighbour staircase). Knows nothing of files.

use image::{GrayImage, Rgb, RgbImage};

/// An image/mask pair of the same size. Mask values are 0 or 255.
#[derive(Debug, Clone, PartialEq)]
pub struct Pair {
    pub image: RgbImage,
    pub mask: GrayImage,
    /// Colour used where a warp samples outside the picture (the source's corner colour).
    pub fill: Rgb<u8>,
}

/// What a sample outside the source reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Border {
    /// Image: the fill colour; mask: 0.
    Fill,
    /// The nearest edge pixel (image and mask).
    Clamp,
}

/// Fills `out[x]` with the source coordinate (x, y), in pixels with centres at integers, of every
/// output pixel of row `y`.
pub trait CoordMap {
    fn row(&self, y: usize, out: &mut [[f32; 2]]);
}

impl<F: Fn(usize, &mut [[f32; 2]])> CoordMap for F {
    fn row(&self, y: usize, out: &mut [[f32; 2]]) {
        self(y, out)
    }
}

/// Warps `src` through `map` into a new pair of the same size.
pub fn remap(src: &Pair, map: &dyn CoordMap, border: Border) -> Pair {
    let (w, h) = src.image.dimensions();
    SampleMap::new(w, h, map, border).apply(src)
}

/// Sub-pixel precision of the bilinear weights: 1/256 pixel (OpenCV's remap uses 1/32).
const FRAC_BITS: u32 = 8;
const ONE: i32 = 1 << FRAC_BITS;

/// One output pixel's sampling position: top-left tap and fixed-point fractions.
#[derive(Debug, Clone, Copy)]
struct Tap {
    x0: i32,
    y0: i32,
    fx: u16,
    fy: u16,
}

/// A coordinate map resolved to integer taps and fixed-point weights, for one image size. It does
/// not depend on the image, so a deterministic variant's map is built once and reused for every
/// source; applying it is a pure gather with integer arithmetic.
#[derive(Debug, Clone)]
pub struct SampleMap {
    w: u32,
    h: u32,
    border: Border,
    taps: Vec<Tap>,
}

impl SampleMap {
    pub fn new(w: u32, h: u32, map: &dyn CoordMap, border: Border) -> Self {
        let (wu, hu) = (w as usize, h as usize);
        let mut taps = Vec::with_capacity(wu * hu);
        let mut coords = vec![[0f32; 2]; wu];
        // Far-away coordinates (and NaN) are pinned just outside, where they read the border.
        let (xmax, ymax) = (w as f32 + 2.0, h as f32 + 2.0);
        for y in 0..hu {
            map.row(y, &mut coords);
            for &[sx, sy] in &coords {
                let sx = if sx.is_nan() {
                    -3.0
                } else {
                    sx.clamp(-3.0, xmax)
                };
                let sy = if sy.is_nan() {
                    -3.0
                } else {
                    sy.clamp(-3.0, ymax)
                };
                let (fx0, fy0) = (sx.floor(), sy.floor());
                let mut x0 = fx0 as i32;
                let mut y0 = fy0 as i32;
                let mut fx = ((sx - fx0) * ONE as f32).round() as i32;
                let mut fy = ((sy - fy0) * ONE as f32).round() as i32;
                if fx == ONE {
                    x0 += 1;
                    fx = 0;
                }
                if fy == ONE {
                    y0 += 1;
                    fy = 0;
                }
                taps.push(Tap {
                    x0,
                    y0,
                    fx: fx as u16,
                    fy: fy as u16,
                });
            }
        }
        Self { w, h, border, taps }
    }

    /// Warps a pair of this map's size.
    pub fn apply(&self, src: &Pair) -> Pair {
        let (w, h) = src.image.dimensions();
        assert_eq!(
            (w, h),
            (self.w, self.h),
            "sample map size differs from the pair"
        );
        let (wi, hi) = (w as i32, h as i32);
        let wu = w as usize;
        let img = src.image.as_raw();
        let msk = src.mask.as_raw();
        let mut out_img = vec![0u8; img.len()];
        let mut out_msk = vec![0u8; msk.len()];
        let half = 1i32 << (2 * FRAC_BITS - 1);
        let shift = 2 * FRAC_BITS;
        for ((t, out), om) in self
            .taps
            .iter()
            .zip(out_img.chunks_exact_mut(3))
            .zip(out_msk.iter_mut())
        {
            let (fx, fy) = (i32::from(t.fx), i32::from(t.fy));
            let wts = [
                (ONE - fx) * (ONE - fy),
                fx * (ONE - fy),
                (ONE - fx) * fy,
                fx * fy,
            ];
            if t.x0 >= 0 && t.y0 >= 0 && t.x0 < wi - 1 && t.y0 < hi - 1 {
                // All four taps inside: the common case, no border logic. Two 2-pixel slices
                // let the compiler drop the per-tap bounds checks.
                let p = t.y0 as usize * wu + t.x0 as usize;
                let top = &img[p * 3..p * 3 + 6];
                let bot = &img[(p + wu) * 3..(p + wu) * 3 + 6];
                for c in 0..3 {
                    let v = wts[0] * i32::from(top[c])
                        + wts[1] * i32::from(top[c + 3])
                        + wts[2] * i32::from(bot[c])
                        + wts[3] * i32::from(bot[c + 3]);
                    out[c] = ((v + half) >> shift) as u8;
                }
                let mt = &msk[p..p + 2];
                let mb = &msk[p + wu..p + wu + 2];
                if (mt[0] | mt[1] | mb[0] | mb[1]) >= 128 {
                    let on = |v: u8| i32::from(v >= 128);
                    let m = wts[0] * on(mt[0])
                        + wts[1] * on(mt[1])
                        + wts[2] * on(mb[0])
                        + wts[3] * on(mb[1]);
                    // Mask: the bilinear {0,1} field thresholded at 0.5.
                    *om = if m >= half { 255 } else { 0 };
                }
                continue;
            }
            let mut acc = [half; 3];
            let mut m = 0i32;
            let corners = [
                (t.x0, t.y0),
                (t.x0 + 1, t.y0),
                (t.x0, t.y0 + 1),
                (t.x0 + 1, t.y0 + 1),
            ];
            for (k, &(x, y)) in corners.iter().enumerate() {
                if wts[k] == 0 {
                    continue;
                }
                let inside = x >= 0 && y >= 0 && x < wi && y < hi;
                if !inside && self.border == Border::Fill {
                    for (a, f) in acc.iter_mut().zip(src.fill.0) {
                        *a += wts[k] * i32::from(f);
                    }
                    continue;
                }
                let o = y.clamp(0, hi - 1) as usize * wu + x.clamp(0, wi - 1) as usize;
                for (a, v) in acc.iter_mut().zip(&img[o * 3..o * 3 + 3]) {
                    *a += wts[k] * i32::from(*v);
                }
                if msk[o] >= 128 {
                    m += wts[k];
                }
            }
            for (o, a) in out.iter_mut().zip(acc) {
                *o = (a >> shift) as u8;
            }
            *om = if m >= half { 255 } else { 0 };
        }
        Pair {
            image: RgbImage::from_raw(w, h, out_img).expect("buffer size"),
            mask: GrayImage::from_raw(w, h, out_msk).expect("buffer size"),
            fill: src.fill,
        }
    }
}

/// The identity map (for tests and as a building block).
pub fn identity_row(y: usize, out: &mut [[f32; 2]]) {
    for (x, c) in out.iter_mut().enumerate() {
        *c = [x as f32, y as f32];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gradient_pair(n: u32) -> Pair {
        let image = RgbImage::from_fn(n, n, |x, y| Rgb([(x * 7) as u8, (y * 5) as u8, 9]));
        let mask = GrayImage::from_fn(n, n, |x, y| {
            image::Luma([if (x / 4 + y / 4) % 2 == 0 { 255 } else { 0 }])
        });
        Pair {
            image,
            mask,
            fill: Rgb([1, 2, 3]),
        }
    }

    #[test]
    fn identity_map_reproduces_the_source() {
        let p = gradient_pair(32);
        for border in [Border::Fill, Border::Clamp] {
            let out = remap(&p, &identity_row, border);
            assert_eq!(out, p);
        }
    }

    #[test]
    fn outside_reads_fill_or_edge() {
        let p = gradient_pair(16);
        let far = |_y: usize, o: &mut [[f32; 2]]| o.fill([-100.0, 5.0]);
        let f = remap(&p, &far, Border::Fill);
        assert!(f.image.pixels().all(|px| *px == Rgb([1, 2, 3])));
        assert!(f.mask.pixels().all(|m| m[0] == 0));
        let c = remap(&p, &far, Border::Clamp);
        assert!(c.image.pixels().all(|px| *px == *p.image.get_pixel(0, 5)));
    }

    #[test]
    fn half_pixel_shift_averages_neighbours() {
        let p = gradient_pair(16);
        let shift = |y: usize, o: &mut [[f32; 2]]| {
            for (x, c) in o.iter_mut().enumerate() {
                *c = [x as f32 + 0.5, y as f32];
            }
        };
        let out = remap(&p, &shift, Border::Clamp);
        // red = 7x: halfway between 7*3 and 7*4 is 24.5 -> rounds to 25.
        assert_eq!(out.image.get_pixel(3, 0)[0], 25);
    }
}
