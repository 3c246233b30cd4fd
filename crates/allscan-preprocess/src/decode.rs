//! Decoding with explicit limits: file bytes -> 8-bit RGB, whatever the source format.
//!
//! Every conversion is documented here once, so training, evaluation and serving all see the
//! same pixels:
//! - EXIF orientation is applied (a rotated phone photo is seen upright);
//! - 16-bit channels are scaled to 8 bits; grayscale is replicated to RGB;
//! - alpha is composited onto white (a transparent background is slide glass, not black);
//! - CMYK JPEGs are converted by the decoder (inverted Adobe CMYK handled by zune-jpeg).
//!
//! JPEG pixels come from libjpeg-turbo's algorithms (through `mozjpeg`, whose decoder is
//! libjpeg-turbo's: ISLOW integer IDCT, "fancy" triangular chroma upsampling, fixed-point
//! YCbCr -> RGB), the decoder inside OpenCV's `imread` and Pillow. Why: zune-jpeg differs from
//! it by +-1..2 levels on most pixels of a 4:2:0 file, which moves ~0.2% of the authors' HSV
//! mask pixels across its thresholds and shifts every model input slightly from what the seed's
//! Python pipeline saw. Checked: identical to `cv2.imread` on the Aria JPEGs. Files libjpeg
//! cannot convert to RGB (CMYK, 12-bit) fall back to zune-jpeg.
//!
//! Limits: the header's width and height are checked before any pixel is allocated, so a file
//! claiming 100,000 x 100,000 pixels costs nothing.

use std::io::Cursor;
use std::path::{Path, PathBuf};

use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, Limits, RgbImage};

/// Size limits applied to every decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DecodeLimits {
    /// Smallest accepted width and height, in pixels. Below this a field holds no cell.
    pub min_side: u32,
    /// Largest accepted width or height, in pixels.
    pub max_side: u32,
    /// Largest accepted width x height. ALL-IDB fields are 2592x1944 (5 MP); 64 MP leaves room
    /// for whole-slide tiles while bounding memory at ~200 MB per decoded image.
    pub max_pixels: u64,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        Self { min_side: 16, max_side: 16_384, max_pixels: 64 * 1024 * 1024 }
    }
}

/// Why a file could not be turned into an RGB image.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("{path}: cannot read file: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: empty file (0 bytes)")]
    Empty { path: PathBuf },
    #[error("{path}: not a recognised image format")]
    UnknownFormat { path: PathBuf },
    #[error("{path}: image is {width}x{height}, larger than the limit of {limit}")]
    TooLarge { path: PathBuf, width: u32, height: u32, limit: String },
    #[error("{path}: image is {width}x{height}, smaller than the minimum side of {min_side} px")]
    TooSmall { path: PathBuf, width: u32, height: u32, min_side: u32 },
    #[error("{path}: corrupt or truncated image: {reason}")]
    Corrupt { path: PathBuf, reason: String },
}

impl DecodeError {
    /// The file the error is about.
    pub fn path(&self) -> &Path {
        match self {
            DecodeError::Io { path, .. }
            | DecodeError::Empty { path }
            | DecodeError::UnknownFormat { path }
            | DecodeError::TooLarge { path, .. }
            | DecodeError::TooSmall { path, .. }
            | DecodeError::Corrupt { path, .. } => path,
        }
    }

    /// The reason alone, without the path (for tables that print the path in another column).
    pub fn reason(&self) -> String {
        let full = self.to_string();
        let prefix = format!("{}: ", self.path().display());
        full.strip_prefix(&prefix).map(str::to_owned).unwrap_or(full)
    }
}

/// Reads a file's bytes, refusing anything that is not a regular file (after following links)
/// before opening it: reading a FIFO, socket or device named `x.jpg` would block or never end.
pub fn read_regular_file(path: &Path) -> std::io::Result<Vec<u8>> {
    let meta = std::fs::metadata(path)?;
    if !meta.is_file() {
        let kind = if meta.is_dir() { "a folder" } else { "not a regular file (a FIFO, socket or device)" };
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, kind));
    }
    std::fs::read(path)
}

/// Reads and decodes a file. See [`decode_bytes`].
pub fn decode_file(path: &Path, limits: &DecodeLimits) -> Result<RgbImage, DecodeError> {
    let bytes = read_regular_file(path).map_err(|source| DecodeError::Io { path: path.to_owned(), source })?;
    decode_bytes(&bytes, path, limits)
}

