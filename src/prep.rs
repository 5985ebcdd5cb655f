//! One source -> one square `size` x `size` pair: binarize the ground truth at full resolution,
//! pad to a centred square (fill = the image's pixel at (2, 2), mask fill 0), then downscale with an
//! anti-aliased filter (image) and by area average re-thresholded at 0.5 (mask). The inverse,
//! [`crate::sliding::to_original_frame`], takes a prediction back to the photograph's frame.

use anyhow::{ensure, Context, Result};
use fast_image_resize::{images::Image, FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
use image::{GrayImage, Rgb, RgbImage};

use crate::augment::Pair;

/// Where the original picture sits inside the square, so predictions can be mapped back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SquareGeometry {
    /// Width of the original picture, in pixels.
    pub orig_w: u32,
    /// Height of the original picture, in pixels.
    pub orig_h: u32,
    /// Side of the padded square before resizing: max(orig_w, orig_h).
    pub side: u32,
    /// Fill columns left of the picture in the square: (side - orig_w) / 2, in pixels.
    pub pad_x: u32,
    /// Fill rows above the picture in the square: (side - orig_h) / 2, in pixels.
    pub pad_y: u32,
    /// Output side after resizing.
    pub size: u32,
}

impl SquareGeometry {
    /// The geometry of an `orig_w` x `orig_h` picture centred in its square and resized to
    /// `size` x `size` (all in pixels).
    pub fn new(orig_w: u32, orig_h: u32, size: u32) -> Self {
        let side = orig_w.max(orig_h);
        Self {
            orig_w,
            orig_h,
            side,
            pad_x: (side - orig_w) / 2,
            pad_y: (side - orig_h) / 2,
            size,
        }
    }
}

/// Ground-truth confidence map -> binary mask (0/255): lesion where v > 0 and v / 252 >= threshold.
pub fn binarize(gt: &GrayImage, threshold: f64) -> GrayImage {
    let min = binarize_min(threshold);
    let raw = gt
        .as_raw()
        .iter()
        .map(|&v| if u16::from(v) >= min { 255 } else { 0 })
        .collect();
    GrayImage::from_raw(gt.width(), gt.height(), raw).expect("buffer size")
}

/// The number of nonzero bytes of `bytes` (the foreground pixels of a mask): 16 lanes of 8-bit
/// counters, flushed every 255 blocks before they can wrap, which the compiler turns into byte
/// compares and subtracts (a plain `filter().count()` widens every byte to 64 bits).
pub fn count_nonzero(bytes: &[u8]) -> u64 {
    const LANES: usize = 16;
    let mut total = 0u64;
    for chunk in bytes.chunks(LANES * 255) {
        let mut lanes = [0u8; LANES];
        let blocks = chunk.chunks_exact(LANES);
        let rest = blocks.remainder();
        for block in blocks {
            for (l, &b) in lanes.iter_mut().zip(block) {
                *l += u8::from(b != 0);
            }
        }
        total += lanes.iter().map(|&l| u64::from(l)).sum::<u64>();
        total += rest.iter().filter(|&&b| b != 0).count() as u64;
    }
    total
}

/// `img` centred in a `side` x `side` square of `fill` pixels, as raw samples (`C` per pixel).
/// Row copies: the same bytes as `imageops::replace` onto a filled square, without the per-pixel
/// indexing.
fn pad_to_square<const C: usize>(
    raw: &[u8],
    w: u32,
    h: u32,
    g: &SquareGeometry,
    fill: [u8; C],
) -> Vec<u8> {
    let side = g.side as usize;
    let (w, h) = (w as usize, h as usize);
    let (px, py) = (g.pad_x as usize, g.pad_y as usize);
    let mut out = Vec::with_capacity(side * side * C);
    let fill_px = |out: &mut Vec<u8>, n: usize| {
        for _ in 0..n {
            out.extend_from_slice(&fill);
        }
    };
    fill_px(&mut out, py * side);
    for row in raw.chunks_exact(w * C).take(h) {
        fill_px(&mut out, px);
        out.extend_from_slice(row);
        fill_px(&mut out, side - px - w);
    }
    fill_px(&mut out, (side - py - h) * side);
    out
}

