//! Synthetic smears, the cells: a stain drawn independently of the class, red cells with
//! central pallor, platelets, and one leukocyte whose class shows in morphology only.
//! Input: a class index, a scale and an RNG; output: optical densities on an [`OdCanvas`]
//! plus the leukocyte's ground truth (cell box, nucleus mask).
//!
//! What separates the classes (radii in pixels of a 224 px field at unit magnification; each
//! field also gets a class-independent magnification of 0.8-1.25):
//!
//! | class  | nucleus radius | nucleus / cell radius | nucleus                      | chromatin          | nucleoli  |
//! |--------|----------------|-----------------------|------------------------------|--------------------|-----------|
//! | Benign | 19-29          | 0.63-0.74, eccentric  | round, smooth, denser        | condensed, clumped | none      |
//! | Early  | 19-29          | 0.84-0.91             | round, smooth                | fine, even         | 1-2 small |
//! | Pre    | 19-29          | 0.79-0.86             | indented (one cleft)         | fine               | 0-1 faint |
//! | Pro    | 20-30          | 0.82-0.90             | lobulated, clefts, folds     | fine               | 2-4 large |
//!
//! The nucleus size is drawn first from nearly the same range for every class, so the amount
//! of nuclear stain in a field says little about the class; the N:C ratio then sets the cell.
//! The hematogone's chromatin is only slightly denser than a blast's, while the stain
//! intensity varies per field by a factor of two, so darkness is a weak colour cue; the
//! colour-shortcut tests in `mod.rs` measure what is left.

use image::GrayImage;
use rand::Rng;

use super::draw::{smoothstep, Blob, Camera, Harmonic, OdCanvas, ValueNoise};

/// Stain and optics of one field, sampled from one distribution for every class.
#[derive(Debug, Clone)]
pub(crate) struct Stain {
    /// Optical density per unit chromatin density (purple to blue-violet).
    pub nucleus: [f32; 3],
    /// Cytoplasm (pale basophilic blue).
    pub cytoplasm: [f32; 3],
    /// Red cells (lilac-grey to slate).
    pub red_cell: [f32; 3],
    /// Depth of the red cells' central pallor, 0 (none) to 1 (clear centre).
    pub pallor: f32,
    pub camera: Camera,
}

fn mix3(a: [f32; 3], b: [f32; 3], t: f32) -> [f32; 3] {
    [a[0] + (b[0] - a[0]) * t, a[1] + (b[1] - a[1]) * t, a[2] + (b[2] - a[2]) * t]
}

fn scale3(a: [f32; 3], k: f32) -> [f32; 3] {
    [a[0] * k, a[1] * k, a[2] * k]
}

/// Samples a field's stain and camera. Nothing here may depend on the class.
pub(crate) fn sample_stain(rng: &mut impl Rng, scale: f32) -> Stain {
    // Nucleus hue: from blue-violet (absorbs red strongly) to magenta-purple (passes red).
    let hue: f32 = rng.gen_range(0.0..1.0);
    let nucleus = scale3(mix3([0.85, 1.0, 0.22], [0.35, 0.95, 0.32], hue), rng.gen_range(0.65..1.45));
    let cyto_hue: f32 = rng.gen_range(0.0..1.0);
    let cytoplasm = scale3(mix3([0.34, 0.20, 0.05], [0.28, 0.24, 0.10], cyto_hue), rng.gen_range(0.4..1.5));
    let rbc_hue: f32 = rng.gen_range(0.0..1.0);
    let red_cell = scale3(mix3([0.40, 0.31, 0.24], [0.30, 0.30, 0.24], rbc_hue), rng.gen_range(0.5..1.7));

    // Background: white light tinted violet, blue-grey or yellow (all three occur in Aria).
    let tints = [[0.97, 0.93, 1.0], [0.90, 0.94, 0.98], [1.0, 1.0, 0.86], [1.0, 1.0, 1.0]];
    let mut weights: [f32; 4] = [0.0; 4];
    for w in &mut weights {
        *w = rng.gen_range(0.0f32..1.0).powi(3);
    }
    let total: f32 = weights.iter().sum::<f32>().max(1e-3);
    let mut illumination = [0f32; 3];
    for (tint, w) in tints.iter().zip(weights) {
        for ch in 0..3 {
            illumination[ch] += tint[ch] * w / total;
        }
    }
    let camera = Camera {
        illumination,
        saturation: rng.gen_range(0.7..1.3),
        gamma: rng.gen_range(0.8..1.2),
        gain: rng.gen_range(0.9..1.06),
        blur: rng.gen_range(0.0f32..1.4) * scale,
        noise: rng.gen_range(0.004..0.02),
    };
    Stain { nucleus, cytoplasm, red_cell, pallor: rng.gen_range(0.25..0.75), camera }
}

