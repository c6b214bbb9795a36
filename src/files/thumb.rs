//! Image thumbnails: decoded within fixed limits (a "decompression bomb" fails the limits rather
//! than the node's memory), scaled to fit 320×320 and encoded as JPEG.

use std::path::Path;

use image::ImageDecoder;

/// The longest edge of a thumbnail.
pub const EDGE: u32 = 320;
/// Most memory one decode may take.
const MAX_ALLOC: u64 = 300 << 20;
/// Largest width or height decoded.
const MAX_SIDE: u32 = 16_384;

/// Whether thumbnails are made for this type (the decoders built in).
pub fn supported(mime: &str) -> bool {
    matches!(mime, "image/jpeg" | "image/png" | "image/gif" | "image/webp")
}

/// The thumbnail of the image at `path` as JPEG, and its width and height. An image that cannot
/// be decoded within the limits is an error.
pub fn make(path: &Path) -> Result<(Vec<u8>, u32, u32), String> {
    let mut reader = image::ImageReader::open(path).map_err(|e| e.to_string())?;
    reader = reader.with_guessed_format().map_err(|e| e.to_string())?;
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_SIDE);
    limits.max_image_height = Some(MAX_SIDE);
    limits.max_alloc = Some(MAX_ALLOC);
    reader.limits(limits);
    let mut decoder = reader.into_decoder().map_err(|e| e.to_string())?;
    let orientation = decoder.orientation().ok();
    let mut img = image::DynamicImage::from_decoder(decoder).map_err(|e| e.to_string())?;
    if let Some(o) = orientation {
        img.apply_orientation(o);
    }
    let thumb = img.thumbnail(EDGE, EDGE).to_rgb8();
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 80).encode_image(&thumb).map_err(|e| e.to_string())?;
    Ok((out, thumb.width(), thumb.height()))
}
