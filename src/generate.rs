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

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

use anyhow::{bail, ensure, Context, Result};
use image::GrayImage;
use indicatif::{ProgressBar, ProgressStyle};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::augment::{plan, Operation, Packed, Variant};
use crate::config::{Config, ImageFormat};
use crate::dataset::layout::{scan, Problem, Source};
use crate::io::{
    commit_point, encode_jpeg_rgb, encode_png_gray_with, encode_png_rgb_with, hash_file, hash_hex,
    write_atomic, write_json,
};
use crate::manifest::{rel_path, Generation, Manifest, PairRecord, SourceRecord, SCHEMA};
use crate::prep::{binarize, prepare, read_truth};
use crate::run_layout::RunLayout;

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
    /// Pairs of the earlier complete set that was kept because sources failed (nothing was
    /// committed); `None` when the new set was committed.
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
    let prior = Prior::read(&run)?;
    prior.check(&run, &key, opts.force)?;
    owned.claim(&OWN_FILES)?;
    std::fs::create_dir_all(&run_dir)
        .with_context(|| format!("cannot create output folder {}", run_dir.display()))?;
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
        let ops: HashMap<String, Operation> = variants
            .par_iter()
            .filter(|v| !v.is_random())
            .map(|v| (v.name(), v.operation(size, size, cfg.seed, "")))
            .collect();
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
    if !report.failed.is_empty() {
        if let Some(old) = &old {
            // Never replace a complete set by a smaller one made while inputs are broken.
            report.kept_earlier = Some(old.pairs.len());
            report.seconds = started.elapsed().as_secs_f64();
            write_run_info(&run, &report, threads)?;
            return Ok(report);
        }
    }

    let manifest = Manifest {
        schema: SCHEMA.into(),
        tool_version: env!("CARGO_PKG_VERSION").into(),
        generation_key: key,
        generation: Generation {
            seed: cfg.seed,
            lesion: cfg.lesion,
            generate: cfg.generate.clone(),
            variants: header.variants,
        },
        sources,
        pairs,
        split: None,
    };
    check_staging(&run, &manifest)?;
    write_json(&run.commit_record(), &manifest)?;
    commit_point("generate: commit record written");
    report.notes.extend(finish_commit(&run, old.as_ref())?);
    report.seconds = started.elapsed().as_secs_f64();
    write_run_info(&run, &report, threads)?;
    Ok(report)
}

