//! File output: encoders (fast PNG through the `png` crate's fdeflate; JPEG through
//! libjpeg-turbo, [`encode_jpeg_rgb`]) and atomic writes. Every file the tool writes goes to a
//! temporary name in the target folder and is renamed into place, so a crash never leaves a
//! half-written file under a real name; the one exception is a file inside a folder that is
//! itself the temporary and is renamed whole ([`write_in_staging`]).

use std::io::{Read, Write};
use std::path::Path;

use anyhow::{Context, Result};
use image::codecs::png::{CompressionType, FilterType, PngEncoder};
use image::{ExtendedColorType, GrayImage, ImageEncoder, RgbImage};

use crate::config::{JpegSubsampling, PngFilter};

/// Prefix of the tool's temporary files ([`write_atomic`], [`write_atomic_with`]): a name in the
/// tool's own namespace (like `.pipeline-owned`), so that a leftover of a killed run can be told
/// from a file of the user's (a plain `.tmp-*` name is not the tool's and is never removed).
pub const TEMP_PREFIX: &str = ".pipeline-tmp-";

/// Writes `bytes` to `path` atomically (temporary file in the same folder, fsync-free rename).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(TEMP_PREFIX)
        .tempfile_in(dir)
        .with_context(|| format!("cannot create a file in {}", dir.display()))?;
    tmp.write_all(bytes)
        .with_context(|| format!("cannot write {}", path.display()))?;
    // Temporary files are created 0600; outputs are ordinary files, readable by the group.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        tmp.as_file()
            .set_permissions(std::fs::Permissions::from_mode(0o644))
            .with_context(|| format!("cannot set permissions of {}", path.display()))?;
    }
    tmp.persist(path)
        .map_err(|e| e.error)
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// Writes `bytes` to `path` in place, without a temporary name: only for files inside a folder
/// that is itself the temporary (the generator's `staging/`, swapped in whole after every file in
/// it has been checked against the journal; see [`crate::generate`]). A file cut short by a kill
/// is never recorded, so it is rewritten or removed before the swap. The open does not follow a
/// symbolic link at `path` (it fails instead), so the write never lands outside the folder.
///
/// Errors: the file cannot be created or written (the message names it).
pub fn write_in_staging(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.custom_flags(libc::O_NOFOLLOW);
    }
    let mut f = opts
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    f.write_all(bytes)
        .with_context(|| format!("cannot write {}", path.display()))
}

/// Whether `name` is one of the tool's temporary files: [`TEMP_PREFIX`] and six letters or
/// digits (the `tempfile` crate's random part), with [`write_atomic_with`]'s extension after
/// them. Only such names are removed as leftovers of a killed run.
pub fn is_tool_temporary(name: &str) -> bool {
    let Some(rest) = name.strip_prefix(TEMP_PREFIX) else {
        return false;
    };
    let (random, ext) = rest.split_at(rest.len().min(6));
    random.len() == 6
        && random.bytes().all(|b| b.is_ascii_alphanumeric())
        && (ext.is_empty() || ext.starts_with('.') && !ext[1..].contains('.'))
}

/// For writers that insist on writing a path themselves (tch's safetensors writer): calls `write`
/// with a temporary path in `path`'s folder (same extension, since tch picks the format by
/// extension), then renames it to `path`. On error the temporary is removed.
pub fn write_atomic_with(path: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let suffix = path
        .extension()
        .map(|e| format!(".{}", e.to_string_lossy()))
        .unwrap_or_default();
    let tmp = tempfile::Builder::new()
        .prefix(TEMP_PREFIX)
        .suffix(&suffix)
        .tempfile_in(dir)
        .with_context(|| format!("cannot create a file in {}", dir.display()))?;
    write(tmp.path()).with_context(|| format!("cannot write {}", path.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o644))
            .with_context(|| format!("cannot set permissions of {}", path.display()))?;
    }
    tmp.persist(path)
        .map_err(|e| e.error)
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// Writes `rows` as CSV (comma-separated, `\n` line ends, quoting where needed; floats in their
/// shortest round-trip form) atomically. With `header`, the first line names the fields of the
/// row struct (serde field names).
pub fn write_csv<T: serde::Serialize>(
    path: &Path,
    rows: impl IntoIterator<Item = T>,
    header: bool,
) -> Result<()> {
    let mut w = csv::WriterBuilder::new()
        .has_headers(header)
        .from_writer(Vec::new());
    for row in rows {
        w.serialize(row)
            .with_context(|| format!("serializing a row of {}", path.display()))?;
    }
    let bytes = w
        .into_inner()
        .map_err(|e| anyhow::anyhow!("{}", e.error()))
        .with_context(|| format!("serializing {}", path.display()))?;
    write_atomic(path, &bytes)
}

