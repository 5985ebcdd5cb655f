//! Lesion-aware patch sampling for training: which pair each step sees and where its patch lies.
//!
//! nnU-Net (Isensee et al. 2021) draws fixed-size patches and forces a third of them
//! (`oversample_foreground_percent = 0.33`) to be centred on a random foreground voxel; the rest
//! are placed uniformly. Hemorrhages cover a few percent of a fundus, so uniform crops (or whole
//! downscaled images) show the network mostly background. Here each patch is, independently with
//! probability `foreground_share`, centred on a uniformly drawn lesion pixel of its mask (clamped
//! so the patch stays inside the image), else placed uniformly. Every draw comes from
//! [`crate::rng::rng_for`]`(seed, pair stem, "patch/e<epoch>/i<index>")`, so a patch depends only
//! on (seed, epoch, position in the epoch, pair), never on thread count or resume.

use anyhow::{ensure, Result};
use rand::seq::SliceRandom;
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use crate::rng::rng_for;

/// Where one training patch lies in its pair: top-left corner and side, px.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Patch {
    /// Left column of the patch, in pixels.
    pub x: u32,
    /// Top row of the patch, in pixels.
    pub y: u32,
    /// Side of the square patch, in pixels.
    pub size: u32,

    /// Whether it was centred on a lesion pixel.
    pub foreground: bool,
}

/// Places a `size` x `size` patch in a `w` x `h` mask (lesion where > 0), centred on a lesion
/// pixel when `want_foreground` and the mask has one, else uniformly. Errors when the patch does
/// not fit.
pub fn place_patch(
    mask: &[u8],
    w: u32,
    h: u32,
    size: u32,
    want_foreground: bool,
    rng: &mut ChaCha8Rng,
) -> Result<Patch> {
    ensure!(
        size >= 1 && size <= w && size <= h,
        "patch of {size} px does not fit a {w}x{h} image"
    );
    ensure!(mask.len() == (w * h) as usize, "mask is not {w}x{h}");
    if want_foreground {
        let lesion = mask.iter().filter(|v| **v > 0).count();
        if lesion > 0 {
            let k = rng.random_range(0..lesion);
            let i = mask
                .iter()
                .enumerate()
                .filter(|(_, v)| **v > 0)
                .nth(k)
                .map(|(i, _)| i as u32)
                .expect("k < lesion count");
            let (cx, cy) = (i % w, i / w);
            let clamp = |c: u32, len: u32| c.saturating_sub(size / 2).min(len - size);
            return Ok(Patch {
                x: clamp(cx, w),
                y: clamp(cy, h),
                size,
                foreground: true,
            });
        }
    }
    Ok(Patch {
        x: rng.random_range(0..=w - size),
        y: rng.random_range(0..=h - size),
        size,
        foreground: false,
    })
}

/// The pair indices of one epoch: `len` indices from consecutive seeded shuffles of
/// 0..n_pairs (so every pair is seen once before any is seen twice).
pub fn epoch_order(n_pairs: usize, len: usize, seed: u64, epoch: usize) -> Vec<usize> {
    let mut out = Vec::with_capacity(len);
    let mut round = 0;
    while out.len() < len && n_pairs > 0 {
        let mut perm: Vec<usize> = (0..n_pairs).collect();
        perm.shuffle(&mut rng_for(
            seed,
            "train",
            &format!("epoch{epoch}/round{round}"),
        ));
        out.extend(perm.into_iter().take(len - out.len()));
        round += 1;
    }
    out
}

/// The generator of the patch at position `index` of `epoch` taken from pair `stem`.
pub fn patch_rng(seed: u64, stem: &str, epoch: usize, index: usize) -> ChaCha8Rng {
    rng_for(seed, stem, &format!("patch/e{epoch}/i{index}"))
}

/// Draws whether the patch is centred on a lesion (probability `share`), then places it.
pub fn sample_patch(
    mask: &[u8],
    w: u32,
    h: u32,
    size: u32,
    share: f64,
    rng: &mut ChaCha8Rng,
) -> Result<Patch> {
    let fg = rng.random::<f64>() < share;
    place_patch(mask, w, h, size, fg, rng)
}

