//! `pipeline generate`: every source -> its prepared square pair -> every configured variant,
//! written as lossless files, in parallel (rayon) and deterministically (per-variant RNG streams).
//!
//! Crash safety and "nothing lost" (the order of the durable steps is the protocol):
//! 1. The run folder is checked: a different run (another generation key, an unreadable record,
//!    files no record names) is refused unless `--force`.
//! 2. `generate.journal` is written (header: generation key, variant names, image extension,
//!    field-of-view hash); then, per source, a `begin` line (source hashes, ground-truth
//!    warnings) before any of its files, and one line per finished pair with its hashes.
//! 3. New files go to `staging/` (never over the complete set in `master/`).
//! 4. When every source is done (or, with failures, only when there is no earlier complete set
//!    to keep), the new manifest is written as `generate.commit.json` (the commit record), the
//!    old split files recorded in the old manifest are removed, `master/` becomes `master.old/`,
//!    `staging/` becomes `master/`, the files the old manifest recorded are removed from
//!    `master.old/`, the commit record is renamed to `manifest.json`, and the journal removed.
//!
//! Every step is idempotent, so a rerun after a kill at any point finishes a pending commit and
//! `--resume` keeps journal pairs whose files still hash right and whose sources are unchanged:
//! the result is byte-identical to an uninterrupted run. Only files named by a record (manifest,
//! commit record, journal) or temporary files of the tool are ever removed, never a folder
//! wholesale. One bad source does not stop the others: it is reported at the end.
//!
//! Here: the run and the work on each source. [`journal`]: the journal and the folder's records
//! before a run; [`commit`]: staging checked, swapped in, the old set removed (also for `merge`);
//! [`run_info`]: `run.json`; [`staging`]: what `staging/` may hold, checked before a run and
//! before its commit.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, ensure, Context, Result};
use image::GrayImage;
use indicatif::{ProgressBar, ProgressStyle};
use rayon::prelude::*;

use crate::augment::{plan, Operation, Packed, Variant};
use crate::config::{Config, ImageFormat};
use crate::dataset::layout::{scan, Problem, Source};
use crate::io::{
    commit_point, encode_jpeg_rgb_with, encode_png_gray, encode_png_rgb_with, hash_hex,
    write_in_staging, write_json,
};
use crate::manifest::{rel_path, Generation, Manifest, PairRecord, SourceRecord, SCHEMA};
use crate::prep::{binarize, prepare, read_truth};
use crate::run_layout::RunLayout;

mod commit;
mod journal;
mod run_info;
mod staging;

pub(crate) use commit::{
    commit_external, remove_if_present, remove_root_temporaries, remove_temporaries, ExternalSet,
};
use commit::{finish_commit, staged};

use journal::{start_journal, Begin, Header, Journal, Kept, Prior};
use run_info::write_run_info;
pub use run_info::{FailedSource, GenerateRun, RunInfo};

/// File name of the journal ([`RunLayout::JOURNAL`]).
pub const JOURNAL: &str = RunLayout::JOURNAL;
/// The files of the run folder a generation writes or removes (see [`crate::owned`]).
const OWN_FILES: [&str; 4] = [
    RunLayout::JOURNAL,
    RunLayout::COMMIT,
    RunLayout::MANIFEST,
    RunLayout::RUN_INFO,
];

/// How to run the generation.
#[derive(Debug, Clone, Default)]
pub struct GenerateOptions {
    /// Worker threads; `None` = all cores.
    pub threads: Option<usize>,
    /// Replace an output folder that holds a different run.
    pub force: bool,
    /// Keep files of an interrupted run that match the journal.
    pub resume: bool,
    /// Draw a progress bar (on a terminal).
    pub progress: bool,
    /// Only the sources of this shard (`generate --shard`, src/shard.rs).
    pub shard: Option<crate::shard::Shard>,
}

