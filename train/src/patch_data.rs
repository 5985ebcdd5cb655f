//! Training batches of patches (issue 9): each step's pairs are decoded at `generate.size` and a
//! `train.patch_size` square is cut from each, centred on a lesion pixel with probability
//! `train.foreground_share` ([`fundus_pipeline::patches`]). Decoded one batch ahead on a background thread,
//! like [`super::data::load_batches`]. Also the per-image field-of-view mask for FOV-restricted losses.

use anyhow::Result;
use rayon::prelude::*;
use tch::{Device, Kind, Tensor};

use super::data::{load_batches, load_sample, Batch, Prefetch, Sample};
use super::losses::Loss;
use fundus_pipeline::config::Config;
use fundus_pipeline::patches::{crop, patch_rng, sample_patch};
use fundus_pipeline::scoring::fov_from_image;
use fundus_pipeline::train_config::TrainConfig;

/// What a patch batch is cut with.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PatchSpec {
    /// Side of the stored pairs (`generate.size`).
    pub size: u32,
    /// Side of the patches.
    pub patch: u32,
    /// Share of patches centred on a lesion pixel.
    pub foreground_share: f64,
    /// The run's seed: with the pair's name, the epoch and its position in the epoch it seeds
    /// the patch's place (so the cut does not depend on threads or batching).
    pub seed: u64,
    /// The epoch (1-based) the batch belongs to.
    pub epoch: usize,
    /// `fov_min_level` of the field-of-view estimate (computed on the whole pair, then cut).
    pub fov_min_level: u8,
}

/// A batch of patches with the field of view of each patch ({0,1} bytes, N x patch x patch).
pub struct PatchBatch {
    /// The patches as a batch of side `patch` (images and masks).
    pub batch: Batch,
    /// Field of view of each patch, `[N, patch, patch]` bytes, 1 inside and 0 outside.
    pub fov: Vec<u8>,
}

/// Loads `samples` (the pairs at positions `first..` of the epoch) and cuts one patch from each.
pub fn load_patch_batch(samples: &[&Sample], first: usize, spec: &PatchSpec) -> Result<PatchBatch> {
    let cut: Vec<(Vec<u8>, Vec<u8>, Vec<u8>)> = samples
        .par_iter()
        .enumerate()
        .map(|(i, s)| {
            let (img, mask) = load_sample(s, spec.size)?;
            let mut rng = patch_rng(spec.seed, &s.stem, spec.epoch, first + i);
            let p = sample_patch(
                &mask,
                spec.size,
                spec.size,
                spec.patch,
                spec.foreground_share,
                &mut rng,
            )?;
            let fov = fov_bytes(&img, spec.size, spec.fov_min_level);
            Ok((
                crop(&img, spec.size, 3, &p),
                crop(&mask, spec.size, 1, &p),
                crop(&fov, spec.size, 1, &p),
            ))
        })
        .collect::<Result<_>>()?;
    let mut b = Batch {
        stems: samples.iter().map(|s| s.stem.clone()).collect(),
        images: Vec::new(),
        masks: Vec::new(),
        size: spec.patch,
    };
    let mut fov = Vec::new();
    for (i, m, f) in cut {
        b.images.extend_from_slice(&i);
        b.masks.extend_from_slice(&m);
        fov.extend_from_slice(&f);
    }
    Ok(PatchBatch { batch: b, fov })
}

/// Patch batches of `samples` in `order`, decoded one batch ahead on a background thread:
/// batches of `batch_size` pairs of `samples[order[..]]`, one patch cut from each as `spec` says.
/// Iteration stops after the first batch that fails (its `Err`).
pub fn load_patch_batches(
    samples: &[Sample],
    order: &[usize],
    batch_size: usize,
    spec: PatchSpec,
) -> Prefetch<PatchBatch> {
    let chunks: Vec<(usize, Vec<Sample>)> = order
        .chunks(batch_size)
        .enumerate()
        .map(|(k, c)| {
            (
                k * batch_size,
                c.iter().map(|&i| samples[i].clone()).collect(),
            )
        })
        .collect();
    Prefetch::new(chunks, move |(first, chunk)| {
        let refs: Vec<&Sample> = chunk.iter().collect();
        load_patch_batch(&refs, first, &spec)
    })
}

