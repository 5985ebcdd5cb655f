//! `pipeline split`: assigns the master set to train / valid / test and lays the split folders out
//! as hard links into `master/` (copies where links are impossible). `by-source` and `official`
//! keep every source in one split, so no augmented copy of a test image reaches training;
//! `by-file` reproduces the reference's leaky behaviour for comparison only.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use anyhow::{bail, Context, Result};
use rand::seq::SliceRandom;

use crate::config::{Config, SplitMode};
use crate::dataset::layout::{TEST_LIST, TRAIN_LIST};
use crate::dataset::lists::read_list;
use crate::manifest::{dataset_path, Manifest, SplitInfo};
use crate::rng::rng_for;

pub const SPLITS: [&str; 3] = ["train", "valid", "test"];

/// Pairs and sources per split, and warnings for the user.
#[derive(Debug, Clone, Default)]
pub struct SplitReport {
    pub pairs: BTreeMap<String, usize>,
    pub sources: BTreeMap<String, usize>,
    pub warnings: Vec<String>,
}

/// Splits the run's master set as the config says and writes `dataset/` and the manifest.
pub fn split(cfg: &Config) -> Result<SplitReport> {
    let run_dir = cfg.run_dir();
    let mut m = Manifest::load(&run_dir)?;
    let mut report = SplitReport::default();
    let s = &cfg.split;
    let stems: Vec<String> = m.sources.iter().map(|s| s.stem.clone()).collect();
    if stems.is_empty() {
        bail!("the manifest in {} lists no sources", run_dir.display());
    }
    let mut by_source: BTreeMap<String, Vec<String>> = BTreeMap::new();
    match s.mode {
        SplitMode::BySource => {
            let mut shuffled = stems.clone();
            shuffled.shuffle(&mut rng_for(cfg.seed, "split", "by-source"));
            let [a, b, c] = counts(shuffled.len(), [s.train, s.valid, s.test]);
            let mut it = shuffled.into_iter();
            for (name, n) in SPLITS.iter().zip([a, b, c]) {
                by_source.insert(name.to_string(), it.by_ref().take(n).collect());
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
            let valid = shuffled.split_off(n - n_valid);
            by_source.insert("train".into(), shuffled);
            by_source.insert("valid".into(), valid);
            by_source.insert("test".into(), test);
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
                    "train"
                } else if rank < a + b {
                    "valid"
                } else {
                    "test"
                };
                m.pairs[idx].split = Some(split.into());
            }
            for p in &m.pairs {
                let list = by_source
                    .entry(p.split.clone().unwrap_or_default())
                    .or_default();
                if !list.contains(&p.source) {
                    list.push(p.source.clone());
                }
            }
        }
    }
    for name in SPLITS {
        by_source.entry(name.to_string()).or_default().sort();
    }

    if s.mode != SplitMode::ByFile {
        let split_of: BTreeMap<&String, &str> = by_source
            .iter()
            .flat_map(|(k, v)| v.iter().map(move |s| (s, k.as_str())))
            .collect();
        for p in &mut m.pairs {
            p.split = split_of.get(&p.source).and_then(|split| {
                let keep = *split != "test" || !s.test_originals_only || p.variant == "orig";
                keep.then(|| split.to_string())
            });
        }
    }

    link_dataset(&run_dir, &m)?;
    for name in SPLITS {
        let n = m
            .pairs
            .iter()
            .filter(|p| p.split.as_deref() == Some(name))
            .count();
        report.pairs.insert(name.into(), n);
        report.sources.insert(name.into(), by_source[name].len());
        if n == 0 {
            report.warnings.push(format!("split {name} is empty"));
        }
    }
    m.split = Some(SplitInfo {
        mode: serde_json::to_value(s.mode)?
            .as_str()
            .unwrap_or_default()
            .to_string(),
        ratios: [s.train, s.valid, s.test],
        test_originals_only: s.test_originals_only,
        sources: by_source,
    });
    m.save(&run_dir)?;
    Ok(report)
}

/// Items per split: floor of ratio * n for train and valid, the rest to test; a split with a
/// positive ratio gets at least one item when there are enough items to go round.
pub fn counts(n: usize, ratios: [f64; 3]) -> [usize; 3] {
    let mut train = (ratios[0] * n as f64 + 1e-9).floor() as usize;
    let mut valid = (ratios[1] * n as f64 + 1e-9).floor() as usize;
    let test = n - train - valid;
    let mut c = [train, valid, test];
    for i in [1, 2] {
        if ratios[i] > 0.0 && c[i] == 0 && c[0] > 1 {
            c[0] -= 1;
            c[i] += 1;
        }
    }
    train = c[0];
    valid = c[1];
    [train, valid, n - train - valid]
}

/// Recreates `dataset/` from the manifest's split assignment.
fn link_dataset(run_dir: &Path, m: &Manifest) -> Result<()> {
    let dataset = run_dir.join("dataset");
    if dataset.exists() {
        std::fs::remove_dir_all(&dataset)
            .with_context(|| format!("cannot clear {}", dataset.display()))?;
    }
    for split in SPLITS {
        for kind in ["images", "masks"] {
            let d = dataset.join(split).join(kind);
            std::fs::create_dir_all(&d)
                .with_context(|| format!("cannot create {}", d.display()))?;
        }
    }
    for p in &m.pairs {
        let Some(split) = &p.split else { continue };
        for (kind, file) in [("images", &p.image), ("masks", &p.mask)] {
            let from = run_dir.join(file);
            let to = run_dir.join(dataset_path(split, kind, file));
            if std::fs::hard_link(&from, &to).is_err() {
                std::fs::copy(&from, &to).with_context(|| {
                    format!("cannot link or copy {} to {}", from.display(), to.display())
                })?;
            }
        }
    }
    Ok(())
}

/// Source stems that have files in more than one split (a leak). Empty for a correct split.
pub fn leaked_sources(m: &Manifest) -> Vec<String> {
    let mut splits: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for p in &m.pairs {
        if let Some(s) = &p.split {
            splits
                .entry(p.source.as_str())
                .or_default()
                .insert(s.as_str());
        }
    }
    splits
        .into_iter()
        .filter(|(_, s)| s.len() > 1)
        .map(|(k, _)| k.to_string())
        .collect()
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
    }
}
