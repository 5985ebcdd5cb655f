//! Which files in an output folder the tool owns, so it never overwrites or deletes a file it did
//! not make.
//!
//! The rule, for every writer (generate, split, stats, preview, train, evaluate, infer): a file
//! is written or removed only when the tool recorded it as its own, in the folder's record file
//! [`RECORD`] (one name per line, sorted), or in a manifest / journal for the generated sets.
//! A writer claims the names it will write before it writes them ([`Owned::claim`]): a name that
//! already exists in the folder without being recorded is refused with an error naming the file,
//! and nothing is written. The claim is recorded before the first write, so a kill in between
//! leaves at most a recorded name without its file.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// The record file of an output folder.
pub const RECORD: &str = ".pipeline-owned";

/// The names (relative to the folder) the tool recorded as its own in one output folder.
#[derive(Debug, Clone)]
pub struct Owned {
    dir: PathBuf,
    names: BTreeSet<String>,
}

impl Owned {
    /// Reads `dir`'s record (none yet: nothing is owned). Creates nothing. Errors: the record
    /// is a link, a folder, a FIFO ... (not the file the tool writes there), or unreadable.
    pub fn open(dir: &Path) -> Result<Owned> {
        let path = dir.join(RECORD);
        if let Ok(meta) = path.symlink_metadata() {
            if !meta.file_type().is_file() {
                bail!(
                    "{} is not the file pipeline keeps there (it is a folder, a link or another \
                     kind of entry); nothing was written or removed: move it away and rerun",
                    path.display()
                );
            }
        }
        let names = match crate::io::read_regular_to_string(&path) {
            Ok(text) => text
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(str::to_owned)
                .collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeSet::new(),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        Ok(Owned {
            dir: dir.to_path_buf(),
            names,
        })
    }

    /// True when `name` is recorded as the tool's.
    pub fn owns(&self, name: &str) -> bool {
        self.names.contains(name)
    }

    /// Refuses, writing nothing, when one of `names` exists in the folder (file, folder or
    /// link) and is not recorded as the tool's, or is recorded but is not a regular file (a
    /// folder or a link put in the place of the tool's file); the error names the path.
    pub fn check<S: AsRef<str>>(&self, names: &[S]) -> Result<()> {
        for name in names {
            let name = name.as_ref();
            let path = self.dir.join(name);
            let Ok(meta) = path.symlink_metadata() else {
                continue;
            };
            if !self.owns(name) {
                bail!(
                    "{} exists and was not made by pipeline (it is not listed in {}); nothing was \
                     overwritten: move it away, or choose another output folder",
                    path.display(),
                    self.dir.join(RECORD).display()
                );
            }
            // Recorded, but not the file the tool wrote there (someone put a folder or a link
            // in its place): replacing it would fail half-way or discard it.
            let kind = meta.file_type();
            if !kind.is_file() {
                bail!(
                    "{} is {}, where pipeline keeps a file it writes; nothing was written or \
                     removed: move it away and rerun",
                    path.display(),
                    entry_kind(kind)
                );
            }
        }
        Ok(())
    }

    /// [`Owned::check`], then records `names` as the tool's (the record is written atomically,
    /// creating the folder, before the caller writes the files).
    pub fn claim<S: AsRef<str>>(&mut self, names: &[S]) -> Result<()> {
        self.check(names)?;
        let before = self.names.len();
        self.names
            .extend(names.iter().map(|n| n.as_ref().to_string()));
        if self.names.len() == before && self.dir.join(RECORD).exists() {
            return Ok(());
        }
        std::fs::create_dir_all(&self.dir)
            .with_context(|| format!("cannot create output folder {}", self.dir.display()))?;
        // Processes that write into one folder (e.g. `infer --shard` K of N) each read, extend
        // and replace the record: hold the folder's lock from reading to replacing, and keep the
        // names another process recorded since this one read it.
        let _lock = lock_folder(&self.dir)?;
        self.names.extend(Owned::open(&self.dir)?.names);
        let mut text = String::new();
        for n in &self.names {
            text.push_str(n);
            text.push('\n');
        }
        crate::io::write_atomic(&self.dir.join(RECORD), text.as_bytes())
    }
}

/// What a directory entry is, for messages: "a folder", "a file", "a symbolic link" or "a FIFO,
/// a socket or a device".
pub(crate) fn entry_kind(kind: std::fs::FileType) -> &'static str {
    if kind.is_dir() {
        "a folder"
    } else if kind.is_symlink() {
        "a symbolic link"
    } else if kind.is_file() {
        "a file"
    } else {
        "a FIFO, a socket or a device"
    }
}

/// Refuses, before any work, a path of `folders` (the run's own folders: `master/`,
/// `master.old/`, `dataset/` ...) that exists but is not a real folder: a link (the tool would
/// write or remove files through it, in someone else's folder), a file or a FIFO (the commit would
/// fail half-way). Absent folders are fine: the tool makes them.
pub fn check_folders(folders: &[PathBuf]) -> Result<()> {
    for dir in folders {
        let Ok(meta) = dir.symlink_metadata() else {
            continue;
        };
        let kind = meta.file_type();
        if !kind.is_dir() {
            bail!(
                "{} is {}, where pipeline keeps a folder of its own; nothing was written or \
                 removed: move it away and rerun",
                dir.display(),
                entry_kind(kind)
            );
        }
    }
    Ok(())
}

