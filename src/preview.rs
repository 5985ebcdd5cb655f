//! Preview sheets: the quickest way for a person to check what the generator made. `pipeline
//! preview` draws every variant of one source on one PNG (`preview_<stem>.png`, tiles in plan
//! order, `orig` first); `pipeline stats` draws a seeded sample of each split
//! (`samples_<split>.png`). Each tile is the image with its mask drawn over it as a thin cyan
//! outline (not a filled blob, so the lesion itself stays visible), labelled underneath in the
//! embedded DejaVu Sans Mono. Both kinds of sheet share one tile and sheet builder, read the files
//! the manifest lists, and are written atomically; the same config gives the same bytes.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use image::{GrayImage, Rgb, RgbImage};
use imageproc::drawing::{draw_text_mut, text_size};
use rand::seq::SliceRandom;
use rayon::prelude::*;

use crate::config::Config;
use crate::io::{encode_png_rgb, open_image, write_atomic};
use crate::manifest::{Manifest, PairRecord};
use crate::rng::rng_for;
use crate::run_layout::{PairPart, RunLayout, Split};

/// Side of a tile's picture, pixels.
pub const TILE: u32 = 300;
/// Height of the label band under each tile.
pub const LABEL: u32 = 20;
/// Space between tiles and around the sheet.
pub const GAP: u32 = 4;
/// Height of the title band at the top of a sheet.
pub const HEADER: u32 = 28;
/// Tiles per row at most: 8 x 300 px + gaps = 2436 px, so 36 variants fit in 5 rows.
pub const COLUMNS: u32 = 8;
/// Text size of labels and titles, pixels.
pub const TEXT_SCALE: f32 = 15.0;
/// The mask outline colour: cyan, the complement of the fundus reds and oranges.
pub const OUTLINE: Rgb<u8> = Rgb([0, 255, 255]);
const BACKGROUND: Rgb<u8> = Rgb([24, 24, 24]);
const TEXT: Rgb<u8> = Rgb([235, 235, 235]);

/// Width and height of a sheet of `tiles` tiles: up to [`COLUMNS`] per row, a [`HEADER`] band on
/// top, [`GAP`] around every tile, a [`LABEL`] band under each.
pub fn sheet_size(tiles: usize) -> (u32, u32) {
    let tiles = tiles as u32;
    let cols = tiles.clamp(1, COLUMNS);
    let rows = tiles.div_ceil(COLUMNS);
    (
        cols * TILE + (cols + 1) * GAP,
        HEADER + rows * (TILE + LABEL + GAP) + GAP,
    )
}

/// The boundary of a mask: mask pixels (>= 128) with a 4-neighbour outside the mask (the frame
/// counts as outside). 255 on the boundary, 0 elsewhere.
pub fn boundary(mask: &GrayImage) -> GrayImage {
    let (w, h) = mask.dimensions();
    let inside = |x: i64, y: i64| {
        x >= 0
            && y >= 0
            && x < i64::from(w)
            && y < i64::from(h)
            && mask.get_pixel(x as u32, y as u32)[0] >= 128
    };
    GrayImage::from_fn(w, h, |x, y| {
        let (x, y) = (i64::from(x), i64::from(y));
        let edge = inside(x, y)
            && [(-1, 0), (1, 0), (0, -1), (0, 1)]
                .iter()
                .any(|(dx, dy)| !inside(x + dx, y + dy));
        image::Luma([if edge { 255 } else { 0 }])
    })
}

/// Downscales a 0/255 mask to `w` x `h` by area, keeping every output pixel that any mask pixel
/// touches, so no lesion vanishes at tile size (the outline may sit up to one tile pixel outside
/// the exact area boundary). Same size: returned as is, binarized at 128.
pub fn shrink_mask(mask: &GrayImage, w: u32, h: u32) -> GrayImage {
    let (sw, sh) = mask.dimensions();
    if (sw, sh) == (w, h) {
        return GrayImage::from_fn(w, h, |x, y| {
            image::Luma([if mask.get_pixel(x, y)[0] >= 128 {
                255
            } else {
                0
            }])
        });
    }
    // Source pixels [lo, hi) overlap output pixel i with positive area.
    let span = |i: u32, s: u32, d: u32| {
        let (i, s, d) = (u64::from(i), u64::from(s), u64::from(d));
        let lo = (i * s / d) as u32;
        let hi = ((i + 1) * s).div_ceil(d).min(s) as u32;
        lo..hi.max(lo + 1)
    };
    GrayImage::from_fn(w, h, |x, y| {
        let hit =
            span(y, sh, h).any(|sy| span(x, sw, w).any(|sx| mask.get_pixel(sx, sy)[0] >= 128));
        image::Luma([if hit { 255 } else { 0 }])
    })
}

