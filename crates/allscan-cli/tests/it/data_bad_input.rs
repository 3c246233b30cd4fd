//! The bad-input corpus: every kind of broken file in one dataset folder; `inspect` and `split`
//! must finish, list each bad file with a plain reason, count them, and never panic.

use crate::common;

use std::io::Cursor;
use std::path::Path;

use common::{allscan, stderr, stdout};
use image::{DynamicImage, ImageBuffer, ImageFormat, Rgb, RgbImage, Rgba, RgbaImage};

fn field(seed: u8, w: u32, h: u32) -> RgbImage {
    RgbImage::from_fn(w, h, |x, y| Rgb([(x * 3 + seed as u32 * 40) as u8, (y * 5) as u8, seed.wrapping_mul(37)]))
}

fn encode(img: &DynamicImage, fmt: ImageFormat) -> Vec<u8> {
    let mut buf = Cursor::new(Vec::new());
    img.write_to(&mut buf, fmt).unwrap();
    buf.into_inner()
}

/// A JPEG with an EXIF APP1 segment saying "rotate 90° clockwise" (orientation 6).
fn exif_rotated_jpeg(w: u32, h: u32) -> Vec<u8> {
    let jpg = encode(&DynamicImage::ImageRgb8(field(9, w, h)), ImageFormat::Jpeg);
    let mut tiff = b"MM\x00\x2a\x00\x00\x00\x08".to_vec();
    tiff.extend_from_slice(&[0x00, 0x01]); // one IFD entry
    tiff.extend_from_slice(&[0x01, 0x12, 0x00, 0x03, 0x00, 0x00, 0x00, 0x01, 0x00, 0x06, 0x00, 0x00]);
    tiff.extend_from_slice(&[0, 0, 0, 0]);
    let mut app1 = b"Exif\x00\x00".to_vec();
    app1.extend_from_slice(&tiff);
    let mut out = jpg[..2].to_vec(); // SOI
    out.extend_from_slice(&[0xFF, 0xE1]);
    out.extend_from_slice(&((app1.len() + 2) as u16).to_be_bytes());
    out.extend_from_slice(&app1);
    out.extend_from_slice(&jpg[2..]);
    out
}

fn cmyk_jpeg(w: u16, h: u16) -> Vec<u8> {
    let mut data = Vec::new();
    for y in 0..h {
        for x in 0..w {
            data.extend_from_slice(&[(x * 4) as u8, (y * 4) as u8, 30, 10]);
        }
    }
    let mut out = Vec::new();
    let enc = jpeg_encoder::Encoder::new(&mut out, 90);
    enc.encode(&data, w, h, jpeg_encoder::ColorType::Cmyk).unwrap();
    out
}

