//! The Aria authors' HSV segmentation, bit for bit: decoded RGB field -> 8-bit mask (255 = kept)
//! -> the field with everything outside the mask set to black (their `Segmented/` images).
//!
//! The authors ran, in OpenCV:
//! ```text
//! img  = cv2.imread(path)                                  # BGR order
//! hsv  = cv2.cvtColor(img, cv2.COLOR_RGB2HSV)              # channels read as R, G, B
//! mask = cv2.inRange(hsv, (168, 50, 50), (182, 255, 255))  # inclusive bounds
//! out  = cv2.bitwise_and(img, img, mask=mask)
//! ```
//! Each quirk of that recipe is reproduced where it happens below:
//! 1. **Red and blue are swapped** before the hue is computed ([`aria_hsv_mask`]): OpenCV's
//!    channel 0 is blue after `imread`, and `COLOR_RGB2HSV` calls it red. Purple nuclei thus
//!    land near hue 170 (pink), which is why the authors' window sits there.
//! 2. **OpenCV's 8-bit fixed-point arithmetic** ([`opencv_rgb2hsv`]): S and H are computed with
//!    12-bit fixed-point reciprocal tables that OpenCV rounds once, then rounded again with
//!    `+2048 >> 12`; a float HSV formula disagrees with it on ~1% of colours.
//! 3. **Hue in 0..180** (degrees halved) and the hue never reaches 180 with these tables, so
//!    the upper hue bound 182 is vacuous: the window is really 168..=179.
//! 4. **Greys** (max == min) get H = 0 and S = 0; ties between maxima go to "R" (OpenCV's
//!    channel 0, blue here) before G.
//! 5. **`inRange` is inclusive** on both ends, per channel, all three must hold.
//!
//! Checked against OpenCV (4.10 and 5.0 agree) on all 2^24 colours by the fixture test in
//! `tests/opencv_parity.rs`; the fixture is written by `scripts/opencv_hsv.py fixture`.

use image::{GrayImage, Luma, RgbImage};

/// The authors' lower `inRange` bound, OpenCV scales (H 0..180, S and V 0..255).
pub const ARIA_HSV_LOWER: [u8; 3] = [168, 50, 50];
/// The authors' upper `inRange` bound. H = 182 is never reached (see the module docs).
pub const ARIA_HSV_UPPER: [u8; 3] = [182, 255, 255];

/// OpenCV's `hsv_shift`: the tables below hold reciprocals scaled by 2^12.
const HSV_SHIFT: u32 = 12;

/// `sdiv_table[i] = cvRound((255 << 12) / i)`. No quotient is exactly x.5 (2^13 * 255 has no
/// odd divisor pattern that allows it for i < 256), so integer round-half-up equals OpenCV's
/// round-half-even here; the all-colour fixture test confirms it.
const SDIV: [i32; 256] = {
    let mut t = [0i32; 256];
    let mut i = 1;
    while i < 256 {
        t[i] = ((2 * (255 << HSV_SHIFT) + i) / (2 * i)) as i32;
        i += 1;
    }
    t
};

/// `hdiv_table180[i] = cvRound((180 << 12) / (6 * i))`, i.e. round(122880 / i).
const HDIV180: [i32; 256] = {
    let mut t = [0i32; 256];
    let mut i = 1;
    while i < 256 {
        t[i] = ((2 * 122_880 + i) / (2 * i)) as i32;
        i += 1;
    }
    t
};

/// OpenCV's `RGB2HSV_b` for one pixel, channels in the order OpenCV *believes* them to be
/// (`c0` = "R", `c2` = "B"); returns `[H (0..180), S, V]` exactly as `cvtColor` would.
#[inline]
pub fn opencv_rgb2hsv(c0: u8, c1: u8, c2: u8) -> [u8; 3] {
    let (r, g, b) = (c0 as i32, c1 as i32, c2 as i32);
    let v = r.max(g).max(b);
    let vmin = r.min(g).min(b);
    let diff = v - vmin;
    let s = (diff * SDIV[v as usize] + (1 << (HSV_SHIFT - 1))) >> HSV_SHIFT;
    // Quirk 4: the max is tested against "R" first, then "G"; greys fall in the first branch
    // with diff = 0 and get H = 0.
    let h = if v == r {
        g - b
    } else if v == g {
        b - r + 2 * diff
    } else {
        r - g + 4 * diff
    };
    // Arithmetic shift of a negative product rounds toward -inf, as in OpenCV's C++.
    let mut h = (h * HDIV180[diff as usize] + (1 << (HSV_SHIFT - 1))) >> HSV_SHIFT;
    if h < 0 {
        h += 180;
    }
    [h.clamp(0, 255) as u8, s as u8, v as u8]
}

