//! Synthetic smears for the demo and the tests: procedurally drawn blood-smear fields in the
//! Aria layout. Input: a [`SynthConfig`] (images per class, seed, field size); output:
//! `OUT/Original/{Benign,Early,Pre,Pro}/SYN-<Class>-<NNN>.png` plus `OUT/synth.json`.
//!
//! Each field holds pale red cells with central pallor, at most one platelet distractor and
//! one leukocyte near the centre. The class shows in the leukocyte's morphology only
//! (nucleus:cytoplasm ratio, nuclear outline, chromatin texture, nucleoli; see [`cells`]);
//! stain, background, brightness, blur and noise are drawn from one distribution for every
//! class, so a colour histogram cannot tell the classes apart (tested below).
//!
//! Every field is a pure function of `(seed, class, index, size)`: [`field_rng`] derives its
//! own ChaCha8 stream, so one field can be redrawn without the rest.

mod cells;
mod draw;

use std::path::{Path, PathBuf};

use image::{GrayImage, RgbImage};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use cells::{draw_distractor, draw_red_cells, sample_stain, Leukocyte};
use draw::OdCanvas;

/// Class folders of the Aria layout, in label order: healthy hematogones, then the three
/// B-ALL subtypes (Early Pre-B, Pre-B, Pro-B).
pub const CLASSES: [&str; 4] = ["Benign", "Early", "Pre", "Pro"];

/// Name of the settings file written beside `Original/`.
pub const MANIFEST_FILE: &str = "synth.json";

/// Smallest and largest field side accepted by [`generate`].
pub const MIN_SIZE: u32 = 32;
pub const MAX_SIZE: u32 = 2048;

/// Settings of one synthetic set; saved as `synth.json` so a rerun can recognise its output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SynthConfig {
    /// Images per class.
    pub per_class: usize,
    /// Seed of the whole set; each field's stream is derived from it (see [`field_rng`]).
    pub seed: u64,
    /// Field side in pixels (Aria fields are 224).
    pub size: u32,
}

impl Default for SynthConfig {
    fn default() -> Self {
        Self { per_class: 60, seed: 0, size: 224 }
    }
}

/// One drawn field and its ground truth.
#[derive(Debug, Clone)]
pub struct SynthField {
    pub image: RgbImage,
    /// Index into [`CLASSES`].
    pub class: usize,
    /// `[x0, y0, x1, y1)` of the whole white cell (pixels at least half covered; exclusive
    /// right and bottom edges).
    pub leukocyte_bbox: [u32; 4],
    /// 255 inside the drawn nucleus (pixels at least half covered), 0 elsewhere.
    pub nucleus_mask: GrayImage,
}

/// What [`generate`] wrote.
#[derive(Debug, Clone)]
pub struct SynthSummary {
    /// `(class folder, images written)` in [`CLASSES`] order.
    pub per_class: Vec<(String, usize)>,
    /// The dataset root (the folder holding `Original/`).
    pub root: PathBuf,
}

impl SynthSummary {
    pub fn total(&self) -> usize {
        self.per_class.iter().map(|(_, n)| n).sum()
    }
}

/// Errors of the generator; each names the offending path or value.
#[derive(Debug, thiserror::Error)]
pub enum SynthError {
    #[error("bad synthetic-set settings: {reason}")]
    BadConfig { reason: String },
    #[error(
        "{path} already holds files that were not written by `allscan demo-data` with these \
         settings ({reason}); choose an empty or new folder"
    )]
    NotEmpty { path: PathBuf, reason: String },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: cannot encode the image: {source}")]
    Encode { path: PathBuf, source: image::ImageError },
    #[error("{path}: {source}")]
    Manifest { path: PathBuf, source: serde_json::Error },
}

/// Contents of `synth.json`.
#[derive(Debug, Serialize, Deserialize)]
struct SynthManifest {
    generator: String,
    classes: Vec<String>,
    config: SynthConfig,
}

const GENERATOR: &str = "allscan synth v1";

