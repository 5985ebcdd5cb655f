//! fundus-pipeline: DIARETDB1 -> reproducible, leak-free, augmented 512x512 segmentation dataset
//! -> statistics -> UNet training, evaluation and inference (libtorch, feature `train`).
//!
//! Data flows one way: config -> sources -> prepared pairs -> variants -> files + manifest ->
//! split -> stats -> train -> evaluate -> infer. `run` is the whole command line as a library call.

pub mod augment;
pub mod cli;
pub mod config;
pub mod dataset;
pub mod prep;
pub mod rng;
#[cfg(feature = "train")]
pub mod train;
pub mod train_config;

use std::process::ExitCode;

use anyhow::Result;

use cli::{Cli, Command, ConfigArgs};
use config::Config;

/// Runs one command line. `Ok` carries the exit code (non-zero when some inputs failed but the
/// rest were processed); `Err` is a fatal error, printed with its context chain by `main`.
pub fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Train(a) => {
            let cfg = load(&a.dev.common)?;
            training::train(&cfg, a.dev.device, a.resume)?;
        }
        Command::Evaluate(a) => {
            let cfg = load(&a.common)?;
            training::evaluate(&cfg, a.device)?;
        }
        Command::Infer(a) => {
            let cfg = Config::load(&a.config)?;
            training::infer(&cfg, a.device, a.images.as_deref(), a.out.as_deref())?;
        }
        _ => anyhow::bail!("not implemented yet"),
    }
    Ok(ExitCode::SUCCESS)
}

/// Loads the config and applies the command-line overrides.
pub fn load(args: &ConfigArgs) -> Result<Config> {
    let mut cfg = Config::load(&args.config)?;
    if let Some(out) = &args.out {
        cfg.out = out.clone();
    }
    Ok(cfg)
}

/// The training stages, or a clear error when built without libtorch.
mod training {
    #[cfg(feature = "train")]
    pub use crate::train::{evaluate, infer, train};

    #[cfg(not(feature = "train"))]
    mod off {
        use crate::cli::DeviceChoice;
        use crate::config::Config;
        use std::path::Path;
        const MSG: &str = "this build has no training stage: rebuild with `--features train` \
                           (needs libtorch, see scripts/setup-libtorch.sh)";
        pub fn train(_: &Config, _: DeviceChoice, _: bool) -> anyhow::Result<()> {
            anyhow::bail!(MSG)
        }
        pub fn evaluate(_: &Config, _: DeviceChoice) -> anyhow::Result<()> {
            anyhow::bail!(MSG)
        }
        pub fn infer(
            _: &Config,
            _: DeviceChoice,
            _: Option<&Path>,
            _: Option<&Path>,
        ) -> anyhow::Result<()> {
            anyhow::bail!(MSG)
        }
    }
    #[cfg(not(feature = "train"))]
    pub use off::{evaluate, infer, train};
}
