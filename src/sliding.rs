//! Sliding-window inference geometry, independent of the network: tiles of the training input
//! size over a (squared, resized) photograph, a gaussian importance weight per tile, optional
//! flip test-time augmentation, and aggregation by weighted average. The network is a callback,
//! so the geometry is tested without libtorch.
//!
//! Following nnU-Net (Isensee et al. 2021, Nature Methods 18; `predict_sliding_window_return_logits`):
//! tile starts are evenly spaced so the first tile starts at 0 and the last ends at the border,
//! with the smallest number of tiles whose step is at most `tile * (1 - overlap)`; each tile's
//! probabilities are weighted by a gaussian centred on the tile with sigma = tile / 8, and the
//! map is sum(w p) / sum(w). With flips, each tile is also predicted flipped left-right,
//! top-bottom and both, and the four un-flipped predictions are averaged (nnU-Net's mirroring).

use anyhow::{ensure, Context, Result};
use fast_image_resize::{images::Image, FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
use image::RgbImage;

use crate::prep::SquareGeometry;
use crate::scoring::ProbMap;

/// How a photograph is run through the network.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Mode {
    /// One pass over the whole (squared, resized) image: the seed's resize-to-size inference.
    Whole,
    /// Tiles of side `tile` px with a fraction `overlap` in [0, 1) of a tile shared by neighbours.
    Sliding {
        /// Tile side in pixels of the squared, resized image (at most its side).
        tile: u32,
        /// Fraction of a tile shared with its neighbour, in [0, 1).
        overlap: f64,
    },
}

/// Inference geometry: the mode and whether to average flipped predictions.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Window {
    /// Whole image or sliding tiles.
    pub mode: Mode,
    /// Also predict every tile mirrored left-right, top-bottom and both, and average the four
    /// un-mirrored predictions (nnU-Net's test-time mirroring): 4x the network passes.
    pub flips: bool,
}

/// Tile starts along one axis of length `len` for tiles of `tile` px and the given overlap:
/// n = ceil((len - tile) / step_max) + 1 tiles with step_max = max(1, round(tile (1 - overlap))),
/// start_i = round(i (len - tile) / (n - 1)). Errors when `tile` > `len` or is 0.
pub fn tile_starts(len: u32, tile: u32, overlap: f64) -> Result<Vec<u32>> {
    ensure!(
        tile >= 1 && tile <= len,
        "tile of {tile} px does not fit in {len} px"
    );
    ensure!(
        (0.0..1.0).contains(&overlap),
        "overlap must be within [0, 1), got {overlap}"
    );
    let step_max = ((f64::from(tile) * (1.0 - overlap)).round() as u32).max(1);
    let span = len - tile;
    let n = span.div_ceil(step_max) + 1;
    if n == 1 {
        return Ok(vec![0]);
    }
    Ok((0..n)
        .map(|i| (f64::from(i) * f64::from(span) / f64::from(n - 1)).round() as u32)
        .collect())
}

/// The tile weight: exp(-d^2 / (2 sigma^2)) with sigma = tile / 8 and d the distance to the tile
/// centre ((tile - 1) / 2, so the map is symmetric under flips), scaled to a maximum of 1 and
/// floored at 1e-6 so every pixel keeps a positive weight. `tile * tile` values, row-major.
pub fn gaussian_weights(tile: u32) -> Vec<f32> {
    let sigma = f64::from(tile) / 8.0;
    let c = (f64::from(tile) - 1.0) / 2.0;
    let mut w = Vec::with_capacity((tile * tile) as usize);
    for y in 0..tile {
        for x in 0..tile {
            let d2 = (f64::from(x) - c).powi(2) + (f64::from(y) - c).powi(2);
            w.push(((-d2 / (2.0 * sigma * sigma)).exp() as f32).max(1e-6));
        }
    }
    let max = w.iter().copied().fold(0.0f32, f32::max);
    w.iter_mut().for_each(|v| *v = (*v / max).max(1e-6));
    w
}

