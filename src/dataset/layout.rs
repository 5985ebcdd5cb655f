//! Finds the sources of a DIARETDB1 v1.1 tree and pairs each fundus image with its ground truth by
//! file stem (never by sort position). Problems with one source are collected, not fatal: the
//! generator processes the good sources and reports the rest.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use walkdir::WalkDir;

use crate::config::Lesion;

pub const IMAGES_DIR: &str = "resources/images/ddb1_fundusimages";
pub const TRUTH_DIR: &str = "resources/images/ddb1_groundtruth";
pub const FOV_MASK: &str = "resources/images/ddb1_fundusmask/fmask.tif";
pub const TRAIN_LIST: &str = "resources/traindatasets/trainset.txt";
pub const TEST_LIST: &str = "resources/testdatasets/testset.txt";

/// One paired source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    /// File stem, e.g. `image003`.
    pub stem: String,
    pub image: PathBuf,
    pub truth: PathBuf,
}

/// A source that cannot be used, with the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub stem: String,
    pub message: String,
}

/// The result of scanning a dataset root.
#[derive(Debug, Clone)]
pub struct Scan {
    pub root: PathBuf,
    /// Paired sources, sorted by stem.
    pub sources: Vec<Source>,
    /// Images without ground truth and the reverse.
    pub problems: Vec<Problem>,
    /// Files that are not images, ignored.
    pub ignored: Vec<PathBuf>,
    /// The field-of-view mask, when present.
    pub fov_mask: Option<PathBuf>,
}

/// Scans `root` (the `diaretdb1_v_1_1` folder) for `lesion`'s sources.
pub fn scan(root: &Path, lesion: Lesion) -> Result<Scan> {
    if !root.is_dir() {
        bail!(
            "dataset root {} does not exist or is not a folder (expected the diaretdb1_v_1_1 \
             folder that holds resources/; see diaretdb1_v_1_1/README.md)",
            root.display()
        );
    }
    let images_dir = root.join(IMAGES_DIR);
    let truth_dir = root.join(TRUTH_DIR).join(lesion.folder());
    for dir in [&images_dir, &truth_dir] {
        if !dir.is_dir() {
            bail!("missing folder {} in the dataset", dir.display());
        }
    }
    let mut ignored = Vec::new();
    let images = png_files(&images_dir, &mut ignored)?;
    if images.is_empty() {
        bail!("no PNG images in {}", images_dir.display());
    }
    let truths = png_files(&truth_dir, &mut ignored)?;

    let mut sources = Vec::new();
    let mut problems = Vec::new();
    for (stem, image) in &images {
        match truths.get(stem) {
            Some(truth) => sources.push(Source {
                stem: stem.clone(),
                image: image.clone(),
                truth: truth.clone(),
            }),
            None => problems.push(Problem {
                stem: stem.clone(),
                message: format!(
                    "image {} has no ground truth {}",
                    image.display(),
                    truth_dir.join(format!("{stem}.png")).display()
                ),
            }),
        }
    }
    for (stem, truth) in &truths {
        if !images.contains_key(stem) {
            problems.push(Problem {
                stem: stem.clone(),
                message: format!(
                    "ground truth {} has no image {}",
                    truth.display(),
                    images_dir.join(format!("{stem}.png")).display()
                ),
            });
        }
    }
    let fov = root.join(FOV_MASK);
    Ok(Scan {
        root: root.to_path_buf(),
        sources,
        problems,
        ignored,
        fov_mask: fov.is_file().then_some(fov),
    })
}

/// PNG files directly in `dir`, by stem. Other files go to `ignored`.
fn png_files(dir: &Path, ignored: &mut Vec<PathBuf>) -> Result<BTreeMap<String, PathBuf>> {
    let mut out = BTreeMap::new();
    for entry in WalkDir::new(dir)
        .min_depth(1)
        .max_depth(1)
        .sort_by_file_name()
    {
        let entry = entry.with_context(|| format!("cannot list {}", dir.display()))?;
        if !entry.file_type().is_file() {
            continue;
        }
        let path = entry.path();
        let is_png = path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("png"));
        let stem = path.file_stem().and_then(|s| s.to_str());
        match (is_png, stem) {
            (true, Some(stem)) if !stem.starts_with('.') => {
                out.insert(stem.to_string(), path.to_path_buf());
            }
            _ => ignored.push(path.to_path_buf()),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(p: &Path) {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, b"x").unwrap();
    }

    #[test]
    fn pairs_by_name_and_reports_orphans() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        for s in ["image001", "image002", "image004"] {
            touch(&r.join(IMAGES_DIR).join(format!("{s}.png")));
        }
        for s in ["image001", "image003", "image004"] {
            touch(
                &r.join(TRUTH_DIR)
                    .join("hemorrhages")
                    .join(format!("{s}.png")),
            );
        }
        touch(&r.join(IMAGES_DIR).join("notes.txt"));
        let scan = scan(r, Lesion::Hemorrhages).unwrap();
        let stems: Vec<&str> = scan.sources.iter().map(|s| s.stem.as_str()).collect();
        assert_eq!(stems, ["image001", "image004"]);
        assert!(scan.sources[1].truth.ends_with("hemorrhages/image004.png"));
        let bad: Vec<&str> = scan.problems.iter().map(|p| p.stem.as_str()).collect();
        assert_eq!(bad, ["image002", "image003"]);
        assert!(scan.problems[0].message.contains("no ground truth"));
        assert_eq!(scan.ignored.len(), 1);
        assert!(scan.fov_mask.is_none());
    }

    #[test]
    fn missing_root_names_the_path() {
        let err = scan(Path::new("/nonexistent/ddb"), Lesion::Hemorrhages).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/ddb"));
    }
}
