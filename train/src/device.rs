//! Device choice. A normal build does not link `libtorch_cuda.so`, so CUDA would silently report
//! unavailable: load it at start (README.md, "libtorch") and fall back to the CPU when it is not there.

use std::ffi::CStr;
use std::sync::OnceLock;

use anyhow::{bail, Result};
use tch::Device;

use fundus_pipeline::cli::DeviceChoice;

/// Loads `libtorch_cuda.so` once (RTLD_NOW | RTLD_GLOBAL) so libtorch registers its CUDA backend.
/// Returns the loader's error message when it could not be loaded (CPU-only install, no GPU).
pub fn load_cuda_backend() -> Result<(), String> {
    static LOADED: OnceLock<Result<(), String>> = OnceLock::new();
    LOADED
        .get_or_init(|| {
            // SAFETY: dlopen/dlerror with a valid NUL-terminated name; the handle is kept for the
            // life of the process (never dlclosed), as libtorch expects.
            unsafe {
                let handle = libc::dlopen(
                    c"libtorch_cuda.so".as_ptr(),
                    libc::RTLD_NOW | libc::RTLD_GLOBAL,
                );
                if handle.is_null() {
                    let err = libc::dlerror();
                    let msg = if err.is_null() {
                        "unknown dlopen error".to_string()
                    } else {
                        CStr::from_ptr(err).to_string_lossy().into_owned()
                    };
                    Err(msg)
                } else {
                    Ok(())
                }
            }
        })
        .clone()
}

/// Resolves the command line's choice to a device; `Cuda` without a usable GPU is an error.
pub fn select(choice: DeviceChoice) -> Result<Device> {
    if choice == DeviceChoice::Cpu {
        return Ok(Device::Cpu);
    }
    let loaded = load_cuda_backend();
    match choice {
        DeviceChoice::Cpu => Ok(Device::Cpu),
        DeviceChoice::Auto => Ok(Device::cuda_if_available()),
        DeviceChoice::Cuda => {
            if tch::Cuda::is_available() {
                Ok(Device::Cuda(0))
            } else {
                let why = match loaded {
                    Err(e) => format!("libtorch_cuda.so could not be loaded ({e})"),
                    Ok(()) => "libtorch_cuda.so loaded but no CUDA device is visible".to_string(),
                };
                bail!("--device cuda: CUDA is not available: {why}; use --device cpu or auto")
            }
        }
    }
}

/// [`select`], then prints `<stage>: device <describe>` (what every stage prints at start).
pub fn select_for(stage: &str, choice: DeviceChoice) -> Result<Device> {
    let device = select(choice)?;
    println!("{stage}: device {}", describe(device));
    Ok(device)
}

/// `cpu (2 threads)` or `cuda:0 (1 CUDA device)`: what the stages print at start.
pub fn describe(device: Device) -> String {
    match device {
        Device::Cuda(i) => format!("cuda:{i} ({} CUDA device(s))", tch::Cuda::device_count()),
        _ => format!("cpu ({} threads)", tch::get_num_threads()),
    }
}