/// What a generation did.
#[derive(Debug, Clone)]
pub struct GenerateReport {
    /// The run folder `<out>/<name>`.
    pub run_dir: PathBuf,
    /// Sources generated (the failed ones not counted).
    pub sources: usize,
    /// Pairs of those sources (written now or reused from `--resume`).
    pub pairs: usize,
    /// Pairs kept from an interrupted run (`--resume`).
    pub reused: usize,
    /// Sources that could not be used (unpaired, unreadable, too large), with the reason.
    pub failed: Vec<Problem>,
    /// Ground-truth warnings per source (the source was generated).
    pub warnings: Vec<Problem>,
    /// Files in the image and ground-truth folders that are not images, skipped.
    pub ignored: Vec<PathBuf>,
    /// Things the user should know (files left in place, an earlier set kept).
    pub notes: Vec<String>,
    /// Nothing was committed because sources failed: pairs of the earlier complete set that
    /// was kept (0 when there was none and no source could be generated); `None` when the new
    /// set was committed.
    pub kept_earlier: Option<usize>,
    /// Wall-clock time of the generation, in seconds.
    pub seconds: f64,
}

impl GenerateReport {
    /// Throughput: `pairs / seconds` (pairs per second; reused pairs count).
    pub fn pairs_per_second(&self) -> f64 {
        self.pairs as f64 / self.seconds.max(1e-9)
    }
}

/// Runs the generation of `cfg` into `<out>/<name>/master` and writes `manifest.json`.
pub fn generate(cfg: &Config, opts: &GenerateOptions) -> Result<GenerateReport> {
    let started = Instant::now();
    let run = cfg.layout();
    let run_dir = run.root().to_path_buf();
    crate::run_dir::check_apart(
        &run_dir,
        crate::run_dir::RUN_FOLDER,
        &[(crate::run_dir::DATASET_ROOT, &cfg.data)],
    )?;
    let scan = scan(&cfg.data, cfg.lesion)?;
    let scan = match &opts.shard {
        Some(shard) => shard.select(scan),
        None => scan,
    };
    let key = cfg.generation_key();
    let variants = plan(&cfg.generate.variants);
    let ext = match cfg.generate.image_format {
        ImageFormat::Png => "png",
        ImageFormat::Jpeg => "jpg",
    };
    let fov = load_fov(cfg, scan.fov_mask.as_deref())?;
    let header = Header {
        generation_key: key.clone(),
        variants: variants.iter().map(Variant::name).collect(),
        image_ext: ext.into(),
        fov_hash: fov.as_ref().map(|(_, h)| h.clone()),
    };
    let mut notes = Vec::new();

    // The run folder's files this command writes or removes must be its own (crate::owned).
    let mut owned = crate::owned::Owned::open(&run_dir)?;
    owned.check(&OWN_FILES)?;
    crate::owned::check_folders(&run.own_folders())?;
    let prior = Prior::read(&run)?;
    prior.check_recorded_entries(&run)?;
    let now = serde_json::to_value(cfg.generation_settings())?;
    prior.check(&run, &key, &now, opts.force)?;
    owned.claim(&OWN_FILES)?;
    std::fs::create_dir_all(&run_dir)
        .with_context(|| format!("cannot create output folder {}", run_dir.display()))?;
    remove_root_temporaries(&run)?;
    // A commit that was under way is finished first: its set is complete and recorded.
    let old = if let Some(Ok(_)) = &prior.commit {
        notes.extend(finish_commit(&run, prior.manifest_ok())?);
        Prior::read(&run)?.manifest_ok().cloned()
    } else {
        prior.manifest_ok().cloned()
    };

    let kept = start_journal(&run, &header, &prior.journal, &scan.sources, opts)?;
    let journal = Journal::open(&run)?;
    for d in ["images", "masks"] {
        let d = run.staging().join(d);
        std::fs::create_dir_all(&d)
            .with_context(|| format!("cannot create output folder {}", d.display()))?;
    }

    let total = scan.sources.len() * variants.len();
    let bar = progress_bar(total as u64, opts.progress);
    let ctx = Ctx {
        ops: &HashMap::new(),
        cfg,
        run: &run,
        variants: &variants,
        fov: fov.as_ref().map(|(f, _)| f),
        kept: &kept,
        journal: &journal,
        bar: &bar,
    };

    let threads = opts.threads.unwrap_or(0);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .context("cannot start worker threads")?;
    let results: Vec<(Source, Result<SourceOutput>)> = pool.install(|| {
        // Operations of the deterministic variants are the same for every source: build them once.
        let size = cfg.generate.size;
        let ops = crate::augment::shared_operations(&variants, size, size);
        let ctx = Ctx { ops: &ops, ..ctx };
        scan.sources
            .par_iter()
            .map(|s| (s.clone(), ctx.source(s)))
            .collect()
    });
    bar.finish_and_clear();
    drop(journal);

    let mut failed = scan.problems.clone();
    let mut warnings = Vec::new();
    let mut sources = Vec::new();
    let mut pairs = Vec::new();
    for (src, r) in results {
        match r {
            Ok((s, p, w)) => {
                sources.push(s);
                pairs.extend(p);
                warnings.extend(w.into_iter().map(|message| Problem {
                    stem: src.stem.clone(),
                    message,
                }));
            }
            Err(e) => failed.push(Problem {
                stem: src.stem.clone(),
                message: format!("{e:#}"),
            }),
        }
    }
    failed.sort_by(|a, b| a.stem.cmp(&b.stem));
    pairs.sort_by(|a, b| a.name.cmp(&b.name));
    let reused = pairs
        .iter()
        .filter(|p| kept.pairs.contains_key(&p.name))
        .count();

    let mut report = GenerateReport {
        run_dir: run_dir.clone(),
        sources: sources.len(),
        pairs: pairs.len(),
        reused,
        failed,
        warnings,
        ignored: scan.ignored,
        notes,
        kept_earlier: None,
        seconds: 0.0,
    };
    if !report.failed.is_empty() && (old.is_some() || report.sources == 0) {
        // Never replace a complete set by a smaller one made while inputs are broken, nor commit
        // an empty one: the journal and staging/ stay for `--resume`.
        report.kept_earlier = Some(old.as_ref().map_or(0, |o| o.pairs.len()));
        report.seconds = started.elapsed().as_secs_f64();
        write_run_info(&run, &report, threads)?;
        return Ok(report);
    }

    let manifest = Manifest {
        schema: SCHEMA.into(),
        tool_version: env!("CARGO_PKG_VERSION").into(),
        generation_key: key,
        generation: Generation::of(cfg),
        sources,
        pairs,
        failed: failed_records(&report.failed),
        split: None,
    };
    staging::check_before_commit(&run, &manifest)?;
    write_json(&run.commit_record(), &manifest)?;
    commit_point("generate: commit record written");
    report.notes.extend(finish_commit(&run, old.as_ref())?);
    if let Some(old) = old.filter(|o| o.generation_key != manifest.generation_key) {
        report.notes.extend(outputs_of_the_replaced_set(&run, &old));
    }
    report.seconds = started.elapsed().as_secs_f64();
    write_run_info(&run, &report, threads)?;
    Ok(report)
}

