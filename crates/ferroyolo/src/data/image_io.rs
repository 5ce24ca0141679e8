//! Reading image files into RGB pixels, the way the reference (`cv2.imread`) does.
//!
//! JPEGs go through [`super::jpeg`], which reproduces libjpeg-turbo's pixels exactly; other
//! formats (PNG, BMP, WebP) and JPEG variants it does not cover go through the `image` crate.
//! Like `cv2.imread` the result is always 8-bit, 3-channel: grey is replicated, alpha is dropped
//! (not blended), 16-bit samples keep their high byte, and the EXIF orientation is applied.

use std::io::Cursor;
use std::path::Path;

use anyhow::{bail, Context, Result};
use image::metadata::Orientation;
use image::{DynamicImage, ImageDecoder, ImageReader, RgbImage};

use super::jpeg::{self, JpegError};

/// Reads and decodes an image file. Errors name the file and say what is wrong with it
/// (missing, unreadable, not an image, truncated, corrupt).
pub fn load_image(path: &Path) -> Result<RgbImage> {
    let bytes = std::fs::read(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => {
            anyhow::anyhow!("image file {} does not exist", path.display())
        }
        _ => anyhow::anyhow!("cannot read image file {}: {e}", path.display()),
    })?;
    decode_image(&bytes, &path.display().to_string())
}

/// Decodes an encoded image held in memory; `name` (a path or URL) is used in error messages.
pub fn decode_image(bytes: &[u8], name: &str) -> Result<RgbImage> {
    if bytes.is_empty() {
        bail!("{name}: empty file, not an image");
    }
    if bytes.starts_with(&[0xFF, 0xD8]) {
        match jpeg::decode(bytes) {
            Ok(img) => {
                let rgb = RgbImage::from_raw(img.width, img.height, img.rgb)
                    .context("decoded JPEG buffer has the wrong size")?;
                let orientation = img
                    .exif
                    .as_deref()
                    .and_then(Orientation::from_exif_chunk)
                    .unwrap_or(Orientation::NoTransforms);
                return Ok(orient(rgb, orientation));
            }
            // Variants the exact decoder does not cover: the general decoder may still read them.
            Err(JpegError::Unsupported(_)) => {}
            Err(e) => bail!("{name}: {e}"),
        }
    }
    decode_with_image_crate(bytes, name)
}

/// PNG, BMP, WebP and uncommon JPEG variants.
fn decode_with_image_crate(bytes: &[u8], name: &str) -> Result<RgbImage> {
    let reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .with_context(|| format!("{name}: cannot read"))?;
    if reader.format().is_none() {
        bail!("{name}: not an image (unrecognised file format)");
    }
    let mut decoder = reader
        .into_decoder()
        .with_context(|| format!("{name}: unsupported or corrupt image"))?;
    let orientation = decoder.orientation().unwrap_or(Orientation::NoTransforms);
    let img = DynamicImage::from_decoder(decoder)
        .with_context(|| format!("{name}: cannot decode image (corrupt or truncated?)"))?;
    Ok(orient(to_rgb8_like_opencv(img), orientation))
}

/// Converts to 8-bit RGB. 16-bit samples are reduced to their high byte, which is what OpenCV's
/// PNG reader does (libpng "strip 16"); the `image` crate would round instead.
fn to_rgb8_like_opencv(img: DynamicImage) -> RgbImage {
    let high_byte = |img: DynamicImage| {
        let rgb16 = img.into_rgb16();
        let (w, h) = rgb16.dimensions();
        let data = rgb16
            .into_raw()
            .into_iter()
            .map(|v| (v >> 8) as u8)
            .collect();
        RgbImage::from_raw(w, h, data).expect("same size")
    };
    match img {
        DynamicImage::ImageLuma16(_)
        | DynamicImage::ImageLumaA16(_)
        | DynamicImage::ImageRgb16(_)
        | DynamicImage::ImageRgba16(_) => high_byte(img),
        other => other.into_rgb8(),
    }
}

fn orient(img: RgbImage, orientation: Orientation) -> RgbImage {
    if orientation == Orientation::NoTransforms {
        return img;
    }
    let mut dynamic = DynamicImage::ImageRgb8(img);
    dynamic.apply_orientation(orientation);
    dynamic.into_rgb8()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_file(name: &str, bytes: &[u8]) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("ferroyolo-image-io-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    }

    #[test]
    fn missing_file_is_named() {
        let err = load_image(Path::new("/definitely/not/here.jpg")).unwrap_err();
        let msg = format!("{err:#}");
        assert!(
            msg.contains("/definitely/not/here.jpg") && msg.contains("does not exist"),
            "{msg}"
        );
    }

    #[test]
    fn garbage_is_not_an_image() {
        let path = temp_file("garbage.jpg", b"this is not an image at all");
        let msg = format!("{:#}", load_image(&path).unwrap_err());
        assert!(
            msg.contains("garbage.jpg") && msg.contains("not an image"),
            "{msg}"
        );
        let path = temp_file("empty.png", b"");
        let msg = format!("{:#}", load_image(&path).unwrap_err());
        assert!(msg.contains("empty.png") && msg.contains("empty"), "{msg}");
    }

    #[test]
    fn truncated_jpeg_is_an_error_naming_the_file() {
        let Some(fixtures) = crate::testing::fixtures_dir() else {
            return;
        };
        let bytes = std::fs::read(fixtures.join("images/bus.jpg")).unwrap();
        for cut in [3, 100, 700, bytes.len() / 2, bytes.len() - 1000] {
            let path = temp_file("cut.jpg", &bytes[..cut]);
            let msg = format!("{:#}", load_image(&path).unwrap_err());
            assert!(
                msg.contains("cut.jpg") && msg.contains("truncated"),
                "cut at {cut}: {msg}"
            );
        }
    }

    #[test]
    fn png_round_trip_and_16_bit_high_byte() {
        let mut img = RgbImage::new(3, 2);
        img.put_pixel(1, 1, image::Rgb([10, 200, 30]));
        let mut png = Vec::new();
        img.write_to(&mut Cursor::new(&mut png), image::ImageFormat::Png)
            .unwrap();
        assert_eq!(decode_image(&png, "mem.png").unwrap(), img);

        let img16 =
            image::ImageBuffer::<image::Rgb<u16>, _>::from_raw(1, 1, vec![0x12FF, 0xAB00, 0xFFFF])
                .unwrap();
        let out = to_rgb8_like_opencv(DynamicImage::ImageRgb16(img16));
        assert_eq!(out.get_pixel(0, 0).0, [0x12, 0xAB, 0xFF]);
    }

    #[test]
    fn orientation_is_applied() {
        let mut img = RgbImage::new(2, 1);
        img.put_pixel(0, 0, image::Rgb([255, 0, 0]));
        let rotated = orient(img, Orientation::Rotate90);
        assert_eq!(rotated.dimensions(), (1, 2));
        assert_eq!(rotated.get_pixel(0, 0).0, [255, 0, 0]);
    }
}
