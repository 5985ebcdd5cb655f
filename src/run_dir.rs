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

/// Refuses an output folder `out` that is equal to, inside, or contains one of `inputs`
/// (`(what, path)`, e.g. `("dataset root (`data`)", ...)`). Nothing is written.
pub fn check_apart(out: &Path, inputs: &[(&str, &Path)]) -> Result<()> {
    let o = resolve(out);
    for (what, input) in inputs {
        let i = resolve(input);
        let relation = if o == i {
            "is"
        } else if o.starts_with(&i) {
            "lies inside"
        } else if i.starts_with(&o) {
            "contains"
        } else {
            continue;
        };
        bail!(
            "output folder {} {relation} the {what} {}; writing there could overwrite or remove \
             input files, so nothing was written: choose an output folder outside the input data \
             (`out`/--out, or --infer-dir / --sheet-dir for those commands)",
            out.display(),
            input.display()
        );
    }
    Ok(())
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

/// Takes the exclusive lock of `run_dir` for `command` (creating the folder when `create`).
/// Errors: the folder is missing (and not `create`), or another process holds the lock (the
/// message names the folder, the holder's pid and command).
pub fn lock(run_dir: &Path, command: &str, create: bool) -> Result<RunLock> {
    if create {
        std::fs::create_dir_all(run_dir)
            .with_context(|| format!("cannot create output folder {}", run_dir.display()))?;
    } else if !run_dir.is_dir() {
        bail!(
            "run folder {} does not exist, so it has no manifest.json (run `pipeline generate` first, or check `out`/`name`)",
            run_dir.display()
        );
    }
    let path = run_dir.join(LOCK_FILE);
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .with_context(|| format!("cannot open the lock file {}", path.display()))?;
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
                    "pid not yet recorded".to_string()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlap_in_every_direction_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let data = d.path().join("ddb");
        std::fs::create_dir_all(data.join("resources")).unwrap();
        let inputs = [("dataset root", data.as_path())];
        for (out, word) in [
            (data.clone(), "is"),
            (data.join("resources/x"), "lies inside"),
            (d.path().to_path_buf(), "contains"),
            (data.join("./../ddb"), "is"),
        ] {
            let e = check_apart(&out, &inputs).unwrap_err().to_string();
            assert!(e.contains(word) && e.contains("ddb"), "{e}");
        }
        check_apart(&d.path().join("out/run"), &inputs).unwrap();
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
}
