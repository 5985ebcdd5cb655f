//! `pipeline`: parse the command line, run it, print the error chain, set the exit code.
use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = fundus_pipeline::cli::Cli::parse();
    match fundus_pipeline::run(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(2)
        }
    }
}
