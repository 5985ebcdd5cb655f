//! The run folder `<out>/<name>`: where it may be, and who may write into it.
//!
//! - [`check_apart`]: a run folder equal to, inside, or containing an input folder (the dataset
//!   root, `infer`'s image folder) is refused before anything is written, so no stage can
//!   overwrite or remove input data.
//! - [`lock`]: every command that writes into a run folder holds an exclusive advisory lock on
//!   `<run>/pipeline.lock` (an `flock` through the `fs4` crate, released by the OS when the
//!   process ends, even on `kill -9`), so a second writer is refused at once instead of mixing
//!   its files with the first one's. The holder writes its pid and command into the file for the
//!   refusal message, and empties it when it ends.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// The lock file inside a run folder.
pub const LOCK_FILE: &str = crate::run_layout::RunLayout::LOCK;

/// An absolute path with every existing part resolved (symbolic links, `.`/`..`); the parts
/// that do not exist yet are appended as given.
pub fn resolve(path: &Path) -> PathBuf {
    let abs = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()
            .map(|d| d.join(path))
            .unwrap_or_else(|_| path.to_path_buf())
    };
    let mut existing = abs.clone();
    let mut rest = Vec::new();
    while !existing.exists() {
        match existing.file_name() {
            Some(n) => {
                rest.push(n.to_os_string());
                existing.pop();
            }
            None => break,
        }
    }
    let mut out = existing.canonicalize().unwrap_or(existing);
    for n in rest.iter().rev() {
        out.push(n);
    }
    out
}

/// What the run folder is called in messages: the config keys that make it.
pub const RUN_FOLDER: &str = "run folder (config `out` + `name`, or --out)";

/// What the dataset root is called in messages.
pub const DATASET_ROOT: &str = "dataset root (config `data`, or --data)";

/// Refuses an output folder `out` (called `what` in the message, e.g. [`RUN_FOLDER`]) that is
/// equal to, inside, or contains one of `inputs` (`(what, path)`, e.g. `(DATASET_ROOT, ...)`).
/// Paths are compared after resolving symbolic links; an input folder whose files are links (a
/// `cp -rs` tree) is also compared at the real location of its files ([`real_locations`]).
/// Nothing is written.
pub fn check_apart(out: &Path, what: &str, inputs: &[(&str, &Path)]) -> Result<()> {
    let o = resolve(out);
    for (input_what, input) in inputs {
        for i in real_locations(input) {
            let relation = if o == i {
                "is"
            } else if o.starts_with(&i) {
                "lies inside"
            } else if i.starts_with(&o) {
                "contains"
            } else {
                continue;
            };
            let real = if i == resolve(input) {
                String::new()
            } else {
                format!(" (its files are links into {})", i.display())
            };
            bail!(
                "{what} {} {relation} the {input_what} {}{real}; writing there could overwrite \
                 or remove input files, so nothing was written: choose an output folder outside \
                 the input data",
                out.display(),
                input.display()
            );
        }
    }
    Ok(())
}

/// An input folder, resolved, and the real folders its symbolic links point into: for a link
/// at `<input>/<rel>` whose target ends with `<rel>` the target's matching root (so a `cp -rs`
/// copy of a dataset gives the original dataset root), otherwise the target's folder. Looks at
/// most 6 levels deep.
pub fn real_locations(input: &Path) -> Vec<PathBuf> {
    let root = resolve(input);
    let mut out = vec![root.clone()];
    for entry in walkdir::WalkDir::new(&root)
        .max_depth(6)
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| e.path_is_symlink())
    {
        let Ok(target) = entry.path().canonicalize() else {
            continue;
        };
        let rel = entry.path().strip_prefix(&root).unwrap_or(entry.path());
        let real = if target.ends_with(rel) {
            let mut t = target.clone();
            for _ in rel.components() {
                t.pop();
            }
            t
        } else if target.is_dir() {
            target
        } else {
            target.parent().map(Path::to_path_buf).unwrap_or(target)
        };
        if !out.contains(&real) {
            out.push(real);
        }
    }
    out
}

