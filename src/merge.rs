//! `pipeline merge`: joins the finished shards of `generate --shard K/N` (src/shard.rs) into the
//! run folder's one `master/` and `manifest.json`, byte-identical to an unsharded `generate`.
//!
//! Checks, all before anything is written, every problem named in one error:
//! - exactly one shard count under `<run>/shards/` (or `--shard-count`), and every index
//!   0..N present once: missing, unfinished (a folder without `shard.json`) and duplicate shards
//!   (two folders whose records claim the same K) are named;
//! - every record made with this config (generation key), this tool version and assignment rule;
//! - every shard saw the same inputs (the same listing fingerprint, see [`crate::shard::Inputs`]);
//! - every shard's `manifest.json` complete, unchanged since its record (blake3), and covering
//!   exactly the stems the rule gives that shard;
//! - while placing, every file hashes to its record.
//!
//! Files are hard-linked from `shards/K-of-N/master/` into `staging/` (copied where links fail),
//! then committed by the generator's protocol ([`crate::generate`]'s journal, commit record and
//! swap), so a killed merge is finished by rerunning it. The shards are left as they are; remove
//! `<run>/shards/` when the merged set is all you need.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde_json::json;

use crate::config::Config;
use crate::dataset::layout::Problem;
use crate::generate::{commit_external, ExternalSet, GenerateReport};
use crate::io::{hash_file, write_atomic, write_json};
use crate::manifest::{Manifest, PairRecord, SCHEMA};
use crate::run_layout::RunLayout;

const FILE_NAME: &str = RunLayout::MANIFEST;
use crate::shard::{owner, Shard, ShardRecord, RECORD, RULE, SCHEMA as SHARD_SCHEMA, SHARDS_DIR};

/// How to merge.
#[derive(Debug, Clone, Default)]
pub struct MergeOptions {
    /// The shard count to merge (default: the only one found).
    pub shard_count: Option<u32>,
    /// Replace a run folder that holds a different run.
    pub force: bool,
    /// Worker threads for linking and hashing (`None`: all cores).
    pub threads: Option<usize>,
}

/// One folder under `<run>/shards/`.
struct Found {
    dir: PathBuf,
    /// From the folder name `K-of-N`.
    named: Option<(u32, u32)>,
    record: Option<Result<ShardRecord, String>>,
}

/// A shard that passed the checks.
struct Checked {
    dir: PathBuf,
    record: ShardRecord,
    manifest: Manifest,
}