/// Something wrong with a ground-truth map that does not stop generation but may make its masks
/// wrong; reported per source (a warning) and counted in `stats.json`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TruthIssue {
    /// A colour map whose channels differ: it is read as luminance, so marks kept in one channel
    /// (a colour-coded export) lose most of their value.
    ColourChannelsDiffer {
        /// Pixels whose R, G and B are not all equal.
        pixels: u64,
    },
    /// Values that are not DIARETDB1 confidence levels (multiples of 21 up to 252).
    NotDdb1Levels {
        /// Pixels with such a value.
        pixels: u64,
        /// One such value.
        example: u8,
    },
    /// Marks exist, but none reaches the threshold: the mask is empty.
    EmptyAtThreshold {
        /// The largest value in the map (0..=255).
        max: u8,
        /// The smallest value that counts as lesion: max(1, ceil(threshold x 252)).
        min_value: u16,
    },
}

impl TruthIssue {
    /// Stable code, stored in the manifest and counted in `stats.json`.
    pub fn code(&self) -> &'static str {
        match self {
            TruthIssue::ColourChannelsDiffer { .. } => "colour-channels-differ",
            TruthIssue::NotDdb1Levels { .. } => "not-ddb1-levels",
            TruthIssue::EmptyAtThreshold { .. } => "empty-at-threshold",
        }
    }

    /// Every code, in a fixed order.
    pub const CODES: [&'static str; 3] = [
        "colour-channels-differ",
        "not-ddb1-levels",
        "empty-at-threshold",
    ];

    /// The warning text (without the file name).
    pub fn message(&self, threshold: f64) -> String {
        match self {
            TruthIssue::ColourChannelsDiffer { pixels } => format!(
                "is a colour image whose channels differ ({pixels} pixels); it is read as \
                 luminance, so marks kept in one channel lose most of their value"
            ),
            TruthIssue::NotDdb1Levels { pixels, example } => format!(
                "has {pixels} pixels with values that are not DIARETDB1 levels (multiples of 21 \
                 up to 252), e.g. {example}"
            ),
            TruthIssue::EmptyAtThreshold { max, min_value } => format!(
                "has marks (largest value {max}) but none reaches the threshold {threshold} \
                 (value >= {min_value}): its mask is empty"
            ),
        }
    }
}

/// The gray confidence map of a decoded ground truth, and what is wrong with it (see
/// [`TruthIssue`]). `threshold` is the binarization threshold of [`binarize`].
pub fn read_truth(truth: &image::DynamicImage, threshold: f64) -> (GrayImage, Vec<TruthIssue>) {
    let mut issues = Vec::new();
    if truth.color().has_color() {
        let rgb = truth.to_rgb8();
        let differ = rgb
            .pixels()
            .filter(|p| p[0] != p[1] || p[1] != p[2])
            .count() as u64;
        if differ > 0 {
            issues.push(TruthIssue::ColourChannelsDiffer { pixels: differ });
        }
    }
    let gray = truth.to_luma8();
    // The DIARETDB1 levels are the multiples of 21 up to 252 (12 annotators' votes): a table
    // and branch-free passes instead of a division per pixel.
    const NOT_A_LEVEL: [bool; 256] = {
        let mut t = [false; 256];
        let mut v = 0;
        while v < 256 {
            t[v] = v % 21 != 0 || v > 252;
            v += 1;
        }
        t
    };
    let raw = gray.as_raw();
    let max = raw.iter().copied().max().unwrap_or(0);
    let off = raw
        .iter()
        .map(|&v| u64::from(NOT_A_LEVEL[v as usize]))
        .sum::<u64>();
    if off > 0 {
        let example = *raw
            .iter()
            .find(|&&v| NOT_A_LEVEL[v as usize])
            .expect("counted");
        issues.push(TruthIssue::NotDdb1Levels {
            pixels: off,
            example,
        });
    }
    let min_value = binarize_min(threshold);
    if max > 0 && u16::from(max) < min_value {
        issues.push(TruthIssue::EmptyAtThreshold { max, min_value });
    }
    (gray, issues)
}

/// The smallest ground-truth value that [`binarize`] marks as lesion (256: none).
fn binarize_min(threshold: f64) -> u16 {
    let min = (threshold * 252.0).ceil().max(1.0);
    if min > 255.0 {
        256
    } else {
        min as u16
    }
}