/// The manifest's records of the sources that failed ([`Manifest::failed`]).
pub(crate) fn failed_records(failed: &[Problem]) -> Vec<crate::manifest::FailedRecord> {
    failed
        .iter()
        .map(|p| crate::manifest::FailedRecord {
            stem: p.stem.clone(),
            error: p.message.clone(),
        })
        .collect()
}

/// A note naming the outputs made from a set that another generation (another key) has just
/// replaced: statistics, sheets, checkpoints, scores and predictions are kept (nothing the user
/// may want is deleted) but describe the old set. `split` remakes `dataset/` and `stats`;
/// `train` starts over (and `evaluate` refuses a checkpoint trained on other data).
fn outputs_of_the_replaced_set(run: &RunLayout, old: &Manifest) -> Option<String> {
    let present: Vec<String> = [
        run.stats_json(),
        run.train_dir(),
        run.eval_dir(),
        run.infer_dir(),
    ]
    .into_iter()
    .filter(|p| p.exists())
    .map(|p| p.display().to_string())
    .collect();
    (!present.is_empty()).then(|| {
        format!(
            "{} were made from the set this generation replaced (generation key {}); they \
             describe that set until `pipeline split`, `stats` and `train` run again",
            present.join(", "),
            journal::short(&old.generation_key)
        )
    })
}

