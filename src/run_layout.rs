//! Where everything of a run lives. A run folder is `<out>/<name>` (config keys `out`, `name`);
//! [`RunLayout`] owns every path and file name under it, so no stage spells `"master"` or
//! `"dataset/test/images"` itself, and [`Split`] names the three parts of the dataset.
//!
//! The layout (README, "Outputs"):
//! ```text
//! <out>/<name>/
//!   manifest.json            every generated file with its hash (written last)
//!   run.json                 timings of the last generation
//!   generate.journal         progress of an unfinished generation (removed when done)
//!   generate.commit.json     the next manifest while staging/ is swapped in as master/
//!   staging/  master.old/    the swap's two sides (transient)
//!   pipeline.lock            the writer lock
//!   master/{images,masks}/   the generated pairs
//!   dataset/<split>/{images,masks}/  hard links into master/
//!   stats.json  stats.png  samples_<split>.png  preview_<stem>.png
//!   train/                   checkpoints, curves, losses (checkpoint.json points at the set)
//!   eval/evaluation.{json,csv}
//!   infer/<stem>_{mask,green,overlay}.png
//!   shards/K-of-N/           one shard of `generate --shard K/N` (a run folder of its own + shard.json)
//! ```

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// One part of the split dataset. Serialized (manifest, stats.json) as its lower-case name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    /// Pairs the model learns from.
    Train,
    /// Pairs that choose the best epoch (early stopping, learning-rate schedule).
    Valid,
    /// Held-out pairs (whole sources) for the final evaluation.
    Test,
}

impl Split {
    /// The three splits in their fixed order.
    pub const ALL: [Split; 3] = [Split::Train, Split::Valid, Split::Test];

    /// The name users write and folders carry: `train`, `valid`, `test`.
    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Valid => "valid",
            Split::Test => "test",
        }
    }
}

impl fmt::Display for Split {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Split {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> anyhow::Result<Split> {
        Split::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| anyhow::anyhow!("unknown split {s:?} (expected train, valid or test)"))
    }
}

/// Images or masks: the two halves of a pair, and the two sub-folders of every pair folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PairPart {
    /// The RGB fundus image (`images/`).
    Image,
    /// The 0/255 lesion mask (`masks/`).
    Mask,
}

impl PairPart {
    /// The sub-folder name: `images` or `masks`.
    pub fn dir(self) -> &'static str {
        match self {
            PairPart::Image => "images",
            PairPart::Mask => "masks",
        }
    }
}

/// The paths of one run folder. Cheap to clone; holds only the root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunLayout {
    root: PathBuf,
}

impl RunLayout {
    /// File name of the manifest.
    pub const MANIFEST: &'static str = "manifest.json";
    /// File name of the generation journal.
    pub const JOURNAL: &'static str = "generate.journal";
    /// File name of the generation timings.
    pub const RUN_INFO: &'static str = "run.json";
    /// File name of the manifest-to-be during the staging swap.
    pub const COMMIT: &'static str = "generate.commit.json";
    /// File name of the writer lock.
    pub const LOCK: &'static str = "pipeline.lock";
    /// Folder of the generated pairs.
    pub const MASTER: &'static str = "master";
    /// Folder a generation writes into before it is swapped in as `master/`.
    pub const STAGING: &'static str = "staging";
    /// Where the previous `master/` waits during the swap.
    pub const OLD_MASTER: &'static str = "master.old";
    /// Folder of the split dataset.
    pub const DATASET: &'static str = "dataset";
    /// Folder of the shards of an array job (`generate --shard K/N`, src/shard.rs).
    pub const SHARDS: &'static str = "shards";

    /// The layout of the run folder `root` (`<out>/<name>`).
    pub fn new(root: impl Into<PathBuf>) -> RunLayout {
        RunLayout { root: root.into() }
    }

    /// The run folder itself.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `manifest.json`.
    pub fn manifest(&self) -> PathBuf {
        self.root.join(Self::MANIFEST)
    }

    /// `generate.journal`.
    pub fn journal(&self) -> PathBuf {
        self.root.join(Self::JOURNAL)
    }

    /// `run.json`.
    pub fn run_info(&self) -> PathBuf {
        self.root.join(Self::RUN_INFO)
    }

    /// `generate.commit.json`.
    pub fn commit_record(&self) -> PathBuf {
        self.root.join(Self::COMMIT)
    }