/// The fill colour of a source: its pixel at (2, 2) (clamped for tiny images).
pub fn fill_colour(img: &RgbImage) -> Rgb<u8> {
    *img.get_pixel(2.min(img.width() - 1), 2.min(img.height() - 1))
}

/// Pads `img` to a centred square of `fill` and resizes it to `size` (anti-aliased bilinear).
pub fn square_image(
    img: &RgbImage,
    fill: Rgb<u8>,
    size: u32,
) -> Result<(RgbImage, SquareGeometry)> {
    let g = SquareGeometry::new(img.width(), img.height(), size);
    let sq = pad_to_square(img.as_raw(), img.width(), img.height(), &g, fill.0);
    let out = resize(
        sq,
        g.side,
        g.side,
        size,
        size,
        PixelType::U8x3,
        FilterType::Bilinear,
    )?;
    Ok((RgbImage::from_raw(size, size, out).expect("buffer size"), g))
}

/// Pads a 0/255 mask to a centred square of 0 and area-downscales it, re-thresholded at 0.5.
pub fn square_mask(mask: &GrayImage, size: u32) -> Result<GrayImage> {
    let g = SquareGeometry::new(mask.width(), mask.height(), size);
    let sq = pad_to_square(mask.as_raw(), mask.width(), mask.height(), &g, [0]);
    let filter = if size <= g.side {
        FilterType::Box
    } else {
        FilterType::Bilinear
    };
    let mut out = resize(sq, g.side, g.side, size, size, PixelType::U8, filter)?;
    for v in &mut out {
        *v = if *v >= 128 { 255 } else { 0 };
    }
    Ok(GrayImage::from_raw(size, size, out).expect("buffer size"))
}

/// Squares a source image and its binary mask into a training pair.
pub fn prepare(img: &RgbImage, mask: &GrayImage, size: u32) -> Result<Pair> {
    ensure!(
        img.dimensions() == mask.dimensions(),
        "image is {}x{} but ground truth is {}x{}",
        img.width(),
        img.height(),
        mask.width(),
        mask.height()
    );
    let fill = fill_colour(img);
    let (image, _) = square_image(img, fill, size)?;
    let mask = square_mask(mask, size)?;
    Ok(Pair { image, mask, fill })
}