/// Decodes in-memory bytes (`path` only names the source in errors) into 8-bit RGB, applying
/// EXIF orientation and the conversions listed in the module docs.
pub fn decode_bytes(bytes: &[u8], path: &Path, limits: &DecodeLimits) -> Result<RgbImage, DecodeError> {
    let p = || path.to_owned();
    if bytes.is_empty() {
        return Err(DecodeError::Empty { path: p() });
    }
    if let Some(header) = JpegHeader::parse(bytes) {
        if let Some(img) = decode_jpeg_direct(bytes, &header, path, limits)? {
            return Ok(img);
        }
    }
    let mut reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|source| DecodeError::Io { path: p(), source })?;
    let reader_format = reader.format();
    if reader_format.is_none() {
        return Err(DecodeError::UnknownFormat { path: p() });
    }
    let mut lim = Limits::default();
    lim.max_image_width = Some(limits.max_side);
    lim.max_image_height = Some(limits.max_side);
    // Generous allocation bound: the decoded image itself plus decoder scratch (16-bit RGBA).
    lim.max_alloc = Some(limits.max_pixels.saturating_mul(8).max(64 << 20));
    // Read the header alone first (no pixel allocation), so the size error names the real size.
    // Under the same limits: the `image` crate's default allows 512 MiB, and a damaged TIFF
    // header made this read alone allocate over 100 MiB for a 24x24 image (found by
    // tests/fuzz_decode.rs).
    let mut header = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|source| DecodeError::Io { path: p(), source })?;
    header.limits(lim.clone());
    if let Ok((width, height)) = header.into_dimensions() {
        check_size(width, height, path, limits)?;
    }
    if reader.format() == Some(image::ImageFormat::Jpeg) && !has_jpeg_end(bytes) {
        // zune-jpeg pads a cut scan with grey and reports success; a field that is partly grey
        // must not reach training, so a missing end-of-image marker is an error.
        return Err(DecodeError::Corrupt { path: p(), reason: "truncated JPEG (no end-of-image marker)".into() });
    }
    reader.limits(lim);
    let mut decoder = reader.into_decoder().map_err(|e| classify(e, path, limits))?;
    let (width, height) = decoder.dimensions();
    check_size(width, height, path, limits)?;
    let orientation = decoder.orientation().unwrap_or(image::metadata::Orientation::NoTransforms);
    let libjpeg = match reader_format {
        Some(ImageFormat::Jpeg) => decode_jpeg_libjpeg(bytes, width, height),
        _ => None,
    };
    let mut img = match libjpeg {
        Some(rgb) => DynamicImage::ImageRgb8(rgb),
        None => DynamicImage::from_decoder(decoder).map_err(|e| classify(e, path, limits))?,
    };
    img.apply_orientation(orientation);
    Ok(to_rgb_on_white(img))
}

/// Whether a JPEG's end-of-image marker (FF D9) is in its last 4 KiB (cameras may append a
/// little data after it).
fn has_jpeg_end(bytes: &[u8]) -> bool {
    let tail = &bytes[bytes.len().saturating_sub(4096)..];
    // From the end: the marker is almost always the last two bytes.
    tail.windows(2).rev().any(|w| w == [0xFF, 0xD9])
}

/// What [`decode_bytes`] needs from a JPEG's markers before the scan: the frame size and
/// layout, and the EXIF orientation. Read by a plain marker walk, so the common case (an
/// 8-bit YCbCr or grey JPEG) costs one libjpeg pass and nothing else.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct JpegHeader {
    width: u32,
    height: u32,
    precision: u8,
    components: u8,
    orientation: image::metadata::Orientation,
}