/// The manifest of a complete generation; refuses a run folder whose generation was interrupted
/// while replacing the master set (its `master/` may be half swapped), naming the command.
pub fn require_complete(run: &RunLayout) -> Result<Manifest> {
    if run.commit_record().exists() {
        bail!(
            "a generation in {} was interrupted while replacing the master set; rerun \
             `pipeline generate` (or `pipeline generate --resume`) first",
            run.root().display()
        );
    }
    Manifest::load(run)
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
    if m.generation_key != cfg.generation_key() {
        let now = serde_json::to_value(crate::manifest::GenerationKey {
            seed: cfg.seed,
            lesion: cfg.lesion,
            generate: &cfg.generate,
        })?;
        let recorded = serde_json::to_value(&m.generation)?;
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
fn first_difference(
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
                    "`{}` is {v} in this config but not recorded in {}",
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

/// The journal's first line.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct Header {
    generation_key: String,
    /// Variant names in plan order: with a `begin` line they name the files a source may have.
    #[serde(default)]
    variants: Vec<String>,
    #[serde(default)]
    image_ext: String,
    /// blake3 of the field-of-view mask in use, if any.
    #[serde(default)]
    fov_hash: Option<String>,
}

/// A journal line written before any file of a source.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct Begin {
    stem: String,
    image_hash: String,
    truth_hash: String,
    #[serde(default)]
    truth_warnings: Vec<String>,
}

/// A journal line after the header: a source begun, or a finished pair.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
enum Line {
    Begin { begin: Begin },
    Pair(Box<PairRecord>),
}

/// What a journal says (the last line of a source or pair wins).
#[derive(Debug, Clone, Default)]
struct JournalState {
    /// `None`: no journal; `Some(None)`: a journal whose header does not parse.
    header: Option<Option<Header>>,
    begins: BTreeMap<String, Begin>,
    pairs: BTreeMap<String, PairRecord>,
}

impl JournalState {
    fn read(run: &RunLayout) -> Result<JournalState> {
        let path = run.journal();
        let f = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        let mut lines = BufReader::new(f).lines();
        let header = lines
            .next()
            .and_then(|l| l.ok())
            .and_then(|l| serde_json::from_str::<Header>(&l).ok());
        let mut s = JournalState {
            header: Some(header),
            ..Default::default()
        };
        // A line cut by a kill does not parse and is skipped.
        for l in lines.map_while(|l| l.ok()) {
            match serde_json::from_str::<Line>(&l) {
                Ok(Line::Begin { begin }) => {
                    s.begins.insert(begin.stem.clone(), begin);
                }
                Ok(Line::Pair(p)) => {
                    s.pairs.insert(p.name.clone(), *p);
                }
                Err(_) => {}
            }
        }
        Ok(s)
    }

    /// Every staged file the journal names: recorded pairs, and every variant of a begun source.
    fn staged_files(&self) -> BTreeSet<String> {
        let mut out: BTreeSet<String> = self
            .pairs
            .values()
            .flat_map(|p| [p.image.clone(), p.mask.clone()])
            .collect();
        if let Some(Some(h)) = &self.header {
            for stem in self.begins.keys() {
                for v in &h.variants {
                    out.insert(format!("master/images/{stem}_{v}.{}", h.image_ext));
                    out.insert(format!("master/masks/{stem}_{v}.png"));
                }
            }
        }
        out
    }
}

/// What a run folder holds before a generation.
struct Prior {
    /// `None`: no manifest; `Some(Err)`: unreadable (corrupt, empty).
    manifest: Option<Result<Manifest, String>>,
    commit: Option<Result<Manifest, String>>,
    journal: JournalState,
    /// Files in `master/` although nothing records a set there.
    unrecorded_master: usize,
}

impl Prior {
    fn read(run: &RunLayout) -> Result<Prior> {
        let load = |p: PathBuf| {
            p.exists()
                .then(|| Manifest::load_file(&p).map_err(|e| format!("{e:#}")))
        };
        let manifest = load(run.manifest());
        let commit = load(run.commit_record());
        let journal = JournalState::read(run)?;
        let unrecorded_master = if manifest.is_none() && commit.is_none() {
            files_under(&run.master())?.len()
        } else {
            0
        };
        Ok(Prior {
            manifest,
            commit,
            journal,
            unrecorded_master,
        })
    }

    fn manifest_ok(&self) -> Option<&Manifest> {
        self.manifest.as_ref()?.as_ref().ok()
    }

    /// Refuses (unless `force`) a folder that holds another run or anything unaccounted for.
    fn check(&self, run: &RunLayout, key: &str, force: bool) -> Result<()> {
        let mut other = Vec::new();
        for (name, m) in [
            (RunLayout::MANIFEST, &self.manifest),
            (RunLayout::COMMIT, &self.commit),
        ] {
            match m {
                Some(Ok(m)) if m.generation_key != key => other.push(format!(
                    "{name} has generation key {}",
                    short(&m.generation_key)
                )),
                Some(Err(e)) => other.push(format!("{name} is unreadable: {e}")),
                _ => {}
            }
        }
        match &self.journal.header {
            Some(None) => other.push(format!("{JOURNAL} has no readable header")),
            Some(Some(h)) if h.generation_key != key => other.push(format!(
                "{JOURNAL} has generation key {}",
                short(&h.generation_key)
            )),
            _ => {}
        }
        if self.unrecorded_master > 0 {
            other.push(format!(
                "master/ holds {} file(s) that no manifest or journal records",
                self.unrecorded_master
            ));
        }
        if !other.is_empty() && !force {
            bail!(
                "output folder {} holds a different run ({}; this config {}); use --force to \
                 replace it (only files the tool recorded are removed), or choose another \
                 `name`/--out",
                run.root().display(),
                other.join("; "),
                short(key)
            );
        }
        Ok(())
    }
}

fn short(key: &str) -> &str {
    &key[..key.len().min(12)]
}

/// Writes a new journal for this run and returns the pairs kept from the old one (`--resume`,
/// same key, same field-of-view mask, unchanged source files, staged files that hash right).
/// Staged files the old journal names that are not kept are removed, as are temporaries.
fn start_journal(
    run: &RunLayout,
    header: &Header,
    old: &JournalState,
    sources: &[Source],
    opts: &GenerateOptions,
) -> Result<Kept> {
    let same = old.header.as_ref().and_then(|h| h.as_ref()) == Some(header);
    let mut begins: BTreeMap<String, Begin> = BTreeMap::new();
    let mut kept: HashMap<String, PairRecord> = HashMap::new();
    if opts.resume && same {
        let current: HashMap<&str, &Source> =
            sources.iter().map(|s| (s.stem.as_str(), s)).collect();
        // A source counts only if its files still have the hashes recorded when it began.
        begins = old
            .begins
            .par_iter()
            .filter(|(stem, b)| {
                current.get(stem.as_str()).is_some_and(|s| {
                    hash_file(&s.image).is_ok_and(|h| h == b.image_hash)
                        && hash_file(&s.truth).is_ok_and(|h| h == b.truth_hash)
                })
            })
            .map(|(k, b)| (k.clone(), b.clone()))
            .collect();
        kept = old
            .pairs
            .par_iter()
            .filter(|(_, r)| begins.contains_key(&r.source))
            .filter(|(_, r)| {
                let ok =
                    |rel: &str, hash: &str| hash_file(&staged(run, rel)).is_ok_and(|h| h == hash);
                ok(&r.image, &r.image_hash) && ok(&r.mask, &r.mask_hash)
            })
            .map(|(k, r)| (k.clone(), r.clone()))
            .collect();
    }
    // Remove what the old journal recorded and is not kept, and the tool's temporaries.
    let keep: BTreeSet<&str> = kept
        .values()
        .flat_map(|r| [r.image.as_str(), r.mask.as_str()])
        .collect();
    for rel in old.staged_files() {
        if !keep.contains(rel.as_str()) {
            remove_if_present(&staged(run, &rel))?;
        }
    }
    remove_temporaries(&run.staging())?;

    let mut text = serde_json::to_string(header)? + "\n";
    for b in begins.values() {
        text += &(serde_json::to_string(&Line::Begin { begin: b.clone() })? + "\n");
    }
    let mut sorted: Vec<&PairRecord> = kept.values().collect();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    for r in sorted {
        text += &(serde_json::to_string(r)? + "\n");
    }
    write_atomic(&run.journal(), text.as_bytes())?;
    commit_point("generate: journal started");
    Ok(Kept { pairs: kept })
}

/// What `--resume` keeps of an interrupted run.
#[derive(Debug, Default)]
struct Kept {
    pairs: HashMap<String, PairRecord>,
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
        let image_bytes = std::fs::read(&src.image)
            .with_context(|| format!("cannot read {}", src.image.display()))?;
        let truth_bytes = std::fs::read(&src.truth)
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
            ImageFormat::Jpeg => (encode_jpeg_rgb(&out.image, g.jpeg_quality)?, "jpg"),
        };
        let mask_bytes = encode_png_gray_with(&out.mask, g.png_filter)?;
        let image = format!("master/images/{name}.{ext}");
        let mask = format!("master/masks/{name}.png");
        write_atomic(&staged(self.run, &image), &img_bytes)?;
        write_atomic(&staged(self.run, &mask), &mask_bytes)?;
        Ok(PairRecord {
            name,
            source: stem.to_string(),
            variant: v.name(),
            params: v.params(),
            image,
            mask,
            image_hash: hash_hex(&img_bytes),
            mask_hash: hash_hex(&mask_bytes),
            foreground: out.mask.pixels().filter(|p| p[0] != 0).count() as u64,
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

/// Where a file of the new set (`master/...`, relative to the run folder) is staged.
fn staged(run: &RunLayout, rel: &str) -> PathBuf {
    run.staging()
        .join(rel.strip_prefix("master/").unwrap_or(rel))
}

/// Finishes a commit whose record (`generate.commit.json`) is written: removes
/// the old split's files, swaps `staging/` in as `master/`, removes the files the old manifest
/// recorded from `master.old/`, and renames the record to `manifest.json`. Idempotent; returns
/// notes about files left in place.
fn finish_commit(run: &RunLayout, old: Option<&Manifest>) -> Result<Vec<String>> {
    let mut notes = Vec::new();
    let master = run.master();
    let old_master = run.old_master();
    let staging = run.staging();
    if let Some(old) = old {
        for p in &old.pairs {
            for (file, _) in p.dataset_files().into_iter().flatten() {
                remove_if_present(&run.file(&file))?;
            }
        }
        remove_empty_dirs(&run.dataset());
        commit_point("generate: old split removed");
    } else if run.dataset().exists() && !files_under(&run.dataset())?.is_empty() {
        notes.push(format!(
            "{} holds files no readable manifest records; they are left in place (remove them \
             before `pipeline split`)",
            run.dataset().display()
        ));
    }
    if staging.exists() {
        if master.exists() {
            clear_old_master(run, old, &mut notes)?;
            if old_master.exists() {
                bail!(
                    "cannot set {} aside: {} is in the way (move it away and rerun)",
                    master.display(),
                    old_master.display()
                );
            }
            rename(&master, &old_master)?;
            commit_point("generate: master set aside");
        }
        rename(&staging, &master)?;
        commit_point("generate: staging became master");
    }
    clear_old_master(run, old, &mut notes)?;
    rename(&run.commit_record(), &run.manifest())?;
    commit_point("generate: manifest written");
    remove_if_present(&run.journal())?;
    commit_point("generate: journal removed");
    Ok(notes)
}

/// Removes from `master.old/` the files `old` records and the tool's temporaries, then the
/// folders if empty; files nobody recorded stay (with a note).
fn clear_old_master(
    run: &RunLayout,
    old: Option<&Manifest>,
    notes: &mut Vec<String>,
) -> Result<()> {
    let dir = run.old_master();
    if !dir.exists() {
        return Ok(());
    }
    for p in old.map(|m| m.pairs.as_slice()).unwrap_or_default() {
        for rel in [&p.image, &p.mask] {
            let rel = rel.strip_prefix("master/").unwrap_or(rel);
            remove_if_present(&dir.join(rel))?;
        }
    }
    remove_temporaries(&dir)?;
    remove_empty_dirs(&dir);
    if dir.exists() {
        notes.push(format!(
            "{} keeps {} file(s) that no manifest recorded (not made by this tool?); they were \
             not deleted",
            dir.display(),
            files_under(&dir)?.len()
        ));
        // Out of the way of the next commit, under a name that says what it is.
        let mut n = 1;
        while run.root().join(format!("unrecorded-{n}")).exists() {
            n += 1;
        }
        rename(&dir, &run.root().join(format!("unrecorded-{n}")))?;
    }
    commit_point("generate: old master cleared");
    Ok(())
}

/// Before the commit: `staging/` must hold exactly the new set. Files of sources that began and
/// then failed (named by the journal) are removed; anything else is refused by name.
fn check_staging(run: &RunLayout, m: &Manifest) -> Result<()> {
    let dir = run.staging();
    let expected: BTreeSet<PathBuf> = m
        .pairs
        .iter()
        .flat_map(|p| [staged(run, &p.image), staged(run, &p.mask)])
        .collect();
    let journal = JournalState::read(run)?;
    let recorded: BTreeSet<PathBuf> = journal
        .staged_files()
        .iter()
        .map(|r| staged(run, r))
        .collect();
    remove_temporaries(&dir)?;
    for f in files_under(&dir)? {
        if expected.contains(&f) {
            continue;
        }
        if recorded.contains(&f) {
            remove_if_present(&f)?;
        } else {
            bail!(
                "{} is not a file of this generation (did something else write into {}?); move \
                 it away and rerun with --resume",
                f.display(),
                dir.display()
            );
        }
    }
    for f in &expected {
        ensure!(
            f.is_file(),
            "{} is missing although the journal recorded it; rerun without --resume",
            f.display()
        );
    }
    Ok(())
}

/// Regular files under `dir` (none when it does not exist).
fn files_under(dir: &Path) -> Result<Vec<PathBuf>> {
    if !dir.exists() {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for entry in walkdir::WalkDir::new(dir).sort_by_file_name() {
        let entry = entry.with_context(|| format!("cannot list {}", dir.display()))?;
        if !entry.file_type().is_dir() {
            out.push(entry.into_path());
        }
    }
    Ok(out)
}

/// Removes the tool's temporary files (`.tmp-*`, see [`write_atomic`]) under `dir`.
fn remove_temporaries(dir: &Path) -> Result<()> {
    for f in files_under(dir)? {
        if f.file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with(".tmp-"))
        {
            remove_if_present(&f)?;
        }
    }
    Ok(())
}

/// Removes `dir` and its sub-folders where they are empty (bottom-up); never removes a file.
pub(crate) fn remove_empty_dirs(dir: &Path) {
    if !dir.is_dir() {
        return;
    }
    let dirs: Vec<PathBuf> = walkdir::WalkDir::new(dir)
        .contents_first(true)
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_dir())
        .map(|e| e.into_path())
        .collect();
    for d in dirs {
        // Fails (and is left) when not empty.
        let _ = std::fs::remove_dir(&d);
    }
}

/// Removes a file; a file that is already gone is fine.
pub(crate) fn remove_if_present(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("cannot remove {}", path.display())),
    }
}

