//! The generation journal, `generate.journal` (the protocol is in the docs of [`super`]): its
//! header, a `begin` line per source before any of its files and a line per finished pair;
//! what a run folder holds before a run ([`Prior`]: records and journal, refused when they are
//! another run's) and the journal a run starts with ([`start_journal`]: the pairs `--resume`
//! keeps).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::sync::Mutex;

use anyhow::{bail, Context, Result};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::commit::{files_under, remove_if_present, remove_temporaries, staged};
use super::{GenerateOptions, JOURNAL};
use crate::dataset::layout::Source;
use crate::io::{commit_point, hash_file, write_atomic};
use crate::manifest::{Manifest, PairRecord};
use crate::run_layout::RunLayout;

/// The journal's first line.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(super) struct Header {
    pub(super) generation_key: String,
    /// Variant names in plan order: with a `begin` line they name the files a source may have.
    #[serde(default)]
    pub(super) variants: Vec<String>,
    #[serde(default)]
    pub(super) image_ext: String,
    /// blake3 of the field-of-view mask in use, if any.
    #[serde(default)]
    pub(super) fov_hash: Option<String>,
}

/// A journal line written before any file of a source.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(super) struct Begin {
    pub(super) stem: String,
    pub(super) image_hash: String,
    pub(super) truth_hash: String,
    #[serde(default)]
    pub(super) truth_warnings: Vec<String>,
}

/// A journal line after the header: a source begun, or a finished pair.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub(super) enum Line {
    Begin { begin: Begin },
    Pair(Box<PairRecord>),
}

/// What a journal says (the last line of a source or pair wins).
#[derive(Debug, Clone, Default)]
pub(super) struct JournalState {
    /// `None`: no journal; `Some(None)`: a journal whose header does not parse.
    pub(super) header: Option<Option<Header>>,
    pub(super) begins: BTreeMap<String, Begin>,
    pub(super) pairs: BTreeMap<String, PairRecord>,
}

impl JournalState {
    pub(super) fn read(run: &RunLayout) -> Result<JournalState> {
        let path = run.journal();
        let f = match crate::io::open_regular(&path) {
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
                // A record naming a path the generator does not write (a hand-edited journal)
                // is skipped like a cut line: its files are neither kept nor removed.
                Ok(Line::Begin { begin }) if crate::manifest::is_plain_name(&begin.stem) => {
                    s.begins.insert(begin.stem.clone(), begin);
                }
                Ok(Line::Pair(p)) if p.check_paths().is_ok() => {
                    s.pairs.insert(p.name.clone(), *p);
                }
                Ok(_) | Err(_) => {}
            }
        }
        Ok(s)
    }

    /// Every staged file the journal names: recorded pairs, and every variant of a begun source.
    pub(super) fn staged_files(&self) -> BTreeSet<String> {
        let mut out: BTreeSet<String> = self
            .pairs
            .values()
            .flat_map(|p| [p.image.clone(), p.mask.clone()])
            .collect();
        if let Some(Some(h)) = &self.header {
            let ext_ok =
                !h.image_ext.is_empty() && h.image_ext.bytes().all(|b| b.is_ascii_alphanumeric());
            for stem in self.begins.keys().filter(|_| ext_ok) {
                for v in h
                    .variants
                    .iter()
                    .filter(|v| crate::manifest::is_plain_name(v))
                {
                    out.insert(format!("master/images/{stem}_{v}.{}", h.image_ext));
                    out.insert(format!("master/masks/{stem}_{v}.png"));
                }
            }
        }
        out
    }
}

/// What a run folder holds before a generation.
pub(super) struct Prior {
    /// `None`: no manifest; `Some(Err)`: unreadable (corrupt, empty).
    pub(super) manifest: Option<Result<Manifest, String>>,
    pub(super) commit: Option<Result<Manifest, String>>,
    pub(super) journal: JournalState,
    /// Files in `master/` although nothing records a set there.
    pub(super) unrecorded_master: usize,
}

