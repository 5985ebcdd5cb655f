//! `pipeline split`: assigns the master set to train / valid / test and lays the split folders out
//! as hard links into `master/` (copies where links are impossible). `by-source` and `official`
//! keep every source in one split, so no augmented copy of a test image reaches training;
//! `by-file` reproduces the reference's leaky behaviour for comparison only. Sources whose images
//! have the same content (equal blake3) are kept in one split and reported.
//!
//! Crash safety: the manifest records the dataset files before they exist and says the split is
//! complete (`split` present) only after the last link; [`require_complete`] is what readers
//! (stats, train, evaluate) check. A rerun after a kill at any point removes the recorded files
//! and links again, ending with the same bytes.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{bail, Context, Result};
use rand::seq::SliceRandom;
use rayon::prelude::*;

use crate::config::{Config, SplitMode};
use crate::dataset::layout::{TEST_LIST, TRAIN_LIST};
use crate::dataset::lists::read_list;
use crate::io::{commit_point, hash_file};
use crate::manifest::{rel_path, Manifest, SplitInfo};
use crate::rng::rng_for;
use crate::run_layout::{PairPart, RunLayout, Split};

/// Pairs and sources per split, and warnings for the user.
#[derive(Debug, Clone, Default)]
pub struct SplitReport {
    /// Image/mask pairs per split.
    pub pairs: BTreeMap<Split, usize>,
    /// Source images per split.
    pub sources: BTreeMap<Split, usize>,
    /// Things the user should know (e.g. the by-file leak, sources with the same image kept
    /// together), one sentence each.
    pub warnings: Vec<String>,

    /// The manifest as saved, with the split recorded.
    pub manifest: Manifest,
}

/// Refuses a run folder whose split is not recorded as complete (never made, interrupted, or
/// made stale by an interrupted generation), naming the command to run. Called by every stage
/// that reads `dataset/`.
/// The manifest must also be `cfg`'s generation ([`crate::generate::require_generated_by`]).
pub fn require_complete(cfg: &Config) -> Result<Manifest> {
    let m = crate::generate::require_generated_by(cfg)?;
    let Some(info) = &m.split else {
        bail!(
            "{} records no complete split (never made, or interrupted); run `pipeline split` \
             with this config first",
            cfg.layout().manifest().display()
        );
    };
    check_split_settings(cfg, info)?;
    if let Some(problem) = crate::manifest::split_problems(&m).first() {
        bail!(
            "the split recorded in {} disagrees with itself ({problem}; edited by hand?): rerun \
             `pipeline split` to make it again",
            cfg.layout().manifest().display()
        );
    }
    Ok(m)
}

/// Refuses a config whose `split` section is not the one the recorded split was made with
/// (mode, ratios, `test_originals_only`), naming the first difference.
pub fn check_split_settings(cfg: &Config, info: &crate::manifest::SplitInfo) -> Result<()> {
    // The split on disk must be the one this config's `split` section makes.
    let s = &cfg.split;
    let differs = if info.mode != s.mode {
        Some(format!(
            "`split.mode` is {} in this config but {} in",
            s.mode, info.mode
        ))
    } else if info.ratios != [s.train, s.valid, s.test] {
        Some(format!(
            "`split` ratios are {:?} in this config but {:?} in",
            [s.train, s.valid, s.test],
            info.ratios
        ))
    } else if info.test_originals_only != s.test_originals_only {
        Some(format!(
            "`split.test_originals_only` is {} in this config but {} in",
            s.test_originals_only, info.test_originals_only
        ))
    } else {
        None
    };
    if let Some(d) = differs {
        bail!(
            "this config does not match the split in {}: {d} manifest.json; rerun `pipeline \
             split` with this config, or use the config the run was split with",
            cfg.layout().root().display()
        );
    }
    Ok(())
}

