//! `manifest.json`: every generated file with its source, variant, parameters, split and content
//! hash. It is written last (atomically), so its presence means a complete generation. `verify`
//! re-hashes the tree against it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::io::{hash_file, write_json};

pub const SCHEMA: &str = "fundus-pipeline/manifest/v1";
pub const FILE_NAME: &str = "manifest.json";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    pub schema: String,
    pub tool_version: String,
    /// Hash of the settings that decide the master set (seed, lesion, generate section).
    pub generation_key: String,
    /// Those settings, resolved.
    pub generation: Value,
    pub sources: Vec<SourceRecord>,
    /// One record per image/mask pair, sorted by name.
    pub pairs: Vec<PairRecord>,
    /// Set by `split`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split: Option<SplitInfo>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SourceRecord {
    pub stem: String,
    /// Paths relative to the dataset root.
    pub image: String,
    pub truth: String,
    pub image_hash: String,
    pub truth_hash: String,
    /// blake3 of the decoded image (size and RGB pixels): the same photograph in another
    /// container has the same value ([`crate::generate::pixel_hash`]). Empty in manifests of
    /// older versions.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub pixel_hash: String,
    /// Problems found in the ground truth ([`crate::prep::TruthIssue`] codes), when any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub truth_warnings: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PairRecord {
    /// `<stem>_<variant>`.
    pub name: String,
    pub source: String,
    pub variant: String,
    pub params: Value,
    /// Paths relative to the run folder.
    pub image: String,
    pub mask: String,
    pub image_hash: String,
    pub mask_hash: String,
    /// Lesion pixels in the mask.
    pub foreground: u64,
    /// `train`, `valid`, `test`, or absent (not in the split dataset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SplitInfo {
    pub mode: String,
    pub ratios: [f64; 3],
    pub test_originals_only: bool,
    /// Source stems per split.
    pub sources: BTreeMap<String, Vec<String>>,
}

impl Manifest {
    pub fn load(run_dir: &Path) -> Result<Manifest> {
        Manifest::load_file(&run_dir.join(FILE_NAME))
    }

    /// Reads a manifest from any path (the commit record of a generation is one too).
    pub fn load_file(path: &Path) -> Result<Manifest> {
        let text = std::fs::read_to_string(path).with_context(|| {
            format!(
                "cannot read {} (run `pipeline generate` first)",
                path.display()
            )
        })?;
        serde_json::from_str(&text).with_context(|| {
            format!(
                "{} is not a valid manifest (rerun `pipeline generate --force` to rebuild it)",
                path.display()
            )
        })
    }

    pub fn save(&self, run_dir: &Path) -> Result<()> {
        write_json(&run_dir.join(FILE_NAME), self)
    }
}

/// The file a split pair lives at in the dataset folder, relative to the run folder.
pub fn dataset_path(split: &str, kind: &str, file: &str) -> String {
    let name = Path::new(file)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    format!("dataset/{split}/{kind}/{name}")
}

/// What `verify` found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    pub checked: usize,
    pub changed: Vec<String>,
    pub missing: Vec<String>,
    pub extra: Vec<String>,
}

impl VerifyReport {
    pub fn is_clean(&self) -> bool {
        self.changed.is_empty() && self.missing.is_empty() && self.extra.is_empty()
    }
}

/// Re-hashes every master and dataset file listed in the manifest, and lists files in those
/// folders that the manifest does not know.
///
/// A run that is not complete is an error, not a list of missing files: a generation killed
/// before or while committing (run `pipeline generate --resume`), or a split interrupted or
/// refused part-way (run `pipeline split`).
pub fn verify(run_dir: &Path) -> Result<VerifyReport> {
    let journal = run_dir.join(crate::generate::JOURNAL);
    if !run_dir.join(FILE_NAME).exists() && journal.exists() {
        anyhow::bail!(
            "the run in {} is incomplete: a generation did not finish ({} exists, no {FILE_NAME}); \
             run `pipeline generate --resume` to finish it",
            run_dir.display(),
            journal.display()
        );
    }
    let m = crate::generate::require_complete(run_dir)?;
    if m.split.is_none() && m.pairs.iter().any(|p| p.split.is_some()) {
        anyhow::bail!(
            "the run in {} is incomplete: its split was interrupted or refused part-way ({} \
             records no complete split); run `pipeline split` to finish it",
            run_dir.display(),
            run_dir.join(FILE_NAME).display()
        );
    }
    let mut expected: BTreeMap<String, &str> = BTreeMap::new();
    for p in &m.pairs {
        expected.insert(p.image.clone(), &p.image_hash);
        expected.insert(p.mask.clone(), &p.mask_hash);
        if let Some(split) = &p.split {
            expected.insert(dataset_path(split, "images", &p.image), &p.image_hash);
            expected.insert(dataset_path(split, "masks", &p.mask), &p.mask_hash);
        }
    }
    let results: Vec<(String, Option<bool>)> = expected
        .par_iter()
        .map(|(rel, hash)| {
            let path = run_dir.join(rel);
            let state = if path.is_file() {
                Some(hash_file(&path).map(|h| h == *hash).unwrap_or(false))
            } else {
                None
            };
            (rel.clone(), state)
        })
        .collect();
    let mut report = VerifyReport {
        checked: results.len(),
        ..Default::default()
    };
    for (rel, state) in results {
        match state {
            Some(true) => {}
            Some(false) => report.changed.push(rel),
            None => report.missing.push(rel),
        }
    }
    let known: BTreeSet<&String> = expected.keys().collect();
    for top in ["master", "dataset"] {
        let dir = run_dir.join(top);
        if !dir.is_dir() {
            continue;
        }
        for entry in walkdir::WalkDir::new(&dir).sort_by_file_name() {
            let entry = entry.with_context(|| format!("cannot list {}", dir.display()))?;
            if !entry.file_type().is_file() {
                continue;
            }
            let rel = rel_path(run_dir, entry.path());
            if !known.contains(&rel) {
                report.extra.push(rel);
            }
        }
    }
    Ok(report)
}

/// `path` relative to `base`, with forward slashes.
pub fn rel_path(base: &Path, path: &Path) -> String {
    let rel: PathBuf = path.strip_prefix(base).unwrap_or(path).to_path_buf();
    rel.components()
        .map(|c| c.as_os_str().to_string_lossy())
        .collect::<Vec<_>>()
        .join("/")
}
