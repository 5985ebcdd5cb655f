//! Inference on full-size fundus images: square exactly as the generator does
//! (`prep::fill_colour` + `prep::square_image`), predict as a sliding window of the training input
//! size or in one pass (`infer.mode`, [`super::fullres::predict_photo`]), take the probabilities
//! back to the original frame in f32 and threshold. Writes per input
//! `<stem>_mask.png` (0/255), `<stem>_green.png` (green mask on black) and `<stem>_overlay.png`.

use std::path::{Path, PathBuf};

use super::fullres::{predict_photo, Inference};
use super::model::Model;
use super::{device, io};
use anyhow::{bail, Context, Result};
use fundus_pipeline::cli::DeviceChoice;
use fundus_pipeline::config::Config;
use fundus_pipeline::io::{encode_png_gray, encode_png_rgb, write_atomic};
use fundus_pipeline::run_layout::Split;
use image::{GrayImage, Luma, Rgb, RgbImage};

/// What `infer` writes per input `<stem>`: the mask, the green mask, the overlay.
pub const OUTPUT_SUFFIXES: [&str; 3] = ["_mask.png", "_green.png", "_overlay.png"];

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
/// Also returns the messages of folder entries the reader contract refuses (reported, not fatal).
pub fn input_images(cfg: &Config, images: Option<&Path>) -> Result<(Vec<PathBuf>, Vec<String>)> {
    if let Some(dir) = images.or(cfg.infer.images.as_deref()) {
        if !dir.is_dir() {
            bail!("image folder {} does not exist", dir.display());
        }
        // Entries the reader contract refuses (two files for one name, a folder with an image
        // name) are reported like unreadable inputs: the other inputs still get their masks.
        let listing = fundus_pipeline::input::list_images(dir)?;
        let refused: Vec<String> = listing
            .ambiguous
            .iter()
            .map(|(stem, paths)| fundus_pipeline::input::ambiguous_message(stem, paths))
            .chain(
                listing
                    .not_files
                    .values()
                    .map(|p| fundus_pipeline::input::not_a_file_message(p)),
            )
            .collect();
        let files: Vec<PathBuf> = listing.images.into_values().collect();
        if files.is_empty() && refused.is_empty() {
            bail!(
                "no images ({}) in {}",
                fundus_pipeline::input::EXTENSIONS.join(", "),
                dir.display()
            );
        }
        return Ok((files, refused));
    }
    let run = cfg.layout();
    let m = fundus_pipeline::split::require_complete(cfg).context(
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
    Ok((out, Vec::new()))
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
    infer_run_shard(cfg, choice, images, infer_dir, None)
}

/// [`infer_run`] over the inputs `shard` owns (`infer --shard K/N`): those whose file stem the
/// generator's assignment rule gives to it ([`fundus_pipeline::shard::owner`]), so the shards' outputs
/// never share a name.
pub fn infer_run_shard(
    cfg: &Config,
    choice: DeviceChoice,
    images: Option<&Path>,
    infer_dir: Option<&Path>,
    shard: Option<&fundus_pipeline::shard::Shard>,
) -> Result<Vec<InferOutput>> {
    let (mut inputs, refused) = input_images(cfg, images)?;
    if let Some(s) = shard {
        inputs.retain(|p| s.owns(&p.file_stem().unwrap_or_default().to_string_lossy()));
        println!(
            "infer: shard {s} takes {} of the input images",
            inputs.len()
        );
    }
    let device = device::select_for("infer", choice)?;
    let size = cfg.generate.size;
    cfg.model.check_size(size)?;
    let (model, _) = Model::load_best(cfg, device)?;
    let inference = Inference::from_config(cfg);
    println!("infer: {}", serde_json::to_string(&inference.choices())?);
    let net = |x: &tch::Tensor| model.predict(x);
    let out = infer_dir.map_or_else(|| cfg.layout().infer_dir(), Path::to_path_buf);
    io::create_dir(&out)?;
    // Every output name is claimed before the first is written: a file of the same name that
    // the tool did not make is refused by name, never overwritten (fundus_pipeline::owned).
    let names: Vec<String> = inputs
        .iter()
        .flat_map(|i| {
            let stem = i.file_stem().and_then(|s| s.to_str()).unwrap_or("image");
            OUTPUT_SUFFIXES.map(|suffix| format!("{stem}{suffix}"))
        })
        .collect();
    fundus_pipeline::owned::claim(&out, &names)?;

    let mut written = Vec::with_capacity(inputs.len());
    let mut failed: Vec<String> = Vec::new();
    let n_inputs = inputs.len() + refused.len();
    for message in refused {
        eprintln!("error: infer: {message}");
        failed.push(message);
    }
    for input in inputs {
        // One bad input does not stop the others: report it, go on, fail at the end.
        let img = match fundus_pipeline::input::read_image(&input, cfg.max_image_pixels) {
            Ok(img) => img.to_rgb8(),
            Err(e) => {
                eprintln!("error: infer: {e:#}");
                failed.push(format!("{e:#}"));
                continue;
            }
        };
        let prob = predict_photo(&net, device, &img, &inference)?;
        let t = cfg.infer.threshold as f32;
        // A network trained with its loss inside the field of view only (`train.loss_in_fov`)
        // was never taught what lies outside it: no lesion is reported there.
        let fov = cfg
            .train
            .loss_in_fov
            .then(|| fundus_pipeline::scoring::fov_from_image(&img, cfg.evaluate.fov_min_level));
        let mask = GrayImage::from_fn(img.width(), img.height(), |x, y| {
            let inside = fov.as_ref().is_none_or(|f| f.get_pixel(x, y)[0] > 0);
            Luma([if inside && prob.get_pixel(x, y)[0] >= t {
                255
            } else {
                0
            }])
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
            mask: out.join(format!("{stem}{}", OUTPUT_SUFFIXES[0])),
            green: out.join(format!("{stem}{}", OUTPUT_SUFFIXES[1])),
            overlay: out.join(format!("{stem}{}", OUTPUT_SUFFIXES[2])),
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