/// Scatters red cells over the field (they may overlap each other and run off the edges).
pub(crate) fn draw_red_cells(canvas: &mut OdCanvas, stain: &Stain, scale: f32, rng: &mut impl Rng) {
    let (w, h) = (canvas.width as f32, canvas.height as f32);
    let mean_r = rng.gen_range(14.0..17.5) * scale;
    // Fraction of the field the red cells would cover without overlaps: thin to crowded.
    let crowding: f32 = rng.gen_range(0.2..1.0);
    let n = (crowding * w * h / (std::f32::consts::PI * mean_r * mean_r)).round() as usize;
    for _ in 0..n {
        let r = mean_r * rng.gen_range(0.88..1.12);
        let cx = rng.gen_range(-r..w + r);
        let cy = rng.gen_range(-r..h + r);
        let blob = Blob::new(cx, cy, r, rng.gen_range(0.82..1.0), rng.gen_range(0.0..std::f32::consts::PI)).wobbly(
            rng,
            2,
            (2, 4),
            0.025,
        );
        let density = rng.gen_range(0.8..1.2);
        let pallor = (stain.pallor * rng.gen_range(0.8..1.2)).min(0.95);
        let pallor_r = rng.gen_range(0.45..0.65);
        let od = scale3(stain.red_cell, density);
        canvas.for_each_in(blob.bbox(), |x, y, px| {
            let (cov, rr) = blob.coverage_and_relative_radius(x, y);
            if cov <= 0.0 {
                return;
            }
            // Biconcave disc: thick rim, thin centre.
            let profile = 1.0 - pallor * (1.0 - smoothstep(pallor_r * 0.35, pallor_r, rr));
            for ch in 0..3 {
                px[ch] += cov * profile * od[ch];
            }
        });
    }
}

/// Places one distractor (a platelet or a small platelet clump) or none, away from `avoid`
/// (`[cx, cy, radius]` of the leukocyte).
pub(crate) fn draw_distractor(canvas: &mut OdCanvas, stain: &Stain, scale: f32, avoid: [f32; 3], rng: &mut impl Rng) {
    if !rng.gen_bool(0.65) {
        return;
    }
    let (w, h) = (canvas.width as f32, canvas.height as f32);
    let mut centre = None;
    for _ in 0..12 {
        let (x, y) = (rng.gen_range(0.0..w), rng.gen_range(0.0..h));
        if (x - avoid[0]).hypot(y - avoid[1]) > avoid[2] + 10.0 * scale {
            centre = Some((x, y));
            break;
        }
    }
    let Some((x, y)) = centre else { return };
    let count = rng.gen_range(1..=3);
    for _ in 0..count {
        let r = rng.gen_range(2.5..5.0) * scale;
        let blob = Blob::new(
            x + rng.gen_range(-6.0..6.0) * scale,
            y + rng.gen_range(-6.0..6.0) * scale,
            r,
            rng.gen_range(0.6..1.0),
            rng.gen_range(0.0..std::f32::consts::PI),
        )
        .wobbly(rng, 3, (2, 5), 0.15);
        let grains = ValueNoise::new(rng, blob.bbox(), 1.2 * scale);
        let od = scale3(stain.nucleus, rng.gen_range(0.5..0.9));
        canvas.for_each_in(blob.bbox(), |x, y, px| {
            let cov = blob.coverage(x, y);
            // Pale hyalomere with a granular purple centre.
            let d =
                cov * (0.45 + 0.55 * (1.0 - blob.relative_radius(x, y)).max(0.0)) * (1.0 + 0.5 * grains.sample(x, y));
            for ch in 0..3 {
                px[ch] += d * od[ch];
            }
        });
    }
}

