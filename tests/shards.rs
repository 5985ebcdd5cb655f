//! `generate --shard K/N`, `merge` and `infer --shard K/N` through the real binary, on tiny
//! synthetic data: shards run as separate processes at once, then merged, give the bytes of a
//! single run; missing, duplicate, unfinished and other-config shards are named; a shard or a
//! merge killed at a commit point and rerun ends identical; the same K twice at once is refused.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use common::*;

/// The scheduler variables a shard reads; cleared so the host's environment cannot interfere.
const SCHEDULER_ENV: [&str; 5] = [
    "SLURM_ARRAY_TASK_ID",
    "SLURM_ARRAY_TASK_COUNT",
    "SLURM_ARRAY_TASK_MIN",
    "JOB_COMPLETION_INDEX",
    "PIPELINE_SHARD_COUNT",
];

/// 7 sources, and configs writing to `<root>/single` and `<root>/out`.
struct Case {
    _dir: tempfile::TempDir,
    root: PathBuf,
    data: PathBuf,
}

impl Case {
    fn new() -> Case {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let data = root.join("data");
        tiny_dataset(&data, 7, 64, 48);
        Case {
            _dir: dir,
            root,
            data,
        }
    }

    /// A config writing to `<root>/<out>` (seed 3 unless `seed`).
    fn config(&self, file: &str, out: &str, seed: u64) -> String {
        let json = format!(
            r#"{{"name": "t", "seed": {seed}, "data": "{}", "out": "{}",
  "generate": {{"size": 48, "variants": {{"rotate": [90], "shrink": [], "shear_x": [], "shear_y": [],
    "distort": [0.02], "distort_sigma": 6, "elastic": [{{"alpha": 40, "sigma": 4}}],
    "lens": {{"centres": [[0.5, 0.5]]}}}}}},
  "model": {{"levels": 2, "base_filters": 4}},
  "train": {{"epochs": 1, "batch_size": 2, "preview_images": 0}}}}"#,
            self.data.display(),
            self.root.join(out).display()
        );
        config(&self.root, file, &json).display().to_string()
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_pipeline"));
        c.args(args);
        for v in SCHEDULER_ENV {
            c.env_remove(v);
        }
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(o.status.success(), "{args:?}: {}", text(&o));
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// The single-machine reference: `<root>/single/t`.
    fn single(&self) -> PathBuf {
        let cfg = self.config("single", "single", 3);
        self.ok(&["generate", "--config", &cfg]);
        self.root.join("single/t")
    }

    /// Starts every shard of `n` at once (1 thread each) and waits for all.
    fn shards(&self, cfg: &str, n: u32) {
        let children: Vec<(u32, Child)> = (0..n)
            .map(|k| {
                let shard = format!("{k}/{n}");
                let child = self
                    .cmd(&[
                        "generate",
                        "--config",
                        cfg,
                        "--threads",
                        "1",
                        "--shard",
                        &shard,
                    ])
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap();
                (k, child)
            })
            .collect();
        for (k, c) in children {
            let o = c.wait_with_output().unwrap();
            assert!(o.status.success(), "shard {k}/{n}: {}", text(&o));
            let stdout = String::from_utf8_lossy(&o.stdout);
            assert!(
                stdout.contains(&format!("shard {k}/{n} (from --shard {k}/{n})")),
                "{stdout}"
            );
        }
    }
}

