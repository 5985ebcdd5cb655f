//! Bakes an rpath to libtorch into `pipeline-torch` and the test binaries, so they run without
//! LD_LIBRARY_PATH (cargo does not pass torch-sys's link search path on to our binaries).
fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    println!("cargo:rerun-if-changed=build.rs");
    if let Some(libtorch) = std::env::var_os("LIBTORCH") {
        let lib = std::path::Path::new(&libtorch).join("lib");
        // Resolve the venv's symlink so the rpath survives a moved symlink target.
        let lib = lib.canonicalize().unwrap_or(lib);
        println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    }
}
