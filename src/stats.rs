//! `pipeline stats`: what is in the dataset, as a schema-versioned JSON file people open first
//! (`stats.json`), plus a bar chart of pairs per split (`stats.png`). Reads the split folders and
//! the manifest; every number is computed from the files themselves.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context, Result};
use image::Luma;
use imageproc::region_labelling::{connected_components, Connectivity};
use indexmap::IndexMap;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::config::{Config, Lesion};
use crate::io::{open_image, write_json};
use crate::manifest::{Manifest, PairRecord, SplitInfo};
use crate::run_layout::{PairPart, RunLayout, Split};

/// Schema name and version written in `stats.json`'s `schema` field.
pub const SCHEMA: &str = "fundus-pipeline/stats/v1";

/// `stats.json`: the run's inputs, generation, split and per-split measurements.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Stats {
    /// [`SCHEMA`] of the writer (`fundus-pipeline/stats/v1`).
    pub schema: String,
    /// The `pipeline` version (Cargo package version) that wrote the file.
    pub tool_version: String,
    /// blake3 of the canonical config (`Config::canonical`).
    pub config_hash: String,
    /// The config's `seed`: the root of every per-sample random stream.
    pub seed: u64,
    /// What the run read: dataset root, lesion kind, source hashes, ground-truth warnings.
    pub input: Input,
    /// The generation's key, size, variant names and (from `run.json`) timings.
    pub generation: GenerationStats,
    /// The manifest's split record.
    pub split: SplitInfo,
    /// Pairs per variant name, per split.
    pub counts: PerSplit<BTreeMap<String, usize>>,
    /// Measurements of each split's pairs (lesion fraction, components, RGB channel statistics).
    pub splits: PerSplit<SplitSummary>,
    /// The whole resolved config.
    pub config: Config,
}

/// One value per split, in the order train, valid, test.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct PerSplit<T> {
    /// The value of the train split.
    pub train: T,
    /// The value of the validation split.
    pub valid: T,
    /// The value of the test split.
    pub test: T,
}

impl<T> PerSplit<T> {
    /// The value of `split`.
    pub fn get(&self, split: Split) -> &T {
        match split {
            Split::Train => &self.train,
            Split::Valid => &self.valid,
            Split::Test => &self.test,
        }
    }

    fn from_fn(mut f: impl FnMut(Split) -> T) -> Self {
        Self {
            train: f(Split::Train),
            valid: f(Split::Valid),
            test: f(Split::Test),
        }
    }
}

/// What the run read.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Input {
    /// The dataset root (`data`).
    pub root: PathBuf,
    /// The lesion kind whose ground truth was read (`hemorrhages`, `hardexudates`,
    /// `softexudates` or `redsmalldots`).
    pub lesion: Lesion,
    /// Every source photograph with its content hashes, in the manifest's order.
    pub sources: Vec<InputSource>,
    /// Sources per ground-truth warning code ([`crate::prep::TruthIssue::CODES`], every code,
    /// in that order).
    pub truth_warnings: IndexMap<String, usize>,
    /// Groups of sources whose images are identical ([`crate::split::same_image_groups`]).
    pub same_image_groups: Vec<Vec<String>>,
}

/// One source photograph and its content hashes (blake3).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct InputSource {
    /// File stem of the photograph, e.g. `image001`.
    pub stem: String,
    /// blake3 (hex) of the photograph file's bytes.
    pub image_hash: String,
    /// blake3 (hex) of the ground-truth file's bytes.
    pub truth_hash: String,
}

/// The generation's key and size, with the timings of `run.json` (null when it is missing).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct GenerationStats {
    /// blake3 (hex) of the settings that decide the master set: seed, lesion and `generate`
    /// section ([`crate::manifest::GenerationKey`]).
    pub generation_key: String,
    /// Image/mask pairs in the manifest (every split together).
    pub pairs: usize,
    /// Variant names (`orig`, `rotate_20`, ...) in plan order.
    pub variants: Vec<String>,
    /// Wall-clock time of the last `generate`, seconds (from `run.json`); null when `run.json` is
    /// missing or unreadable.
    pub wall_seconds: Option<f64>,
    /// Pairs of the last `generate` divided by its wall-clock time, pairs per second; null as
    /// above.
    pub pairs_per_second: Option<f64>,
    /// Worker threads the last `generate` used; null as above.
    pub threads: Option<usize>,
}

/// Measurements of one split's pairs.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct SplitSummary {
    /// Pairs assigned to this split.
    pub pairs: usize,
    /// Source photographs assigned to this split (from the manifest's split record).
    pub sources: usize,
    /// Pairs whose mask has no lesion pixel.
    pub empty_masks: usize,
    /// Lesion pixels / pixels, per pair.
    pub foreground_fraction: Distribution,
    /// 8-connected lesion components of the split's masks (count, per pair, sizes).
    pub lesion_components: LesionComponents,
    /// Per-channel RGB mean and standard deviation of the split's images.
    pub image_channels: ImageChannels,
}

