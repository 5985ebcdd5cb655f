//! `pipeline generate`: every source -> its prepared square pair -> every configured variant,
//! written as lossless files, in parallel (rayon) and deterministically (per-variant RNG streams).
//!
//! Crash safety: each file is written atomically; each finished pair is appended to a journal
//! (`generate.journal`) with its hashes; `manifest.json` is written last. `--resume` keeps journal
//! entries whose files still hash right and redoes the rest, so a killed run resumes to the same
//! bytes. One bad source does not stop the others: it is reported at the end.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

use anyhow::{bail, ensure, Context, Result};
use image::GrayImage;
use indicatif::{ProgressBar, ProgressStyle};
use rayon::prelude::*;
use serde_json::json;

use crate::augment::{plan, Operation, Pair, Variant};
use crate::config::{Config, ImageFormat};
use crate::dataset::layout::{scan, Problem, Source};
use crate::io::{
    decode_image, encode_jpeg_rgb, encode_png_gray, encode_png_rgb, hash_file, hash_hex,
    write_atomic, write_json,
};
use crate::manifest::{rel_path, Manifest, PairRecord, SourceRecord, FILE_NAME, SCHEMA};
use crate::prep::{binarize, prepare};

pub const JOURNAL: &str = "generate.journal";
pub const RUN_INFO: &str = "run.json";

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
}

/// What a generation did.
#[derive(Debug, Clone)]
pub struct GenerateReport {
    pub run_dir: PathBuf,
    pub sources: usize,
    pub pairs: usize,
    /// Pairs kept from an interrupted run (`--resume`).
    pub reused: usize,
    pub failed: Vec<Problem>,
    pub ignored: Vec<PathBuf>,
    pub seconds: f64,
}

impl GenerateReport {
    pub fn pairs_per_second(&self) -> f64 {
        self.pairs as f64 / self.seconds.max(1e-9)
    }
}

/// Runs the generation of `cfg` into `<out>/<name>/master` and writes `manifest.json`.
pub fn generate(cfg: &Config, opts: &GenerateOptions) -> Result<GenerateReport> {
    let started = Instant::now();
    let scan = scan(&cfg.data, cfg.lesion)?;
    let run_dir = cfg.run_dir();
    let key = cfg.generation_key();
    prepare_run_dir(&run_dir, &key, opts)?;
    let images_dir = run_dir.join("master/images");
    let masks_dir = run_dir.join("master/masks");
    for d in [&images_dir, &masks_dir] {
        std::fs::create_dir_all(d)
            .with_context(|| format!("cannot create output folder {}", d.display()))?;
    }

    let kept = if opts.resume {
        read_journal(&run_dir, &key)?
    } else {
        HashMap::new()
    };
    let journal = Journal::create(&run_dir, &key, kept.values())?;

    let variants = plan(&cfg.generate.variants);
    let fov = load_fov(cfg, scan.fov_mask.as_deref())?;
    let total = scan.sources.len() * variants.len();
    let bar = progress_bar(total as u64, opts.progress);
    let ctx = Ctx {
        ops: &HashMap::new(),
        cfg,
        run_dir: &run_dir,
        variants: &variants,
        fov: fov.as_ref(),
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

    let mut failed = scan.problems.clone();
    let mut sources = Vec::new();
    let mut pairs = Vec::new();
    for (src, r) in results {
        match r {
            Ok((s, p)) => {
                sources.push(s);
                pairs.extend(p);
            }
            Err(e) => failed.push(Problem {
                stem: src.stem.clone(),
                message: format!("{e:#}"),
            }),
        }
    }
    failed.sort_by(|a, b| a.stem.cmp(&b.stem));
    pairs.sort_by(|a, b| a.name.cmp(&b.name));
    let reused = pairs.iter().filter(|p| kept.contains_key(&p.name)).count();
    remove_strays(&run_dir, &pairs)?;

    let manifest = Manifest {
        schema: SCHEMA.into(),
        tool_version: env!("CARGO_PKG_VERSION").into(),
        generation_key: key,
        generation: json!({
            "seed": cfg.seed,
            "lesion": cfg.lesion,
            "generate": cfg.generate,
            "variants": variants.iter().map(Variant::name).collect::<Vec<_>>(),
        }),
        sources,
        pairs,
        split: None,
    };
    manifest.save(&run_dir)?;
    drop(journal);
    let _ = std::fs::remove_file(run_dir.join(JOURNAL));

    let report = GenerateReport {
        run_dir: run_dir.clone(),
        sources: manifest.sources.len(),
        pairs: manifest.pairs.len(),
        reused,
        failed,
        ignored: scan.ignored,
        seconds: started.elapsed().as_secs_f64(),
    };
    write_run_info(&run_dir, &report, threads)?;
    Ok(report)
}

/// A finished source: its record and its pairs.
type SourceOutput = (SourceRecord, Vec<PairRecord>);

/// Shared, read-only state of one generation.
struct Ctx<'a> {
    /// Operations of the deterministic variants (built once per run), by name.
    ops: &'a HashMap<String, Operation>,
    cfg: &'a Config,
    run_dir: &'a Path,
    variants: &'a [Variant],
    fov: Option<&'a GrayImage>,
    kept: &'a HashMap<String, PairRecord>,
    journal: &'a Journal,
    bar: &'a ProgressBar,
}

