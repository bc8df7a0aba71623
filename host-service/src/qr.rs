//! QR codes for pairing tokens: SVG for the UI, Unicode blocks for the terminal.

use qrcode::render::{svg, unicode};
use qrcode::{EcLevel, QrCode};

fn code(text: &str) -> Result<QrCode, qrcode::types::QrError> {
    // Low error correction keeps a ~400-character token at a size phones scan easily off a screen.
    QrCode::with_error_correction_level(text.as_bytes(), EcLevel::L)
}

pub fn svg(text: &str) -> Result<String, qrcode::types::QrError> {
    Ok(code(text)?
        .render::<svg::Color<'_>>()
        .min_dimensions(256, 256)
        .quiet_zone(true)
        .build())
}

pub fn terminal(text: &str) -> Result<String, qrcode::types::QrError> {
    Ok(code(text)?
        .render::<unicode::Dense1x2>()
        .dark_color(unicode::Dense1x2::Light)
        .light_color(unicode::Dense1x2::Dark)
        .quiet_zone(true)
        .build())
}
