//! The reader contract: what counts as an input image and how it is read, the same for every
//! stage (generate's sources and ground truth, the split folders, `infer`'s inputs).
//!
//! - An image file is a regular file, or a symbolic link to one (links are followed, so trees
//!   made with `cp -rs` work), whose extension is one of [`EXTENSIONS`] in any letter case
//!   (`image001.PNG` is an image). Hidden files (`.name`) and other files are not images.
//! - Every listed format decodes (the `image` crate is built with exactly these codecs).
//! - A file is refused, always with its path in the message, when it is empty, not an image
//!   (unknown format), larger than the pixel limit (the message gives its declared size and the
//!   limit), or corrupt/truncated.

use std::collections::BTreeMap;
use std::io::Cursor;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use image::{DynamicImage, ImageReader};

/// Accepted file extensions (compared case-insensitively).
pub const EXTENSIONS: [&str; 6] = ["png", "jpg", "jpeg", "tif", "tiff", "bmp"];

/// Default limit on width x height of an input image: 100 megapixels (DIARETDB1 photographs are
/// 1500 x 1152 = 1.7 MP). Config key `max_image_pixels`.
pub const DEFAULT_MAX_PIXELS: u64 = 100_000_000;

/// True when `path`'s name says it is an image: an accepted extension in any case, not hidden.
pub fn is_image_name(path: &Path) -> bool {
    let hidden = path
        .file_name()
        .and_then(|n| n.to_str())
        .is_none_or(|n| n.starts_with('.'));
    let ext_ok = path
        .extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| EXTENSIONS.iter().any(|x| x.eq_ignore_ascii_case(e)));
    !hidden && ext_ok
}

/// The image files directly in a folder.
#[derive(Debug, Clone, Default)]
pub struct Listing {
    /// One file per stem, sorted by stem.
    pub images: BTreeMap<String, PathBuf>,
    /// Stems held by more than one image file (e.g. `a.png` and `a.jpg`), with every file; these
    /// stems are not in `images`.
    pub ambiguous: BTreeMap<String, Vec<PathBuf>>,
    /// Regular files that are not images (reported as warnings by the callers that care).
    pub ignored: Vec<PathBuf>,
    /// Entries with an image name that are not files (a folder named `image007.png`), by stem:
    /// refused by every caller with [`not_a_file_message`].
    pub not_files: BTreeMap<String, PathBuf>,
}

/// Lists the image files directly in `dir` (links followed); see the module docs.
pub fn list_images(dir: &Path) -> Result<Listing> {
    let mut names: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot list folder {}", dir.display()))?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<_>>()
        .with_context(|| format!("cannot list folder {}", dir.display()))?;
    names.sort();
    let mut by_stem: BTreeMap<String, Vec<PathBuf>> = BTreeMap::new();
    let mut out = Listing::default();
    for path in names {
        // `metadata` follows symbolic links; a dangling link is reported as not a file.
        let is_file = std::fs::metadata(&path).is_ok_and(|m| m.is_file());
        if !is_file {
            if path.is_symlink() {
                out.ignored.push(path);
            } else if is_image_name(&path) {
                if let Some(stem) = path.file_stem().and_then(|s| s.to_str()) {
                    out.not_files.insert(stem.to_owned(), path.clone());
                }
            }
            continue;
        }
        let stem = path.file_stem().and_then(|s| s.to_str()).map(str::to_owned);
        match stem {
            Some(stem) if is_image_name(&path) => by_stem.entry(stem).or_default().push(path),
            _ => out.ignored.push(path),
        }
    }
    for (stem, mut files) in by_stem {
        if files.len() == 1 {
            out.images.insert(stem, files.remove(0));
        } else {
            out.ambiguous.insert(stem, files);
        }
    }
    Ok(out)
}

/// Image files of a folder by stem (sorted); an error names two files that share a stem.
pub fn image_files(dir: &Path) -> Result<BTreeMap<String, PathBuf>> {
    let l = list_images(dir)?;
    if let Some((stem, files)) = l.ambiguous.iter().next() {
        bail!("{}", ambiguous_message(stem, files));
    }
    if let Some(path) = l.not_files.values().next() {
        bail!("{}", not_a_file_message(path));
    }
    Ok(l.images)
}

/// The message for a stem held by several image files.
pub fn ambiguous_message(stem: &str, files: &[PathBuf]) -> String {
    let list: Vec<String> = files.iter().map(|p| p.display().to_string()).collect();
    format!(
        "{} image files share the name {stem}: {} (keep one)",
        files.len(),
        list.join(", ")
    )
}

/// The message for an entry with an image name that is not a file (e.g. a folder).
pub fn not_a_file_message(path: &Path) -> String {
    format!(
        "{} has an image name but is a folder (or another non-file), not an image file; rename \
         or move it",
        path.display()
    )
}