/// The manifest of a complete generation; refuses a run folder whose generation was interrupted
/// while replacing the master set (its `master/` may be half swapped), naming the command.
pub fn require_complete(run: &RunLayout) -> Result<Manifest> {
    if run.commit_record().exists() {
        if Manifest::load_file(&run.commit_record()).is_err() {
            bail!(
                "{} is not a commit record of this version of pipeline (it does not read as \
                 one; the tool writes it whole, so this is another program's or a person's \
                 file): move it away and rerun",
                run.commit_record().display()
            );
        }
        bail!(
            "a generation in {} was interrupted while replacing the master set; rerun {} first",
            run.root().display(),
            finish_hint(run)
        );
    }
    Manifest::load(run)
}

/// The generation key in the header of the run's journal: `None` without a journal,
/// `Some(None)` for a journal whose header does not parse (not the tool's work).
pub fn journal_key(run: &RunLayout) -> Result<Option<Option<String>>> {
    journal::journal_key(run)
}

/// The command that finishes an interrupted generation of `run`, for messages: `pipeline merge`
/// where the run folder holds shards (a merge commits the way a generation does, and rerunning
/// it finishes an interrupted one), `pipeline generate --resume` otherwise.
pub(crate) fn finish_hint(run: &RunLayout) -> &'static str {
    if run.shards().is_dir() {
        "`pipeline merge` (or `pipeline generate --resume` if it was a generation of the whole set)"
    } else {
        "`pipeline generate --resume`"
    }
}

/// [`require_complete`], and the master set must be the one `cfg` generates: a config whose
/// generation settings (seed, lesion, `generate`) differ from the recorded ones is refused,
/// naming the first differing key and the command to rerun. Called by every stage that reads
/// the master set or the split (split, stats, preview, train, evaluate).
pub fn require_generated_by(cfg: &Config) -> Result<Manifest> {
    let m = require_complete(&cfg.layout())?;
    check_generated_by(cfg, &m)?;
    Ok(m)
}

/// Refuses `m` (the run's manifest) when its generation settings are not `cfg`'s; see
/// [`require_generated_by`].
pub fn check_generated_by(cfg: &Config, m: &Manifest) -> Result<()> {
    let run = cfg.layout();
    // The recorded settings must be the ones the recorded key was made from; otherwise the key
    // comparison below would judge the set by one and name the difference by the other.
    if let Some(problem) = crate::manifest::generation_problems(m).first() {
        bail!(
            "{} is not a consistent record of how the master set was made ({problem}); rerun \
             `pipeline generate --force` with the config the run was made with to rebuild it",
            run.manifest().display()
        );
    }
    if m.generation_key != cfg.generation_key() {
        // A generation of this config that replaces the recorded set was interrupted: finishing
        // it is what makes the set this config's.
        if matches!(journal::journal_key(&run)?, Some(Some(k)) if k == cfg.generation_key()) {
            bail!(
                "the master set in {} was made with other settings, and a generation of this \
                 config that replaces it was interrupted ({} is left); rerun {} to finish it",
                run.root().display(),
                run.journal().display(),
                finish_hint(&run)
            );
        }
        let now = serde_json::to_value(cfg.generation_settings())?;
        let mut recorded = serde_json::to_value(&m.generation)?;
        // The variant names follow from `generate.variants` (checked above); the key has none.
        if let Some(o) = recorded.as_object_mut() {
            o.remove("variants");
        }
        let diff = first_difference(&recorded, &now, "")
            .unwrap_or_else(|| "a generation setting differs".to_string());
        bail!(
            "this config does not match the master set in {}: {diff}; rerun `pipeline generate` \
             with this config (`--force` replaces the run), or use the config the run was made \
             with",
            run.root().display()
        );
    }
    Ok(())
}

