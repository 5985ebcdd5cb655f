//! One command, two executables (fundus_pipeline::torch_binary): `pipeline` never loads
//! libtorch, hands the libtorch commands to `pipeline-torch` beside it, and a missing or stale
//! `pipeline-torch` is an error that says what to do.

#[path = "../../tests/common/mod.rs"]
mod common;

use std::process::Command;

use common::pipeline_bin;

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The dynamic loader's list of the libraries a process loads (glibc's `LD_DEBUG=libs`).
#[cfg(target_os = "linux")]
fn loaded_libraries(exe: &std::path::Path) -> String {
    let o = Command::new(exe)
        .arg("--version")
        .env("LD_DEBUG", "libs")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    stderr(&o)
}

#[cfg(target_os = "linux")]
#[test]
fn pipeline_loads_no_libtorch_and_pipeline_torch_does() {
    let libs = loaded_libraries(&pipeline_bin());
    assert!(libs.contains("libc.so"), "LD_DEBUG gave no list: {libs}");
    assert!(
        !libs.contains("libtorch"),
        "pipeline loads libtorch:\n{libs}"
    );
    let libs = loaded_libraries(std::path::Path::new(env!("CARGO_BIN_EXE_pipeline-torch")));
    assert!(libs.contains("libtorch_cpu"), "{libs}");
}

#[test]
fn a_missing_pipeline_torch_is_named_and_the_other_commands_still_run() {
    let d = tempfile::tempdir().unwrap();
    let alone = d.path().join("pipeline");
    std::fs::copy(pipeline_bin(), &alone).unwrap();
    let cfg = d.path().join("c.json");
    std::fs::write(&cfg, "{}").unwrap();
    for args in [
        vec!["train", "--config", cfg.to_str().unwrap()],
        vec!["all", "--config", cfg.to_str().unwrap()],
    ] {
        let o = Command::new(&alone).args(&args).output().unwrap();
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        let e = stderr(&o);
        let missing = d.path().join("pipeline-torch");
        assert!(
            e.contains(&format!(
                "{} (the same command line linked with libtorch), which is missing",
                missing.display()
            )) && e.contains("cargo build --release"),
            "{e}"
        );
    }
    // `all --no-train` and the generator need no libtorch.
    let data = d.path().join("data");
    let o = Command::new(&alone)
        .args([
            "synth",
            "--out",
            data.to_str().unwrap(),
            "--count",
            "2",
            "--size",
            "64x48",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
}

/// What sits at `pipeline-torch` is not the libtorch executable: a copy of `pipeline` (which
/// would hand the command back, forever), an empty file or a script (which the system would
/// run as a shell script), a folder. Each is an error naming the file, never a silent success.
#[test]
fn a_pipeline_torch_that_is_not_one_is_refused_by_name() {
    let d = tempfile::tempdir().unwrap();
    let pipeline = d.path().join("pipeline");
    std::fs::copy(pipeline_bin(), &pipeline).unwrap();
    let torch = d.path().join("pipeline-torch");
    let cfg = d.path().join("c.json");
    std::fs::write(&cfg, "{}").unwrap();
    let run = || {
        Command::new(&pipeline)
            .args(["train", "--config", cfg.to_str().unwrap()])
            .output()
            .unwrap()
    };
    std::fs::copy(pipeline_bin(), &torch).unwrap();
    let o = run();
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("a copy of or a link to it"),
        "{}",
        stderr(&o)
    );
    for (what, bytes) in [("empty", &b""[..]), ("script", &b"#!/bin/sh\nexit 0\n"[..])] {
        std::fs::write(&torch, bytes).unwrap();
        let o = run();
        assert_eq!(o.status.code(), Some(2), "{what}: {}", stderr(&o));
        let e = stderr(&o);
        assert!(
            e.contains(&format!(
                "{} is not a working `pipeline-torch`",
                torch.display()
            )) && e.contains("no ELF header"),
            "{what}: {e}"
        );
    }
    std::fs::remove_file(&torch).unwrap();
    std::fs::create_dir(&torch).unwrap();
    let o = run();
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("which is not a file"), "{}", stderr(&o));
}

#[test]
fn a_stale_pipeline_torch_is_refused() {
    let o = Command::new(env!("CARGO_BIN_EXE_pipeline-torch"))
        .args(["train", "--config", "nothing.json"])
        .env(
            fundus_pipeline::torch_binary::CALLER_ENV,
            "0123456789abcdef",
        )
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    let e = stderr(&o);
    assert!(
        e.contains("built from other sources")
            && e.contains("0123456789abcdef")
            && e.contains("rebuild both"),
        "{e}"
    );
    // The same id (what `pipeline` passes) is accepted: the error is then about the config.
    let o = Command::new(env!("CARGO_BIN_EXE_pipeline-torch"))
        .args(["train", "--config", "nothing.json"])
        .env(
            fundus_pipeline::torch_binary::CALLER_ENV,
            fundus_pipeline::torch_binary::SOURCE_ID,
        )
        .output()
        .unwrap();
    assert!(stderr(&o).contains("nothing.json"), "{}", stderr(&o));
}
