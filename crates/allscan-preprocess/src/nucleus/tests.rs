use super::*;

const BG: [u8; 3] = [235, 230, 240]; // pale lilac glass
const RBC: [u8; 3] = [190, 170, 200]; // pale red cell
const NUC: [u8; 3] = [110, 60, 170]; // violet nucleus

fn disc(img: &mut RgbImage, cx: i32, cy: i32, r: i32, c: [u8; 3]) {
    for y in (cy - r).max(0)..=(cy + r).min(img.height() as i32 - 1) {
        for x in (cx - r).max(0)..=(cx + r).min(img.width() as i32 - 1) {
            if (x - cx).pow(2) + (y - cy).pow(2) <= r * r {
                img.put_pixel(x as u32, y as u32, image::Rgb(c));
            }
        }
    }
}

#[test]
fn discs_are_found_with_their_boxes() {
    let mut img = RgbImage::from_pixel(224, 224, image::Rgb(BG));
    disc(&mut img, 40, 40, 12, RBC);
    disc(&mut img, 180, 60, 12, RBC);
    disc(&mut img, 70, 150, 25, NUC);
    disc(&mut img, 170, 170, 15, NUC);
    let res = find_nuclei(&img, &NucleusConfig::default());
    assert_eq!(res.nuclei.len(), 2, "{:?}", res.nuclei);
    let big = &res.nuclei[0];
    let small = &res.nuclei[1];
    // The opening trims the one-pixel tips of a digital disc: edges may move by a pixel
    // each, sides by two.
    let near = |a: u32, b: u32| (a as i64 - b as i64).abs() <= 2;
    assert!(near(big.bbox.x, 45) && near(big.bbox.y, 125), "{big:?}");
    assert!(near(big.bbox.width, 51) && near(big.bbox.height, 51), "{big:?}");
    assert!((big.centroid.0 - 70.0).abs() < 1.0 && (big.centroid.1 - 150.0).abs() < 1.0);
    assert!(near(small.bbox.x, 155) && near(small.bbox.width, 31), "{small:?}");
    let expected = std::f32::consts::PI * 25.0 * 25.0;
    assert!((big.area as f32 - expected).abs() / expected < 0.06, "{}", big.area);
    assert_eq!(res.mask.get_pixel(70, 150)[0], 255);
    assert_eq!(res.mask.get_pixel(40, 40)[0], 0);
}

#[test]
fn nucleus_with_pale_nucleolus_is_filled() {
    let mut img = RgbImage::from_pixel(224, 224, image::Rgb(BG));
    disc(&mut img, 112, 112, 30, NUC);
    disc(&mut img, 112, 112, 8, BG);
    let res = find_nuclei(&img, &NucleusConfig::default());
    assert_eq!(res.nuclei.len(), 1);
    assert_eq!(res.mask.get_pixel(112, 112)[0], 255);
}

#[test]
fn touching_nuclei_are_split() {
    let mut img = RgbImage::from_pixel(224, 224, image::Rgb(BG));
    disc(&mut img, 80, 112, 25, NUC);
    disc(&mut img, 124, 112, 25, NUC); // centres 44 px apart: overlapping discs
    let res = find_nuclei(&img, &NucleusConfig::default());
    assert_eq!(res.nuclei.len(), 2, "{:?}", res.nuclei);
    let xs: Vec<f32> = res.nuclei.iter().map(|n| n.centroid.0).collect();
    assert!(xs.iter().any(|&x| (x - 78.0).abs() < 5.0) && xs.iter().any(|&x| (x - 126.0).abs() < 5.0), "{xs:?}");
    let off = find_nuclei(&img, &NucleusConfig { split_touching: false, ..Default::default() });
    assert_eq!(off.nuclei.len(), 1);
}

#[test]
fn disc_morphology_matches_imageproc() {
    use imageproc::distance_transform::Norm;
    let mask = GrayImage::from_fn(40, 30, |x, y| Luma([if (x * 7 + y * 13) % 11 < 6 || x < 3 { 255 } else { 0 }]));
    for r in 1..4u8 {
        assert_eq!(dilate_disc(&mask, r), imageproc::morphology::dilate(&mask, Norm::L2, r), "dilate r={r}");
        assert_eq!(erode_disc(&mask, r), imageproc::morphology::erode(&mask, Norm::L2, r), "erode r={r}");
    }
}

