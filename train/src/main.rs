//! `pipeline-torch`: the `pipeline` command line linked with libtorch. `pipeline` runs its
//! `train`, `evaluate`, `infer` and `all` here (fundus_pipeline::torch_binary); it runs any
//! command.
use std::process::ExitCode;

use clap::Parser;
use fundus_pipeline::{cli::Cli, entry, torch_binary};

fn main() -> ExitCode {
    entry::end_quietly_on_a_closed_pipe();
    let cli = Cli::parse();
    let result = torch_binary::check_caller()
        .and_then(|()| fundus_pipeline::run(cli, &fundus_train::Libtorch));
    entry::exit_code(result)
}