/// Merges the shards of `cfg`'s run (see the module docs); the report is the generation's.
pub fn merge(cfg: &Config, opts: &MergeOptions) -> Result<GenerateReport> {
    let run_dir = cfg.run_dir();
    let found = find(&run_dir)?;
    let count = shard_count(&run_dir, &found, opts.shard_count)?;
    let key = cfg.generation_key();
    let mut problems = Vec::new();
    let mut by_index: BTreeMap<u32, Vec<(&Found, &ShardRecord)>> = BTreeMap::new();
    for f in &found {
        match &f.record {
            Some(Ok(r)) if r.count == count => {
                by_index.entry(r.index).or_default().push((f, r));
            }
            Some(Err(e)) if f.named.is_none_or(|(_, n)| n == count) => {
                problems.push(format!(
                    "{} is unreadable: {e}",
                    f.dir.join(RECORD).display()
                ));
            }
            _ => {}
        }
    }
    for k in 0..count {
        let name = format!("{k}-of-{count}");
        match by_index.get(&k).map(Vec::as_slice) {
            None | Some([]) => {
                let dir = run_dir.join(SHARDS_DIR).join(&name);
                problems.push(if dir.is_dir() {
                    format!(
                        "shard {name} has not finished ({} has no {RECORD}: still running, \
                         killed or failed): rerun `pipeline generate --shard {k}/{count} \
                         --resume`",
                        dir.display()
                    )
                } else {
                    format!(
                        "shard {name} is missing (no {}): run `pipeline generate --shard \
                         {k}/{count}` (or gather its folder there)",
                        dir.display()
                    )
                });
            }
            Some([_]) => {}
            Some(many) => {
                let dirs: Vec<String> = many
                    .iter()
                    .map(|(f, _)| f.dir.display().to_string())
                    .collect();
                problems.push(format!(
                    "duplicate shard {name}: {} all hold it (keep one)",
                    dirs.join(", ")
                ));
            }
        }
    }
    for (f, r) in by_index.values().flatten() {
        let what = format!("shard {}-of-{} ({})", r.index, r.count, f.dir.display());
        if r.schema != SHARD_SCHEMA || r.rule != RULE {
            problems.push(format!(
                "{what} has record schema {} / rule {}, this tool {SHARD_SCHEMA} / {RULE}: rerun it",
                r.schema, r.rule
            ));
        }
        if r.generation_key != key {
            problems.push(format!(
                "{what} was made with another config (generation key {}; this config {}): \
                 rerun it with this config (`pipeline generate --shard {}/{} --force`)",
                short(&r.generation_key),
                short(&key),
                r.index,
                r.count
            ));
        }
        if r.tool_version != env!("CARGO_PKG_VERSION") {
            problems.push(format!(
                "{what} was made by pipeline {}, this is {}: rerun it with this version",
                r.tool_version,
                env!("CARGO_PKG_VERSION")
            ));
        }
    }
    let mut fingerprints: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for (_, r) in by_index.values().flatten() {
        fingerprints
            .entry(&r.inputs.fingerprint)
            .or_default()
            .push(format!(
                "{}-of-{} ({} stems)",
                r.index,
                r.count,
                r.inputs.stems.len()
            ));
    }
    if fingerprints.len() > 1 {
        let groups: Vec<String> = fingerprints
            .iter()
            .map(|(fp, shards)| format!("inputs {}: {}", short(fp), shards.join(", ")))
            .collect();
        problems.push(format!(
            "the shards saw different inputs (the dataset changed between them?): {}; rerun \
             the shards on the same data",
            groups.join("; ")
        ));
    }
    if !problems.is_empty() {
        bail!(
            "cannot merge the shards of {} ({count} shard(s) expected):\n  - {}",
            run_dir.display(),
            problems.join("\n  - ")
        );
    }

    let mut checked = Vec::new();
    for (f, r) in by_index.values().flatten() {
        checked.push(check_shard(cfg, &f.dir, r, &key).with_context(|| {
            format!(
                "cannot merge shard {}-of-{} ({})",
                r.index,
                r.count,
                f.dir.display()
            )
        })?);
    }
    let set_manifest = join(&checked)?;
    let from: HashMap<&str, &Path> = checked
        .iter()
        .flat_map(|c| {
            c.manifest
                .pairs
                .iter()
                .map(|p| (p.name.as_str(), c.dir.as_path()))
        })
        .collect();
    let place = |p: &PairRecord, rel: &str, dest: &Path| -> Result<()> {
        let src = from[p.name.as_str()].join(rel);
        let want = if rel == p.image {
            &p.image_hash
        } else {
            &p.mask_hash
        };
        let got = hash_file(&src)?;
        if &got != want {
            bail!(
                "{} does not match its shard's manifest (blake3 {}, recorded {}): changed or \
                 damaged after the shard finished; rerun that shard",
                src.display(),
                short(&got),
                short(want)
            );
        }
        if std::fs::hard_link(&src, dest).is_err() {
            let bytes = crate::io::read_regular(&src)
                .with_context(|| format!("cannot read {}", src.display()))?;
            write_atomic(dest, &bytes).with_context(|| {
                format!(
                    "cannot link or copy {} to {}",
                    src.display(),
                    dest.display()
                )
            })?;
        }
        Ok(())
    };
    let first = &checked[0].record;
    let mut failed: Vec<Problem> = checked
        .iter()
        .flat_map(|c| c.record.failed.iter())
        .map(|f| Problem {
            stem: f.stem.clone(),
            message: f.error.clone(),
        })
        .collect();
    failed.sort_by(|a, b| a.stem.cmp(&b.stem));
    let set = ExternalSet {
        manifest: set_manifest,
        image_ext: first.image_ext.clone(),
        fov_hash: first.inputs.fov_hash.clone(),
        failed,
        place: &place,
    };
    let report = commit_external(cfg, set, opts.force, opts.threads)?;
    write_merge_info(&run_dir, &checked, &report)?;
    Ok(report)
}

