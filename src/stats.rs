//! `pipeline stats`: what is in the dataset, as a schema-versioned JSON file people open first
//! (`stats.json`), plus a bar chart of pairs per split (`stats.png`). Reads the split folders and
//! the manifest; every number is computed from the files themselves.

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use image::Luma;
use imageproc::region_labelling::{connected_components, Connectivity};
use rayon::prelude::*;
use serde_json::{json, Value};

use crate::config::Config;
use crate::io::{open_image, write_json};
use crate::manifest::{Manifest, PairRecord};
use crate::run_layout::{PairPart, RunLayout, Split};

/// Schema name and version written in `stats.json`'s `schema` field.
pub const SCHEMA: &str = "fundus-pipeline/stats/v1";

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
/// files, writes `stats.json` and `stats.png`, returns the JSON.
pub fn stats(cfg: &Config, m: &Manifest) -> Result<Value> {
    let run = cfg.layout();
    let split_info = m.split.as_ref().with_context(|| {
        format!(
            "{} has no split yet (run `pipeline split` first)",
            run.manifest().display()
        )
    })?;
    let measured: Vec<(&PairRecord, PairStats)> = m
        .pairs
        .par_iter()
        .filter(|p| p.split.is_some())
        .map(|p| measure(&run, p).map(|s| (p, s)))
        .collect::<Result<_>>()?;

    let mut splits = serde_json::Map::new();
    let mut counts = serde_json::Map::new();
    for split in Split::ALL {
        let name = split.name();
        let items: Vec<&(&PairRecord, PairStats)> = measured
            .iter()
            .filter(|(p, _)| p.split == Some(split))
            .collect();
        let mut per_variant: BTreeMap<&str, usize> = BTreeMap::new();
        for (p, _) in &items {
            *per_variant.entry(p.variant.as_str()).or_default() += 1;
        }
        counts.insert(name.into(), json!(per_variant));
        splits.insert(
            name.into(),
            summarize(&items, split_info.sources_of(split).len()),
        );
    }

    let (config_json, config_hash) = cfg.canonical();
    let run_info: Value = std::fs::read_to_string(run.run_info())
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or(Value::Null);
    let out = json!({
        "schema": SCHEMA,
        "tool_version": env!("CARGO_PKG_VERSION"),
        "config_hash": config_hash,
        "seed": cfg.seed,
        "input": {
            "root": cfg.data.display().to_string(),
            "lesion": cfg.lesion,
            "sources": m.sources.iter().map(|s| json!({
                "stem": s.stem, "image_hash": s.image_hash, "truth_hash": s.truth_hash,
            })).collect::<Vec<_>>(),
            "truth_warnings": truth_warning_counts(m),
            "same_image_groups": crate::split::same_image_groups(m),
        },
        "generation": {
            "generation_key": m.generation_key,
            "pairs": m.pairs.len(),
            "variants": m.generation["variants"],
            "wall_seconds": run_info["generate"]["wall_seconds"],
            "pairs_per_second": run_info["generate"]["pairs_per_second"],
            "threads": run_info["generate"]["threads"],
        },
        "split": {
            "mode": split_info.mode,
            "ratios": split_info.ratios,
            "test_originals_only": split_info.test_originals_only,
            "sources": split_info.sources,
        },
        "counts": counts,
        "splits": splits,
        "config": serde_json::from_str::<Value>(&config_json)?,
    });
    write_json(&run.stats_json(), &out)?;
    crate::io::commit_point("stats: stats.json written");
    let bars: Vec<(String, usize)> = Split::ALL
        .iter()
        .map(|s| {
            (
                s.to_string(),
                out["splits"][s.name()]["pairs"].as_u64().unwrap_or(0) as usize,
            )
        })
        .collect();
    crate::plot::bar_chart(&run.stats_png(), "Pairs per split", &bars)?;
    Ok(out)
}

/// Sources per ground-truth warning code ([`crate::prep::TruthIssue`]), every code present.
fn truth_warning_counts(m: &Manifest) -> Value {
    let mut out = serde_json::Map::new();
    for code in crate::prep::TruthIssue::CODES {
        let n = m
            .sources
            .iter()
            .filter(|s| s.truth_warnings.iter().any(|c| c == code))
            .count();
        out.insert(code.into(), json!(n));
    }
    Value::Object(out)
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

fn summarize(items: &[&(&PairRecord, PairStats)], sources: usize) -> Value {
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
    json!({
        "pairs": items.len(),
        "sources": sources,
        "empty_masks": items.iter().filter(|(_, s)| s.foreground == 0.0).count(),
        "foreground_fraction": distribution(&fg),
        "lesion_components": {
            "count": comps.len(),
            "per_pair": distribution(&per_pair),
            "size_pixels": distribution(&comps),
        },
        "image_channels": {
            "note": "RGB of the images scaled to 0..1, over all pixels of the split",
            "mean": mean.map(round6),
            "std": std.map(round6),
        },
    })
}

/// mean, min, p50, p95, max (nearest-rank percentiles); nulls for an empty list.
pub fn distribution(values: &[f64]) -> Value {
    if values.is_empty() {
        return json!({"mean": null, "min": null, "p50": null, "p95": null, "max": null});
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = |q: f64| v[((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
    json!({
        "mean": round6(v.iter().sum::<f64>() / v.len() as f64),
        "min": round6(v[0]),
        "p50": round6(rank(0.5)),
        "p95": round6(rank(0.95)),
        "max": round6(v[v.len() - 1]),
    })
}

fn round6(x: f64) -> f64 {
    (x * 1e6).round() / 1e6
}

/// A few lines for the terminal.
pub fn summary(stats: &Value) -> String {
    let mut out = String::new();
    for name in Split::ALL.map(Split::name) {
        let s = &stats["splits"][name];
        out += &format!(
            "{name:>5}: {:>5} pairs from {:>3} sources, {} empty masks, lesion fraction mean {:.4} \
             (p95 {:.4}), {} lesion components\n",
            s["pairs"],
            s["sources"],
            s["empty_masks"],
            s["foreground_fraction"]["mean"].as_f64().unwrap_or(0.0),
            s["foreground_fraction"]["p95"].as_f64().unwrap_or(0.0),
            s["lesion_components"]["count"],
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
        assert_eq!(d["min"], 1.0);
        assert_eq!(d["p50"], 3.0);
        assert_eq!(d["p95"], 5.0);
        assert_eq!(d["mean"], 3.0);
        assert!(distribution(&[])["mean"].is_null());
    }
}
