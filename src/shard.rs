//! Shards of an array job (`generate --shard K/N`, `infer --shard K/N`): which sources a shard
//! owns, where its index comes from, where it writes, and the record it leaves for `pipeline merge`.
//!
//! - **Assignment rule** ([`owner`]): rendezvous (highest-random-weight) hashing of the source
//!   stem. Shard K's weight for stem s is the first 8 bytes (big-endian) of
//!   blake3(`"fundus-pipeline shard v1\0" ‖ s ‖ "\0" ‖ K as u32 little-endian`); the source goes
//!   to the shard with the largest weight (the smaller K on a tie). It depends only on the stem
//!   and N, never on the other sources, so every shard computes it alone; going from N to N+1
//!   shards moves only the sources the new shard wins (about 1 in N+1), and none between the old
//!   shards (tested).
//! - **Index** ([`resolve`]): `--shard K/N`, else `SLURM_ARRAY_TASK_ID` - `SLURM_ARRAY_TASK_MIN`
//!   of `SLURM_ARRAY_TASK_COUNT`, else `JOB_COMPLETION_INDEX` (Kubernetes Indexed Job) of
//!   `--shard-count` / `PIPELINE_SHARD_COUNT`; `--no-shard` ignores the environment.
//! - **Folder**: shard K of N writes only into `<run>/shards/K-of-N/` (its own `master/`,
//!   journal, staging and `manifest.json`, by the generator's usual protocol), then
//!   [`RECORD`] (`shard.json`): its inputs' fingerprint, its stems, failures, and the hash of its
//!   manifest.
//! - **Locks**: a shard holds `<run>/pipeline.lock` *shared* (so shards run together, but no
//!   `generate`, `merge`, `split` ... meanwhile) and its own `<run>/shards/K-of-N/pipeline.lock`
//!   exclusively (so the same K cannot run twice at once).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::cli::ShardArgs;
use crate::config::Config;
use crate::dataset::layout::{scan, Scan};
use crate::generate::{generate, GenerateOptions, GenerateReport};
use crate::io::{commit_point, hash_file, hash_hex, write_json};
use crate::manifest::rel_path;

/// The shards' folder inside the run folder.
pub const SHARDS_DIR: &str = crate::run_layout::RunLayout::SHARDS;
/// A finished shard's record, in its folder.
pub const RECORD: &str = "shard.json";
/// Schema of [`RECORD`].
pub const SCHEMA: &str = "fundus-pipeline/shard/v1";
/// Name of the assignment rule (recorded; `merge` refuses shards of another rule).
pub const RULE: &str = "rendezvous-blake3-v1";
/// Environment variable with the shard count of a Kubernetes Indexed Job (its `completions`).
pub const COUNT_ENV: &str = "PIPELINE_SHARD_COUNT";
/// Largest accepted shard count.
pub const MAX_COUNT: u32 = 100_000;

/// Shard `index` of `count` (0 <= index < count).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    /// 0-based index of this shard, below `count`.
    pub index: u32,
    /// Number of shards in the job, 1..=[`MAX_COUNT`].
    pub count: u32,
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

impl Shard {
    /// Checks 0 <= index < count <= [`MAX_COUNT`].
    pub fn new(index: u32, count: u32) -> Result<Shard> {
        if count == 0 || count > MAX_COUNT {
            bail!("shard count must be within 1..={MAX_COUNT}, got {count}");
        }
        if index >= count {
            bail!("shard index must be below the count (0..{count}), got {index}");
        }
        Ok(Shard { index, count })
    }

    /// Parses `K/N`.
    pub fn parse(s: &str) -> Result<Shard> {
        let (k, n) = s
            .split_once('/')
            .with_context(|| format!("expected K/N (e.g. 0/4), got {s:?}"))?;
        let num = |v: &str| {
            v.trim()
                .parse::<u32>()
                .with_context(|| format!("expected K/N with whole numbers, got {s:?}"))
        };
        Shard::new(num(k)?, num(n)?)
    }

    /// Does this shard own the source (or image) `stem`?
    pub fn owns(&self, stem: &str) -> bool {
        owner(stem, self.count) == self.index
    }

    /// `K-of-N`: the shard's folder name.
    pub fn dir_name(&self) -> String {
        format!("{}-of-{}", self.index, self.count)
    }

    /// `<run>/shards/K-of-N`.
    pub fn dir(&self, run_dir: &Path) -> PathBuf {
        crate::run_layout::RunLayout::new(run_dir)
            .shards()
            .join(self.dir_name())
    }

