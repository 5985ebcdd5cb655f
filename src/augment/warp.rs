//! The one remap core behind every geometric variant: for each output pixel a map gives the source
//! coordinate; the image is sampled bilinearly and the mask is warped as a {0,1} field bilinearly,
//! then thresholded at 0.5 (binary, without nearest-neighbour staircase). Knows nothing of files.

use image::{GrayImage, Rgb, RgbImage};

/// An image/mask pair of the same size. Mask values are 0 or 255.
#[derive(Debug, Clone, PartialEq)]
pub struct Pair {
    /// The RGB picture.
    pub image: RgbImage,
    /// The lesion mask, same size, 0 (background) or 255 (lesion).
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

/// A pair laid out for the remap kernel: each pixel's R, G, B and mask bit (1 where the mask is
/// at least 128, else 0) in 4 consecutive bytes, so that one 8-byte load reads two neighbouring
/// pixels with their masks, and the mask's bilinear field is interpolated in the same lanes as
/// the colours. Built once per source and shared by all its warps.
#[derive(Debug)]
pub struct Packed<'a> {
    pair: &'a Pair,
    rgbm: Vec<u8>,
}

impl<'a> Packed<'a> {
    /// Packs `pair` (4 bytes per pixel).
    pub fn new(pair: &'a Pair) -> Self {
        let rgbm = pair
            .image
            .as_raw()
            .chunks_exact(3)
            .zip(pair.mask.as_raw())
            .flat_map(|(c, &m)| [c[0], c[1], c[2], u8::from(m >= 128)])
            .collect();
        Packed { pair, rgbm }
    }

    /// The pair it was packed from.
    pub fn pair(&self) -> &'a Pair {
        self.pair
    }
}

/// Fills `out[x]` with the source coordinate (x, y), in pixels with centres at integers, of every
/// output pixel of row `y`.
pub trait CoordMap {
    /// Writes the source `[x, y]` of output pixels `(0..out.len(), y)` into `out`.
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
/// Rounding term and shift of a sum of four weight products (weights sum to `ONE * ONE`).
const HALF: i32 = 1 << (2 * FRAC_BITS - 1);
const SHIFT: u32 = 2 * FRAC_BITS;

/// One output pixel's sampling position: top-left tap and fixed-point fractions in `0..ONE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Tap {
    x0: i32,
    y0: i32,
    fx: u8,
    fy: u8,
}

impl Tap {
    /// Bilinear weights of the four taps (top-left, top-right, bottom-left, bottom-right);
    /// they sum to `ONE * ONE`.
    #[inline]
    fn weights(&self) -> [i32; 4] {
        let (fx, fy) = (i32::from(self.fx), i32::from(self.fy));
        [
            (ONE - fx) * (ONE - fy),
            fx * (ONE - fy),
            (ONE - fx) * fy,
            fx * fy,
        ]
    }
}

/// Integer part and 8-bit fraction of a coordinate clamped to [-3, max] (NaN to -3): (floor(s),
/// round(frac * 256)), with a fraction that rounds up to 256 carried into the integer part. With
/// `max` a picture side + 2, far-away coordinates (and NaN) are pinned just outside the picture,
/// where they read the border.
///
/// floor and round are done with integer conversions (exact for this range, and the same values
/// as `f32::floor` / `f32::round`): on the x86-64 baseline those two are library calls.
#[inline]
fn split(s: f32, max: f32) -> (i32, u8) {
    let s = s.max(-3.0).min(max); // `max` returns the other operand for NaN
                                  // SAFETY: `s` is finite and within [-3, max] (max is at most a picture side + 2), so the
                                  // truncation toward zero fits an i32. Unchecked: the saturating `as` does not vectorize.
    let t: i32 = unsafe { s.to_int_unchecked() };
    let i = t - i32::from(t as f32 > s);
    let d = (s - i as f32) * ONE as f32; // in [0, ONE)
                                         // SAFETY: `d` is finite and within [0, ONE).
    let k: i32 = unsafe { d.to_int_unchecked() };
    let f = k + i32::from(d - k as f32 >= 0.5); // round half away from zero, in [0, ONE]
    (i + (f >> FRAC_BITS), f as u8) // f == ONE: carry, fraction 0
}