/// The first key (in `now`'s order) whose value differs between the recorded settings and
/// `now`, as a sentence naming the key path.
pub(super) fn first_difference(
    recorded: &serde_json::Value,
    now: &serde_json::Value,
    path: &str,
) -> Option<String> {
    use serde_json::Value;
    let key_path = |k: &str| {
        if path.is_empty() {
            k.to_string()
        } else {
            format!("{path}.{k}")
        }
    };
    match (recorded, now) {
        (Value::Object(r), Value::Object(n)) => n
            .iter()
            .find_map(|(k, v)| match r.get(k) {
                Some(rv) => first_difference(rv, v, &key_path(k)),
                None => Some(format!(
                    "`{}` is {v} in this config but not recorded in {} (the set was made \
                     before this setting existed, or with its default; setting it to the \
                     default in the config matches such a set)",
                    key_path(k),
                    RunLayout::MANIFEST
                )),
            })
            .or_else(|| {
                // A setting left at its default is not written (e.g. `generate.png_filter`).
                r.iter().find(|(k, _)| !n.contains_key(*k)).map(|(k, rv)| {
                    format!(
                        "`{}` is {rv} in {} but left at its default in this config",
                        key_path(k),
                        RunLayout::MANIFEST
                    )
                })
            }),
        (r, n) if r != n => Some(format!(
            "`{path}` is {n} in this config but {r} in {} (the master set was generated with it)",
            RunLayout::MANIFEST
        )),
        _ => None,
    }
}

/// A finished source: its record, its pairs, and its ground-truth warnings (messages).
type SourceOutput = (SourceRecord, Vec<PairRecord>, Vec<String>);

/// Shared, read-only state of one generation.
struct Ctx<'a> {
    /// Operations of the deterministic variants (built once per run), by name.
    ops: &'a HashMap<String, Operation>,
    cfg: &'a Config,
    run: &'a RunLayout,
    variants: &'a [Variant],
    fov: Option<&'a GrayImage>,
    kept: &'a Kept,
    journal: &'a Journal,
    bar: &'a ProgressBar,
}