/// The RNG of field `index` of class `class` in the set seeded with `seed`.
pub fn field_rng(seed: u64, class: usize, index: usize) -> ChaCha8Rng {
    // splitmix64 finaliser over the three parts, so neighbouring (class, index) pairs get
    // unrelated streams.
    let mut z = seed ^ (class as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (index as u64).rotate_left(32);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    ChaCha8Rng::seed_from_u64(z ^ (z >> 31))
}

/// Draws one `size` x `size` field of class `class` (an index into [`CLASSES`]; larger
/// values are drawn as the last class). Deterministic given the RNG state.
pub fn render_field(class: usize, size: u32, rng: &mut impl Rng) -> SynthField {
    debug_assert!(class < CLASSES.len(), "class index {class} out of range");
    let class = class.min(CLASSES.len() - 1);
    let size = size.max(1);
    // Magnification varies a little from field to field, whatever the class.
    let scale = size as f32 / 224.0 * rng.gen_range(0.8..1.25);
    // Stain first, from the same distribution whatever the class.
    let stain = sample_stain(rng, scale);
    let mut canvas = OdCanvas::new(size, size);
    draw_red_cells(&mut canvas, &stain, scale, rng);
    let jitter = 0.1 * size as f32;
    let centre = size as f32 / 2.0;
    let (cx, cy) = (centre + rng.gen_range(-jitter..=jitter), centre + rng.gen_range(-jitter..=jitter));
    let leukocyte = Leukocyte::sample(class, cx, cy, scale, rng);
    draw_distractor(&mut canvas, &stain, scale, leukocyte.footprint(), rng);
    let truth = leukocyte.draw(&mut canvas, &stain, rng);
    let mut image = stain.camera.develop(&canvas, rng);
    // JPEG softness, as in the Aria fields: block artefacts and chroma smear.
    if rng.gen_bool(0.7) {
        let quality = rng.gen_range(70..=95);
        if let Some(soft) = jpeg_round_trip(&image, quality) {
            image = soft;
        }
    }
    SynthField { image, class, leukocyte_bbox: truth.bbox, nucleus_mask: truth.nucleus_mask }
}

fn jpeg_round_trip(image: &RgbImage, quality: u8) -> Option<RgbImage> {
    let mut buf = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut buf, quality).encode_image(image).ok()?;
    let decoded = image::load_from_memory_with_format(&buf, image::ImageFormat::Jpeg).ok()?;
    Some(decoded.to_rgb8())
}

/// File name of field `index` of `class` in a set of `per_class` images per class.
pub fn field_name(class: usize, index: usize, per_class: usize) -> String {
    let width = per_class.max(1).to_string().len().max(3);
    format!("SYN-{}-{:0width$}.png", CLASSES[class.min(CLASSES.len() - 1)], index + 1)
}

/// Writes the set described by `cfg` under `out` (see the module docs).
pub fn generate(out: &Path, cfg: &SynthConfig) -> Result<SynthSummary, SynthError> {
    generate_with_progress(out, cfg, |_, _| {})
}

/// [`generate`], calling `progress(done, total)` after each image.
pub fn generate_with_progress(
    out: &Path,
    cfg: &SynthConfig,
    mut progress: impl FnMut(usize, usize),
) -> Result<SynthSummary, SynthError> {
    check_config(cfg)?;
    check_target(out, cfg)?;
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| SynthError::Io { path, source }
    };
    std::fs::create_dir_all(out).map_err(io(out))?;
    // The manifest goes first: an interrupted run can then be rerun with the same settings.
    let manifest = SynthManifest {
        generator: GENERATOR.to_string(),
        classes: CLASSES.iter().map(|c| c.to_string()).collect(),
        config: cfg.clone(),
    };
    let manifest_path = out.join(MANIFEST_FILE);
    let json = serde_json::to_vec_pretty(&manifest)
        .map_err(|source| SynthError::Manifest { path: manifest_path.clone(), source })?;
    write_atomically(&manifest_path, &json)?;

    let total = cfg.per_class * CLASSES.len();
    let mut done = 0;
    let mut per_class = Vec::with_capacity(CLASSES.len());
    for (class, name) in CLASSES.iter().enumerate() {
        let dir = out.join("Original").join(name);
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        for index in 0..cfg.per_class {
            let field = render_field(class, cfg.size, &mut field_rng(cfg.seed, class, index));
            let path = dir.join(field_name(class, index, cfg.per_class));
            let mut png = Vec::new();
            field
                .image
                .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
                .map_err(|source| SynthError::Encode { path: path.clone(), source })?;
            write_atomically(&path, &png)?;
            done += 1;
            progress(done, total);
        }
        per_class.push((name.to_string(), cfg.per_class));
    }
    Ok(SynthSummary { per_class, root: out.to_path_buf() })
}