    /// Keeps only this shard's sources and problems (by stem) of a dataset scan.
    pub fn select(&self, mut s: Scan) -> Scan {
        s.sources.retain(|x| self.owns(&x.stem));
        s.problems.retain(|x| self.owns(&x.stem));
        s
    }
}

/// The shard (0..count) that owns `stem`: rendezvous hashing (see the module docs).
pub fn owner(stem: &str, count: u32) -> u32 {
    let weight = |k: u32| {
        let mut h = blake3::Hasher::new();
        h.update(b"fundus-pipeline shard v1\0");
        h.update(stem.as_bytes());
        h.update(b"\0");
        h.update(&k.to_le_bytes());
        let b = h.finalize();
        u64::from_be_bytes(b.as_bytes()[..8].try_into().expect("8 bytes"))
    };
    let mut best = (0, weight(0));
    for k in 1..count {
        let w = weight(k);
        if w > best.1 {
            best = (k, w);
        }
    }
    best.0
}

/// The shard to run as, and where it came from (e.g. `--shard 1/3`, or
/// `SLURM_ARRAY_TASK_ID=1 (min 0) of SLURM_ARRAY_TASK_COUNT=3`); `None`: unsharded.
/// `env` reads an environment variable (injected for tests).
pub fn resolve(
    args: &ShardArgs,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<(Shard, String)>> {
    if args.no_shard {
        return Ok(None);
    }
    if let Some(s) = &args.shard {
        return Ok(Some((Shard::parse(s)?, format!("--shard {s}"))));
    }
    let num = |name: &str, v: &str| {
        v.trim()
            .parse::<u32>()
            .with_context(|| format!("environment variable {name}={v:?} is not a whole number"))
    };
    if let Some(id) = env("SLURM_ARRAY_TASK_ID") {
        let Some(count) = env("SLURM_ARRAY_TASK_COUNT") else {
            bail!(
                "SLURM_ARRAY_TASK_ID={id} is set but SLURM_ARRAY_TASK_COUNT is not: pass \
                 --shard K/N, or --no-shard to run unsharded"
            );
        };
        if let Some(step) = env("SLURM_ARRAY_TASK_STEP") {
            if num("SLURM_ARRAY_TASK_STEP", &step)? != 1 {
                bail!(
                    "SLURM_ARRAY_TASK_STEP={step}: shards need a contiguous array \
                     (--array=0-{{N-1}}); or pass --shard K/N"
                );
            }
        }
        let min = match env("SLURM_ARRAY_TASK_MIN") {
            Some(m) => num("SLURM_ARRAY_TASK_MIN", &m)?,
            None => 0,
        };
        let id_n = num("SLURM_ARRAY_TASK_ID", &id)?;
        let Some(index) = id_n.checked_sub(min) else {
            bail!("SLURM_ARRAY_TASK_ID={id} is below SLURM_ARRAY_TASK_MIN={min}");
        };
        let shard = Shard::new(index, num("SLURM_ARRAY_TASK_COUNT", &count)?)
            .context("from the Slurm array environment")?;
        return Ok(Some((
            shard,
            format!(
                "SLURM_ARRAY_TASK_ID={id} (SLURM_ARRAY_TASK_MIN={min}) of \
                 SLURM_ARRAY_TASK_COUNT={count}"
            ),
        )));
    }
    if let Some(idx) = env("JOB_COMPLETION_INDEX") {
        let (count, from) = match (args.shard_count, env(COUNT_ENV)) {
            (Some(n), _) => (n, format!("--shard-count {n}")),
            (None, Some(v)) => (num(COUNT_ENV, &v)?, format!("{COUNT_ENV}={v}")),
            (None, None) => bail!(
                "JOB_COMPLETION_INDEX={idx} is set (a Kubernetes Indexed Job) but the shard \
                 count is not: pass --shard-count N or set {COUNT_ENV} (the Job's \
                 `completions`), or pass --no-shard to run unsharded"
            ),
        };
        let shard = Shard::new(num("JOB_COMPLETION_INDEX", &idx)?, count)
            .context("from the Indexed Job environment")?;
        return Ok(Some((
            shard,
            format!("JOB_COMPLETION_INDEX={idx} of {from}"),
        )));
    }
    if args.shard_count.is_some() {
        bail!("--shard-count needs JOB_COMPLETION_INDEX in the environment; or pass --shard K/N");
    }
    Ok(None)
}

/// [`resolve`] with the process environment.
pub fn resolve_env(args: &ShardArgs) -> Result<Option<(Shard, String)>> {
    resolve(args, &|name| std::env::var(name).ok())
}

/// The locks a shard holds: the run folder's (shared) and its own (exclusive).
#[derive(Debug)]
pub struct ShardLocks {
    _run: crate::run_dir::SharedRunLock,
    _own: crate::run_dir::RunLock,
}

/// Takes the shard's locks: `<run>/pipeline.lock` shared, then `lock_dir/pipeline.lock`
/// exclusively (creating both folders). Errors name the holder (see [`crate::run_dir::lock`]).
pub fn lock(run_dir: &Path, lock_dir: &Path, command: &str) -> Result<ShardLocks> {
    let run = crate::run_dir::lock_shared(run_dir, command, true)?;
    let own = crate::run_dir::lock(lock_dir, command, true).map_err(|e| {
        anyhow::anyhow!(
            "{e:#}\n(the same shard index cannot run twice at once; other indices may run \
             together)"
        )
    })?;
    Ok(ShardLocks {
        _run: run,
        _own: own,
    })
}

/// What a finished shard leaves for `pipeline merge` ([`RECORD`]).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ShardRecord {
    /// [`SCHEMA`] of the writer (`fundus-pipeline/shard/v1`).
    pub schema: String,
    /// The `pipeline` version (Cargo package version) that wrote it.
    pub tool_version: String,
    /// The source-assignment rule ([`RULE`]); `merge` refuses shards of another rule.
    pub rule: String,
    /// 0-based index of the shard.
    pub index: u32,
    /// Shard count of the job.
    pub count: u32,
    /// The config's generation key (seed, lesion, generate section).
    pub generation_key: String,
    /// `png` or `jpg`.
    pub image_ext: String,
    /// What the shard saw of the whole dataset (every shard must see the same).
    pub inputs: Inputs,
    /// Sources this shard owns that failed (stem, message); the others are in its manifest.
    pub failed: Vec<Failed>,
    /// Pairs in the shard's `manifest.json`.
    pub pairs: usize,
    /// blake3 of the shard's `manifest.json` when it finished.
    pub manifest_hash: String,
    /// Timing (not part of the reproducible output).
    pub wall_seconds: f64,
    /// Worker threads the shard used.
    pub threads: usize,
}