/// Refuses, before any work, an entry at a file name a manifest records (`files`, relative to
/// `root`) that is not a regular file: a folder there stops the replacement of the set half-way
/// (it cannot be removed as a file), and a link or FIFO is not what the tool wrote. Absent files
/// are fine.
pub fn check_recorded_files<'a>(
    root: &Path,
    files: impl IntoIterator<Item = &'a str>,
) -> Result<()> {
    for rel in files {
        let path = root.join(rel);
        let Ok(meta) = path.symlink_metadata() else {
            continue;
        };
        if !meta.is_file() {
            bail!(
                "{} is {}, where manifest.json records a file pipeline wrote; nothing was \
                 written or removed: move it away and rerun",
                path.display(),
                entry_kind(meta.file_type())
            );
        }
    }
    Ok(())
}

/// An exclusive advisory lock (`flock`, through `fs4`) on the folder itself, waited for and
/// released when the returned handle is dropped; it leaves no file behind.
fn lock_folder(dir: &Path) -> Result<std::fs::File> {
    let f = std::fs::File::open(dir)
        .with_context(|| format!("cannot open output folder {}", dir.display()))?;
    fs4::FileExt::lock(&f)
        .with_context(|| format!("cannot lock output folder {}", dir.display()))?;
    Ok(f)
}

/// Claims `names` in `dir` (see [`Owned::claim`]).
pub fn claim<S: AsRef<str>>(dir: &Path, names: &[S]) -> Result<()> {
    Owned::open(dir)?.claim(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unrecorded_files_are_refused_recorded_ones_are_not() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("stats.json"), b"mine").unwrap();
        let e = claim(d.path(), &["stats.json"]).unwrap_err().to_string();
        assert!(
            e.contains("stats.json") && e.contains("not made by pipeline"),
            "{e}"
        );
        assert!(
            !d.path().join(RECORD).exists(),
            "a refusal wrote the record"
        );
        claim(d.path(), &["stats.png"]).unwrap();
        std::fs::write(d.path().join("stats.png"), b"ours").unwrap();
        claim(d.path(), &["stats.png", "other.png"]).unwrap();
        let text = std::fs::read_to_string(d.path().join(RECORD)).unwrap();
        assert_eq!(text, "other.png\nstats.png\n");
    }

    #[test]
    fn a_folder_or_link_in_place_of_a_recorded_file_is_refused() {
        let d = tempfile::tempdir().unwrap();
        claim(d.path(), &["manifest.json", "run.json"]).unwrap();
        std::fs::create_dir(d.path().join("manifest.json")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", d.path().join("run.json")).unwrap();
        let e = claim(d.path(), &["manifest.json"]).unwrap_err().to_string();
        assert!(e.contains("manifest.json is a folder"), "{e}");
        let e = claim(d.path(), &["run.json"]).unwrap_err().to_string();
        assert!(e.contains("run.json is a symbolic link"), "{e}");
        // Both are left as they were.
        assert!(d.path().join("manifest.json").is_dir());
        assert!(d
            .path()
            .join("run.json")
            .symlink_metadata()
            .unwrap()
            .file_type()
            .is_symlink());
    }

    #[test]
    fn a_record_that_is_not_a_file_is_refused_without_blocking() {
        let d = tempfile::tempdir().unwrap();
        let elsewhere = d.path().join("elsewhere");
        std::fs::write(&elsewhere, b"manifest.json\n").unwrap();
        std::os::unix::fs::symlink(&elsewhere, d.path().join(RECORD)).unwrap();
        let e = claim(d.path(), &["stats.json"]).unwrap_err().to_string();
        assert!(e.contains("is not the file pipeline keeps there"), "{e}");
        std::fs::remove_file(d.path().join(RECORD)).unwrap();
        // A FIFO: reading it would wait for a writer forever.
        let c = std::ffi::CString::new(d.path().join(RECORD).to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let e = claim(d.path(), &["stats.json"]).unwrap_err().to_string();
        assert!(e.contains("is not the file pipeline keeps there"), "{e}");
        assert_eq!(std::fs::read(&elsewhere).unwrap(), b"manifest.json\n");
    }

    #[test]
    fn the_run_s_folders_must_be_real_folders() {
        let d = tempfile::tempdir().unwrap();
        let (real, link, file) = (d.path().join("a"), d.path().join("b"), d.path().join("c"));
        std::fs::create_dir(&real).unwrap();
        std::os::unix::fs::symlink(&real, &link).unwrap();
        std::fs::write(&file, b"x").unwrap();
        check_folders(&[real.clone(), d.path().join("absent")]).unwrap();
        let e = check_folders(&[real.clone(), link])
            .unwrap_err()
            .to_string();
        assert!(e.contains("b is a symbolic link"), "{e}");
        let e = check_folders(&[file]).unwrap_err().to_string();
        assert!(e.contains("c is a file"), "{e}");
    }

    #[test]
    fn concurrent_claims_keep_every_name() {
        // Four writers claim their own names in one folder, interleaved (as `infer --shard`
        // processes do); the record ends with all of them.
        let d = tempfile::tempdir().unwrap();
        std::thread::scope(|s| {
            for w in 0..4 {
                let dir = d.path();
                s.spawn(move || {
                    for i in 0..25 {
                        claim(dir, &[format!("w{w}_{i:02}.png")]).unwrap();
                    }
                });
            }
        });
        let text = std::fs::read_to_string(d.path().join(RECORD)).unwrap();
        assert_eq!(text.lines().count(), 100, "{text}");
    }
}
