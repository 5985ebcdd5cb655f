//! Training curves as PNG (plotters, bitmap backend, the bundled DejaVu Sans Mono font).

use anyhow::{anyhow, Result};
use image::RgbImage;
use plotters::prelude::*;

use super::checkpoint::EpochRow;

/// The family `fundus_pipeline::font::register_plotters_font` registers.
const FONT: &str = "sans-serif";

/// A named line of a panel: its legend and how to read it from a row.
type Line = (&'static str, fn(&EpochRow) -> f64);

/// Two panels: loss / val_loss and dice_coef / val_dice_coef per epoch.
pub fn curves(rows: &[EpochRow]) -> Result<RgbImage> {
    fundus_pipeline::font::register_plotters_font();
    let (w, h) = (1200u32, 450u32);
    let mut buf = vec![255u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| anyhow!("plot: {e}"))?;
        let panels = root.split_evenly((1, 2));
        let series: [(&str, [Line; 2]); 2] = [
            ("loss", [("loss", |r| r.loss), ("val_loss", |r| r.val_loss)]),
            (
                "dice_coef",
                [
                    ("dice_coef", |r| r.dice_coef),
                    ("val_dice_coef", |r| r.val_dice_coef),
                ],
            ),
        ];
        for (area, (title, lines)) in panels.iter().zip(series) {
            let values: Vec<f64> = rows
                .iter()
                .flat_map(|r| lines.iter().map(move |(_, f)| f(r)))
                .filter(|v| v.is_finite())
                .collect();
            let lo = values.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let (lo, hi) = if lo.is_finite() && hi > lo {
                let pad = (hi - lo) * 0.05;
                (lo - pad, hi + pad)
            } else if lo.is_finite() {
                (lo - 0.5, lo + 0.5)
            } else {
                (0.0, 1.0)
            };
            let last = rows.last().map_or(1, |r| r.epoch).max(2);
            let first = rows.first().map_or(1, |r| r.epoch).min(last - 1);
            let mut chart = ChartBuilder::on(area)
                .caption(title, (FONT, 22))
                .margin(12)
                .x_label_area_size(36)
                .y_label_area_size(60)
                .build_cartesian_2d(first as f64..last as f64, lo..hi)
                .map_err(|e| anyhow!("plot: {e}"))?;
            chart
                .configure_mesh()
                .x_desc("epoch")
                .x_labels(((last - first) + 1).min(10))
                .x_label_formatter(&|x| format!("{x:.0}"))
                .label_style((FONT, 13))
                .draw()
                .map_err(|e| anyhow!("plot: {e}"))?;
            for ((name, f), colour) in lines.iter().zip([BLUE, RED]) {
                let pts: Vec<(f64, f64)> = rows.iter().map(|r| (r.epoch as f64, f(r))).collect();
                chart
                    .draw_series(LineSeries::new(pts.clone(), colour.stroke_width(2)))
                    .map_err(|e| anyhow!("plot: {e}"))?
                    .label(*name)
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2))
                    });
                chart
                    .draw_series(pts.iter().map(|&p| Circle::new(p, 3, colour.filled())))
                    .map_err(|e| anyhow!("plot: {e}"))?;
            }
            chart
                .configure_series_labels()
                .label_font((FONT, 14))
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .draw()
                .map_err(|e| anyhow!("plot: {e}"))?;
        }
        root.present().map_err(|e| anyhow!("plot: {e}"))?;
    }
    Ok(RgbImage::from_raw(w, h, buf).expect("buffer size"))
}
