//! A dataset you can trust (issue 10): any input, any fault, nothing lost, nothing silently
//! wrong. One test per case, through the real binary on tiny synthetic data, grouped by kind:
//!
//! 1. never delete or overwrite what the tool did not make;
//! 2. one writer at a time, readers refuse half-made state;
//! 3. a kill at any commit point, then the documented resume or rerun, gives the same bytes;
//! 4. one reader contract;
//! 5. splits honour the ratios and keep identical sources together;
//! 6. every accepted config value makes a working run.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::*;

/// The crash-test hook (`fundus_pipeline::io::ABORT_ENV`).
const ABORT: &str = "PIPELINE_ABORT_AT_COMMIT";

/// A tiny dataset and a config (8 variants at 48 px) in a temporary folder.
struct Case {
    _dir: tempfile::TempDir,
    root: PathBuf,
    data: PathBuf,
    config: PathBuf,
}

impl Case {
    fn new(n: usize) -> Case {
        Case::with(n, "")
    }

    fn with(n: usize, extra: &str) -> Case {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let data = root.join("data");
        tiny_dataset(&data, n, 64, 48);
        let config = case_config(&root, "cfg", &data, &root.join("out"), "t", extra);
        Case {
            _dir: dir,
            root,
            data,
            config,
        }
    }

    /// Three variants (orig, hflip, elastic) for the kill-everywhere tests: every kind of
    /// commit point, few of each.
    fn lean(n: usize) -> Case {
        let c = Case::new(n);
        c.edit_config(r#""rotate": [90]"#, r#""rotate": [], "vflip": false"#);
        c.edit_config(r#""distort": [0.02]"#, r#""distort": []"#);
        c.edit_config(
            r#""lens": {"centres""#,
            r#""lens": {"barrel": false, "pincushion": false, "centres""#,
        );
        c
    }

    fn cfg(&self) -> &str {
        self.config.to_str().unwrap()
    }

    fn run_dir(&self) -> PathBuf {
        self.root.join("out/t")
    }

    fn run(&self, args: &[&str]) -> Output {
        let mut all = args.to_vec();
        all.extend(["--config", self.cfg()]);
        pipeline(&all)
    }

    fn ok(&self, args: &[&str]) -> String {
        let mut all = args.to_vec();
        all.extend(["--config", self.cfg()]);
        pipeline_ok(&all)
    }

    /// Runs `args` with the crash hook at commit point `n`; true when it aborted there.
    fn run_killed_at(&self, args: &[&str], n: usize) -> bool {
        let mut all = args.to_vec();
        all.extend(["--config", self.cfg()]);
        let out = Command::new(env!("CARGO_BIN_EXE_pipeline"))
            .args(&all)
            .env(ABORT, n.to_string())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        if stderr.contains(&format!("{ABORT}: aborting at commit point {n}")) {
            assert!(!out.status.success());
            return true;
        }
        assert!(!stderr.contains("panicked"), "{stderr}");
        false
    }

    /// Runs `args` killed at the first commit point whose label contains `label`.
    fn kill_at_label(&self, args: &[&str], label: &str) {
        let mut all = args.to_vec();
        all.extend(["--config", self.cfg()]);
        for n in 1..1000 {
            let snapshot = tree(&self.run_dir());
            let out = Command::new(env!("CARGO_BIN_EXE_pipeline"))
                .args(&all)
                .env(ABORT, n.to_string())
                .output()
                .unwrap();
            if stderr(&out).contains(label) {
                return;
            }
            assert!(!out.status.success(), "no commit point {label:?}");
            restore(&self.run_dir(), &snapshot);
        }
    }

    fn edit_config(&self, from: &str, to: &str) {
        let text = std::fs::read_to_string(&self.config).unwrap();
        assert!(text.contains(from), "config lacks {from}");
        std::fs::write(&self.config, text.replace(from, to)).unwrap();
    }

    /// Moves the ground-truth folder away (an empty one in its place: every source fails);
    /// returns where it went, for [`Case::restore_truths`].
    fn hide_truths(&self) -> PathBuf {
        let away = self.root.join("truth-away");
        std::fs::rename(self.data.join(TRUTH), &away).unwrap();
        std::fs::create_dir_all(self.data.join(TRUTH)).unwrap();
        away
    }

    fn restore_truths(&self, away: &Path) {
        std::fs::remove_dir(self.data.join(TRUTH)).unwrap();
        std::fs::rename(away, self.data.join(TRUTH)).unwrap();
    }

    fn image(&self, stem: &str) -> PathBuf {
        self.data.join(IMAGES).join(format!("{stem}.png"))
    }

    fn truth(&self, stem: &str) -> PathBuf {
        self.data.join(TRUTH).join(format!("{stem}.png"))
    }

    /// The name of the manifest's first pair record.
    fn first_pair_name(&self) -> String {
        self.manifest()["pairs"][0]["name"]
            .as_str()
            .unwrap()
            .to_string()
    }

    fn manifest(&self) -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(self.run_dir().join("manifest.json")).unwrap())
            .unwrap()
    }
}

fn case_config(
    dir: &Path,
    file: &str,
    data: &Path,
    out: &Path,
    name: &str,
    extra: &str,
) -> PathBuf {
    let json = format!(
        r#"{{"name": "{name}", "seed": 3, "data": "{}", "out": "{}",
  "generate": {{"size": 48, "variants": {{"rotate": [90], "shrink": [], "shear_x": [], "shear_y": [],
    "distort": [0.02], "distort_sigma": 6, "elastic": [{{"alpha": 40, "sigma": 4}}],
    "lens": {{"centres": [[0.5, 0.5]]}}}}}},
  "split": {{"train": 0.5, "valid": 0.25, "test": 0.25}},
  "stats": {{"samples_per_split": 2}},
  "model": {{"levels": 2, "base_filters": 4}},
  "train": {{"epochs": 1, "batch_size": 2, "preview_images": 1}}{extra}}}"#,
        data.display(),
        out.display()
    );
    config(dir, file, &json)
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Non-zero exit, every needle in stderr, no panic.
fn assert_refused(o: &Output, needles: &[&str]) {
    let e = stderr(o);
    assert!(!o.status.success(), "expected a refusal; stderr:\n{e}");
    assert!(!e.contains("panicked"), "{e}");
    for n in needles {
        assert!(e.contains(n), "stderr lacks {n:?}:\n{e}");
    }
}

/// `verify` passes.
fn assert_verified(c: &Case) {
    let out = c.ok(&["verify"]);
    assert!(out.contains("all match manifest.json"), "{out}");
}

/// Everything under `dir` except the lock file, with bytes.
fn run_tree(dir: &Path) -> Vec<(String, Vec<u8>)> {
    tree(dir)
        .into_iter()
        .filter(|(p, _)| p != "pipeline.lock" && p != "run.json")
        .collect()
}

// ---------------------------------------------------------------- 1. never delete or overwrite

#[test]
fn run_folder_equal_to_the_dataset_root_is_refused() {
    let c = Case::new(2);
    let before = tree(&c.data);
    let cfg = case_config(&c.root, "same", &c.data, &c.root, "data", "");
    let o = pipeline(&["generate", "--config", cfg.to_str().unwrap()]);
    assert_refused(&o, &["is the dataset root", "nothing was written"]);
    let o = pipeline(&["generate", "--config", cfg.to_str().unwrap(), "--force"]);
    assert_refused(&o, &["is the dataset root"]);
    assert_eq!(tree(&c.data), before, "the dataset changed");
}

#[test]
fn run_folder_inside_the_dataset_is_refused() {
    let c = Case::new(2);
    let cfg = case_config(
        &c.root,
        "inside",
        &c.data,
        &c.data.join("resources"),
        "t",
        "",
    );
    let o = pipeline(&["generate", "--config", cfg.to_str().unwrap()]);
    assert_refused(&o, &["lies inside the dataset root"]);
    assert!(!c.data.join("resources/t").exists());
}

#[test]
fn run_folder_containing_the_dataset_is_refused() {
    let c = Case::new(2);
    // data = <root>/data, run folder = <root>/out/.. /data's parent: out = root's parent, name = root's name
    let parent = c.root.parent().unwrap();
    let name = c.root.file_name().unwrap().to_str().unwrap();
    let cfg = case_config(&c.root, "contains", &c.data, parent, name, "");
    let o = pipeline(&["generate", "--config", cfg.to_str().unwrap()]);
    assert_refused(&o, &["contains the dataset root"]);
    assert!(!c.root.join("master").exists());
}

