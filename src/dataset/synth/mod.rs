//! Synthetic DIARETDB1 v1.1 tree: fundus-like RGB images with drawn lesions and ground-truth
//! confidence maps that coincide with them, the field-of-view mask and the official split lists.
//!
//! `root` plays the role of `diaretdb1_v_1_1`:
//!
//! ```text
//! root/resources/images/ddb1_fundusimages/image001.png ..      width x height RGB
//! root/resources/images/ddb1_fundusmask/fmask.tif              8-bit gray, 255 inside the FOV
//! root/resources/images/ddb1_groundtruth/<lesion>/imageNNN.png 8-bit gray, multiples of 21 <= 252
//! root/resources/traindatasets/trainset.txt                    images/ddb1_fundusimages/imageNNN.png
//! root/resources/testdatasets/testset.txt
//! ```
//!
//! Each image is a pure function of (seed, stem, width, height): every draw comes from
//! `rng_for(seed, stem, "synth")`, so the same options give byte-identical files whatever the
//! thread count. All geometry is expressed in units of the field-of-view radius, so tiny test
//! sizes give the same picture, only coarser.
//!
//! Ground truth mimics the real maps: several "experts" marked each lesion, so a map holds a core
//! (usually 210 or 252, sometimes an uncertain 168) inside the drawn lesion, a blob-shaped 84..126
//! margin around it and sometimes a faint 42..84 circle around the whole thing. Overlaps take the
//! maximum, so values stay multiples of 21 in 0..=252.
//!
//! The code is split by concern: this module holds the public API (options, constants, stems),
//! the file writing and the split lists; `shapes` the geometry every drawing shares (field of
//! view, coverage planes, irregular blobs and their ground-truth marking); `vessels` the vessel
//! tree; `lesions` the lesion placement and ground-truth maps; `render` the per-image look and the
//! final compositing into RGB.

mod lesions;
mod render;
mod shapes;
mod vessels;

#[cfg(test)]
mod tests;

use std::fs;
use std::path::Path;

use anyhow::{bail, Context, Result};
use image::codecs::tiff::TiffEncoder;
use image::{ExtendedColorType, ImageEncoder};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use crate::config::Lesion;
use crate::io::{encode_png, write_atomic};
use render::render;
use shapes::Fov;

/// Folder of the fundus images, relative to `resources/` (also the prefix used in the lists).
pub const IMAGES_DIR: &str = "images/ddb1_fundusimages";
/// Folder of the field-of-view mask, relative to `resources/`.
pub const MASK_DIR: &str = "images/ddb1_fundusmask";
/// Folder of the ground-truth maps (one subfolder per lesion), relative to `resources/`.
pub const GROUNDTRUTH_DIR: &str = "images/ddb1_groundtruth";
/// The official DIARETDB1 v1.1 training images (by number); every other image is a test image.
pub const OFFICIAL_TRAIN: [usize; 28] = [
    1, 3, 4, 9, 10, 11, 13, 14, 20, 22, 24, 25, 26, 27, 28, 29, 35, 36, 38, 42, 53, 55, 57, 64, 70,
    79, 84, 86,
];

/// What to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SynthOptions {
    /// Number of images (1..=999; named image001.png ..).
    pub count: usize,
    /// Seed of every draw: same options, byte-identical files.
    pub seed: u64,
    /// Image width in pixels (DIARETDB1: 1500).
    pub width: u32,
    /// Image height in pixels (DIARETDB1: 1152).
    pub height: u32,
}

impl Default for SynthOptions {
    fn default() -> Self {
        SynthOptions {
            count: 89,
            seed: 1,
            width: 1500,
            height: 1152,
        }
    }
}

/// The stem of image number `i` (1-based): `image001`.
pub fn stem(i: usize) -> String {
    format!("image{i:03}")
}