/// One tile picture: `image` and `mask` scaled to [`TILE`] x [`TILE`] (anti-aliased image,
/// see [`shrink_mask`] for the mask), with the mask's [`boundary`] painted in [`OUTLINE`].
pub fn tile(image: &RgbImage, mask: &GrayImage) -> Result<RgbImage> {
    let mut out = if image.dimensions() == (TILE, TILE) {
        image.clone()
    } else {
        let buf = crate::prep::resize(
            image.as_raw().clone(),
            image.width(),
            image.height(),
            TILE,
            TILE,
            fast_image_resize::PixelType::U8x3,
            fast_image_resize::FilterType::Bilinear,
        )?;
        RgbImage::from_raw(TILE, TILE, buf).expect("buffer size")
    };
    let edge = boundary(&shrink_mask(mask, TILE, TILE));
    for (x, y, v) in edge.enumerate_pixels() {
        if v[0] != 0 {
            out.put_pixel(x, y, OUTLINE);
        }
    }
    Ok(out)
}

/// A sheet: `title` on top, then the tiles (each [`TILE`] square) row by row with their labels
/// underneath. Labels too wide for a tile are cut and end in "~".
pub fn sheet(title: &str, tiles: &[(RgbImage, String)]) -> RgbImage {
    let (w, h) = sheet_size(tiles.len());
    let mut img = RgbImage::from_pixel(w, h, BACKGROUND);
    let font = crate::font::font();
    let text_y = |band_top: u32, band: u32| band_top as i32 + (band as i32 - TEXT_SCALE as i32) / 2;
    draw_text_mut(
        &mut img,
        TEXT,
        GAP as i32,
        text_y(0, HEADER),
        TEXT_SCALE,
        &font,
        &fit(title, w - 2 * GAP, &font),
    );
    for (i, (pic, label)) in tiles.iter().enumerate() {
        let (col, row) = (i as u32 % COLUMNS, i as u32 / COLUMNS);
        let x = GAP + col * (TILE + GAP);
        let y = HEADER + row * (TILE + LABEL + GAP);
        image::imageops::replace(&mut img, pic, i64::from(x), i64::from(y));
        draw_text_mut(
            &mut img,
            TEXT,
            x as i32 + 2,
            text_y(y + TILE, LABEL),
            TEXT_SCALE,
            &font,
            &fit(label, TILE - 4, &font),
        );
    }
    img
}

/// `text`, cut to fit `width` pixels at [`TEXT_SCALE`].
fn fit(text: &str, width: u32, font: &ab_glyph::FontRef<'_>) -> String {
    if text_size(TEXT_SCALE, font, text).0 <= width {
        return text.to_string();
    }
    let mut chars: Vec<char> = text.chars().collect();
    while !chars.is_empty() {
        chars.pop();
        let s: String = chars.iter().chain(['~'].iter()).collect();
        if text_size(TEXT_SCALE, font, &s).0 <= width {
            return s;
        }
    }
    String::new()
}

/// Loads an image and its mask (paths relative to the run folder) and draws the tile.
fn load_tile(run: &RunLayout, image: &str, mask: &str) -> Result<RgbImage> {
    let img = open_image(&run.file(image))?.to_rgb8();
    let m = open_image(&run.file(mask))?.to_luma8();
    tile(&img, &m).with_context(|| format!("drawing the tile of {image}"))
}

/// Draws the tiles (in parallel, order kept) and writes the sheet to `path` atomically.
fn write_sheet(
    path: &Path,
    title: &str,
    run: &RunLayout,
    files: &[(String, String, String)],
) -> Result<()> {
    let tiles: Vec<(RgbImage, String)> = files
        .par_iter()
        .map(|(image, mask, label)| load_tile(run, image, mask).map(|t| (t, label.clone())))
        .collect::<Result<_>>()?;
    write_atomic(path, &encode_png_rgb(&sheet(title, &tiles))?)
}