/// An exclusive lock on a run folder, held until dropped.
#[derive(Debug)]
pub struct RunLock {
    file: File,
}

impl Drop for RunLock {
    fn drop(&mut self) {
        // Leave the file empty (the next holder writes its own pid); the OS releases the lock.
        let _ = self.file.set_len(0);
    }
}

/// Opens (creating) the lock file `path` for reading and writing, refusing anything but a regular
/// file of its own name: a link (the holder's line would be written into whatever it leads to),
/// a folder, or a FIFO (opening one blocks until a writer comes). `O_NOFOLLOW | O_NONBLOCK`:
/// neither is followed nor waited for, and the kind is checked before any byte moves.
fn open_lock_file(path: &Path) -> Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    if let Ok(meta) = path.symlink_metadata() {
        if !meta.is_file() {
            bail!(
                "{} exists and is not a lock file of pipeline ({}); nothing was written: move \
                 it away, or choose another `name`/--out",
                path.display(),
                crate::owned::entry_kind(meta.file_type())
            );
        }
    }
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .with_context(|| format!("cannot open the lock file {}", path.display()))?;
    let meta = file
        .metadata()
        .with_context(|| format!("cannot open the lock file {}", path.display()))?;
    if !meta.is_file() {
        bail!(
            "{} is not a lock file of pipeline (not a regular file); move it away, or choose \
             another `name`/--out",
            path.display()
        );
    }
    // A hard link shares its bytes with another name, outside the run folder perhaps: the
    // holder's line would be written there too.
    if std::os::unix::fs::MetadataExt::nlink(&meta) > 1 {
        bail!(
            "{} is not a lock file of pipeline (it is a hard link of another file); nothing was \
             written: move it away, or choose another `name`/--out",
            path.display()
        );
    }
    Ok(file)
}

/// Takes the exclusive lock of `run_dir` for `command` (creating the folder when `create`).
/// Errors: the folder is missing (and not `create`), or another process holds the lock (the
/// message names the folder, the holder's pid and command).
pub fn lock(run_dir: &Path, command: &str, create: bool) -> Result<RunLock> {
    ensure_run_dir(run_dir, create)?;
    let path = run_dir.join(LOCK_FILE);
    let mut file = open_lock_file(&path)?;
    // The lock file is emptied by its holder; content that is not a holder's line is not ours.
    let mut text = String::new();
    if file.read_to_string(&mut text).is_err() {
        bail!(
            "{} exists and is not a lock file of pipeline (not a readable text file); move it \
             away, or choose another `name`/--out",
            path.display()
        );
    }
    if !text.is_empty() && !text.starts_with("pid ") {
        bail!(
            "{} exists and was not made by pipeline (it is not a lock file of this tool); \
             nothing was overwritten: move it away, or choose another `name`/--out",
            path.display()
        );
    }
    file.rewind()
        .with_context(|| format!("cannot read the lock file {}", path.display()))?;
    match fs4::FileExt::try_lock(&file) {
        Ok(()) => {}
        Err(fs4::TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = holder.trim();
            bail!(
                "run folder {} is in use by another pipeline process ({}); wait for it to \
                 finish, or choose another `name`/--out (lock file {})",
                run_dir.display(),
                if holder.is_empty() {
                    "pid not recorded: a writer that just started, or processes that share the \
                     folder: `verify`, or `--shard` processes, whose pids are in \
                     shards/*/pipeline.lock"
                        .to_string()
                } else {
                    holder.to_string()
                },
                path.display()
            );
        }
        Err(fs4::TryLockError::Error(e)) => {
            return Err(e).with_context(|| format!("cannot lock {}", path.display()));
        }
    }
    file.set_len(0)
        .and_then(|_| file.rewind())
        .and_then(|_| writeln!(file, "pid {} (`pipeline {command}`)", std::process::id()))
        .with_context(|| format!("cannot write the lock file {}", path.display()))?;
    Ok(RunLock { file })
}