fn check_config(cfg: &SynthConfig) -> Result<(), SynthError> {
    if cfg.per_class == 0 {
        return Err(SynthError::BadConfig { reason: "images per class must be at least 1".into() });
    }
    if cfg.per_class > 1_000_000 {
        return Err(SynthError::BadConfig {
            reason: format!("{} images per class is more than the 1000000 allowed", cfg.per_class),
        });
    }
    if !(MIN_SIZE..=MAX_SIZE).contains(&cfg.size) {
        return Err(SynthError::BadConfig {
            reason: format!("field size {} px is outside {MIN_SIZE}..={MAX_SIZE}", cfg.size),
        });
    }
    Ok(())
}

/// Refuses to write into a folder whose `Original/` holds anything but a previous run with
/// the same settings (that one is overwritten, file for file, with identical images).
fn check_target(out: &Path, cfg: &SynthConfig) -> Result<(), SynthError> {
    if out.exists() && !out.is_dir() {
        return Err(SynthError::NotEmpty { path: out.to_path_buf(), reason: "it is a file".into() });
    }
    let original = out.join("Original");
    let has_entries = match std::fs::read_dir(&original) {
        Ok(mut entries) => entries.next().is_some(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(source) => return Err(SynthError::Io { path: original, source }),
    };
    if !has_entries {
        return Ok(());
    }
    let manifest_path = out.join(MANIFEST_FILE);
    let text = match std::fs::read(&manifest_path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(SynthError::NotEmpty { path: original, reason: format!("no {MANIFEST_FILE} beside it") })
        }
        Err(source) => return Err(SynthError::Io { path: manifest_path, source }),
    };
    let previous: SynthManifest =
        serde_json::from_slice(&text).map_err(|source| SynthError::Manifest { path: manifest_path.clone(), source })?;
    if previous.config != *cfg {
        let p = &previous.config;
        return Err(SynthError::NotEmpty {
            path: original,
            reason: format!("it was written with --n {} --seed {} --size {}", p.per_class, p.seed, p.size),
        });
    }
    Ok(())
}

/// Writes `bytes` to a hidden temporary name beside `path`, then renames it into place, so a
/// reader never sees half a file.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), SynthError> {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    std::fs::write(&tmp, bytes).map_err(|source| SynthError::Io { path: tmp.clone(), source })?;
    std::fs::rename(&tmp, path).map_err(|source| SynthError::Io { path: path.to_path_buf(), source })
}

