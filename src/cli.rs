//! The command line as data (clap derive). No logic here: `lib::run` dispatches.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Reproducible DIARETDB1 lesion-segmentation dataset generator and UNet trainer.
#[derive(Debug, Parser)]
#[command(
    name = "pipeline",
    bin_name = "pipeline",
    version = concat!(env!("CARGO_PKG_VERSION"), " (sources ", env!("PIPELINE_SOURCE_ID"), ")"),
    about,
    long_about = None
)]
pub struct Cli {
    /// The subcommand to run.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands; each variant's doc line is its `--help` summary.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Write a synthetic DIARETDB1 v1.1 tree (demo data and test fixture).
    Synth(SynthArgs),
    /// DIARETDB1 -> augmented 512x512 master set (parallel, deterministic); with --shard (or a
    /// Slurm array / Kubernetes Indexed Job environment) one shard of it, joined by `merge`.
    Generate(GenerateCmd),
    /// Join the finished shards of `generate --shard K/N` into the one master set and
    /// manifest.json (the bytes of an unsharded `generate`).
    Merge(MergeArgs),
    /// Master set -> train/valid/test folders (by source: no leakage).
    Split(ConfigArgs),
    /// Statistics JSON, bar chart and sample sheets of the dataset.
    Stats(ConfigArgs),
    /// One sheet with every variant of one source, mask outlines drawn on the images.
    Preview(PreviewArgs),
    /// Re-hash every output file against manifest.json; non-zero exit on any difference.
    Verify(ConfigArgs),
    /// Train the UNet on train/valid (libtorch; CUDA when present).
    Train(TrainArgs),
    /// Score the best checkpoint at the photographs' own resolution: Dice, IoU, AUPR, lesion-wise
    /// detection, inside the field of view (test split sources, or --images with --truth).
    Evaluate(EvaluateArgs),
    /// Predict masks for full-size fundus images.
    Infer(InferArgs),
    /// Everything in order: generate, split, stats, preview, train, evaluate, infer.
    All(AllArgs),
}

impl Command {
    /// Whether the command runs a libtorch stage (train, evaluate, infer; `all` unless
    /// `--no-train`): `pipeline` hands those to `pipeline-torch` (see `torch_binary`).
    pub fn needs_libtorch(&self) -> bool {
        match self {
            Command::Train(_) | Command::Evaluate(_) | Command::Infer(_) => true,
            Command::All(a) => !a.no_train,
            Command::Synth(_)
            | Command::Generate(_)
            | Command::Merge(_)
            | Command::Split(_)
            | Command::Stats(_)
            | Command::Preview(_)
            | Command::Verify(_) => false,
        }
    }

    /// The subcommand's name, as typed.
    pub fn name(&self) -> &'static str {
        match self {
            Command::Synth(_) => "synth",
            Command::Generate(_) => "generate",
            Command::Merge(_) => "merge",
            Command::Split(_) => "split",
            Command::Stats(_) => "stats",
            Command::Preview(_) => "preview",
            Command::Verify(_) => "verify",
            Command::Train(_) => "train",
            Command::Evaluate(_) => "evaluate",
            Command::Infer(_) => "infer",
            Command::All(_) => "all",
        }
    }
}

/// The config file and the overrides every stage accepts.
#[derive(Debug, Args, Clone)]
pub struct ConfigArgs {
    /// Run configuration (JSON, see generator-configs/).
    #[arg(long, short)]
    pub config: PathBuf,
    /// Output root (overrides the config's `out`).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// `synth`'s options.
#[derive(Debug, Args)]
pub struct SynthArgs {
    /// Folder to create; it plays the role of `diaretdb1_v_1_1` (gets `resources/`).
    #[arg(long)]
    pub out: PathBuf,
    /// Number of fundus images.
    #[arg(long, default_value_t = 89)]
    pub count: usize,
    /// Seed of the synthetic images (same seed and options, same bytes).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Image size WIDTHxHEIGHT (DIARETDB1 is 1500x1152).
    #[arg(long, default_value = "1500x1152", value_parser = parse_size)]
    pub size: (u32, u32),
}

/// `generate`'s options.
#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// `--config` and `--out`.
    #[command(flatten)]
    pub common: ConfigArgs,
    /// The `diaretdb1_v_1_1` folder (overrides the config's `data`).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Worker threads (default: all cores). Output bytes do not depend on it.
    #[arg(long)]
    pub threads: Option<usize>,
    /// Replace an output folder that holds a different run.
    #[arg(long)]
    pub force: bool,
    /// Continue an interrupted run: keep files that match their recorded hash, redo the rest
    /// (`all`: and continue training from the last saved epoch).
    #[arg(long)]
    pub resume: bool,
}

/// `generate`'s options: those `all` shares, and the shard.
#[derive(Debug, Args)]
pub struct GenerateCmd {
    /// The options `generate` shares with `all`.
    #[command(flatten)]
    pub generate: GenerateArgs,
    /// Which shard of the sources to generate.
    #[command(flatten)]
    pub shard: ShardArgs,
}

