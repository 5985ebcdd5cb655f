//! `manifest.json`: every generated file with its source, variant, parameters, split and content
//! hash. It is written last (atomically), so its presence means a complete generation. `verify`
//! re-hashes the tree against it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::augment::VariantParams;
use crate::config::{GenerateConfig, Lesion, SplitMode};
use crate::io::{hash_file, write_json};
use crate::run_layout::{dataset_rel, PairPart, RunLayout, Split};

/// Schema name and version written in `manifest.json`'s `schema` field.
pub const SCHEMA: &str = "fundus-pipeline/manifest/v1";

/// The contents of `manifest.json`: what a run generated, from what, and how it is split.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    /// [`SCHEMA`] of the writer.
    pub schema: String,
    /// The `pipeline` version (Cargo package version) that wrote it.
    pub tool_version: String,
    /// Hash of the settings that decide the master set (seed, lesion, generate section).
    pub generation_key: String,
    /// Those settings, resolved.
    pub generation: Generation,
    /// One record per DIARETDB1 source image, in processing order.
    pub sources: Vec<SourceRecord>,
    /// One record per image/mask pair, sorted by name.
    pub pairs: Vec<PairRecord>,
    /// Sources of the dataset that could not be generated when this set was committed (a first
    /// generation commits what it could make), sorted by stem: their pairs are missing. Empty,
    /// and then not written, for a complete set.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failed: Vec<FailedRecord>,
    /// Set by `split`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split: Option<SplitInfo>,
}

/// A source that could not be generated (`failed` in manifest.json).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct FailedRecord {
    /// File stem of the source photograph, e.g. `image001`.
    pub stem: String,
    /// Why it could not be used (the error message, naming the file).
    pub error: String,
}

/// The settings that decided the master set, resolved (`generation` in manifest.json): the
/// fields hashed into the generation key ([`GenerationKey`]) plus the variant names in plan order.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Generation {
    /// The config's `seed`: the root of every per-sample random stream.
    pub seed: u64,
    /// The lesion kind whose ground truth was read.
    pub lesion: Lesion,
    /// The config's `generate` section, resolved.
    pub generate: GenerateConfig,
    /// Variant names (`orig`, `rotate_20`, ...) in the order of the plan.
    pub variants: Vec<String>,
    /// The JPEG encoder of a JPEG run ([`crate::io::JPEG_ENCODER`]); absent for PNG runs and in
    /// manifests written before the encoder was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jpeg_encoder: Option<String>,
}

impl Generation {
    /// What a generation with `cfg` records: its generation settings and the names of its
    /// variants in plan order (the record [`generation_problems`] holds against the key).
    pub fn of(cfg: &crate::config::Config) -> Generation {
        Generation {
            seed: cfg.seed,
            lesion: cfg.lesion,
            generate: cfg.generate.clone(),
            variants: crate::augment::plan(&cfg.generate.variants)
                .iter()
                .map(crate::augment::Variant::name)
                .collect(),
            jpeg_encoder: cfg.generation_settings().jpeg_encoder.map(str::to_string),
        }
    }
}

/// The settings whose compact JSON's blake3 is the generation key: seed, lesion, the `generate`
/// section and, for JPEG output only, the JPEG encoder, in this order (the key of existing run
/// folders depends on it: PNG keys are the same as before the encoder was recorded).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct GenerationKey<'a> {
    /// The config's `seed`.
    pub seed: u64,
    /// The lesion kind.
    pub lesion: Lesion,
    /// The config's `generate` section.
    pub generate: &'a GenerateConfig,
    /// [`crate::io::JPEG_ENCODER`] when `generate.image_format` is JPEG: another encoder makes
    /// other bytes from the same settings, so it is part of what identifies the set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jpeg_encoder: Option<&'a str>,
}

impl GenerationKey<'_> {
    /// blake3 (hex) of the compact JSON.
    pub fn hash(&self) -> String {
        let text = serde_json::to_string(self).expect("generation key serializes");
        blake3::hash(text.as_bytes()).to_hex().to_string()
    }
}

