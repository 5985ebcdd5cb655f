//! The split folders the generator writes: `<run>/dataset/<split>/{images,masks}/<stem>_<variant>.*`.
//! Pairs by file stem (an image may be .jpg while its mask is .png), decodes per batch on a
//! background thread (so the full 2937-pair set never sits in memory), and turns batches into
//! tensors.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, Receiver};
use std::thread::JoinHandle;

use anyhow::{bail, ensure, Result};
use fundus_pipeline::run_layout::{PairPart, RunLayout, Split};
use rayon::prelude::*;
use tch::{Device, Kind, Tensor};

use fundus_pipeline::io::{hash_file, open_image};

/// One image/mask pair of a split.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    /// The pair's name `<stem>_<variant>` (the shared file stem).
    pub stem: String,
    /// The RGB image, `generate.size` square.
    pub image: PathBuf,
    /// The mask (lesion where >= 128), same size.
    pub mask: PathBuf,
}

/// Image files of a folder by stem (sorted); hidden and non-image files are skipped. The reader
/// contract is [`fundus_pipeline::input`]'s (one for every stage).
pub fn image_files(dir: &Path) -> Result<BTreeMap<String, PathBuf>> {
    fundus_pipeline::input::image_files(dir)
}

/// The pairs of `<run>/dataset/<split>`, sorted by stem. Errors name the missing folder or the
/// unpaired files.
pub fn scan_split(run: &RunLayout, split: Split) -> Result<Vec<Sample>> {
    let (img_dir, mask_dir) = (
        run.split_dir(split, PairPart::Image),
        run.split_dir(split, PairPart::Mask),
    );
    for d in [&img_dir, &mask_dir] {
        if !d.is_dir() {
            bail!(
                "missing split folder {} (run `pipeline split` first)",
                d.display()
            );
        }
    }
    let images = image_files(&img_dir)?;
    let masks = image_files(&mask_dir)?;
    let no_mask: Vec<&str> = images
        .iter()
        .filter(|(s, _)| !masks.contains_key(*s))
        .map(|(_, p)| file_name(p))
        .collect();
    let no_image: Vec<&str> = masks
        .iter()
        .filter(|(s, _)| !images.contains_key(*s))
        .map(|(_, p)| file_name(p))
        .collect();
    if !no_mask.is_empty() || !no_image.is_empty() {
        bail!(
            "split `{split}`: {} images and {} masks; images without a mask in {}: [{}]; \
             masks without an image in {}: [{}]",
            images.len(),
            masks.len(),
            mask_dir.display(),
            list(&no_mask),
            img_dir.display(),
            list(&no_image)
        );
    }
    ensure!(
        !images.is_empty(),
        "split folder {} holds no images",
        img_dir.display()
    );
    Ok(images
        .into_iter()
        .map(|(stem, image)| {
            let mask = masks[&stem].clone();
            Sample { stem, image, mask }
        })
        .collect())
}

fn file_name(p: &Path) -> &str {
    p.file_name().and_then(|n| n.to_str()).unwrap_or("?")
}

fn list(names: &[&str]) -> String {
    const SHOWN: usize = 8;
    let mut s = names
        .iter()
        .take(SHOWN)
        .copied()
        .collect::<Vec<_>>()
        .join(", ");
    if names.len() > SHOWN {
        s.push_str(&format!(", ... ({} in all)", names.len()));
    }
    s
}

/// blake3 over the pairs of `splits` (name, then for each pair its stem, file names and the
/// blake3 of both files' bytes), hex: what `--resume` compares to find changed training data.
/// Errors: a file that cannot be read (named).
pub fn split_hash(splits: &[(&str, &[Sample])]) -> Result<String> {
    let mut h = blake3::Hasher::new();
    for (name, samples) in splits {
        let hashes: Vec<(String, String)> = samples
            .par_iter()
            .map(|s| Ok((hash_file(&s.image)?, hash_file(&s.mask)?)))
            .collect::<Result<_>>()?;
        h.update(format!("split {name} {}\n", samples.len()).as_bytes());
        for (s, (hi, hm)) in samples.iter().zip(hashes) {
            let line = format!(
                "{} {} {hi} {} {hm}\n",
                s.stem,
                file_name(&s.image),
                file_name(&s.mask)
            );
            h.update(line.as_bytes());
        }
    }
    Ok(h.finalize().to_hex().to_string())
}

/// Decodes one pair: RGB image and a {0,1} mask, both `size` x `size`.
pub fn load_sample(s: &Sample, size: u32) -> Result<(Vec<u8>, Vec<u8>)> {
    let img = open_image(&s.image)?.to_rgb8();
    let mask = open_image(&s.mask)?.to_luma8();
    for (what, path, dims) in [
        ("image", &s.image, img.dimensions()),
        ("mask", &s.mask, mask.dimensions()),
    ] {
        ensure!(
            dims == (size, size),
            "{what} {} is {}x{}, expected {size}x{size} (`generate.size`)",
            path.display(),
            dims.0,
            dims.1
        );
    }
    let mask = mask
        .into_raw()
        .into_iter()
        .map(|v| u8::from(v >= 128))
        .collect();
    Ok((img.into_raw(), mask))
}