/// What a run of consecutive output pixels needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RunKind {
    /// All four taps inside the picture: a plain gather, no border logic.
    Inside,
    /// Every tap that carries weight is outside and the border is [`Border::Fill`]: the output is
    /// exactly the fill colour and mask 0.
    Fill,
    /// Anything else (taps on both sides of the border, or clamped): the general sampler.
    Edge,
    /// The tap is the output pixel itself with zero fractions (a lens warp outside its discs):
    /// the output is the source pixel, copied (the bilinear sum of weights ONE * ONE, 0, 0, 0
    /// gives exactly that value, and the mask bit).
    Same,
}

/// `len` consecutive output pixels (in row-major order) of one kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Run {
    kind: RunKind,
    len: u32,
}

/// Top-left tap of an [`RunKind::Inside`] pixel as an index into the source (y0 * w + x0), and
/// its fractions. `repr(C)`: the AVX2 kernel reads four taps (32 bytes) at once, with `fx` and
/// `fy` at bytes 4 and 5 of each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C)]
struct InsideTap {
    index: u32,
    fx: u8,
    fy: u8,
}

/// A coordinate map resolved to integer taps and fixed-point weights, for one image size. It does
/// not depend on the image, so a deterministic variant's map is built once and reused for every
/// source; applying it is a pure gather with integer arithmetic.
///
/// Output pixels are grouped in runs of one [`RunKind`], so the common case (all taps inside)
/// runs without border logic and pixels that only read the fill colour cost a copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SampleMap {
    w: u32,
    h: u32,
    border: Border,
    runs: Vec<Run>,
    /// Taps of the `Inside` pixels, in output order.
    inside: Vec<InsideTap>,
    /// Taps of the `Edge` pixels, in output order.
    edge: Vec<Tap>,
}