/// Crops a patch from row-major data with `channels` values per pixel.
pub fn crop<T: Copy>(data: &[T], w: u32, channels: usize, p: &Patch) -> Vec<T> {
    let (w, s) = (w as usize, p.size as usize);
    let mut out = Vec::with_capacity(s * s * channels);
    for y in p.y as usize..p.y as usize + s {
        let row = (y * w + p.x as usize) * channels;
        out.extend_from_slice(&data[row..row + s * channels]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mask_with_lesion(w: u32, h: u32, lx: u32, ly: u32) -> Vec<u8> {
        (0..w * h)
            .map(|i| u8::from(i % w == lx && i / w == ly))
            .collect()
    }

    #[test]
    fn foreground_patches_contain_the_lesion_and_stay_inside() {
        // One lesion pixel near the corner: the patch is clamped but still covers it.
        let m = mask_with_lesion(64, 48, 2, 45);
        for i in 0..20 {
            let mut rng = patch_rng(7, "a", 1, i);
            let p = place_patch(&m, 64, 48, 16, true, &mut rng).unwrap();
            assert!(p.foreground);
            assert_eq!((p.x, p.y), (0, 32));
            let c = crop(&m, 64, 1, &p);
            assert_eq!(c.iter().filter(|v| **v > 0).count(), 1);
        }
        // A centre lesion gives a centred patch.
        let m = mask_with_lesion(64, 48, 30, 20);
        let p = place_patch(&m, 64, 48, 16, true, &mut patch_rng(7, "a", 1, 0)).unwrap();
        assert_eq!((p.x, p.y), (22, 12));
    }

    #[test]
    fn share_controls_the_fraction_of_foreground_patches() {
        let m = mask_with_lesion(32, 32, 5, 5);
        let n = 3000;
        let fg = (0..n)
            .filter(|&i| {
                sample_patch(&m, 32, 32, 8, 0.33, &mut patch_rng(1, "s", 0, i))
                    .unwrap()
                    .foreground
            })
            .count();
        let share = fg as f64 / n as f64;
        assert!((share - 0.33).abs() < 0.03, "{share}");
        // Without lesion pixels every patch is uniform, and share 0 never centres.
        let empty = vec![0u8; 32 * 32];
        assert!(
            !sample_patch(&empty, 32, 32, 8, 1.0, &mut patch_rng(1, "s", 0, 0))
                .unwrap()
                .foreground
        );
        assert!(
            !sample_patch(&m, 32, 32, 8, 0.0, &mut patch_rng(1, "s", 0, 0))
                .unwrap()
                .foreground
        );
    }

    #[test]
    fn draws_are_reproducible_and_vary_with_position() {
        let m = mask_with_lesion(40, 40, 10, 10);
        let a = sample_patch(&m, 40, 40, 8, 0.0, &mut patch_rng(3, "x", 2, 5)).unwrap();
        let b = sample_patch(&m, 40, 40, 8, 0.0, &mut patch_rng(3, "x", 2, 5)).unwrap();
        assert_eq!(a, b);
        let others: Vec<Patch> = (0..8)
            .map(|i| sample_patch(&m, 40, 40, 8, 0.0, &mut patch_rng(3, "x", 2, i)).unwrap())
            .collect();
        assert!(others.iter().any(|p| (p.x, p.y) != (a.x, a.y)));
        assert!(place_patch(&m, 40, 40, 41, false, &mut patch_rng(3, "x", 2, 0)).is_err());
    }

    #[test]
    fn epoch_order_visits_every_pair_before_repeating() {
        let o = epoch_order(5, 12, 9, 3);
        assert_eq!(o.len(), 12);
        let mut first: Vec<usize> = o[..5].to_vec();
        first.sort_unstable();
        assert_eq!(first, [0, 1, 2, 3, 4]);
        assert_eq!(o, epoch_order(5, 12, 9, 3));
        assert_ne!(o, epoch_order(5, 12, 9, 4));
    }

    #[test]
    fn crop_takes_rows_of_channels() {
        let data: Vec<u8> = (0..4 * 3 * 2).map(|v| v as u8).collect(); // 4x3, 2 channels
        let p = Patch {
            x: 1,
            y: 1,
            size: 2,
            foreground: false,
        };
        assert_eq!(crop(&data, 4, 2, &p), [10, 11, 12, 13, 18, 19, 20, 21]);
    }
}