pub(crate) fn resize(
    buf: Vec<u8>,
    w: u32,
    h: u32,
    dw: u32,
    dh: u32,
    pixel: PixelType,
    filter: FilterType,
) -> Result<Vec<u8>> {
    let src = Image::from_vec_u8(w, h, buf, pixel).context("resize: source buffer")?;
    let mut dst = Image::new(dw, dh, pixel);
    let opts = ResizeOptions::new().resize_alg(ResizeAlg::Convolution(filter));
    Resizer::new()
        .resize(&src, &mut dst, &opts)
        .context("resize failed")?;
    Ok(dst.into_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::Luma;

    #[test]
    fn padding_equals_replace_onto_a_filled_square() {
        for (w, h) in [(7, 4), (4, 7), (5, 5), (6, 3)] {
            let img = RgbImage::from_fn(w, h, |x, y| Rgb([x as u8, y as u8, 9]));
            let g = SquareGeometry::new(w, h, 3);
            let fill = Rgb([200, 1, 2]);
            let mut want = RgbImage::from_pixel(g.side, g.side, fill);
            image::imageops::replace(&mut want, &img, i64::from(g.pad_x), i64::from(g.pad_y));
            let got = pad_to_square(img.as_raw(), w, h, &g, fill.0);
            assert_eq!(got, want.into_raw(), "{w}x{h}");
        }
    }

    #[test]
    fn count_nonzero_counts_every_length_and_value() {
        // Lengths around the 16-byte blocks and the 255-block flush; all-nonzero bytes would
        // wrap an unflushed 8-bit counter.
        for len in [0, 1, 15, 16, 17, 4079, 4080, 4081, 3 * 4080 + 7, 70_000] {
            let ones = vec![255u8; len];
            assert_eq!(count_nonzero(&ones), len as u64, "all set, {len}");
            let mixed: Vec<u8> = (0..len).map(|i| (i * 7 % 5) as u8).collect();
            let want = mixed.iter().filter(|&&b| b != 0).count() as u64;
            assert_eq!(count_nonzero(&mixed), want, "mixed, {len}");
        }
    }

    #[test]
    fn binarize_follows_the_protocol() {
        let gt = GrayImage::from_fn(13, 1, |x, _| Luma([(x * 21) as u8]));
        let count = |t| binarize(&gt, t).pixels().filter(|p| p[0] == 255).count();
        assert_eq!(count(0.75), 4); // 189, 210, 231, 252
        assert_eq!(count(0.0), 12); // any mark
        assert_eq!(count(1.0), 1);
    }

    #[test]
    fn truth_problems_are_found() {
        use image::DynamicImage;
        let ok = GrayImage::from_fn(4, 1, |x, _| Luma([(x * 84) as u8]));
        assert!(read_truth(&DynamicImage::ImageLuma8(ok.clone()), 0.75)
            .1
            .is_empty());
        // Marks only in the red channel of an RGB map.
        let red = RgbImage::from_fn(4, 1, |x, _| Rgb([if x == 1 { 252 } else { 0 }, 0, 0]));
        let codes: Vec<&str> = read_truth(&DynamicImage::ImageRgb8(red), 0.75)
            .1
            .iter()
            .map(TruthIssue::code)
            .collect();
        assert_eq!(codes, TruthIssue::CODES);
        // Only weak marks: empty at 0.75, fine at "any mark".
        let weak = DynamicImage::ImageLuma8(GrayImage::from_fn(4, 1, |x, _| Luma([x as u8 * 21])));
        assert_eq!(read_truth(&weak, 0.75).1.len(), 1);
        assert!(read_truth(&weak, 0.0).1.is_empty());
        // Off-level values: counted, and the first one in reading order is the example.
        let off = GrayImage::from_raw(5, 1, vec![0, 5, 21, 253, 5]).unwrap();
        let issues = read_truth(&DynamicImage::ImageLuma8(off), 0.0).1;
        assert!(
            matches!(
                issues.as_slice(),
                [TruthIssue::NotDdb1Levels {
                    pixels: 3,
                    example: 5
                }]
            ),
            "{issues:?}"
        );
    }

    #[test]
    fn squaring_keeps_a_lesion_where_it_was() {
        // 300x200 with a lesion block at x 200..240, y 80..120; pad_y = 50, scale 100/300.
        let img = RgbImage::from_fn(300, 200, |x, y| {
            Rgb([
                if (200..240).contains(&x) && (80..120).contains(&y) {
                    250
                } else {
                    10
                },
                0,
                0,
            ])
        });
        let mask = GrayImage::from_fn(300, 200, |x, y| {
            Luma([if (200..240).contains(&x) && (80..120).contains(&y) {
                255
            } else {
                0
            }])
        });
        let p = prepare(&img, &mask, 100).unwrap();
        assert_eq!(p.fill, Rgb([10, 0, 0]));
        let on: Vec<(u32, u32)> = p
            .mask
            .enumerate_pixels()
            .filter(|(_, _, m)| m[0] == 255)
            .map(|(x, y, _)| (x, y))
            .collect();
        let n = on.len() as f64;
        let cx = on.iter().map(|p| f64::from(p.0)).sum::<f64>() / n;
        let cy = on.iter().map(|p| f64::from(p.1)).sum::<f64>() / n;
        assert!(
            (cx - 73.0).abs() < 1.0 && (cy - 50.0).abs() < 1.0,
            "{cx} {cy}"
        );
        assert!(p.image.get_pixel(73, 50)[0] > 200);
        // Round trip to the original frame.
        let g = SquareGeometry::new(300, 200, 100);
        let probs = crate::scoring::ProbMap::from_fn(100, 100, |x, y| {
            image::Luma([f32::from(p.mask.get_pixel(x, y)[0]) / 255.0])
        });
        let back = crate::sliding::to_original_frame(&probs, &g).unwrap();
        assert_eq!(back.dimensions(), (300, 200));
        assert!(back.get_pixel(220, 100)[0] > 0.5 && back.get_pixel(100, 100)[0] < 0.5);
    }
}