/// Training batches, each with the field of view of its patches ({0,1} bytes) when cut from pairs.
pub type TrainBatches = Box<dyn Iterator<Item = Result<(Batch, Option<Vec<u8>>)>>>;

/// The lesion-aware training recipe of a run (issue 9): the loss, whether it is restricted to
/// the field of view, and the patch sampling (`train.patch_size`, `foreground_share`,
/// `epoch_length`). `Recipe::from_config` of a default config is the reference's training.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Recipe {
    /// The loss and its Tversky parameters (`train.loss`, `train.tversky_*`, `train.focal_gamma`).
    pub loss: Loss,
    /// `evaluate.fov_min_level` when `train.loss_in_fov`.
    pub fov_level: Option<u8>,
    /// Patch side in pixels (`train.patch_size`); None trains on whole pairs.
    pub patch: Option<u32>,
    /// Share of patches centred on a lesion pixel (`train.foreground_share`, 0..=1).
    pub foreground_share: f64,
    /// Steps per epoch when sampling patches (`train.epoch_length`); None is one pass.
    pub epoch_length: Option<usize>,
    /// The run's seed (patch order and places).
    pub seed: u64,
}

impl Recipe {
    /// The recipe of `cfg`'s `train` section (with `seed` and `evaluate.fov_min_level`).
    pub fn from_config(cfg: &Config) -> Self {
        let t = &cfg.train;
        Self {
            loss: Loss::from_config(t),
            fov_level: t.loss_in_fov.then_some(cfg.evaluate.fov_min_level),
            patch: t.patch_size,
            foreground_share: t.foreground_share,
            epoch_length: t.epoch_length,
            seed: cfg.seed,
        }
    }

    /// The reference's training: BCE + Dice over whole pairs, every pixel counted.
    pub fn reference() -> Self {
        Self {
            loss: Loss::reference(),
            fov_level: None,
            patch: None,
            foreground_share: 0.0,
            epoch_length: None,
            seed: 0,
        }
    }

    /// One line for the log, or None for the reference's recipe.
    pub fn describe(&self) -> Option<String> {
        let fov = if self.fov_level.is_some() {
            " inside the field of view"
        } else {
            ""
        };
        match self.patch {
            Some(p) => Some(format!(
                "patches of {p}x{p}, {:.0}% centred on lesion pixels, loss {}{fov}",
                100.0 * self.foreground_share,
                self.loss.kind
            )),
            None if self.loss != Loss::reference() || !fov.is_empty() => {
                Some(format!("whole pairs, loss {}{fov}", self.loss.kind))
            }
            None => None,
        }
    }

    /// The pairs of `epoch` when sampling patches: `train.epoch_length` steps (default one pass,
    /// capped by `max_steps_per_epoch`) of consecutive seeded shuffles ([`fundus_pipeline::patches::epoch_order`]);
    /// None without patches (the caller keeps the reference's order).
    pub fn patch_order(&self, n: usize, t: &TrainConfig, epoch: usize) -> Option<Vec<usize>> {
        self.patch?;
        let mut steps = self
            .epoch_length
            .unwrap_or_else(|| n.div_ceil(t.batch_size));
        if let Some(max) = t.max_steps_per_epoch {
            steps = steps.min(max);
        }
        Some(fundus_pipeline::patches::epoch_order(
            n,
            steps * t.batch_size,
            self.seed,
            epoch,
        ))
    }

    /// The training batches of an epoch, each with the FOV of its patches when cutting patches.
    pub fn batches(
        &self,
        train: &[Sample],
        order: &[usize],
        batch_size: usize,
        size: u32,
        epoch: usize,
    ) -> TrainBatches {
        match self.patch {
            Some(patch) => Box::new(
                load_patch_batches(
                    train,
                    order,
                    batch_size,
                    PatchSpec {
                        size,
                        patch,
                        foreground_share: self.foreground_share,
                        seed: self.seed,
                        epoch,
                        fov_min_level: self
                            .fov_level
                            .unwrap_or(fundus_pipeline::scoring::FOV_MIN_LEVEL),
                    },
                )
                .map(|b| b.map(|p| (p.batch, Some(p.fov)))),
            ),
            None => {
                Box::new(load_batches(train, order, batch_size, size).map(|b| b.map(|b| (b, None))))
            }
        }
    }