/// One source: a DIARETDB1 fundus photograph and its ground-truth map.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SourceRecord {
    /// File stem of the photograph, e.g. `image001`; prefix of its pairs' names.
    pub stem: String,
    /// The photograph, relative to the config's `data` folder, with forward slashes.
    pub image: String,
    /// The ground-truth map, relative to the config's `data` folder.
    pub truth: String,
    /// blake3 (hex) of the photograph's bytes as read.
    pub image_hash: String,
    /// blake3 (hex) of the ground-truth file's bytes as read.
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

/// One generated image/mask pair in `master/`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PairRecord {
    /// `<stem>_<variant>`.
    pub name: String,
    /// The source's stem ([`SourceRecord::stem`]).
    pub source: String,
    /// The variant's name, e.g. `rotate_20` ([`crate::augment::Variant::name`]).
    pub variant: String,
    /// The variant's parameters ([`crate::augment::Variant::params`]), e.g. `{"degrees": 20.0}`.
    pub params: VariantParams,
    /// Path of the image, relative to the run folder.
    pub image: String,
    /// Path of the mask (1-channel PNG, 0 or 255), relative to the run folder.
    pub mask: String,
    /// blake3 (hex) of the image file.
    pub image_hash: String,
    /// blake3 (hex) of the mask file.
    pub mask_hash: String,
    /// Lesion pixels in the mask.
    pub foreground: u64,
    /// `train`, `valid`, `test`, or absent (not in the split dataset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split: Option<Split>,
}

/// True for a name that is one plain path component: not empty, not `.` or `..`, without `/`,
/// `\\` or NUL, so that joining it to a folder stays in that folder.
pub fn is_plain_name(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains(['/', '\\', '\0'])
}

impl PairRecord {
    /// Checks that the record names only files the generator writes: `name` and `source` plain
    /// names ([`is_plain_name`]), `image` = `master/images/<name>.<ext>` (ext letters and
    /// digits), `mask` = `master/masks/<name>.png`. The tool removes and replaces the files a
    /// manifest or journal records, so a hand-edited path (absolute, with `..`, another folder)
    /// must not reach it. Errors: what is wrong, with the pair's name.
    pub fn check_paths(&self) -> Result<()> {
        let name = &self.name;
        let shown = name.escape_debug();
        anyhow::ensure!(
            is_plain_name(name) && is_plain_name(&self.source),
            "a pair record has name {name:?} and source {:?}; both must be plain file names",
            self.source
        );
        let ext_ok = self
            .image
            .strip_prefix("master/images/")
            .and_then(|f| f.strip_prefix(name.as_str()))
            .and_then(|f| f.strip_prefix('.'))
            .is_some_and(|e| !e.is_empty() && e.bytes().all(|b| b.is_ascii_alphanumeric()));
        anyhow::ensure!(
            ext_ok,
            "pair {shown} records the image {:?}, which is not a file pipeline writes \
             (master/images/{shown}.<ext>)",
            self.image
        );
        anyhow::ensure!(
            self.mask == format!("master/masks/{name}.png"),
            "pair {shown} records the mask {:?}, which is not a file pipeline writes \
             (master/masks/{shown}.png)",
            self.mask
        );
        Ok(())
    }

    /// The pair's two master files: (part, path relative to the run folder, blake3 hex).
    pub fn master_files(&self) -> [(PairPart, &str, &str); 2] {
        [
            (PairPart::Image, &self.image, &self.image_hash),
            (PairPart::Mask, &self.mask, &self.mask_hash),
        ]
    }

    /// The pair's two files in the split dataset (relative to the run folder, with their
    /// hashes), or `None` when the pair is in no split.
    pub fn dataset_files(&self) -> Option<[(String, &str); 2]> {
        let split = self.split?;
        Some(
            self.master_files()
                .map(|(part, file, hash)| (dataset_rel(split, part, file), hash)),
        )
    }

    /// The dataset path (relative to the run folder) of one part, when the pair is split.
    pub fn dataset_file(&self, part: PairPart) -> Option<String> {
        let file = match part {
            PairPart::Image => &self.image,
            PairPart::Mask => &self.mask,
        };
        Some(dataset_rel(self.split?, part, file))
    }
}