/// The seed authors' model input before resizing: H and S of OpenCV's 8-bit HSV and a zero
/// third channel, for a field in true RGB order. Their script read the file with
/// `cv2.imread` (BGR in memory) and converted it with `COLOR_BGR2HSV`, which names the
/// channels correctly, so this is the true hue (no swap, unlike [`aria_hsv_mask`]): red 0,
/// green 60, blue 120, violet nuclei ~130. V is dropped.
pub fn hs0_image(img: &RgbImage) -> RgbImage {
    let (w, h) = img.dimensions();
    let mut out = vec![0u8; img.as_raw().len()];
    for (px, o) in img.as_raw().chunks_exact(3).zip(out.chunks_exact_mut(3)) {
        let [hue, sat, _v] = opencv_rgb2hsv(px[0], px[1], px[2]);
        o[0] = hue;
        o[1] = sat;
    }
    RgbImage::from_raw(w, h, out).unwrap_or_else(|| RgbImage::new(w, h))
}

/// Whether OpenCV's `inRange` with the authors' bounds keeps an HSV triple (inclusive).
#[inline]
pub fn aria_in_range(hsv: [u8; 3]) -> bool {
    (0..3).all(|c| hsv[c] >= ARIA_HSV_LOWER[c] && hsv[c] <= ARIA_HSV_UPPER[c])
}

/// The recipe pixel by pixel, straight from [`opencv_rgb2hsv`] (true RGB order in). The
/// reference that [`KEPT_RED`] is built from and tested against; the mask functions use the
/// table.
#[inline]
pub fn aria_hsv_keeps_reference(rgb: [u8; 3]) -> bool {
    let [r, g, b] = rgb;
    // Quirk 1: the authors' image was BGR in memory and converted as if RGB, so OpenCV's
    // "R" is our blue and its "B" is our red.
    aria_in_range(opencv_rgb2hsv(b, g, r))
}

/// For each hue difference `diff = max - min` (1..=255) of OpenCV's "R" branch: the range of
/// `h = G - B` (OpenCV's names, always negative here) whose fixed-point hue lands in
/// 168..=179 after the `+180` wrap, i.e. `(h * HDIV180[diff] + 2048) >> 12` in -12..=-1.
/// `[lo, hi]`, empty (lo > hi) when no `h` in -diff..=-1 qualifies.
const HUE_KEPT: [[i32; 2]; 256] = {
    let mut t = [[1i32, 0]; 256];
    let mut diff = 1;
    while diff < 256 {
        let (mut lo, mut hi) = (1i32, 0i32);
        let mut h = -1i32;
        while h >= -(diff as i32) {
            let hf = (h * HDIV180[diff] + (1 << (HSV_SHIFT - 1))) >> HSV_SHIFT;
            if hf <= -1 && hf >= -12 {
                // h falls, so the first hit is the top of the range and the last the bottom.
                if lo > hi {
                    hi = h;
                }
                lo = h;
            }
            h -= 1;
        }
        t[diff] = [lo, hi];
        diff += 1;
    }
    t
};