impl Ctx<'_> {
    /// One source: read, hash, prepare, and write every variant not kept from an earlier run.
    fn source(&self, src: &Source) -> Result<SourceOutput> {
        let image_bytes = std::fs::read(&src.image)
            .with_context(|| format!("cannot read {}", src.image.display()))?;
        let truth_bytes = std::fs::read(&src.truth)
            .with_context(|| format!("cannot read {}", src.truth.display()))?;
        let record = SourceRecord {
            stem: src.stem.clone(),
            image: rel_path(&self.cfg.data, &src.image),
            truth: rel_path(&self.cfg.data, &src.truth),
            image_hash: hash_hex(&image_bytes),
            truth_hash: hash_hex(&truth_bytes),
        };
        let name = |v: &Variant| format!("{}_{}", src.stem, v.name());
        let todo: Vec<&Variant> = self
            .variants
            .iter()
            .filter(|v| !self.kept.contains_key(&name(v)))
            .collect();
        let mut pairs: Vec<PairRecord> = self
            .variants
            .iter()
            .filter_map(|v| self.kept.get(&name(v)).cloned())
            .collect();
        self.bar.inc(pairs.len() as u64);
        if todo.is_empty() {
            return Ok((record, pairs));
        }

        let image = decode_image(&src.image, &image_bytes)?.into_rgb8();
        let truth = decode_image(&src.truth, &truth_bytes)?.into_luma8();
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

        let written: Vec<PairRecord> = todo
            .par_iter()
            .map(|v| {
                let r = self.write_variant(&square, &src.stem, v)?;
                self.journal.append(&r)?;
                self.bar.inc(1);
                Ok(r)
            })
            .collect::<Result<_>>()?;
        pairs.extend(written);
        Ok((record, pairs))
    }

    fn write_variant(&self, square: &Pair, stem: &str, v: &Variant) -> Result<PairRecord> {
        let g = &self.cfg.generate;
        let per_source;
        let op = match self.ops.get(&v.name()) {
            Some(op) => op,
            None => {
                let (w, h) = square.image.dimensions();
                per_source = v.operation(w, h, self.cfg.seed, stem);
                &per_source
            }
        };
        let out = op.apply(square);
        let name = format!("{stem}_{}", v.name());
        let (img_bytes, ext) = match g.image_format {
            ImageFormat::Png => (encode_png_rgb(&out.image)?, "png"),
            ImageFormat::Jpeg => (encode_jpeg_rgb(&out.image, g.jpeg_quality)?, "jpg"),
        };
        let mask_bytes = encode_png_gray(&out.mask)?;
        let image = format!("master/images/{name}.{ext}");
        let mask = format!("master/masks/{name}.png");
        write_atomic(&self.run_dir.join(&image), &img_bytes)?;
        write_atomic(&self.run_dir.join(&mask), &mask_bytes)?;
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

/// Makes sure the run folder holds nothing of a different run (or clears it with `--force`), and
/// drops outputs that a new generation makes stale.
fn prepare_run_dir(run_dir: &Path, key: &str, opts: &GenerateOptions) -> Result<()> {
    let existing = existing_key(run_dir)?;
    if let Some(other) = existing.filter(|k| k != key) {
        if !opts.force {
            bail!(
                "output folder {} holds a different run (generation key {}, this config {}); \
                 use --force to replace it, or choose another `name`/--out",
                run_dir.display(),
                short(&other),
                short(key)
            );
        }
        std::fs::remove_dir_all(run_dir)
            .with_context(|| format!("cannot clear {}", run_dir.display()))?;
    }
    std::fs::create_dir_all(run_dir)
        .with_context(|| format!("cannot create output folder {}", run_dir.display()))?;
    // The split, and its manifest, are redone after every generation.
    let dataset = run_dir.join("dataset");
    if dataset.exists() {
        std::fs::remove_dir_all(&dataset)
            .with_context(|| format!("cannot clear {}", dataset.display()))?;
    }
    let manifest = run_dir.join(FILE_NAME);
    if manifest.exists() {
        std::fs::remove_file(&manifest)
            .with_context(|| format!("cannot remove {}", manifest.display()))?;
    }
    Ok(())
}

fn short(key: &str) -> &str {
    &key[..key.len().min(12)]
}

/// The generation key of what the folder holds: from its manifest, else its journal.
fn existing_key(run_dir: &Path) -> Result<Option<String>> {
    if run_dir.join(FILE_NAME).is_file() {
        return Ok(Some(Manifest::load(run_dir)?.generation_key));
    }
    let journal = run_dir.join(JOURNAL);
    if journal.is_file() {
        let f =
            File::open(&journal).with_context(|| format!("cannot read {}", journal.display()))?;
        let mut first = String::new();
        BufReader::new(f).read_line(&mut first)?;
        let v: serde_json::Value = serde_json::from_str(&first).unwrap_or_default();
        return Ok(Some(
            v["generation_key"]
                .as_str()
                .unwrap_or("unknown")
                .to_string(),
        ));
    }
    if run_dir.join("master").is_dir() {
        return Ok(Some("unknown (no manifest or journal)".into()));
    }
    Ok(None)
}

/// Deletes master files that no pair record names (left by an interrupted run, or by a config
/// that had more variants), so the folder holds exactly what the manifest lists.
fn remove_strays(run_dir: &Path, pairs: &[PairRecord]) -> Result<()> {
    let known: std::collections::HashSet<&str> = pairs
        .iter()
        .flat_map(|p| [p.image.as_str(), p.mask.as_str()])
        .collect();
    let master = run_dir.join("master");
    for entry in walkdir::WalkDir::new(&master) {
        let entry = entry.with_context(|| format!("cannot list {}", master.display()))?;
        if entry.file_type().is_file() && !known.contains(rel_path(run_dir, entry.path()).as_str())
        {
            std::fs::remove_file(entry.path())
                .with_context(|| format!("cannot remove {}", entry.path().display()))?;
        }
    }
    Ok(())
}

/// Append-only record of finished pairs, one JSON line each, after a header with the run's key.
struct Journal(Mutex<File>);

impl Journal {
    fn create<'a>(
        run_dir: &Path,
        key: &str,
        kept: impl Iterator<Item = &'a PairRecord>,
    ) -> Result<Journal> {
        let path = run_dir.join(JOURNAL);
        let mut text = serde_json::to_string(&json!({ "generation_key": key }))? + "\n";
        for r in kept {
            text += &(serde_json::to_string(r)? + "\n");
        }
        write_atomic(&path, text.as_bytes())?;
        let f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        Ok(Journal(Mutex::new(f)))
    }

    fn append(&self, r: &PairRecord) -> Result<()> {
        let line = serde_json::to_string(r)? + "\n";
        let mut f = self.0.lock().expect("journal lock");
        f.write_all(line.as_bytes())
            .context("cannot append to the generation journal")
    }
}