fn text(o: &Output) -> String {
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The manifest's bytes and the master tree's files: what must equal the single run.
fn result(run: &Path) -> (Vec<u8>, Vec<(String, Vec<u8>)>) {
    (
        std::fs::read(run.join("manifest.json")).unwrap(),
        tree(&run.join("master")),
    )
}

fn assert_same(run: &Path, single: &Path, what: &str) {
    let (m, t) = result(run);
    let (sm, st) = result(single);
    assert!(m == sm, "{what}: manifest.json differs from the single run");
    assert_eq!(t.len(), st.len(), "{what}: file count");
    assert!(t == st, "{what}: master files differ from the single run");
}

fn assert_refused(o: &Output, needles: &[&str]) {
    let all = text(o);
    assert!(!o.status.success(), "expected failure: {all}");
    assert!(!all.contains("panicked at"), "{all}");
    for n in needles {
        assert!(all.contains(n), "output lacks {n:?}:\n{all}");
    }
}

#[test]
fn one_two_three_and_seven_shards_merged_equal_a_single_run() {
    let c = Case::new();
    let single = c.single();
    assert_eq!(tree(&single.join("master")).len(), 7 * 8 * 2);
    for n in [1u32, 2, 3, 7] {
        let out = format!("out{n}");
        let cfg = c.config(&format!("cfg{n}"), &out, 3);
        c.shards(&cfg, n);
        let merged = c.ok(&["merge", "--config", &cfg]);
        assert!(
            merged.contains("merged 56 pairs from 7 sources"),
            "{merged}"
        );
        assert_same(
            &c.root.join(&out).join("t"),
            &single,
            &format!("{n} shards"),
        );
    }
    // After the merge the run is an ordinary one.
    let cfg = c.config("cfg3", "out3", 3);
    c.ok(&["split", "--config", &cfg]);
    c.ok(&["stats", "--config", &cfg]);
    let v = c.ok(&["verify", "--config", &cfg]);
    assert!(v.contains("all match"), "{v}");
}

#[test]
fn shard_index_from_slurm_and_indexed_job_environments() {
    let c = Case::new();
    let single = c.single();
    let cfg = c.config("cfg", "out", 3);
    // Slurm array --array=1-2: task 1 is shard 0 of 2.
    let o = c
        .cmd(&["generate", "--config", &cfg])
        .env("SLURM_ARRAY_TASK_ID", "1")
        .env("SLURM_ARRAY_TASK_MIN", "1")
        .env("SLURM_ARRAY_TASK_COUNT", "2")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("shard 0/2 (from SLURM_ARRAY_TASK_ID=1 (SLURM_ARRAY_TASK_MIN=1)"),
        "{}",
        text(&o)
    );
    // Kubernetes Indexed Job: index 1, count on the command line.
    let o = c
        .cmd(&["generate", "--config", &cfg, "--shard-count", "2"])
        .env("JOB_COMPLETION_INDEX", "1")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("shard 1/2 (from JOB_COMPLETION_INDEX=1 of --shard-count 2)"),
        "{}",
        text(&o)
    );
    // Without a count the index alone is refused, naming what is missing.
    let o = c
        .cmd(&["generate", "--config", &cfg])
        .env("JOB_COMPLETION_INDEX", "1")
        .output()
        .unwrap();
    assert_refused(&o, &["--shard-count", "PIPELINE_SHARD_COUNT"]);
    // --shard names its own count: a --shard-count beside it is refused, not ignored.
    let o = c
        .cmd(&[
            "generate",
            "--config",
            &cfg,
            "--shard",
            "1/2",
            "--shard-count",
            "3",
        ])
        .output()
        .unwrap();
    assert_refused(&o, &["--shard-count", "--shard"]);
    c.ok(&["merge", "--config", &cfg]);
    assert_same(&c.root.join("out/t"), &single, "environment shards");
    // --no-shard ignores the environment: an ordinary run.
    let cfg2 = c.config("cfg2", "plain", 3);
    let o = c
        .cmd(&["generate", "--config", &cfg2, "--no-shard"])
        .env("JOB_COMPLETION_INDEX", "1")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    assert_same(&c.root.join("plain/t"), &single, "--no-shard");
}

#[test]
fn missing_shard_is_named() {
    let c = Case::new();
    let cfg = c.config("cfg", "out", 3);
    for k in [0, 2] {
        c.ok(&["generate", "--config", &cfg, "--shard", &format!("{k}/3")]);
    }
    let o = c.run(&["merge", "--config", &cfg]);
    assert_refused(
        &o,
        &["shard 1-of-3 is missing", "pipeline generate --shard 1/3"],
    );
    assert!(!c.root.join("out/t/manifest.json").exists());
    assert!(!c.root.join("out/t/master").exists());
}