/// Flips an RGB (3 channels) or single-channel tile of side `s`: `h` left-right, `v` top-bottom.
fn flip<T: Copy>(data: &[T], s: usize, channels: usize, h: bool, v: bool) -> Vec<T> {
    let mut out = Vec::with_capacity(data.len());
    for y in 0..s {
        let sy = if v { s - 1 - y } else { y };
        for x in 0..s {
            let sx = if h { s - 1 - x } else { x };
            let i = (sy * s + sx) * channels;
            out.extend_from_slice(&data[i..i + channels]);
        }
    }
    out
}

/// Predicts a probability map of `img` (width x height, any size >= the tile) with `predict`,
/// which maps `n` square RGB tiles of side `side` (NHWC bytes, n * side * side * 3) to their
/// probabilities (n * side * side values, row-major). Tiles are passed `batch` at a time.
pub fn predict_map<F>(
    img: &RgbImage,
    window: &Window,
    batch: usize,
    mut predict: F,
) -> Result<ProbMap>
where
    F: FnMut(&[u8], usize, u32) -> Result<Vec<f32>>,
{
    let (w, h) = img.dimensions();
    let (tile_w, tile_h, overlap) = match window.mode {
        Mode::Whole => (w, h, 0.0),
        Mode::Sliding { tile, overlap } => (tile, tile, overlap),
    };
    ensure!(
        tile_w == tile_h,
        "whole-image inference needs a square image, got {w}x{h}"
    );
    let s = tile_w;
    let xs = tile_starts(w, s, overlap).context("sliding window (width)")?;
    let ys = tile_starts(h, s, overlap).context("sliding window (height)")?;
    let weight = match window.mode {
        Mode::Whole => vec![1.0f32; (s * s) as usize],
        Mode::Sliding { .. } => gaussian_weights(s),
    };
    let flips: &[(bool, bool)] = if window.flips {
        &[(false, false), (true, false), (false, true), (true, true)]
    } else {
        &[(false, false)]
    };
    let starts: Vec<(u32, u32)> = ys
        .iter()
        .flat_map(|&y| xs.iter().map(move |&x| (x, y)))
        .collect();
    let (su, px) = (s as usize, (s * s) as usize);
    let mut acc = vec![0.0f32; (w * h) as usize];
    let mut norm = vec![0.0f32; (w * h) as usize];
    // Work items: (tile index, flip); batched in that order.
    let items: Vec<(usize, (bool, bool))> = (0..starts.len())
        .flat_map(|t| flips.iter().map(move |&f| (t, f)))
        .collect();
    for chunk in items.chunks(batch.max(1)) {
        let mut input = Vec::with_capacity(chunk.len() * px * 3);
        for &(t, (fh, fv)) in chunk {
            let (x0, y0) = starts[t];
            let crop = image::imageops::crop_imm(img, x0, y0, s, s).to_image();
            input.extend(flip(crop.as_raw(), su, 3, fh, fv));
        }
        let probs = predict(&input, chunk.len(), s)?;
        ensure!(
            probs.len() == chunk.len() * px,
            "the network returned {} values for {} tiles of {s}x{s}",
            probs.len(),
            chunk.len()
        );
        let k = flips.len() as f32;
        for (j, &(t, (fh, fv))) in chunk.iter().enumerate() {
            let p = flip(&probs[j * px..(j + 1) * px], su, 1, fh, fv);
            let (x0, y0) = (starts[t].0 as usize, starts[t].1 as usize);
            for ty in 0..su {
                let row = (y0 + ty) * w as usize + x0;
                for tx in 0..su {
                    let wt = weight[ty * su + tx] / k;
                    acc[row + tx] += wt * p[ty * su + tx];
                    norm[row + tx] += wt;
                }
            }
        }
    }
    let data = acc.iter().zip(&norm).map(|(a, n)| a / n).collect();
    Ok(ProbMap::from_raw(w, h, data).expect("buffer size"))
}