/// `pipeline preview`: every variant of `source` (default: the first source stem, sorted) on one
/// sheet `preview_<stem>.png` in `out` (default: the run folder), tiles in plan order (the
/// manifest's `generation.variants`). `m` is the run's manifest (a complete generation).
/// Returns the sheet's path.
pub fn preview(
    cfg: &Config,
    m: &Manifest,
    source: Option<&str>,
    out: Option<&Path>,
) -> Result<PathBuf> {
    let run = cfg.layout();
    let mut stems: Vec<&str> = m.sources.iter().map(|s| s.stem.as_str()).collect();
    stems.sort_unstable();
    let stem = match source {
        Some(s) if stems.contains(&s) => s,
        Some(s) => {
            let few: Vec<&str> = stems.iter().take(5).copied().collect();
            anyhow::bail!(
                "source {s:?} is not in {} ({} sources; e.g. {}{})",
                run.manifest().display(),
                stems.len(),
                few.join(", "),
                if stems.len() > few.len() { ", ..." } else { "" }
            );
        }
        None => *stems
            .first()
            .with_context(|| format!("{} lists no sources", run.manifest().display()))?,
    };
    let order: Vec<&str> = m.generation["variants"]
        .as_array()
        .map(|a| a.iter().filter_map(|v| v.as_str()).collect())
        .unwrap_or_default();
    let mut pairs: Vec<&PairRecord> = m.pairs.iter().filter(|p| p.source == stem).collect();
    // Plan order; anything the plan does not name goes last, by name.
    pairs.sort_by_key(|p| {
        (
            order
                .iter()
                .position(|v| *v == p.variant)
                .unwrap_or(usize::MAX),
            p.name.clone(),
        )
    });
    let files: Vec<(String, String, String)> = pairs
        .iter()
        .map(|p| (p.image.clone(), p.mask.clone(), p.variant.clone()))
        .collect();
    let path = run.preview_sheet(out, stem);
    let dir = path.parent().unwrap_or(run.root());
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let empty = pairs.iter().filter(|p| p.foreground == 0).count();
    let title = format!(
        "{stem}: {} variants, {} (seed {}){}",
        files.len(),
        cfg.lesion.folder(),
        cfg.seed,
        match empty {
            0 => String::new(),
            n if n == pairs.len() => ", every mask empty".into(),
            n => format!(", {n} empty masks"),
        }
    );
    write_sheet(&path, &title, &run, &files)?;
    Ok(path)
}

/// The pairs shown for `split`: the sorted names of the split, shuffled by
/// `rng_for(seed, "samples", split)`, the first `n` of them, sorted again for the sheet.
pub fn sample_names(seed: u64, split: &str, names: &[String], n: usize) -> Vec<String> {
    let mut names = names.to_vec();
    names.sort();
    names.shuffle(&mut rng_for(seed, "samples", split));
    names.truncate(n);
    names.sort();
    names
}