#[test]
fn unfinished_shard_is_named() {
    let c = Case::new();
    let cfg = c.config("cfg", "out", 3);
    c.ok(&["generate", "--config", &cfg, "--shard", "0/2"]);
    // Killed before its record: the folder exists, the record does not.
    let o = c
        .cmd(&["generate", "--config", &cfg, "--shard", "1/2"])
        .env("PIPELINE_ABORT_AT_COMMIT", "3")
        .output()
        .unwrap();
    assert!(!o.status.success());
    let o = c.run(&["merge", "--config", &cfg]);
    assert_refused(
        &o,
        &["shard 1-of-2 has not finished", "--shard 1/2 --resume"],
    );
}

#[test]
fn duplicate_shard_is_named() {
    let c = Case::new();
    let cfg = c.config("cfg", "out", 3);
    for k in 0..2 {
        c.ok(&["generate", "--config", &cfg, "--shard", &format!("{k}/2")]);
    }
    // Two gathered copies of shard 1 (say, a retried task collected twice).
    let shards = c.root.join("out/t/shards");
    let copy = shards.join("node7");
    std::fs::create_dir_all(copy.join("master/images")).unwrap();
    std::fs::create_dir_all(copy.join("master/masks")).unwrap();
    for (rel, bytes) in tree(&shards.join("1-of-2")) {
        std::fs::write(copy.join(rel), bytes).unwrap();
    }
    let o = c.run(&["merge", "--config", &cfg]);
    assert_refused(&o, &["duplicate shard 1-of-2", "node7", "1-of-2"]);
    assert!(!c.root.join("out/t/manifest.json").exists());
}

#[test]
fn shard_of_another_config_is_refused() {
    let c = Case::new();
    let cfg = c.config("cfg", "out", 3);
    let other = c.config("other", "out", 4);
    c.ok(&["generate", "--config", &cfg, "--shard", "0/2"]);
    c.ok(&["generate", "--config", &other, "--shard", "1/2"]);
    let o = c.run(&["merge", "--config", &cfg]);
    assert_refused(&o, &["shard 1-of-2", "was made with another config"]);
    assert!(!c.root.join("out/t/manifest.json").exists());
    // And a shard folder of another config is not overwritten without --force.
    let o = c.run(&["generate", "--config", &cfg, "--shard", "1/2"]);
    assert_refused(&o, &["holds a different run", "--force"]);
}

/// A shard killed at a commit point, then rerun (plain or `--resume`), and a merge killed at a
/// commit point, then rerun, end with the bytes of a single run.
#[test]
fn killed_shard_or_merge_rerun_ends_identical() {
    let c = Case::new();
    let single = c.single();
    let cfg = c.config("cfg", "out", 3);
    c.ok(&["generate", "--config", &cfg, "--shard", "0/2"]);
    let kill = |args: &[&str], only: &str, n: u32| {
        let o = c
            .cmd(args)
            .env("PIPELINE_ABORT_AT_COMMIT", n.to_string())
            .env("PIPELINE_ABORT_ONLY", only)
            .output()
            .unwrap();
        assert!(
            String::from_utf8_lossy(&o.stderr).contains("aborting at commit point"),
            "not killed at {only} {n}: {}",
            text(&o)
        );
    };
    let shard1 = ["generate", "--config", cfg.as_str(), "--shard", "1/2"];
    let resume = [
        "generate",
        "--config",
        cfg.as_str(),
        "--shard",
        "1/2",
        "--resume",
    ];
    for (i, (only, n)) in [
        ("generate: journal started", 1),
        ("generate: pair journaled", 5),
        ("generate: staging became master", 1),
        ("generate: shard record written", 1),
    ]
    .into_iter()
    .enumerate()
    {
        kill(&shard1, only, n);
        c.ok(if i % 2 == 0 { &resume } else { &shard1 });
        c.ok(&["merge", "--config", &cfg]);
        assert_same(
            &c.root.join("out/t"),
            &single,
            &format!("shard killed at {only}"),
        );
    }
    let merge = ["merge", "--config", cfg.as_str()];
    for (only, n) in [
        ("merge: pair placed", 7),
        ("merge: commit record written", 1),
        ("generate: master set aside", 1),
    ] {
        kill(&merge, only, n);
        // verify names the command that finishes it (the README's: rerun the merge), whether
        // it refuses (no earlier set) or verifies the earlier set with a note.
        let o = c.run(&["verify", "--config", &cfg]);
        let e = String::from_utf8_lossy(&o.stderr);
        assert!(
            e.contains("pipeline merge") && !e.contains("panicked"),
            "{only}: {}",
            text(&o)
        );
        c.ok(&merge);
        assert_same(
            &c.root.join("out/t"),
            &single,
            &format!("merge killed at {only}"),
        );
    }
}

