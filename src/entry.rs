//! What both executables' `main` does around [`crate::run`]: the SIGPIPE disposition and the
//! error report.
use std::process::ExitCode;

/// Prints a fatal error with its context chain (`error: ...: ...`) and returns exit status 2;
/// passes an exit code through.
pub fn exit_code(result: anyhow::Result<ExitCode>) -> ExitCode {
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(2)
        }
    }
}

/// Keeps freed memory in the process for reuse (glibc only; elsewhere nothing). By default glibc
/// hands every freed block over its dynamic mmap threshold (128 KiB up to 32 MiB) back to the
/// kernel, and trims the heap above 128 KiB of free space, so the buffers of every pair (a 512x512
/// sample map is 2 MiB, an output image 768 KiB) came back as fresh pages that the kernel zeroes
/// on first touch: 15% of the generator's CPU time in `perf` (docs/benchmarks.md). With a 64 MiB
/// threshold and no trimming below 256 MiB they are reused from the heap; peak memory hardly
/// moves because the same sizes are freed and allocated again.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets two allocator parameters; it is called before other threads
    // exist, and a refused value (return 0) leaves glibc's default in place.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 64 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 256 << 20);
    }
}

/// `pipeline ... | head -1`: when the reader goes away, the process ends at its next write to
/// the pipe, silently, as `cat` or `grep` do (SIGPIPE's default action; shells report status
/// 141). Rust ignores SIGPIPE by default, and the next `println!` would panic with "Broken
/// pipe". Stopping there is safe: every output file is written to a temporary name and renamed,
/// and every command resumes or reruns to the same bytes. Call it first thing in `main`.
#[cfg(unix)]
pub fn end_quietly_on_a_closed_pipe() {
    // SAFETY: called first thing in `main`, before any other thread exists; SIG_DFL is a valid
    // disposition for SIGPIPE.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// Does nothing off Unix (no SIGPIPE).
#[cfg(not(unix))]
pub fn end_quietly_on_a_closed_pipe() {}
