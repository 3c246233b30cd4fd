//! Explain stage, display: a normalised heat map `[0, 1]` + the RGB image it explains -> the
//! image blended with a colour map (Google's Turbo, a perceptually smoother jet), as RGB or
//! PNG bytes.

use image::{Rgb, RgbImage};

use super::gradcam::Heatmap;

/// Turbo colour map (Mikhailov 2019), polynomial approximation: 0 -> dark blue, 0.5 -> green,
/// 1 -> dark red.
pub fn turbo(t: f32) -> [u8; 3] {
    let x = t.clamp(0.0, 1.0) as f64;
    let r =
        0.13572138 + x * (4.61539260 + x * (-42.66032258 + x * (132.13108234 + x * (-152.94239396 + x * 59.28637943))));
    let g = 0.09140261 + x * (2.19418839 + x * (4.84296658 + x * (-14.18503333 + x * (4.27729857 + x * 2.82956604))));
    let b =
        0.10667330 + x * (12.64194608 + x * (-60.58204836 + x * (110.36276771 + x * (-89.90310912 + x * 27.34824973))));
    let c = |v: f64| (v.clamp(0.0, 1.0) * 255.0).round() as u8;
    [c(r), c(g), c(b)]
}

/// Blends `heat` (resampled to the image size if it differs) onto `image`: each pixel is
/// `(1 - a) * image + a * turbo(h)` with `a = alpha * (0.3 + 0.7 * h)`, so cold areas stay
/// readable and hot areas stand out.
pub fn blend(image: &RgbImage, heat: &Heatmap, alpha: f32) -> RgbImage {
    let (w, h) = image.dimensions();
    let heat = if (heat.width, heat.height) == (w, h) { heat.clone() } else { heat.resized(w, h) };
    let alpha = alpha.clamp(0.0, 1.0);
    RgbImage::from_fn(w, h, |x, y| {
        let v = heat.get(x, y);
        let a = alpha * (0.3 + 0.7 * v);
        let c = turbo(v);
        let p = image.get_pixel(x, y).0;
        Rgb(std::array::from_fn(|i| ((1.0 - a) * p[i] as f32 + a * c[i] as f32).round().clamp(0.0, 255.0) as u8))
    })
}

/// PNG bytes of an RGB image.
pub fn png_bytes(image: &RgbImage) -> Result<Vec<u8>, image::ImageError> {
    let mut buf = Vec::new();
    image::DynamicImage::ImageRgb8(image.clone())
        .write_to(&mut std::io::Cursor::new(&mut buf), image::ImageFormat::Png)?;
    Ok(buf)
}

/// A `data:` URL of PNG bytes (for self-contained pages and JSON).
pub fn png_data_url(png: &[u8]) -> String {
    use base64::Engine as _;
    format!("data:image/png;base64,{}", base64::engine::general_purpose::STANDARD.encode(png))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn turbo_runs_blue_to_red() {
        let lo = turbo(0.15);
        let hi = turbo(0.9);
        assert!(lo[2] > lo[0] + 100, "{lo:?}");
        assert!(hi[0] > hi[2] + 100, "{hi:?}");
        let mid = turbo(0.5);
        assert!(mid[1] > 150, "{mid:?}");
    }

    #[test]
    fn blend_colours_hot_pixels_more() {
        let img = RgbImage::from_pixel(4, 4, Rgb([128, 128, 128]));
        let mut heat = Heatmap::zeros(4, 4);
        heat.values[5] = 1.0; // (1, 1)
        let out = blend(&img, &heat, 0.6);
        let hot = out.get_pixel(1, 1).0;
        let cold = out.get_pixel(3, 3).0;
        // Hot is red-dominant, cold stays close to the grey underneath.
        assert!(hot[0] as i32 - hot[2] as i32 > 50, "{hot:?}");
        assert!((cold[0] as i32 - cold[2] as i32).abs() < 20, "{cold:?}");
        let png = png_bytes(&out).unwrap();
        assert_eq!(&png[1..4], b"PNG");
    }
}