/// 8-connected lesion components of the masks.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct LesionComponents {
    /// Components over all masks of the split.
    pub count: usize,
    /// Components per pair.
    pub per_pair: Distribution,
    /// Component sizes in pixels.
    pub size_pixels: Distribution,
}

/// Mean and standard deviation of the RGB channels over all pixels of a split (0..1 scale).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ImageChannels {
    /// States what `mean` and `std` cover (scale 0..1, every pixel of the split).
    pub note: String,
    /// Mean of R, G, B over every pixel of the split, each value / 255 (0..1), rounded to 6
    /// decimals.
    pub mean: [f64; 3],
    /// Population standard deviation of R, G, B, `sqrt(E[v^2] - E[v]^2)`, same scale and rounding.
    pub std: [f64; 3],
}

/// mean, min, p50, p95, max (nearest-rank percentiles, rounded to 6 decimals); all null for an
/// empty list.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct Distribution {
    /// Arithmetic mean.
    pub mean: Option<f64>,
    /// Smallest value.
    pub min: Option<f64>,
    /// Median: nearest-rank 50th percentile, the value at rank ceil(0.5 n) of the sorted list.
    pub p50: Option<f64>,
    /// Nearest-rank 95th percentile, the value at rank ceil(0.95 n) of the sorted list.
    pub p95: Option<f64>,
    /// Largest value.
    pub max: Option<f64>,
}

/// Per-pair measurements.
#[derive(Debug, Clone, Default)]
struct PairStats {
    foreground: f64,
    components: Vec<u64>,
    sum: [f64; 3],
    sum_sq: [f64; 3],
    pixels: u64,
}

/// Computes the statistics of the run from its manifest `m` (with a complete split) and the split
/// files, writes `stats.json` and `stats.png`, returns them.
pub fn stats(cfg: &Config, m: &Manifest) -> Result<Stats> {
    let run = cfg.layout();
    crate::generate::check_generated_by(cfg, m)?;
    let split_info = m.split.as_ref().with_context(|| {
        format!(
            "{} has no split yet (run `pipeline split` first)",
            run.manifest().display()
        )
    })?;
    // Every file of the stats stage, the sample sheets included, is claimed before any is written.
    let mut own = vec!["stats.json".to_string(), "stats.png".to_string()];
    own.extend(crate::preview::sample_sheet_names());
    crate::owned::claim(run.root(), &own)?;
    let measured: Vec<(&PairRecord, PairStats)> = m
        .pairs
        .par_iter()
        .filter(|p| p.split.is_some())
        .map(|p| measure(&run, p).map(|s| (p, s)))
        .collect::<Result<_>>()?;

    let in_split = |split: Split| -> Vec<&(&PairRecord, PairStats)> {
        measured
            .iter()
            .filter(|(p, _)| p.split == Some(split))
            .collect()
    };
    let counts = PerSplit::from_fn(|split| {
        let mut per_variant: BTreeMap<String, usize> = BTreeMap::new();
        for (p, _) in in_split(split) {
            *per_variant.entry(p.variant.clone()).or_default() += 1;
        }
        per_variant
    });
    let splits =
        PerSplit::from_fn(|split| summarize(&in_split(split), split_info.sources_of(split).len()));

    let (_, config_hash) = cfg.canonical();
    let timing = crate::generate::RunInfo::read(&run).map(|r| r.generate);
    let out = Stats {
        schema: SCHEMA.into(),
        tool_version: env!("CARGO_PKG_VERSION").into(),
        config_hash,
        seed: cfg.seed,
        input: Input {
            root: cfg.data.clone(),
            lesion: cfg.lesion,
            sources: m
                .sources
                .iter()
                .map(|s| InputSource {
                    stem: s.stem.clone(),
                    image_hash: s.image_hash.clone(),
                    truth_hash: s.truth_hash.clone(),
                })
                .collect(),
            truth_warnings: truth_warning_counts(m),
            same_image_groups: crate::split::same_image_groups(m),
        },
        generation: GenerationStats {
            generation_key: m.generation_key.clone(),
            pairs: m.pairs.len(),
            variants: m.generation.variants.clone(),
            wall_seconds: timing.as_ref().map(|r| r.wall_seconds),
            pairs_per_second: timing.as_ref().map(|r| r.pairs_per_second),
            threads: timing.as_ref().map(|r| r.threads),
        },
        split: split_info.clone(),
        counts,
        splits,
        config: cfg.clone(),
    };
    write_json(&run.stats_json(), &out)?;
    crate::io::commit_point("stats: stats.json written");
    let bars: Vec<(String, usize)> = Split::ALL
        .iter()
        .map(|s| (s.to_string(), out.splits.get(*s).pairs))
        .collect();
    crate::plot::bar_chart(&run.stats_png(), "Pairs per split", &bars)?;
    Ok(out)
}

