//! The seed script's input channels (`preprocess.channels = "hs0"`) against OpenCV's own
//! values: `cv2.cvtColor(cv2.imread(f), cv2.COLOR_BGR2HSV)[:, :, :2]` plus a zero channel.
//! The fixture holds OpenCV's `COLOR_RGB2HSV` of colours `(c0, c1, c2)`; a BGR image of the
//! true colour `(r, g, b)` through `COLOR_BGR2HSV` is that same conversion of `(r, g, b)`.

use allscan_preprocess::{hs0_image, prepare_input, InputChannels, PreprocessConfig, SegmentMode};
use image::RgbImage;

#[derive(serde::Deserialize)]
struct Fixture {
    opencv_version: String,
    samples: Vec<[u8; 7]>,
}

fn fixture() -> Fixture {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/opencv_hsv.json");
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The fixture's colours as one image row per 256 samples, true RGB order.
fn sample_image(samples: &[[u8; 7]]) -> RgbImage {
    let w = 256u32;
    let h = (samples.len() as u32).div_ceil(w);
    RgbImage::from_fn(w, h, |x, y| {
        let s = samples.get((y * w + x) as usize).copied().unwrap_or([0; 7]);
        image::Rgb([s[0], s[1], s[2]])
    })
}

#[test]
fn hs0_pixels_are_opencv_h_and_s_with_a_zero_channel() {
    let fx = fixture();
    assert!(fx.samples.len() > 5000);
    let img = sample_image(&fx.samples);
    let hs0 = hs0_image(&img);
    for (i, s) in fx.samples.iter().enumerate() {
        let (x, y) = (i as u32 % 256, i as u32 / 256);
        assert_eq!(hs0.get_pixel(x, y).0, [s[3], s[4], 0], "colour {:?} (OpenCV {})", &s[..3], fx.opencv_version);
        assert_eq!(InputChannels::Hs0.pixel([s[0], s[1], s[2]]), [s[3], s[4], 0]);
    }
}

#[test]
fn field_views_carry_the_hs0_channels_at_the_input_size() {
    let fx = fixture();
    let img = sample_image(&fx.samples);
    let cfg = PreprocessConfig {
        mode: SegmentMode::Field,
        input_size: 64,
        channels: InputChannels::Hs0,
        ..Default::default()
    };
    let views = prepare_input(&img, &cfg).unwrap();
    assert_eq!(views.len(), 1);
    assert_eq!(views[0].dimensions(), (64, 64));
    assert!(views[0].pixels().all(|p| p[2] == 0), "the third channel is zero");
    // OpenCV's hue stops at 179, and a resize only averages hues: no value above it appears.
    assert!(views[0].pixels().all(|p| p[0] < 180));
    // RGB channels (the default) leave the field's colours alone.
    let rgb = prepare_input(&img, &PreprocessConfig { channels: InputChannels::Rgb, ..cfg }).unwrap();
    assert_ne!(rgb[0], views[0]);
    assert!(rgb[0].pixels().any(|p| p[2] != 0));
}