/// A grid of `per_class` fields per class (one row per class, in [`CLASSES`] order), each
/// `size` px, drawn exactly as [`generate`] would draw the first `per_class` of the set.
pub fn contact_sheet(cfg: &SynthConfig) -> RgbImage {
    let cols = cfg.per_class.max(1) as u32;
    let gap = 4;
    let (w, h) = (cols * (cfg.size + gap) - gap, CLASSES.len() as u32 * (cfg.size + gap) - gap);
    let mut sheet = RgbImage::from_pixel(w, h, image::Rgb([255, 255, 255]));
    for class in 0..CLASSES.len() {
        for index in 0..cols as usize {
            let field = render_field(class, cfg.size, &mut field_rng(cfg.seed, class, index));
            let (x, y) = (index as u32 * (cfg.size + gap), class as u32 * (cfg.size + gap));
            image::imageops::replace(&mut sheet, &field.image, x as i64, y as i64);
        }
    }
    sheet
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(seed: u64, class: usize, index: usize, size: u32) -> SynthField {
        render_field(class, size, &mut field_rng(seed, class, index))
    }

    #[test]
    fn same_seed_same_pixels_other_seed_other_pixels() {
        let a = field(7, 2, 3, 96);
        let b = field(7, 2, 3, 96);
        let c = field(8, 2, 3, 96);
        let d = field(7, 2, 4, 96);
        assert_eq!(a.image.as_raw(), b.image.as_raw());
        assert_eq!(a.nucleus_mask.as_raw(), b.nucleus_mask.as_raw());
        assert_ne!(a.image.as_raw(), c.image.as_raw());
        assert_ne!(a.image.as_raw(), d.image.as_raw());
    }

    #[test]
    fn generate_is_byte_identical_for_a_seed_and_refuses_foreign_folders() {
        let cfg = SynthConfig { per_class: 2, seed: 3, size: 64 };
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let summary = generate(a.path(), &cfg).unwrap();
        assert_eq!(summary.total(), 8);
        generate(b.path(), &cfg).unwrap();
        let rel = Path::new("Original/Pro").join(field_name(3, 1, 2));
        let bytes_a = std::fs::read(a.path().join(&rel)).unwrap();
        assert_eq!(bytes_a, std::fs::read(b.path().join(&rel)).unwrap());
        let decoded = image::load_from_memory(&bytes_a).unwrap();
        assert_eq!((decoded.width(), decoded.height()), (64, 64));

        // Same settings again: overwritten in place. Other settings: refused, naming the folder.
        generate(a.path(), &cfg).unwrap();
        assert_eq!(bytes_a, std::fs::read(a.path().join(&rel)).unwrap());
        let other = SynthConfig { seed: 4, ..cfg.clone() };
        let err = generate(a.path(), &other).unwrap_err();
        assert!(matches!(err, SynthError::NotEmpty { .. }), "{err}");
        assert!(err.to_string().contains("--seed 3"), "{err}");
        let c = tempfile::tempdir().unwrap();
        generate(c.path(), &other).unwrap();
        assert_ne!(bytes_a, std::fs::read(c.path().join(&rel)).unwrap());

        // A folder of someone else's images.
        let foreign = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(foreign.path().join("Original/Benign")).unwrap();
        let err = generate(foreign.path(), &cfg).unwrap_err();
        assert!(matches!(err, SynthError::NotEmpty { .. }), "{err}");
        assert!(!foreign.path().join(MANIFEST_FILE).exists());

        let bad = SynthConfig { size: 8, ..cfg };
        assert!(matches!(generate(c.path(), &bad), Err(SynthError::BadConfig { .. })));
    }

    /// Ellipse area of the ground-truth box: the drawn cell is an ellipse inscribed in it.
    fn cell_area(f: &SynthField) -> f64 {
        let [x0, y0, x1, y1] = f.leukocyte_bbox;
        std::f64::consts::PI / 4.0 * (x1 - x0) as f64 * (y1 - y0) as f64
    }

    fn nucleus_area(f: &SynthField) -> f64 {
        f.nucleus_mask.pixels().filter(|p| p.0[0] == 255).count() as f64
    }

    /// Nucleus pixels with a background 4-neighbour, per square root of the area: 2*sqrt(pi)
    /// ~ 3.5 for a disc, more for an indented or convoluted outline.
    fn nucleus_irregularity(f: &SynthField) -> f64 {
        let m = &f.nucleus_mask;
        let inside = |x: i64, y: i64| {
            x >= 0
                && y >= 0
                && x < m.width() as i64
                && y < m.height() as i64
                && m.get_pixel(x as u32, y as u32).0[0] == 255
        };
        let mut edge = 0usize;
        for (x, y, p) in m.enumerate_pixels() {
            let (x, y) = (x as i64, y as i64);
            if p.0[0] == 255 && !(inside(x - 1, y) && inside(x + 1, y) && inside(x, y - 1) && inside(x, y + 1)) {
                edge += 1;
            }
        }
        edge as f64 / nucleus_area(f).max(1.0).sqrt()
    }

    #[test]
    fn nucleus_lies_inside_the_cell_and_blasts_have_the_higher_nc_ratio() {
        let mut ratio = [0.0f64; 4];
        let n = 12;
        for (class, ratio) in ratio.iter_mut().enumerate() {
            for index in 0..n {
                let f = field(11, class, index, 128);
                let [x0, y0, x1, y1] = f.leukocyte_bbox;
                assert!(x1 > x0 + 10 && y1 > y0 + 10, "tiny cell box {:?}", f.leukocyte_bbox);
                assert!(nucleus_area(&f) > 50.0, "class {class} field {index}: empty nucleus mask");
                for (x, y, p) in f.nucleus_mask.enumerate_pixels() {
                    if p.0[0] == 255 {
                        assert!(
                            x >= x0 && x < x1 && y >= y0 && y < y1,
                            "nucleus pixel ({x},{y}) outside {:?}",
                            f.leukocyte_bbox
                        );
                    }
                }
                *ratio += nucleus_area(&f) / cell_area(&f) / n as f64;
            }
        }
        println!("mean nucleus:cell area ratio per class {CLASSES:?}: {ratio:.3?}");
        for blast in 1..4 {
            assert!(ratio[blast] > ratio[0] + 0.1, "N:C ratios {ratio:?}");
        }
    }

    /// Normalised 8x4x4 HSV histogram of a whole field.
    fn hsv_histogram(img: &RgbImage) -> Vec<f64> {
        let mut h = vec![0.0; 8 * 4 * 4];
        for p in img.pixels() {
            let [r, g, b] = p.0.map(|v| v as f64 / 255.0);
            let max = r.max(g).max(b);
            let min = r.min(g).min(b);
            let d = max - min;
            let hue = if d == 0.0 {
                0.0
            } else if max == r {
                ((g - b) / d).rem_euclid(6.0)
            } else if max == g {
                (b - r) / d + 2.0
            } else {
                (r - g) / d + 4.0
            } / 6.0;
            let sat = if max == 0.0 { 0.0 } else { d / max };
            let bin = |v: f64, n: usize| ((v * n as f64) as usize).min(n - 1);
            h[bin(hue, 8) * 16 + bin(sat, 4) * 4 + bin(max, 4)] += 1.0;
        }
        let total = (img.width() * img.height()) as f64;
        h.iter_mut().for_each(|v| *v /= total);
        h
    }

    fn nearest(centroids: &[Vec<f64>], x: &[f64]) -> usize {
        let dist = |c: &Vec<f64>| c.iter().zip(x).map(|(a, b)| (a - b) * (a - b)).sum::<f64>();
        (0..centroids.len()).min_by(|&a, &b| dist(&centroids[a]).total_cmp(&dist(&centroids[b]))).unwrap_or(0)
    }

    fn centroid(rows: &[&Vec<f64>]) -> Vec<f64> {
        let mut c = vec![0.0; rows[0].len()];
        for r in rows {
            c.iter_mut().zip(r.iter()).for_each(|(a, b)| *a += b / rows.len() as f64);
        }
        c
    }

    /// (4-class accuracy, Benign-vs-rest balanced accuracy) of a nearest-centroid classifier
    /// on `(class, index, features)` rows, trained on even indices and tested on odd ones.
    fn nearest_centroid_scores(features: &[(usize, usize, Vec<f64>)]) -> (f64, f64) {
        let train: Vec<(usize, &Vec<f64>)> =
            features.iter().filter(|(_, i, _)| i % 2 == 0).map(|(c, _, x)| (*c, x)).collect();
        let test: Vec<(usize, &Vec<f64>)> =
            features.iter().filter(|(_, i, _)| i % 2 == 1).map(|(c, _, x)| (*c, x)).collect();
        let centroids: Vec<Vec<f64>> = (0..4)
            .map(|c| centroid(&train.iter().filter(|(y, _)| *y == c).map(|(_, x)| *x).collect::<Vec<_>>()))
            .collect();
        let correct = test.iter().filter(|(y, x)| nearest(&centroids, x) == *y).count();
        let acc4 = correct as f64 / test.len() as f64;
        let binary = [
            centroid(&train.iter().filter(|(y, _)| *y == 0).map(|(_, x)| *x).collect::<Vec<_>>()),
            centroid(&train.iter().filter(|(y, _)| *y != 0).map(|(_, x)| *x).collect::<Vec<_>>()),
        ];
        let (mut tp, mut pos, mut tn, mut neg) = (0.0, 0.0, 0.0, 0.0);
        for (y, x) in &test {
            let pred_benign = nearest(&binary, x) == 0;
            if *y == 0 {
                pos += 1.0;
                tp += pred_benign as u8 as f64;
            } else {
                neg += 1.0;
                tn += !pred_benign as u8 as f64;
            }
        }
        (acc4, 0.5 * (tp / pos + tn / neg))
    }

    /// Z-scores every feature with the mean and spread of the training half (even indices).
    fn standardise(rows: &mut [(usize, usize, Vec<f64>)]) {
        let dim = rows[0].2.len();
        let train: Vec<&Vec<f64>> = rows.iter().filter(|(_, i, _)| i % 2 == 0).map(|(_, _, x)| x).collect();
        let n = train.len() as f64;
        let mean: Vec<f64> = (0..dim).map(|j| train.iter().map(|x| x[j]).sum::<f64>() / n).collect();
        let sd: Vec<f64> = (0..dim)
            .map(|j| (train.iter().map(|x| (x[j] - mean[j]).powi(2)).sum::<f64>() / n).sqrt().max(1e-6))
            .collect();
        for (_, _, x) in rows.iter_mut() {
            for j in 0..dim {
                x[j] = (x[j] - mean[j]) / sd[j];
            }
        }
    }

    /// The point of the generator: colour alone must not give the class away.
    #[test]
    fn a_colour_histogram_cannot_tell_the_classes_apart() {
        for (size, per_class) in [(96u32, 100usize), (224, 30)] {
            let mut features = Vec::new();
            for index in 0..per_class {
                for class in 0..4 {
                    features.push((class, index, hsv_histogram(&field(2024, class, index, size).image)));
                }
            }
            let (acc4, bal2) = nearest_centroid_scores(&features);
            println!("colour nearest-centroid at {size} px, {per_class}/class: 4-class accuracy {acc4:.3} (chance 0.25), Benign-vs-rest balanced accuracy {bal2:.3} (chance 0.5)");
            assert!(acc4 <= 0.40, "colour separates the classes at {size} px: accuracy {acc4:.3}");
            assert!(bal2 <= 0.62, "colour separates Benign at {size} px: balanced accuracy {bal2:.3}");
            // The raw histogram is dominated by the background bins; z-scoring each bin (with
            // training-half statistics) lets the rare purple bins vote as loudly.
            standardise(&mut features);
            let (acc4, bal2) = nearest_centroid_scores(&features);
            println!("  same, bins z-scored: 4-class accuracy {acc4:.3}, Benign-vs-rest balanced accuracy {bal2:.3}");
            assert!(acc4 <= 0.40, "z-scored colour separates the classes at {size} px: accuracy {acc4:.3}");
            assert!(bal2 <= 0.62, "z-scored colour separates Benign at {size} px: balanced accuracy {bal2:.3}");
        }
    }

    /// The same question asked with the evaluation stage's own colour baseline (HSV
    /// histograms + L2 logistic regression, `eval::shortcut`), which `allscan demo` reports
    /// beside the CNN: it must stay near chance too.
    #[test]
    fn the_evaluation_colour_baseline_stays_near_chance() {
        use crate::eval::ColourShortcut;
        let (size, per_class) = (64u32, 150usize);
        let (mut xtr, mut ytr, mut xte, mut yte) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for index in 0..per_class {
            for class in 0..4 {
                let f = ColourShortcut::features(&field(31, class, index, size).image);
                if index % 2 == 0 {
                    xtr.push(f);
                    ytr.push(class);
                } else {
                    xte.push(f);
                    yte.push(class);
                }
            }
        }
        let argmax = |p: &[f64]| (0..p.len()).max_by(|&a, &b| p[a].total_cmp(&p[b])).unwrap_or(0);
        let model = ColourShortcut::fit(&xtr, &ytr, 4, 0).unwrap();
        let pred: Vec<usize> = xte.iter().map(|x| argmax(&model.predict_proba(x).unwrap())).collect();
        let acc4 = pred.iter().zip(&yte).filter(|(p, y)| p == y).count() as f64 / yte.len() as f64;
        let bin = |ys: &[usize]| ys.iter().map(|&y| usize::from(y != 0)).collect::<Vec<_>>();
        let model2 = ColourShortcut::fit(&xtr, &bin(&ytr), 2, 0).unwrap();
        let pred2: Vec<usize> = xte.iter().map(|x| argmax(&model2.predict_proba(x).unwrap())).collect();
        let yte2 = bin(&yte);
        let recall = |c: usize| {
            let n = yte2.iter().filter(|&&y| y == c).count() as f64;
            pred2.iter().zip(&yte2).filter(|(p, y)| **y == c && **p == c).count() as f64 / n
        };
        let bal2 = 0.5 * (recall(0) + recall(1));
        println!("eval colour baseline (logistic regression) at {size} px, {per_class}/class: 4-class accuracy {acc4:.3}, Benign-vs-rest balanced accuracy {bal2:.3}");
        assert!(acc4 <= 0.40, "colour baseline separates the classes: accuracy {acc4:.3}");
        assert!(bal2 <= 0.62, "colour baseline separates Benign: balanced accuracy {bal2:.3}");
    }

    /// ...while morphology does: the ground-truth N:C ratio alone separates hematogones from
    /// blasts, and the nuclear outline separates Pro-B/Pre-B from the round nuclei.
    #[test]
    fn morphology_separates_the_classes() {
        let mut nc: Vec<(usize, f64)> = Vec::new();
        let mut irregular = [0.0f64; 4];
        let n = 20;
        for index in 0..n {
            for (class, irregular) in irregular.iter_mut().enumerate() {
                let f = field(99, class, index, 160);
                nc.push((class, nucleus_area(&f) / cell_area(&f)));
                *irregular += nucleus_irregularity(&f) / n as f64;
            }
        }
        let threshold = 0.55
            * (nc.iter().filter(|(c, _)| *c == 0).map(|(_, r)| r).fold(0.0f64, |a, &b| a.max(b))
                + nc.iter().filter(|(c, _)| *c != 0).map(|(_, r)| r).fold(1.0f64, |a, &b| a.min(b)));
        let benign_ok = nc.iter().filter(|(c, r)| *c == 0 && *r < threshold).count() as f64 / n as f64;
        let blast_ok = nc.iter().filter(|(c, r)| *c != 0 && *r >= threshold).count() as f64 / (3 * n) as f64;
        let bal = 0.5 * (benign_ok + blast_ok);
        println!("N:C threshold {threshold:.3}: Benign-vs-rest balanced accuracy {bal:.3}");
        println!("mean nuclear outline irregularity {CLASSES:?}: {irregular:.3?}");
        assert!(bal >= 0.9, "N:C ratio should separate Benign from blasts, got {bal:.3}");
        assert!(irregular[3] > irregular[1] * 1.1, "Pro outline not irregular: {irregular:?}");
        assert!(irregular[2] > irregular[1] * 1.03, "Pre outline not indented: {irregular:?}");
    }

    /// Writes a contact sheet to `$ALLSCAN_SYNTH_SHEET` (default /tmp/allscan-synth-sheet.png):
    /// `ALLSCAN_SYNTH_SHEET=/tmp/s.png cargo test -p allscan --lib synth -- --ignored --nocapture`
    #[test]
    #[ignore = "a tool: writes a contact sheet to look at"]
    fn write_contact_sheet() {
        let path = std::env::var("ALLSCAN_SYNTH_SHEET").unwrap_or_else(|_| "/tmp/allscan-synth-sheet.png".into());
        let size = std::env::var("ALLSCAN_SYNTH_SIZE").ok().and_then(|s| s.parse().ok()).unwrap_or(224);
        let start = std::time::Instant::now();
        let sheet = contact_sheet(&SynthConfig { per_class: 6, seed: 0, size });
        println!("24 fields in {:.3}s", start.elapsed().as_secs_f64());
        sheet.save(&path).unwrap();
        println!("wrote {path}");
    }
}
