//! `PIPELINE_SOURCE_ID`: a hash of the workspace's sources, so that `pipeline` and the
//! `pipeline-torch` it hands the libtorch commands to can tell that they come from the same
//! build (src/torch_binary.rs). Both packages' sources go in: a change to either rebuilds this
//! crate, and with it both executables.
use std::hash::{Hash, Hasher};
use std::path::PathBuf;

const INPUTS: [&str; 7] = [
    "build.rs",
    "Cargo.toml",
    "Cargo.lock",
    "src",
    "train/build.rs",
    "train/Cargo.toml",
    "train/src",
];

fn main() {
    for p in INPUTS {
        println!("cargo:rerun-if-changed={p}");
    }
    println!("cargo:rustc-env=PIPELINE_SOURCE_ID={:016x}", source_id());
}

/// Hash of the names and contents of [`INPUTS`] (files, and every file under the folders). Both
/// executables of one build get it from this one run, so the std hasher's stability across
/// Rust versions does not matter.
fn source_id() -> u64 {
    let mut files = Vec::new();
    let mut todo: Vec<PathBuf> = INPUTS.iter().map(PathBuf::from).collect();
    while let Some(p) = todo.pop() {
        if p.is_dir() {
            todo.extend(
                std::fs::read_dir(&p)
                    .into_iter()
                    .flatten()
                    .flatten()
                    .map(|e| e.path()),
            );
        } else {
            files.push(p);
        }
    }
    files.sort();
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for f in files {
        f.hash(&mut h);
        std::fs::read(&f).unwrap_or_default().hash(&mut h);
    }
    h.finish()
}