/// The definition, pixel by pixel: any foreground pixel within the disc, inside the field.
fn dilate_brute(mask: &GrayImage, r: i64) -> GrayImage {
    let (w, h) = (mask.width() as i64, mask.height() as i64);
    GrayImage::from_fn(w as u32, h as u32, |x, y| {
        let hit = (-r..=r).any(|dy| {
            (-r..=r).any(|dx| {
                let (sx, sy) = (x as i64 + dx, y as i64 + dy);
                dx * dx + dy * dy <= r * r
                    && (0..w).contains(&sx)
                    && (0..h).contains(&sy)
                    && mask.get_pixel(sx as u32, sy as u32)[0] != 0
            })
        });
        Luma([if hit { 255 } else { 0 }])
    })
}

#[test]
fn disc_dilation_matches_its_definition() {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    for (w, h) in [(1u32, 1u32), (1, 9), (2, 5), (9, 1), (17, 13), (40, 30)] {
        for density in [1u64, 4, 8] {
            let mask = GrayImage::from_fn(w, h, |_, _| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                Luma([if state % 16 < density { 1 + (state % 255) as u8 } else { 0 }])
            });
            for r in 0..7u8 {
                assert_eq!(dilate_disc(&mask, r), dilate_brute(&mask, r as i64), "{w}x{h} r={r}");
            }
        }
    }
}

#[test]
fn gaussian_blur_matches_imageproc_bit_for_bit() {
    let mut state = 0x1234_5678_9abc_def1u64;
    for (w, h) in [(1u32, 1u32), (3, 2), (2, 7), (5, 40), (33, 17), (224, 224)] {
        let img = GrayImage::from_fn(w, h, |x, y| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            // Noise on half the rows, smooth ramps on the other half.
            Luma([if y % 2 == 0 { state as u8 } else { ((x * 9 + y * 5) % 256) as u8 }])
        });
        for sigma in [0.3f32, 1.0, 1.7, 2.5, 4.0] {
            let theirs = imageproc::filter::gaussian_blur_f32(&img, sigma);
            assert_eq!(gaussian_blur(&img, sigma), theirs, "{w}x{h} sigma={sigma}");
        }
    }
}

#[test]
fn holes_are_filled_but_border_background_is_not() {
    let mut mask = mask_ring(12, 10);
    fill_holes(&mut mask);
    assert_eq!(mask.get_pixel(5, 5)[0], 255, "enclosed hole");
    assert_eq!(mask.get_pixel(0, 0)[0], 0, "background touching the border");
    assert_eq!(mask.get_pixel(11, 9)[0], 0);
    // A ring cut open to the border is not a hole.
    let mut open = mask_ring(12, 10);
    open.put_pixel(5, 2, Luma([0]));
    open.put_pixel(5, 3, Luma([0]));
    fill_holes(&mut open);
    assert_eq!(open.get_pixel(5, 5)[0], 0);
}

/// A square ring (foreground 2..=8 x 2..=7, background inside 4..=6 x 4..=5).
fn mask_ring(w: u32, h: u32) -> GrayImage {
    GrayImage::from_fn(w, h, |x, y| {
        let outer = (2..=8).contains(&x) && (2..=7).contains(&y);
        let inner = (4..=6).contains(&x) && (4..=5).contains(&y);
        Luma([if outer && !inner { 255 } else { 0 }])
    })
}

#[test]
fn empty_field_is_a_normal_result() {
    let img = RgbImage::from_pixel(64, 64, image::Rgb(BG));
    let res = find_nuclei(&img, &NucleusConfig::default());
    assert!(res.nuclei.is_empty());
    assert!(res.mask.pixels().all(|p| p[0] == 0));
    let grey = RgbImage::from_fn(64, 64, |x, y| image::Rgb([((x * 7 + y * 3) % 256) as u8; 3]));
    assert!(find_nuclei(&grey, &NucleusConfig::default()).nuclei.is_empty());
}