impl SampleMap {
    /// Resolves `map` for a `w` x `h` picture. Coordinates are in pixels with centres at integers.
    pub fn new(w: u32, h: u32, map: &dyn CoordMap, border: Border) -> Self {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2 (checked just above).
            return unsafe { Self::new_avx2(w, h, map, border) };
        }
        Self::new_lanes(w, h, map, border)
    }

    /// [`Self::new_lanes`] compiled for AVX2: the same float and integer operations in wider
    /// registers (no fused multiply-add), so the same taps.
    ///
    /// # Safety
    /// The CPU must support AVX2.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn new_avx2(w: u32, h: u32, map: &dyn CoordMap, border: Border) -> Self {
        Self::new_lanes(w, h, map, border)
    }

    #[inline(always)]
    fn new_lanes(w: u32, h: u32, map: &dyn CoordMap, border: Border) -> Self {
        let (wu, hu) = (w as usize, h as usize);
        let mut out = Self {
            w,
            h,
            border,
            runs: Vec::new(),
            inside: Vec::with_capacity(wu * hu),
            edge: Vec::new(),
        };
        let mut coords = vec![[0f32; 2]; wu];
        // One row's taps, a column per field, so that resolving them vectorizes.
        let (mut xs, mut ys) = (vec![0i32; wu], vec![0i32; wu]);
        let (mut fxs, mut fys) = (vec![0u8; wu], vec![0u8; wu]);
        let (xmax, ymax) = (w as f32 + 2.0, h as f32 + 2.0);
        let mut run = Run {
            kind: RunKind::Inside,
            len: 0,
        };
        for y in 0..hu {
            map.row(y, &mut coords);
            for ((((&[sx, sy], x0), y0), fx), fy) in coords
                .iter()
                .zip(&mut xs)
                .zip(&mut ys)
                .zip(&mut fxs)
                .zip(&mut fys)
            {
                (*x0, *fx) = split(sx, xmax);
                (*y0, *fy) = split(sy, ymax);
            }
            let tap = |i: usize| Tap {
                x0: xs[i],
                y0: ys[i],
                fx: fxs[i],
                fy: fys[i],
            };
            // Inside taps come in stretches (a warp's inside is a connected region): each is
            // copied in one go; the others are classified one by one.
            let inside = |i: usize| (xs[i] as u32) < w - 1 && (ys[i] as u32) < h - 1;
            let same = |i: usize| {
                fxs[i] == 0 && fys[i] == 0 && xs[i] == i as i32 && ys[i] == y as i32 && inside(i)
            };
            let mut x = 0;
            while x < wu {
                let (kind, len) = if same(x) {
                    (
                        RunKind::Same,
                        (x..wu).position(|i| !same(i)).unwrap_or(wu - x),
                    )
                } else if inside(x) {
                    let len = (x..wu)
                        .position(|i| !inside(i) || same(i))
                        .unwrap_or(wu - x);
                    out.inside.extend((x..x + len).map(|i| InsideTap {
                        index: ys[i] as u32 * w + xs[i] as u32,
                        fx: fxs[i],
                        fy: fys[i],
                    }));
                    (RunKind::Inside, len)
                } else {
                    let t = tap(x);
                    let kind = out.classify(&t);
                    if kind == RunKind::Edge {
                        out.edge.push(t);
                    }
                    (kind, 1)
                };
                if kind == run.kind {
                    run.len += len as u32;
                } else {
                    if run.len > 0 {
                        out.runs.push(run);
                    }
                    run = Run {
                        kind,
                        len: len as u32,
                    };
                }
                x += len;
            }
        }
        if run.len > 0 {
            out.runs.push(run);
        }
        out
    }

    fn classify(&self, t: &Tap) -> RunKind {
        let (wi, hi) = (self.w as i32, self.h as i32);
        if t.x0 >= 0 && t.y0 >= 0 && t.x0 < wi - 1 && t.y0 < hi - 1 {
            return RunKind::Inside;
        }
        if self.border == Border::Fill {
            let corners = [
                (t.x0, t.y0),
                (t.x0 + 1, t.y0),
                (t.x0, t.y0 + 1),
                (t.x0 + 1, t.y0 + 1),
            ];
            let reads_inside = corners
                .iter()
                .zip(t.weights())
                .any(|(&(x, y), wt)| wt != 0 && x >= 0 && y >= 0 && x < wi && y < hi);
            if !reads_inside {
                return RunKind::Fill;
            }
        }
        RunKind::Edge
    }

    /// Warps a pair of this map's size.
    ///
    /// # Panics
    /// If the pair's size differs from the map's.
    pub fn apply(&self, src: &Pair) -> Pair {
        self.apply_packed(&Packed::new(src))
    }

    /// Warps a packed pair of this map's size (what [`apply`](Self::apply) does after packing).
    ///
    /// # Panics
    /// If the pair's size differs from the map's.
    pub fn apply_packed(&self, packed: &Packed) -> Pair {
        let src = packed.pair;
        let (w, h) = src.image.dimensions();
        assert_eq!(
            (w, h),
            (self.w, self.h),
            "sample map size differs from the pair"
        );
        let n = (w * h) as usize;
        let mut out_img = vec![0u8; n * 3];
        let mut out_msk = vec![0u8; n];
        let (mut at, mut inside, mut edge) = (0usize, 0usize, 0usize);
        for run in &self.runs {
            let len = run.len as usize;
            let img = &mut out_img[at * 3..(at + len) * 3];
            let msk = &mut out_msk[at..at + len];
            match run.kind {
                RunKind::Inside => {
                    sample_inside(packed, &self.inside[inside..inside + len], img, msk);
                    inside += len;
                }
                RunKind::Fill => {
                    for px in img.chunks_exact_mut(3) {
                        px.copy_from_slice(&src.fill.0);
                    }
                }
                RunKind::Same => {
                    img.copy_from_slice(&src.image.as_raw()[at * 3..(at + len) * 3]);
                    for (o, &m) in msk.iter_mut().zip(&src.mask.as_raw()[at..at + len]) {
                        *o = if m >= 128 { 255 } else { 0 };
                    }
                }
                RunKind::Edge => {
                    for ((t, px), m) in self.edge[edge..edge + len]
                        .iter()
                        .zip(img.chunks_exact_mut(3))
                        .zip(msk.iter_mut())
                    {
                        sample_general(src, self.border, t, px, m);
                    }
                    edge += len;
                }
            }
            at += len;
        }
        Pair {
            image: RgbImage::from_raw(w, h, out_img).expect("buffer size"),
            mask: GrayImage::from_raw(w, h, out_msk).expect("buffer size"),
            fill: src.fill,
        }
    }

    /// The same warp with every pixel through the general sampler (the reference the fast paths
    /// must equal byte for byte; for tests).
    #[cfg(test)]
    fn apply_general(&self, src: &Pair) -> Pair {
        let (w, h) = (self.w, self.h);
        let mut out = Pair {
            image: RgbImage::new(w, h),
            mask: GrayImage::new(w, h),
            fill: src.fill,
        };
        let (mut inside, mut edge) = (self.inside.iter(), self.edge.iter());
        let mut pixels = out
            .image
            .as_mut()
            .chunks_exact_mut(3)
            .zip(out.mask.as_mut().iter_mut());
        let mut at = 0u32;
        for run in &self.runs {
            for _ in 0..run.len {
                let (px, m) = pixels.next().expect("map size");
                let t = match run.kind {
                    RunKind::Same => Tap {
                        x0: (at % w) as i32,
                        y0: (at / w) as i32,
                        fx: 0,
                        fy: 0,
                    },
                    RunKind::Inside => {
                        let t = inside.next().expect("inside tap");
                        Tap {
                            x0: (t.index % w) as i32,
                            y0: (t.index / w) as i32,
                            fx: t.fx,
                            fy: t.fy,
                        }
                    }
                    RunKind::Edge => *edge.next().expect("edge tap"),
                    // Far enough outside that all four taps are.
                    RunKind::Fill => Tap {
                        x0: -3,
                        y0: -3,
                        fx: 0,
                        fy: 0,
                    },
                };
                sample_general(src, self.border, &t, px, m);
                at += 1;
            }
        }
        out
    }
}