/// Chromatin pattern of a nucleus.
#[derive(Debug, Clone)]
struct Chromatin {
    /// Mean density (multiplies the stain's nucleus OD).
    density: f32,
    /// Fine granular texture: feature size in pixels and amplitude.
    fine_px: f32,
    fine_amp: f32,
    /// Coarse clumps (condensed chromatin): feature size and amplitude.
    coarse_px: f32,
    coarse_amp: f32,
    /// Extra density along the nuclear edge (condensed chromatin lines the membrane).
    rim: f32,
}

/// A nucleolus: a pale round body with a thin dense rim.
#[derive(Debug, Clone)]
struct Nucleolus {
    blob: Blob,
    depth: f32,
    rim: f32,
}

/// The drawn leukocyte of one class.
#[derive(Debug, Clone)]
pub(crate) struct Leukocyte {
    cell: Blob,
    nucleus: Blob,
    /// Indentations cut from the nucleus (Pre-B cleft, Pro-B convolutions).
    notches: Vec<Blob>,
    /// Thin pale folds across the nucleus (convoluted Pro-B nuclei).
    folds: Vec<Blob>,
    chromatin: Chromatin,
    nucleoli: Vec<Nucleolus>,
    cytoplasm_density: f32,
}

/// Ground truth of the drawn leukocyte.
pub(crate) struct LeukocyteTruth {
    /// `[x0, y0, x1, y1)` of the pixels at least half covered by the cell.
    pub bbox: [u32; 4],
    /// 255 where the nucleus covers at least half the pixel.
    pub nucleus_mask: GrayImage,
}

impl Leukocyte {
    /// Centre and outer radius, for keeping distractors off the cell.
    pub fn footprint(&self) -> [f32; 3] {
        let b = self.cell.bbox();
        [self.cell.cx, self.cell.cy, (b[2] - b[0]) / 2.0]
    }

