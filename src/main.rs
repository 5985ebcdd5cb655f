//! `pipeline`: parse the command line, run it, print the error chain, set the exit code.
use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    end_quietly_on_a_closed_pipe();
    let cli = fundus_pipeline::cli::Cli::parse();
    match fundus_pipeline::run(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(2)
        }
    }
}

/// `pipeline ... | head -1`: when the reader goes away, the process ends at its next write to
/// the pipe, silently, as `cat` or `grep` do (SIGPIPE's default action; shells report status
/// 141). Rust ignores SIGPIPE by default, and the next `println!` would panic with "Broken
/// pipe". Stopping there is safe: every output file is written to a temporary name and renamed,
/// and every command resumes or reruns to the same bytes.
#[cfg(unix)]
fn end_quietly_on_a_closed_pipe() {
    // SAFETY: the first thing `main` does, before any other thread exists; SIG_DFL is a valid
    // disposition for SIGPIPE.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

#[cfg(not(unix))]
fn end_quietly_on_a_closed_pipe() {}