/// Bilinear gather of pixels whose four taps are inside the source: AVX2 or SSE4.1 on the
/// packed layout where the CPU has them, the portable loop otherwise. All compute the same
/// integers as [`sample_general`].
fn sample_inside(src: &Packed, taps: &[InsideTap], img: &mut [u8], msk: &mut [u8]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2 (checked just above).
        unsafe { x86::sample_inside_avx2(src, taps, img, msk) };
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("sse4.1") {
        // SAFETY: the CPU supports SSE4.1 (checked just above).
        unsafe { x86::sample_inside_sse41(src, taps, img, msk) };
        return;
    }
    sample_inside_scalar(src.pair, taps, img, msk)
}

/// The portable form of [`sample_inside`]. The sum is factored as (ONE - fy) * top + fy * bottom,
/// with top and bottom the horizontal interpolations: the same integer as the four-weight sum of
/// [`sample_general`], so the bytes are the same.
fn sample_inside_scalar(src: &Pair, taps: &[InsideTap], img: &mut [u8], msk: &mut [u8]) {
    let wu = src.image.width() as usize;
    let s_img = src.image.as_raw().as_slice();
    for ((t, px), m) in taps.iter().zip(img.chunks_exact_mut(3)).zip(msk.iter_mut()) {
        let p = t.index as usize;
        let (fx, fy) = (u32::from(t.fx), u32::from(t.fy));
        let (gx, gy) = (ONE as u32 - fx, ONE as u32 - fy);
        // Two 2-pixel slices let the compiler drop the per-tap bounds checks.
        let top = &s_img[p * 3..p * 3 + 6];
        let bot = &s_img[(p + wu) * 3..(p + wu) * 3 + 6];
        for c in 0..3 {
            let t = gx * u32::from(top[c]) + fx * u32::from(top[c + 3]);
            let b = gx * u32::from(bot[c]) + fx * u32::from(bot[c + 3]);
            px[c] = ((gy * t + fy * b + HALF as u32) >> SHIFT) as u8;
        }
        *m = sample_mask(src, t);
    }
}

/// Mask of an inside pixel: the bilinear {0,1} field thresholded at 0.5 (0 or 255).
#[inline]
fn sample_mask(src: &Pair, t: &InsideTap) -> u8 {
    let wu = src.mask.width() as usize;
    let s_msk = src.mask.as_raw().as_slice();
    let p = t.index as usize;
    let mt = &s_msk[p..p + 2];
    let mb = &s_msk[p + wu..p + wu + 2];
    if (mt[0] | mt[1] | mb[0] | mb[1]) < 128 {
        return 0;
    }
    let (fx, fy) = (u32::from(t.fx), u32::from(t.fy));
    let (gx, gy) = (ONE as u32 - fx, ONE as u32 - fy);
    let on = |v: u8| u32::from(v >= 128);
    let top = gx * on(mt[0]) + fx * on(mt[1]);
    let bot = gx * on(mb[0]) + fx * on(mb[1]);
    if gy * top + fy * bot >= HALF as u32 {
        255
    } else {
        0
    }
}

#[cfg(target_arch = "x86_64")]
#[path = "warp_x86.rs"]
mod x86;