/// Reads and decodes an image file; see [`decode`].
pub fn read_image(path: &Path, max_pixels: u64) -> Result<DynamicImage> {
    let bytes =
        crate::io::read_regular(path).with_context(|| format!("cannot read {}", path.display()))?;
    decode(path, &bytes, max_pixels)
}

/// Decodes `bytes` read from `path` (the path is only for messages; the format is taken from
/// the content). Errors: empty file, unknown format, more than `max_pixels` pixels (declared
/// size and limit given), corrupt or truncated data.
pub fn decode(path: &Path, bytes: &[u8], max_pixels: u64) -> Result<DynamicImage> {
    if bytes.is_empty() {
        bail!("{} is empty (0 bytes)", path.display());
    }
    let reader = || {
        ImageReader::new(Cursor::new(bytes))
            .with_guessed_format()
            .with_context(|| format!("cannot read {}", path.display()))
    };
    let Some(format) = reader()?.format() else {
        bail!("{} is not an image file (unknown format)", path.display());
    };
    let (w, h) = reader()?
        .into_dimensions()
        .with_context(|| format!("{} is corrupt or truncated", path.display()))?;
    let pixels = u64::from(w) * u64::from(h);
    if pixels > max_pixels {
        bail!(
            "{} is {w}x{h} = {pixels} pixels, more than the limit of {max_pixels} pixels \
             (config key `max_image_pixels`)",
            path.display()
        );
    }
    let mut r = reader()?;
    // The size is checked above; the decoder's own allocation cap would reject large images
    // within the limit with a misleading message.
    r.no_limits();
    r.decode().with_context(|| {
        format!(
            "{} is corrupt or truncated ({format:?} data)",
            path.display()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{GrayImage, ImageFormat, RgbImage};

    #[test]
    fn extensions_in_any_case_and_hidden_files() {
        assert!(is_image_name(Path::new("a/image001.PNG")));
        assert!(is_image_name(Path::new("x.Bmp")));
        assert!(!is_image_name(Path::new("a/.image001.png")));
        assert!(!is_image_name(Path::new("Thumbs.db")));
    }

    #[test]
    fn every_accepted_format_decodes() {
        let img = DynamicImage::ImageRgb8(RgbImage::from_fn(9, 7, |x, y| {
            image::Rgb([x as u8 * 20, y as u8 * 30, 7])
        }));
        for (ext, fmt) in [
            ("png", ImageFormat::Png),
            ("jpg", ImageFormat::Jpeg),
            ("jpeg", ImageFormat::Jpeg),
            ("tif", ImageFormat::Tiff),
            ("tiff", ImageFormat::Tiff),
            ("bmp", ImageFormat::Bmp),
        ] {
            let mut bytes = Vec::new();
            img.write_to(&mut Cursor::new(&mut bytes), fmt).unwrap();
            let name = format!("x.{ext}");
            let back = decode(Path::new(&name), &bytes, DEFAULT_MAX_PIXELS).unwrap();
            assert_eq!((back.width(), back.height()), (9, 7), "{ext}");
        }
        assert_eq!(EXTENSIONS.len(), 6, "a new extension needs a case above");
    }

    #[test]
    fn oversized_image_gives_its_size_and_the_limit() {
        let mut bytes = Vec::new();
        DynamicImage::ImageLuma8(GrayImage::new(40, 30))
            .write_to(&mut Cursor::new(&mut bytes), ImageFormat::Png)
            .unwrap();
        let e = format!(
            "{:#}",
            decode(Path::new("big.png"), &bytes, 1000).unwrap_err()
        );
        assert!(
            e.contains("big.png") && e.contains("40x30") && e.contains("1000"),
            "{e}"
        );
    }

    #[test]
    fn listing_follows_links_and_reports_shared_stems() {
        let d = tempfile::tempdir().unwrap();
        let real = d.path().join("real.png");
        std::fs::write(&real, b"x").unwrap();
        let dir = d.path().join("dir");
        std::fs::create_dir(&dir).unwrap();
        #[cfg(unix)]
        std::os::unix::fs::symlink(&real, dir.join("linked.PNG")).unwrap();
        std::fs::write(dir.join("two.png"), b"x").unwrap();
        std::fs::write(dir.join("two.jpg"), b"x").unwrap();
        std::fs::write(dir.join("notes.txt"), b"x").unwrap();
        let l = list_images(&dir).unwrap();
        #[cfg(unix)]
        assert!(l.images.contains_key("linked"));
        assert_eq!(l.ambiguous["two"].len(), 2);
        assert_eq!(l.ignored.len(), 1);
        assert!(image_files(&dir).is_err());
    }
}