/// Splits the run's master set as the config says and writes `dataset/` and the manifest.
/// `m` is the run's manifest of a complete generation ([`crate::generate::require_complete`]);
/// the report carries the manifest as saved. Refused when `m` is not `cfg`'s generation.
pub fn split(cfg: &Config, mut m: Manifest) -> Result<SplitReport> {
    let run = cfg.layout();
    crate::generate::check_generated_by(cfg, &m)?;
    crate::owned::claim(run.root(), &[RunLayout::MANIFEST])?;
    crate::owned::check_folders(&run.own_folders())?;
    let old = m.clone();
    let mut report = SplitReport::default();
    let s = &cfg.split;
    let stems: Vec<String> = m.sources.iter().map(|s| s.stem.clone()).collect();
    if stems.is_empty() {
        bail!("the manifest in {} lists no sources", run.root().display());
    }
    let mut by_source: BTreeMap<Split, Vec<String>> = BTreeMap::new();
    let same_image = same_image_groups(&m);
    match s.mode {
        SplitMode::BySource => {
            let mut shuffled = stems.clone();
            shuffled.shuffle(&mut rng_for(cfg.seed, "split", "by-source"));
            let target = counts(shuffled.len(), [s.train, s.valid, s.test]);
            // Sources with the same image go together, to the split of the first one drawn.
            let mut placed: BTreeSet<&String> = BTreeSet::new();
            let mut k = 0;
            for stem in &shuffled {
                if placed.contains(stem) {
                    continue;
                }
                while k < 2 && by_source.get(&Split::ALL[k]).map_or(0, Vec::len) >= target[k] {
                    k += 1;
                }
                let unit: Vec<&String> = match same_image.iter().find(|g| g.contains(stem)) {
                    Some(g) => g.iter().collect(),
                    None => vec![stem],
                };
                for u in unit {
                    placed.insert(u);
                    by_source.entry(Split::ALL[k]).or_default().push(u.clone());
                }
            }
        }
        SplitMode::Official => {
            let train_list = read_list(&cfg.data.join(TRAIN_LIST))?;
            let test_list = read_list(&cfg.data.join(TEST_LIST))?;
            let have: BTreeSet<&String> = stems.iter().collect();
            let in_train: Vec<String> = train_list
                .iter()
                .filter(|s| have.contains(s))
                .cloned()
                .collect();
            let test: Vec<String> = test_list
                .iter()
                .filter(|s| have.contains(s) && !in_train.contains(s))
                .cloned()
                .collect();
            let listed: BTreeSet<&String> = train_list.iter().chain(&test_list).collect();
            let unlisted: Vec<&String> = stems.iter().filter(|s| !listed.contains(s)).collect();
            if !unlisted.is_empty() {
                report.warnings.push(format!(
                    "{} source(s) are in neither official list and are left out: {}",
                    unlisted.len(),
                    unlisted
                        .iter()
                        .map(|s| s.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
            if in_train.is_empty() {
                bail!(
                    "no source of {} is in the data set",
                    cfg.data.join(TRAIN_LIST).display()
                );
            }
            let mut shuffled = in_train;
            shuffled.sort();
            shuffled.shuffle(&mut rng_for(cfg.seed, "split", "official"));
            // Valid takes its share of train + valid from the training list (at least one).
            let frac = s.valid / (s.train + s.valid);
            let n = shuffled.len();
            let mut n_valid = (frac * n as f64 + 1e-9).floor() as usize;
            if frac > 0.0 && n_valid == 0 && n > 1 {
                n_valid = 1;
            }
            // Train (whose ratio is positive) keeps at least one source.
            n_valid = n_valid.min(n - 1);
            let valid = shuffled.split_off(n - n_valid);
            by_source.insert(Split::Train, shuffled);
            by_source.insert(Split::Valid, valid);
            by_source.insert(Split::Test, test);
        }
        SplitMode::ByFile => {
            report.warnings.push(
                "split mode by-file puts augmented copies of valid/test sources into train \
                 (the reference's leak); use it only to compare with the reference"
                    .into(),
            );
            let mut names: Vec<usize> = (0..m.pairs.len()).collect();
            names.shuffle(&mut rng_for(cfg.seed, "split", "by-file"));
            let [a, b, _] = counts(names.len(), [s.train, s.valid, s.test]);
            for (rank, idx) in names.into_iter().enumerate() {
                let split = if rank < a {
                    Split::Train
                } else if rank < a + b {
                    Split::Valid
                } else {
                    Split::Test
                };
                m.pairs[idx].split = Some(split);
            }
            for p in &m.pairs {
                let Some(split) = p.split else { continue };
                let list = by_source.entry(split).or_default();
                if !list.contains(&p.source) {
                    list.push(p.source.clone());
                }
            }
        }
    }
    for split in Split::ALL {
        by_source.entry(split).or_default().sort();
    }

    for g in &same_image {
        let split_of = |stem: &String| {
            by_source
                .iter()
                .find(|(_, v)| v.contains(stem))
                .map(|(k, _)| k.name())
        };
        let splits: BTreeSet<&str> = g.iter().filter_map(split_of).collect();
        let files: Vec<String> = g
            .iter()
            .filter_map(|stem| m.sources.iter().find(|x| &x.stem == stem))
            .map(|x| cfg.data.join(&x.image).display().to_string())
            .collect();
        report.warnings.push(format!(
            "sources {} have identical images (the same pixels: {}): {}",
            g.join(", "),
            files.join(", "),
            if s.mode == SplitMode::BySource {
                format!(
                    "kept together in {}",
                    splits.into_iter().collect::<Vec<_>>().join(", ")
                )
            } else if splits.len() > 1 {
                format!(
                    "they are in different splits ({}) because mode {} does not group them: \
                     a leak",
                    splits.into_iter().collect::<Vec<_>>().join(", "),
                    s.mode
                )
            } else {
                "they are in the same split".to_string()
            }
        ));
    }

    if s.mode != SplitMode::ByFile {
        let split_of: BTreeMap<&String, Split> = by_source
            .iter()
            .flat_map(|(k, v)| v.iter().map(move |s| (s, *k)))
            .collect();
        for p in &mut m.pairs {
            p.split = split_of.get(&p.source).copied().filter(|split| {
                *split != Split::Test || !s.test_originals_only || p.variant == "orig"
            });
        }
    }

    link_dataset(&run, &old, &mut m)?;
    for split in Split::ALL {
        let n = m.pairs.iter().filter(|p| p.split == Some(split)).count();
        report.pairs.insert(split, n);
        report.sources.insert(split, by_source[&split].len());
        if n == 0 {
            report.warnings.push(format!("split {split} is empty"));
        }
    }
    m.split = Some(SplitInfo {
        mode: s.mode,
        ratios: [s.train, s.valid, s.test],
        test_originals_only: s.test_originals_only,
        sources: by_source
            .into_iter()
            .map(|(k, v)| (k.name().to_string(), v))
            .collect(),
    });
    m.save(&run)?;
    commit_point("split: complete");
    report.manifest = m;
    Ok(report)
}

/// Groups (sorted stems, groups sorted) of two or more sources with the same image: the same
/// decoded pixels (`pixel_hash`, so one photograph stored as PNG and as BMP is found), or the
/// same file bytes in manifests that predate the pixel hash.
pub fn same_image_groups(m: &Manifest) -> Vec<Vec<String>> {
    let mut by_hash: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for src in &m.sources {
        let key = if src.pixel_hash.is_empty() {
            &src.image_hash
        } else {
            &src.pixel_hash
        };
        by_hash
            .entry(key.as_str())
            .or_default()
            .push(src.stem.clone());
    }
    let mut groups: Vec<Vec<String>> = by_hash
        .into_values()
        .filter(|g| g.len() > 1)
        .map(|mut g| {
            g.sort();
            g
        })
        .collect();
    groups.sort();
    groups
}

/// Items per split, the one rule for every mode that counts (by-source over sources, by-file
/// over files): train and valid get floor(ratio x n); the rest goes to test (to train when the
/// test ratio is 0). Then every split with a positive ratio that got none takes one item from the
/// largest split (train first on ties), which is always possible when n is at least the number
/// of positive ratios. With fewer items than that, they go one each to train, valid, test (in
/// that order, positive ratios only). A zero ratio always gets none.
pub fn counts(n: usize, ratios: [f64; 3]) -> [usize; 3] {
    let positive: Vec<usize> = (0..3).filter(|&i| ratios[i] > 0.0).collect();
    let mut c = [0usize; 3];
    if n < positive.len() {
        for &i in positive.iter().take(n) {
            c[i] = 1;
        }
        return c;
    }
    let floor = |r: f64| ((r * n as f64 + 1e-9).floor() as usize).min(n);
    c[0] = floor(ratios[0]);
    c[1] = floor(ratios[1]).min(n - c[0]);
    let rest = n - c[0] - c[1];
    if ratios[2] > 0.0 {
        c[2] = rest;
    } else {
        c[0] += rest;
    }
    for &i in &positive {
        if c[i] == 0 {
            let donor = (0..3)
                .filter(|&j| c[j] > 1)
                .max_by_key(|&j| (c[j], std::cmp::Reverse(j)))
                .expect("n >= positive ratios leaves a split with two or more");
            c[donor] -= 1;
            c[i] += 1;
        }
    }
    c
}

/// Refuses, before anything changes:
/// - a master file the split links that is not a regular file, is missing, or no longer holds
///   its recorded bytes (the split would stop half-way, or link an edit in silently);
/// - anything but a regular file at a name of the recorded split (`old`'s): a folder or a link
///   put there (the split would fail half-way, or remove someone's link);
/// - a file of the recorded split whose bytes are no longer the recorded ones (removing it
///   would lose the edit);
/// - any other entry in `dataset/`, except a tool temporary and a regular file holding exactly
///   the bytes `new`'s split puts at its name (a file of the user's at a name the new split
///   writes would otherwise be overwritten).
fn check_dataset(run: &RunLayout, old: &Manifest, new: &Manifest) -> Result<()> {
    crate::owned::check_recorded_files(run.root(), old.master_files().map(|(rel, _)| rel))?;
    // The master files the split links must be there with their recorded bytes: a missing one
    // would stop the split half-way, an edited one would be linked in silently.
    let master: Vec<(&str, &str)> = old.master_files().collect();
    let bad: Vec<(&str, bool)> = master
        .par_iter()
        .filter_map(|(rel, hash)| {
            let path = run.file(rel);
            if !path.exists() {
                Some((*rel, true))
            } else if !hash_file(&path).is_ok_and(|h| h == *hash) {
                Some((*rel, false))
            } else {
                None
            }
        })
        .collect();
    if let Some((rel, missing)) = bad.first() {
        bail!(
            "{} {}{}; nothing was changed: run `pipeline generate` with this config to make \
             the set again (an edited file is moved to unrecorded-N/, not deleted), then \
             `pipeline split`",
            run.file(rel).display(),
            if *missing {
                format!("is missing, though {} records it", run.manifest().display())
            } else {
                format!(
                    "differs from what {} records (edited since it was generated?)",
                    run.manifest().display()
                )
            },
            match bad.len() - 1 {
                0 => String::new(),
                n => format!(" (and {n} more master file(s) like it)"),
            }
        );
    }
    // Each recorded split file with the master file it links: (hash, master path).
    let recorded: BTreeMap<String, (&str, &str)> = old
        .pairs
        .iter()
        .filter_map(|p| {
            let split = p.split?;
            Some(p.master_files().map(move |(part, file, hash)| {
                (
                    crate::run_layout::dataset_rel(split, part, file),
                    (hash, file),
                )
            }))
        })
        .flatten()
        .collect();
    for rel in recorded.keys() {
        let path = run.file(rel);
        if path
            .symlink_metadata()
            .is_ok_and(|m| !m.file_type().is_file())
        {
            bail!(
                "{} is not the file pipeline links there (a folder, a link or another kind of \
                 entry); nothing was changed: move it away and rerun `pipeline split`",
                path.display()
            );
        }
    }
    // A split file that is still a hard link of its master file was hashed just above.
    let edited: Vec<&String> = recorded
        .par_iter()
        .filter(|(rel, (hash, master))| {
            let path = run.file(rel);
            path.exists()
                && !same_file(&path, &run.file(master))
                && !hash_file(&path).is_ok_and(|h| h == *hash)
        })
        .map(|(rel, _)| rel)
        .collect();
    if let Some(rel) = edited.first() {
        bail!(
            "{} differs from what {} records (edited since the split?; {} file(s) like it); \
             nothing was changed: move it away and rerun `pipeline split`",
            run.file(rel).display(),
            run.manifest().display(),
            edited.len()
        );
    }
    // A file no record names, at a name the new split writes, holding exactly the bytes that
    // go there (the split of a set whose manifest became unreadable, made again): kept as the
    // split's own, since nothing of it would be lost.
    let new_files = new.dataset_files();
    let same_as_new = |rel: &str, path: &std::path::Path| {
        new_files
            .get(rel)
            .is_some_and(|hash| hash_file(path).is_ok_and(|h| h == *hash))
    };
    let dataset = run.dataset();
    if !dataset.is_dir() {
        return Ok(());
    }
    for entry in walkdir::WalkDir::new(&dataset).sort_by_file_name() {
        let entry = entry.with_context(|| format!("cannot list {}", dataset.display()))?;
        let rel = rel_path(run.root(), entry.path());
        let name = entry.file_name().to_string_lossy();
        if entry.file_type().is_dir()
            || recorded.contains_key(&rel)
            || crate::io::is_tool_temporary(&name)
            || (entry.file_type().is_file() && same_as_new(&rel, entry.path()))
        {
            continue;
        }
        bail!(
            "{} is not recorded in {} (not made by this tool, or left by an unreadable \
             manifest); nothing was changed: move it away and rerun `pipeline split`",
            entry.path().display(),
            run.manifest().display()
        );
    }
    Ok(())
}

/// Whether `a` and `b` are one file (hard links: the same device and inode).
fn same_file(a: &std::path::Path, b: &std::path::Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (a.symlink_metadata(), b.symlink_metadata()) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// Lays `dataset/` out for `new`'s assignment, recording before acting: the files of `old`'s
/// assignment are removed, `new` (without `split`, so readers see no complete split) is saved,
/// then every file is linked (or copied atomically). Files in `dataset/` that no record names are
/// refused by name before anything changes ([`check_dataset`]), never deleted.
fn link_dataset(run: &RunLayout, old: &Manifest, new: &mut Manifest) -> Result<()> {
    check_dataset(run, old, new)?;
    crate::generate::remove_root_temporaries(run)?;
    let info = new.split.take();
    if old.split.is_some() {
        let mut invalid = old.clone();
        invalid.split = None;
        invalid.save(run)?;
        commit_point("split: old split marked incomplete");
    }
    for p in &old.pairs {
        for (file, _) in p.dataset_files().into_iter().flatten() {
            crate::generate::remove_if_present(&run.file(&file))?;
        }
    }
    new.save(run)?;
    commit_point("split: new split recorded");
    // What else is there was refused by check_dataset (the run's lock keeps it so): only the
    // tool's temporaries of an earlier, killed split go.
    crate::generate::remove_temporaries(&run.dataset())?;
    for split in Split::ALL {
        for part in [PairPart::Image, PairPart::Mask] {
            let d = run.split_dir(split, part);
            std::fs::create_dir_all(&d)
                .with_context(|| format!("cannot create {}", d.display()))?;
        }
    }
    for p in &new.pairs {
        let Some(split) = p.split else { continue };
        for (part, file, hash) in p.master_files() {
            let from = run.file(file);
            let to = run.file(&crate::run_layout::dataset_rel(split, part, file));
            if to.exists() {
                if hash_file(&to).is_ok_and(|h| h == hash) {
                    continue;
                }
                crate::generate::remove_if_present(&to)?;
            }
            if std::fs::hard_link(&from, &to).is_err() {
                let bytes = crate::io::read_regular(&from)
                    .with_context(|| format!("cannot read {}", from.display()))?;
                crate::io::write_atomic(&to, &bytes).with_context(|| {
                    format!("cannot link or copy {} to {}", from.display(), to.display())
                })?;
            }
            commit_point("split: file linked");
        }
    }
    new.split = info;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_match_the_reference_numbers() {
        assert_eq!(counts(2937, [0.8, 0.15, 0.05]), [2349, 440, 148]);
        assert_eq!(counts(89, [0.8, 0.15, 0.05]), [71, 13, 5]);
        assert_eq!(counts(10, [0.8, 0.15, 0.05]), [8, 1, 1]);
        assert_eq!(counts(6, [0.8, 0.15, 0.05]), [3, 1, 2]);
        assert_eq!(counts(10, [1.0, 0.0, 0.0]), [10, 0, 0]);
        assert_eq!(counts(12, [0.8, 0.15, 0.05]), [9, 1, 2]);
    }

    #[test]
    fn every_positive_ratio_gets_a_source_and_zero_gets_none() {
        assert_eq!(counts(3, [0.34, 0.33, 0.33]), [1, 1, 1]);
        assert_eq!(counts(7, [0.9, 0.1, 0.0]), [6, 1, 0]);
        assert_eq!(counts(1, [0.8, 0.15, 0.05]), [1, 0, 0]);
        assert_eq!(counts(2, [0.8, 0.15, 0.05]), [1, 1, 0]);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig {
            cases: 2000,
            rng_algorithm: proptest::test_runner::RngAlgorithm::ChaCha,
            ..Default::default()
        })]
        /// The documented rule over source counts 1..100 and random ratios (some zero).
        #[test]
        fn counts_honour_every_ratio(
            n in 1usize..100,
            raw in proptest::array::uniform3(0u32..1000),
            zero in proptest::array::uniform3(proptest::bool::weighted(0.3)),
        ) {
            let mut w = [0.0f64; 3];
            for i in 0..3 {
                w[i] = if zero[i] && i > 0 { 0.0 } else { f64::from(raw[i]) + 1.0 };
            }
            let sum: f64 = w.iter().sum();
            let r = w.map(|x| x / sum);
            let c = counts(n, r);
            proptest::prop_assert_eq!(c.iter().sum::<usize>(), n);
            let positive = r.iter().filter(|x| **x > 0.0).count();
            for i in 0..3 {
                if r[i] == 0.0 {
                    proptest::prop_assert_eq!(c[i], 0, "zero ratio {:?} {:?}", r, c);
                } else if n >= positive {
                    proptest::prop_assert!(c[i] >= 1, "positive ratio {:?} {:?}", r, c);
                }
                proptest::prop_assert!(
                    (c[i] as f64 - r[i] * n as f64).abs() < 3.0,
                    "far from the ratio: n {} {:?} {:?}", n, r, c
                );
            }
            if n < positive {
                proptest::prop_assert_eq!(c[0], 1);
            }
        }
    }
}