/// The split as `pipeline split` recorded it (its presence means the split is complete).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SplitInfo {
    /// The split mode as written in the config (`by-source`, `official`, `by-file`).
    pub mode: SplitMode,
    /// The config's train, valid, test ratios.
    pub ratios: [f64; 3],
    /// Whether test holds only `orig` variants (`split.test_originals_only`).
    pub test_originals_only: bool,
    /// Source stems per split, keyed by the split's name.
    pub sources: BTreeMap<String, Vec<String>>,
}

impl SplitInfo {
    /// The source stems of one split (empty when none).
    pub fn sources_of(&self, split: Split) -> &[String] {
        self.sources.get(split.name()).map_or(&[], Vec::as_slice)
    }
}

impl Manifest {
    /// Every master file the records name: (path relative to the run folder, blake3 hex).
    pub fn master_files(&self) -> impl Iterator<Item = (&str, &str)> {
        self.pairs
            .iter()
            .flat_map(|p| p.master_files().map(|(_, rel, hash)| (rel, hash)))
    }

    /// Every file of the recorded split in `dataset/`: path relative to the run folder -> blake3
    /// hex (empty when nothing is split).
    pub fn dataset_files(&self) -> BTreeMap<String, &str> {
        self.pairs
            .iter()
            .filter_map(PairRecord::dataset_files)
            .flatten()
            .collect()
    }

    /// A warning for a set committed without some of its sources ([`Manifest::failed`]), naming
    /// them and what to do; `None` for a complete set. `run` is the run folder, for the message.
    pub fn failed_warning(&self, run: &Path) -> Option<String> {
        let (first, more) = self.failed.split_first()?;
        let others = if more.is_empty() {
            String::new()
        } else {
            format!(" and {} more", more.len())
        };
        Some(format!(
            "the master set in {} lacks {} source(s) that could not be generated: {} ({}){others}; \
             fix them and rerun `pipeline generate` (then `pipeline split`)",
            run.display(),
            self.failed.len(),
            first.stem,
            first.error,
        ))
    }

    /// The record of the source `stem`, if any.
    pub fn source(&self, stem: &str) -> Option<&SourceRecord> {
        self.sources.iter().find(|s| s.stem == stem)
    }

    /// The source records of `split`, in the split's (sorted) order; for a manifest that
    /// [`crate::split::require_complete`] passed (which also refuses a split that disagrees
    /// with itself). Errors: no split is recorded (run `pipeline split`); the split names a
    /// source the manifest has no record of.
    pub fn split_sources(&self, split: Split) -> Result<Vec<&SourceRecord>> {
        let info = self
            .split
            .as_ref()
            .context("the manifest records no split (run `pipeline split` first)")?;
        info.sources_of(split)
            .iter()
            .map(|stem| {
                self.source(stem).with_context(|| {
                    format!("the {split} split lists source {stem}, which has no source record")
                })
            })
            .collect()
    }

    /// Reads `manifest.json` of the run. Errors: missing (names the command to run) or invalid.
    pub fn load(run: &RunLayout) -> Result<Manifest> {
        Manifest::load_file(&run.manifest())
    }

    /// Reads a manifest from any path (the commit record of a generation is one too).
    pub fn load_file(path: &Path) -> Result<Manifest> {
        let text = match crate::io::read_regular_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                // A run folder with shards but no manifest waits for its merge.
                let sharded = path
                    .parent()
                    .is_some_and(|run| run.join(RunLayout::SHARDS).is_dir());
                return Err(e).with_context(|| {
                    format!(
                        "cannot read {} (run `pipeline {}` first)",
                        path.display(),
                        if sharded {
                            "merge` to join the shards under shards/, or `pipeline generate"
                        } else {
                            "generate"
                        }
                    )
                });
            }
            // Not the file the tool writes (a folder, a FIFO ...), or unreadable.
            Err(e) => {
                return Err(e).with_context(|| {
                    format!("cannot read {}: move it away and rerun", path.display())
                })
            }
        };
        let m: Manifest = serde_json::from_str(&text).with_context(|| {
            format!(
                "{} is not a valid manifest (rerun `pipeline generate --force` to rebuild it)",
                path.display()
            )
        })?;
        if m.schema != SCHEMA {
            anyhow::bail!(
                "{} is not a manifest this version reads: its schema is {:?}, not {SCHEMA:?} \
                 (edited by hand, or written by another tool?); rerun `pipeline generate --force` \
                 to rebuild it",
                path.display(),
                m.schema,
            );
        }
        if let Some(s) = m.sources.iter().find(|s| !is_plain_name(&s.stem)) {
            anyhow::bail!(
                "{} is not a valid manifest (edited by hand?); rerun `pipeline generate \
                 --force` to rebuild it: a source has the stem {:?}, which must be a plain file \
                 name",
                path.display(),
                s.stem
            );
        }
        for p in &m.pairs {
            p.check_paths().with_context(|| {
                format!(
                    "{} is not a valid manifest (edited by hand?); rerun `pipeline generate \
                     --force` to rebuild it",
                    path.display()
                )
            })?;
        }
        Ok(m)
    }

    /// Writes `manifest.json` of the run atomically.
    pub fn save(&self, run: &RunLayout) -> Result<()> {
        write_json(&run.manifest(), self)
    }
}