impl Ctx<'_> {
    /// One source: read, hash, check, prepare, and write every variant not kept from an earlier
    /// run (into `staging/`).
    fn source(&self, src: &Source) -> Result<SourceOutput> {
        let image_bytes = crate::io::read_regular(&src.image)
            .with_context(|| format!("cannot read {}", src.image.display()))?;
        let truth_bytes = crate::io::read_regular(&src.truth)
            .with_context(|| format!("cannot read {}", src.truth.display()))?;
        // Decoded for every source, even one whose pairs are all kept (`--resume`): the pixel
        // hash finds the same photograph in another container, and the ground-truth warnings
        // are reported again in full.
        let max_pixels = self.cfg.max_image_pixels;
        let image = crate::input::decode(&src.image, &image_bytes, max_pixels)?.into_rgb8();
        let truth = crate::input::decode(&src.truth, &truth_bytes, max_pixels)?;
        let (truth, issues) = read_truth(&truth, self.cfg.generate.threshold);
        ensure!(
            image.dimensions() == truth.dimensions(),
            "image {} is {}x{} but its ground truth {} is {}x{}",
            src.image.display(),
            image.width(),
            image.height(),
            src.truth.display(),
            truth.width(),
            truth.height()
        );
        let record = SourceRecord {
            stem: src.stem.clone(),
            image: rel_path(&self.cfg.data, &src.image),
            truth: rel_path(&self.cfg.data, &src.truth),
            image_hash: hash_hex(&image_bytes),
            truth_hash: hash_hex(&truth_bytes),
            pixel_hash: pixel_hash(&image),
            truth_warnings: issues.iter().map(|i| i.code().to_string()).collect(),
        };
        let messages: Vec<String> = issues
            .iter()
            .map(|i| {
                format!(
                    "ground truth {} {}",
                    src.truth.display(),
                    i.message(self.cfg.generate.threshold)
                )
            })
            .collect();
        let name = |v: &Variant| format!("{}_{}", src.stem, v.name());
        let todo: Vec<&Variant> = self
            .variants
            .iter()
            .filter(|v| !self.kept.pairs.contains_key(&name(v)))
            .collect();
        let mut pairs: Vec<PairRecord> = self
            .variants
            .iter()
            .filter_map(|v| self.kept.pairs.get(&name(v)).cloned())
            .collect();
        self.bar.inc(pairs.len() as u64);
        if todo.is_empty() {
            return Ok((record, pairs, messages));
        }

        let mut mask = binarize(&truth, self.cfg.generate.threshold);
        if let Some(fov) = self.fov {
            ensure!(
                fov.dimensions() == mask.dimensions(),
                "field-of-view mask is {}x{} but image {} is {}x{}",
                fov.width(),
                fov.height(),
                src.image.display(),
                image.width(),
                image.height()
            );
            for (m, f) in mask.pixels_mut().zip(fov.pixels()) {
                if f[0] == 0 {
                    m[0] = 0;
                }
            }
        }
        let square = prepare(&image, &mask, self.cfg.generate.size)
            .with_context(|| format!("cannot prepare {}", src.image.display()))?;
        drop((image, truth, mask));
        let packed = Packed::new(&square);

        // Recorded before any file of the source is written (see the module docs).
        self.journal.begin(&Begin {
            stem: src.stem.clone(),
            image_hash: record.image_hash.clone(),
            truth_hash: record.truth_hash.clone(),
            truth_warnings: record.truth_warnings.clone(),
        })?;
        let written: Vec<PairRecord> = todo
            .par_iter()
            .map(|v| {
                let r = self.write_variant(&packed, &src.stem, v)?;
                self.journal.append(&r)?;
                self.bar.inc(1);
                Ok(r)
            })
            .collect::<Result<_>>()?;
        pairs.extend(written);
        Ok((record, pairs, messages))
    }

    fn write_variant(&self, square: &Packed, stem: &str, v: &Variant) -> Result<PairRecord> {
        let g = &self.cfg.generate;
        let per_source;
        let op = match self.ops.get(&v.name()) {
            Some(op) => op,
            None => {
                let (w, h) = square.pair().image.dimensions();
                per_source = v.operation(w, h, self.cfg.seed, stem);
                &per_source
            }
        };
        let out = op.apply_packed(square);
        let name = format!("{stem}_{}", v.name());
        let (img_bytes, ext) = match g.image_format {
            ImageFormat::Png => (encode_png_rgb_with(&out.image, g.png_filter)?, "png"),
            ImageFormat::Jpeg => (
                encode_jpeg_rgb_with(&out.image, g.jpeg_quality, g.jpeg_subsampling)?,
                "jpg",
            ),
        };
        // Masks keep the adaptive filter: on binary masks it makes files half the size of the
        // fixed filters' and costs little (a mask is a third of an image's bytes).
        let mask_bytes = encode_png_gray(&out.mask)?;
        let image = format!("master/images/{name}.{ext}");
        let mask = format!("master/masks/{name}.png");
        // staging/ is the temporary of the whole set (module docs): no per-file rename.
        write_in_staging(&staged(self.run, &image), &img_bytes)?;
        write_in_staging(&staged(self.run, &mask), &mask_bytes)?;
        Ok(PairRecord {
            name,
            source: stem.to_string(),
            variant: v.name(),
            params: v.params(),
            image,
            mask,
            image_hash: hash_hex(&img_bytes),
            mask_hash: hash_hex(&mask_bytes),
            foreground: crate::prep::count_nonzero(out.mask.as_raw()),
            split: None,
        })
    }
}

/// blake3 of an image's size and decoded RGB pixels: equal for the same photograph stored in
/// different containers (PNG and BMP, different compression), unlike the file hash.
pub fn pixel_hash(image: &image::RgbImage) -> String {
    let mut h = blake3::Hasher::new();
    h.update(&image.width().to_le_bytes());
    h.update(&image.height().to_le_bytes());
    h.update(image.as_raw());
    h.finalize().to_hex().to_string()
}

/// The field-of-view mask in use, with the blake3 of its file.
fn load_fov(cfg: &Config, path: Option<&Path>) -> Result<Option<(GrayImage, String)>> {
    match path {
        Some(p) if cfg.generate.use_fov_mask => {
            let bytes = crate::io::read_regular(p)
                .with_context(|| format!("cannot read {}", p.display()))?;
            let img = crate::input::decode(p, &bytes, cfg.max_image_pixels)
                .context("cannot read the field-of-view mask")?;
            Ok(Some((img.to_luma8(), hash_hex(&bytes))))
        }
        _ => Ok(None),
    }
}

fn progress_bar(total: u64, show: bool) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} pairs  {per_sec}  eta {eta}")
            .expect("valid template"),
    );
    bar
}
