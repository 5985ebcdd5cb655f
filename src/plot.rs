//! Charts rendered with plotters into memory and written as PNG (atomically).

use std::path::Path;

use anyhow::{anyhow, Result};
use image::RgbImage;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::io::{encode_png_rgb, write_atomic};

/// A labelled bar chart, e.g. pairs per split.
pub fn bar_chart(path: &Path, title: &str, bars: &[(String, usize)]) -> Result<()> {
    crate::font::register_plotters_font();
    let (w, h) = (640u32, 400u32);
    let mut buf = vec![255u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        let err = |e: &dyn std::fmt::Display| anyhow!("drawing {}: {e}", path.display());
        let max = bars.iter().map(|b| b.1).max().unwrap_or(1).max(1);
        let n = bars.len();
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 22))
            .margin(16)
            .x_label_area_size(36)
            .y_label_area_size(60)
            .build_cartesian_2d(
                (0..n.max(1) - 1).into_segmented(),
                0usize..max + max / 8 + 1,
            )
            .map_err(|e| err(&e))?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .y_desc("pairs")
            .x_labels(n)
            .x_label_formatter(&|v| match v {
                SegmentValue::CenterOf(i) | SegmentValue::Exact(i) => {
                    bars.get(*i).map(|b| b.0.clone()).unwrap_or_default()
                }
                SegmentValue::Last => String::new(),
            })
            .label_style(("sans-serif", 15))
            .draw()
            .map_err(|e| err(&e))?;
        chart
            .draw_series(bars.iter().enumerate().map(|(i, (_, v))| {
                let mut r = Rectangle::new(
                    [
                        (SegmentValue::Exact(i), 0),
                        (SegmentValue::Exact(i + 1), *v),
                    ],
                    RGBColor(70, 130, 180).filled(),
                );
                r.set_margin(0, 0, 30, 30);
                r
            }))
            .map_err(|e| err(&e))?;
        chart
            .draw_series(bars.iter().enumerate().map(|(i, (_, v))| {
                let style = TextStyle::from(("sans-serif", 16).into_font())
                    .pos(Pos::new(HPos::Center, VPos::Bottom));
                Text::new(v.to_string(), (SegmentValue::CenterOf(i), *v), style)
            }))
            .map_err(|e| err(&e))?;
        root.present().map_err(|e| err(&e))?;
    }
    let img = RgbImage::from_raw(w, h, buf).expect("buffer size");
    write_atomic(path, &encode_png_rgb(&img)?)
}