/// What `verify` found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    /// Files listed in the manifest (master and dataset) that were looked at.
    pub checked: usize,
    /// Listed files whose blake3 differs from the manifest (or that could not be read);
    /// paths relative to the run folder. A link, folder or other non-file at a recorded name is
    /// listed too, with its kind in parentheses after the path.
    pub changed: Vec<String>,
    /// Listed files that are not there.
    pub missing: Vec<String>,
    /// Sources the manifest records as not generated ([`Manifest::failed`]): `stem: error`.
    pub failed: Vec<String>,
    /// Pair records that are not one per recorded source and variant of the config
    /// (`missing record: <name>`, `duplicate record: <name>`, `extra record: <name>`).
    pub records: Vec<String>,
    /// Files in `master/` or `dataset/` that the manifest does not list; a link or another
    /// kind of entry (not a folder) is listed too, with its kind in parentheses after the path.
    pub extra: Vec<String>,
}

impl VerifyReport {
    /// True when nothing changed, is missing or is extra, and no source failed.
    pub fn is_clean(&self) -> bool {
        self.changed.is_empty()
            && self.missing.is_empty()
            && self.extra.is_empty()
            && self.failed.is_empty()
            && self.records.is_empty()
    }
}

/// Re-hashes every master and dataset file listed in the manifest of `cfg`'s run, and lists
/// files in those folders that the manifest does not know.
///
/// A run that is not complete is an error, not a list of missing files: a generation killed
/// before or while committing (run `pipeline generate --resume`), or a split interrupted or
/// refused part-way (run `pipeline split`). So is a set generated with other generation settings
/// than `cfg`'s (the files would match their manifest but not what this config makes), before
/// any file is hashed.
pub fn verify(cfg: &crate::config::Config) -> Result<VerifyReport> {
    let run = &cfg.layout();
    let journal = run.journal();
    if !run.manifest().exists() && journal.exists() {
        if matches!(crate::generate::journal_key(run)?, Some(None)) {
            anyhow::bail!(
                "{} is not a journal of pipeline (its first line is no journal header), and \
                 there is no {}: nothing to verify; move it away and run `pipeline generate`",
                journal.display(),
                RunLayout::MANIFEST
            );
        }
        anyhow::bail!(
            "the run in {} is incomplete: a generation did not finish ({} exists, no {}); \
             run {} to finish it",
            run.root().display(),
            journal.display(),
            RunLayout::MANIFEST,
            crate::generate::finish_hint(run)
        );
    }
    let m = crate::generate::require_complete(run)?;
    if m.split.is_none() && m.pairs.iter().any(|p| p.split.is_some()) {
        anyhow::bail!(
            "the run in {} is incomplete: its split was interrupted or refused part-way ({} \
             records no complete split); run `pipeline split` to finish it",
            run.root().display(),
            run.manifest().display()
        );
    }
    crate::generate::check_generated_by(cfg, &m)?;
    // A link or file in place of one of the set's folders: the files would be read through it.
    crate::owned::check_folders(&run.own_folders())?;
    if let Some(info) = &m.split {
        crate::split::check_split_settings(cfg, info)?;
    }
    let mut expected = m.dataset_files();
    expected.extend(
        m.master_files()
            .map(|(file, hash)| (file.to_string(), hash)),
    );
    // The tool writes regular files: a link at a recorded name is a change even when it leads
    // to the same bytes (the set is no longer what was generated, and a write through it would
    // land elsewhere); it is listed with its kind, and a folder or FIFO there likewise.
    let results: Vec<(String, Option<bool>)> = expected
        .par_iter()
        .map(|(rel, hash)| {
            let path = run.file(rel);
            let state = match std::fs::symlink_metadata(&path) {
                Err(_) => None,
                Ok(meta) if meta.file_type().is_symlink() => {
                    return (format!("{rel} (symbolic link)"), Some(false));
                }
                Ok(meta) if !meta.is_file() => {
                    return (
                        format!("{rel} ({})", kind_label(meta.file_type())),
                        Some(false),
                    );
                }
                Ok(_) => Some(hash_file(&path).map(|h| h == *hash).unwrap_or(false)),
            };
            (rel.clone(), state)
        })
        .collect();
    let mut report = VerifyReport {
        checked: results.len(),
        failed: m
            .failed
            .iter()
            .map(|f| format!("{}: {}", f.stem, f.error))
            .collect(),
        ..Default::default()
    };
    report.records = record_problems(cfg, &m);
    report.records.extend(split_problems(&m));
    for (rel, state) in results {
        match state {
            Some(true) => {}
            Some(false) => report.changed.push(rel),
            None => report.missing.push(rel),
        }
    }
    let known: BTreeSet<&String> = expected.keys().collect();
    for dir in [run.master(), run.dataset()] {
        if !dir.is_dir() {
            continue;
        }
        for entry in walkdir::WalkDir::new(&dir).sort_by_file_name() {
            let entry = entry.with_context(|| format!("cannot list {}", dir.display()))?;
            // Links are not followed (walkdir's default): a link is an entry of its own.
            let kind = entry.file_type();
            if kind.is_dir() {
                continue;
            }
            let rel = rel_path(run.root(), entry.path());
            if !known.contains(&rel) {
                report.extra.push(if kind.is_file() {
                    rel
                } else {
                    format!("{rel} ({})", kind_label(kind))
                });
            }
        }
    }
    Ok(report)
}

