//! Output helpers of the training stage on top of [`crate::io`] (atomic byte writes, encoders):
//! an atomic write for libraries that insist on writing a path themselves (tch's safetensors
//! writer), and folder creation with an error that names the folder.

use std::path::Path;

use anyhow::{Context, Result};

/// Calls `write` with a temporary path in `path`'s folder (same extension: tch picks the
/// checkpoint format by extension), then renames it to `path`. On error the temporary is removed.
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
        .prefix(".tmp-")
        .suffix(&suffix)
        .tempfile_in(dir)
        .with_context(|| format!("cannot create a file in {}", dir.display()))?;
    write(tmp.path()).with_context(|| format!("cannot write {}", path.display()))?;
    tmp.persist(path)
        .map_err(|e| e.error)
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// Creates `dir` (and parents); the error names it.
pub fn create_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create output folder {}", dir.display()))
}
