//! `pipeline`: parse the command line; hand the libtorch commands to `pipeline-torch`
//! (src/torch_binary.rs) and run the others here, without loading libtorch; print the error
//! chain; set the exit code.
use std::process::ExitCode;

use clap::Parser;
use fundus_pipeline::{cli::Cli, torch_binary, NoLibtorch};

fn main() -> ExitCode {
    fundus_pipeline::entry::end_quietly_on_a_closed_pipe();
    fundus_pipeline::entry::keep_freed_memory();
    let cli = Cli::parse();
    let result = if cli.command.needs_libtorch() {
        torch_binary::run_there(cli.command.name())
    } else {
        fundus_pipeline::run(cli, &NoLibtorch)
    };
    fundus_pipeline::entry::exit_code(result)
}
