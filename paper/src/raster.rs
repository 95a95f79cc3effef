//! PNG beside every SVG: the SVG itself rasterised by resvg, so the two never disagree.
//!
//! Decision: rather than drawing each figure twice (plotters' bitmap backend would lay text
//! out with its own font code), the SVG is the one drawing and the PNG is its rendering.
//! Text uses DejaVu Sans from the `dejavu` crate, loaded into resvg's font database as its
//! only font and as the `sans-serif` family the SVGs name; resvg is built without its
//! `system-fonts` feature, so no system font library or file is read and the PNG is a pure
//! function of the SVG text. Pixels are [`PNG_SCALE`] × the SVG's user units (the stated
//! size: width and height attributes × scale), on an opaque white background.
//!
//! Determinism: the same SVG gives the same PNG bytes on the same platform build (resvg and
//! tiny-skia are deterministic Rust; the PNG encoder's settings are fixed by the version in
//! Cargo.lock). Another CPU architecture may round anti-aliasing differently.

use std::sync::{Arc, OnceLock};

use resvg::tiny_skia::{Color, Pixmap, Transform};
use resvg::usvg::{fontdb, Options, Tree};

/// PNG pixels per SVG user unit.
pub const PNG_SCALE: f32 = 1.5;

/// The family name of the embedded font.
pub const FONT_FAMILY: &str = "DejaVu Sans";

fn options() -> &'static Options<'static> {
    static OPTIONS: OnceLock<Options<'static>> = OnceLock::new();
    OPTIONS.get_or_init(|| {
        let mut db = fontdb::Database::new();
        db.load_font_data(dejavu::sans::regular().to_vec());
        db.load_font_data(dejavu::sans::bold().to_vec());
        db.set_sans_serif_family(FONT_FAMILY);
        Options {
            font_family: FONT_FAMILY.to_string(),
            fontdb: Arc::new(db),
            ..Options::default()
        }
    })
}

/// Parse an SVG document (the same parser that rasterises it).
pub fn parse_svg(svg: &str) -> Result<Tree, String> {
    Tree::from_str(svg, options()).map_err(|e| format!("SVG does not parse: {e}"))
}

/// The PNG size of an SVG whose user size is `w × h`.
pub fn png_size(w: f32, h: f32) -> (u32, u32) {
    (
        (w * PNG_SCALE).round() as u32,
        (h * PNG_SCALE).round() as u32,
    )
}

/// The PNG bytes of an SVG document, [`PNG_SCALE`] × its size, white background.
pub fn svg_to_png(svg: &str) -> Result<Vec<u8>, String> {
    let tree = parse_svg(svg)?;
    let size = tree.size();
    let (w, h) = png_size(size.width(), size.height());
    let mut pixmap = Pixmap::new(w, h).ok_or_else(|| format!("empty image {w}×{h}"))?;
    pixmap.fill(Color::WHITE);
    resvg::render(
        &tree,
        Transform::from_scale(PNG_SCALE, PNG_SCALE),
        &mut pixmap.as_mut(),
    );
    pixmap
        .encode_png()
        .map_err(|e| format!("PNG encoding failed: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_drawn_with_the_embedded_font() {
        let blank = r#"<svg xmlns="http://www.w3.org/2000/svg" width="80" height="20"></svg>"#;
        let text = r#"<svg xmlns="http://www.w3.org/2000/svg" width="80" height="20"><text x="2" y="15" font-family="sans-serif" font-size="14">ρ/M ×1.4</text></svg>"#;
        let decode = |png: &[u8]| {
            let mut r = png::Decoder::new(std::io::Cursor::new(png))
                .read_info()
                .unwrap();
            let mut buf = vec![0; r.output_buffer_size().unwrap()];
            let info = r.next_frame(&mut buf).unwrap();
            buf.truncate(info.buffer_size());
            ((info.width, info.height), buf)
        };
        let (size, blank_px) = decode(&svg_to_png(blank).unwrap());
        assert_eq!(size, (120, 30));
        assert!(blank_px.iter().all(|&b| b == 255), "white background");
        let (_, text_px) = decode(&svg_to_png(text).unwrap());
        let dark = text_px.chunks(4).filter(|p| p[0] < 128).count();
        assert!(
            dark > 50,
            "the text left {dark} dark pixels: no font was found"
        );
        assert!(parse_svg("<svg").is_err());
    }
}