/// Holds an exclusive `flock` on `path` (as a running shard does), with a holder line.
fn hold(path: &Path, holder: &str) -> std::fs::File {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, holder).unwrap();
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    fs4::FileExt::try_lock(&f).unwrap();
    f
}

#[test]
fn same_shard_twice_at_once_is_refused_other_shards_run() {
    let c = Case::new();
    let cfg = c.config("cfg", "out", 3);
    let run = c.root.join("out/t");
    let held = hold(
        &run.join("shards/1-of-2/pipeline.lock"),
        "pid 4242 (`pipeline generate --shard 1/2`)",
    );
    let o = c.run(&["generate", "--config", &cfg, "--shard", "1/2"]);
    assert_refused(
        &o,
        &[
            "in use by another pipeline process",
            "pid 4242",
            "same shard index",
        ],
    );
    // Meanwhile another index runs, and a merge (an exclusive writer) waits for them.
    c.ok(&["generate", "--config", &cfg, "--shard", "0/2"]);
    let shared = std::fs::File::open(run.join("pipeline.lock")).unwrap();
    fs4::FileExt::try_lock_shared(&shared).unwrap();
    let o = c.run(&["merge", "--config", &cfg]);
    assert_refused(&o, &["in use by another pipeline process", "--shard"]);
    drop((held, shared));
    c.ok(&["generate", "--config", &cfg, "--shard", "1/2"]);
    c.ok(&["merge", "--config", &cfg]);
}