impl JpegHeader {
    /// `None` when the bytes are not a JPEG or its markers are not well formed up to the first
    /// scan; the general path then decodes (or reports) the file.
    fn parse(bytes: &[u8]) -> Option<JpegHeader> {
        use image::metadata::Orientation;
        if !bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
            return None;
        }
        let mut pos = 2;
        let mut frame = None;
        let mut orientation = Orientation::NoTransforms;
        loop {
            if *bytes.get(pos)? != 0xFF {
                return None;
            }
            // Any number of 0xFF fill bytes may precede a marker code.
            while *bytes.get(pos)? == 0xFF {
                pos += 1;
            }
            let marker = bytes[pos];
            pos += 1;
            match marker {
                // Standalone markers (TEM, RSTn) carry no length.
                0x01 | 0xD0..=0xD7 => continue,
                0xD8 | 0xD9 | 0x00 => return None,
                _ => {}
            }
            // The length counts its own two bytes.
            let len = u16::from_be_bytes([*bytes.get(pos)?, *bytes.get(pos + 1)?]) as usize;
            if len < 2 {
                return None;
            }
            let seg = bytes.get(pos + 2..pos + len)?;
            match marker {
                // SOF0..SOF15 except DHT (C4), JPG (C8) and DAC (CC).
                0xC0..=0xCF if !matches!(marker, 0xC4 | 0xC8 | 0xCC) => {
                    if seg.len() < 6 {
                        return None;
                    }
                    let height = u16::from_be_bytes([seg[1], seg[2]]) as u32;
                    let width = u16::from_be_bytes([seg[3], seg[4]]) as u32;
                    frame = Some((width, height, seg[0], seg[5]));
                }
                // APP1 Exif; the last one wins, as in the `image` crate's JPEG decoder.
                0xE1 if seg.starts_with(b"Exif\0\0") => {
                    orientation = Orientation::from_exif_chunk(&seg[6..]).unwrap_or(Orientation::NoTransforms);
                }
                0xDA => {
                    let (width, height, precision, components) = frame?;
                    return Some(JpegHeader { width, height, precision, components, orientation });
                }
                _ => {}
            }
            pos += len;
        }
    }
}

/// The common JPEG case straight through libjpeg: 8-bit samples, 1 or 3 components, a
/// complete file. `Ok(None)` hands the file to the general path (CMYK, 12-bit, anything
/// libjpeg rejects), which decodes it another way or names the error. Why a separate path:
/// on the 224x224 Aria fields, the `image` crate's header reads (three zune-jpeg header
/// parses, a copy of the input) and the final `to_rgb8` copy cost about a third of the
/// libjpeg decode itself.
fn decode_jpeg_direct(
    bytes: &[u8],
    header: &JpegHeader,
    path: &Path,
    limits: &DecodeLimits,
) -> Result<Option<RgbImage>, DecodeError> {
    if header.width == 0 || header.height == 0 {
        return Ok(None);
    }
    check_size(header.width, header.height, path, limits)?;
    if header.precision != 8 || !matches!(header.components, 1 | 3) || !has_jpeg_end(bytes) {
        return Ok(None);
    }
    let Some(img) = decode_jpeg_libjpeg(bytes, header.width, header.height) else {
        return Ok(None);
    };
    if header.orientation == image::metadata::Orientation::NoTransforms {
        return Ok(Some(img));
    }
    let mut dynamic = DynamicImage::ImageRgb8(img);
    dynamic.apply_orientation(header.orientation);
    Ok(Some(dynamic.into_rgb8()))
}

/// Decodes a JPEG the way libjpeg-turbo does (see the module docs). `None` when libjpeg
/// reports an error or the result is not `width` x `height` RGB; the caller then falls back to
/// the `image` crate, which produces the typed error. Size limits were checked on the header
/// before this is called. libjpeg reports fatal errors by unwinding (`mozjpeg` resumes the
/// unwind without calling the panic hook), which `catch_unwind` turns back into `None`.
fn decode_jpeg_libjpeg(bytes: &[u8], width: u32, height: u32) -> Option<RgbImage> {
    let run = || -> std::io::Result<Vec<u8>> {
        let mut started = mozjpeg::Decompress::builder().from_mem(bytes)?.rgb()?;
        if started.width() != width as usize || started.height() != height as usize {
            return Err(std::io::Error::other("header size mismatch"));
        }
        let pixels = started.read_scanlines::<u8>()?;
        started.finish()?;
        Ok(pixels)
    };
    let pixels = std::panic::catch_unwind(std::panic::AssertUnwindSafe(run)).ok()?.ok()?;
    RgbImage::from_raw(width, height, pixels)
}

fn check_size(width: u32, height: u32, path: &Path, limits: &DecodeLimits) -> Result<(), DecodeError> {
    if width > limits.max_side || height > limits.max_side || (width as u64) * (height as u64) > limits.max_pixels {
        return Err(DecodeError::TooLarge {
            path: path.to_owned(),
            width,
            height,
            limit: format!("{} px per side / {} pixels", limits.max_side, limits.max_pixels),
        });
    }
    if width < limits.min_side || height < limits.min_side {
        return Err(DecodeError::TooSmall { path: path.to_owned(), width, height, min_side: limits.min_side });
    }
    Ok(())
}

