//! Finds the sources of a DIARETDB1 v1.1 tree and pairs each fundus image with its ground truth by
//! file stem (never by sort position). What counts as an image, in any letter case and through
//! symbolic links, is [`crate::input`]'s decision. Problems with one source are collected, not fatal: the
//! generator processes the good sources and reports the rest.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};

use crate::config::Lesion;
use crate::input::{ambiguous_message, list_images, not_a_file_message, EXTENSIONS};

/// The fundus photographs, relative to the `diaretdb1_v_1_1` folder.
pub const IMAGES_DIR: &str = "resources/images/ddb1_fundusimages";
/// The ground-truth folders (one per [`Lesion::folder`]), relative to `diaretdb1_v_1_1`.
pub const TRUTH_DIR: &str = "resources/images/ddb1_groundtruth";
/// The field-of-view mask shared by all photographs, relative to `diaretdb1_v_1_1`.
pub const FOV_MASK: &str = "resources/images/ddb1_fundusmask/fmask.tif";
/// DIARETDB1's official training list (`split.mode = official`), relative to `diaretdb1_v_1_1`.
pub const TRAIN_LIST: &str = "resources/traindatasets/trainset.txt";
/// DIARETDB1's official test list (`split.mode = official`), relative to `diaretdb1_v_1_1`.
pub const TEST_LIST: &str = "resources/testdatasets/testset.txt";

/// One paired source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    /// File stem, e.g. `image003`.
    pub stem: String,
    /// The fundus photograph (under [`IMAGES_DIR`]).
    pub image: PathBuf,
    /// Its ground-truth confidence map (under [`TRUTH_DIR`]/`<lesion>`).
    pub truth: PathBuf,
}

/// A source that cannot be used, with the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The file stem concerned.
    pub stem: String,
    /// What is wrong, naming the file(s), for the user.
    pub message: String,
}

/// The result of scanning a dataset root.
#[derive(Debug, Clone)]
pub struct Scan {
    /// The scanned `diaretdb1_v_1_1` folder, as given.
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
    let images = list_images(&images_dir)?;
    let truths = list_images(&truth_dir)?;
    if images.images.is_empty() && images.ambiguous.is_empty() && images.not_files.is_empty() {
        bail!(
            "no images ({}) in {}",
            EXTENSIONS.join(", "),
            images_dir.display()
        );
    }
    let mut ignored = images.ignored;
    ignored.extend(truths.ignored);
    let mut problems: Vec<Problem> = images
        .ambiguous
        .iter()
        .chain(&truths.ambiguous)
        .map(|(stem, files)| Problem {
            stem: stem.clone(),
            message: ambiguous_message(stem, files),
        })
        .chain(
            images
                .not_files
                .iter()
                .chain(&truths.not_files)
                .map(|(stem, path)| Problem {
                    stem: stem.clone(),
                    message: not_a_file_message(path),
                }),
        )
        .collect();
    let (images, truths) = (images.images, truths.images);

    let mut sources = Vec::new();
    for (stem, image) in &images {
        match truths.get(stem) {
            Some(truth) => sources.push(Source {
                stem: stem.clone(),
                image: image.clone(),
                truth: truth.clone(),
            }),
            None if problems.iter().any(|p| &p.stem == stem) => {}
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
        if !images.contains_key(stem) && !problems.iter().any(|p| &p.stem == stem) {
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
    problems.sort_by(|a, b| a.stem.cmp(&b.stem));
    let fov = fov_mask(root)?;
    Ok(Scan {
        root: root.to_path_buf(),
        sources,
        problems,
        ignored,
        fov_mask: fov,
    })
}

/// The DIARETDB1 field-of-view mask under `root` ([`FOV_MASK`]) when it exists.
///
/// # Errors
/// When something is there that is not a file (a folder, a dangling link): an error naming it,
/// as a corrupt mask is, rather than a silent run without the field of view.
pub fn fov_mask(root: &Path) -> Result<Option<PathBuf>> {
    let fov = root.join(FOV_MASK);
    if fov.symlink_metadata().is_err() {
        return Ok(None);
    }
    if !fov.is_file() {
        bail!(
            "the field-of-view mask {} is not a readable file; remove it or put the mask there",
            fov.display()
        );
    }
    Ok(Some(fov))
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
        touch(&r.join(IMAGES_DIR).join("image005.png"));
        touch(&r.join(IMAGES_DIR).join("image005.JPG"));
        let scan = scan(r, Lesion::Hemorrhages).unwrap();
        let stems: Vec<&str> = scan.sources.iter().map(|s| s.stem.as_str()).collect();
        assert_eq!(stems, ["image001", "image004"]);
        assert!(scan.sources[1].truth.ends_with("hemorrhages/image004.png"));
        let bad: Vec<&str> = scan.problems.iter().map(|p| p.stem.as_str()).collect();
        assert_eq!(bad, ["image002", "image003", "image005"]);
        assert!(scan.problems[2].message.contains("share the name"));
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