/// Creates the run folder (`create`) or requires it to exist, naming the command that makes it.
fn ensure_run_dir(run_dir: &Path, create: bool) -> Result<()> {
    if create {
        std::fs::create_dir_all(run_dir)
            .with_context(|| format!("cannot create output folder {}", run_dir.display()))?;
    } else if !run_dir.is_dir() {
        bail!(
            "run folder {} does not exist, so it has no manifest.json (run `pipeline generate` first, or check `out`/`name`)",
            run_dir.display()
        );
    }
    Ok(())
}

/// A shared lock on a run folder, held until dropped: the `--shard` processes of `generate`
/// and `infer`, and `verify`, hold it together, and every exclusive writer ([`lock`]) is refused
/// meanwhile.
#[derive(Debug)]
pub struct SharedRunLock {
    _file: File,
}

/// Takes `<run_dir>/pipeline.lock` shared for `command` (creating the folder when `create`).
/// The holders do not write into the file. Errors: the folder is missing (and not `create`), or
/// an exclusive writer holds it (named with its pid).
pub fn lock_shared(run_dir: &Path, command: &str, create: bool) -> Result<SharedRunLock> {
    ensure_run_dir(run_dir, create)?;
    let path = run_dir.join(LOCK_FILE);
    let mut file = open_lock_file(&path)?;
    match fs4::FileExt::try_lock_shared(&file) {
        Ok(()) => Ok(SharedRunLock { _file: file }),
        Err(fs4::TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            bail!(
                "run folder {} is in use by another pipeline process ({}), so `pipeline \
                 {command}` cannot start; wait for it to finish (lock file {})",
                run_dir.display(),
                holder.trim(),
                path.display()
            );
        }
        Err(fs4::TryLockError::Error(e)) => {
            Err(e).with_context(|| format!("cannot lock {}", path.display()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlap_in_every_direction_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let data = d.path().join("ddb");
        std::fs::create_dir_all(data.join("resources")).unwrap();
        let inputs = [(DATASET_ROOT, data.as_path())];
        for (out, word) in [
            (data.clone(), "is"),
            (data.join("resources/x"), "lies inside"),
            (d.path().to_path_buf(), "contains"),
            (data.join("./../ddb"), "is"),
        ] {
            let e = check_apart(&out, RUN_FOLDER, &inputs)
                .unwrap_err()
                .to_string();
            assert!(e.contains(word) && e.contains("ddb"), "{e}");
        }
        check_apart(&d.path().join("out/run"), RUN_FOLDER, &inputs).unwrap();
    }

    #[test]
    fn second_lock_is_refused_with_the_holders_pid() {
        let d = tempfile::tempdir().unwrap();
        let run = d.path().join("run");
        let held = lock(&run, "generate", true).unwrap();
        let e = lock(&run, "split", false).unwrap_err().to_string();
        assert!(
            e.contains(&format!("pid {}", std::process::id())) && e.contains("generate"),
            "{e}"
        );
        drop(held);
        lock(&run, "split", false).unwrap();
        assert!(lock(&d.path().join("none"), "split", false).is_err());
    }

    #[test]
    fn shared_holders_run_together_and_keep_writers_out() {
        let d = tempfile::tempdir().unwrap();
        let run = d.path().join("run");
        let a = lock_shared(&run, "generate --shard 0/2", true).unwrap();
        let b = lock_shared(&run, "generate --shard 1/2", true).unwrap();
        let e = lock(&run, "merge", false).unwrap_err().to_string();
        assert!(e.contains("in use") && e.contains("--shard"), "{e}");
        drop((a, b));
        let held = lock(&run, "merge", false).unwrap();
        let e = lock_shared(&run, "generate --shard 0/2", true)
            .unwrap_err()
            .to_string();
        assert!(e.contains(&format!("pid {}", std::process::id())), "{e}");
        drop(held);
    }
}