/// `infer --shard K/N` over an image folder: the shards together write exactly the files of one
/// unsharded run, and no file twice.
#[test]
fn infer_shards_write_the_files_of_one_run() {
    let c = Case::new();
    let cfg = c.config("cfg", "out", 3);
    c.ok(&["generate", "--config", &cfg]);
    c.ok(&["split", "--config", &cfg]);
    c.ok(&["train", "--config", &cfg, "--device", "cpu"]);
    let images = c.data.join(IMAGES);
    let images = images.to_str().unwrap();
    let whole = c.root.join("whole");
    c.ok(&[
        "infer",
        "--config",
        &cfg,
        "--device",
        "cpu",
        "--images",
        images,
        "--infer-dir",
        whole.to_str().unwrap(),
    ]);
    let sharded = c.root.join("sharded");
    let mut per_shard = Vec::new();
    let children: Vec<Child> = (0..2)
        .map(|k| {
            c.cmd(&[
                "infer",
                "--config",
                &cfg,
                "--device",
                "cpu",
                "--images",
                images,
                "--infer-dir",
                sharded.to_str().unwrap(),
                "--shard",
                &format!("{k}/2"),
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
        })
        .collect();
    for ch in children {
        let o = ch.wait_with_output().unwrap();
        assert!(o.status.success(), "{}", text(&o));
        let n = String::from_utf8_lossy(&o.stdout)
            .lines()
            .filter(|l| l.contains("_mask.png ("))
            .count();
        per_shard.push(n);
    }
    assert_eq!(per_shard.iter().sum::<usize>(), 7, "{per_shard:?}");
    assert!(per_shard.iter().all(|&n| n < 7), "{per_shard:?}");
    assert!(tree(&whole) == tree(&sharded), "sharded infer differs");
}

#[test]
fn a_users_shard_json_is_not_overwritten() {
    let c = Case::new();
    let cfg = c.config("cfg", "out", 3);
    let dir = c.root.join("out/t/shards/0-of-2");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("shard.json"), b"mine").unwrap();
    let o = c.run(&["generate", "--config", &cfg, "--shard", "0/2"]);
    assert_refused(&o, &["shard.json", "not made by pipeline"]);
    assert_eq!(std::fs::read(dir.join("shard.json")).unwrap(), b"mine");
}

/// A shard rerun whose sources now fail keeps its earlier set, and with it that set's record;
/// merge sends the user back to that shard (its journal waits for `--resume`), and once the
/// input is back and the shard resumed, the merge is that of a single run.
#[test]
fn a_shard_rerun_that_keeps_its_earlier_set_keeps_its_record() {
    let c = Case::new();
    let single = c.single();
    let cfg = c.config("cfg", "out", 3);
    c.ok(&["generate", "--config", &cfg, "--shard", "0/2"]);
    c.ok(&["generate", "--config", &cfg, "--shard", "1/2"]);
    let record_path = c.root.join("out/t/shards/0-of-2/shard.json");
    let record = std::fs::read(&record_path).unwrap();
    let images: Vec<(PathBuf, Vec<u8>)> = (1..=7)
        .map(|i| {
            let p = c.data.join(IMAGES).join(format!("image{i:03}.png"));
            let bytes = std::fs::read(&p).unwrap();
            std::fs::write(&p, b"").unwrap();
            (p, bytes)
        })
        .collect();
    let o = c.run(&["generate", "--config", &cfg, "--shard", "0/2"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("earlier complete set"), "{}", text(&o));
    assert_eq!(std::fs::read(&record_path).unwrap(), record);
    let o = c.run(&["merge", "--config", &cfg]);
    assert_refused(&o, &["shard 0-of-2", "--shard 0/2 --resume"]);
    for (p, bytes) in images {
        std::fs::write(p, bytes).unwrap();
    }
    c.ok(&["generate", "--config", &cfg, "--shard", "0/2", "--resume"]);
    c.ok(&["merge", "--config", &cfg]);
    assert_same(&c.root.join("out/t"), &single, "merge after the kept shard");
}

#[test]
fn merge_names_the_shard_command_for_a_shard_manifest_it_cannot_read() {
    let c = Case::new();
    let cfg = c.config("cfg", "out", 3);
    c.ok(&["generate", "--config", &cfg, "--shard", "0/2"]);
    c.ok(&["generate", "--config", &cfg, "--shard", "1/2"]);
    let path = c.root.join("out/t/shards/1-of-2/manifest.json");
    let mut m: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    m["schema"] = serde_json::json!("fundus-pipeline/manifest/v2");
    std::fs::write(&path, serde_json::to_vec(&m).unwrap()).unwrap();
    let o = c.run(&["merge", "--config", &cfg]);
    assert_refused(
        &o,
        &["manifest/v2", "pipeline generate --shard 1/2 --force"],
    );
    c.ok(&["generate", "--config", &cfg, "--shard", "1/2", "--force"]);
    c.ok(&["merge", "--config", &cfg]);
}

#[test]
fn merge_refuses_changed_inputs_and_a_shard_whose_rerun_was_killed() {
    let c = Case::new();
    let cfg = c.config("cfg", "out", 3);
    c.ok(&["generate", "--config", &cfg, "--shard", "0/2"]);
    c.ok(&["generate", "--config", &cfg, "--shard", "1/2"]);
    // Every photograph changes content but keeps its size: the shards' sets are stale.
    for i in 1..=7 {
        let p = c.data.join(IMAGES).join(format!("image{i:03}.png"));
        let mut img = image::open(&p).unwrap().to_rgb8();
        image::imageops::colorops::invert(&mut img);
        img.save(&p).unwrap();
    }
    let o = c.run(&["merge", "--config", &cfg]);
    assert_refused(&o, &["changed", "since the shard read it", "--shard"]);
    // A rerun of shard 1 killed once it started: its old record must not be merged.
    let o = c
        .cmd(&["generate", "--config", &cfg, "--shard", "1/2"])
        .env("PIPELINE_ABORT_AT_COMMIT", "1")
        .output()
        .unwrap();
    assert!(!o.status.success(), "{}", text(&o));
    let o = c.run(&["merge", "--config", &cfg]);
    assert_refused(&o, &["shard 1-of-2 has not finished"]);
    assert!(!c.root.join("out/t/manifest.json").exists());
}

#[test]
fn split_before_the_merge_says_to_run_merge() {
    let c = Case::new();
    let cfg = c.config("cfg", "out", 3);
    c.ok(&["generate", "--config", &cfg, "--shard", "0/2"]);
    let o = c.run(&["split", "--config", &cfg]);
    assert_refused(&o, &["pipeline merge"]);
}