/// Pair records that are not one per (recorded source, variant of the config): a pair of a
/// generated source without a record (`missing record: <name>`), a name recorded twice
/// (`duplicate record: <name>`), a record of no recorded source or variant (`extra record:
/// <name>`). A set trimmed by hand, records and files together, matches its files but is not
/// what the config generates.
fn record_problems(cfg: &crate::config::Config, m: &Manifest) -> Vec<String> {
    let variants: Vec<String> = crate::augment::plan(&cfg.generate.variants)
        .iter()
        .map(crate::augment::Variant::name)
        .collect();
    let failed: BTreeSet<&str> = m.failed.iter().map(|f| f.stem.as_str()).collect();
    let mut want: BTreeSet<String> = BTreeSet::new();
    for s in m
        .sources
        .iter()
        .filter(|s| !failed.contains(s.stem.as_str()))
    {
        want.extend(variants.iter().map(|v| format!("{}_{v}", s.stem)));
    }
    let mut seen: BTreeSet<&str> = BTreeSet::new();
    let mut out = Vec::new();
    for p in &m.pairs {
        if !seen.insert(&p.name) {
            out.push(format!("duplicate record: {}", p.name));
        } else if !want.contains(&p.name) {
            out.push(format!("extra record: {}", p.name));
        } else if p.name != format!("{}_{}", p.source, p.variant) {
            out.push(format!(
                "record {} names source {} and variant {}, not its own",
                p.name, p.source, p.variant
            ));
        }
    }
    out.extend(
        want.iter()
            .filter(|n| !seen.contains(n.as_str()))
            .map(|n| format!("missing record: {n}")),
    );
    out
}