/// Serializes `value` as pretty JSON (with a final newline) and writes it atomically.
pub fn write_json<T: serde::Serialize>(path: &Path, value: &T) -> Result<()> {
    let mut text = serde_json::to_string_pretty(value).context("serializing JSON")?;
    text.push('\n');
    write_atomic(path, text.as_bytes())
}

/// RGB PNG with fast compression and the adaptive row filter (the default level is ~27x slower
/// to encode; the fast level's time is in docs/benchmarks.md).
pub fn encode_png_rgb(img: &RgbImage) -> Result<Vec<u8>> {
    encode_png_rgb_with(img, PngFilter::Adaptive)
}

/// RGB PNG with fast compression and row filter `filter`.
pub fn encode_png_rgb_with(img: &RgbImage, filter: PngFilter) -> Result<Vec<u8>> {
    let (w, h) = img.dimensions();
    encode_png_with(img.as_raw(), w, h, ExtendedColorType::Rgb8, filter)
}

/// 1-channel 8-bit PNG with fast compression and the adaptive row filter.
pub fn encode_png_gray(img: &GrayImage) -> Result<Vec<u8>> {
    let (w, h) = img.dimensions();
    encode_png_with(
        img.as_raw(),
        w,
        h,
        ExtendedColorType::L8,
        PngFilter::Adaptive,
    )
}

/// PNG of raw 8-bit samples (`color` says which) with fast compression, adaptive row filter.
pub fn encode_png(raw: &[u8], w: u32, h: u32, color: ExtendedColorType) -> Result<Vec<u8>> {
    encode_png_with(raw, w, h, color, PngFilter::Adaptive)
}

/// PNG of raw 8-bit samples (`color` says which) with fast compression (fdeflate) and row
/// filter `filter`.
pub fn encode_png_with(
    raw: &[u8],
    w: u32,
    h: u32,
    color: ExtendedColorType,
    filter: PngFilter,
) -> Result<Vec<u8>> {
    let filter = match filter {
        PngFilter::Adaptive => FilterType::Adaptive,
        PngFilter::None => FilterType::NoFilter,
        PngFilter::Sub => FilterType::Sub,
        PngFilter::Up => FilterType::Up,
        PngFilter::Avg => FilterType::Avg,
        PngFilter::Paeth => FilterType::Paeth,
    };
    let mut out = Vec::with_capacity(raw.len() / 2);
    PngEncoder::new_with_quality(&mut out, CompressionType::Fast, filter)
        .write_image(raw, w, h, color)
        .context("PNG encoding failed")?;
    Ok(out)
}

/// What encodes JPEG images, as recorded in the generation key of a JPEG run (its bytes are
/// part of the set; PNG runs record nothing): libjpeg-turbo's baseline coder as vendored by the
/// `mozjpeg-sys` crate, in its fastest profile (libjpeg v6 defaults, standard Huffman tables,
/// Annex K quantization tables scaled by the quality).
pub const JPEG_ENCODER: &str = "libjpeg-turbo (mozjpeg-sys 2, fastest profile)";

/// Baseline JPEG of an RGB image at `quality` (1..=100, libjpeg's scaling of the Annex K
/// tables), via libjpeg-turbo ([`JPEG_ENCODER`]): integer DCT, standard Huffman tables. Chroma
/// is kept at full resolution (4:4:4) from quality 90 up (lesions are red on orange: colour
/// edges matter at the qualities chosen for training data) and subsampled 2x2 (4:2:0) below;
/// [`encode_jpeg_rgb_with`] chooses. libjpeg-turbo's SIMD and C paths give the same bytes, so the
/// output does not depend on the CPU or on whether the build found `nasm`.
///
/// Errors: a side above 65500 pixels (JPEG's limit) or an encoder failure.
pub fn encode_jpeg_rgb(img: &RgbImage, quality: u8) -> Result<Vec<u8>> {
    encode_jpeg_rgb_with(img, quality, JpegSubsampling::Auto)
}