/// `samples_<split>.png` in the run folder for train, valid and test: `stats.samples_per_split`
/// pairs of each split (fewer if it has fewer), read from the split folders. Needs a split.
/// `m` is the run's manifest. Returns the written paths; none when `samples_per_split` is 0.
pub fn sample_sheets(cfg: &Config, m: &Manifest) -> Result<Vec<PathBuf>> {
    let run = cfg.layout();
    if m.split.is_none() {
        anyhow::bail!(
            "{} has no split yet (run `pipeline split` first)",
            run.manifest().display()
        );
    }
    let n = cfg.stats.samples_per_split;
    let mut written = Vec::new();
    if n == 0 {
        return Ok(written);
    }
    for split in Split::ALL {
        let in_split: Vec<&PairRecord> =
            m.pairs.iter().filter(|p| p.split == Some(split)).collect();
        let names: Vec<String> = in_split.iter().map(|p| p.name.clone()).collect();
        let chosen = sample_names(cfg.seed, split.name(), &names, n);
        let files: Vec<(String, String, String)> = chosen
            .iter()
            .filter_map(|name| in_split.iter().find(|p| &p.name == name))
            .filter_map(|p| {
                Some((
                    p.dataset_file(PairPart::Image)?,
                    p.dataset_file(PairPart::Mask)?,
                    p.name.clone(),
                ))
            })
            .collect();
        let path = run.samples_sheet(split);
        let title = format!(
            "{split}: {} of {} pairs (seed {})",
            files.len(),
            names.len(),
            cfg.seed
        );
        write_sheet(&path, &title, &run, &files)?;
        written.push(path);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::Luma;

    /// A tile-sized picture with no cyan in it and a mask of a disc plus a lone pixel.
    fn known() -> (RgbImage, GrayImage) {
        let img = RgbImage::from_fn(TILE, TILE, |x, y| {
            Rgb([(x % 200) as u8 + 40, (y % 100) as u8, 20])
        });
        let mask = GrayImage::from_fn(TILE, TILE, |x, y| {
            let d = (f64::from(x) - 120.0).hypot(f64::from(y) - 90.0);
            Luma([if d < 40.0 || (x, y) == (250, 250) {
                255
            } else {
                0
            }])
        });
        (img, mask)
    }

    #[test]
    fn outline_is_exactly_the_mask_boundary() {
        let (img, mask) = known();
        let t = tile(&img, &mask).unwrap();
        let mut edge_pixels = 0;
        for (x, y, p) in t.enumerate_pixels() {
            let m = mask.get_pixel(x, y)[0] == 255;
            let on_edge = m
                && [(-1i64, 0i64), (1, 0), (0, -1), (0, 1)]
                    .iter()
                    .any(|(dx, dy)| {
                        let (nx, ny) = (i64::from(x) + dx, i64::from(y) + dy);
                        nx < 0
                            || ny < 0
                            || nx >= i64::from(TILE)
                            || ny >= i64::from(TILE)
                            || mask.get_pixel(nx as u32, ny as u32)[0] == 0
                    });
            if on_edge {
                edge_pixels += 1;
                assert_eq!(*p, OUTLINE, "boundary pixel ({x},{y}) not outlined");
            } else {
                assert_eq!(*p, *img.get_pixel(x, y), "pixel ({x},{y}) changed");
            }
        }
        // A disc of radius 40 has a boundary of roughly 4 * 40 * sqrt(2) pixels, plus the lone one.
        assert!(edge_pixels > 150 && edge_pixels < 300, "{edge_pixels}");
        assert_eq!(*t.get_pixel(250, 250), OUTLINE);
        // The interior of the disc keeps the picture.
        assert_eq!(*t.get_pixel(120, 90), *img.get_pixel(120, 90));
    }

    #[test]
    fn downscaled_masks_keep_small_lesions_and_the_outline_stays_on_them() {
        let img = RgbImage::from_pixel(512, 512, Rgb([200, 80, 30]));
        let mut mask = GrayImage::new(512, 512);
        mask.put_pixel(301, 77, Luma([255])); // one pixel lesion
        for y in 200..260 {
            for x in 100..180 {
                mask.put_pixel(x, y, Luma([255]));
            }
        }
        let small = shrink_mask(&mask, TILE, TILE);
        let t = tile(&img, &mask).unwrap();
        let s = f64::from(TILE) / 512.0;
        let near = |x: u32, y: u32, fx: f64, fy: f64| {
            (f64::from(x) - fx * s).abs() <= 1.5 && (f64::from(y) - fy * s).abs() <= 1.5
        };
        let mut outlined = 0;
        for (x, y, p) in t.enumerate_pixels() {
            if *p == OUTLINE {
                outlined += 1;
                assert_eq!(small.get_pixel(x, y)[0], 255);
                let in_rect = f64::from(x) >= 100.0 * s - 1.0
                    && f64::from(x) <= 180.0 * s + 1.0
                    && f64::from(y) >= 200.0 * s - 1.0
                    && f64::from(y) <= 260.0 * s + 1.0;
                assert!(
                    in_rect || near(x, y, 301.0, 77.0),
                    "stray outline at ({x},{y})"
                );
            }
        }
        assert!(outlined > 100, "{outlined}");
        assert!(t
            .enumerate_pixels()
            .any(|(x, y, p)| *p == OUTLINE && near(x, y, 301.0, 77.0)));
    }

    #[test]
    fn sheet_size_follows_the_layout() {
        assert_eq!(
            sheet_size(1),
            (TILE + 2 * GAP, HEADER + TILE + LABEL + 2 * GAP)
        );
        let (w, h) = sheet_size(36);
        assert_eq!(w, COLUMNS * TILE + (COLUMNS + 1) * GAP);
        assert!(w <= 2500, "{w}");
        assert_eq!(h, HEADER + 5 * (TILE + LABEL + GAP) + GAP);
        let (img, mask) = known();
        let t = tile(&img, &mask).unwrap();
        let tiles: Vec<(RgbImage, String)> = (0..9)
            .map(|i| (t.clone(), format!("variant_{i}")))
            .collect();
        assert_eq!(sheet("title", &tiles).dimensions(), sheet_size(9));
    }

    #[test]
    fn long_labels_are_cut_to_the_tile() {
        let font = crate::font::font();
        let long = "x".repeat(200);
        let cut = fit(&long, TILE - 4, &font);
        assert!(cut.ends_with('~') && cut.len() < 200);
        assert!(text_size(TEXT_SCALE, &font, &cut).0 <= TILE - 4);
        assert_eq!(fit("orig", TILE - 4, &font), "orig");
    }

    #[test]
    fn samples_are_seeded_and_capped() {
        let names: Vec<String> = (0..50).map(|i| format!("image{i:03}_orig")).collect();
        let a = sample_names(7, "train", &names, 12);
        assert_eq!(a.len(), 12);
        assert_eq!(a, sample_names(7, "train", &names, 12));
        assert_ne!(a, sample_names(8, "train", &names, 12));
        assert_eq!(sample_names(7, "test", &names[..3], 12).len(), 3);
    }
}