    /// Samples the morphology of `class` (index into `CLASSES`) centred near `(cx, cy)`.
    pub fn sample(class: usize, cx: f32, cy: f32, scale: f32, rng: &mut impl Rng) -> Self {
        use std::f32::consts::TAU;
        let s = scale;
        // (nucleus radius, nucleus/cell radius ratio, max nucleus offset as a fraction of the
        // free space, nucleus aspect range). The nucleus size comes first and overlaps across
        // classes, so the amount of nuclear stain in a field hardly depends on the class; the
        // N:C ratio then sets the cytoplasm.
        let (r_nuc, nc, offset, aspect_lo) = match class {
            0 => (rng.gen_range(19.0..29.0), rng.gen_range(0.63..0.74), rng.gen_range(0.3..0.9), 0.88),
            1 => (rng.gen_range(19.0..29.0), rng.gen_range(0.84..0.91), rng.gen_range(0.0..0.4), 0.9),
            2 => (rng.gen_range(19.0..29.0), rng.gen_range(0.79..0.86), rng.gen_range(0.2..0.7), 0.82),
            _ => (rng.gen_range(20.0..30.0), rng.gen_range(0.82..0.90), rng.gen_range(0.0..0.4), 0.8),
        };
        let r_nuc = r_nuc * s;
        let r_cell = r_nuc / nc;
        let cell = Blob::new(cx, cy, r_cell, rng.gen_range(0.9..1.0), rng.gen_range(0.0..TAU)).wobbly(
            rng,
            2,
            (2, 5),
            if class == 3 { 0.035 } else { 0.02 },
        );
        let free = (r_cell * cell.aspect - r_nuc).max(0.0);
        let angle = rng.gen_range(0.0..TAU);
        let (ncx, ncy) = (cx + angle.cos() * free * offset, cy + angle.sin() * free * offset);
        let mut nucleus = Blob::new(ncx, ncy, r_nuc, rng.gen_range(aspect_lo..1.0), rng.gen_range(0.0..TAU));
        let mut notches = Vec::new();
        let mut folds = Vec::new();
        match class {
            0 | 1 => nucleus = nucleus.wobbly(rng, 2, (2, 3), 0.02),
            2 => {
                nucleus = nucleus.wobbly(rng, 2, (2, 3), 0.025);
                // One cleft: a disc bitten out of the rim, kidney-shaped nucleus.
                let a = rng.gen_range(0.0..TAU);
                let rn = r_nuc * rng.gen_range(0.3..0.42);
                let d = r_nuc * rng.gen_range(0.98..1.1);
                notches.push(Blob::new(ncx + a.cos() * d, ncy + a.sin() * d, rn, rng.gen_range(0.6..1.0), a));
            }
            _ => {
                // Convoluted: strong low-order lobulation plus one or two small clefts.
                let harmonics = (0..3)
                    .map(|i| {
                        Harmonic::new(3 + i + rng.gen_range(0..2), rng.gen_range(0.05..0.09), rng.gen_range(0.0..TAU))
                    })
                    .collect();
                nucleus = nucleus.with_harmonics(harmonics);
                for _ in 0..rng.gen_range(1..=2) {
                    let a = rng.gen_range(0.0..TAU);
                    let rn = r_nuc * rng.gen_range(0.15..0.25);
                    let d = r_nuc * rng.gen_range(0.95..1.05);
                    notches.push(Blob::new(ncx + a.cos() * d, ncy + a.sin() * d, rn, 0.7, a));
                }
                for _ in 0..rng.gen_range(1..=2) {
                    // A fold: a long thin ellipse running from the rim inwards.
                    let a = rng.gen_range(0.0..TAU);
                    let d = r_nuc * rng.gen_range(0.3..0.6);
                    folds.push(Blob::new(
                        ncx + a.cos() * d,
                        ncy + a.sin() * d,
                        r_nuc * rng.gen_range(0.35..0.55),
                        rng.gen_range(0.06..0.1),
                        a + rng.gen_range(-0.5..0.5),
                    ));
                }
            }
        }
        let chromatin = match class {
            0 => Chromatin {
                density: rng.gen_range(1.0..1.3),
                fine_px: 1.6 * s,
                fine_amp: 0.06,
                coarse_px: rng.gen_range(3.5..5.0) * s,
                coarse_amp: rng.gen_range(0.18..0.28),
                rim: 0.25,
            },
            1 => Chromatin {
                density: rng.gen_range(0.95..1.2),
                fine_px: 1.3 * s,
                fine_amp: rng.gen_range(0.22..0.32),
                coarse_px: 6.0 * s,
                coarse_amp: 0.05,
                rim: 0.05,
            },
            2 => Chromatin {
                density: rng.gen_range(1.0..1.25),
                fine_px: 1.8 * s,
                fine_amp: rng.gen_range(0.2..0.28),
                coarse_px: 6.0 * s,
                coarse_amp: 0.08,
                rim: 0.08,
            },
            _ => Chromatin {
                density: rng.gen_range(0.95..1.2),
                fine_px: 1.4 * s,
                fine_amp: rng.gen_range(0.22..0.32),
                coarse_px: 6.0 * s,
                coarse_amp: 0.06,
                rim: 0.05,
            },
        };
        // (count, radius range, pale depth, dense rim)
        let (count, r_lo, r_hi, depth, rim) = match class {
            0 => (0, 0.0, 0.0, 0.0, 0.0),
            1 => (rng.gen_range(1..=2), 2.4, 3.6, 0.4, 0.2),
            2 => (rng.gen_range(0..=1), 2.0, 3.0, 0.25, 0.12),
            _ => (rng.gen_range(2..=4), 3.4, 5.2, 0.5, 0.3),
        };
        let mut nucleoli = Vec::new();
        for _ in 0..count {
            let r = rng.gen_range(r_lo..r_hi) * s;
            for _ in 0..10 {
                let a = rng.gen_range(0.0..TAU);
                let d = r_nuc * rng.gen_range(0.0..0.6);
                let blob = Blob::new(ncx + a.cos() * d, ncy + a.sin() * d, r, rng.gen_range(0.75..1.0), a).wobbly(
                    rng,
                    1,
                    (2, 3),
                    0.08,
                );
                let inside = nucleus.signed_distance(blob.cx, blob.cy) > r + 1.5 * s
                    && notches.iter().all(|n| n.signed_distance(blob.cx, blob.cy) < -(r + 1.5 * s));
                if inside {
                    nucleoli.push(Nucleolus { blob, depth: depth * rng.gen_range(0.85..1.15), rim });
                    break;
                }
            }
        }
        Leukocyte { cell, nucleus, notches, folds, chromatin, nucleoli, cytoplasm_density: rng.gen_range(0.8..1.25) }
    }

