//! The commit of a generation (steps 3-4 of the protocol in the docs of [`super`]): the staged
//! set checked against its manifest, swapped in for `master/`, the old set's recorded files
//! removed; and the same commit for a set made elsewhere (`pipeline merge`).

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use rayon::prelude::*;

use super::journal::{start_journal, Header, Journal, Prior};
use super::run_info::write_run_info;
use super::{GenerateOptions, GenerateReport, OWN_FILES};
use crate::augment::{plan, Variant};
use crate::config::Config;
use crate::dataset::layout::Problem;
use crate::io::{commit_point, write_json};
use crate::manifest::{Manifest, PairRecord};
use crate::run_layout::RunLayout;

/// Where a file of the new set (`master/...`, relative to the run folder) is staged.
pub(super) fn staged(run: &RunLayout, rel: &str) -> PathBuf {
    run.staging()
        .join(rel.strip_prefix("master/").unwrap_or(rel))
}

/// Finishes a commit whose record (`generate.commit.json`) is written: removes
/// the old split's files, swaps `staging/` in as `master/`, removes the files the old manifest
/// recorded from `master.old/`, and renames the record to `manifest.json`. Idempotent; returns
/// notes about files left in place.
pub(super) fn finish_commit(run: &RunLayout, old: Option<&Manifest>) -> Result<Vec<String>> {
    let mut notes = Vec::new();
    let master = run.master();
    let old_master = run.old_master();
    let staging = run.staging();
    if let Some(old) = old {
        let files: Vec<(String, &str)> = old.dataset_files().into_iter().collect();
        let removed = files
            .par_iter()
            .map(|(file, hash)| remove_if_unchanged(&run.file(file), hash))
            .collect::<Result<Vec<bool>>>()?;
        let kept: Vec<&String> = files
            .iter()
            .zip(&removed)
            .filter(|(_, removed)| !**removed)
            .map(|((file, _), _)| file)
            .collect();
        remove_empty_dirs(&run.dataset());
        if let Some(first) = kept.first() {
            notes.push(format!(
                "{} file(s) of the old split differ from what manifest.json recorded (edited?) \
                 and were not deleted, e.g. {}; move them away before `pipeline split`",
                kept.len(),
                run.file(first).display()
            ));
        }
        if old.pairs.iter().any(|p| p.split.is_some()) {
            notes.push(format!(
                "the split of the set this generation replaced was removed from {}; run \
                 `pipeline split` to split the new set",
                run.dataset().display()
            ));
        }
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
pub(super) fn clear_old_master(
    run: &RunLayout,
    old: Option<&Manifest>,
    notes: &mut Vec<String>,
) -> Result<()> {
    let dir = run.old_master();
    if !dir.exists() {
        return Ok(());
    }
    // Recorded files are removed only with the recorded bytes: one edited since stays, and is
    // moved below with the files no manifest recorded.
    let recorded: Vec<(&str, &str)> = old.map(|m| m.master_files().collect()).unwrap_or_default();
    recorded
        .par_iter()
        .map(|(rel, hash)| {
            let rel = rel.strip_prefix("master/").unwrap_or(rel);
            remove_if_unchanged(&dir.join(rel), hash)
        })
        .collect::<Result<Vec<bool>>>()?;
    remove_temporaries(&dir)?;
    remove_empty_dirs(&dir);
    if dir.exists() {
        // Out of the way of the next commit, under a name that says what it is.
        let mut n = 1;
        while run.root().join(format!("unrecorded-{n}")).exists() {
            n += 1;
        }
        let to = run.root().join(format!("unrecorded-{n}"));
        let count = if dir.is_dir() {
            files_under(&dir)?.len()
        } else {
            1
        };
        rename(&dir, &to)?;
        notes.push(format!(
            "{} file(s) in the old master set that no manifest recorded (not made by this \
             tool?), or whose bytes differ from the record (edited?), were not deleted: they \
             are now in {}",
            count,
            to.display()
        ));
    }
    commit_point("generate: old master cleared");
    Ok(())
}

/// Regular files under `dir` (none when it does not exist).
pub(super) fn files_under(dir: &Path) -> Result<Vec<PathBuf>> {
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

/// Removes the tool's temporary files ([`crate::io::is_tool_temporary`]) under `dir`.
pub(crate) fn remove_temporaries(dir: &Path) -> Result<()> {
    for f in files_under(dir)? {
        if f.file_name()
            .and_then(|n| n.to_str())
            .is_some_and(crate::io::is_tool_temporary)
        {
            remove_if_present(&f)?;
        }
    }
    Ok(())
}

/// Removes the tool's temporary files ([`crate::io::is_tool_temporary`]) directly in the run
/// folder (a `manifest.json` or `stats.json` cut by a kill before its rename); the caller holds
/// the run's exclusive lock, so none of them is being written.
pub(crate) fn remove_root_temporaries(run: &RunLayout) -> Result<()> {
    let Ok(entries) = std::fs::read_dir(run.root()) else {
        return Ok(());
    };
    for e in entries.flatten() {
        let is_file = e.file_type().is_ok_and(|t| t.is_file());
        if is_file
            && e.file_name()
                .to_str()
                .is_some_and(crate::io::is_tool_temporary)
        {
            remove_if_present(&e.path())?;
        }
    }
    Ok(())
}

/// Removes `dir` and its sub-folders where they are empty (bottom-up); never removes a file.
pub(super) fn remove_empty_dirs(dir: &Path) {
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

/// Removes the file at `path` if it holds the bytes recorded for it (blake3 hex `hash`); a
/// file with other bytes (edited after the tool wrote it) or one that cannot be read is left in
/// place. Returns whether nothing of it is left (removed, or absent).
fn remove_if_unchanged(path: &Path, hash: &str) -> Result<bool> {
    if path.symlink_metadata().is_err() {
        return Ok(true);
    }
    if !crate::io::hash_file(path).is_ok_and(|h| h == hash) {
        return Ok(false);
    }
    remove_if_present(path)?;
    Ok(true)
}

pub(super) fn rename(from: &Path, to: &Path) -> Result<()> {
    std::fs::rename(from, to)
        .with_context(|| format!("cannot rename {} to {}", from.display(), to.display()))
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
    mut set: ExternalSet,
    force: bool,
    threads: Option<usize>,
) -> Result<GenerateReport> {
    let started = Instant::now();
    // The set is committed without these only when there is no earlier one (below): its
    // manifest says which sources it lacks.
    set.manifest.failed = super::failed_records(&set.failed);
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
    crate::owned::check_folders(&run.own_folders())?;
    let prior = Prior::read(&run)?;
    prior.check_recorded_entries(&run)?;
    let now = serde_json::to_value(&set.manifest.generation)?;
    prior.check(&run, &key, &now, force)?;
    owned.claim(&OWN_FILES)?;
    std::fs::create_dir_all(&run_dir)
        .with_context(|| format!("cannot create output folder {}", run_dir.display()))?;
    remove_root_temporaries(&run)?;
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
    super::staging::check_before_commit(&run, &set.manifest)?;
    write_json(&run.commit_record(), &set.manifest)?;
    commit_point("merge: commit record written");
    report.notes.extend(finish_commit(&run, old.as_ref())?);
    report.seconds = started.elapsed().as_secs_f64();
    write_run_info(&run, &report, threads)?;
    Ok(report)
}
