//! `run.json`: timings and problems of the last generation, beside the reproducible output.

use anyhow::Result;
use serde::{Deserialize, Serialize};

use super::GenerateReport;
use crate::io::{commit_point, write_json};
use crate::run_layout::RunLayout;

/// `run.json`: timings and problems of the last generation (not part of the reproducible output).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RunInfo {
    /// Timings and problems of the last `pipeline generate` ([`GenerateRun`]).
    pub generate: GenerateRun,
}

/// The `generate` section of `run.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct GenerateRun {
    /// Wall-clock time of the generation, seconds.
    pub wall_seconds: f64,
    /// Pairs of the sources used (written now or reused from `--resume`).
    pub pairs: usize,
    /// Throughput, pairs per second: `pairs` / `wall_seconds`.
    pub pairs_per_second: f64,
    /// Pairs kept from an interrupted run (`--resume`).
    pub reused_pairs: usize,
    /// Worker threads used (the rayon pool's size when the count is not given).
    pub threads: usize,
    /// Sources the generation could not use, with the reason.
    pub failed_sources: Vec<FailedSource>,
    /// False when an earlier complete set was kept because sources failed.
    pub committed: bool,
}

/// A source the generation could not use, and why: the record `manifest.json` keeps too.
pub type FailedSource = crate::manifest::FailedRecord;

impl RunInfo {
    /// `run.json` of the run; `None` when it is missing or unreadable (it is informational).
    pub fn read(run: &RunLayout) -> Option<RunInfo> {
        let text = crate::io::read_regular_to_string(&run.run_info()).ok()?;
        serde_json::from_str(&text).ok()
    }
}

pub(super) fn write_run_info(run: &RunLayout, r: &GenerateReport, threads: usize) -> Result<()> {
    let info = RunInfo {
        generate: GenerateRun {
            wall_seconds: r.seconds,
            pairs: r.pairs,
            pairs_per_second: r.pairs_per_second(),
            reused_pairs: r.reused,
            threads: if threads == 0 {
                rayon::current_num_threads()
            } else {
                threads
            },
            failed_sources: super::failed_records(&r.failed),
            committed: r.kept_earlier.is_none(),
        },
    };
    write_json(&run.run_info(), &info)?;
    commit_point("generate: run.json written");
    Ok(())
}