/// Journal entries of an interrupted run of the same config whose files still hash right.
fn read_journal(run_dir: &Path, key: &str) -> Result<HashMap<String, PairRecord>> {
    let path = run_dir.join(JOURNAL);
    let Ok(f) = File::open(&path) else {
        return Ok(HashMap::new());
    };
    let mut lines = BufReader::new(f).lines();
    let header: serde_json::Value = match lines.next() {
        Some(Ok(l)) => serde_json::from_str(&l).unwrap_or_default(),
        _ => return Ok(HashMap::new()),
    };
    if header["generation_key"].as_str() != Some(key) {
        return Ok(HashMap::new());
    }
    let records: BTreeMap<String, PairRecord> = lines
        .map_while(|l| l.ok())
        // A line cut by a kill does not parse and is skipped.
        .filter_map(|l| serde_json::from_str::<PairRecord>(&l).ok())
        .map(|r| (r.name.clone(), r))
        .collect();
    Ok(records
        .into_par_iter()
        .filter(|(_, r)| {
            let ok = |rel: &str, hash: &str| hash_file(&run_dir.join(rel)).is_ok_and(|h| h == hash);
            ok(&r.image, &r.image_hash) && ok(&r.mask, &r.mask_hash)
        })
        .collect())
}

fn load_fov(cfg: &Config, path: Option<&Path>) -> Result<Option<GrayImage>> {
    match path {
        Some(p) if cfg.generate.use_fov_mask => Ok(Some(
            crate::io::open_image(p)
                .with_context(|| "cannot read the field-of-view mask".to_string())?
                .to_luma8(),
        )),
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
fn write_run_info(run_dir: &Path, r: &GenerateReport, threads: usize) -> Result<()> {
    let path = run_dir.join(RUN_INFO);
    let mut info: serde_json::Value = std::fs::read_to_string(&path)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_else(|| json!({}));
    info["generate"] = json!({
        "wall_seconds": r.seconds,
        "pairs": r.pairs,
        "pairs_per_second": r.pairs_per_second(),
        "reused_pairs": r.reused,
        "threads": if threads == 0 { rayon::current_num_threads() } else { threads },
        "failed_sources": r.failed.iter().map(|p| json!({"stem": p.stem, "error": p.message})).collect::<Vec<_>>(),
    });
    write_json(&path, &info)
}