    /// Nucleus coverage at a pixel: the lobulated outline, minus the clefts, inside the cell.
    fn nucleus_coverage(&self, x: f32, y: f32, cell_cov: f32) -> f32 {
        let mut cov = self.nucleus.coverage(x, y).min(cell_cov);
        for n in &self.notches {
            cov *= 1.0 - n.coverage(x, y);
        }
        cov
    }

    /// Draws the cell over whatever lies beneath (red cells show through only faintly) and
    /// returns its ground truth.
    pub fn draw(&self, canvas: &mut OdCanvas, stain: &Stain, rng: &mut impl Rng) -> LeukocyteTruth {
        let s = self.cell.radius / 30.0;
        let nbox = self.nucleus.bbox();
        let fine = ValueNoise::new(rng, nbox, self.chromatin.fine_px);
        let coarse = ValueNoise::new(rng, nbox, self.chromatin.coarse_px);
        let cyto_noise = ValueNoise::new(rng, self.cell.bbox(), 3.0 * s);
        let nuc_od = scale3(stain.nucleus, self.chromatin.density);
        let cyto_od = scale3(stain.cytoplasm, self.cytoplasm_density);
        let rim_px = 2.5 * s.max(0.4);
        let (w, h) = (canvas.width, canvas.height);
        let mut mask = GrayImage::new(w, h);
        let mut bbox = [u32::MAX, u32::MAX, 0, 0];
        canvas.for_each_in(self.cell.bbox(), |x, y, px| {
            let cell_cov = self.cell.coverage(x, y);
            if cell_cov <= 0.0 {
                return;
            }
            let (xi, yi) = (x as u32, y as u32);
            if cell_cov >= 0.5 {
                bbox = [bbox[0].min(xi), bbox[1].min(yi), bbox[2].max(xi + 1), bbox[3].max(yi + 1)];
            }
            let nuc_cov = self.nucleus_coverage(x, y, cell_cov);
            if nuc_cov >= 0.5 {
                mask.put_pixel(xi, yi, image::Luma([255]));
            }
            // Cytoplasm: a little denser towards the membrane (basophilic rim), mottled.
            let rr = self.cell.relative_radius(x, y);
            let cyto = cell_cov * (0.85 + 0.3 * smoothstep(0.6, 1.0, rr)) * (1.0 + 0.12 * cyto_noise.sample(x, y));
            let mut nuc = 0.0;
            if nuc_cov > 0.0 {
                let c = &self.chromatin;
                let mut d = 1.0 + c.fine_amp * fine.sample(x, y) + c.coarse_amp * coarse.sample(x, y);
                let edge = self.nucleus.signed_distance(x, y);
                d += c.rim * (1.0 - smoothstep(0.0, rim_px, edge));
                for f in &self.folds {
                    d -= 0.35 * f.coverage(x, y);
                }
                for n in &self.nucleoli {
                    let nd = n.blob.signed_distance(x, y);
                    // Soft-edged: a nucleolus is seen through chromatin, not punched out.
                    let inside = smoothstep(-0.5, 1.5 * s.max(0.5), nd);
                    let ring = 1.0 - smoothstep(0.0, 1.5 * s.max(0.5), nd.abs());
                    d = d * (1.0 - n.depth * inside) + n.rim * ring;
                }
                nuc = nuc_cov * d.max(0.05);
            }
            // Red cells beneath are mostly hidden by the leukocyte.
            let hide = 1.0 - 0.85 * cell_cov;
            for ch in 0..3 {
                px[ch] = px[ch] * hide + cyto * cyto_od[ch] * (1.0 - 0.5 * nuc_cov) + nuc * nuc_od[ch];
            }
        });
        if bbox[0] == u32::MAX {
            bbox = [0, 0, 0, 0];
        }
        LeukocyteTruth { bbox, nucleus_mask: mask }
    }
}