fn classify(e: image::ImageError, path: &Path, limits: &DecodeLimits) -> DecodeError {
    use image::error::{ImageError, LimitErrorKind};
    match e {
        ImageError::Limits(l) => match l.kind() {
            LimitErrorKind::DimensionError => DecodeError::TooLarge {
                path: path.to_owned(),
                width: 0,
                height: 0,
                limit: format!("{} px per side (header exceeds it)", limits.max_side),
            },
            _ => DecodeError::TooLarge {
                path: path.to_owned(),
                width: 0,
                height: 0,
                limit: format!("memory limit ({l})"),
            },
        },
        ImageError::Unsupported(u) => {
            DecodeError::Corrupt { path: path.to_owned(), reason: format!("unsupported: {u}") }
        }
        ImageError::IoError(io) => DecodeError::Corrupt { path: path.to_owned(), reason: io.to_string() },
        other => DecodeError::Corrupt { path: path.to_owned(), reason: other.to_string() },
    }
}

/// Any colour type -> 8-bit RGB; alpha is composited onto white.
fn to_rgb_on_white(img: DynamicImage) -> RgbImage {
    if !img.color().has_alpha() {
        return img.to_rgb8();
    }
    let rgba = img.to_rgba8();
    let (w, h) = rgba.dimensions();
    let mut out = RgbImage::new(w, h);
    for (o, px) in out.pixels_mut().zip(rgba.pixels()) {
        let a = px[3] as u32;
        for c in 0..3 {
            // round(c * a / 255 + 255 * (255 - a) / 255)
            o[c] = ((px[c] as u32 * a + 255 * (255 - a) + 127) / 255) as u8;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{ImageFormat, Rgba, RgbaImage};

    fn encode(img: &DynamicImage, fmt: ImageFormat) -> Vec<u8> {
        let mut buf = Cursor::new(Vec::new());
        img.write_to(&mut buf, fmt).unwrap();
        buf.into_inner()
    }

    #[test]
    fn rgba_is_composited_on_white() {
        let mut img = RgbaImage::new(20, 20);
        img.put_pixel(0, 0, Rgba([0, 0, 0, 0]));
        img.put_pixel(1, 0, Rgba([200, 10, 10, 255]));
        let bytes = encode(&DynamicImage::ImageRgba8(img), ImageFormat::Png);
        let rgb = decode_bytes(&bytes, Path::new("a.png"), &DecodeLimits::default()).unwrap();
        assert_eq!(rgb.get_pixel(0, 0).0, [255, 255, 255]);
        assert_eq!(rgb.get_pixel(1, 0).0, [200, 10, 10]);
    }

    #[test]
    fn sixteen_bit_is_scaled() {
        let img = image::ImageBuffer::<image::Rgb<u16>, _>::from_pixel(20, 20, image::Rgb([65535u16, 0, 32896]));
        let bytes = encode(&DynamicImage::ImageRgb16(img), ImageFormat::Png);
        let rgb = decode_bytes(&bytes, Path::new("a.png"), &DecodeLimits::default()).unwrap();
        assert_eq!(rgb.get_pixel(3, 3).0, [255, 0, 128]);
    }

    #[test]
    fn bad_inputs_are_typed_errors() {
        let lim = DecodeLimits::default();
        assert!(matches!(decode_bytes(b"", Path::new("z.jpg"), &lim), Err(DecodeError::Empty { .. })));
        assert!(matches!(
            decode_bytes(b"hello, I am text", Path::new("t.jpg"), &lim),
            Err(DecodeError::UnknownFormat { .. })
        ));
        let tiny = encode(&DynamicImage::new_rgb8(1, 1), ImageFormat::Png);
        assert!(matches!(decode_bytes(&tiny, Path::new("t.png"), &lim), Err(DecodeError::TooSmall { .. })));
        let good = encode(&DynamicImage::new_rgb8(64, 64), ImageFormat::Jpeg);
        let cut = &good[..good.len() / 2];
        let err = decode_bytes(cut, Path::new("cut.jpg"), &lim).unwrap_err();
        assert!(matches!(err, DecodeError::Corrupt { .. }), "{err}");
        assert!(err.to_string().contains("cut.jpg"));
    }

    #[test]
    fn huge_header_is_rejected_before_allocation() {
        // A valid PNG header claiming 100,000 x 100,000 pixels with no pixel data.
        let mut png = Vec::new();
        png.extend_from_slice(b"\x89PNG\r\n\x1a\n");
        let mut ihdr = Vec::new();
        ihdr.extend_from_slice(&100_000u32.to_be_bytes());
        ihdr.extend_from_slice(&100_000u32.to_be_bytes());
        ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
        png.extend_from_slice(&(ihdr.len() as u32).to_be_bytes());
        let mut chunk = b"IHDR".to_vec();
        chunk.extend_from_slice(&ihdr);
        png.extend_from_slice(&chunk);
        png.extend_from_slice(&crc32(&chunk).to_be_bytes());
        let err = decode_bytes(&png, Path::new("huge.png"), &DecodeLimits::default()).unwrap_err();
        assert!(matches!(err, DecodeError::TooLarge { .. }), "{err}");
    }

    #[test]
    fn jpeg_header_walk_reads_frame_and_orientation() {
        let field =
            DynamicImage::ImageRgb8(RgbImage::from_fn(40, 24, |x, y| image::Rgb([x as u8 * 6, y as u8 * 9, 90])));
        let jpeg = encode(&field, ImageFormat::Jpeg);
        let header = JpegHeader::parse(&jpeg).expect("a plain JPEG parses");
        assert_eq!((header.width, header.height, header.precision, header.components), (40, 24, 8, 3));
        assert_eq!(header.orientation, image::metadata::Orientation::NoTransforms);

        // EXIF orientation 6 (rotate 90 degrees clockwise), plus fill bytes before a marker.
        let mut tiff = b"MM\0*\0\0\0\x08".to_vec();
        tiff.extend_from_slice(&[0, 1, 0x01, 0x12, 0, 3, 0, 0, 0, 1, 0, 6, 0, 0, 0, 0, 0, 0]);
        let mut app1 = b"Exif\0\0".to_vec();
        app1.extend_from_slice(&tiff);
        let mut rotated = vec![0xFF, 0xD8, 0xFF, 0xFF, 0xE1];
        rotated.extend_from_slice(&((app1.len() + 2) as u16).to_be_bytes());
        rotated.extend_from_slice(&app1);
        rotated.extend_from_slice(&jpeg[2..]);
        let header = JpegHeader::parse(&rotated).expect("fill bytes and EXIF parse");
        assert_eq!(header.orientation, image::metadata::Orientation::Rotate90);
        let img = decode_bytes(&rotated, Path::new("r.jpg"), &DecodeLimits::default()).unwrap();
        assert_eq!(img.dimensions(), (24, 40));

        // Cut inside the markers, or not a JPEG: no header, the general path decides.
        assert_eq!(JpegHeader::parse(&jpeg[..20]), None);
        assert_eq!(JpegHeader::parse(b"\x89PNG\r\n"), None);
    }

    #[test]
    fn direct_jpeg_path_matches_libjpeg_through_the_general_path() {
        let field = DynamicImage::ImageRgb8(RgbImage::from_fn(64, 48, |x, y| {
            image::Rgb([(x * 4) as u8, (y * 5) as u8, ((x + y) * 2) as u8])
        }));
        let jpeg = encode(&field, ImageFormat::Jpeg);
        let direct = decode_bytes(&jpeg, Path::new("a.jpg"), &DecodeLimits::default()).unwrap();
        let libjpeg = decode_jpeg_libjpeg(&jpeg, 64, 48).expect("libjpeg decodes it");
        assert_eq!(direct, libjpeg);
        // A 4-component (CMYK) frame is left to the general path.
        let header = JpegHeader { components: 4, ..JpegHeader::parse(&jpeg).unwrap() };
        let out = decode_jpeg_direct(&jpeg, &header, Path::new("a.jpg"), &DecodeLimits::default()).unwrap();
        assert!(out.is_none());
    }

    fn crc32(data: &[u8]) -> u32 {
        let mut crc = 0xFFFF_FFFFu32;
        for &b in data {
            crc ^= b as u32;
            for _ in 0..8 {
                crc = if crc & 1 != 0 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
            }
        }
        !crc
    }
}