/// `KEPT_RED[blue << 8 | green] = [lo, hi]`: the recipe keeps a pixel (true RGB) exactly when
/// `lo <= red <= hi` (empty ranges are `[255, 0]`). Why a table: the HSV conversion needs two
/// reciprocal-table lookups and a three-way branch per pixel, and `inRange` then throws most
/// of that away; this 128 KiB table (it stays in L2) answers with one load and two compares.
///
/// Derivation (OpenCV's channel names in quotes; "R" is our blue, "B" our red, quirk 1):
/// hue 168..=179 only comes from the "R" branch (`v == "R"`, taken first on ties), whose hue
/// is `("G" - "B") / 6 diff` of the circle, in -30..=30 OpenCV units; the "G" and "B" branches
/// give 30..=150. So a kept pixel has blue = V >= 50, blue >= red and blue >= green, and
/// `"G" - "B" = green - red < 0`, so red > green, min = green and `diff = blue - green`.
/// S depends on (blue, diff) only, and the hue is monotone in red for a given (blue, green):
/// the kept reds form one interval. `tests/opencv_parity.rs` checks the table against
/// [`aria_hsv_keeps_reference`] and OpenCV's own mask on all 2^24 colours.
pub static KEPT_RED: [[u8; 2]; 65536] = {
    let mut t = [[255u8, 0]; 65536];
    let mut b = ARIA_HSV_LOWER[2] as usize;
    while b < 256 {
        let mut g = 0usize;
        while g < b {
            let diff = b - g;
            let s = (diff as i32 * SDIV[b] + (1 << (HSV_SHIFT - 1))) >> HSV_SHIFT;
            let [hlo, hhi] = HUE_KEPT[diff];
            if s >= ARIA_HSV_LOWER[1] as i32 && hlo <= hhi {
                // h = green - red, so red = green - h.
                let lo = g as i32 - hhi;
                let mut hi = g as i32 - hlo;
                if hi > b as i32 {
                    hi = b as i32;
                }
                if lo <= hi {
                    t[b << 8 | g] = [lo as u8, hi as u8];
                }
            }
            g += 1;
        }
        b += 1;
    }
    t
};

/// Whether the authors' recipe keeps a pixel given in true RGB order (through [`KEPT_RED`]).
#[inline]
pub fn aria_hsv_keeps(rgb: [u8; 3]) -> bool {
    let [r, g, b] = rgb;
    let [lo, hi] = KEPT_RED[(b as usize) << 8 | g as usize];
    (r >= lo) & (r <= hi)
}

/// The authors' `Segmented/` mask for a field in true RGB order: 255 where their OpenCV recipe
/// keeps the pixel, 0 elsewhere. Why: the seed trained on these masks, so `aria-hsv` mode must
/// see exactly the pixels it saw.
pub fn aria_hsv_mask(img: &RgbImage) -> GrayImage {
    let (w, h) = img.dimensions();
    let mut mask = vec![0u8; img.as_raw().len() / 3];
    for (m, px) in mask.iter_mut().zip(img.as_raw().chunks_exact(3)) {
        *m = keep_byte(px);
    }
    GrayImage::from_raw(w, h, mask).unwrap_or_else(|| GrayImage::new(w, h))
}

/// The recipe's two outputs, mask and segmented field, in one pass over the pixels: what
/// `inRange` followed by `bitwise_and` computes, without reading the field twice.
pub fn aria_hsv_segment(img: &RgbImage) -> (GrayImage, RgbImage) {
    let (w, h) = img.dimensions();
    let n = img.as_raw().len() / 3;
    let mut mask = vec![0u8; n];
    let mut segmented = vec![0u8; 3 * n];
    for ((px, m), out) in img.as_raw().chunks_exact(3).zip(&mut mask).zip(segmented.chunks_exact_mut(3)) {
        let keep = keep_byte(px);
        *m = keep;
        out[0] = px[0] & keep;
        out[1] = px[1] & keep;
        out[2] = px[2] & keep;
    }
    let mask = GrayImage::from_raw(w, h, mask).unwrap_or_else(|| GrayImage::new(w, h));
    let segmented = RgbImage::from_raw(w, h, segmented).unwrap_or_else(|| RgbImage::new(w, h));
    (mask, segmented)
}

/// 255 when the recipe keeps this RGB pixel, else 0, without a branch.
#[inline(always)]
fn keep_byte(px: &[u8]) -> u8 {
    0u8.wrapping_sub(aria_hsv_keeps([px[0], px[1], px[2]]) as u8)
}

/// `bitwise_and(img, img, mask=mask)`: pixels where the mask is non-zero are kept, the rest
/// become black, as in the authors' `Segmented/`. A mask of another size keeps nothing outside
/// the common area (never panics).
pub fn apply_mask(img: &RgbImage, mask: &GrayImage) -> RgbImage {
    let (w, h) = img.dimensions();
    if mask.dimensions() == (w, h) {
        let mut out = img.clone();
        for (px, m) in out.as_mut().chunks_exact_mut(3).zip(mask.as_raw()) {
            if *m == 0 {
                px.fill(0);
            }
        }
        return out;
    }
    RgbImage::from_fn(w, h, |x, y| {
        let keep = x < mask.width() && y < mask.height() && mask.get_pixel(x, y)[0] != 0;
        if keep {
            *img.get_pixel(x, y)
        } else {
            image::Rgb([0, 0, 0])
        }
    })
}