    /// `master/`.
    pub fn master(&self) -> PathBuf {
        self.root.join(Self::MASTER)
    }

    /// `staging/`.
    pub fn staging(&self) -> PathBuf {
        self.root.join(Self::STAGING)
    }

    /// `master.old/`.
    pub fn old_master(&self) -> PathBuf {
        self.root.join(Self::OLD_MASTER)
    }

    /// `dataset/`.
    pub fn dataset(&self) -> PathBuf {
        self.root.join(Self::DATASET)
    }

    /// Every folder of the run that pipeline makes and writes or removes files in: `master/` and
    /// `master.old/` with their `images/` and `masks/`, `dataset/` with each split's folder and
    /// its `images/` and `masks/` ([`crate::owned::check_folders`] refuses a link or a file at
    /// any of them).
    pub fn own_folders(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for set in [self.master(), self.old_master()] {
            let parts = [PairPart::Image, PairPart::Mask].map(|p| set.join(p.dir()));
            out.push(set);
            out.extend(parts);
        }
        out.push(self.dataset());
        for split in Split::ALL {
            out.push(self.split_root(split));
            out.extend([PairPart::Image, PairPart::Mask].map(|p| self.split_dir(split, p)));
        }
        out
    }

    /// `dataset/<split>/`.
    pub fn split_root(&self, split: Split) -> PathBuf {
        self.dataset().join(split.name())
    }

    /// `dataset/<split>/<images|masks>/`.
    pub fn split_dir(&self, split: Split, part: PairPart) -> PathBuf {
        self.split_root(split).join(part.dir())
    }

    /// A path relative to the run folder (as the manifest records them) made absolute.
    pub fn file(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    /// `stats.json`.
    pub fn stats_json(&self) -> PathBuf {
        self.root.join("stats.json")
    }

    /// `stats.png`, the bar chart of pairs per split.
    pub fn stats_png(&self) -> PathBuf {
        self.root.join("stats.png")
    }

    /// `samples_<split>.png`, the sample sheet of one split.
    pub fn samples_sheet(&self, split: Split) -> PathBuf {
        self.root.join(format!("samples_{split}.png"))
    }

    /// `preview_<stem>.png` in `dir` (default: the run folder).
    pub fn preview_sheet(&self, dir: Option<&Path>, stem: &str) -> PathBuf {
        dir.unwrap_or(&self.root)
            .join(format!("preview_{stem}.png"))
    }

    /// `train/`: checkpoints, curves and losses.
    pub fn train_dir(&self) -> PathBuf {
        self.root.join("train")
    }

    /// `eval/`: evaluation.json and evaluation.csv.
    pub fn eval_dir(&self) -> PathBuf {
        self.root.join("eval")
    }

    /// `infer/`, the default folder of `infer`'s masks and overlays.
    pub fn infer_dir(&self) -> PathBuf {
        self.root.join("infer")
    }

    /// `shards/`: one folder per shard, `K-of-N/` (generate) or `infer-K-of-N/` (infer's lock).
    pub fn shards(&self) -> PathBuf {
        self.root.join(Self::SHARDS)
    }
}

/// The path, relative to the run folder, of a pair file of `split` (file name of `master_rel`).
pub fn dataset_rel(split: Split, part: PairPart, master_rel: &str) -> String {
    let name = Path::new(master_rel)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    format!("{}/{split}/{}/{name}", RunLayout::DATASET, part.dir())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_names_round_trip_through_text_and_json() {
        for s in Split::ALL {
            assert_eq!(s.name().parse::<Split>().unwrap(), s);
            let json = serde_json::to_string(&s).unwrap();
            assert_eq!(json, format!("\"{}\"", s.name()));
            assert_eq!(serde_json::from_str::<Split>(&json).unwrap(), s);
        }
        assert!("Test".parse::<Split>().is_err());
    }

    #[test]
    fn dataset_paths_keep_the_file_name_only() {
        assert_eq!(
            dataset_rel(
                Split::Valid,
                PairPart::Mask,
                "master/masks/image001_hflip.png"
            ),
            "dataset/valid/masks/image001_hflip.png"
        );
        let l = RunLayout::new("/r/demo");
        assert_eq!(
            l.split_dir(Split::Test, PairPart::Image),
            Path::new("/r/demo/dataset/test/images")
        );
    }
}
