//! What `staging/` may hold (step 3 of the protocol in the docs of [`super`]): it is the
//! temporary of the new set, written in place, so before a generation touches it and again
//! before it is swapped in, everything in it must be the tool's own work: regular files at names
//! the journal records (with the recorded content, where it recorded one), or the tool's
//! temporaries. A link, a folder or a file of yours is refused by name, all at once, and never
//! overwritten or deleted. (A file may have other names: `pipeline merge` hard-links the shards'
//! files into `staging/`.)

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use rayon::prelude::*;

use super::commit::{remove_if_present, remove_temporaries, staged};
use super::journal::JournalState;
use crate::io::{hash_file, is_tool_temporary};
use crate::manifest::Manifest;
use crate::run_layout::RunLayout;

/// Everything under `staging/`, classified.
#[derive(Default)]
struct Contents {
    /// Regular files (paths under `staging/images` and `staging/masks`).
    files: Vec<PathBuf>,
    /// Anything else, with why it is not the tool's: links, folders, FIFOs, and anything outside
    /// the two folders (which must be real folders themselves).
    strays: Vec<(PathBuf, &'static str)>,
}

const NOT_A_FILE: &str = "a link, a folder or another non-file, or outside images/ and masks/";

fn read_contents(dir: &Path) -> Result<Option<Contents>> {
    let meta = |p: &Path| std::fs::symlink_metadata(p);
    match meta(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", dir.display())),
        Ok(m) if !m.file_type().is_dir() => bail!(
            "{} is a symbolic link or a file, not a folder: a generation writes its new set \
             there, so it must be a real folder inside the run folder; move it away and rerun",
            dir.display()
        ),
        Ok(_) => {}
    }
    let list = |d: &Path| -> Result<Vec<PathBuf>> {
        let mut v = Vec::new();
        for e in std::fs::read_dir(d).with_context(|| format!("cannot list {}", d.display()))? {
            v.push(
                e.with_context(|| format!("cannot list {}", d.display()))?
                    .path(),
            );
        }
        v.sort();
        Ok(v)
    };
    let mut out = Contents::default();
    for entry in list(dir)? {
        let is_dir = meta(&entry).is_ok_and(|m| m.file_type().is_dir());
        let name = entry.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if !(is_dir && (name == "images" || name == "masks")) {
            out.strays.push((entry, NOT_A_FILE));
            continue;
        }
        for f in list(&entry)? {
            if meta(&f).is_ok_and(|m| m.file_type().is_file()) {
                out.files.push(f);
            } else {
                out.strays.push((f, NOT_A_FILE));
            }
        }
    }
    Ok(Some(out))
}

fn is_temporary(p: &Path) -> bool {
    p.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(is_tool_temporary)
}

fn refuse(dir: &Path, strays: &[(PathBuf, &str)]) -> Result<()> {
    if strays.is_empty() {
        return Ok(());
    }
    let shown: Vec<String> = strays
        .iter()
        .take(20)
        .map(|(p, why)| format!("  {} ({why})", p.display()))
        .collect();
    bail!(
        "{} holds {} thing(s) that are not this tool's work:\n{}{}\nmove them away and rerun \
         (no pair was written and nothing was removed)",
        dir.display(),
        strays.len(),
        shown.join("\n"),
        if strays.len() > 20 {
            format!("\n  ... and {} more", strays.len() - 20)
        } else {
            String::new()
        }
    )
}

/// Before a generation touches `staging/` (called by `start_journal`): everything in it must
/// be the work of the run `old` journals. A regular file at a name the journal records is
/// the tool's (a file of a source it had begun may be cut short by the kill; a file of a pair
/// it recorded must still have the recorded blake3); the tool's temporaries are its own. Anything
/// else is refused, before anything is written or removed, with or without `--force`.
pub(super) fn check_before_start(run: &RunLayout, old: &JournalState) -> Result<()> {
    let dir = run.staging();
    let Some(contents) = read_contents(&dir)? else {
        return Ok(());
    };
    let recorded: BTreeSet<PathBuf> = old.staged_files().iter().map(|r| staged(run, r)).collect();
    let hashes: BTreeMap<PathBuf, &str> = old
        .pairs
        .values()
        .flat_map(|p| {
            [
                (staged(run, &p.image), p.image_hash.as_str()),
                (staged(run, &p.mask), p.mask_hash.as_str()),
            ]
        })
        .collect();
    let mut strays = contents.strays;
    let mut to_hash = Vec::new();
    for f in contents.files {
        if is_temporary(&f) {
            continue;
        }
        if !recorded.contains(&f) {
            strays.push((f, "no record of this tool names it"));
        } else if let Some(want) = hashes.get(&f) {
            to_hash.push((f, *want));
        }
    }
    strays.par_extend(
        to_hash
            .into_par_iter()
            .filter(|(f, want)| !hash_file(f).is_ok_and(|h| h == *want))
            .map(|(f, _)| (f, "changed since this tool wrote it")),
    );
    strays.sort();
    refuse(&dir, &strays)
}

/// Before the commit: `staging/` must hold exactly the new set `m`. Files of sources that began
/// and then failed (named by the journal) are removed; anything else is refused by name, all at
/// once.
pub(super) fn check_before_commit(run: &RunLayout, m: &Manifest) -> Result<()> {
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
    let contents = read_contents(&dir)?.unwrap_or_default();
    let mut strays = contents.strays;
    let mut failed = Vec::new();
    for f in contents.files {
        if expected.contains(&f) || is_temporary(&f) {
            continue;
        }
        if recorded.contains(&f) {
            failed.push(f);
        } else {
            strays.push((
                f,
                "no record of this tool names it: written during the run?",
            ));
        }
    }
    refuse(&dir, &strays)?;
    remove_temporaries(&dir)?;
    for f in failed {
        remove_if_present(&f)?;
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