impl Prior {
    pub(super) fn read(run: &RunLayout) -> Result<Prior> {
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

    /// Refuses a folder, link or other non-file at a name a readable manifest or commit
    /// record of the folder names, in `master/` or `dataset/` ([`crate::owned::check_recorded_files`]).
    pub(super) fn check_recorded_entries(&self, run: &RunLayout) -> Result<()> {
        for m in [&self.manifest, &self.commit]
            .into_iter()
            .flatten()
            .flatten()
        {
            let dataset = m.dataset_files();
            crate::owned::check_recorded_files(
                run.root(),
                m.master_files()
                    .map(|(rel, _)| rel)
                    .chain(dataset.keys().map(String::as_str)),
            )?;
        }
        Ok(())
    }

    pub(super) fn manifest_ok(&self) -> Option<&Manifest> {
        self.manifest.as_ref()?.as_ref().ok()
    }

    /// Refuses (unless `force`) a folder that holds another run or anything unaccounted for.
    pub(super) fn check(
        &self,
        run: &RunLayout,
        key: &str,
        now: &serde_json::Value,
        force: bool,
    ) -> Result<()> {
        // The tool writes its journal and commit record whole (temporary name, then rename),
        // so one that does not parse is not its work: refused even with --force, never
        // overwritten or removed.
        if matches!(self.journal.header, Some(None)) && !journal_is_empty(run) {
            bail!(
                "{} is not a journal of pipeline (its first line is no journal header); nothing \
                 was written or removed: move it away and rerun",
                run.journal().display()
            );
        }
        if let Some(Err(_)) = &self.commit {
            bail!(
                "{} is not a commit record of this version of pipeline (it does not read as \
                 one; the tool writes it whole, so this is another program's or a person's \
                 file); nothing was written or removed: move it away and rerun",
                run.commit_record().display()
            );
        }
        let mut other = Vec::new();
        // An interrupted generation of this very config (its journal or its commit record) was
        // authorized when it started (`--force` if it replaces another run): finishing it
        // replaces the manifest's run, whatever that was.
        let committing_this = matches!(&self.commit, Some(Ok(c)) if c.generation_key == key)
            || matches!(&self.journal.header, Some(Some(h)) if h.generation_key == key);
        for (name, m) in [
            (RunLayout::MANIFEST, &self.manifest),
            (RunLayout::COMMIT, &self.commit),
        ] {
            if committing_this && name == RunLayout::MANIFEST {
                continue;
            }
            match m {
                Some(Ok(m)) if m.generation_key != key => {
                    let recorded = serde_json::to_value(&m.generation)?;
                    let diff = super::first_difference(&recorded, now, "")
                        .map(|d| format!(": {d}"))
                        .unwrap_or_default();
                    other.push(format!(
                        "{name} has generation key {}{diff}",
                        short(&m.generation_key)
                    ))
                }
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

/// True when the journal is an empty file: a journal of a version that created it before
/// writing its header, cut by a kill in between (the tool's; rewritten by the next run).
fn journal_is_empty(run: &RunLayout) -> bool {
    std::fs::symlink_metadata(run.journal()).is_ok_and(|m| m.is_file() && m.len() == 0)
}

/// The generation key in the header of the run's journal: `None` without a journal (or with
/// an empty one, see [`journal_is_empty`]), `Some(None)` for a journal whose header does not
/// parse (not the tool's work).
pub(crate) fn journal_key(run: &RunLayout) -> Result<Option<Option<String>>> {
    if journal_is_empty(run) {
        return Ok(None);
    }
    Ok(JournalState::read(run)?
        .header
        .map(|h| h.map(|h| h.generation_key)))
}

pub(super) fn short(key: &str) -> &str {
    &key[..key.len().min(12)]
}

/// Writes a new journal for this run and returns the pairs kept from the old one (`--resume`,
/// same key, same field-of-view mask, unchanged source files, staged files that hash right).
/// Staged files the old journal names that are not kept are removed, as are temporaries;
/// anything else in `staging/` is refused first ([`super::staging::check_before_start`]).
pub(super) fn start_journal(
    run: &RunLayout,
    header: &Header,
    old: &JournalState,
    sources: &[Source],
    opts: &GenerateOptions,
) -> Result<Kept> {
    super::staging::check_before_start(run, old)?;
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
            // check_before_start has hashed every staged file the journal records: one that is
            // there has the recorded blake3.
            .filter(|(_, r)| {
                [&r.image, &r.mask]
                    .iter()
                    .all(|rel| staged(run, rel).is_file())
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
pub(super) struct Kept {
    pub(super) pairs: HashMap<String, PairRecord>,
}

/// Append-only journal (see the module docs).
pub(super) struct Journal(Mutex<File>);

impl Journal {
    pub(super) fn open(run: &RunLayout) -> Result<Journal> {
        let path = run.journal();
        let f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        Ok(Journal(Mutex::new(f)))
    }

    pub(super) fn line(&self, line: String) -> Result<()> {
        let mut f = self.0.lock().expect("journal lock");
        f.write_all((line + "\n").as_bytes())
            .context("cannot append to the generation journal")
    }

    pub(super) fn begin(&self, b: &Begin) -> Result<()> {
        self.line(serde_json::to_string(&Line::Begin { begin: b.clone() })?)?;
        commit_point("generate: source begun");
        Ok(())
    }

    pub(super) fn append(&self, r: &PairRecord) -> Result<()> {
        self.line(serde_json::to_string(r)?)?;
        commit_point("generate: pair journaled");
        Ok(())
    }
}