/// Sources per ground-truth warning code ([`crate::prep::TruthIssue`]), every code present.
fn truth_warning_counts(m: &Manifest) -> IndexMap<String, usize> {
    crate::prep::TruthIssue::CODES
        .iter()
        .map(|code| {
            let n = m
                .sources
                .iter()
                .filter(|s| s.truth_warnings.iter().any(|c| c == code))
                .count();
            (code.to_string(), n)
        })
        .collect()
}

/// Measures one split pair. The lesion share comes from the foreground count generate recorded
/// (the mask is decoded only when it has lesion pixels, for its components).
fn measure(run: &RunLayout, p: &PairRecord) -> Result<PairStats> {
    let file = |part| run.file(&p.dataset_file(part).unwrap_or_default());
    let image = open_image(&file(PairPart::Image))?.to_rgb8();
    let pixels = u64::from(image.width()) * u64::from(image.height());
    let mut sizes: BTreeMap<u32, u64> = BTreeMap::new();
    if p.foreground > 0 {
        let mask = open_image(&file(PairPart::Mask))?.to_luma8();
        let labels = connected_components(&mask, Connectivity::Eight, Luma([0u8]));
        for l in labels.pixels() {
            if l[0] != 0 {
                *sizes.entry(l[0]).or_default() += 1;
            }
        }
    }
    let mut s = PairStats {
        foreground: p.foreground as f64 / pixels as f64,
        components: sizes.into_values().collect(),
        pixels,
        ..Default::default()
    };
    for px in image.pixels() {
        for c in 0..3 {
            let v = f64::from(px[c]) / 255.0;
            s.sum[c] += v;
            s.sum_sq[c] += v * v;
        }
    }
    Ok(s)
}

fn summarize(items: &[&(&PairRecord, PairStats)], sources: usize) -> SplitSummary {
    let fg: Vec<f64> = items.iter().map(|(_, s)| s.foreground).collect();
    let comps: Vec<f64> = items
        .iter()
        .flat_map(|(_, s)| s.components.iter().map(|c| *c as f64))
        .collect();
    let per_pair: Vec<f64> = items
        .iter()
        .map(|(_, s)| s.components.len() as f64)
        .collect();
    let pixels: f64 = items.iter().map(|(_, s)| s.pixels as f64).sum();
    let mut mean = [0.0; 3];
    let mut std = [0.0; 3];
    for c in 0..3 {
        let sum: f64 = items.iter().map(|(_, s)| s.sum[c]).sum();
        let sq: f64 = items.iter().map(|(_, s)| s.sum_sq[c]).sum();
        if pixels > 0.0 {
            mean[c] = sum / pixels;
            std[c] = (sq / pixels - mean[c] * mean[c]).max(0.0).sqrt();
        }
    }
    SplitSummary {
        pairs: items.len(),
        sources,
        empty_masks: items.iter().filter(|(_, s)| s.foreground == 0.0).count(),
        foreground_fraction: distribution(&fg),
        lesion_components: LesionComponents {
            count: comps.len(),
            per_pair: distribution(&per_pair),
            size_pixels: distribution(&comps),
        },
        image_channels: ImageChannels {
            note: "RGB of the images scaled to 0..1, over all pixels of the split".into(),
            mean: mean.map(round6),
            std: std.map(round6),
        },
    }
}

/// mean, min, p50, p95, max (nearest-rank percentiles); nulls for an empty list.
pub fn distribution(values: &[f64]) -> Distribution {
    if values.is_empty() {
        return Distribution::default();
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = |q: f64| v[((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
    Distribution {
        mean: Some(round6(v.iter().sum::<f64>() / v.len() as f64)),
        min: Some(round6(v[0])),
        p50: Some(round6(rank(0.5))),
        p95: Some(round6(rank(0.95))),
        max: Some(round6(v[v.len() - 1])),
    }
}

fn round6(x: f64) -> f64 {
    (x * 1e6).round() / 1e6
}

/// A few lines for the terminal.
pub fn summary(stats: &Stats) -> String {
    let mut out = String::new();
    for split in Split::ALL {
        let (name, s) = (split.name(), stats.splits.get(split));
        out += &format!(
            "{name:>5}: {:>5} pairs from {:>3} sources, {} empty masks, lesion fraction mean {:.4} \
             (p95 {:.4}), {} lesion components\n",
            s.pairs,
            s.sources,
            s.empty_masks,
            s.foreground_fraction.mean.unwrap_or(0.0),
            s.foreground_fraction.p95.unwrap_or(0.0),
            s.lesion_components.count,
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distribution_uses_nearest_rank() {
        let d = distribution(&[5.0, 1.0, 3.0, 2.0, 4.0]);
        assert_eq!(d.min, Some(1.0));
        assert_eq!(d.p50, Some(3.0));
        assert_eq!(d.p95, Some(5.0));
        assert_eq!(d.mean, Some(3.0));
        assert_eq!(distribution(&[]), Distribution::default());
    }
}