/// [`encode_jpeg_rgb`] with the chroma subsampling `subsampling` (`generate.jpeg_subsampling`).
pub fn encode_jpeg_rgb_with(
    img: &RgbImage,
    quality: u8,
    subsampling: JpegSubsampling,
) -> Result<Vec<u8>> {
    let (w, h) = img.dimensions();
    anyhow::ensure!(
        w.max(h) <= 65500,
        "JPEG encoding failed: {w}x{h} is larger than JPEG's 65500x65500"
    );
    let encode = || -> std::io::Result<Vec<u8>> {
        let mut c = mozjpeg::Compress::new(mozjpeg::ColorSpace::JCS_RGB);
        c.set_fastest_defaults();
        c.set_size(w as usize, h as usize);
        c.set_quality(f32::from(quality.clamp(1, 100)));
        let chroma = if subsampling.full_chroma(quality) {
            (1, 1)
        } else {
            (2, 2)
        };
        c.set_chroma_sampling_pixel_sizes(chroma, chroma);
        let mut c = c.start_compress(Vec::with_capacity(img.as_raw().len() / 4))?;
        c.write_scanlines(img.as_raw())?;
        c.finish()
    };
    // The crate reports libjpeg's errors by unwinding (its documented contract).
    std::panic::catch_unwind(encode)
        .map_err(|_| anyhow::anyhow!("JPEG encoding failed (libjpeg error)"))?
        .context("JPEG encoding failed")
}

/// Decodes an image file, with an error that names the file and says what is wrong with it.
/// The reader contract (formats, pixel limit, messages) is [`crate::input`]'s.
pub fn open_image(path: &Path) -> Result<image::DynamicImage> {
    crate::input::read_image(path, crate::input::DEFAULT_MAX_PIXELS)
}

/// Decodes `bytes` read from `path` (the path is only for messages); see [`crate::input`].
pub fn decode_image(path: &Path, bytes: &[u8]) -> Result<image::DynamicImage> {
    crate::input::decode(path, bytes, crate::input::DEFAULT_MAX_PIXELS)
}

/// Environment variable of the crash-safety tests: `PIPELINE_ABORT_AT_COMMIT=N` aborts the
/// process (like `kill -9`: no destructors, no flushing) at the N-th [`commit_point`].
pub const ABORT_ENV: &str = "PIPELINE_ABORT_AT_COMMIT";

/// With [`ABORT_ENV`]: count only the commit points whose label starts with this prefix
/// (`generate:`, `split:`, `stats:`, `train:`), so a test can kill one stage of `pipeline all`.
pub const ABORT_ONLY_ENV: &str = "PIPELINE_ABORT_ONLY";

/// Marks a point between two durable steps of a stage (a file renamed into place, a journal
/// line appended, a file removed). Does nothing unless [`ABORT_ENV`] is set; then the N-th call
/// in the process (of those whose label starts with [`ABORT_ONLY_ENV`], when set) prints `label`
/// to stderr and aborts. Tests kill a stage at every such point and check that the documented
/// resume gives the same bytes as an uninterrupted run. Labels start with the stage's name.
pub fn commit_point(label: &str) {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;
    static TARGET: OnceLock<Option<(u64, String)>> = OnceLock::new();
    static COUNT: AtomicU64 = AtomicU64::new(0);
    let target = TARGET.get_or_init(|| {
        let n = std::env::var(ABORT_ENV).ok()?.trim().parse().ok()?;
        Some((n, std::env::var(ABORT_ONLY_ENV).unwrap_or_default()))
    });
    let Some((target, only)) = target else { return };
    if !label.starts_with(only.as_str()) {
        return;
    }
    if COUNT.fetch_add(1, Ordering::SeqCst) + 1 == *target {
        eprintln!("{ABORT_ENV}: aborting at commit point {target} ({label})");
        std::process::abort();
    }
}

/// blake3 of bytes, hex.
pub fn hash_hex(bytes: &[u8]) -> String {
    blake3::hash(bytes).to_hex().to_string()
}

/// blake3 of a file's contents, hex.
pub fn hash_file(path: &Path) -> Result<String> {
    let mut h = blake3::Hasher::new();
    let mut f = open_regular(path).with_context(|| format!("cannot open {}", path.display()))?;
    std::io::copy(&mut f, &mut h).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(h.finalize().to_hex().to_string())
}

/// Opens `path` (links followed) for reading, refusing anything but a regular file: a FIFO put
/// at a name the tool reads would otherwise block it forever (reading one waits for a writer), so
/// it is opened without blocking (`O_NONBLOCK`, which regular files ignore) and checked before a
/// byte is read. Errors: the open's, or `InvalidInput` naming what is there (a folder, or not a
/// regular file).
pub fn open_regular(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    let kind = f.metadata()?.file_type();
    if kind.is_file() {
        return Ok(f);
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::InvalidInput,
        if kind.is_dir() {
            "it is a folder, not a file"
        } else {
            "it is not a regular file (a FIFO, a socket or a device)"
        },
    ))
}

