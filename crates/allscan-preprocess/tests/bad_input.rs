//! Bad and unusual input through the public API: grayscale, RGBA, 16-bit, EXIF-rotated, tiny,
//! huge, truncated and non-image files give a documented conversion or a typed error naming
//! the file, never a panic; a field without nuclei is a normal result.

use std::io::Cursor;
use std::path::Path;

use allscan_preprocess::{
    decode_bytes, find_nuclei, prepare_input, DecodeError, DecodeLimits, NucleusConfig, PreprocessConfig,
};
use image::{DynamicImage, ImageFormat, RgbImage};

fn encode(img: &DynamicImage, fmt: ImageFormat) -> Vec<u8> {
    let mut buf = Cursor::new(Vec::new());
    img.write_to(&mut buf, fmt).expect("encoding a test image");
    buf.into_inner()
}

/// A JPEG with an EXIF APP1 segment holding only Orientation = `value`.
fn with_exif_orientation(jpeg: &[u8], value: u8) -> Vec<u8> {
    let mut tiff = b"MM\0*\0\0\0\x08".to_vec();
    tiff.extend_from_slice(&[0, 1, 0x01, 0x12, 0, 3, 0, 0, 0, 1, 0, value, 0, 0, 0, 0, 0, 0]);
    let mut app1 = b"Exif\0\0".to_vec();
    app1.extend_from_slice(&tiff);
    let mut out = jpeg[..2].to_vec(); // SOI
    out.extend_from_slice(&[0xFF, 0xE1]);
    out.extend_from_slice(&((app1.len() + 2) as u16).to_be_bytes());
    out.extend_from_slice(&app1);
    out.extend_from_slice(&jpeg[2..]);
    out
}

#[test]
fn grayscale_jpeg_becomes_grey_rgb() {
    let gray = image::GrayImage::from_fn(32, 24, |x, _| image::Luma([(x * 8) as u8]));
    let bytes = encode(&DynamicImage::ImageLuma8(gray), ImageFormat::Jpeg);
    let rgb = decode_bytes(&bytes, Path::new("g.jpg"), &DecodeLimits::default()).expect("grey decodes");
    assert_eq!(rgb.dimensions(), (32, 24));
    assert!(rgb.pixels().all(|p| p[0] == p[1] && p[1] == p[2]));
}

#[test]
fn exif_rotation_is_applied_to_jpeg() {
    let img = RgbImage::from_fn(32, 16, |x, _| if x < 16 { image::Rgb([250, 0, 0]) } else { image::Rgb([0, 0, 250]) });
    let jpeg = encode(&DynamicImage::ImageRgb8(img), ImageFormat::Jpeg);
    let rotated = with_exif_orientation(&jpeg, 6); // 90 degrees clockwise
    let rgb = decode_bytes(&rotated, Path::new("r.jpg"), &DecodeLimits::default()).expect("decodes");
    assert_eq!(rgb.dimensions(), (16, 32));
    // The left (red) half is now the top.
    assert!(rgb.get_pixel(8, 4)[0] > 200 && rgb.get_pixel(8, 28)[2] > 200);
}

#[test]
fn truncated_and_garbage_jpegs_never_panic() {
    let img = RgbImage::from_fn(64, 64, |x, y| image::Rgb([x as u8 * 4, y as u8 * 4, 128]));
    let jpeg = encode(&DynamicImage::ImageRgb8(img), ImageFormat::Jpeg);
    let lim = DecodeLimits::default();
    for cut in [jpeg.len() / 2, jpeg.len() / 5, 200, 40, 4] {
        let r = decode_bytes(&jpeg[..cut], Path::new("cut.jpg"), &lim);
        if let Err(e) = r {
            assert!(e.to_string().contains("cut.jpg"), "{e}");
        }
    }
    let mut garbage = jpeg.clone();
    for b in garbage.iter_mut().skip(300).step_by(7) {
        *b = b.wrapping_mul(31).wrapping_add(7);
    }
    let _ = decode_bytes(&garbage, Path::new("garbage.jpg"), &lim);
}

#[test]
fn too_small_and_too_large_are_typed_errors() {
    let tiny = encode(&DynamicImage::new_rgb8(8, 8), ImageFormat::Jpeg);
    let lim = DecodeLimits::default();
    assert!(matches!(decode_bytes(&tiny, Path::new("t.jpg"), &lim), Err(DecodeError::TooSmall { .. })));
    let big = encode(&DynamicImage::new_rgb8(300, 300), ImageFormat::Jpeg);
    let small_limit = DecodeLimits { max_pixels: 50_000, ..lim };
    let err = decode_bytes(&big, Path::new("big.jpg"), &small_limit).unwrap_err();
    assert!(matches!(err, DecodeError::TooLarge { .. }), "{err}");
    assert!(err.to_string().contains("big.jpg"));
}

#[test]
fn sixteen_bit_grey_png_and_rgba_are_converted() {
    let g16 = image::ImageBuffer::<image::Luma<u16>, _>::from_pixel(20, 20, image::Luma([65535u16]));
    let rgb = decode_bytes(
        &encode(&DynamicImage::ImageLuma16(g16), ImageFormat::Png),
        Path::new("a.png"),
        &DecodeLimits::default(),
    )
    .expect("16-bit grey decodes");
    assert_eq!(rgb.get_pixel(0, 0).0, [255, 255, 255]);
}

#[test]
fn field_without_nucleus_is_normal() {
    let field = RgbImage::from_pixel(64, 64, image::Rgb([240, 240, 240]));
    assert!(find_nuclei(&field, &NucleusConfig::default()).nuclei.is_empty());
    // The model still gets an input (the whole field), as documented.
    assert_eq!(prepare_input(&field, &PreprocessConfig::default()).expect("fallback").len(), 1);
}

/// A FIFO named like an image is refused before it is opened: reading it would block forever.
#[cfg(unix)]
#[test]
fn a_fifo_named_like_an_image_is_refused_without_blocking() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("x.jpg");
    let made = std::process::Command::new("mkfifo").arg(&fifo).status();
    if !made.is_ok_and(|s| s.success()) {
        panic!("mkfifo is needed for this test");
    }
    let (tx, rx) = std::sync::mpsc::channel();
    let path = fifo.clone();
    std::thread::spawn(move || {
        let _ = tx.send(allscan_preprocess::decode_file(&path, &DecodeLimits::default()).map(|_| ()));
    });
    let result = rx.recv_timeout(std::time::Duration::from_secs(5)).expect("decode_file blocked on a FIFO");
    let err = result.unwrap_err();
    assert!(err.to_string().contains("x.jpg") && err.to_string().contains("not a regular file"), "{err}");
    // A folder is refused too, with its own reason.
    let err = allscan_preprocess::decode_file(dir.path(), &DecodeLimits::default()).unwrap_err();
    assert!(err.to_string().contains("a folder"), "{err}");
}
