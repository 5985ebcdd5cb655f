//! fundus-pipeline: DIARETDB1 -> reproducible, leak-free, augmented 512x512 segmentation dataset
//! -> statistics; and the command line of every stage. The libtorch stages (training,
//! evaluation, inference) live in the `fundus-train` package (`train/`), which this crate does
//! not depend on: `pipeline` never loads libtorch (see [`torch_binary`]).
//!
//! Data flows one way: config -> sources -> prepared pairs -> variants -> files + manifest ->
//! split -> stats -> train -> evaluate -> infer. `run` is the whole command line as a library call.

#![warn(missing_docs)]

pub mod arch_config;
pub mod augment;
pub mod cli;
pub mod config;
pub mod dataset;
pub mod entry;
pub mod font;
pub mod generate;
pub mod input;
pub mod io;
pub mod manifest;
pub mod merge;
pub mod owned;
pub mod patches;
pub mod plot;
pub mod prep;
pub mod preview;
pub mod recipe_config;
pub mod rng;
pub mod run_dir;
pub mod run_layout;
pub mod scoring;
pub mod shard;
pub mod sliding;
pub mod split;
pub mod stats;
pub mod torch_binary;
pub mod train_config;

use std::process::ExitCode;

use anyhow::{Context, Result};

use cli::{Cli, Command, ConfigArgs};
use config::Config;

/// The libtorch stages that [`run`] calls: `train`, `evaluate` and `infer`. The `pipeline-torch`
/// executable (package `fundus-train`, in `train/`) passes its `Libtorch`; `pipeline` passes [`NoLibtorch`] and hands those commands
/// to `pipeline-torch` before [`run`] (see [`torch_binary`]), so its process never loads libtorch.
pub trait Training {
    /// Trains the network of `cfg.model` on `<run>/dataset/{train,valid}`; writes `<run>/train/`.
    fn train(&self, cfg: &Config, device: cli::DeviceChoice, resume: bool) -> Result<()>;
    /// Evaluates the best checkpoint; writes `<run>/eval/`.
    fn evaluate(&self, cfg: &Config, device: cli::DeviceChoice) -> Result<()>;
    /// Predicts masks for full-size fundus images (only `shard`'s, when given); writes
    /// `infer_dir` (default `<run>/infer/`).
    fn infer(
        &self,
        cfg: &Config,
        device: cli::DeviceChoice,
        images: Option<&std::path::Path>,
        infer_dir: Option<&std::path::Path>,
        shard: Option<&shard::Shard>,
    ) -> Result<()>;
}

/// [`Training`] of a process without libtorch: every stage is an error that says where the
/// stages are.
pub struct NoLibtorch;

impl NoLibtorch {
    fn refuse(stage: &str) -> Result<()> {
        anyhow::bail!(
            "`{stage}` needs libtorch, which this process does not load: run it through \
             `pipeline` (which hands it to `{}`, built by `cargo build` in the workspace)",
            torch_binary::BINARY
        )
    }
}

impl Training for NoLibtorch {
    fn train(&self, _: &Config, _: cli::DeviceChoice, _: bool) -> Result<()> {
        Self::refuse("train")
    }
    fn evaluate(&self, _: &Config, _: cli::DeviceChoice) -> Result<()> {
        Self::refuse("evaluate")
    }
    fn infer(
        &self,
        _: &Config,
        _: cli::DeviceChoice,
        _: Option<&std::path::Path>,
        _: Option<&std::path::Path>,
        _: Option<&shard::Shard>,
    ) -> Result<()> {
        Self::refuse("infer")
    }
}

