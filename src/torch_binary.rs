//! One command, two executables. Loading libtorch costs a process ~0.4 s of wall time before
//! it does anything (the relocations and static operator registration of the 450 MB
//! `libtorch_cpu.so`; docs/benchmarks.md), which was a fifth of generating the 12 DIARETDB1
//! training photographs. So `pipeline` is linked without libtorch and runs every command that
//! needs no network itself; for `train`, `evaluate`, `infer` and `all` (see
//! [`crate::cli::Command::needs_libtorch`]) it replaces itself (`exec`) with `pipeline-torch`
//! from its own folder: the same command line linked with libtorch, given the same arguments.
//!
//! One `cargo build` (or `cargo install --path .`) makes both from the same sources. `cargo run`
//! builds only `pipeline`, which could leave an older `pipeline-torch` beside it; [`SOURCE_ID`]
//! (a hash of the sources, from build.rs), passed from one to the other, refuses that pair.

use std::path::PathBuf;

use anyhow::{Context, Result};

/// File name of the libtorch half (plus the platform's executable suffix).
pub const BINARY: &str = "pipeline-torch";

/// Hash of the sources this binary was built from (`src/`, `Cargo.toml`, `Cargo.lock`,
/// `build.rs`; made by build.rs), the same in `pipeline` and `pipeline-torch` of one build.
pub const SOURCE_ID: &str = env!("PIPELINE_SOURCE_ID");

/// Environment variable through which `pipeline` tells `pipeline-torch` its [`SOURCE_ID`].
pub const CALLER_ENV: &str = "PIPELINE_CALLER_SOURCE_ID";

/// Where `pipeline-torch` is: beside the running executable.
///
/// # Errors
/// When the running executable's path cannot be read.
pub fn path() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("cannot find the path of the running executable")?;
    Ok(exe.with_file_name(format!("{BINARY}{}", std::env::consts::EXE_SUFFIX)))
}

/// Runs this process's command line (`pipeline COMMAND ...`, whose COMMAND is `command`) in
/// `pipeline-torch`: on Unix the process is replaced (`exec`: same pid, signals, standard
/// streams and exit status); elsewhere a child is run and its exit status returned.
///
/// # Errors
/// When `pipeline-torch` is missing beside this executable (the message says how to build it)
/// or cannot be started.
pub fn run_there(command: &str) -> Result<std::process::ExitCode> {
    let path = path()?;
    // Set by a `pipeline` for its `pipeline-torch`: this process was started as the libtorch half
    // but is a `pipeline` (a copy or link), and would hand the command on again, forever.
    anyhow::ensure!(
        std::env::var_os(CALLER_ENV).is_none(),
        "`pipeline {command}` was handed to a `{BINARY}` that is not one: it is this `pipeline` \
         ({}; a copy of or a link to it), which cannot run `{command}`; build the real one with \
         `cargo build --release` in the project root",
        path.with_file_name("pipeline").display()
    );
    anyhow::ensure!(
        !path.exists() || path.is_file(),
        "`pipeline {command}` runs in {}, which is not a file",
        path.display()
    );
    anyhow::ensure!(
        path.is_file(),
        "`pipeline {command}` runs in {} (the same command line linked with libtorch), which \
         is missing: build both executables with `cargo build --release` in the project folder \
         (libtorch from scripts/setup-libtorch.sh), or install both with `cargo install --path \
         . && cargo install --path train`",
        path.display()
    );
    check_executable(&path)?;
    let mut child = std::process::Command::new(&path);
    child
        .args(std::env::args_os().skip(1))
        .env(CALLER_ENV, SOURCE_ID);
    start(child, &path)
}

/// Refuses a file that is not a program of this platform (on Linux: not ELF), which the
/// system would otherwise run as a shell script (an empty file then "succeeds" doing nothing).
fn check_executable(path: &std::path::Path) -> Result<()> {
    if cfg!(target_os = "linux") {
        use std::io::Read;
        let mut magic = Vec::with_capacity(4);
        let read = std::fs::File::open(path).and_then(|f| f.take(4).read_to_end(&mut magic));
        read.with_context(|| format!("cannot read {}", path.display()))
            .and_then(|_| {
                anyhow::ensure!(
                    magic == b"\x7fELF",
                    "it is not an executable program (no ELF header)"
                );
                Ok(())
            })
            .with_context(|| {
                format!(
                    "{} is not a working `{BINARY}`: build it with `cargo build --release` in the \
                     project root",
                    path.display()
                )
            })?;
    }
    Ok(())
}

#[cfg(unix)]
fn start(
    mut child: std::process::Command,
    path: &std::path::Path,
) -> Result<std::process::ExitCode> {
    use std::os::unix::process::CommandExt;
    let e = child.exec();
    Err(e).with_context(|| format!("cannot run {}", path.display()))
}

#[cfg(not(unix))]
fn start(
    mut child: std::process::Command,
    path: &std::path::Path,
) -> Result<std::process::ExitCode> {
    let status = child
        .status()
        .with_context(|| format!("cannot run {}", path.display()))?;
    let code = status.code().unwrap_or(2);
    Ok(std::process::ExitCode::from(
        u8::try_from(code).unwrap_or(2),
    ))
}

/// In `pipeline-torch`: refuses to run for a `pipeline` built from other sources (an older
/// `pipeline-torch` left beside a rebuilt `pipeline`). A direct start (no [`CALLER_ENV`]) is
/// fine.
///
/// # Errors
/// When the caller's [`SOURCE_ID`] differs from this one's, naming both executables.
pub fn check_caller() -> Result<()> {
    let Some(caller) = std::env::var_os(CALLER_ENV) else {
        return Ok(());
    };
    if caller == SOURCE_ID {
        return Ok(());
    }
    let me = path().map(|p| p.display().to_string());
    anyhow::bail!(
        "{} was built from other sources than the `pipeline` beside it (source id {} against \
         {}): it is stale; rebuild both with `cargo build` in the project root (`--release` \
         for target/release; `cargo run` and `cargo test -p fundus-pipeline` build only \
         `pipeline`)",
        me.unwrap_or_else(|_| BINARY.to_string()),
        SOURCE_ID,
        caller.to_string_lossy()
    )
}
