//! Which photographs `evaluate` scores, with their ground truth and field of view: the test
//! split's sources (found through `manifest.json`'s source records, else DIARETDB1's layout under
//! `data`), or any folder of photographs with a folder of ground-truth maps of the same stems.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use image::{GrayImage, RgbImage};

use crate::config::Config;
use crate::dataset::layout::{fov_mask, FOV_MASK};
use crate::io::open_image;
use crate::manifest::Manifest;
use crate::recipe_config::FovSource;
use crate::run_layout::Split;

/// One photograph to score.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Photo {
    /// File stem, e.g. `image013`; names the case in the results.
    pub stem: String,
    /// The fundus photograph at its own resolution.
    pub image: PathBuf,
    /// The ground-truth confidence map (8-bit gray, DIARETDB1's 0..252).
    pub truth: PathBuf,
}

const EXTS: [&str; 6] = ["png", "jpg", "jpeg", "tif", "tiff", "bmp"];

/// Image files of a folder by stem, sorted (hidden and other files skipped).
fn files_by_stem(dir: &Path) -> Result<BTreeMap<String, PathBuf>> {
    let mut out = BTreeMap::new();
    for e in
        std::fs::read_dir(dir).with_context(|| format!("cannot read folder {}", dir.display()))?
    {
        let path = e?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        if name.starts_with('.')
            || !path.is_file()
            || !ext.is_some_and(|e| EXTS.contains(&e.as_str()))
        {
            continue;
        }
        let stem = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("")
            .to_string();
        if let Some(prev) = out.insert(stem, path.clone()) {
            bail!(
                "two files with the same stem in {}: {} and {}",
                dir.display(),
                prev.display(),
                path.display()
            );
        }
    }
    Ok(out)
}

/// Photographs of `images` paired by stem with ground-truth maps in `truth`. Errors name the
/// folder and the unpaired files.
pub fn folder_photos(images: &Path, truth: &Path) -> Result<Vec<Photo>> {
    for d in [images, truth] {
        ensure!(d.is_dir(), "folder {} does not exist", d.display());
    }
    let imgs = files_by_stem(images)?;
    let gts = files_by_stem(truth)?;
    let no_truth: Vec<&String> = imgs.keys().filter(|s| !gts.contains_key(*s)).collect();
    ensure!(
        no_truth.is_empty(),
        "photographs without ground truth in {}: {:?}",
        truth.display(),
        no_truth
    );
    ensure!(
        !imgs.is_empty(),
        "no images (png, jpg, tif, bmp) in {}",
        images.display()
    );
    Ok(imgs
        .into_iter()
        .map(|(stem, image)| {
            let truth = gts[&stem].clone();
            Photo { stem, image, truth }
        })
        .collect())
}

/// The sources of the test split as `m` (the run's manifest, split complete) records them:
/// photograph and ground-truth paths relative to `data`. Errors: no split recorded, a test
/// source the manifest does not describe, a file that is gone (is `data` right?).
pub fn test_split_photos(cfg: &Config, m: &Manifest) -> Result<Vec<Photo>> {
    let manifest = cfg.layout().manifest();
    let mut out = Vec::new();
    for r in m
        .split_sources(Split::Test)
        .with_context(|| format!("in {}", manifest.display()))?
    {
        let (image, truth) = (cfg.data.join(&r.image), cfg.data.join(&r.truth));
        for (what, p) in [("photograph", &image), ("ground truth", &truth)] {
            ensure!(
                p.is_file(),
                "{what} {} of test source {} not found (is `data` right?)",
                p.display(),
                r.stem
            );
        }
        out.push(Photo {
            stem: r.stem.clone(),
            image,
            truth,
        });
    }
    ensure!(
        !out.is_empty(),
        "the test split of {} has no sources",
        manifest.display()
    );
    Ok(out)
}

/// The field of view used for one photograph and how it was obtained.
pub struct Fov {
    /// Inside the field of view where > 0 (255), same size as the photograph; `None` when
    /// `evaluate.fov` is `none` (every pixel is scored).
    pub mask: Option<GrayImage>,

    /// `fmask <path>`, `estimated (brightest channel >= L, row spans)` or `none`.
    pub how: String,
}