    /// The FOV tensor of a batch when the loss is restricted to it: the patches' own (cut from
    /// the whole pair) or estimated on the batch's images.
    pub fn fov(&self, batch: &Batch, patch_fov: Option<&[u8]>, device: Device) -> Option<Tensor> {
        let level = self.fov_level?;
        Some(match patch_fov {
            Some(f) => mask_tensor(f, batch.len(), batch.size, device),
            None => fov_tensor(batch, level, device),
        })
    }
}

/// The estimated field of view ({0,1} per pixel) of one `s` x `s` RGB image ([`fov_from_image`]).
pub fn fov_bytes(rgb: &[u8], s: u32, min_level: u8) -> Vec<u8> {
    let img = image::RgbImage::from_raw(s, s, rgb.to_vec()).expect("image size");
    fov_from_image(&img, min_level)
        .into_raw()
        .into_iter()
        .map(|x| u8::from(x > 0))
        .collect()
}

/// {0,1} bytes of N images of `s` x `s` -> a float tensor [N, 1, S, S] on `device`.
pub fn mask_tensor(bytes: &[u8], n: usize, s: u32, device: Device) -> Tensor {
    Tensor::from_slice(bytes)
        .view([n as i64, 1, i64::from(s), i64::from(s)])
        .to_device(device)
        .to_kind(Kind::Float)
}

/// The field of view of every image of a whole-image `batch` as a {0,1} float tensor [N, 1, S, S].
pub fn fov_tensor(batch: &Batch, min_level: u8, device: Device) -> Tensor {
    let s = batch.size;
    let px = (s * s) as usize;
    let v: Vec<u8> = (0..batch.len())
        .flat_map(|i| fov_bytes(&batch.images[i * px * 3..(i + 1) * px * 3], s, min_level))
        .collect();
    mask_tensor(&v, batch.len(), s, device)
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{GrayImage, Luma, Rgb, RgbImage};

    #[test]
    fn foreground_patches_hold_lesion_pixels_and_their_fov() {
        let tmp = tempfile::tempdir().unwrap();
        // 64x64 pair: dark surround outside a disc (r 28), one lesion block at (40..44, 20..24).
        let lesion = |x: u32, y: u32| (40..44).contains(&x) && (20..24).contains(&y);
        let img = RgbImage::from_fn(64, 64, |x, y| {
            let d = ((x as f64 - 32.0).powi(2) + (y as f64 - 32.0).powi(2)).sqrt();
            if d > 28.0 {
                Rgb([2, 2, 2])
            } else if lesion(x, y) {
                Rgb([60, 10, 10])
            } else {
                Rgb([180, 90, 40])
            }
        });
        let mask = GrayImage::from_fn(64, 64, |x, y| Luma([255 * u8::from(lesion(x, y))]));
        let (ip, mp) = (tmp.path().join("a.png"), tmp.path().join("m.png"));
        img.save(&ip).unwrap();
        mask.save(&mp).unwrap();
        let s = Sample {
            stem: "a_orig".into(),
            image: ip,
            mask: mp,
        };
        let spec = PatchSpec {
            size: 64,
            patch: 16,
            foreground_share: 1.0,
            seed: 3,
            epoch: 1,
            fov_min_level: 20,
        };
        let pb = load_patch_batch(&[&s, &s], 0, &spec).unwrap();
        assert_eq!(pb.batch.size, 16);
        assert_eq!(pb.batch.masks.len(), 2 * 256);
        assert_eq!(pb.fov.len(), 2 * 256);
        for i in 0..2 {
            let m = &pb.batch.masks[i * 256..(i + 1) * 256];
            assert!(
                m.iter().filter(|v| **v == 1).count() >= 4,
                "patch {i} misses the lesion"
            );
        }
        // The lesion is inside the disc: its pixels are in the FOV of the patch.
        for (m, f) in pb.batch.masks.iter().zip(&pb.fov) {
            assert!(*m == 0 || *f == 1);
        }
        // Reproducible.
        let again = load_patch_batch(&[&s, &s], 0, &spec).unwrap();
        assert_eq!(again.batch.images, pb.batch.images);
    }
}
