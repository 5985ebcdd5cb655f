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
    let (wu, hu) = (w as usize, h as usize);
    let img = src.image.as_raw();
    let msk = src.mask.as_raw();
    let fill = [
        f32::from(src.fill[0]),
        f32::from(src.fill[1]),
        f32::from(src.fill[2]),
    ];
    let mut out_img = vec![0u8; wu * hu * 3];
    let mut out_msk = vec![0u8; wu * hu];
    let mut coords = vec![[0f32; 2]; wu];
    let (wi, hi) = (w as i32, h as i32);

    for y in 0..hu {
        map.row(y, &mut coords);
        let orow = &mut out_img[y * wu * 3..(y + 1) * wu * 3];
        let mrow = &mut out_msk[y * wu..(y + 1) * wu];
        for (x, &[sx, sy]) in coords.iter().enumerate() {
            let fx0 = sx.floor();
            let fy0 = sy.floor();
            let ax = sx - fx0;
            let ay = sy - fy0;
            let weights = [
                (1.0 - ax) * (1.0 - ay),
                ax * (1.0 - ay),
                (1.0 - ax) * ay,
                ax * ay,
            ];
            // Far outside: skip the arithmetic (also guards the i32 casts against huge values).
            if !(fx0 > -2.0 && fy0 > -2.0 && fx0 < w as f32 + 1.0 && fy0 < h as f32 + 1.0) {
                match border {
                    Border::Fill => {
                        orow[x * 3..x * 3 + 3].copy_from_slice(&src.fill.0);
                        mrow[x] = 0;
                        continue;
                    }
                    Border::Clamp => {}
                }
            }
            let x0 = (fx0.clamp(-2.0, w as f32 + 1.0)) as i32;
            let y0 = (fy0.clamp(-2.0, h as f32 + 1.0)) as i32;
            let taps = [(x0, y0), (x0 + 1, y0), (x0, y0 + 1), (x0 + 1, y0 + 1)];
            let mut acc = [0f32; 3];
            let mut m = 0f32;
            for (&(tx, ty), &wgt) in taps.iter().zip(&weights) {
                if wgt == 0.0 {
                    continue;
                }
                let inside = tx >= 0 && ty >= 0 && tx < wi && ty < hi;
                let (cx, cy) = if inside || border == Border::Clamp {
                    (tx.clamp(0, wi - 1) as usize, ty.clamp(0, hi - 1) as usize)
                } else {
                    acc[0] += wgt * fill[0];
                    acc[1] += wgt * fill[1];
                    acc[2] += wgt * fill[2];
                    continue;
                };
                let i = cy * wu + cx;
                let p = &img[i * 3..i * 3 + 3];
                acc[0] += wgt * f32::from(p[0]);
                acc[1] += wgt * f32::from(p[1]);
                acc[2] += wgt * f32::from(p[2]);
                if msk[i] >= 128 {
                    m += wgt;
                }
            }
            let o = &mut orow[x * 3..x * 3 + 3];
            for c in 0..3 {
                o[c] = (acc[c] + 0.5).clamp(0.0, 255.0) as u8;
            }
            mrow[x] = if m >= 0.5 { 255 } else { 0 };
        }
    }
    Pair {
        image: RgbImage::from_raw(w, h, out_img).expect("buffer size"),
        mask: GrayImage::from_raw(w, h, out_msk).expect("buffer size"),
        fill: src.fill,
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