/// The DIARETDB1 fmask under `data`, when `evaluate.fov` may use one and it exists.
///
/// # Errors
/// Something at the mask's path that is not a readable image (a folder, a dangling link, a
/// corrupt file), named; in `fmask` mode also a missing mask.
pub fn load_fmask(cfg: &Config) -> Result<Option<(PathBuf, GrayImage)>> {
    let path = cfg.data.join(FOV_MASK);
    if cfg.evaluate.fov == FovSource::None {
        return Ok(None);
    }
    match fov_mask(&cfg.data)? {
        Some(path) => Ok(Some((path.clone(), open_image(&path)?.to_luma8()))),
        None if cfg.evaluate.fov == FovSource::Fmask => bail!(
            "`evaluate.fov` is `fmask` but {} does not exist",
            path.display()
        ),
        None => Ok(None),
    }
}

/// The FOV of `img`: the fmask when given and of the same size (`fmask` mode: required), else
/// estimated (unless `evaluate.fov` is `none`).
pub fn fov_for(img: &RgbImage, cfg: &Config, fmask: Option<&(PathBuf, GrayImage)>) -> Result<Fov> {
    if cfg.evaluate.fov == FovSource::None {
        return Ok(Fov {
            mask: None,
            how: "none".into(),
        });
    }
    if let Some((path, m)) = fmask {
        if m.dimensions() == img.dimensions() {
            return Ok(Fov {
                mask: Some(m.clone()),
                how: format!("fmask {}", path.display()),
            });
        }
        ensure!(
            cfg.evaluate.fov != FovSource::Fmask,
            "field-of-view mask {} is {}x{} but the photograph is {}x{}",
            path.display(),
            m.width(),
            m.height(),
            img.width(),
            img.height()
        );
    }
    let level = cfg.evaluate.fov_min_level;
    Ok(Fov {
        mask: Some(super::fov_from_image(img, level)),
        how: format!("estimated (row span of pixels whose brightest channel is >= {level})"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folder_photos_pair_by_stem_and_name_the_orphans() {
        let tmp = tempfile::tempdir().unwrap();
        let (i, t) = (tmp.path().join("i"), tmp.path().join("t"));
        std::fs::create_dir_all(&i).unwrap();
        std::fs::create_dir_all(&t).unwrap();
        for f in ["a.png", "b.jpg", "notes.txt"] {
            std::fs::write(i.join(f), b"x").unwrap();
        }
        std::fs::write(t.join("a.png"), b"x").unwrap();
        let err = folder_photos(&i, &t).unwrap_err().to_string();
        assert!(err.contains("\"b\""), "{err}");
        std::fs::write(t.join("b.png"), b"x").unwrap();
        let p = folder_photos(&i, &t).unwrap();
        assert_eq!(p.len(), 2);
        assert_eq!(
            (p[1].stem.as_str(), p[1].truth.clone()),
            ("b", t.join("b.png"))
        );
    }

    #[test]
    fn an_fmask_that_is_not_a_file_is_an_error_not_an_estimate() {
        let d = tempfile::tempdir().unwrap();
        let fov = d.path().join(FOV_MASK);
        std::fs::create_dir_all(&fov).unwrap();
        let mut cfg = Config {
            data: d.path().to_path_buf(),
            ..Config::default()
        };
        let e = format!("{:#}", load_fmask(&cfg).unwrap_err());
        assert!(
            e.contains("fmask.tif") && e.contains("not a readable file"),
            "{e}"
        );
        cfg.evaluate.fov = FovSource::None;
        assert!(load_fmask(&cfg).unwrap().is_none());
    }

    #[test]
    fn fov_falls_back_to_the_estimate_unless_fmask_is_required() {
        let mut cfg = Config::default();
        let img = RgbImage::from_pixel(4, 2, image::Rgb([90, 40, 10]));
        let other = (PathBuf::from("fmask.tif"), GrayImage::new(3, 3));
        let f = fov_for(&img, &cfg, Some(&other)).unwrap();
        assert!(f.how.starts_with("estimated"));
        assert_eq!(f.mask.unwrap().pixels().filter(|p| p[0] > 0).count(), 8);
        cfg.evaluate.fov = FovSource::Fmask;
        let err = fov_for(&img, &cfg, Some(&other)).err().unwrap().to_string();
        assert!(err.contains("fmask.tif is 3x3"), "{err}");
        let same = (PathBuf::from("fmask.tif"), GrayImage::new(4, 2));
        assert!(fov_for(&img, &cfg, Some(&same))
            .unwrap()
            .how
            .starts_with("fmask"));
        cfg.evaluate.fov = FovSource::None;
        assert!(fov_for(&img, &cfg, None).unwrap().mask.is_none());
    }
}