/// Runs one command line; the libtorch stages through `training`. `Ok` carries the exit code
/// (non-zero when some inputs failed but the rest were processed); `Err` is a fatal error,
/// printed with its context chain by `main`.
pub fn run(cli: Cli, training: &dyn Training) -> Result<ExitCode> {
    match cli.command {
        Command::Synth(a) => {
            let opts = dataset::synth::SynthOptions {
                count: a.count,
                seed: a.seed,
                width: a.size.0,
                height: a.size.1,
            };
            dataset::synth::write_synthetic(&a.out, &opts)?;
            println!(
                "wrote a synthetic DIARETDB1 tree with {} images to {}",
                a.count,
                a.out.display()
            );
        }
        Command::Generate(g) => {
            let cfg = load_generate(&g.generate)?;
            let Some((s, from)) = shard::resolve_env(&g.shard)? else {
                let _lock = lock_run(&cfg, "generate", true)?;
                return run_generate(&cfg, &g.generate, None);
            };
            let run = cfg.run_dir();
            println!("shard {s} (from {from}) -> {}", s.dir(&run).display());
            run_dir::check_apart(
                &run,
                run_dir::RUN_FOLDER,
                &[(run_dir::DATASET_ROOT, &cfg.data)],
            )?;
            let _locks = shard::lock(&run, &s.dir(&run), &format!("generate --shard {s}"))?;
            return run_generate(&cfg, &g.generate, Some(s));
        }
        Command::Merge(a) => {
            let cfg = load(&a.common)?;
            let _lock = lock_run(&cfg, "merge", false)?;
            let opts = merge::MergeOptions {
                shard_count: a.shard_count,
                force: a.force,
                threads: None,
            };
            let r = merge::merge(&cfg, &opts)?;
            return Ok(print_generation(&r, "merged"));
        }
        Command::Split(a) => {
            let cfg = load(&a)?;
            let _lock = lock_run(&cfg, "split", false)?;
            let m = generate::require_complete(&cfg.layout())?;
            warn_failed(&cfg, &m);
            run_split(&cfg, m)?;
        }
        Command::Stats(a) => {
            let cfg = load(&a)?;
            let _lock = lock_run(&cfg, "stats", false)?;
            let m = split::require_complete(&cfg)?;
            warn_failed(&cfg, &m);
            run_stats(&cfg, &m)?;
        }
        Command::Verify(a) => return run_verify(&load(&a)?),
        Command::Train(a) => {
            let cfg = load_for_training(&a.dev.common)?;
            check_validation(&cfg, &a.dev.common.config)?;
            let _lock = lock_run(&cfg, "train", false)?;
            warn_failed(&cfg, &split::require_complete(&cfg)?);
            training.train(&cfg, a.dev.device, a.resume)?;
        }
        Command::Evaluate(a) => {
            let mut cfg = load_for_training(&a.dev.common)?;
            let _lock = lock_run(&cfg, "evaluate", false)?;
            if a.images.is_some() || a.truth.is_some() {
                cfg.evaluate.images = a.images.clone();
                cfg.evaluate.truth = a.truth.clone();
                recipe_config::validate_evaluate(&cfg.evaluate)?;
            } else {
                warn_failed(&cfg, &split::require_complete(&cfg)?);
            }
            training.evaluate(&cfg, a.dev.device)?;
        }
        Command::Infer(a) => {
            let cfg = load_for_training(&a.dev.common)?;
            let shard = shard::resolve_env(&a.shard)?;
            let _lock = match &shard {
                None => Lock::Run(lock_run(&cfg, "infer", false)?),
                Some((s, from)) => {
                    let run = cfg.run_dir();
                    println!("infer: shard {s} (from {from})");
                    run_dir::check_apart(
                        &run,
                        run_dir::RUN_FOLDER,
                        &[(run_dir::DATASET_ROOT, &cfg.data)],
                    )?;
                    let own = run
                        .join(shard::SHARDS_DIR)
                        .join(format!("infer-{}", s.dir_name()));
                    Lock::Shard(shard::lock(&run, &own, &format!("infer --shard {s}"))?)
                }
            };
            let images = a.images.as_deref().or(cfg.infer.images.as_deref());
            let out = a
                .infer_dir
                .clone()
                .unwrap_or_else(|| cfg.layout().infer_dir());
            // Infer's folder must keep clear of the image folder and of the dataset (its
            // default inputs are the dataset's photographs).
            let mut inputs = vec![(run_dir::DATASET_ROOT, cfg.data.as_path())];
            if let Some(images) = images {
                inputs.push(("image folder (--images, or config `infer.images`)", images));
            }
            run_dir::check_apart(&out, "infer output folder (--infer-dir)", &inputs)?;
            training.infer(
                &cfg,
                a.dev.device,
                a.images.as_deref(),
                a.infer_dir.as_deref(),
                shard.as_ref().map(|(s, _)| s),
            )?;
        }
        Command::Preview(a) => {
            let cfg = load(&a.common)?;
            let _lock = lock_run(&cfg, "preview", false)?;
            let m = generate::require_generated_by(&cfg)?;
            warn_failed(&cfg, &m);
            if let Some(dir) = &a.sheet_dir {
                run_dir::check_apart(
                    dir,
                    "sheet folder (--sheet-dir)",
                    &[(run_dir::DATASET_ROOT, &cfg.data)],
                )?;
            }
            let path = preview::preview(&cfg, &m, a.source.as_deref(), a.sheet_dir.as_deref())?;
            println!("preview -> {}", path.display());
        }
        Command::All(a) => {
            let cfg = load_generate(&a.generate)?;
            if !a.no_train {
                check_training(&cfg, &a.generate.common.config)?;
                check_validation(&cfg, &a.generate.common.config)?;
                // Folders the last stages read are checked before hours of training.
                for (key, dir) in [
                    ("evaluate.images", &cfg.evaluate.images),
                    ("evaluate.truth", &cfg.evaluate.truth),
                    ("infer.images", &cfg.infer.images),
                ] {
                    if let Some(d) = dir.as_ref().filter(|d| !d.is_dir()) {
                        anyhow::bail!("`{key}` ({}) is not a folder", d.display());
                    }
                }
            }
            let _lock = lock_run(&cfg, "all", true)?;
            let code = run_generate(&cfg, &a.generate, None)?;
            if code != ExitCode::SUCCESS {
                anyhow::bail!("generation had errors (listed above); stopping before split");
            }
            // One manifest goes through split, stats and preview.
            let m = run_split(&cfg, generate::require_complete(&cfg.layout())?)?;
            let mut sheets = run_stats(&cfg, &m)?;
            let sheet = preview::preview(&cfg, &m, None, None)?;
            println!("preview -> {}", sheet.display());
            sheets.push(sheet);
            if !a.no_train {
                // `all --resume` continues training from the last saved epoch too.
                training.train(&cfg, a.device, a.generate.resume)?;
                // With every photograph in training (e.g. an official list without test
                // images) there is nothing to score or predict unless a folder is configured;
                // that is not an error.
                let no_test = m
                    .split
                    .as_ref()
                    .is_some_and(|s| s.sources_of(run_layout::Split::Test).is_empty());
                let skip = |stage: &str, keys: &str, args: &str| {
                    println!(
                        "{stage}: skipped, the test split is empty (set {keys} in the config, or \
                         run `pipeline {stage} {args}` on other photographs)"
                    )
                };
                if no_test && cfg.evaluate.images.is_none() {
                    skip(
                        "evaluate",
                        "`evaluate.images` and `evaluate.truth`",
                        "--images DIR --truth DIR",
                    );
                } else {
                    training.evaluate(&cfg, a.device)?;
                }
                if no_test && cfg.infer.images.is_none() {
                    skip("infer", "`infer.images`", "--images DIR");
                } else {
                    training.infer(&cfg, a.device, None, None, None)?;
                }
            }
            println!(
                "all stages done; everything is under {}",
                cfg.run_dir().display()
            );
            let names: Vec<String> = sheets
                .iter()
                .filter_map(|p| p.file_name())
                .map(|n| n.to_string_lossy().into_owned())
                .collect();
            println!("preview sheets (beside stats.json): {}", names.join(", "));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Checks that the run folder is apart from the input data, then takes its exclusive lock (see
/// [`run_dir`]); `create`: the command may create the folder (generate, all).
fn lock_run(cfg: &Config, command: &str, create: bool) -> Result<run_dir::RunLock> {
    run_dir::lock(&apart_run_dir(cfg)?, command, create)
}

/// The run folder, checked apart from the input data (nothing is written inside the dataset).
fn apart_run_dir(cfg: &Config) -> Result<std::path::PathBuf> {
    let run = cfg.run_dir();
    run_dir::check_apart(
        &run,
        run_dir::RUN_FOLDER,
        &[(run_dir::DATASET_ROOT, &cfg.data)],
    )?;
    Ok(run)
}

fn load_generate(a: &cli::GenerateArgs) -> Result<Config> {
    let mut cfg = load(&a.common)?;
    if let Some(data) = &a.data {
        cfg.data = data.clone();
    }
    Ok(cfg)
}

/// The lock a command holds: the run folder's, or a shard's two.
#[allow(dead_code)]
enum Lock {
    Run(run_dir::RunLock),
    Shard(shard::ShardLocks),
}

fn run_generate(
    cfg: &Config,
    a: &cli::GenerateArgs,
    shard: Option<shard::Shard>,
) -> Result<ExitCode> {
    use std::io::IsTerminal;
    let opts = generate::GenerateOptions {
        threads: a.threads,
        force: a.force,
        resume: a.resume,
        progress: std::io::stderr().is_terminal(),
        shard: None,
    };
    let Some(s) = shard else {
        return Ok(print_generation(
            &generate::generate(cfg, &opts)?,
            "generated",
        ));
    };
    let r = shard::generate_shard(cfg, &s, &opts)?;
    let code = print_generation(&r, "generated");
    if r.kept_earlier.is_none() {
        println!(
            "shard {s} finished; once all {} have: pipeline merge --config <this config>",
            s.count
        );
    }
    Ok(code)
}

/// Prints a generation's (or merge's) warnings, notes, summary and failures; the exit code.
fn print_generation(r: &generate::GenerateReport, verb: &str) -> ExitCode {
    for f in &r.ignored {
        eprintln!("warning: ignoring non-image file {}", f.display());
    }
    for w in &r.warnings {
        eprintln!("warning: {}: {}", w.stem, w.message);
    }
    for n in &r.notes {
        eprintln!("note: {n}");
    }
    if let Some(earlier) = r.kept_earlier {
        eprintln!("error: {} source(s) failed:", r.failed.len());
        for p in &r.failed {
            eprintln!("  {}: {}", p.stem, p.message);
        }
        if earlier == 0 && !r.run_dir.join(run_layout::RunLayout::MANIFEST).exists() {
            eprintln!(
                "error: nothing was committed: no source could be generated; fix the sources \
                 above and rerun (`--resume` keeps the pairs already written of sources whose \
                 files have not changed since)"
            );
        } else {
            eprintln!(
                "error: nothing was replaced: the earlier complete set in {} ({earlier} pairs, \
                 manifest.json) is kept; fix the sources above and rerun (`--resume` reuses the \
                 {} pairs made now)",
                r.run_dir.display(),
                r.pairs
            );
        }
        return ExitCode::from(2);
    }
    println!(
        "{verb} {} pairs from {} sources in {:.2} s ({:.1} pairs/s){} -> {}",
        r.pairs,
        r.sources,
        r.seconds,
        r.pairs_per_second(),
        if r.reused > 0 {
            format!(", {} kept from the interrupted run", r.reused)
        } else {
            String::new()
        },
        run_layout::RunLayout::new(&r.run_dir).master().display()
    );
    if r.failed.is_empty() {
        return ExitCode::SUCCESS;
    }
    eprintln!("error: {} source(s) failed:", r.failed.len());
    for p in &r.failed {
        eprintln!("  {}: {}", p.stem, p.message);
    }
    ExitCode::from(2)
}

/// Splits the master set of `m` (the run's manifest); returns the manifest as saved.
fn run_split(cfg: &Config, m: manifest::Manifest) -> Result<manifest::Manifest> {
    let r = split::split(cfg, m)?;
    for w in &r.warnings {
        eprintln!("warning: {w}");
    }
    let parts: Vec<String> = run_layout::Split::ALL
        .iter()
        .map(|s| format!("{s} {} pairs / {} sources", r.pairs[s], r.sources[s]))
        .collect();
    println!(
        "split ({}): {} -> {}",
        cfg.split.mode,
        parts.join(", "),
        cfg.layout().dataset().display()
    );
    Ok(r.manifest)
}

/// Statistics, then the sample sheets, of the split manifest `m`; returns the sheets' paths.
fn run_stats(cfg: &Config, m: &manifest::Manifest) -> Result<Vec<std::path::PathBuf>> {
    let s = stats::stats(cfg, m)?;
    io::commit_point("stats: stats.png written");
    print!("{}", stats::summary(&s));
    let run = cfg.layout();
    println!(
        "statistics -> {} and {}",
        run.stats_json().display(),
        run.stats_png().display()
    );
    let sheets = preview::sample_sheets(cfg, m)?;
    for p in &sheets {
        println!("samples -> {}", p.display());
    }
    io::commit_point("stats: sample sheets written");
    Ok(sheets)
}

/// Prints [`manifest::Manifest::failed_warning`] of the run's set, if any: a stage that reads a
/// set committed without some of its sources says so.
fn warn_failed(cfg: &Config, m: &manifest::Manifest) {
    if let Some(w) = m.failed_warning(&cfg.run_dir()) {
        eprintln!("warning: {w}");
    }
}

/// `s` with control characters escaped (`\n`, `\u{1b}` ...): a file name is printed as one line
/// that cannot move the cursor or forge another line of the report.
fn printable(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

fn run_verify(cfg: &Config) -> Result<ExitCode> {
    // A reader: refused while a writer holds the folder (it would see half-made state); shared,
    // so that several verifies (and `--shard` processes, which write only under shards/) run
    // together.
    let _lock = run_dir::lock_shared(&apart_run_dir(cfg)?, "verify", false)?;
    let r = manifest::verify(cfg)?;
    for (what, list) in [
        ("changed", &r.changed),
        ("missing", &r.missing),
        ("extra", &r.extra),
        ("failed source", &r.failed),
    ] {
        for f in list {
            println!("{what}: {}", printable(f));
        }
    }
    for f in &r.records {
        println!("{}", printable(f));
    }
    // A journal beside a complete manifest: a generation or merge interrupted before its
    // commit began (the set verified is the earlier one, still whole) or just after it ended
    // (the set verified is its own); either way the journal says what finishes it.
    let run = cfg.layout();
    match generate::journal_key(&run)? {
        None => {}
        Some(Some(key)) if key == cfg.generation_key() => eprintln!(
            "note: {} is left by a generation of this config that did not finish; the set \
             verified here is the one manifest.json records; rerun {} to finish it (once the \
             sources it could not read, if any, are fixed)",
            run.journal().display(),
            generate::finish_hint(&run)
        ),
        Some(Some(key)) => eprintln!(
            "note: {} is left by an interrupted generation with other settings (generation key \
             {}); the set verified here is the one manifest.json records; finish that \
             generation with the config it was made with (`pipeline generate --resume`), or \
             replace it with `pipeline generate --force` and this config",
            run.journal().display(),
            &key[..key.len().min(12)]
        ),
        Some(None) => eprintln!(
            "note: {} is not a journal of pipeline (no journal header); `pipeline generate` \
             refuses to run beside it: move it away",
            run.journal().display()
        ),
    }
    if r.is_clean() {
        println!("verified {} files: all match manifest.json", r.checked);
        Ok(ExitCode::SUCCESS)
    } else {
        println!(
            "verify failed: {} changed, {} missing, {} extra (of {} listed files){}{}",
            r.changed.len(),
            r.missing.len(),
            r.extra.len(),
            r.checked,
            if r.records.is_empty() {
                String::new()
            } else {
                format!(
                    "; {} record problem(s): pairs not one per source and variant of this \
                     config, or a split that disagrees with itself",
                    r.records.len()
                )
            },
            if r.failed.is_empty() {
                String::new()
            } else {
                format!(
                    "; the set lacks {} source(s) that could not be generated (rerun `pipeline \
                     generate` once they are fixed)",
                    r.failed.len()
                )
            }
        );
        Ok(ExitCode::from(1))
    }
}

/// Loads the config and applies the command-line overrides.
pub fn load(args: &ConfigArgs) -> Result<Config> {
    let mut cfg = Config::load(&args.config)?;
    if let Some(out) = &args.out {
        cfg.out = out.clone();
    }
    Ok(cfg)
}

/// Loads the config for a training stage: [`load`], then the checks only training needs (the
/// image side must fit the network).
fn load_for_training(args: &ConfigArgs) -> Result<Config> {
    let cfg = load(args)?;
    check_training(&cfg, &args.config)?;
    Ok(cfg)
}

/// Training picks its best epoch and lowers its learning rate by the validation loss, so it
/// needs a validation split: refused up front (before `all` generates) when `split.valid` is 0.
fn check_validation(cfg: &Config, file: &std::path::Path) -> Result<()> {
    if cfg.split.valid <= 0.0 {
        anyhow::bail!(
            "invalid config file {} for training: `split.valid` is 0, but training needs a \
             validation split (it keeps the epoch with the best validation loss and lowers the \
             learning rate by it); set `split.valid` above 0 (0.15 by default), or run \
             `pipeline all --no-train` to make the data set only",
            file.display()
        );
    }
    Ok(())
}

fn check_training(cfg: &Config, file: &std::path::Path) -> Result<()> {
    cfg.model
        .check_size(cfg.generate.size)
        .with_context(|| format!("invalid config file {}", file.display()))
}