/// Takes a `g.size` x `g.size` probability map back to the photograph's frame in `f32` (no 8-bit
/// rounding, so the AUPR sees the network's ranking): bilinear resize to the padded square, then
/// crop the padding away. Errors when the map is not `g.size` square.
pub fn to_original_frame(map: &ProbMap, g: &SquareGeometry) -> Result<ProbMap> {
    ensure!(
        map.dimensions() == (g.size, g.size),
        "prediction is {}x{}, expected {}x{}",
        map.width(),
        map.height(),
        g.size,
        g.size
    );
    let bytes: Vec<u8> = map.as_raw().iter().flat_map(|v| v.to_le_bytes()).collect();
    let src = Image::from_vec_u8(g.size, g.size, bytes, PixelType::F32).context("resize source")?;
    let mut dst = Image::new(g.side, g.side, PixelType::F32);
    let opts = ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::Bilinear));
    Resizer::new()
        .resize(&src, &mut dst, &opts)
        .context("resize failed")?;
    let big: Vec<f32> = dst
        .buffer()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]).clamp(0.0, 1.0))
        .collect();
    let side = g.side as usize;
    let mut out = Vec::with_capacity((g.orig_w * g.orig_h) as usize);
    for y in 0..g.orig_h as usize {
        let row = (y + g.pad_y as usize) * side + g.pad_x as usize;
        out.extend_from_slice(&big[row..row + g.orig_w as usize]);
    }
    Ok(ProbMap::from_raw(g.orig_w, g.orig_h, out).expect("buffer size"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::Rgb;

    #[test]
    fn tile_starts_cover_the_axis_evenly() {
        assert_eq!(tile_starts(512, 256, 0.5).unwrap(), [0, 128, 256]);
        assert_eq!(tile_starts(256, 256, 0.5).unwrap(), [0]);
        // 300 px, tile 128, step <= 64: ceil(172/64)+1 = 4 tiles, spacing 172/3.
        assert_eq!(tile_starts(300, 128, 0.5).unwrap(), [0, 57, 115, 172]);
        assert_eq!(tile_starts(300, 128, 0.0).unwrap(), [0, 86, 172]);
        assert!(tile_starts(100, 128, 0.5).is_err());
        assert!(tile_starts(100, 64, 1.0).is_err());
    }

    #[test]
    fn gaussian_peaks_in_the_centre_and_is_symmetric() {
        let w = gaussian_weights(16);
        let at = |x: usize, y: usize| w[y * 16 + x];
        assert!((at(7, 7) - at(8, 8)).abs() < 1e-7 && at(7, 7) > 0.95);
        assert_eq!(at(0, 3), at(15, 3));
        assert_eq!(at(3, 0), at(3, 15));
        // sigma = 2 px: 4 px from the centre along x is exp(-(4.5^2 - 0.5^2)/8) of the peak.
        let ratio = at(3, 7) / at(7, 7);
        assert!((f64::from(ratio) - (-(4.5f64.powi(2) - 0.5f64.powi(2)) / 8.0).exp()).abs() < 1e-5);
        assert!(w.iter().all(|v| *v > 0.0));
    }

    /// A stand-in for a network: the mean darkness of the 7x7 neighbourhood *inside the tile*
    /// (zero padding at the tile border, like a CNN's), squashed to [0, 1].
    fn local_darkness(tiles: &[u8], n: usize, s: u32) -> Result<Vec<f32>> {
        let s = s as i64;
        let mut out = Vec::with_capacity(n * (s * s) as usize);
        for t in 0..n {
            let tile = &tiles[t * (s * s * 3) as usize..];
            for y in 0..s {
                for x in 0..s {
                    let mut sum = 0.0f32;
                    for dy in -3..=3i64 {
                        for dx in -3..=3i64 {
                            let (xx, yy) = (x + dx, y + dy);
                            if (0..s).contains(&xx) && (0..s).contains(&yy) {
                                sum += 255.0 - f32::from(tile[((yy * s + xx) * 3) as usize]);
                            }
                        }
                    }
                    out.push((sum / 49.0 / 255.0).clamp(0.0, 1.0));
                }
            }
        }
        Ok(out)
    }

    /// 96x96 bright image with a dark disc (r 10) centred on (48, 48): with 64 px tiles at half
    /// overlap the starts are 0 and 32, so tile borders cross the lesion at x, y = 32 and 64.
    fn straddling_lesion() -> RgbImage {
        RgbImage::from_fn(96, 96, |x, y| {
            let d = ((x as f64 - 48.0).powi(2) + (y as f64 - 48.0).powi(2)).sqrt();
            let v = if d < 10.0 { 20 } else { 230 };
            Rgb([v, v, v])
        })
    }

    #[test]
    fn lesion_across_tile_borders_matches_the_single_window_pass() {
        let img = straddling_lesion();
        let whole = Window {
            mode: Mode::Whole,
            flips: false,
        };
        let tiled = Window {
            mode: Mode::Sliding {
                tile: 64,
                overlap: 0.5,
            },
            flips: true,
        };
        let a = predict_map(&img, &whole, 4, local_darkness).unwrap();
        let mut calls = 0;
        let b = predict_map(&img, &tiled, 3, |t, n, s| {
            calls += 1;
            assert_eq!(s, 64);
            local_darkness(t, n, s)
        })
        .unwrap();
        // 2x2 tiles x 4 flips = 16 tiles in batches of 3.
        assert_eq!(calls, 6);
        // Tolerance: masks at 0.5 agree on >= 99.9% of pixels and on every lesion pixel, and
        // probabilities differ by < 0.02 away from the image border (the stand-in's zero padding
        // differs there only at the image border, which both passes share).
        let mask = |m: &ProbMap| m.pixels().map(|p| p[0] >= 0.5).collect::<Vec<_>>();
        let (ma, mb) = (mask(&a), mask(&b));
        let lesion = ma.iter().filter(|v| **v).count();
        assert!(lesion > 200, "the lesion is visible: {lesion}");
        let differ = ma.iter().zip(&mb).filter(|(x, y)| x != y).count();
        assert!(differ * 1000 <= ma.len(), "{differ} pixels differ");
        for y in 4..92 {
            for x in 4..92 {
                let (pa, pb) = (a.get_pixel(x, y)[0], b.get_pixel(x, y)[0]);
                assert!((pa - pb).abs() < 0.02, "({x},{y}): {pa} vs {pb}");
            }
        }
    }

    #[test]
    fn uniform_weights_without_overlap_reassemble_the_tiles_exactly() {
        // A pointwise "network" gives the same map in any tiling.
        let img = RgbImage::from_fn(40, 40, |x, y| Rgb([(x * 6) as u8, (y * 6) as u8, 0]));
        let pointwise = |t: &[u8], n: usize, s: u32| -> Result<Vec<f32>> {
            Ok((0..n * (s * s) as usize)
                .map(|i| f32::from(t[3 * i]) / 255.0)
                .collect())
        };
        let whole = predict_map(
            &img,
            &Window {
                mode: Mode::Whole,
                flips: false,
            },
            1,
            pointwise,
        )
        .unwrap();
        let tiled = predict_map(
            &img,
            &Window {
                mode: Mode::Sliding {
                    tile: 16,
                    overlap: 0.25,
                },
                flips: true,
            },
            5,
            pointwise,
        )
        .unwrap();
        for (a, b) in whole.pixels().zip(tiled.pixels()) {
            assert!((a[0] - b[0]).abs() < 1e-6);
        }
        assert!((whole.get_pixel(10, 3)[0] - 60.0 / 255.0).abs() < 1e-6);
    }

    #[test]
    fn a_wrong_network_output_size_is_an_error() {
        let img = RgbImage::new(8, 8);
        let err = predict_map(
            &img,
            &Window {
                mode: Mode::Whole,
                flips: false,
            },
            1,
            |_, _, _| Ok(vec![0.0; 3]),
        )
        .unwrap_err();
        assert!(err.to_string().contains("returned 3 values"), "{err}");
    }

    #[test]
    fn original_frame_keeps_probabilities_unrounded() {
        let g = SquareGeometry::new(30, 20, 10);
        let map = ProbMap::from_fn(10, 10, |x, _| image::Luma([0.1234 + 0.01 * x as f32]));
        let back = to_original_frame(&map, &g).unwrap();
        assert_eq!(back.dimensions(), (30, 20));
        let v = back.get_pixel(15, 10)[0];
        assert!(v > 0.16 && v < 0.18 && (v * 255.0).fract() != 0.0, "{v}");
        assert!(to_original_frame(&ProbMap::new(9, 9), &g).is_err());
    }
}