#[test]
fn force_removes_only_files_the_tool_recorded() {
    let c = Case::new(2);
    c.ok(&["generate"]);
    c.ok(&["split"]);
    let run = c.run_dir();
    std::fs::write(run.join("master/images/my-notes.txt"), b"mine").unwrap();
    std::fs::write(run.join("my-results.csv"), b"mine").unwrap();
    // A recorded file edited since (a mask touched up by hand): not the tool's bytes any more.
    let name = c.first_pair_name();
    let edited = format!("masks/{name}.png");
    std::fs::write(run.join("master").join(&edited), b"my touched-up mask").unwrap();
    c.edit_config(r#""seed": 3"#, r#""seed": 4"#);
    assert_refused(&c.run(&["generate"]), &["holds a different run", "--force"]);
    let o = c.run(&["generate", "--force"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("not deleted"), "{}", stderr(&o));
    assert_eq!(std::fs::read(run.join("my-results.csv")).unwrap(), b"mine");
    assert_eq!(
        std::fs::read(run.join("unrecorded-1/images/my-notes.txt")).unwrap(),
        b"mine"
    );
    assert_eq!(
        std::fs::read(run.join("unrecorded-1").join(&edited)).unwrap(),
        b"my touched-up mask"
    );
    assert!(stderr(&o).contains("edited?"), "{}", stderr(&o));
    // Its split copy is a hard link of it, so it was edited too: left in dataset/, with a note.
    assert!(
        stderr(&o).contains("1 file(s) of the old split"),
        "{}",
        stderr(&o)
    );
    let left = files_named(&run.join("dataset"), &format!("{name}.png"));
    assert_eq!(left.len(), 1, "{left:?}");
    assert!(
        stderr(&o).contains(&format!("e.g. {}", left[0].display())),
        "{}",
        stderr(&o)
    );
    assert_eq!(std::fs::read(&left[0]).unwrap(), b"my touched-up mask");
    std::fs::remove_file(&left[0]).unwrap();
    assert_verified(&c);
}

/// Files named `name` anywhere under `dir`.
fn files_named(dir: &Path, name: &str) -> Vec<PathBuf> {
    tree(dir)
        .into_iter()
        .filter(|(p, _)| p.ends_with(&format!("/{name}")))
        .map(|(p, _)| dir.join(p))
        .collect()
}

#[test]
fn rerun_whose_sources_all_fail_keeps_the_earlier_set() {
    let c = Case::new(3);
    c.ok(&["generate"]);
    c.ok(&["split"]);
    let before = run_tree(&c.run_dir());
    let away = c.hide_truths();
    let o = c.run(&["generate"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("earlier complete set"),
        "{}",
        stderr(&o)
    );
    c.restore_truths(&away);
    let after: Vec<_> = run_tree(&c.run_dir())
        .into_iter()
        .filter(|(p, _)| !p.starts_with("staging") && p != "generate.journal")
        .collect();
    assert!(after == before, "the earlier set changed");
    assert_verified(&c);
    c.ok(&["stats"]);
}

#[test]
fn rerun_with_one_source_failing_keeps_the_earlier_set_and_resume_finishes() {
    let c = Case::new(3);
    c.ok(&["generate"]);
    let manifest = std::fs::read(c.run_dir().join("manifest.json")).unwrap();
    let good = std::fs::read(c.image("image002")).unwrap();
    std::fs::write(c.image("image002"), b"").unwrap();
    let o = c.run(&["generate"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("image002"), "{}", stderr(&o));
    assert_eq!(
        std::fs::read(c.run_dir().join("manifest.json")).unwrap(),
        manifest
    );
    std::fs::write(c.image("image002"), good).unwrap();
    let out = c.ok(&["generate", "--resume"]);
    assert!(out.contains("kept from the interrupted run"), "{out}");
    assert_eq!(
        std::fs::read(c.run_dir().join("manifest.json")).unwrap(),
        manifest
    );
    assert_verified(&c);
}

#[test]
fn corrupt_manifest_does_not_block_recovery() {
    let c = Case::new(2);
    c.ok(&["generate"]);
    let good = std::fs::read(c.run_dir().join("manifest.json")).unwrap();
    std::fs::write(c.run_dir().join("manifest.json"), b"{\"schema\": tru").unwrap();
    assert_refused(
        &c.run(&["generate"]),
        &["manifest.json is unreadable", "--force"],
    );
    c.ok(&["generate", "--force"]);
    assert_eq!(
        std::fs::read(c.run_dir().join("manifest.json")).unwrap(),
        good
    );
    assert_verified(&c);
}

#[test]
fn empty_manifest_does_not_block_recovery() {
    let c = Case::new(3);
    c.ok(&["generate"]);
    c.ok(&["split"]);
    let good = std::fs::read(c.run_dir().join("manifest.json")).unwrap();
    std::fs::write(c.run_dir().join("manifest.json"), b"").unwrap();
    assert_refused(&c.run(&["split"]), &["manifest.json", "--force"]);
    let o = c.run(&["generate", "--force"]);
    assert!(o.status.success(), "{}", stderr(&o));
    // The old split's files cannot be named any more: they stay, with a note.
    assert!(stderr(&o).contains("left in place"), "{}", stderr(&o));
    c.ok(&["split"]);
    assert!(
        std::fs::read(c.run_dir().join("manifest.json")).unwrap() == good,
        "the recovered run differs from the original"
    );
    assert_verified(&c);
}

#[test]
fn file_in_the_dataset_that_no_manifest_records_is_refused_by_name() {
    let c = Case::new(3);
    c.ok(&["generate"]);
    c.ok(&["split"]);
    let mine = c.run_dir().join("dataset/train/images/mine.png");
    std::fs::write(&mine, b"mine").unwrap();
    let manifest = std::fs::read(c.run_dir().join("manifest.json")).unwrap();
    let before = run_tree(&c.run_dir());
    assert_refused(
        &c.run(&["split"]),
        &["mine.png", "is not recorded in", "nothing was changed"],
    );
    assert_eq!(std::fs::read(&mine).unwrap(), b"mine");
    // Refused before anything changed: the split and its manifest are as they were.
    assert!(run_tree(&c.run_dir()) == before, "the run changed");
    std::fs::remove_file(&mine).unwrap();
    // A folder, then a link, at a name the split recorded: refused, nothing changed.
    let recorded = c.run_dir().join("dataset/train/images");
    let victim = std::fs::read_dir(&recorded)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "png"))
        .unwrap();
    std::fs::remove_file(&victim).unwrap();
    std::fs::create_dir(&victim).unwrap();
    assert_refused(
        &c.run(&["split"]),
        &["is not the file pipeline links there"],
    );
    assert_eq!(
        std::fs::read(c.run_dir().join("manifest.json")).unwrap(),
        manifest
    );
    std::fs::remove_dir(&victim).unwrap();
    std::os::unix::fs::symlink("/etc/hostname", &victim).unwrap();
    assert_refused(
        &c.run(&["split"]),
        &["is not the file pipeline links there"],
    );
    assert!(victim.symlink_metadata().unwrap().file_type().is_symlink());
    std::fs::remove_file(&victim).unwrap();
    c.ok(&["split"]);
    assert_verified(&c);
}

// ---------------------------------------------------------- 2. one writer, readers refuse

#[test]
fn second_writer_is_refused_while_the_first_runs() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    tiny_dataset(&data, 30, 200, 150);
    let out = dir.path().join("out");
    let a = case_config(dir.path(), "a", &data, &out, "t", "");
    let slow = std::fs::read_to_string(&a)
        .unwrap()
        .replace(r#""size": 48"#, r#""size": 512"#);
    std::fs::write(&a, slow).unwrap();
    let b = case_config(dir.path(), "b", &data, &out, "t", "");
    std::fs::write(
        &b,
        std::fs::read_to_string(&b)
            .unwrap()
            .replace(r#""seed": 3"#, r#""seed": 9"#),
    )
    .unwrap();
    let mut first = Command::new(env!("CARGO_BIN_EXE_pipeline"))
        .args([
            "generate",
            "--config",
            a.to_str().unwrap(),
            "--threads",
            "1",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let lock = out.join("t/pipeline.lock");
    let start = std::time::Instant::now();
    while std::fs::read_to_string(&lock).map_or(true, |t| t.is_empty()) {
        assert!(
            start.elapsed().as_secs() < 60,
            "the first writer never locked"
        );
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    let o = pipeline(&["generate", "--config", b.to_str().unwrap(), "--force"]);
    let still_running = first.try_wait().unwrap().is_none();
    assert!(first.wait().unwrap().success());
    assert!(still_running, "the first writer ended too early to test");
    assert_refused(
        &o,
        &[
            "is in use by another pipeline process",
            &format!("pid {}", first.id()),
            "out/t",
        ],
    );
    let v = pipeline_ok(&["verify", "--config", a.to_str().unwrap()]);
    assert!(v.contains("all match"), "{v}");
}

#[test]
fn train_after_a_split_killed_part_way_is_refused() {
    let c = Case::new(4);
    c.ok(&["generate"]);
    assert!(
        c.run_killed_at(&["split"], 12),
        "split ended before point 12"
    );
    let o = c.run(&["train", "--device", "cpu"]);
    assert_refused(&o, &["no complete split", "pipeline split"]);
    assert!(!c.run_dir().join("train").exists());
}

#[test]
fn stats_and_evaluate_after_a_split_killed_part_way_are_refused() {
    let c = Case::new(4);
    c.ok(&["generate"]);
    assert!(c.run_killed_at(&["split"], 5));
    assert_refused(&c.run(&["stats"]), &["no complete split", "pipeline split"]);
    assert_refused(
        &c.run(&["evaluate", "--device", "cpu"]),
        &["no complete split", "pipeline split"],
    );
    assert!(!c.run_dir().join("stats.json").exists());
}

#[test]
fn readers_refuse_a_generation_killed_while_replacing_the_set() {
    let c = Case::lean(3);
    c.ok(&["generate"]);
    c.ok(&["split"]);
    c.kill_at_label(&["generate"], "generate: master set aside");
    for args in [
        &["preview"][..],
        &["split"],
        &["stats"],
        &["train", "--device", "cpu"],
    ] {
        assert_refused(
            &c.run(args),
            &["interrupted while replacing", "pipeline generate"],
        );
    }
    c.ok(&["generate", "--resume"]);
    c.ok(&["preview"]);
}

/// Outputs made from a set that `generate --force` replaced with another config's are kept (they
/// may be wanted) and named in a note; a rerun of the same config says nothing.
#[test]
fn forced_replacement_names_the_outputs_of_the_old_set() {
    let c = Case::lean(3);
    c.ok(&["all", "--no-train"]);
    let o = c.run(&["generate"]);
    assert!(
        o.status.success() && !stderr(&o).contains("were made from the set"),
        "{}",
        stderr(&o)
    );
    c.edit_config(r#""seed": 3"#, r#""seed": 4"#);
    let o = c.run(&["generate", "--force"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(
        e.contains("stats.json") && e.contains("were made from the set this generation replaced"),
        "{e}"
    );
    assert!(c.run_dir().join("stats.json").exists());
}

/// `generate --force` with another config, killed (early, or while swapping its set in): a plain
/// rerun or `--resume` of that config finishes it (the replacement was authorized when it
/// started), with the bytes of an uninterrupted forced run; the old config is still refused.
#[test]
fn forced_replacement_killed_at_any_point_finishes_without_force() {
    let c = Case::lean(3);
    c.ok(&["generate"]);
    c.edit_config(r#""seed": 3"#, r#""seed": 4"#);
    let before = tree(&c.run_dir());
    c.ok(&["generate", "--force"]);
    let want = run_tree(&c.run_dir());
    // Killed while swapping, and killed early (only its journal exists): a plain rerun, or
    // `--resume`, of the new config finishes; the old config is refused.
    for (label, rerun) in [
        ("generate: master set aside", &["generate"][..]),
        ("generate: pair journaled", &["generate", "--resume"][..]),
    ] {
        restore(&c.run_dir(), &before);
        c.kill_at_label(&["generate", "--force"], label);
        c.edit_config(r#""seed": 4"#, r#""seed": 3"#);
        assert_refused(&c.run(&["generate"]), &["holds a different run", "--force"]);
        c.edit_config(r#""seed": 3"#, r#""seed": 4"#);
        c.ok(rerun);
        assert!(
            run_tree(&c.run_dir()) == want,
            "{label}: another result than the uninterrupted run"
        );
    }
}

// ---------------------------------------------------------- 3. kill anywhere, same bytes

/// Kills `args` at commit point 1, 2, ... until it finishes. Before each try the run folder is
/// restored to `start`; after each kill `recover` runs and the folder must equal `expected`.
/// Returns the number of points tried.
fn kill_everywhere(
    c: &Case,
    start: &[(String, Vec<u8>)],
    args: &[&str],
    recover: &[&str],
    expected: &[(String, Vec<u8>)],
) -> usize {
    for n in 1.. {
        restore(&c.run_dir(), start);
        if !c.run_killed_at(args, n) {
            assert!(
                run_tree(&c.run_dir()) == expected,
                "uninterrupted run differs"
            );
            return n - 1;
        }
        c.ok(recover);
        let got = run_tree(&c.run_dir());
        if got != expected {
            let names = |t: &[(String, Vec<u8>)]| t.iter().map(|x| x.0.clone()).collect::<Vec<_>>();
            panic!(
                "killed at commit point {n}, then {recover:?}: the folder differs\n got {:?}\n want {:?}",
                names(&got),
                names(expected)
            );
        }
    }
    unreachable!()
}

/// Replaces `dir` by the files of `snapshot` (as taken by [`tree`]).
fn restore(dir: &Path, snapshot: &[(String, Vec<u8>)]) {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).unwrap();
    for (rel, bytes) in snapshot {
        let p = dir.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, bytes).unwrap();
    }
}

#[test]
fn generate_killed_at_every_commit_point_resumes_to_the_same_bytes() {
    let c = Case::lean(2);
    c.ok(&["generate", "--threads", "1"]);
    let expected = run_tree(&c.run_dir());
    let points = kill_everywhere(
        &c,
        &[],
        &["generate", "--threads", "1"],
        &["generate", "--resume"],
        &expected,
    );
    assert!(points >= 10, "only {points} commit points");
}

#[test]
fn generate_killed_at_every_commit_point_reruns_to_the_same_bytes() {
    let c = Case::lean(2);
    c.ok(&["generate", "--threads", "1"]);
    let expected = run_tree(&c.run_dir());
    kill_everywhere(
        &c,
        &[],
        &["generate", "--threads", "1"],
        &["generate"],
        &expected,
    );
}

#[test]
fn generate_replacing_a_split_set_killed_at_every_commit_point_resumes() {
    let c = Case::lean(3);
    c.ok(&["generate", "--threads", "1"]);
    let expected = run_tree(&c.run_dir());
    c.ok(&["split"]);
    let start = tree(&c.run_dir());
    kill_everywhere(
        &c,
        &start,
        &["generate", "--threads", "1"],
        &["generate", "--resume"],
        &expected,
    );
}

#[test]
fn generate_killed_after_master_exists_before_the_journal() {
    // The state an earlier version left: master/ created, nothing recorded yet.
    let c = Case::new(2);
    c.ok(&["generate"]);
    let expected = run_tree(&c.run_dir());
    std::fs::remove_dir_all(c.run_dir()).unwrap();
    for d in ["images", "masks"] {
        std::fs::create_dir_all(c.run_dir().join("master").join(d)).unwrap();
    }
    c.ok(&["generate", "--resume"]);
    assert_eq!(run_tree(&c.run_dir()), expected);
    // With a file in it that nothing records, the refusal says so in full.
    std::fs::remove_dir_all(c.run_dir()).unwrap();
    std::fs::create_dir_all(c.run_dir().join("master/images")).unwrap();
    std::fs::write(c.run_dir().join("master/images/x.png"), b"?").unwrap();
    assert_refused(
        &c.run(&["generate", "--resume"]),
        &[
            "master/ holds 1 file(s) that no manifest or journal records",
            "this config",
            "--force",
        ],
    );
}

#[test]
fn resume_after_a_source_changed_redoes_that_source() {
    let c = Case::new(3);
    assert!(c.run_killed_at(&["generate", "--threads", "1"], 15));
    // image001 (already begun) is replaced by image003's picture.
    std::fs::copy(c.image("image003"), c.image("image001")).unwrap();
    std::fs::copy(c.truth("image003"), c.truth("image001")).unwrap();
    c.ok(&["generate", "--resume"]);
    let resumed = run_tree(&c.run_dir());
    std::fs::remove_dir_all(c.run_dir()).unwrap();
    c.ok(&["generate"]);
    assert!(run_tree(&c.run_dir()) == resumed, "resume used stale pairs");
}

#[test]
fn split_killed_at_every_commit_point_reruns_to_the_same_bytes() {
    let c = Case::lean(3);
    c.ok(&["generate"]);
    let start = tree(&c.run_dir());
    c.ok(&["split"]);
    let expected = run_tree(&c.run_dir());
    let points = kill_everywhere(&c, &start, &["split"], &["split"], &expected);
    assert!(points > 10, "only {points} commit points");
}

#[test]
fn split_rerun_killed_at_every_commit_point_reruns_to_the_same_bytes() {
    let c = Case::lean(3);
    c.ok(&["generate"]);
    c.ok(&["split"]);
    let start = tree(&c.run_dir());
    let expected = run_tree(&c.run_dir());
    kill_everywhere(&c, &start, &["split"], &["split"], &expected);
}

#[test]
fn stats_killed_at_every_commit_point_reruns_to_the_same_bytes() {
    let c = Case::lean(3);
    c.ok(&["generate"]);
    c.ok(&["split"]);
    c.ok(&["stats"]);
    let expected = run_tree(&c.run_dir());
    let outputs = [
        "stats.json",
        "stats.png",
        "samples_train.png",
        "samples_valid.png",
        "samples_test.png",
    ];
    let mut points = 0;
    for n in 1.. {
        for f in outputs {
            let _ = std::fs::remove_file(c.run_dir().join(f));
        }
        if !c.run_killed_at(&["stats"], n) {
            break;
        }
        points = n;
        c.ok(&["stats"]);
        assert!(
            run_tree(&c.run_dir()) == expected,
            "killed at {n}: stats differ"
        );
    }
    assert!(points >= 2, "only {points} commit points");
}

// ---------------------------------------------------------- 4. one reader contract

#[test]
fn upper_case_png_extensions_work_in_every_stage() {
    let c = Case::new(4);
    for stem in ["image001", "image002", "image003", "image004"] {
        std::fs::rename(c.image(stem), c.image(stem).with_extension("PNG")).unwrap();
        std::fs::rename(c.truth(stem), c.truth(stem).with_extension("PNG")).unwrap();
    }
    c.ok(&["generate"]);
    assert_eq!(c.manifest()["sources"].as_array().unwrap().len(), 4);
    c.ok(&["split"]);
    c.ok(&["train", "--device", "cpu"]);
    c.ok(&["evaluate", "--device", "cpu"]);
    let out = c.ok(&["infer", "--device", "cpu"]);
    assert!(out.contains("images written"), "{out}");
}

#[test]
fn symbolic_links_to_sources_are_followed() {
    let c = Case::new(3);
    c.ok(&["generate"]);
    let real = std::fs::read(c.run_dir().join("manifest.json")).unwrap();
    // The `cp -rs` layout: real folders, every file a link.
    let linked = c.root.join("linked");
    for e in walkdir::WalkDir::new(&c.data)
        .into_iter()
        .filter_map(Result::ok)
    {
        let to = linked.join(e.path().strip_prefix(&c.data).unwrap());
        if e.file_type().is_dir() {
            std::fs::create_dir_all(&to).unwrap();
        } else {
            std::os::unix::fs::symlink(e.path(), &to).unwrap();
        }
    }
    let cfg = case_config(&c.root, "linked", &linked, &c.root.join("out2"), "t", "");
    let o = pipeline(&["generate", "--config", cfg.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!stderr(&o).contains("warning"), "{}", stderr(&o));
    let got = std::fs::read(c.root.join("out2/t/manifest.json")).unwrap();
    assert!(got == real, "a linked tree gives another manifest");
}

#[test]
fn bmp_fundus_image_is_read() {
    let c = Case::new(2);
    let img = image::open(c.image("image002")).unwrap();
    std::fs::remove_file(c.image("image002")).unwrap();
    img.save(c.image("image002").with_extension("bmp")).unwrap();
    let o = c.run(&["generate"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(c.manifest()["sources"].as_array().unwrap().len(), 2);
}

#[test]
fn two_images_with_one_name_are_refused_by_name() {
    let c = Case::new(2);
    std::fs::copy(
        c.image("image002"),
        c.image("image002").with_extension("jpg"),
    )
    .unwrap();
    let o = c.run(&["generate"]);
    assert_eq!(o.status.code(), Some(2));
    assert_refused(&o, &["image002", "share the name", "image002.jpg"]);
}

#[test]
fn infer_reports_a_bad_input_and_does_the_others() {
    let c = Case::new(4);
    c.ok(&["generate"]);
    c.ok(&["split"]);
    c.ok(&["train", "--device", "cpu"]);
    let inputs = c.root.join("infer-in");
    std::fs::create_dir_all(&inputs).unwrap();
    let img = image::open(c.image("image001")).unwrap();
    img.save(inputs.join("a.bmp")).unwrap();
    std::fs::write(inputs.join("b.png"), b"not a picture").unwrap();
    img.save(inputs.join("c.PNG")).unwrap();
    std::fs::create_dir_all(inputs.join("d.png")).unwrap();
    let to = c.root.join("infer-out");
    let o = pipeline(&[
        "infer",
        "--config",
        c.cfg(),
        "--device",
        "cpu",
        "--images",
        inputs.to_str().unwrap(),
        "--infer-dir",
        to.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert_refused(
        &o,
        &[
            "b.png",
            "not an image file",
            "d.png has an image name but is a folder",
            "2 of 4 input image(s)",
        ],
    );
    for stem in ["a", "c"] {
        assert!(to.join(format!("{stem}_mask.png")).is_file(), "{stem}");
    }
    assert!(!to.join("b_mask.png").exists());
}

#[test]
fn infer_folder_inside_the_dataset_is_refused() {
    let c = Case::new(2);
    c.ok(&["generate"]);
    let into = c.data.join(IMAGES);
    let before = std::fs::read_dir(&into).unwrap().count();
    let o = pipeline(&[
        "infer",
        "--config",
        c.cfg(),
        "--infer-dir",
        into.to_str().unwrap(),
    ]);
    assert_refused(&o, &["lies inside the dataset root"]);
    assert_eq!(std::fs::read_dir(&into).unwrap().count(), before);
}

#[test]
fn preview_sheet_folder_inside_the_dataset_is_refused() {
    let c = Case::new(2);
    c.ok(&["generate"]);
    let into = c.data.join(IMAGES);
    let before = std::fs::read_dir(&into).unwrap().count();
    let o = pipeline(&[
        "preview",
        "--config",
        c.cfg(),
        "--sheet-dir",
        into.to_str().unwrap(),
    ]);
    assert_refused(&o, &["lies inside the dataset root"]);
    assert_eq!(std::fs::read_dir(&into).unwrap().count(), before);
}

#[test]
fn infer_output_folder_equal_to_its_input_folder_is_refused() {
    let c = Case::new(2);
    c.ok(&["generate"]);
    let inputs = c.root.join("infer-in");
    std::fs::create_dir_all(&inputs).unwrap();
    let o = pipeline(&[
        "infer",
        "--config",
        c.cfg(),
        "--images",
        inputs.to_str().unwrap(),
        "--infer-dir",
        inputs.to_str().unwrap(),
    ]);
    assert_refused(&o, &["is the image folder"]);
}

fn truth_warning(c: &Case, code: &str, needle: &str) {
    let o = c.run(&["generate"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(
        e.contains("warning: image001:") && e.contains(needle),
        "no warning {needle:?}:\n{e}"
    );
    c.ok(&["split"]);
    c.ok(&["stats"]);
    let s: serde_json::Value =
        serde_json::from_slice(&std::fs::read(c.run_dir().join("stats.json")).unwrap()).unwrap();
    assert_eq!(s["input"]["truth_warnings"][code], 1, "{}", s["input"]);
}

#[test]
fn rgb_ground_truth_with_marks_in_one_channel_is_reported() {
    let c = Case::new(3);
    let gt = image::open(c.truth("image001")).unwrap().to_luma8();
    let red = image::RgbImage::from_fn(gt.width(), gt.height(), |x, y| {
        image::Rgb([gt.get_pixel(x, y)[0], 0, 0])
    });
    red.save(c.truth("image001")).unwrap();
    truth_warning(&c, "colour-channels-differ", "channels differ");
}

#[test]
fn ground_truth_with_marks_below_the_threshold_is_reported() {
    let c = Case::new(3);
    let gt = image::open(c.truth("image001")).unwrap().to_luma8();
    let weak = image::GrayImage::from_fn(gt.width(), gt.height(), |x, y| {
        image::Luma([if gt.get_pixel(x, y)[0] > 0 { 105 } else { 0 }])
    });
    weak.save(c.truth("image001")).unwrap();
    truth_warning(&c, "empty-at-threshold", "none reaches the threshold");
}

#[test]
fn ground_truth_with_values_off_the_ddb1_levels_is_reported() {
    let c = Case::new(3);
    let gt = image::open(c.truth("image001")).unwrap().to_luma8();
    let odd = image::GrayImage::from_fn(gt.width(), gt.height(), |x, y| {
        image::Luma([if gt.get_pixel(x, y)[0] > 0 { 250 } else { 0 }])
    });
    odd.save(c.truth("image001")).unwrap();
    truth_warning(&c, "not-ddb1-levels", "not DIARETDB1 levels");
}

#[test]
fn oversized_image_gives_its_size_and_the_limit() {
    let c = Case::with(2, r#", "max_image_pixels": 3000"#);
    let o = c.run(&["generate"]);
    assert_refused(
        &o,
        &[
            "image001.png",
            "64x48 = 3072 pixels",
            "limit of 3000 pixels",
            "max_image_pixels",
        ],
    );
}

// ---------------------------------------------------------- 5. splits

#[test]
fn three_sources_with_ratios_034_033_033_give_one_each() {
    let c = Case::new(3);
    c.edit_config(
        r#""train": 0.5, "valid": 0.25, "test": 0.25"#,
        r#""train": 0.34, "valid": 0.33, "test": 0.33"#,
    );
    c.ok(&["generate"]);
    let out = c.ok(&["split"]);
    for s in ["train", "valid", "test"] {
        assert!(out.contains(&format!("{s} ")), "{out}");
    }
    let m = c.manifest();
    for s in ["train", "valid", "test"] {
        assert_eq!(m["split"]["sources"][s].as_array().unwrap().len(), 1, "{s}");
    }
}

#[test]
fn identical_sources_stay_in_one_split_for_every_seed() {
    let c = Case::new(12);
    std::fs::copy(c.image("image001"), c.image("image012")).unwrap();
    std::fs::copy(c.truth("image001"), c.truth("image012")).unwrap();
    // The split seed is the run seed: vary it through copies of the run (same master set).
    for seed in 1..=7 {
        let cfg = c.root.join(format!("s{seed}.json"));
        let text = std::fs::read_to_string(&c.config).unwrap();
        std::fs::write(
            &cfg,
            text.replace(r#""seed": 3"#, &format!(r#""seed": {seed}"#)),
        )
        .unwrap();
        let out = c.root.join(format!("out{seed}"));
        let cfg_text = std::fs::read_to_string(&cfg).unwrap().replace(
            &c.root.join("out").display().to_string(),
            &out.display().to_string(),
        );
        std::fs::write(&cfg, cfg_text).unwrap();
        pipeline_ok(&["generate", "--config", cfg.to_str().unwrap()]);
        let o = pipeline(&["split", "--config", cfg.to_str().unwrap()]);
        assert!(o.status.success(), "{}", stderr(&o));
        let e = stderr(&o);
        assert!(
            e.contains("image001, image012 have identical images") && e.contains("kept together"),
            "{e}"
        );
        let m: serde_json::Value =
            serde_json::from_slice(&std::fs::read(out.join("t/manifest.json")).unwrap()).unwrap();
        let split_of = |stem: &str| {
            ["train", "valid", "test"]
                .into_iter()
                .find(|s| {
                    m["split"]["sources"][s]
                        .as_array()
                        .unwrap()
                        .iter()
                        .any(|x| x == stem)
                })
                .unwrap()
        };
        assert_eq!(split_of("image001"), split_of("image012"), "seed {seed}");
    }
}

// ---------------------------------------------------------- 6. every accepted value works

fn config_refused(from: &str, to: &str, needles: &[&str]) {
    let c = Case::new(1);
    c.edit_config(from, to);
    let o = c.run(&["generate"]);
    let mut all = vec!["cfg.json"];
    all.extend_from_slice(needles);
    assert_refused(&o, &all);
    assert!(
        !c.root.join("out").exists(),
        "output written despite a bad config"
    );
}

#[test]
fn config_rotate_1e_minus_300_is_refused_naming_the_field() {
    config_refused(
        r#""rotate": [90]"#,
        r#""rotate": [90, 1e-300]"#,
        &[
            "`generate.variants.rotate[1]`",
            "characters, the limit is 32",
        ],
    );
}

#[test]
fn config_elastic_alpha_with_many_digits_is_refused_naming_the_field() {
    config_refused(
        r#""alpha": 40"#,
        r#""alpha": 1e-30"#,
        &["`generate.variants.elastic[0]`", "fewer digits"],
    );
}

#[test]
fn config_huge_size_is_refused() {
    config_refused(
        r#""size": 48"#,
        r#""size": 1000000"#,
        &["`generate.size`", "4096"],
    );
}

#[test]
fn config_huge_distortion_sigma_is_refused() {
    config_refused(
        r#""distort_sigma": 6"#,
        r#""distort_sigma": 1e300"#,
        &["`generate.variants.distort_sigma`"],
    );
}

#[test]
fn config_long_ordinary_values_still_run() {
    // The longest names the limit lets through make a working run.
    let c = Case::new(1);
    c.edit_config(r#""rotate": [90]"#, r#""rotate": [90, -123.456789012345]"#);
    let o = c.run(&["generate"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_verified(&c);
}

// ------------------------------------------- 1. (more) the tool overwrites only its own files

#[test]
fn infer_does_not_overwrite_a_users_file_in_the_infer_folder() {
    let c = Case::new(4);
    c.ok(&["generate"]);
    c.ok(&["split"]);
    c.ok(&["train", "--device", "cpu"]);
    let inputs = c.root.join("infer-in");
    std::fs::create_dir_all(&inputs).unwrap();
    std::fs::copy(c.image("image001"), inputs.join("a.png")).unwrap();
    let to = c.root.join("infer-out");
    std::fs::create_dir_all(&to).unwrap();
    std::fs::write(to.join("a_overlay.png"), b"mine").unwrap();
    let args = [
        "infer",
        "--config",
        c.cfg(),
        "--device",
        "cpu",
        "--images",
        inputs.to_str().unwrap(),
        "--infer-dir",
        to.to_str().unwrap(),
    ];
    assert_refused(
        &pipeline(&args),
        &[
            "a_overlay.png",
            "not made by pipeline",
            "nothing was overwritten",
        ],
    );
    assert_eq!(std::fs::read(to.join("a_overlay.png")).unwrap(), b"mine");
    assert!(!to.join("a_mask.png").exists(), "wrote before refusing");
    // Once the user's file is gone, infer writes, and a rerun may replace its own outputs.
    std::fs::remove_file(to.join("a_overlay.png")).unwrap();
    pipeline_ok(&args);
    pipeline_ok(&args);
    assert!(to.join("a_mask.png").is_file());
}

#[test]
fn preview_does_not_overwrite_a_users_sheet_in_the_sheet_folder() {
    let c = Case::new(2);
    c.ok(&["generate"]);
    let dir = c.root.join("sheets");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("preview_image001.png"), b"mine").unwrap();
    let d = dir.to_str().unwrap();
    assert_refused(
        &c.run(&["preview", "--sheet-dir", d]),
        &["preview_image001.png", "not made by pipeline"],
    );
    assert_eq!(
        std::fs::read(dir.join("preview_image001.png")).unwrap(),
        b"mine"
    );
    // Its own sheet is replaced on a rerun.
    c.ok(&["preview", "--sheet-dir", d, "--source", "image002"]);
    c.ok(&["preview", "--sheet-dir", d, "--source", "image002"]);
}

#[test]
fn stats_does_not_overwrite_a_users_files_in_a_fresh_run_folder() {
    let c = Case::new(3);
    std::fs::create_dir_all(c.run_dir()).unwrap();
    for f in ["stats.json", "samples_valid.png"] {
        std::fs::write(c.run_dir().join(f), b"mine").unwrap();
    }
    c.ok(&["generate"]);
    c.ok(&["split"]);
    assert_refused(&c.run(&["stats"]), &["stats.json", "not made by pipeline"]);
    std::fs::remove_file(c.run_dir().join("stats.json")).unwrap();
    assert_refused(
        &c.run(&["stats"]),
        &["samples_valid.png", "not made by pipeline"],
    );
    assert_eq!(
        std::fs::read(c.run_dir().join("samples_valid.png")).unwrap(),
        b"mine"
    );
    assert!(
        !c.run_dir().join("stats.png").exists(),
        "wrote before refusing"
    );
}

#[test]
fn generate_does_not_overwrite_a_users_run_json_in_a_fresh_run_folder() {
    let c = Case::new(2);
    std::fs::create_dir_all(c.run_dir()).unwrap();
    std::fs::write(c.run_dir().join("run.json"), b"mine").unwrap();
    assert_refused(&c.run(&["generate"]), &["run.json", "not made by pipeline"]);
    assert_refused(
        &c.run(&["generate", "--force"]),
        &["run.json", "not made by pipeline"],
    );
    assert_eq!(
        std::fs::read(c.run_dir().join("run.json")).unwrap(),
        b"mine"
    );
    assert!(!c.run_dir().join("master").exists());
}

#[test]
fn force_does_not_delete_a_users_file_named_generate_journal() {
    let c = Case::new(2);
    std::fs::create_dir_all(c.run_dir()).unwrap();
    let journal = c.run_dir().join("generate.journal");
    std::fs::write(&journal, b"my own journal").unwrap();
    assert_refused(
        &c.run(&["generate", "--force"]),
        &["generate.journal", "not made by pipeline"],
    );
    assert_eq!(std::fs::read(&journal).unwrap(), b"my own journal");
}

#[test]
fn a_users_file_named_pipeline_lock_is_not_emptied() {
    let c = Case::new(2);
    std::fs::create_dir_all(c.run_dir()).unwrap();
    let lock = c.run_dir().join("pipeline.lock");
    std::fs::write(&lock, b"my notes").unwrap();
    assert_refused(
        &c.run(&["generate"]),
        &["pipeline.lock", "not made by pipeline"],
    );
    assert_eq!(std::fs::read(&lock).unwrap(), b"my notes");
}

// ------------------------------------ 2. (more) readers refuse a config that is not the run's

#[test]
fn split_and_stats_refuse_a_config_whose_generation_differs() {
    let c = Case::new(3);
    c.ok(&["generate"]);
    c.edit_config(r#""size": 48"#, r#""size": 64"#);
    assert_refused(
        &c.run(&["split"]),
        &["`generate.size` is 64", "48", "pipeline generate"],
    );
    c.edit_config(r#""size": 64"#, r#""size": 48"#);
    c.ok(&["split"]);
    c.edit_config(r#""seed": 3"#, r#""seed": 4"#);
    assert_refused(&c.run(&["stats"]), &["`seed` is 4", "pipeline generate"]);
    assert!(!c.run_dir().join("stats.json").exists());
}

#[test]
fn verify_after_a_killed_split_says_the_run_is_incomplete() {
    let c = Case::new(4);
    c.ok(&["generate"]);
    assert!(c.run_killed_at(&["split"], 5));
    let o = c.run(&["verify"]);
    assert_refused(&o, &["incomplete", "pipeline split"]);
    assert!(!stderr(&o).contains("missing"), "{}", stderr(&o));
}

#[test]
/// A split refused for a file of the user's in `dataset/` is refused before it changes anything:
/// the earlier split stands, and `verify` names the stray file.
fn verify_after_a_refused_split_sees_the_earlier_split_and_the_stray_file() {
    let c = Case::new(3);
    c.ok(&["generate"]);
    c.ok(&["split"]);
    std::fs::write(c.run_dir().join("dataset/train/images/mine.png"), b"x").unwrap();
    c.edit_config(
        r#""train": 0.5, "valid": 0.25, "test": 0.25"#,
        r#""train": 0.34, "valid": 0.33, "test": 0.33"#,
    );
    assert_refused(&c.run(&["split"]), &["mine.png", "nothing was changed"]);
    // The recorded split is the earlier config's: verify with the new one says so (exit 2) ...
    let v = c.run(&["verify"]);
    assert_eq!(v.status.code(), Some(2), "{}", stderr(&v));
    assert!(
        stderr(&v).contains("does not match the split"),
        "{}",
        stderr(&v)
    );
    // ... and with the config it was split with, it sees that split and the stray file.
    c.edit_config(
        r#""train": 0.34, "valid": 0.33, "test": 0.33"#,
        r#""train": 0.5, "valid": 0.25, "test": 0.25"#,
    );
    let v = c.run(&["verify"]);
    assert_eq!(v.status.code(), Some(1), "{}", stderr(&v));
    let out = String::from_utf8_lossy(&v.stdout);
    assert!(
        out.contains("extra: dataset/train/images/mine.png"),
        "{out}"
    );
    assert!(
        !out.contains("changed:") && !out.contains("missing:"),
        "{out}"
    );
}

#[test]
fn verify_after_a_generation_killed_while_swapping_says_the_run_is_incomplete() {
    let c = Case::lean(3);
    c.ok(&["generate"]);
    c.kill_at_label(&["generate"], "generate: master set aside");
    assert_refused(
        &c.run(&["verify"]),
        &["interrupted while replacing", "pipeline generate"],
    );
}

#[test]
fn verify_after_a_first_generation_killed_says_the_run_is_incomplete() {
    let c = Case::lean(2);
    assert!(c.run_killed_at(&["generate"], 4));
    assert_refused(
        &c.run(&["verify"]),
        &["incomplete", "pipeline generate --resume"],
    );
}

// -------------------------------------------- 4. (more) reader contract, inputs checked

#[test]
fn resume_replays_the_truth_warning_as_a_sentence() {
    let c = Case::lean(2);
    let gt = image::open(c.truth("image001")).unwrap().to_luma8();
    let weak = image::GrayImage::from_fn(gt.width(), gt.height(), |x, y| {
        image::Luma([if gt.get_pixel(x, y)[0] > 0 { 105 } else { 0 }])
    });
    weak.save(c.truth("image001")).unwrap();
    // Killed after the last of the 6 pairs is journaled, before the commit.
    let o = Command::new(env!("CARGO_BIN_EXE_pipeline"))
        .args(["generate", "--threads", "1", "--config", c.cfg()])
        .env(ABORT, "6")
        .env("PIPELINE_ABORT_ONLY", "generate: pair journaled")
        .output()
        .unwrap();
    assert!(
        stderr(&o).contains("aborting at commit point 6"),
        "{}",
        stderr(&o)
    );
    let o = c.run(&["generate", "--resume"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("6 kept"),
        "not the replay path: {}",
        String::from_utf8_lossy(&o.stdout)
    );
    let e = stderr(&o);
    assert!(e.contains("none reaches the threshold"), "{e}");
    assert!(!e.contains("empty-at-threshold"), "{e}");
}

#[test]
fn folder_with_an_image_name_is_reported() {
    let c = Case::new(3);
    std::fs::create_dir_all(c.data.join(IMAGES).join("image007.png")).unwrap();
    let o = c.run(&["generate"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert_refused(
        &o,
        &["image007", "image007.png has an image name but is a folder"],
    );
}

#[test]
fn run_folder_refusal_names_the_config_keys() {
    let c = Case::new(2);
    let cfg = case_config(&c.root, "inside", &c.data, &c.data, "t", "");
    let o = pipeline(&["generate", "--config", cfg.to_str().unwrap()]);
    assert_refused(
        &o,
        &[
            "run folder (config `out` + `name`",
            "dataset root (config `data`",
        ],
    );
}

#[test]
fn run_folder_inside_the_real_location_of_a_linked_dataset_is_refused() {
    let c = Case::new(2);
    // `cp -rs`: real folders, every file a link into the original dataset.
    let linked = c.root.join("linked");
    for e in walkdir::WalkDir::new(&c.data)
        .into_iter()
        .filter_map(Result::ok)
    {
        let to = linked.join(e.path().strip_prefix(&c.data).unwrap());
        if e.file_type().is_dir() {
            std::fs::create_dir_all(&to).unwrap();
        } else {
            std::os::unix::fs::symlink(e.path(), &to).unwrap();
        }
    }
    let before = tree(&c.data);
    let cfg = case_config(&c.root, "linked", &linked, &c.data, "t", "");
    let o = pipeline(&["generate", "--config", cfg.to_str().unwrap()]);
    assert_refused(&o, &["lies inside the dataset root", "links into"]);
    assert_eq!(tree(&c.data), before, "the dataset changed");
}

// ------------------------------------------------ 5. (more) identical content, any container

#[test]
fn same_photograph_as_png_and_bmp_is_kept_together() {
    let c = Case::new(12);
    std::fs::remove_file(c.image("image012")).unwrap();
    image::open(c.image("image001"))
        .unwrap()
        .save(c.image("image012").with_extension("bmp"))
        .unwrap();
    std::fs::copy(c.truth("image001"), c.truth("image012")).unwrap();
    c.ok(&["generate"]);
    let o = c.run(&["split"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(
        e.contains("image001, image012 have identical images")
            && e.contains("image001.png")
            && e.contains("image012.bmp")
            && e.contains("kept together"),
        "{e}"
    );
    let m = c.manifest();
    let split_of = |stem: &str| {
        ["train", "valid", "test"]
            .into_iter()
            .find(|s| {
                m["split"]["sources"][s]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|x| x == stem)
            })
            .unwrap()
    };
    assert_eq!(split_of("image001"), split_of("image012"));
}

// ------------------------------------------ 6. (more) every accepted config value works

fn config_text_refused(text: &str, needles: &[&str]) {
    let c = Case::new(1);
    std::fs::write(&c.config, text).unwrap();
    let mut all = vec!["cfg.json"];
    all.extend_from_slice(needles);
    assert_refused(&c.run(&["generate"]), &all);
    assert!(!c.root.join("out").exists());
}

#[test]
fn config_given_as_a_json_array_is_refused() {
    config_text_refused(r#"["t", 3]"#, &["must be a JSON object", "an array"]);
}

#[test]
fn config_section_given_as_an_array_is_refused() {
    config_text_refused(
        r#"{"split": ["by-source", 0.8, 0.15, 0.05, true]}"#,
        &["`split` must be a JSON object", "an array"],
    );
}

#[test]
fn config_lens_centre_far_outside_the_image_is_refused() {
    config_refused(
        r#""centres": [[0.5, 0.5]]"#,
        r#""centres": [[0.5, 0.5], [40, 0.5]]"#,
        &["`generate.variants.lens.centres[1]`", "-0.5..=1.5"],
    );
}

#[test]
fn config_lens_centre_whose_disc_misses_the_image_is_refused() {
    config_refused(
        r#""centres": [[0.5, 0.5]]"#,
        r#""centres": [[1.45, 0.5]]"#,
        &[
            "`generate.variants.lens.centres[0]`",
            "copy of the original",
        ],
    );
}

#[test]
fn config_duplicate_rotation_is_refused() {
    config_refused(
        r#""rotate": [90]"#,
        r#""rotate": [90, 90]"#,
        &[
            "`generate.variants.rotate[1]` repeats `generate.variants.rotate[0]`",
            "90",
        ],
    );
}

#[test]
fn config_duplicate_elastic_entry_is_refused() {
    config_refused(
        r#""elastic": [{"alpha": 40, "sigma": 4}]"#,
        r#""elastic": [{"alpha": 40, "sigma": 4}, {"alpha": 40, "sigma": 4}]"#,
        &[
            "`generate.variants.elastic[1]` repeats",
            r#"({"alpha":40.0,"sigma":4.0})"#,
        ],
    );
}

#[test]
fn config_huge_rotation_is_refused() {
    config_refused(
        r#""rotate": [90]"#,
        r#""rotate": [1e20]"#,
        &["`generate.variants.rotate[0]`", "-360..=360"],
    );
}

#[test]
fn config_split_train_zero_is_refused() {
    config_refused(
        r#""train": 0.5, "valid": 0.25, "test": 0.25"#,
        r#""train": 0, "valid": 0.75, "test": 0.25"#,
        &["`split.train` must be > 0"],
    );
}

#[test]
fn config_rotation_equal_modulo_360_is_refused() {
    config_refused(
        r#""rotate": [90]"#,
        r#""rotate": [90, -270]"#,
        &[
            "`generate.variants.rotate[1]` (-270 degrees) is the same rotation as",
            "rotate[0]",
        ],
    );
}

#[test]
fn config_whole_turn_rotation_is_refused() {
    config_refused(
        r#""rotate": [90]"#,
        r#""rotate": [360]"#,
        &["`generate.variants.rotate[0]`", "whole turn", "copy"],
    );
}

#[test]
fn config_zero_shear_is_refused() {
    config_refused(
        r#""shear_x": []"#,
        r#""shear_x": [0]"#,
        &["`generate.variants.shear_x[0]`", "unchanged"],
    );
}

#[test]
fn stats_and_train_refuse_a_config_whose_split_differs() {
    let c = Case::new(3);
    c.ok(&["generate"]);
    c.ok(&["split"]);
    c.edit_config(
        r#""train": 0.5, "valid": 0.25, "test": 0.25"#,
        r#""train": 0.34, "valid": 0.33, "test": 0.33"#,
    );
    assert_refused(
        &c.run(&["stats"]),
        &["does not match the split", "ratios", "pipeline split"],
    );
    assert!(!c.run_dir().join("stats.json").exists());
    c.ok(&["split"]);
    c.ok(&["stats"]);
}

// -------------------------------------------- staging/ holds only what the tool recorded

/// Runs `generate` (1 thread) killed once `pairs` pairs are journaled.
fn killed_after_pairs(c: &Case, pairs: usize) {
    let o = Command::new(env!("CARGO_BIN_EXE_pipeline"))
        .args(["generate", "--threads", "1", "--config", c.cfg()])
        .env(ABORT, pairs.to_string())
        .env("PIPELINE_ABORT_ONLY", "generate: pair journaled")
        .output()
        .unwrap();
    assert!(
        stderr(&o).contains(&format!("aborting at commit point {pairs}")),
        "{}",
        stderr(&o)
    );
}

#[test]
fn staging_that_is_a_link_is_refused_before_anything_is_written() {
    for link in ["staging", "staging/images"] {
        let c = Case::new(2);
        let elsewhere = c.root.join("elsewhere");
        std::fs::create_dir_all(&elsewhere).unwrap();
        std::fs::write(elsewhere.join("image001_orig.png"), b"yours").unwrap();
        let at = c.run_dir().join(link);
        std::fs::create_dir_all(at.parent().unwrap()).unwrap();
        std::os::unix::fs::symlink(&elsewhere, &at).unwrap();
        let o = c.run(&["generate"]);
        assert_eq!(o.status.code(), Some(2), "{link}: {}", stderr(&o));
        assert!(
            stderr(&o).contains(&at.display().to_string())
                && (stderr(&o).contains("not a folder")
                    || stderr(&o).contains("not this tool's work")),
            "{link}: {}",
            stderr(&o)
        );
        let there: Vec<_> = std::fs::read_dir(&elsewhere).unwrap().collect();
        assert_eq!(
            there.len(),
            1,
            "{link}: something was written through the link"
        );
        assert_eq!(
            std::fs::read(elsewhere.join("image001_orig.png")).unwrap(),
            b"yours"
        );
        assert!(!c.run_dir().join("manifest.json").exists());
    }
}

/// A file, link or folder that no record names (at the name of a pair still to be generated, or
/// a temporary that is not the tool's), and a link or changed content at the name of a pair the
/// journal recorded, are neither overwritten nor deleted: the run is refused up front, naming
/// every such entry.
#[test]
fn your_files_in_staging_are_refused_by_name_not_overwritten() {
    let c = Case::new(3);
    killed_after_pairs(&c, 2);
    let images = c.run_dir().join("staging/images");
    let masks = c.run_dir().join("staging/masks");
    let yours = images.join("image003_orig.png");
    std::fs::write(&yours, b"yours").unwrap();
    let outside = c.root.join("outside.txt");
    std::fs::write(&outside, b"outside").unwrap();
    let link = masks.join("image003_hflip.png");
    std::os::unix::fs::symlink(&outside, &link).unwrap();
    let folder = images.join("image003_vflip.png");
    std::fs::create_dir(&folder).unwrap();
    // At the names of the two journaled pairs (image001_*): a link and a file of other content.
    let mut journaled: Vec<_> = std::fs::read_dir(&images)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().contains("image001_"))
        .collect();
    journaled.sort();
    assert_eq!(journaled.len(), 2, "{journaled:?}");
    let (relinked, edited) = (&journaled[0], &journaled[1]);
    std::fs::remove_file(relinked).unwrap();
    std::os::unix::fs::symlink(&outside, relinked).unwrap();
    std::fs::write(edited, b"edited").unwrap();
    let temporary = images.join(".tmp-mine");
    std::fs::write(&temporary, b"mine").unwrap();
    for args in [
        &["generate", "--resume"][..],
        &["generate"],
        &["generate", "--force"],
    ] {
        let o = c.run(args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        let e = stderr(&o);
        for p in [&yours, &link, &folder, relinked, edited, &temporary] {
            assert!(e.contains(&p.display().to_string()), "{args:?}: {e}");
        }
        assert!(e.contains("changed since this tool wrote it"), "{e}");
        assert!(
            e.contains("no pair was written and nothing was removed"),
            "{e}"
        );
        assert_eq!(std::fs::read(&yours).unwrap(), b"yours");
        assert_eq!(std::fs::read_link(&link).unwrap(), outside);
        assert_eq!(std::fs::read_link(relinked).unwrap(), outside);
        assert_eq!(std::fs::read(edited).unwrap(), b"edited");
        assert_eq!(std::fs::read(&temporary).unwrap(), b"mine");
        assert!(folder.is_dir());
    }
    assert_eq!(std::fs::read(&outside).unwrap(), b"outside");
    // Moved away, the run resumes and completes (the two changed pairs are made again).
    for p in [&yours, &link, relinked, edited, &temporary] {
        std::fs::remove_file(p).unwrap();
    }
    std::fs::remove_dir(&folder).unwrap();
    c.ok(&["generate", "--resume"]);
    assert_verified(&c);
}

/// A first generation commits the sources it could make; its manifest names the one it could
/// not, `verify` fails on it and the stages that read the set warn, until a rerun makes it.
#[test]
fn first_run_with_a_failed_source_records_it_and_verify_fails() {
    let c = Case::new(3);
    let good = std::fs::read(c.image("image002")).unwrap();
    std::fs::write(c.image("image002"), b"").unwrap();
    let o = c.run(&["generate"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(c.run_dir().join("manifest.json")).unwrap()).unwrap();
    let failed = m["failed"].as_array().expect("failed sources recorded");
    assert_eq!(failed.len(), 1, "{m}");
    assert_eq!(failed[0]["stem"], "image002");
    assert!(failed[0]["error"].as_str().unwrap().contains("image002"));
    let v = c.run(&["verify"]);
    assert_eq!(v.status.code(), Some(1), "{}", stderr(&v));
    let out = String::from_utf8_lossy(&v.stdout);
    assert!(out.contains("failed source: image002: "), "{out}");
    assert!(out.contains("lacks 1 source(s)"), "{out}");
    let s = c.run(&["split"]);
    assert!(s.status.success(), "{}", stderr(&s));
    assert!(
        stderr(&s).contains("warning: the master set in")
            && stderr(&s).contains("lacks 1 source(s) that could not be generated: image002"),
        "{}",
        stderr(&s)
    );
    // Fixed and rerun: the set is whole, the manifest has no `failed`, verify passes.
    std::fs::write(c.image("image002"), good).unwrap();
    c.ok(&["generate"]);
    let text = std::fs::read_to_string(c.run_dir().join("manifest.json")).unwrap();
    assert!(!text.contains("\"failed\""), "{text}");
    assert_verified(&c);
}

#[test]
fn first_run_whose_sources_all_fail_commits_nothing() {
    let c = Case::new(2);
    let away = c.hide_truths();
    let o = c.run(&["generate"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("nothing was committed: no source could be generated"),
        "{}",
        stderr(&o)
    );
    assert!(!c.run_dir().join("manifest.json").exists());
    c.restore_truths(&away);
    c.ok(&["generate", "--resume"]);
    assert_verified(&c);
}

#[test]
fn link_at_a_folder_of_the_set_is_refused_and_nothing_is_removed_through_it() {
    for folder in [
        "master/images",
        "master/masks",
        "dataset/train",
        "dataset/train/images",
    ] {
        let c = Case::new(2);
        c.ok(&["generate"]);
        c.ok(&["split"]);
        let run = c.run_dir();
        // The user's folder, holding copies of the set's files under the same names.
        let mine = c.root.join("mine");
        std::fs::rename(run.join(folder), &mine).unwrap();
        std::fs::write(mine.join("notes.txt"), b"mine").unwrap();
        std::os::unix::fs::symlink(&mine, run.join(folder)).unwrap();
        let before = tree(&mine);
        for args in [&["generate"][..], &["generate", "--force"], &["split"]] {
            assert_refused(
                &c.run(args),
                &[folder, "a symbolic link", "nothing was written"],
            );
            assert_eq!(
                tree(&mine),
                before,
                "{folder}: {args:?} changed the linked folder"
            );
        }
    }
}

#[test]
fn folder_at_a_recorded_file_name_is_refused_before_any_change() {
    for rel in ["master/masks", "dataset/valid/images"] {
        let c = Case::new(2);
        c.ok(&["generate"]);
        c.ok(&["split"]);
        let run = c.run_dir();
        let manifest = c.manifest();
        let pair = &manifest["pairs"][0];
        let name = pair["name"].as_str().unwrap();
        let split = pair["split"].as_str().unwrap();
        let target = match rel {
            "master/masks" => run.join(format!("master/masks/{name}.png")),
            _ => {
                // The first pair's dataset file, whatever split it is in.
                run.join(format!("dataset/{split}/images/{name}.png"))
            }
        };
        std::fs::remove_file(&target).unwrap();
        std::fs::create_dir(&target).unwrap();
        let before = run_tree(&run);
        for args in [&["generate"][..], &["generate", "--force"]] {
            assert_refused(
                &c.run(args),
                &["a folder", "records a file", "nothing was written"],
            );
            assert_eq!(run_tree(&run), before, "{rel}: {args:?} changed the run");
        }
        std::fs::remove_dir(&target).unwrap();
        c.ok(&["generate"]);
        c.ok(&["split"]);
        assert_verified(&c);
    }
}

#[test]
fn manifest_paths_outside_the_set_are_refused_and_never_removed() {
    let c = Case::new(2);
    c.ok(&["generate"]);
    let run = c.run_dir();
    let precious = c.root.join("precious.txt");
    for bad in [
        precious.display().to_string(),
        "master/images/../../../precious.txt".to_string(),
    ] {
        std::fs::write(&precious, b"mine").unwrap();
        let mut m = c.manifest();
        m["pairs"][0]["image"] = serde_json::Value::String(bad.clone());
        std::fs::write(run.join("manifest.json"), serde_json::to_vec(&m).unwrap()).unwrap();
        assert_refused(
            &c.run(&["verify"]),
            &["not a valid manifest", "not a file pipeline writes"],
        );
        for args in [&["generate"][..], &["generate", "--force"]] {
            let _ = c.run(args);
            assert_eq!(
                std::fs::read(&precious).unwrap(),
                b"mine",
                "{bad}: {args:?}"
            );
        }
        c.ok(&["generate", "--force"]);
        assert_verified(&c);
    }
    // The same path in a hand-edited journal is skipped: neither kept nor removed.
    let journal = run.join("generate.journal");
    c.edit_config(r#""seed": 3"#, r#""seed": 4"#);
    let _ = c.run(&["generate", "--force"]);
    std::fs::write(&precious, b"mine").unwrap();
    if let Ok(text) = std::fs::read_to_string(&journal) {
        let edited = text.replacen(
            "\"master/images/",
            &format!("\"{}\", \"x\": \"", precious.display()),
            1,
        );
        std::fs::write(&journal, edited).unwrap();
        let _ = c.run(&["generate", "--resume"]);
        let _ = c.run(&["generate", "--force"]);
        assert_eq!(std::fs::read(&precious).unwrap(), b"mine");
    }
}

#[test]
fn lock_file_that_is_a_fifo_or_a_link_is_refused_without_waiting() {
    let c = Case::new(1);
    c.ok(&["generate"]);
    let lock = c.run_dir().join("pipeline.lock");
    std::fs::remove_file(&lock).unwrap();
    let fifo = std::ffi::CString::new(lock.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
    for args in [&["verify"][..], &["generate"], &["split"]] {
        assert_refused(
            &c.run(args),
            &["pipeline.lock", "not a lock file of pipeline"],
        );
    }
    std::fs::remove_file(&lock).unwrap();
    let mine = c.root.join("mine.txt");
    std::fs::write(&mine, b"").unwrap();
    std::os::unix::fs::symlink(&mine, &lock).unwrap();
    assert_refused(&c.run(&["verify"]), &["pipeline.lock", "a symbolic link"]);
    assert_eq!(std::fs::read(&mine).unwrap(), b"");
    std::fs::remove_file(&lock).unwrap();
    std::fs::hard_link(&mine, &lock).unwrap();
    assert_refused(&c.run(&["verify"]), &["pipeline.lock", "hard link"]);
    assert_eq!(std::fs::read(&mine).unwrap(), b"");
    std::fs::remove_file(&lock).unwrap();
    assert_verified(&c);
    // A link in place of one of the set's folders: verify refuses it instead of reading through.
    let images = c.run_dir().join("master/images");
    let away = c.root.join("images-away");
    std::fs::rename(&images, &away).unwrap();
    std::os::unix::fs::symlink(&away, &images).unwrap();
    assert_refused(&c.run(&["verify"]), &["master/images is a symbolic link"]);
}

#[test]
fn split_refuses_a_user_file_where_it_would_link_and_an_edited_split_file() {
    // Never split: a file of the user's at a name the split writes is refused, not overwritten.
    let c = Case::new(2);
    c.ok(&["generate"]);
    let run = c.run_dir();
    let name = c.first_pair_name();
    let mut placed = Vec::new();
    for split in ["train", "valid", "test"] {
        let f = run.join(format!("dataset/{split}/masks/{name}.png"));
        std::fs::create_dir_all(f.parent().unwrap()).unwrap();
        std::fs::write(&f, b"mine").unwrap();
        placed.push(f);
    }
    assert_refused(
        &c.run(&["split"]),
        &["is not recorded", "nothing was changed"],
    );
    for f in &placed {
        assert_eq!(std::fs::read(f).unwrap(), b"mine");
        std::fs::remove_file(f).unwrap();
    }
    c.ok(&["split"]);
    // Split: a split file replaced by an edited copy (not the master's link) is refused by a
    // re-split with other ratios, before anything changes.
    let m = c.manifest();
    let p = &m["pairs"][0];
    let f = run.join(format!(
        "dataset/{}/images/{}.png",
        p["split"].as_str().unwrap(),
        p["name"].as_str().unwrap()
    ));
    let mut bytes = std::fs::read(&f).unwrap();
    bytes.extend_from_slice(b"EDIT");
    std::fs::remove_file(&f).unwrap();
    std::fs::write(&f, &bytes).unwrap();
    c.edit_config(
        r#""train": 0.5, "valid": 0.25, "test": 0.25"#,
        r#""train": 0.34, "valid": 0.33, "test": 0.33"#,
    );
    let before = run_tree(&run);
    assert_refused(
        &c.run(&["split"]),
        &["differs from what", "edited", "nothing was changed"],
    );
    assert_eq!(run_tree(&run), before);
    std::fs::remove_file(&f).unwrap();
    c.ok(&["split"]);
    assert_verified(&c);
}

#[test]
fn split_refuses_a_non_file_at_a_recorded_master_name() {
    let c = Case::new(2);
    c.ok(&["generate"]);
    c.ok(&["split"]);
    let run = c.run_dir();
    let name = c.first_pair_name();
    let target = run.join(format!("master/masks/{name}.png"));
    let outside = c.root.join("outside.png");
    std::fs::copy(&target, &outside).unwrap();
    c.edit_config(
        r#""train": 0.5, "valid": 0.25, "test": 0.25"#,
        r#""train": 0.34, "valid": 0.33, "test": 0.33"#,
    );
    std::fs::remove_file(&target).unwrap();
    std::os::unix::fs::symlink(&outside, &target).unwrap();
    let before = run_tree(&run);
    assert_refused(&c.run(&["split"]), &["a symbolic link", "records a file"]);
    assert_eq!(run_tree(&run), before);
    std::fs::remove_file(&target).unwrap();
    std::fs::create_dir(&target).unwrap();
    assert_refused(&c.run(&["split"]), &["a folder", "records a file"]);
    std::fs::remove_dir(&target).unwrap();
    std::fs::copy(&outside, &target).unwrap();
    c.ok(&["split"]);
    assert_verified(&c);
}

#[test]
fn manifest_with_a_source_stem_that_is_a_path_is_refused() {
    let c = Case::new(2);
    c.ok(&["generate"]);
    let run = c.run_dir();
    let mut m = c.manifest();
    m["sources"][0]["stem"] = serde_json::Value::String("../../victim/x".into());
    std::fs::write(run.join("manifest.json"), serde_json::to_vec(&m).unwrap()).unwrap();
    for args in [&["preview"][..], &["split"], &["verify"], &["stats"]] {
        assert_refused(&c.run(args), &["not a valid manifest", "plain file name"]);
    }
    assert!(!c.root.join("victim").exists());
    // A record whose source or variant is not the one its name says: verify reports it.
    c.ok(&["generate", "--force"]);
    let mut m = c.manifest();
    let other = m["sources"][1]["stem"].clone();
    m["pairs"][0]["source"] = other;
    std::fs::write(run.join("manifest.json"), serde_json::to_vec(&m).unwrap()).unwrap();
    let out = c.run(&["verify"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("not its own"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn manifest_of_another_schema_is_refused_and_force_rebuilds_it() {
    let c = Case::new(2);
    c.ok(&["generate"]);
    let run = c.run_dir();
    let good = std::fs::read(run.join("manifest.json")).unwrap();
    let mut m = c.manifest();
    m["schema"] = serde_json::Value::String("fundus-pipeline/manifest/v9".into());
    std::fs::write(run.join("manifest.json"), serde_json::to_vec(&m).unwrap()).unwrap();
    for args in [&["verify"][..], &["split"], &["stats"], &["preview"]] {
        assert_refused(
            &c.run(args),
            &["manifest/v9", "fundus-pipeline/manifest/v1", "--force"],
        );
    }
    c.ok(&["generate", "--force"]);
    assert_eq!(std::fs::read(run.join("manifest.json")).unwrap(), good);
    assert_verified(&c);
}

#[test]
fn verifies_run_together_and_wait_for_no_reader_but_a_writer() {
    use std::os::fd::AsRawFd;
    let c = Case::new(2);
    c.ok(&["generate"]);
    let lock = c.run_dir().join("pipeline.lock");
    let f = std::fs::OpenOptions::new().read(true).open(&lock).unwrap();
    // Another verify's lock (shared): this one runs beside it.
    assert_eq!(
        unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) },
        0
    );
    assert_verified(&c);
    // A writer's (exclusive): refused, as before.
    assert_eq!(
        unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) },
        0
    );
    assert_refused(&c.run(&["verify"]), &["in use by another pipeline process"]);
    // A writer is refused while a verify holds the folder.
    assert_eq!(
        unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) },
        0
    );
    assert_refused(
        &c.run(&["generate"]),
        &["in use by another pipeline process", "verify"],
    );
    drop(f);
    c.ok(&["generate"]);
}

#[test]
fn a_generation_record_edited_with_its_key_kept_is_refused_by_every_reader() {
    let c = Case::new(2);
    c.ok(&["generate"]);
    assert_verified(&c);
    let run = c.run_dir();
    let good = c.manifest();
    let write = |m: &serde_json::Value| {
        std::fs::write(run.join("manifest.json"), serde_json::to_vec(m).unwrap()).unwrap()
    };
    let refused = |needle: &str| {
        for args in [&["verify"][..], &["split"], &["stats"], &["preview"]] {
            assert_refused(
                &c.run(args),
                &["not a consistent record", needle, "--force"],
            );
        }
    };
    let mut m = good.clone();
    m["generation"]["seed"] = serde_json::json!(4);
    write(&m);
    refused("generation record: the recorded settings");
    let mut m = good.clone();
    m["generation"]["generate"]["size"] = serde_json::json!(64);
    write(&m);
    refused("generation record: the recorded settings");
    let mut m = good.clone();
    m["generation"]["variants"].as_array_mut().unwrap().pop();
    write(&m);
    refused("`generation.variants` is not the plan");
    // The key edited instead: named as such, not as a difference in some setting.
    let mut m = good.clone();
    m["generation_key"] = serde_json::json!("0".repeat(64));
    write(&m);
    refused("generation record: the recorded settings");
    // What the refusal says to do mends it.
    c.ok(&["generate", "--force"]);
    assert_eq!(c.manifest(), good);
    assert_verified(&c);
}

#[test]
fn a_journal_that_is_not_the_tools_is_never_removed_and_verify_names_what_finishes_one() {
    let c = Case::new(2);
    c.ok(&["generate"]);
    let run = c.run_dir();
    let journal = run.join("generate.journal");
    // The tool wrote a journal here before (its name is recorded as the tool's): a file of
    // the user's at that name is still not its work.
    std::fs::write(&journal, b"my notes\n").unwrap();
    let o = c.run(&["verify"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("is not a journal of pipeline"),
        "{}",
        stderr(&o)
    );
    for args in [
        &["generate", "--force"][..],
        &["generate", "--resume"],
        &["generate"],
    ] {
        assert_refused(
            &c.run(args),
            &["generate.journal is not a journal of pipeline"],
        );
        assert_eq!(std::fs::read(&journal).unwrap(), b"my notes\n");
    }
    std::fs::remove_file(&journal).unwrap();
    // A journal of another config's interrupted generation: verify says how to finish or
    // replace it, not `--resume` with this config (which refuses it).
    c.edit_config(r#""seed": 3"#, r#""seed": 4"#);
    assert!(c.run_killed_at(&["generate", "--force"], 3));
    // With the config of the interrupted generation, every reader names what finishes it.
    for args in [&["verify"][..], &["split"], &["stats"]] {
        assert_refused(
            &c.run(args),
            &[
                "a generation of this config that replaces it was interrupted",
                "--resume",
            ],
        );
    }
    c.edit_config(r#""seed": 4"#, r#""seed": 3"#);
    let o = c.run(&["verify"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("other settings") && stderr(&o).contains("--force"),
        "{}",
        stderr(&o)
    );
    // A text file at the commit record's name: refused by name, never a loop of advice.
    std::fs::write(run.join("generate.commit.json"), b"mine").unwrap();
    for args in [&["verify"][..], &["split"], &["generate", "--force"]] {
        assert_refused(
            &c.run(args),
            &[
                "generate.commit.json is not a commit record",
                "move it away",
            ],
        );
    }
    assert_eq!(
        std::fs::read(run.join("generate.commit.json")).unwrap(),
        b"mine"
    );
    // In a fresh folder, a journal of the user's is named as such, not as a generation to
    // finish.
    let out2 = c.root.join("out2");
    std::fs::create_dir_all(out2.join("t")).unwrap();
    std::fs::write(out2.join("t/generate.journal"), b"my notes\n").unwrap();
    assert_refused(
        &c.run(&["verify", "--out", out2.to_str().unwrap()]),
        &["is not a journal of pipeline", "move it away"],
    );
    assert_eq!(
        std::fs::read(out2.join("t/generate.journal")).unwrap(),
        b"my notes\n"
    );
}

#[test]
fn training_without_a_validation_split_is_refused_before_any_work() {
    let c = Case::new(3);
    c.edit_config(
        r#""train": 0.5, "valid": 0.25, "test": 0.25"#,
        r#""train": 0.75, "valid": 0, "test": 0.25"#,
    );
    assert_refused(
        &c.run(&["all", "--device", "cpu"]),
        &["`split.valid` is 0", "--no-train"],
    );
    assert!(!c.run_dir().exists());
    c.ok(&["all", "--no-train"]);
    assert_refused(
        &c.run(&["train", "--device", "cpu"]),
        &["`split.valid` is 0"],
    );
    assert!(!c.run_dir().join("train").exists());
}

#[test]
fn verify_reports_a_split_record_that_disagrees_with_its_pairs() {
    let c = Case::new(4);
    c.ok(&["generate"]);
    c.ok(&["split"]);
    assert_verified(&c);
    c.ok(&["train", "--device", "cpu"]);
    let run = c.run_dir();
    let good = c.manifest();
    let lists = good["split"]["sources"].as_object().unwrap().clone();
    let (from, moved) = lists
        .iter()
        .find_map(|(k, v)| v[0].as_str().map(|s| (k.clone(), s.to_string())))
        .unwrap();
    let to = ["train", "valid", "test"]
        .into_iter()
        .find(|s| *s != from)
        .unwrap();
    let write = |m: &serde_json::Value| {
        std::fs::write(run.join("manifest.json"), serde_json::to_vec(m).unwrap()).unwrap()
    };
    // A source moved to another split's list (what evaluate reads), files untouched.
    let mut m = good.clone();
    let list = m["split"]["sources"][&from].as_array_mut().unwrap();
    list.retain(|s| s.as_str() != Some(moved.as_str()));
    m["split"]["sources"][to]
        .as_array_mut()
        .unwrap()
        .push(serde_json::Value::String(moved.clone()));
    write(&m);
    let out = c.run(&["verify"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(1), "{text}{}", stderr(&out));
    assert!(
        text.contains(&format!("split record: pair {moved}_orig is in {from}")),
        "{text}"
    );
    // evaluate, which reads the test list, refuses it rather than score the wrong photographs,
    // and so do the other readers of the split.
    for args in [
        &["evaluate", "--device", "cpu"][..],
        &["stats"],
        &["train", "--device", "cpu"],
    ] {
        assert_refused(&c.run(args), &["disagrees with itself", "pipeline split"]);
    }
    // Listed in two splits, and a stem that is no source.
    let mut m = good.clone();
    m["split"]["sources"][to]
        .as_array_mut()
        .unwrap()
        .push(serde_json::Value::String(moved.clone()));
    m["split"]["sources"][&from]
        .as_array_mut()
        .unwrap()
        .push(serde_json::Value::String("image999".into()));
    write(&m);
    let out = c.run(&["verify"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains(&format!("{moved} is listed in both")),
        "{text}"
    );
    assert!(
        text.contains("lists \"image999\", which is not a recorded source"),
        "{text}"
    );
    // Listed twice in one list.
    let mut m = good.clone();
    m["split"]["sources"][&from]
        .as_array_mut()
        .unwrap()
        .push(serde_json::Value::String(moved.clone()));
    write(&m);
    let out = c.run(&["verify"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        text.contains(&format!("{moved} is listed twice in {from}")),
        "{text}"
    );
    // What the refusal says to do mends it.
    c.ok(&["split"]);
    assert_verified(&c);
    assert_eq!(c.manifest(), good);
}

#[test]
fn split_refuses_a_missing_or_edited_master_file_before_any_change() {
    let c = Case::new(2);
    c.ok(&["generate"]);
    c.ok(&["split"]);
    let run = c.run_dir();
    let name = c.first_pair_name();
    let master = run.join(format!("master/images/{name}.png"));
    c.edit_config(
        r#""train": 0.5, "valid": 0.25, "test": 0.25"#,
        r#""train": 0.34, "valid": 0.33, "test": 0.33"#,
    );
    // Missing: refused before the old split is touched, naming the command that remakes it.
    let away = c.root.join("away.png");
    std::fs::rename(&master, &away).unwrap();
    let before = run_tree(&run);
    assert_refused(&c.run(&["split"]), &["is missing", "pipeline generate"]);
    assert_eq!(run_tree(&run), before);
    std::fs::rename(&away, &master).unwrap();
    // Edited in place (its split copy is the same file): refused, naming the master file.
    let mut bytes = std::fs::read(&master).unwrap();
    bytes.extend_from_slice(b"EDIT");
    std::fs::write(&master, &bytes).unwrap();
    let before = run_tree(&run);
    assert_refused(
        &c.run(&["split"]),
        &["master/images", "edited since it was generated"],
    );
    assert_eq!(run_tree(&run), before);
    // The way back the message gives: generate keeps the edit aside, then split.
    let o = c.run(&["generate"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let left = files_named(&run.join("dataset"), &format!("{name}.png"));
    for f in left {
        std::fs::remove_file(f).unwrap();
    }
    c.ok(&["split"]);
    assert_verified(&c);
    // A symbolic link at a name the split writes is refused even when it leads to the bytes.
    let m = c.manifest();
    let p = &m["pairs"][0];
    let f = run.join(format!(
        "dataset/{}/images/{}.png",
        p["split"].as_str().unwrap(),
        p["name"].as_str().unwrap()
    ));
    c.edit_config(
        r#""train": 0.34, "valid": 0.33, "test": 0.33"#,
        r#""train": 0.5, "valid": 0.25, "test": 0.25"#,
    );
    let _ = c.run(&["generate"]);
    std::fs::create_dir_all(f.parent().unwrap()).unwrap();
    let _ = std::fs::remove_file(&f);
    std::os::unix::fs::symlink(&master, &f).unwrap();
    assert_refused(
        &c.run(&["split"]),
        &["is not recorded", "nothing was changed"],
    );
    assert!(f.symlink_metadata().unwrap().file_type().is_symlink());
}

#[test]
fn temporaries_in_the_run_folder_are_removed_by_the_next_writer() {
    let c = Case::new(1);
    c.ok(&["generate"]);
    let run = c.run_dir();
    let tmp = run.join(".pipeline-tmp-AbC123.json");
    std::fs::write(&tmp, b"{\"cut").unwrap();
    // Names like other programs' temporaries are the user's: never removed.
    let mine: Vec<_> = [".tmp-notes.txt", ".tmp-Ab12Cd.txt", ".tmp-123456"]
        .iter()
        .map(|n| run.join(n))
        .collect();
    for f in &mine {
        std::fs::write(f, b"mine").unwrap();
    }
    // A refused split changes nothing, not even the tool's own temporaries.
    let stray = run.join("dataset/stray.txt");
    std::fs::create_dir_all(stray.parent().unwrap()).unwrap();
    std::fs::write(&stray, b"x").unwrap();
    assert_refused(&c.run(&["split"]), &["stray.txt", "nothing was changed"]);
    assert!(tmp.exists());
    std::fs::remove_file(&stray).unwrap();
    c.ok(&["split"]);
    assert!(!tmp.exists());
    for f in &mine {
        assert_eq!(std::fs::read(f).unwrap(), b"mine");
    }
    // In the set's folders too: generate moves them aside with the other unrecorded files.
    let in_master = run.join("master/images/.tmp-Zz99Yy");
    std::fs::write(&in_master, b"mine").unwrap();
    c.edit_config(r#""seed": 3"#, r#""seed": 4"#);
    let o = c.run(&["generate", "--force"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        std::fs::read(run.join("unrecorded-1/images/.tmp-Zz99Yy")).unwrap(),
        b"mine"
    );
}