fn rename(from: &Path, to: &Path) -> Result<()> {
    std::fs::rename(from, to)
        .with_context(|| format!("cannot rename {} to {}", from.display(), to.display()))
}

/// Append-only journal (see the module docs).
struct Journal(Mutex<File>);

impl Journal {
    fn open(run: &RunLayout) -> Result<Journal> {
        let path = run.journal();
        let f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        Ok(Journal(Mutex::new(f)))
    }

    fn line(&self, line: String) -> Result<()> {
        let mut f = self.0.lock().expect("journal lock");
        f.write_all((line + "\n").as_bytes())
            .context("cannot append to the generation journal")
    }

    fn begin(&self, b: &Begin) -> Result<()> {
        self.line(serde_json::to_string(&Line::Begin { begin: b.clone() })?)?;
        commit_point("generate: source begun");
        Ok(())
    }

    fn append(&self, r: &PairRecord) -> Result<()> {
        self.line(serde_json::to_string(r)?)?;
        commit_point("generate: pair journaled");
        Ok(())
    }
}

/// The field-of-view mask in use, with the blake3 of its file.
fn load_fov(cfg: &Config, path: Option<&Path>) -> Result<Option<(GrayImage, String)>> {
    match path {
        Some(p) if cfg.generate.use_fov_mask => {
            let bytes = std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))?;
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

/// `run.json`: timings and problems of the last generation (not part of the reproducible output).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RunInfo {
    /// Timings and problems of the last `pipeline generate` ([`GenerateRun`]).
    pub generate: GenerateRun,
}