/// Where the recorded generation settings (`generation`, what messages and people read) are
/// not the ones the recorded key (`generation_key`, what every stage compares) was made from:
/// a `generation` edited by hand with the key kept. Their key is recomputed the way a config's
/// is ([`GenerationKey::hash`]; settings added in later versions are left out of it at their
/// defaults, so older manifests give their own key), and the variant names must be the plan of
/// the recorded variants.
pub(crate) fn generation_problems(m: &Manifest) -> Vec<String> {
    let g = &m.generation;
    let mut out = Vec::new();
    let key = GenerationKey {
        seed: g.seed,
        lesion: g.lesion,
        generate: &g.generate,
        jpeg_encoder: g.jpeg_encoder.as_deref(),
    }
    .hash();
    if key != m.generation_key {
        out.push(
            "generation record: the recorded settings (`generation`) are not the ones its \
             generation key was made from (edited by hand?)"
                .to_string(),
        );
    }
    let plan: Vec<String> = crate::augment::plan(&g.generate.variants)
        .iter()
        .map(crate::augment::Variant::name)
        .collect();
    if plan != g.variants {
        out.push(
            "generation record: `generation.variants` is not the plan of the recorded variant \
             settings (edited by hand?)"
                .to_string(),
        );
    }
    out
}

/// Where the recorded split disagrees with itself: `split.sources` against the pairs' `split`
/// fields, the lists the evaluation and the statistics read against the files that were linked.
/// By source and official: every listed stem is a recorded source, in one split only, and each
/// pair is in its source's split (test: `orig` only when `test_originals_only`), or in none.
/// By file: each split lists exactly the sources of its pairs. A hand-edited list would make
/// `evaluate` score training photographs as test photographs, silently.
pub(crate) fn split_problems(m: &Manifest) -> Vec<String> {
    let Some(info) = &m.split else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let recorded: BTreeSet<&str> = m.sources.iter().map(|s| s.stem.as_str()).collect();
    let mut split_of: BTreeMap<&str, Split> = BTreeMap::new();
    for (name, stems) in &info.sources {
        let Some(split) = Split::ALL.into_iter().find(|s| s.name() == name) else {
            out.push(format!(
                "split record: split.sources names no split {name:?}"
            ));
            continue;
        };
        let mut in_list: BTreeSet<&str> = BTreeSet::new();
        for stem in stems {
            if !in_list.insert(stem) {
                out.push(format!("split record: {stem} is listed twice in {name}"));
            } else if !recorded.contains(stem.as_str()) {
                out.push(format!(
                    "split record: {name} lists {stem:?}, which is not a recorded source"
                ));
            } else if info.mode != SplitMode::ByFile {
                if let Some(other) = split_of.insert(stem, split) {
                    out.push(format!(
                        "split record: {stem} is listed in both {} and {name}",
                        other.name()
                    ));
                }
            }
        }
    }
    if info.mode == SplitMode::ByFile {
        for split in Split::ALL {
            let of_pairs: BTreeSet<&str> = m
                .pairs
                .iter()
                .filter(|p| p.split == Some(split))
                .map(|p| p.source.as_str())
                .collect();
            let listed: BTreeSet<&str> =
                info.sources_of(split).iter().map(String::as_str).collect();
            if of_pairs != listed {
                out.push(format!(
                    "split record: split.sources.{} does not list the sources of its pairs",
                    split.name()
                ));
            }
        }
        return out;
    }
    for p in &m.pairs {
        let want = split_of
            .get(p.source.as_str())
            .copied()
            .filter(|s| *s != Split::Test || !info.test_originals_only || p.variant == "orig");
        if p.split != want {
            let name = |s: Option<Split>| s.map_or("no split", |s| s.name());
            out.push(format!(
                "split record: pair {} is in {}, but split.sources puts it in {}",
                p.name,
                name(p.split),
                name(want)
            ));
        }
    }
    out
}

/// What an entry that is not a regular file is, for verify's lists.
fn kind_label(kind: std::fs::FileType) -> &'static str {
    if kind.is_symlink() {
        "symbolic link"
    } else if kind.is_dir() {
        "folder"
    } else {
        "FIFO, socket or device"
    }
}

/// `path` relative to `base`, with forward slashes.
pub fn rel_path(base: &Path, path: &Path) -> String {
    let rel: PathBuf = path.strip_prefix(base).unwrap_or(path).to_path_buf();
    rel.components()
        .map(|c| c.as_os_str().to_string_lossy())
        .collect::<Vec<_>>()
        .join("/")
}