/// Fraction of non-zero pixels in a mask (0 for an empty image).
pub fn mask_fraction(mask: &GrayImage) -> f64 {
    let n = mask.as_raw().len();
    if n == 0 {
        return 0.0;
    }
    mask.as_raw().iter().filter(|&&m| m != 0).count() as f64 / n as f64
}

/// A mask from any per-pixel predicate (used by tests and the contact sheet).
pub fn mask_from_fn(w: u32, h: u32, f: impl Fn(u32, u32) -> bool) -> GrayImage {
    GrayImage::from_fn(w, h, |x, y| Luma([if f(x, y) { 255 } else { 0 }]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greys_have_zero_hue_and_saturation() {
        for v in [0u8, 1, 50, 128, 255] {
            assert_eq!(opencv_rgb2hsv(v, v, v), [0, 0, v]);
        }
    }

    #[test]
    fn pure_hues_match_opencv_scales() {
        // Values from cv2.cvtColor on single pixels (OpenCV 4.10).
        assert_eq!(opencv_rgb2hsv(255, 0, 0), [0, 255, 255]);
        assert_eq!(opencv_rgb2hsv(0, 255, 0), [60, 255, 255]);
        assert_eq!(opencv_rgb2hsv(0, 0, 255), [120, 255, 255]);
        // A slightly negative hue: the fixed-point product is floored, then wrapped by +180.
        assert_eq!(opencv_rgb2hsv(255, 0, 20), [178, 255, 255]);
    }

    #[test]
    fn purple_nucleus_is_kept_only_because_of_the_swap() {
        // A typical violet nucleus (true RGB). Its true hue is ~262 deg (131 in OpenCV units),
        // outside 168..182; with red and blue swapped it becomes ~338 deg (169): kept.
        let violet = [100u8, 60, 170];
        assert!(!aria_in_range(opencv_rgb2hsv(violet[0], violet[1], violet[2])));
        assert!(aria_hsv_keeps(violet));
        let img = RgbImage::from_pixel(4, 4, image::Rgb(violet));
        assert!(aria_hsv_mask(&img).pixels().all(|p| p[0] == 255));
    }

    #[test]
    fn hs0_is_true_hue_and_saturation_with_a_zero_channel() {
        // What cv2.cvtColor(bgr, cv2.COLOR_BGR2HSV) gives for these colours (true RGB here):
        // red, green, blue, a violet nucleus, white, a grey. `tests/hs0_channels.rs` checks
        // the same function against OpenCV's own values from the parity fixture.
        let cases: [([u8; 3], [u8; 2]); 6] = [
            ([255, 0, 0], [0, 255]),
            ([0, 255, 0], [60, 255]),
            ([0, 0, 255], [120, 255]),
            ([100, 60, 170], [131, 165]),
            ([255, 255, 255], [0, 0]),
            ([90, 90, 90], [0, 0]),
        ];
        let img = RgbImage::from_fn(cases.len() as u32, 1, |x, _| image::Rgb(cases[x as usize].0));
        let out = hs0_image(&img);
        for (x, (rgb, hs)) in cases.iter().enumerate() {
            assert_eq!(out.get_pixel(x as u32, 0).0, [hs[0], hs[1], 0], "colour {rgb:?}");
        }
        // Not the swapped conversion of the aria-hsv recipe: there the violet reads as pink.
        assert_eq!(opencv_rgb2hsv(170, 60, 100)[0], 169);
    }

    #[test]
    fn apply_mask_blackens_outside() {
        let img = RgbImage::from_pixel(3, 2, image::Rgb([10, 20, 30]));
        let mask = mask_from_fn(3, 2, |x, _| x == 1);
        let out = apply_mask(&img, &mask);
        assert_eq!(out.get_pixel(0, 0).0, [0, 0, 0]);
        assert_eq!(out.get_pixel(1, 1).0, [10, 20, 30]);
        // A mismatched mask never panics.
        let small = mask_from_fn(1, 1, |_, _| true);
        let out = apply_mask(&img, &small);
        assert_eq!(out.get_pixel(0, 0).0, [10, 20, 30]);
        assert_eq!(out.get_pixel(2, 1).0, [0, 0, 0]);
    }
}