/// A PNG header claiming 100,000 x 100,000 pixels, with no pixel data.
fn huge_png() -> Vec<u8> {
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut chunk = b"IHDR".to_vec();
    chunk.extend_from_slice(&100_000u32.to_be_bytes());
    chunk.extend_from_slice(&100_000u32.to_be_bytes());
    chunk.extend_from_slice(&[8, 2, 0, 0, 0]);
    png.extend_from_slice(&13u32.to_be_bytes());
    png.extend_from_slice(&chunk);
    let mut crc = 0xFFFF_FFFFu32;
    for &b in &chunk {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    png.extend_from_slice(&(!crc).to_be_bytes());
    png
}

fn build_corpus(root: &Path) {
    use std::os::unix::ffi::OsStrExt;
    let h = root.join("healthy");
    let l = root.join("leukemia");
    std::fs::create_dir_all(&h).unwrap();
    std::fs::create_dir_all(&l).unwrap();
    let w = |p: &Path, b: &[u8]| std::fs::write(p, b).unwrap();
    for i in 0..6u8 {
        w(&h.join(format!("good-{i}.png")), &encode(&DynamicImage::ImageRgb8(field(i, 64, 64)), ImageFormat::Png));
        w(
            &l.join(format!("good-{i}.jpg")),
            &encode(&DynamicImage::ImageRgb8(field(100 + i, 64, 64)), ImageFormat::Jpeg),
        );
    }
    // Readable after documented conversions:
    let rgba = RgbaImage::from_fn(40, 40, |x, _| Rgba([200, 100, 50, (x * 6) as u8]));
    w(&h.join("rgba.png"), &encode(&DynamicImage::ImageRgba8(rgba), ImageFormat::Png));
    let deep = ImageBuffer::<Rgb<u16>, _>::from_fn(40, 40, |x, y| Rgb([x as u16 * 1000, y as u16 * 1500, 40000]));
    w(&h.join("sixteen-bit.png"), &encode(&DynamicImage::ImageRgb16(deep), ImageFormat::Png));
    w(&l.join("cmyk.jpg"), &cmyk_jpeg(48, 40));
    w(&l.join("exif-rotated.jpg"), &exif_rotated_jpeg(60, 30));
    // Bad:
    w(&h.join("zero-bytes.jpg"), b"");
    let good = encode(&DynamicImage::ImageRgb8(field(7, 128, 128)), ImageFormat::Jpeg);
    w(&h.join("truncated.jpg"), &good[..good.len() / 3]);
    w(&l.join("text.jpg"), b"this is not a picture\n");
    w(&l.join("one-pixel.png"), &encode(&DynamicImage::new_rgb8(1, 1), ImageFormat::Png));
    w(&l.join("huge-header.png"), &huge_png());
    std::os::unix::fs::symlink(h.join("does-not-exist.png"), l.join("dangling.png")).unwrap();
    let unreadable = l.join("no-permission.png");
    w(&unreadable, b"\x89PNG\r\n\x1a\nbroken");
    std::fs::set_permissions(&unreadable, std::os::unix::fs::PermissionsExt::from_mode(0o000)).unwrap();
    let name = std::ffi::OsStr::from_bytes(b"bad-\xff\xfe-name.png");
    w(&h.join(name), &encode(&DynamicImage::ImageRgb8(field(3, 32, 32)), ImageFormat::Png));
    std::os::unix::fs::symlink(root, h.join("loop")).unwrap();
    w(&root.join("README.txt"), b"not an image, ignored");
}

#[test]
fn inspect_and_split_survive_the_bad_input_corpus() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("corpus");
    build_corpus(&root);

    let out = allscan(dir.path(), &["data", "inspect", "corpus", "--json"]);
    assert!(out.status.success(), "inspect failed: {}", stderr(&out));
    let report: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    let bad: Vec<(String, String)> = report["bad_files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| (b["path"].as_str().unwrap().to_owned(), b["reason"].as_str().unwrap().to_owned()))
        .collect();
    let reason = |needle: &str| -> String {
        bad.iter()
            .find(|(p, _)| p.contains(needle))
            .map(|(_, r)| r.clone())
            .unwrap_or_else(|| panic!("{needle} not listed in {bad:#?}"))
    };
    assert!(reason("zero-bytes").contains("empty"));
    assert!(
        reason("truncated").contains("corrupt") || reason("truncated").contains("truncated"),
        "{}",
        reason("truncated")
    );
    assert!(reason("text.jpg").contains("not a recognised image"));
    assert!(reason("one-pixel").contains("smaller than"));
    assert!(reason("huge-header").contains("larger than"));
    assert!(reason("dangling").contains("cannot read"));
    assert!(reason("bad-").contains("UTF-8"));
    assert!(reason("loop").contains("loop"), "{}", reason("loop"));
    // As root the 000 file is still readable (and then corrupt); as a user it cannot be opened.
    let np = reason("no-permission");
    assert!(np.contains("cannot read") || np.contains("corrupt"), "{np}");

    // 12 good + rgba + 16-bit + cmyk + exif = 16 readable.
    assert_eq!(report["images"], 16, "{report:#}");
    assert_eq!(report["unreadable"].as_u64().unwrap() as usize, bad.len());
    assert_eq!(bad.len(), 9, "{bad:#?}");
    assert_eq!(report["ignored_non_image_files"], 1);

    // Text output names every bad file too, and says how many.
    let text = allscan(dir.path(), &["data", "inspect", "corpus"]);
    assert!(text.status.success());
    let t = stdout(&text);
    assert!(t.contains("9 files skipped"), "{t}");
    assert!(t.contains("huge-header.png"));

    let split =
        allscan(dir.path(), &["data", "split", "corpus", "--out", "split.json", "--test", "0.25", "--val", "0.25"]);
    assert!(split.status.success(), "split failed: {}", stderr(&split));
    let s: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.path().join("split.json")).unwrap()).unwrap();
    assert_eq!(s["items"].as_array().unwrap().len(), 16);
    assert!(stdout(&split).contains("9 unreadable files"));
}

#[test]
fn exif_orientation_is_applied_and_cmyk_decodes() {
    let lim = allscan_preprocess::DecodeLimits::default();
    let img = allscan_preprocess::decode_bytes(&exif_rotated_jpeg(60, 30), Path::new("r.jpg"), &lim).unwrap();
    assert_eq!(img.dimensions(), (30, 60), "orientation 6 turns a landscape field upright");
    let img = allscan_preprocess::decode_bytes(&cmyk_jpeg(48, 40), Path::new("c.jpg"), &lim).unwrap();
    assert_eq!(img.dimensions(), (48, 40));
}

#[test]
fn missing_or_empty_folder_is_a_one_line_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = allscan(dir.path(), &["data", "inspect", "nowhere"]);
    assert!(!out.status.success());
    let e = stderr(&out);
    assert_eq!(e.trim().lines().count(), 1, "{e}");
    assert!(e.contains("nowhere") && e.contains("no such folder"), "{e}");

    std::fs::create_dir(dir.path().join("empty")).unwrap();
    let out = allscan(dir.path(), &["data", "split", "empty", "--out", "s.json"]);
    assert!(!out.status.success());
    let e = stderr(&out);
    assert_eq!(e.trim().lines().count(), 1, "{e}");
    assert!(e.contains("no image files"), "{e}");
    assert!(!dir.path().join("s.json").exists());
}
