//! Inference on full-size fundus images: square exactly as the generator does
//! (`prep::fill_colour` + `prep::square_image`), predict as a sliding window of the training input
//! size or in one pass (`infer.mode`, [`super::fullres::predict_photo`]), take the probabilities
//! back to the original frame in f32 and threshold. Writes per input
//! `<stem>_mask.png` (0/255), `<stem>_green.png` (green mask on black) and `<stem>_overlay.png`.

use std::path::{Path, PathBuf};

use super::fullres::{predict_photo, Inference};
use super::model::Model;
use super::{device, io};
use crate::cli::DeviceChoice;
use crate::config::Config;
use crate::input::image_files;
use crate::io::{encode_png_gray, encode_png_rgb, write_atomic};
use crate::prep::{unsquare, SquareGeometry};
use crate::run_layout::Split;
use anyhow::{bail, Context, Result};
use image::{GrayImage, Luma, Rgb, RgbImage};

/// Files written for one input.
#[derive(Debug, Clone)]
pub struct InferOutput {
    /// The full-size fundus image read.
    pub input: PathBuf,
    /// `<stem>_mask.png`: 1-channel 0/255 at the input's size.
    pub mask: PathBuf,
    /// `<stem>_green.png`: the mask in green on black.
    pub green: PathBuf,
    /// `<stem>_overlay.png`: the mask blended over the input.
    pub overlay: PathBuf,
}

/// The inputs: `images` (command line), else `infer.images`, else the photographs of the test
/// split's sources as the run's manifest records them (paths relative to `data`).
pub fn input_images(cfg: &Config, images: Option<&Path>) -> Result<Vec<PathBuf>> {
    if let Some(dir) = images.or(cfg.infer.images.as_deref()) {
        if !dir.is_dir() {
            bail!("image folder {} does not exist", dir.display());
        }
        let files: Vec<PathBuf> = image_files(dir)?.into_values().collect();
        if files.is_empty() {
            bail!(
                "no images ({}) in {}",
                crate::input::EXTENSIONS.join(", "),
                dir.display()
            );
        }
        return Ok(files);
    }
    let run = cfg.layout();
    let m = crate::split::require_complete(&run).context(
        "no input images: pass --images DIR or set `infer.images`, or make the split first",
    )?;
    let mut out = Vec::new();
    for r in m
        .split_sources(Split::Test)
        .with_context(|| format!("in {}", run.manifest().display()))?
    {
        let image = cfg.data.join(&r.image);
        if !image.is_file() {
            bail!(
                "photograph {} of test source {} not found (is `data` right?)",
                image.display(),
                r.stem
            );
        }
        out.push(image);
    }
    if out.is_empty() {
        bail!(
            "the test split of {} has no sources",
            run.manifest().display()
        );
    }
    Ok(out)
}

/// Probabilities of a `size` x `size` square -> a 0/255 mask in the original frame.
pub fn mask_from_probs(probs: &[f32], g: &SquareGeometry, threshold: f64) -> Result<GrayImage> {
    let map = GrayImage::from_raw(
        g.size,
        g.size,
        probs
            .iter()
            .map(|p| (p.clamp(0.0, 1.0) * 255.0).round() as u8)
            .collect(),
    )
    .context("probability map has the wrong size")?;
    let back = unsquare(&map, g)?;
    // 0.5 -> 128: the threshold on the 0..255 scale, rounded half up.
    let t = (threshold * 255.0).round() as u8;
    Ok(GrayImage::from_fn(back.width(), back.height(), |x, y| {
        Luma([if back.get_pixel(x, y)[0] >= t { 255 } else { 0 }])
    }))
}

/// Predicts a mask for every input image ([`input_images`]) with the `best` checkpoint of
/// `<run>/train/` and writes the three files per input into `infer_dir` (default
/// `<run>/infer/`). Errors: no checkpoint or one of another model, an unreadable input, an
/// output folder that cannot be created.
pub fn infer_run(
    cfg: &Config,
    choice: DeviceChoice,
    images: Option<&Path>,
    infer_dir: Option<&Path>,
) -> Result<Vec<InferOutput>> {
    let inputs = input_images(cfg, images)?;
    let device = device::select_for("infer", choice)?;
    let size = cfg.generate.size;
    cfg.model.check_size(size)?;
    let dir = cfg.layout().train_dir();
    let (model, _) = Model::load(&cfg.model, size, &dir, "best", device)?;
    let model = model.with_input_norm(cfg.train.input_norm);
    let inference = Inference::from_config(cfg);
    println!("infer: {}", inference.to_json());
    let net = |x: &tch::Tensor| model.predict(x);
    let out = infer_dir.map_or_else(|| cfg.layout().infer_dir(), Path::to_path_buf);
    io::create_dir(&out)?;

    let mut written = Vec::with_capacity(inputs.len());
    let mut failed: Vec<String> = Vec::new();
    let n_inputs = inputs.len();
    for input in inputs {
        // One bad input does not stop the others: report it, go on, fail at the end.
        let img = match crate::input::read_image(&input, cfg.max_image_pixels) {
            Ok(img) => img.to_rgb8(),
            Err(e) => {
                eprintln!("error: infer: {e:#}");
                failed.push(format!("{e:#}"));
                continue;
            }
        };
        let prob = predict_photo(&net, device, &img, &inference)?;
        let t = cfg.infer.threshold as f32;
        let mask = GrayImage::from_fn(img.width(), img.height(), |x, y| {
            Luma([if prob.get_pixel(x, y)[0] >= t { 255 } else { 0 }])
        });
        let green = RgbImage::from_fn(mask.width(), mask.height(), |x, y| {
            Rgb([0, mask.get_pixel(x, y)[0], 0])
        });
        let a = cfg.infer.overlay_alpha;
        let overlay = RgbImage::from_fn(img.width(), img.height(), |x, y| {
            let p = img.get_pixel(x, y);
            if mask.get_pixel(x, y)[0] == 0 {
                *p
            } else {
                let mix = |v: u8, g: f64| ((1.0 - a) * f64::from(v) + a * g).round() as u8;
                Rgb([mix(p[0], 0.0), mix(p[1], 255.0), mix(p[2], 0.0)])
            }
        });
        let stem = input
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("image")
            .to_string();
        let o = InferOutput {
            mask: out.join(format!("{stem}_mask.png")),
            green: out.join(format!("{stem}_green.png")),
            overlay: out.join(format!("{stem}_overlay.png")),
            input,
        };
        write_atomic(&o.mask, &encode_png_gray(&mask)?)?;
        write_atomic(&o.green, &encode_png_rgb(&green)?)?;
        write_atomic(&o.overlay, &encode_png_rgb(&overlay)?)?;
        let lesion = mask.pixels().filter(|p| p[0] > 0).count();
        println!(
            "infer: {} -> {} ({}x{}, {:.2}% lesion)",
            o.input.display(),
            o.mask.display(),
            mask.width(),
            mask.height(),
            100.0 * lesion as f64 / (mask.width() * mask.height()) as f64
        );
        written.push(o);
    }
    println!(
        "infer: {} images written to {}",
        written.len(),
        out.display()
    );
    if !failed.is_empty() {
        bail!(
            "{} of {n_inputs} input image(s) could not be read (listed above); the others were \
             written to {}",
            failed.len(),
            out.display()
        );
    }
    Ok(written)
}