/// One output pixel, any tap position: taps outside read the fill colour (mask 0) or the nearest
/// edge pixel, as `border` says; taps with zero weight are not read.
fn sample_general(src: &Pair, border: Border, t: &Tap, out: &mut [u8], om: &mut u8) {
    let (w, h) = src.image.dimensions();
    let (wi, hi) = (w as i32, h as i32);
    let wu = w as usize;
    let img = src.image.as_raw();
    let msk = src.mask.as_raw();
    let wts = t.weights();
    let mut acc = [HALF; 3];
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
        if !inside && border == Border::Fill {
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
        *o = (a >> SHIFT) as u8;
    }
    *om = if m >= HALF { 255 } else { 0 };
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

    /// A smooth but non-affine map that reaches past every border (for the exactness tests).
    fn wavy(n: f32) -> impl Fn(usize, &mut [[f32; 2]]) {
        move |y: usize, o: &mut [[f32; 2]]| {
            for (x, c) in o.iter_mut().enumerate() {
                let (xf, yf) = (x as f32, y as f32);
                *c = [
                    (xf - n / 2.0) * 1.3 + n / 2.0 + 3.0 * (yf * 0.37).sin(),
                    (yf - n / 2.0) * 1.2 + n / 2.0 + 0.7 * xf.cos() + 0.1234,
                ];
            }
        }
    }

    fn noisy_pair(n: u32) -> Pair {
        let mut s = 12345u32;
        let mut next = move || {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            s
        };
        let image = RgbImage::from_fn(n, n, |x, y| {
            let r = next();
            Rgb([(x * 4) as u8 ^ (r as u8 & 7), (y * 3) as u8, (r >> 8) as u8])
        });
        let mask = GrayImage::from_fn(n, n, |_, _| {
            image::Luma([[0, 255, 90, 200, 0, 0][next() as usize % 6]])
        });
        Pair {
            image,
            mask,
            fill: Rgb([200, 100, 50]),
        }
    }

    #[test]
    fn fast_paths_equal_the_general_sampler() {
        let p = noisy_pair(48);
        let rotate = |y: usize, o: &mut [[f32; 2]]| {
            let (s, c) = 0.5f32.sin_cos();
            for (x, v) in o.iter_mut().enumerate() {
                let (dx, dy) = (x as f32 - 23.5, y as f32 - 23.5);
                *v = [c * dx - s * dy + 23.5, s * dx + c * dy + 23.5];
            }
        };
        // The identity in the left half of each row, a fractional shift in the right half.
        let half = |y: usize, o: &mut [[f32; 2]]| {
            for (x, v) in o.iter_mut().enumerate() {
                let shift = if x < 24 { 0.0 } else { 0.3 };
                *v = [x as f32 + shift, y as f32];
            }
        };
        for border in [Border::Fill, Border::Clamp] {
            for map in [&wavy(48.0) as &dyn CoordMap, &rotate, &identity_row, &half] {
                let m = SampleMap::new(48, 48, map, border);
                let general = m.apply_general(&p);
                assert_eq!(m.apply(&p), general, "{border:?}");
                // Every kernel of the inside runs (apply takes the widest the CPU has).
                let packed = Packed::new(&p);
                type Kernel<'a> = Box<dyn Fn(&[InsideTap], &mut [u8], &mut [u8]) + 'a>;
                let mut kernels: Vec<(&str, Kernel)> = vec![(
                    "portable",
                    Box::new(|t: &[InsideTap], i: &mut [u8], k: &mut [u8]| {
                        sample_inside_scalar(&p, t, i, k)
                    }),
                )];
                #[cfg(target_arch = "x86_64")]
                {
                    if std::arch::is_x86_feature_detected!("sse4.1") {
                        kernels.push((
                            "sse4.1",
                            // SAFETY: the CPU supports SSE4.1; the taps are inside taps.
                            Box::new(|t: &[InsideTap], i: &mut [u8], k: &mut [u8]| unsafe {
                                x86::sample_inside_sse41(&packed, t, i, k)
                            }),
                        ));
                    }
                    if std::arch::is_x86_feature_detected!("avx2") {
                        kernels.push((
                            "avx2",
                            // SAFETY: the CPU supports AVX2; the taps are inside taps.
                            Box::new(|t: &[InsideTap], i: &mut [u8], k: &mut [u8]| unsafe {
                                x86::sample_inside_avx2(&packed, t, i, k)
                            }),
                        ));
                    }
                }
                for (name, kernel) in &kernels {
                    let mut img = vec![0u8; 48 * 48 * 3];
                    let mut msk = vec![0u8; 48 * 48];
                    let (mut at, mut k) = (0, 0);
                    for r in &m.runs {
                        let len = r.len as usize;
                        if r.kind == RunKind::Inside {
                            kernel(
                                &m.inside[k..k + len],
                                &mut img[at * 3..(at + len) * 3],
                                &mut msk[at..at + len],
                            );
                            assert_eq!(
                                img[at * 3..(at + len) * 3],
                                general.image.as_raw()[at * 3..(at + len) * 3],
                                "{name}"
                            );
                            assert_eq!(
                                msk[at..at + len],
                                general.mask.as_raw()[at..at + len],
                                "{name}"
                            );
                            k += len;
                        }
                        at += len;
                    }
                }
            }
        }
        // The wavy map exercises three kinds of run, the half-identity one the fourth.
        let m = SampleMap::new(48, 48, &wavy(48.0), Border::Fill);
        for kind in [RunKind::Inside, RunKind::Fill, RunKind::Edge] {
            assert!(m.runs.iter().any(|r| r.kind == kind), "{kind:?}");
        }
        let m = SampleMap::new(48, 48, &half, Border::Fill);
        assert!(m.runs.iter().any(|r| r.kind == RunKind::Same));
    }

    #[test]
    fn tap_rounding_matches_floor_and_round() {
        let mut xs = vec![
            -3.5f32, -3.0, -2.999, -0.5, -0.0, 0.0, 0.499, 0.5, 1.998_047, 513.0,
        ];
        xs.extend((0..2000).map(|i| i as f32 * 0.2573 - 5.0));
        xs.extend((0..256).map(|i| 7.0 + (i as f32 + 0.5) / 256.0));
        for s in xs {
            let c = if s.is_nan() {
                -3.0
            } else {
                s.clamp(-3.0, 514.0)
            };
            let fl = c.floor();
            let mut want = (fl as i32, ((c - fl) * 256.0).round() as i32);
            if want.1 == 256 {
                want = (want.0 + 1, 0);
            }
            let (i, f) = split(s, 514.0);
            assert_eq!((i, i32::from(f)), want, "{s}");
        }
    }

    /// Oracle: imageproc's bilinear `warp_with`, run on the image in f32 (so that its own
    /// truncations to u8 do not count), on pixels whose four taps are inside. Ours has 1/256-pixel
    /// weights and rounds to u8, so it may differ by one level.
    #[test]
    fn remap_matches_imageproc_warp_with_within_one() {
        use imageproc::geometric_transformations::{warp_with, Interpolation};
        let n = 64;
        // A smooth picture, like a photograph at this scale.
        let image = RgbImage::from_fn(n, n, |x, y| {
            let (xf, yf) = (x as f32, y as f32);
            Rgb([
                (128.0 + 100.0 * (xf / 7.0).sin() * (yf / 5.0).cos()) as u8,
                (x * 3 + y) as u8,
                (200.0 - 2.5 * yf) as u8,
            ])
        });
        let p = Pair {
            mask: GrayImage::new(n, n),
            image,
            fill: Rgb([0, 0, 0]),
        };
        let map = wavy(n as f32);
        let ours = remap(&p, &map, Border::Fill);
        let mut row = vec![[0f32; 2]; n as usize];
        let coords: Vec<Vec<[f32; 2]>> = (0..n as usize)
            .map(|y| {
                map(y, &mut row);
                row.clone()
            })
            .collect();
        let float: image::Rgb32FImage =
            image::DynamicImage::ImageRgb8(p.image.clone()).into_rgb32f();
        let float = image::ImageBuffer::from_fn(n, n, |x, y| {
            let v = float.get_pixel(x, y);
            Rgb([v[0] * 255.0, v[1] * 255.0, v[2] * 255.0])
        });
        let theirs = warp_with(
            &float,
            |x, y| {
                let [sx, sy] = coords[y as usize][x as usize];
                (sx, sy)
            },
            Interpolation::Bilinear,
            Rgb([0.0, 0.0, 0.0]),
        );
        let mut compared = 0;
        for (y, row) in coords.iter().enumerate() {
            for (x, &[sx, sy]) in row.iter().enumerate() {
                let inside = sx >= 0.0 && sy >= 0.0 && sx < (n - 1) as f32 && sy < (n - 1) as f32;
                if !inside {
                    continue;
                }
                let (a, b) = (
                    ours.image.get_pixel(x as u32, y as u32),
                    theirs.get_pixel(x as u32, y as u32),
                );
                for c in 0..3 {
                    let d = (f32::from(a[c]) - b[c]).abs();
                    assert!(d <= 1.0, "({x}, {y}) channel {c}: {} vs {}", a[c], b[c]);
                }
                compared += 1;
            }
        }
        assert!(compared > (n * n / 2) as usize, "{compared}");
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