/// A failed source of a shard: the record `manifest.json` keeps too.
pub type Failed = crate::manifest::FailedRecord;

/// The dataset as one shard saw it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Inputs {
    /// Every stem of the dataset (paired sources and problems), sorted: the assignment's domain.
    pub stems: Vec<String>,
    /// blake3 over every source's stem, image and ground-truth paths (relative to `data`) and
    /// file sizes, the problems, and the field-of-view mask's hash.
    pub fingerprint: String,
    /// blake3 of the field-of-view mask in use, if any.
    pub fov_hash: Option<String>,
}

/// The [`Inputs`] of a scan under `cfg`: a listing and file sizes, not the contents (each
/// source's content hash is in the manifest of the shard that owns it).
pub fn inputs(cfg: &Config, s: &Scan) -> Result<Inputs> {
    let size = |p: &Path| {
        std::fs::metadata(p)
            .map(|m| m.len())
            .with_context(|| format!("cannot read {}", p.display()))
    };
    let fov_hash = match &s.fov_mask {
        Some(p) if cfg.generate.use_fov_mask => Some(hash_file(p)?),
        _ => None,
    };
    let mut text = String::new();
    let mut stems = Vec::new();
    for x in &s.sources {
        text += &format!(
            "source\0{}\0{}\0{}\0{}\0{}\n",
            x.stem,
            rel_path(&cfg.data, &x.image),
            rel_path(&cfg.data, &x.truth),
            size(&x.image)?,
            size(&x.truth)?
        );
        stems.push(x.stem.clone());
    }
    for p in &s.problems {
        text += &format!("problem\0{}\0{}\n", p.stem, p.message);
        stems.push(p.stem.clone());
    }
    text += &format!("fov\0{}\n", fov_hash.as_deref().unwrap_or("none"));
    stems.sort();
    stems.dedup();
    Ok(Inputs {
        stems,
        fingerprint: hash_hex(text.as_bytes()),
        fov_hash,
    })
}

/// The config of a shard's own generation: the same settings, with the run folder
/// `<run>/shards/K-of-N`.
pub fn shard_config(cfg: &Config, shard: &Shard) -> Config {
    let mut c = cfg.clone();
    c.out = cfg.layout().shards();
    c.name = shard.dir_name();
    c
}

