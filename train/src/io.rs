//! Output helpers of the training stage on top of [`fundus_pipeline::io`] (atomic writes, encoders):
//! folder creation with an error that names the folder.

use std::path::Path;

use anyhow::{Context, Result};

/// Creates `dir` (and parents); the error names it.
pub fn create_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create output folder {}", dir.display()))
}