/// The `generate` section of `run.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct GenerateRun {
    /// Wall-clock time of the generation, seconds.
    pub wall_seconds: f64,
    /// Pairs of the sources used (written now or reused from `--resume`).
    pub pairs: usize,
    /// Throughput, pairs per second: `pairs` / `wall_seconds`.
    pub pairs_per_second: f64,
    /// Pairs kept from an interrupted run (`--resume`).
    pub reused_pairs: usize,
    /// Worker threads used (the rayon pool's size when the count is not given).
    pub threads: usize,
    /// Sources the generation could not use, with the reason.
    pub failed_sources: Vec<FailedSource>,
    /// False when an earlier complete set was kept because sources failed.
    pub committed: bool,
}

/// A source the generation could not use, and why.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FailedSource {
    /// File stem of the source photograph, e.g. `image001`.
    pub stem: String,
    /// Why it could not be used (the error message).
    pub error: String,
}

impl RunInfo {
    /// `run.json` of the run; `None` when it is missing or unreadable (it is informational).
    pub fn read(run: &RunLayout) -> Option<RunInfo> {
        let text = std::fs::read_to_string(run.run_info()).ok()?;
        serde_json::from_str(&text).ok()
    }
}

fn write_run_info(run: &RunLayout, r: &GenerateReport, threads: usize) -> Result<()> {
    let info = RunInfo {
        generate: GenerateRun {
            wall_seconds: r.seconds,
            pairs: r.pairs,
            pairs_per_second: r.pairs_per_second(),
            reused_pairs: r.reused,
            threads: if threads == 0 {
                rayon::current_num_threads()
            } else {
                threads
            },
            failed_sources: r
                .failed
                .iter()
                .map(|p| FailedSource {
                    stem: p.stem.clone(),
                    error: p.message.clone(),
                })
                .collect(),
            committed: r.kept_earlier.is_none(),
        },
    };
    write_json(&run.run_info(), &info)?;
    commit_point("generate: run.json written");
    Ok(())
}