/// The folders under `<run>/shards/`, sorted, with their records.
fn find(run_dir: &Path) -> Result<Vec<Found>> {
    let dir = run_dir.join(SHARDS_DIR);
    if !dir.is_dir() {
        bail!(
            "no shards to merge: {} does not exist (run `pipeline generate --shard K/N` for \
             every K first, or gather the shards' folders there)",
            dir.display()
        );
    }
    let mut out = Vec::new();
    let mut entries: Vec<PathBuf> = std::fs::read_dir(&dir)
        .with_context(|| format!("cannot list {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    entries.sort();
    for d in entries {
        let name = d.file_name().map(|n| n.to_string_lossy().into_owned());
        let named = name.as_deref().and_then(|n| {
            let (k, n) = n.split_once("-of-")?;
            Some((k.parse().ok()?, n.parse().ok()?))
        });
        let path = d.join(RECORD);
        let record = path.exists().then(|| {
            crate::io::read_regular_to_string(&path)
                .map_err(|e| e.to_string())
                .and_then(|t| serde_json::from_str(&t).map_err(|e| e.to_string()))
        });
        if named.is_some() || record.is_some() {
            out.push(Found {
                dir: d,
                named,
                record,
            });
        }
    }
    Ok(out)
}

/// The one shard count present (or `wanted`); refuses several without `wanted`.
fn shard_count(run_dir: &Path, found: &[Found], wanted: Option<u32>) -> Result<u32> {
    let mut counts: BTreeMap<u32, BTreeSet<String>> = BTreeMap::new();
    for f in found {
        let n = match (&f.record, f.named) {
            (Some(Ok(r)), _) => r.count,
            (_, Some((_, n))) => n,
            _ => continue,
        };
        let name = f
            .dir
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        counts.entry(n).or_default().insert(name);
    }
    if let Some(n) = wanted {
        Shard::new(0, n)?;
        return Ok(n);
    }
    match counts.len() {
        0 => bail!(
            "no shards to merge in {}",
            run_dir.join(SHARDS_DIR).display()
        ),
        1 => Ok(*counts.keys().next().expect("one")),
        _ => {
            let list: Vec<String> = counts
                .iter()
                .map(|(n, names)| {
                    format!(
                        "{n} ({})",
                        names.iter().cloned().collect::<Vec<_>>().join(", ")
                    )
                })
                .collect();
            bail!(
                "{} holds shards of more than one count: {}; pass --shard-count N to merge one",
                run_dir.join(SHARDS_DIR).display(),
                list.join("; ")
            )
        }
    }
}

/// A shard's manifest: complete, unchanged since its record, of this config, covering exactly
/// the stems the rule gives it.
fn check_shard(cfg: &Config, dir: &Path, r: &ShardRecord, key: &str) -> Result<Checked> {
    let layout = RunLayout::new(dir);
    for left in [layout.journal(), layout.commit_record(), layout.staging()] {
        if left.exists() {
            bail!(
                "it has not finished: {} is left by a generation that was interrupted; rerun \
                 `pipeline generate --shard {}/{} --resume`",
                left.display(),
                r.index,
                r.count
            );
        }
    }
    let manifest = crate::generate::require_complete(&layout).map_err(|e| {
        anyhow::anyhow!(
            "{e:#} (for this shard the command is `pipeline generate --shard {}/{} --force`)",
            r.index,
            r.count
        )
    })?;
    // The inputs must still be the ones the shard read (content, not only size).
    for s in &manifest.sources {
        for (rel, want) in [(&s.image, &s.image_hash), (&s.truth, &s.truth_hash)] {
            let path = cfg.data.join(rel);
            if hash_file(&path).ok().as_ref() != Some(want) {
                bail!(
                    "its input {} changed (or is gone) since the shard read it: rerun \
                     `pipeline generate --shard {}/{}`",
                    path.display(),
                    r.index,
                    r.count
                );
            }
        }
    }
    let hash = hash_file(&dir.join(FILE_NAME))?;
    if hash != r.manifest_hash {
        bail!(
            "its {FILE_NAME} changed since it finished ({RECORD} records blake3 {}, the file \
             has {}): rerun the shard",
            short(&r.manifest_hash),
            short(&hash)
        );
    }
    if manifest.generation_key != key {
        bail!("its {FILE_NAME} has another generation key: rerun the shard");
    }
    let mut covered: Vec<&str> = manifest
        .sources
        .iter()
        .map(|s| s.stem.as_str())
        .chain(r.failed.iter().map(|f| f.stem.as_str()))
        .collect();
    covered.sort();
    // A stem can fail twice (e.g. ambiguous among the images and the ground truth).
    covered.dedup();
    let owned: Vec<&str> = r
        .inputs
        .stems
        .iter()
        .map(String::as_str)
        .filter(|s| owner(s, r.count) == r.index)
        .collect();
    if covered != owned {
        bail!(
            "it covers the sources {covered:?}, but the assignment rule gives it {owned:?}: \
             rerun the shard"
        );
    }
    Ok(Checked {
        dir: dir.to_path_buf(),
        record: r.clone(),
        manifest,
    })
}

/// The merged manifest: the shards' sources and pairs, sorted as a single generation sorts them.
fn join(checked: &[Checked]) -> Result<Manifest> {
    let first = &checked[0].manifest;
    for c in checked {
        if c.manifest.generation != first.generation || c.manifest.schema != first.schema {
            bail!(
                "{} records other generation settings than {}: rerun the shards with one config",
                c.dir.join(FILE_NAME).display(),
                checked[0].dir.join(FILE_NAME).display()
            );
        }
    }
    let mut sources: Vec<_> = checked
        .iter()
        .flat_map(|c| c.manifest.sources.iter().cloned())
        .collect();
    sources.sort_by(|a, b| a.stem.cmp(&b.stem));
    let mut pairs: Vec<PairRecord> = checked
        .iter()
        .flat_map(|c| c.manifest.pairs.iter().cloned())
        .collect();
    pairs.sort_by(|a, b| a.name.cmp(&b.name));
    if let Some(w) = pairs.windows(2).find(|w| w[0].name == w[1].name) {
        bail!("two shards hold the pair {}: rerun the shards", w[0].name);
    }
    Ok(Manifest {
        schema: SCHEMA.into(),
        tool_version: env!("CARGO_PKG_VERSION").into(),
        generation_key: first.generation_key.clone(),
        generation: first.generation.clone(),
        sources,
        pairs,
        failed: Vec::new(),
        split: None,
    })
}

/// `run.json`: the generation as the shards ran it: wall time = the slowest shard + the merge
/// (the critical path when the shards run at once), threads = all shards' together.
fn write_merge_info(run_dir: &Path, checked: &[Checked], r: &GenerateReport) -> Result<()> {
    let path = crate::run_layout::RunLayout::new(run_dir).run_info();
    let mut info: serde_json::Value = crate::io::read_regular_to_string(&path)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_else(|| json!({}));
    let slowest = checked
        .iter()
        .map(|c| c.record.wall_seconds)
        .fold(0.0, f64::max);
    let wall = slowest + r.seconds;
    info["generate"]["wall_seconds"] = json!(wall);
    info["generate"]["pairs_per_second"] = json!(r.pairs as f64 / wall.max(1e-9));
    info["generate"]["threads"] = json!(checked.iter().map(|c| c.record.threads).sum::<usize>());
    info["merge"] = json!({
        "shards": checked.len(),
        "merge_wall_seconds": r.seconds,
        "shard_wall_seconds": checked.iter().map(|c| c.record.wall_seconds).collect::<Vec<_>>(),
        "shard_threads": checked.iter().map(|c| c.record.threads).collect::<Vec<_>>(),
    });
    write_json(&path, &info)
}

fn short(key: &str) -> &str {
    &key[..key.len().min(12)]
}