/// Which shard of an array job to run (docs/scale-out.md).
#[derive(Debug, Args, Clone, Default)]
pub struct ShardArgs {
    /// Run shard K of N (0 <= K < N): only the sources (infer: images) that the rendezvous rule
    /// on the file stem gives to K. Default: from the scheduler's environment
    /// (SLURM_ARRAY_TASK_ID and SLURM_ARRAY_TASK_COUNT, or JOB_COMPLETION_INDEX with
    /// --shard-count / PIPELINE_SHARD_COUNT), else the whole set.
    #[arg(long, value_name = "K/N")]
    pub shard: Option<String>,
    /// Shard count N when the index comes from JOB_COMPLETION_INDEX (a Kubernetes Indexed Job's
    /// `completions`); default: the environment variable PIPELINE_SHARD_COUNT. Not with
    /// --shard K/N, which names its own count.
    #[arg(long, value_name = "N", conflicts_with = "shard")]
    pub shard_count: Option<u32>,
    /// Ignore the scheduler's environment and process the whole set.
    #[arg(long, conflicts_with_all = ["shard", "shard_count"])]
    pub no_shard: bool,
}

/// `merge`'s options.
#[derive(Debug, Args)]
pub struct MergeArgs {
    /// The config file and the overrides every stage accepts.
    #[command(flatten)]
    pub common: ConfigArgs,
    /// The shard count N to merge (default: the one count found under <run>/shards/).
    #[arg(long, value_name = "N")]
    pub shard_count: Option<u32>,
    /// Replace a run folder that holds a different run (only files the tool recorded are removed).
    #[arg(long)]
    pub force: bool,
}

/// `preview`'s options.
#[derive(Debug, Args)]
pub struct PreviewArgs {
    /// `--config` and `--out`.
    #[command(flatten)]
    pub common: ConfigArgs,
    /// Source stem (e.g. image003); default: the first source.
    #[arg(long)]
    pub source: Option<String>,
    /// Folder for the sheet `preview_<stem>.png` (default: the run folder <out>/<name>).
    #[arg(long)]
    pub sheet_dir: Option<PathBuf>,
}

/// Which device runs the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum DeviceChoice {
    /// CUDA when available, else CPU.
    #[default]
    Auto,
    /// The CPU (libtorch's threads).
    Cpu,
    /// The first CUDA device; an error when there is none.
    Cuda,
}

/// The config, the output root and the device: what `evaluate` takes.
#[derive(Debug, Args, Clone)]
pub struct DeviceArgs {
    /// `--config` and `--out`.
    #[command(flatten)]
    pub common: ConfigArgs,
    /// Device of the model: `auto` (CUDA when available, else CPU), `cpu` or `cuda`.
    #[arg(long, value_enum, default_value_t = DeviceChoice::Auto)]
    pub device: DeviceChoice,
}

/// `train`'s options.
#[derive(Debug, Args, Clone)]
pub struct TrainArgs {
    /// `--config`, `--out` and `--device`.
    #[command(flatten)]
    pub dev: DeviceArgs,
    /// Continue from the last saved epoch (same result as an uninterrupted run).
    #[arg(long)]
    pub resume: bool,
}

/// `evaluate`'s options.
#[derive(Debug, Args, Clone)]
pub struct EvaluateArgs {
    /// `--config`, `--out` and `--device`.
    #[command(flatten)]
    pub dev: DeviceArgs,
    /// Folder of photographs to score instead of the test split's sources (overrides
    /// `evaluate.images`; needs --truth).
    #[arg(long)]
    pub images: Option<PathBuf>,
    /// Folder of their ground-truth confidence maps, paired by file stem (overrides
    /// `evaluate.truth`).
    #[arg(long)]
    pub truth: Option<PathBuf>,
}

/// `infer`'s options.
#[derive(Debug, Args, Clone)]
pub struct InferArgs {
    /// `--config`, `--out` and `--device`.
    #[command(flatten)]
    pub dev: DeviceArgs,
    /// Folder of full-size fundus images (default: the config's `infer.images`, else the test
    /// split's source images).
    #[arg(long)]
    pub images: Option<PathBuf>,
    /// Folder for the masks and overlays (default: <out>/<name>/infer).
    #[arg(long)]
    pub infer_dir: Option<PathBuf>,
    /// Which shard of the images to run.
    #[command(flatten)]
    pub shard: ShardArgs,
}

/// `all`'s options: those of `generate`, plus the device and whether to train.
#[derive(Debug, Args)]
pub struct AllArgs {
    /// `generate`'s options (`--config`, `--out`, `--data`, `--threads`, `--force`, `--resume`).
    #[command(flatten)]
    pub generate: GenerateArgs,

    /// Device of the model: `auto` (CUDA when available, else CPU), `cpu` or `cuda`.
    #[arg(long, value_enum, default_value_t = DeviceChoice::Auto)]
    pub device: DeviceChoice,
    /// Stop after generate, split, stats and preview (no training).
    #[arg(long)]
    pub no_train: bool,
}

fn parse_size(s: &str) -> Result<(u32, u32), String> {
    let (w, h) = s
        .split_once(['x', 'X'])
        .ok_or_else(|| format!("expected WIDTHxHEIGHT, got {s:?}"))?;
    let parse = |v: &str| {
        v.trim()
            .parse::<u32>()
            .ok()
            .filter(|n| (32..=8192).contains(n))
            .ok_or_else(|| format!("sides must be whole numbers within 32..=8192, got {s:?}"))
    };
    Ok((parse(w)?, parse(h)?))
}