// ---- Hook of `pipeline merge` (src/merge.rs) ----

/// A complete set made elsewhere (the shards of `generate --shard`), committed by
/// [`commit_external`].
pub(crate) struct ExternalSet<'a> {
    /// The new manifest (sources and pairs sorted, no split).
    pub manifest: Manifest,
    pub image_ext: String,
    pub fov_hash: Option<String>,
    /// Sources that failed where the set was made (reported, and an earlier set is kept).
    pub failed: Vec<Problem>,
    /// Puts the file a pair records at `rel` (`master/...`) at `dest` (in `staging/`), which
    /// does not exist yet.
    pub place: &'a (dyn Fn(&PairRecord, &str, &Path) -> Result<()> + Sync),
}

/// Commits `set` into `cfg.run_dir()` by the generator's protocol (module docs): the run folder
/// check (`force`), a pending commit finished, the journal written with every pair before any
/// file is placed in `staging/`, the commit record, the swap, `run.json`. Idempotent like a
/// generation: a rerun after a kill at any point ends with the same bytes. With failed sources
/// and an earlier complete set, nothing is replaced (`kept_earlier`).
pub(crate) fn commit_external(
    cfg: &Config,
    set: ExternalSet,
    force: bool,
    threads: Option<usize>,
) -> Result<GenerateReport> {
    let started = Instant::now();
    let run = cfg.layout();
    let run_dir = run.root().to_path_buf();
    let key = set.manifest.generation_key.clone();
    let header = Header {
        generation_key: key.clone(),
        variants: plan(&cfg.generate.variants)
            .iter()
            .map(Variant::name)
            .collect(),
        image_ext: set.image_ext.clone(),
        fov_hash: set.fov_hash.clone(),
    };
    // The run folder's files the merge writes must be its own, as for generate (crate::owned).
    let mut owned = crate::owned::Owned::open(&run_dir)?;
    owned.check(&OWN_FILES)?;
    let prior = Prior::read(&run)?;
    prior.check(&run, &key, force)?;
    owned.claim(&OWN_FILES)?;
    std::fs::create_dir_all(&run_dir)
        .with_context(|| format!("cannot create output folder {}", run_dir.display()))?;
    let mut notes = Vec::new();
    let old = if let Some(Ok(_)) = &prior.commit {
        notes.extend(finish_commit(&run, prior.manifest_ok())?);
        Prior::read(&run)?.manifest_ok().cloned()
    } else {
        prior.manifest_ok().cloned()
    };
    let mut report = GenerateReport {
        run_dir: run_dir.clone(),
        sources: set.manifest.sources.len(),
        pairs: set.manifest.pairs.len(),
        reused: 0,
        failed: set.failed,
        warnings: Vec::new(),
        ignored: Vec::new(),
        notes,
        kept_earlier: None,
        seconds: 0.0,
    };
    let threads = threads.unwrap_or(0);
    if !report.failed.is_empty() {
        if let Some(old) = &old {
            report.kept_earlier = Some(old.pairs.len());
            report.seconds = started.elapsed().as_secs_f64();
            write_run_info(&run, &report, threads)?;
            return Ok(report);
        }
    }
    let no_resume = GenerateOptions::default();
    start_journal(&run, &header, &prior.journal, &[], &no_resume)?;
    let mut lines = String::new();
    for p in &set.manifest.pairs {
        lines += &(serde_json::to_string(p)? + "\n");
    }
    Journal::open(&run)?.line(lines.trim_end().to_string())?;
    commit_point("merge: journal written");
    for d in ["images", "masks"] {
        let d = run.staging().join(d);
        std::fs::create_dir_all(&d)
            .with_context(|| format!("cannot create output folder {}", d.display()))?;
    }
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .context("cannot start worker threads")?;
    pool.install(|| {
        set.manifest.pairs.par_iter().try_for_each(|p| {
            for rel in [&p.image, &p.mask] {
                let dest = staged(&run, rel);
                if dest.exists() {
                    bail!(
                        "{} is not a file of this generation (did something else write into \
                         {}?); move it away and rerun",
                        dest.display(),
                        run.staging().display()
                    );
                }
                (set.place)(p, rel, &dest)?;
            }
            commit_point("merge: pair placed");
            Ok(())
        })
    })?;
    check_staging(&run, &set.manifest)?;
    write_json(&run.commit_record(), &set.manifest)?;
    commit_point("merge: commit record written");
    report.notes.extend(finish_commit(&run, old.as_ref())?);
    report.seconds = started.elapsed().as_secs_f64();
    write_run_info(&run, &report, threads)?;
    Ok(report)
}
