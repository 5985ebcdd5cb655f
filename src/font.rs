//! The one font the tool draws text with: DejaVu Sans Mono (free license, see
//! assets/fonts/DejaVu-LICENSE.txt), embedded so drawing needs no system fonts.

use std::sync::Once;

/// The TrueType file of DejaVu Sans Mono, embedded at build time.
pub const DEJAVU_SANS_MONO: &[u8] = include_bytes!("../assets/fonts/DejaVuSansMono.ttf");

/// The font for imageproc's text drawing.
pub fn font() -> ab_glyph::FontRef<'static> {
    ab_glyph::FontRef::try_from_slice(DEJAVU_SANS_MONO).expect("embedded font parses")
}

/// Registers the font with plotters as "sans-serif" (once per process).
pub fn register_plotters_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = plotters::style::register_font(
            "sans-serif",
            plotters::style::FontStyle::Normal,
            DEJAVU_SANS_MONO,
        );
    });
}