/// A decoded batch: NHWC RGB bytes and NHW {0,1} mask bytes.
pub struct Batch {
    /// The pairs' names, in batch order.
    pub stems: Vec<String>,
    /// RGB bytes, `[N, S, S, 3]` row-major (NHWC), 0..=255.
    pub images: Vec<u8>,
    /// Mask bytes, `[N, S, S]`, 0 or 1.
    pub masks: Vec<u8>,
    /// Side S in pixels.
    pub size: u32,
}

impl Batch {
    /// Decodes `samples` in parallel (rayon) into one batch of side `size`. Errors: a file that
    /// cannot be decoded, or that is not `size` x `size` (the message names the file, its size
    /// and `generate.size`).
    pub fn load(samples: &[&Sample], size: u32) -> Result<Batch> {
        let loaded: Vec<(Vec<u8>, Vec<u8>)> = samples
            .par_iter()
            .map(|s| load_sample(s, size))
            .collect::<Result<_>>()?;
        let mut b = Batch {
            stems: samples.iter().map(|s| s.stem.clone()).collect(),
            images: Vec::with_capacity(loaded.len() * (size * size * 3) as usize),
            masks: Vec::with_capacity(loaded.len() * (size * size) as usize),
            size,
        };
        for (i, m) in loaded {
            b.images.extend_from_slice(&i);
            b.masks.extend_from_slice(&m);
        }
        Ok(b)
    }

    /// Pairs in the batch (N).
    pub fn len(&self) -> usize {
        self.stems.len()
    }

    /// True for a batch of no pairs.
    pub fn is_empty(&self) -> bool {
        self.stems.is_empty()
    }

    /// ([N,3,S,S] float in [0,1], [N,1,S,S] float {0,1}) on `device` (bytes are moved, then scaled).
    pub fn tensors(&self, device: Device) -> (Tensor, Tensor) {
        let (n, s) = (self.len() as i64, i64::from(self.size));
        (
            images_tensor(&self.images, n, s, device),
            Tensor::from_slice(&self.masks)
                .view([n, 1, s, s])
                .to_device(device)
                .to_kind(Kind::Float),
        )
    }
}

/// NHWC RGB bytes -> [N,3,S,S] float in [0,1] on `device`.
pub fn images_tensor(bytes: &[u8], n: i64, s: i64, device: Device) -> Tensor {
    Tensor::from_slice(bytes)
        .view([n, s, s, 3])
        .to_device(device)
        .permute([0, 3, 1, 2])
        .to_kind(Kind::Float)
        / 255.0
}

/// Results of `make` over `jobs`, computed one ahead on a background thread (a bounded channel
/// of 2). Iteration stops after the first `Err` (yielded). Dropping it closes the channel first,
/// so a worker blocked on sending finishes, then joins it.
pub struct Prefetch<T: Send + 'static> {
    rx: Option<Receiver<Result<T>>>,
    worker: Option<JoinHandle<()>>,
}

impl<T: Send + 'static> Prefetch<T> {
    /// Starts the worker on `jobs` in order.
    pub fn new<J: Send + 'static>(
        jobs: Vec<J>,
        make: impl Fn(J) -> Result<T> + Send + 'static,
    ) -> Self {
        let (tx, rx) = sync_channel(2);
        let worker = std::thread::spawn(move || {
            for job in jobs {
                let item = make(job);
                let failed = item.is_err();
                if tx.send(item).is_err() || failed {
                    return;
                }
            }
        });
        Self {
            rx: Some(rx),
            worker: Some(worker),
        }
    }
}

impl<T: Send + 'static> Iterator for Prefetch<T> {
    type Item = Result<T>;

    fn next(&mut self) -> Option<Result<T>> {
        self.rx.as_ref()?.recv().ok()
    }
}

impl<T: Send + 'static> Drop for Prefetch<T> {
    fn drop(&mut self) {
        // Closing the channel first lets a worker blocked on `send` finish.
        self.rx.take();
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
    }
}

/// Batches of `samples` in `order`, decoded one batch ahead on a background thread: batches of
/// `batch_size` (the last may be smaller) of `samples[order[..]]` at side `size`. Iteration stops
/// after the first batch that fails to load (yielded as its `Err`).
pub fn load_batches(
    samples: &[Sample],
    order: &[usize],
    batch_size: usize,
    size: u32,
) -> Prefetch<Batch> {
    let chunks: Vec<Vec<Sample>> = order
        .chunks(batch_size)
        .map(|c| c.iter().map(|&i| samples[i].clone()).collect())
        .collect();
    Prefetch::new(chunks, move |chunk| {
        let refs: Vec<&Sample> = chunk.iter().collect();
        Batch::load(&refs, size)
    })
}