/// Writes the whole tree under `root` (created if missing; existing files of the same names are
/// replaced, each through a temporary file renamed into place).
pub fn write_synthetic(root: &Path, opts: &SynthOptions) -> Result<()> {
    if opts.count == 0 || opts.count > 999 {
        bail!(
            "synthetic image count must be in 1..=999, got {}",
            opts.count
        );
    }
    const SIDES: std::ops::RangeInclusive<u32> = 32..=8192;
    if !SIDES.contains(&opts.width) || !SIDES.contains(&opts.height) {
        bail!(
            "synthetic image sides must be within 32..=8192 pixels, got {}x{}",
            opts.width,
            opts.height
        );
    }
    // The tree is written under `resources.partial/` (marked as ours) and renamed to
    // `resources/` when complete: a killed `synth` leaves no tree that looks whole, and a rerun
    // starts over.
    let partial = root.join(PARTIAL);
    let ours = partial.join(PARTIAL_MARKER).is_file();
    // A new tree only: writing into an existing one would overwrite photographs that the tool
    // did not make (or mix two synthetic sets).
    if let Some(first) = std::fs::read_dir(root).ok().and_then(|mut entries| {
        entries.find(|e| !(ours && e.as_ref().is_ok_and(|e| e.file_name() == PARTIAL)))
    }) {
        let first = first.map(|e| e.path().display().to_string());
        bail!(
            "{} is not empty (it holds {}): `synth` writes a new tree and never overwrites files; \
             choose a new or empty folder (nothing was written)",
            root.display(),
            first.unwrap_or_else(|_| "unreadable entries".into())
        );
    }
    if ours {
        fs::remove_dir_all(&partial)
            .with_context(|| format!("cannot remove the interrupted tree {}", partial.display()))?;
    }
    fs::create_dir_all(&partial)
        .with_context(|| format!("creating folder {}", partial.display()))?;
    write_atomic(
        &partial.join(PARTIAL_MARKER),
        b"an unfinished `pipeline synth` tree\n",
    )?;
    let res = partial.clone();
    let img_dir = res.join(IMAGES_DIR);
    let mask_dir = res.join(MASK_DIR);
    let gt_dir = res.join(GROUNDTRUTH_DIR);
    let train_dir = res.join("traindatasets");
    let test_dir = res.join("testdatasets");
    let mut dirs = vec![
        img_dir.clone(),
        mask_dir.clone(),
        train_dir.clone(),
        test_dir.clone(),
    ];
    dirs.extend(Lesion::ALL.iter().map(|l| gt_dir.join(l.folder())));
    for d in &dirs {
        fs::create_dir_all(d).with_context(|| format!("creating folder {}", d.display()))?;
    }

    let fov = Fov::new(opts.width, opts.height);
    let mask = fov.mask(opts.width, opts.height);
    let mut tiff = std::io::Cursor::new(Vec::new());
    TiffEncoder::new(&mut tiff)
        .write_image(&mask, opts.width, opts.height, ExtendedColorType::L8)
        .context("TIFF encoding failed")?;
    write_atomic(&mask_dir.join("fmask.tif"), tiff.get_ref())?;

    let (train, test) = split_lists(opts.count);
    for (ids, path) in [
        (&train, train_dir.join("trainset.txt")),
        (&test, test_dir.join("testset.txt")),
    ] {
        let text: String = ids
            .iter()
            .map(|&i| format!("{IMAGES_DIR}/{}.png\n", stem(i)))
            .collect();
        write_atomic(&path, text.as_bytes())?;
    }

    (1..=opts.count).into_par_iter().try_for_each(|i| {
        let stem = stem(i);
        let sample = render(opts.seed, &stem, opts.width, opts.height);
        write_png(
            &img_dir.join(format!("{stem}.png")),
            &sample.rgb,
            opts.width,
            opts.height,
            ExtendedColorType::Rgb8,
        )?;
        for (lesion, map) in Lesion::ALL.iter().zip(&sample.truth) {
            write_png(
                &gt_dir.join(lesion.folder()).join(format!("{stem}.png")),
                map,
                opts.width,
                opts.height,
                ExtendedColorType::L8,
            )?;
        }
        crate::io::commit_point("synth: image written");
        Ok::<(), anyhow::Error>(())
    })?;
    fs::remove_file(partial.join(PARTIAL_MARKER))
        .with_context(|| format!("cannot finish {}", partial.display()))?;
    let done = root.join("resources");
    fs::rename(&partial, &done)
        .with_context(|| format!("cannot rename {} to {}", partial.display(), done.display()))
}

/// Where `synth` writes its tree until it is complete (then renamed to `resources/`).
const PARTIAL: &str = "resources.partial";
/// The file that marks [`PARTIAL`] as an unfinished tree of `synth` (which a rerun may remove).
const PARTIAL_MARKER: &str = ".pipeline-synth-partial";

/// The official split restricted to images 1..=count, as (train, test) image numbers. When that
/// leaves fewer than 2 training images or no test image, every third image (1, 4, 7, ..) trains
/// instead, so both lists are non-empty whenever count >= 2.
fn split_lists(count: usize) -> (Vec<usize>, Vec<usize>) {
    let official: Vec<usize> = OFFICIAL_TRAIN
        .iter()
        .copied()
        .filter(|&i| i <= count)
        .collect();
    let is_train: Box<dyn Fn(usize) -> bool> = if official.len() >= 2 && official.len() < count {
        Box::new(move |i| official.contains(&i))
    } else {
        Box::new(|i| (i - 1) % 3 == 0)
    };
    (1..=count).partition(|&i| is_train(i))
}

fn write_png(path: &Path, buf: &[u8], w: u32, h: u32, color: ExtendedColorType) -> Result<()> {
    write_atomic(path, &encode_png(buf, w, h, color)?)
}

/// A uniformly chosen element of `items` (one generator draw).
fn pick<T: Copy>(rng: &mut ChaCha8Rng, items: &[T]) -> T {
    items[rng.random_range(0..items.len())]
}