/// Runs shard `shard` of `cfg`'s generation into `<run>/shards/K-of-N/` (the caller holds the
/// [`lock`]s) and, when it committed its set, writes [`RECORD`].
pub fn generate_shard(
    cfg: &Config,
    shard: &Shard,
    opts: &GenerateOptions,
) -> Result<GenerateReport> {
    let scfg = shard_config(cfg, shard);
    let dir = scfg.run_dir();
    // The record is the tool's own file (never a user's), and a rerun removes it before it
    // changes anything, so a rerun killed part-way leaves a shard that merge calls unfinished.
    crate::owned::claim(&dir, &[RECORD])?;
    let earlier: Option<ShardRecord> = crate::io::read_regular_to_string(&dir.join(RECORD))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok());
    crate::generate::remove_if_present(&dir.join(RECORD))?;
    let opts = GenerateOptions {
        shard: Some(*shard),
        ..opts.clone()
    };
    let report = generate(&scfg, &opts)?;
    if report.kept_earlier.is_some() {
        // Nothing committed: the shard's set is the earlier one, so its record (the one that
        // names that very manifest) goes back, and merge checks its inputs as usual (an input
        // that changed since is named there).
        let manifest = dir.join(crate::run_layout::RunLayout::MANIFEST);
        if let Some(r) =
            earlier.filter(|r| hash_file(&manifest).is_ok_and(|h| h == r.manifest_hash))
        {
            write_json(&dir.join(RECORD), &r)?;
        }
        return Ok(report);
    }
    // The dataset as seen now; the shard's manifest must cover exactly its part of it.
    let inputs = inputs(cfg, &scan(&cfg.data, cfg.lesion)?)?;
    let manifest = crate::manifest::Manifest::load(&scfg.layout())?;
    let mut covered: Vec<&str> = manifest
        .sources
        .iter()
        .map(|s| s.stem.as_str())
        .chain(report.failed.iter().map(|p| p.stem.as_str()))
        .collect();
    covered.sort();
    // A stem can fail twice (e.g. ambiguous among the images and the ground truth).
    covered.dedup();
    let owned: Vec<&str> = inputs
        .stems
        .iter()
        .map(String::as_str)
        .filter(|s| shard.owns(s))
        .collect();
    if covered != owned {
        bail!(
            "the dataset {} changed while shard {shard} ran (it now lists other sources for \
             this shard); rerun the shard",
            cfg.data.display()
        );
    }
    let record = ShardRecord {
        schema: SCHEMA.into(),
        tool_version: env!("CARGO_PKG_VERSION").into(),
        rule: RULE.into(),
        index: shard.index,
        count: shard.count,
        generation_key: cfg.generation_key(),
        image_ext: match cfg.generate.image_format {
            crate::config::ImageFormat::Png => "png".into(),
            crate::config::ImageFormat::Jpeg => "jpg".into(),
        },
        inputs,
        failed: crate::generate::failed_records(&report.failed),
        pairs: manifest.pairs.len(),
        manifest_hash: hash_file(&dir.join(crate::run_layout::RunLayout::MANIFEST))?,
        wall_seconds: report.seconds,
        threads: opts.threads.unwrap_or_else(rayon::current_num_threads),
    };
    write_json(&dir.join(RECORD), &record)?;
    commit_point("generate: shard record written");
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stems(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("image{i:03}")).collect()
    }

    #[test]
    fn every_stem_has_exactly_one_owner_and_shards_are_balanced() {
        let s = stems(1000);
        for n in [1u32, 2, 3, 7] {
            let mut per = vec![0usize; n as usize];
            for x in &s {
                let owners: Vec<u32> = (0..n)
                    .filter(|&k| Shard::new(k, n).unwrap().owns(x))
                    .collect();
                assert_eq!(owners.len(), 1, "{x} of {n}");
                per[owners[0] as usize] += 1;
            }
            let mean = 1000.0 / f64::from(n);
            for c in per {
                // Binomial spread: well within 5 standard deviations.
                let sd = (mean * (1.0 - 1.0 / f64::from(n))).sqrt();
                assert!((c as f64 - mean).abs() <= 5.0 * sd + 1e-9, "{n}: {c}");
            }
        }
    }

    #[test]
    fn adding_a_shard_moves_only_sources_to_the_new_one() {
        let s = stems(2000);
        for n in [1u32, 2, 3, 7] {
            let moved: Vec<&String> = s
                .iter()
                .filter(|x| owner(x, n) != owner(x, n + 1))
                .collect();
            for x in &moved {
                assert_eq!(owner(x, n + 1), n, "{x} moved between old shards");
            }
            let share = moved.len() as f64 / s.len() as f64;
            let expect = 1.0 / f64::from(n + 1);
            assert!((share - expect).abs() < 0.05, "{n}: {share} vs {expect}");
        }
    }

    #[test]
    fn assignment_is_pinned() {
        // The rule is part of the on-disk format (shards made by another build must agree):
        // a change of these values means a new RULE name. The values were reproduced from the
        // rule in the module docs by a separate Python implementation (the `blake3` package).
        let got: Vec<u32> = ["image001", "image002", "image003", "image004", "image005"]
            .iter()
            .map(|s| owner(s, 3))
            .collect();
        assert_eq!(got, PINNED);
    }
    const PINNED: [u32; 5] = [0, 2, 1, 1, 0];

    fn args(shard: Option<&str>, count: Option<u32>, no: bool) -> ShardArgs {
        ShardArgs {
            shard: shard.map(String::from),
            shard_count: count,
            no_shard: no,
        }
    }

    fn env_of(vars: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |k| {
            vars.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn index_comes_from_the_flag_then_slurm_then_indexed_job() {
        let slurm = env_of(&[
            ("SLURM_ARRAY_TASK_ID", "5"),
            ("SLURM_ARRAY_TASK_MIN", "4"),
            ("SLURM_ARRAY_TASK_COUNT", "3"),
            ("JOB_COMPLETION_INDEX", "2"),
        ]);
        let (s, from) = resolve(&args(Some("2/7"), None, false), &slurm)
            .unwrap()
            .unwrap();
        assert_eq!(
            (s, from.as_str()),
            (Shard::new(2, 7).unwrap(), "--shard 2/7")
        );
        let (s, from) = resolve(&args(None, None, false), &slurm).unwrap().unwrap();
        assert_eq!(s, Shard::new(1, 3).unwrap());
        assert!(from.contains("SLURM_ARRAY_TASK_ID=5"), "{from}");
        assert!(resolve(&args(None, None, true), &slurm).unwrap().is_none());

        let k8s = env_of(&[("JOB_COMPLETION_INDEX", "2"), (COUNT_ENV, "4")]);
        let (s, from) = resolve(&args(None, None, false), &k8s).unwrap().unwrap();
        assert_eq!(s, Shard::new(2, 4).unwrap());
        assert!(from.contains("PIPELINE_SHARD_COUNT=4"), "{from}");
        let (s, _) = resolve(&args(None, Some(5), false), &k8s).unwrap().unwrap();
        assert_eq!(s, Shard::new(2, 5).unwrap());

        let none = env_of(&[]);
        assert!(resolve(&args(None, None, false), &none).unwrap().is_none());
    }

    #[test]
    fn bad_shard_settings_are_named() {
        let none = env_of(&[]);
        for (a, needle) in [
            (args(Some("3/3"), None, false), "below the count"),
            (args(Some("1/0"), None, false), "within 1..="),
            (args(Some("1-3"), None, false), "expected K/N"),
            (args(None, Some(3), false), "JOB_COMPLETION_INDEX"),
        ] {
            let e = format!("{:#}", resolve(&a, &none).unwrap_err());
            assert!(e.contains(needle), "{e}");
        }
        let k8s = env_of(&[("JOB_COMPLETION_INDEX", "1")]);
        let e = format!("{:#}", resolve(&args(None, None, false), &k8s).unwrap_err());
        assert!(e.contains("--shard-count") && e.contains(COUNT_ENV), "{e}");
        let slurm = env_of(&[("SLURM_ARRAY_TASK_ID", "1")]);
        let e = format!(
            "{:#}",
            resolve(&args(None, None, false), &slurm).unwrap_err()
        );
        assert!(e.contains("SLURM_ARRAY_TASK_COUNT"), "{e}");
        let step = env_of(&[
            ("SLURM_ARRAY_TASK_ID", "2"),
            ("SLURM_ARRAY_TASK_COUNT", "2"),
            ("SLURM_ARRAY_TASK_STEP", "2"),
        ]);
        let e = format!(
            "{:#}",
            resolve(&args(None, None, false), &step).unwrap_err()
        );
        assert!(e.contains("contiguous"), "{e}");
    }
}