/// The bytes of the regular file `path` ([`open_regular`]'s refusals otherwise).
pub fn read_regular(path: &Path) -> std::io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    open_regular(path)?.read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// The UTF-8 text of the regular file `path` ([`open_regular`]'s refusals otherwise).
pub fn read_regular_to_string(path: &Path) -> std::io::Result<String> {
    let mut text = String::new();
    open_regular(path)?.read_to_string(&mut text)?;
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_regular_files_are_read_and_a_fifo_does_not_block() {
        let d = tempfile::tempdir().unwrap();
        let file = d.path().join("f");
        std::fs::write(&file, b"text").unwrap();
        assert_eq!(read_regular_to_string(&file).unwrap(), "text");
        let link = d.path().join("link");
        std::os::unix::fs::symlink(&file, &link).unwrap();
        assert_eq!(read_regular(&link).unwrap(), b"text");
        let fifo = d.path().join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        // No writer ever opens it: a blocking read would hang the test.
        let e = read_regular(&fifo).unwrap_err();
        assert!(e.to_string().contains("not a regular file"), "{e}");
        let e = hash_file(&fifo).unwrap_err();
        assert!(format!("{e:#}").contains("not a regular file"), "{e:#}");
        let e = read_regular(d.path()).unwrap_err();
        assert!(e.to_string().contains("folder"), "{e}");
    }

    /// The names the tool's writers give their temporaries are recognised, and nothing else:
    /// the real temporaries of both writers, then names a user might choose.
    #[test]
    fn tool_temporaries_are_only_the_writers_names() {
        let d = tempfile::tempdir().unwrap();
        let seen = std::cell::RefCell::new(Vec::new());
        write_atomic_with(&d.path().join("w.safetensors"), |tmp| {
            seen.borrow_mut()
                .push(tmp.file_name().unwrap().to_str().unwrap().to_string());
            std::fs::write(tmp, b"x")?;
            Ok(())
        })
        .unwrap();
        let tmp = tempfile::Builder::new()
            .prefix(TEMP_PREFIX)
            .tempfile_in(d.path())
            .unwrap();
        seen.borrow_mut().push(
            tmp.path()
                .file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .to_string(),
        );
        for name in seen.borrow().iter() {
            assert!(is_tool_temporary(name), "{name}");
        }
        for name in [
            ".tmp-abcdef",
            ".tmp-Ab12Cd.txt",
            ".pipeline-tmp-mine",
            ".pipeline-tmp-abcdefg",
            ".tmp-mine",
            ".tmp-abcdefg",
            ".tmp-abc!ef",
            "tmp-abcdef",
            ".tmp-abcdef.a.b",
            "x.tmp-abcdef",
        ] {
            assert!(!is_tool_temporary(name), "{name}");
        }
    }

    #[test]
    fn atomic_write_replaces_and_leaves_no_temporaries() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("a.json");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&p).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o644);
        }
    }

    #[test]
    fn jpeg_round_trip_is_close_to_the_source() {
        let img = RgbImage::from_fn(64, 48, |x, y| {
            image::Rgb([(x * 4) as u8, (y * 5) as u8, ((x + y) * 2) as u8])
        });
        let bytes = encode_jpeg_rgb(&img, 95).unwrap();
        let back = decode_image(Path::new("t.jpg"), &bytes)
            .unwrap()
            .into_rgb8();
        assert_eq!(back.dimensions(), (64, 48));
        let err = img
            .as_raw()
            .iter()
            .zip(back.as_raw())
            .map(|(a, b)| (i32::from(*a) - i32::from(*b)).abs())
            .max()
            .unwrap();
        assert!(err <= 8, "largest error {err}");
    }

    #[test]
    fn decode_errors_name_the_file_and_the_problem() {
        let p = Path::new("x/image001.png");
        let e = decode_image(p, b"").unwrap_err().to_string();
        assert!(e.contains("image001.png") && e.contains("empty"), "{e}");
        let e = format!("{:#}", decode_image(p, b"hello, not a png").unwrap_err());
        assert!(e.contains("image001.png"), "{e}");
        let mut png = encode_png_gray(&GrayImage::new(32, 32)).unwrap();
        png.truncate(png.len() / 2);
        let e = format!("{:#}", decode_image(p, &png).unwrap_err());
        assert!(e.contains("corrupt or truncated"), "{e}");
    }
}
