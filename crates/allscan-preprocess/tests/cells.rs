//! Tests of the scale and white-cell stages ([`estimate_scale`], [`find_white_cells`]) on
//! synthetic smears drawn at known scales: glass, red discs of 7.5 um (+-5%) with pale
//! centres (a few touching), white cells with a dark purple round or lobed nucleus and a pale
//! blue cytoplasm, a platelet. Synthetic on purpose: the expected answer is exact and the
//! tests stay fast; the real-data figures are in `examples/bench_cells.rs`.

use allscan_preprocess::{
    estimate_scale, find_white_cells, red_cell_scale, CellConfig, CellFlag, CellResult, ScaleConfig, ScaleEstimate,
    ScalePool, ScaleSource,
};
use image::{Rgb, RgbImage};

const GLASS: [u8; 3] = [238, 230, 232];
const RBC: [u8; 3] = [214, 160, 170];
const RBC_CENTRE: [u8; 3] = [230, 205, 210];
const NUCLEUS: [u8; 3] = [105, 55, 150];
const CYTOPLASM: [u8; 3] = [185, 190, 225];
const PLATELET: [u8; 3] = [140, 90, 165];

/// A tiny deterministic generator (xorshift), so fields are the same on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % 1_000_000) as f32 / 1_000_000.0
    }
}

fn disc(img: &mut RgbImage, cx: f32, cy: f32, r: f32, c: [u8; 3]) {
    let (w, h) = (img.width() as i64, img.height() as i64);
    for y in ((cy - r).floor() as i64).max(0)..=((cy + r).ceil() as i64).min(h - 1) {
        for x in ((cx - r).floor() as i64).max(0)..=((cx + r).ceil() as i64).min(w - 1) {
            if (x as f32 - cx).powi(2) + (y as f32 - cy).powi(2) <= r * r {
                img.put_pixel(x as u32, y as u32, Rgb(c));
            }
        }
    }
}

/// A drawn white cell: centre and radii in pixels, `lobes` > 1 for a segmented nucleus.
#[derive(Clone, Copy)]
struct Wbc {
    x: f32,
    y: f32,
    nucleus_r: f32,
    cell_r: f32,
    lobes: usize,
}

fn draw_wbc(img: &mut RgbImage, c: Wbc) {
    disc(img, c.x, c.y, c.cell_r, CYTOPLASM);
    if c.lobes <= 1 {
        disc(img, c.x, c.y, c.nucleus_r, NUCLEUS);
    } else {
        // Lobes on a small circle, touching or nearly so (a neutrophil).
        let lobe_r = c.nucleus_r * 0.5;
        for k in 0..c.lobes {
            let a = k as f32 * std::f32::consts::TAU / c.lobes as f32;
            disc(img, c.x + 0.95 * lobe_r * a.cos(), c.y + 0.95 * lobe_r * a.sin(), lobe_r, NUCLEUS);
        }
    }
}

/// A field of `side_um` square at `um_per_px`, with `wbcs` (in micrometres from the top-left)
/// and red cells on a jittered grid around them; returns the image, the drawn white cells
/// in pixels and the platelet centre in pixels.
fn smear(um_per_px: f32, side_um: f32, wbcs: &[(f32, f32, f32, usize)], seed: u64) -> (RgbImage, Vec<Wbc>, (f32, f32)) {
    let px = |um: f32| um / um_per_px;
    let side = px(side_um).round() as u32;
    let mut img = RgbImage::from_pixel(side, side, Rgb(GLASS));
    let mut rng = Rng(seed);
    let cells: Vec<Wbc> = wbcs
        .iter()
        .map(|&(x, y, nucleus_um, lobes)| Wbc {
            x: px(x),
            y: px(y),
            nucleus_r: px(nucleus_um / 2.0),
            cell_r: px(nucleus_um / 2.0 + 2.0),
            lobes,
        })
        .collect();
    let platelet = (px(side_um - 6.0), px(6.0));
    let rbc_r = px(7.5 / 2.0);
    let step = px(10.0);
    let mut placed = 0;
    let mut gy = step / 2.0;
    while gy < side as f32 {
        let mut gx = step / 2.0;
        while gx < side as f32 {
            let (x, y) = (gx + (rng.next() - 0.5) * px(1.0), gy + (rng.next() - 0.5) * px(1.0));
            let r = rbc_r * (0.95 + 0.1 * rng.next());
            let clear = cells.iter().all(|c| ((c.x - x).powi(2) + (c.y - y).powi(2)).sqrt() > c.cell_r + r + px(1.0))
                && ((platelet.0 - x).powi(2) + (platelet.1 - y).powi(2)).sqrt() > r + px(3.0);
            if clear {
                disc(&mut img, x, y, r, RBC);
                disc(&mut img, x, y, r * 0.35, RBC_CENTRE);
                // Every seventh red cell gets a neighbour touching it (a pair, not isolated).
                if placed % 7 == 3 {
                    let nx = x + 1.9 * r;
                    disc(&mut img, nx, y, r, RBC);
                    disc(&mut img, nx, y, r * 0.35, RBC_CENTRE);
                }
                placed += 1;
            }
            gx += step;
        }
        gy += step;
    }
    for &c in &cells {
        draw_wbc(&mut img, c);
    }
    disc(&mut img, platelet.0, platelet.1, px(1.2), PLATELET);
    (img, cells, platelet)
}

fn analyse(img: &RgbImage) -> CellResult {
    let scale = estimate_scale(img, &ScaleConfig::default());
    find_white_cells(img, &CellConfig::default(), &scale)
}

fn overlaps(c: &allscan_preprocess::WhiteCell, w: &Wbc) -> bool {
    let b = c.cell;
    let (x0, x1) = (b.x as f32, (b.x + b.width) as f32);
    let (y0, y1) = (b.y as f32, (b.y + b.height) as f32);
    x0 < w.x + w.cell_r && x1 > w.x - w.cell_r && y0 < w.y + w.cell_r && y1 > w.y - w.cell_r
}

#[test]
fn red_cells_give_the_scale_within_ten_percent() {
    for (um, side) in [(0.1f32, 60.0f32), (0.2, 80.0), (0.37, 83.0)] {
        let (img, _, _) = smear(um, side, &[(side / 2.0, side / 2.0, 9.0, 1)], 7);
        let est = red_cell_scale(&img, &ScaleConfig::default()).unwrap_or_else(|why| panic!("{um}: {why}"));
        assert_eq!(est.source, ScaleSource::RedCells);
        let err = (est.um_per_px - um).abs() / um;
        assert!(err <= 0.10, "at {um} um/px estimated {} ({:.1}% off): {est:?}", est.um_per_px, err * 100.0);
        assert!(est.red_cells >= 5 && est.spread < 0.35, "{est:?}");
        assert_eq!(estimate_scale(&img, &ScaleConfig::default()), est);
    }
}

#[test]
fn every_white_cell_is_found_and_no_red_cell_or_platelet_counts() {
    let layouts: [&[(f32, f32, f32, usize)]; 3] = [
        &[(30.0, 30.0, 10.0, 1)],
        &[(20.0, 22.0, 8.0, 1), (55.0, 55.0, 11.0, 1)],
        &[(18.0, 20.0, 7.0, 1), (60.0, 25.0, 12.0, 1), (35.0, 60.0, 10.0, 3)],
    ];
    for (um, side) in [(0.1f32, 75.0f32), (0.2, 80.0), (0.37, 83.0)] {
        for (i, layout) in layouts.iter().enumerate() {
            let (img, drawn, platelet) = smear(um, side, layout, 11 + i as u64);
            let res = analyse(&img);
            let real: Vec<_> = res.cells.iter().filter(|c| !c.has(CellFlag::Small)).collect();
            assert_eq!(real.len(), drawn.len(), "{um} um/px layout {i}: {:?}", res.cells);
            for w in &drawn {
                assert!(real.iter().any(|c| overlaps(c, w)), "{um} layout {i}: cell at {},{} missed", w.x, w.y);
            }
            // The platelet is dropped or flagged Small, never a white cell.
            for c in &real {
                let (dx, dy) = (c.centroid.0 - platelet.0, c.centroid.1 - platelet.1);
                assert!(dx.hypot(dy) > 2.0 / um, "platelet counted: {c:?}");
            }
            // The largest drawn cell is the dominant one, and labels agree with the list.
            let biggest = drawn.iter().max_by(|a, b| a.cell_r.total_cmp(&b.cell_r)).map(|w| (w.x, w.y));
            if let Some((x, y)) = biggest {
                assert_eq!(res.labels.get_pixel(x as u32, y as u32)[0], 1, "{um} layout {i}");
                assert_eq!(res.mask.get_pixel(x as u32, y as u32)[0], 255);
            }
        }
    }
}

#[test]
fn nucleus_and_cell_areas_match_the_drawing() {
    let (img, drawn, _) = smear(0.2, 80.0, &[(40.0, 40.0, 10.0, 1)], 5);
    let res = analyse(&img);
    let c = &res.cells[0];
    let w = drawn[0];
    let nucleus = std::f32::consts::PI * w.nucleus_r * w.nucleus_r;
    let cell = std::f32::consts::PI * w.cell_r * w.cell_r;
    assert!((c.nucleus_area as f32 / nucleus - 1.0).abs() < 0.15, "{c:?} vs {nucleus}");
    assert!((c.cell_area as f32 / cell - 1.0).abs() < 0.2, "{c:?} vs {cell}");
    assert!((c.centroid.0 - w.x).abs() < 3.0 && (c.centroid.1 - w.y).abs() < 3.0, "{c:?}");
}

#[test]
fn red_cells_packed_against_a_white_cell_are_not_its_cytoplasm() {
    // A lymphocyte-like cell (9 um nucleus, 0.6 um of cytoplasm) with red cells packed all
    // round it and against each other (7 um grid for 7.5 um discs): one foreground blob, so
    // no red cell is apart from the white cell (a CellaVision crop).
    let um = 0.1;
    let px = |v: f32| v / um;
    let side = px(36.0) as u32;
    let mut img = RgbImage::from_pixel(side, side, Rgb(GLASS));
    let w = Wbc { x: px(18.0), y: px(18.0), nucleus_r: px(4.5), cell_r: px(5.1), lobes: 1 };
    let r = px(3.75);
    for gy in 0..6 {
        for gx in 0..6 {
            let (x, y) = (px(0.5 + 7.0 * gx as f32), px(0.5 + 7.0 * gy as f32));
            if ((w.x - x).powi(2) + (w.y - y).powi(2)).sqrt() > w.cell_r + r - px(0.5) {
                disc(&mut img, x, y, r, RBC);
            }
        }
    }
    draw_wbc(&mut img, w);
    let res = find_white_cells(&img, &CellConfig::default(), &ScaleEstimate::given(um));
    let c = res.cells.iter().find(|c| overlaps(c, &w)).expect("the white cell is found");
    let drawn = std::f32::consts::PI * w.cell_r * w.cell_r;
    assert!((c.cell_area as f32 / drawn - 1.0).abs() < 0.3, "cell {} px, drawn {drawn:.0}", c.cell_area);
}

#[test]
fn a_field_without_red_cells_falls_back_to_assumed_with_a_note() {
    let mut img = RgbImage::from_pixel(300, 300, Rgb(GLASS));
    let w = Wbc { x: 150.0, y: 150.0, nucleus_r: 40.0, cell_r: 55.0, lobes: 1 };
    draw_wbc(&mut img, w);
    let est = estimate_scale(&img, &ScaleConfig::default());
    assert_eq!(est.source, ScaleSource::Assumed, "{est:?}");
    assert!(est.note.as_deref().is_some_and(|n| n.contains("red cells")), "{est:?}");
    assert_eq!(est.red_cells, 0);
    // The cell (110 px across) is taken to be 11 um wide.
    assert!((est.um_per_px - 0.1).abs() / 0.1 < 0.15, "{est:?}");
    assert!(red_cell_scale(&img, &ScaleConfig::default()).is_err());
}

#[test]
fn a_given_scale_wins() {
    let (img, _, _) = smear(0.2, 80.0, &[(40.0, 40.0, 10.0, 1)], 3);
    let cfg = ScaleConfig { um_per_px: Some(0.5), ..Default::default() };
    let est = estimate_scale(&img, &cfg);
    assert_eq!(
        est,
        ScaleEstimate {
            um_per_px: 0.5,
            source: ScaleSource::Given,
            red_cells: 0,
            spread: 0.0,
            note: None,
            aspect: Default::default()
        }
    );
}

#[test]
fn a_cell_on_black_is_one_cell_at_an_assumed_scale() {
    let mut img = RgbImage::new(450, 450);
    let w = Wbc { x: 225.0, y: 225.0, nucleus_r: 80.0, cell_r: 100.0, lobes: 1 };
    draw_wbc(&mut img, w);
    let res = analyse(&img);
    assert_eq!(res.scale.source, ScaleSource::Assumed, "{:?}", res.scale);
    assert!(res.scale.note.is_some());
    assert!((res.scale.um_per_px - 11.0 / 200.0).abs() / (11.0 / 200.0) < 0.1, "{:?}", res.scale);
    assert_eq!(res.cells.len(), 1, "{:?}", res.cells);
    assert!(res.cells[0].flags.is_empty(), "{:?}", res.cells[0]);
    assert!(overlaps(&res.cells[0], &w));
}

#[test]
fn a_blank_field_has_no_cell() {
    for img in [RgbImage::from_pixel(300, 200, Rgb(GLASS)), RgbImage::new(300, 200)] {
        let res = analyse(&img);
        assert!(res.cells.is_empty(), "{:?}", res.cells);
        assert!(res.mask.pixels().all(|p| p[0] == 0));
        assert_eq!(res.scale.source, ScaleSource::Assumed);
    }
}

#[test]
fn a_cell_cut_by_the_border_is_kept_and_flagged() {
    let (img, _, _) = smear(0.2, 80.0, &[(3.0, 40.0, 10.0, 1), (50.0, 50.0, 8.0, 1)], 9);
    let res = analyse(&img);
    let edge = res.cells.iter().find(|c| c.cell.x == 0).unwrap_or_else(|| panic!("{:?}", res.cells));
    assert!(edge.has(CellFlag::TouchesBorder), "{edge:?}");
    // The dominant cell is the whole one, although the cut one may be larger.
    assert!(!res.cells[0].has(CellFlag::TouchesBorder), "{:?}", res.cells);
}

#[test]
fn a_lobed_nucleus_is_one_cell() {
    let (img, drawn, _) = smear(0.1, 60.0, &[(30.0, 30.0, 10.0, 4)], 13);
    let res = analyse(&img);
    let real: Vec<_> = res.cells.iter().filter(|c| !c.has(CellFlag::Small)).collect();
    assert_eq!(real.len(), 1, "{:?}", res.cells);
    assert!(overlaps(real[0], &drawn[0]));
}

#[test]
fn tiny_and_empty_images_give_no_cell_and_a_fallback_scale() {
    for (w, h) in [(0u32, 0u32), (1, 1), (3, 40), (16, 16)] {
        let img = RgbImage::from_pixel(w, h, Rgb(NUCLEUS));
        let est = estimate_scale(&img, &ScaleConfig::default());
        assert_eq!(est.source, ScaleSource::Assumed, "{w}x{h}");
        assert!(est.um_per_px.is_finite() && est.um_per_px > 0.0, "{w}x{h}: {est:?}");
        let res = find_white_cells(&img, &CellConfig::default(), &est);
        assert!(res.cells.is_empty(), "{w}x{h}");
        assert_eq!(res.mask.dimensions(), (w, h));
        assert_eq!(res.labels.dimensions(), (w, h));
    }
    // A nonsense scale is no reason to panic either.
    let img = RgbImage::from_pixel(50, 50, Rgb(GLASS));
    let bad = ScaleEstimate {
        um_per_px: f32::NAN,
        source: ScaleSource::Given,
        red_cells: 0,
        spread: 0.0,
        note: None,
        aspect: Default::default(),
    };
    assert!(find_white_cells(&img, &CellConfig::default(), &bad).cells.is_empty());
}

#[test]
fn settings_round_trip_through_json_and_take_defaults() {
    let cfg: CellConfig = serde_json::from_str(r#"{"max_rim_um": 5.0}"#).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(cfg, CellConfig { max_rim_um: 5.0, ..Default::default() });
    let scale: ScaleConfig = serde_json::from_str("{}").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(scale, ScaleConfig::default());
    let json = serde_json::to_string(&ScaleSource::RedCells).unwrap_or_default();
    assert_eq!(json, "\"red-cells\"");
    let flag = serde_json::to_string(&CellFlag::TouchesBorder).unwrap_or_default();
    assert_eq!(flag, "\"touches-border\"");
}

#[test]
fn crops_on_black_from_one_microscope_keep_their_sizes_at_the_pooled_scale() {
    // One microscope (0.05 um/px): eight lymphocyte-sized cells (9 um) and four blast-sized
    // ones (15 um), each cropped on black. Alone each is taken to be 11 um wide; pooled, the
    // set's median cell is, so the blasts stay 15 / 9 times as wide as the lymphocytes.
    let cfg = ScaleConfig::default();
    let truth = 0.05;
    let diameters = [9.0, 9.0, 9.0, 9.0, 9.0, 9.0, 9.0, 9.0, 15.0, 15.0, 15.0, 15.0];
    let mut pool = ScalePool::new();
    let mut own = Vec::new();
    for d in diameters {
        let mut img = RgbImage::new(450, 450);
        let r = d / 2.0 / truth;
        draw_wbc(&mut img, Wbc { x: 225.0, y: 225.0, nucleus_r: 0.8 * r, cell_r: r, lobes: 1 });
        let est = estimate_scale(&img, &cfg);
        assert_eq!(est.source, ScaleSource::Assumed, "{est:?}");
        pool.add(&est);
        own.push(est);
    }
    // Alone each is 11 um: the scale of a 9 um cell is read 11/9 of the truth, of a 15 um one
    // 11/15: the two kinds come out the same size.
    assert!((own[0].um_per_px / truth - 11.0 / 9.0).abs() < 0.1, "{:?}", own[0]);
    assert!((own[11].um_per_px / truth - 11.0 / 15.0).abs() < 0.1, "{:?}", own[11]);
    let pooled = pool.pooled(&cfg).expect("12 assumed estimates pool");
    assert_eq!(pooled.source, ScaleSource::Pooled);
    assert_eq!(pooled.red_cells, 12);
    let resolved: Vec<ScaleEstimate> = own.iter().map(|e| ScalePool::resolve(e, Some(&pooled))).collect();
    assert!(resolved.iter().all(|e| e.um_per_px == pooled.um_per_px && e.source == ScaleSource::Pooled));
    assert!(resolved[0].note.as_deref().is_some_and(|n| n.contains("assumed") && n.contains("own red cells")));
    // The width ratio of the two kinds at the pooled scale is the true one.
    let width = |d: f32| d / truth * pooled.um_per_px;
    assert!((width(15.0) / width(9.0) - 15.0 / 9.0).abs() < 1e-4);
    // The median cell is 9 um, taken to be 11: within 25% of the truth, one scale for all.
    assert!((pooled.um_per_px / truth - 11.0 / 9.0).abs() < 0.1, "{pooled:?}");
}

/// An estimate of `u` um/px from `source`, nothing else measured.
fn est(u: f32, source: ScaleSource) -> ScaleEstimate {
    ScaleEstimate { source, ..ScaleEstimate::given(u) }
}

#[test]
fn a_pool_needs_enough_images_and_prefers_red_cells() {
    let cfg = ScaleConfig::default();
    let mut pool = ScalePool::new();
    for _ in 0..cfg.pool_min_assumed_images - 1 {
        pool.add(&est(0.1, ScaleSource::Assumed));
    }
    assert_eq!(pool.pooled(&cfg), None, "too few assumed estimates");
    pool.add(&est(0.1, ScaleSource::Assumed));
    assert_eq!(pool.pooled(&cfg).map(|p| p.um_per_px), Some(0.1));
    // Given and pooled estimates are not evidence; red cells win once there are enough.
    pool.add(&est(9.0, ScaleSource::Given));
    pool.add(&est(9.0, ScaleSource::Pooled));
    for u in [0.2, 0.3, 0.4] {
        pool.add(&est(u, ScaleSource::RedCells));
    }
    let p = pool.pooled(&cfg).expect("pooled");
    assert!((p.um_per_px - 0.3).abs() < 1e-6, "{p:?}");
    assert!(p.note.as_deref().is_some_and(|n| n.contains("3 red-cell")), "{p:?}");
    // An image with its own red cells keeps them.
    let own = est(0.25, ScaleSource::RedCells);
    assert_eq!(ScalePool::resolve(&own, Some(&p)), own);
    // Off, or with a given scale: no pooling.
    assert_eq!(pool.pooled(&ScaleConfig { pool: false, ..cfg.clone() }), None);
    assert_eq!(pool.pooled(&ScaleConfig { um_per_px: Some(0.1), ..cfg }), None);
}

#[test]
fn regroup_pools_each_key_apart_and_only_resolves_assumed_estimates() {
    let cfg = ScaleConfig { pool_min_assumed_images: 2, ..Default::default() };
    let (a1, a2, b1, b2) = (
        est(0.1, ScaleSource::Assumed),
        est(0.3, ScaleSource::Assumed),
        est(1.0, ScaleSource::Assumed),
        est(0.5, ScaleSource::RedCells),
    );
    let lone = est(9.0, ScaleSource::Assumed);
    let items = [Some(("a", &a1)), Some(("a", &a2)), None, Some(("b", &b1)), Some(("b", &b2)), Some(("c", &lone))];
    let again = ScalePool::regroup(&items, &cfg);
    // "a": two assumed pool at their median 0.2; "b": b2 keeps its red cells, b1 takes the
    // red-cell median only with 3 of them (not here) or two assumed (only one): it keeps its own;
    // "c" alone has no pool.
    let got: Vec<(usize, f32)> = again.iter().map(|(i, s)| (*i, s.um_per_px)).collect();
    assert_eq!(got.len(), 2, "{got:?}");
    assert!(got.iter().all(|&(i, u)| (i == 0 || i == 1) && (u - 0.2).abs() < 1e-6), "{got:?}");
    assert!(again.iter().all(|(_, s)| s.source == ScaleSource::Pooled));
}

/// Glass with eight red cells round a 20 um square at 0.2 um / px (so Otsu's level on the
/// purple channel falls between red cells and a granulocyte's granules); the centre in pixels.
fn granulocyte_field() -> (RgbImage, (f32, f32)) {
    let px = |v: f32| v / 0.2;
    let mut img = RgbImage::from_pixel(px(40.0) as u32, px(40.0) as u32, Rgb(GLASS));
    for (x, y) in
        [(5.0, 5.0), (20.0, 4.5), (35.0, 5.0), (4.5, 20.0), (35.5, 20.0), (5.0, 35.0), (20.0, 35.5), (35.0, 35.0)]
    {
        disc(&mut img, px(x), px(y), px(3.75), RBC);
    }
    (img, (px(20.0), px(20.0)))
}

/// Nucleus and whole-cell area of the cell found over `x` (at the given 0.2 um / px).
fn areas_of_cell_at(img: &RgbImage, x: f32, cfg: &CellConfig) -> (f32, f32) {
    let res = find_white_cells(img, cfg, &ScaleEstimate::given(0.2));
    let c = res.cells.iter().find(|c| c.cell.x < x as u32 && x as u32 <= c.cell.x + c.cell.width).expect("the cell");
    (c.nucleus_area as f32, c.cell_area as f32)
}

#[test]
fn a_granulocytes_purple_granules_are_cytoplasm_not_nucleus() {
    // A 12 um granulocyte whose cytoplasm is speckled with granules as purple as chromatin
    // ((R + B) / 2 - G of 50-80, wbc-seg's over-segmented cells) but far lighter in green
    // than its 6 um nucleus, among red cells (so Otsu's level on the purple channel falls
    // between red cells and granules), on glass at a given 0.2 um / px.
    let px = |v: f32| v / 0.2;
    let (mut img, (cx, cy)) = granulocyte_field();
    let mut rng = Rng(21);
    disc(&mut img, cx, cy, px(6.0), [200, 130, 165]);
    for _ in 0..400 {
        let (a, r) = (rng.next() * std::f32::consts::TAU, px(6.0) * rng.next().sqrt());
        disc(&mut img, cx + r * a.cos(), cy + r * a.sin(), px(0.3), [175, 105, 150]);
    }
    disc(&mut img, cx, cy, px(3.0), [104, 27, 119]);
    let drawn_nucleus = std::f32::consts::PI * px(3.0) * px(3.0);
    let drawn_cell = std::f32::consts::PI * px(6.0) * px(6.0);
    let found = |cfg: &CellConfig| areas_of_cell_at(&img, cx, cfg);
    let (nucleus, cell) = found(&CellConfig::default());
    assert!((nucleus / drawn_nucleus - 1.0).abs() < 0.25, "nucleus {nucleus} px, drawn {drawn_nucleus:.0}");
    assert!((cell / drawn_cell - 1.0).abs() < 0.25, "cell {cell} px, drawn {drawn_cell:.0}");
    // Without the split the granules pass as nucleus: the test can tell.
    let (unsplit, _) = found(&CellConfig { granule_green_gap: 0, ..CellConfig::default() });
    assert!(unsplit > 1.5 * drawn_nucleus, "without the split: nucleus {unsplit} px");
}

#[test]
fn granules_darker_than_a_pale_rim_are_still_cytoplasm() {
    // As above, but the granules are only ~50 green levels lighter than the nucleus and a pale
    // rim takes the two-class split: the three-class test still finds the nucleus.
    let px = |v: f32| v / 0.2;
    let (mut img, (cx, cy)) = granulocyte_field();
    disc(&mut img, cx, cy, px(6.5), [215, 150, 185]);
    disc(&mut img, cx, cy, px(5.5), [165, 78, 135]);
    disc(&mut img, cx, cy, px(3.0), [100, 25, 115]);
    let drawn_nucleus = std::f32::consts::PI * px(3.0) * px(3.0);
    let nucleus = |cfg: &CellConfig| areas_of_cell_at(&img, cx, cfg).0;
    let found = nucleus(&CellConfig::default());
    assert!((found / drawn_nucleus - 1.0).abs() < 0.25, "nucleus {found} px, drawn {drawn_nucleus:.0}");
    let two_class_only = nucleus(&CellConfig { granule_green_gap3: 0, ..CellConfig::default() });
    assert!(two_class_only > 1.5 * drawn_nucleus, "two classes only: nucleus {two_class_only} px");
}

#[test]
fn a_large_cell_alone_on_glass_keeps_its_outer_cytoplasm() {
    // A 20 um monocyte-like cell with a pale lilac cytoplasm and an eccentric 9 um nucleus,
    // alone on glass (a CellaVision crop): no red cell anywhere, so the cytoplasm beyond 8 um
    // of the nucleus is not a red-cell reference to refuse the rest by.
    let px = |v: f32| v / 0.1;
    let mut img = RgbImage::from_pixel(px(30.0) as u32, px(30.0) as u32, Rgb(GLASS));
    let (cx, cy) = (px(15.0), px(15.0));
    disc(&mut img, cx, cy, px(10.0), [205, 185, 215]);
    disc(&mut img, cx - px(3.5), cy, px(4.5), NUCLEUS);
    let drawn_cell = std::f32::consts::PI * px(10.0) * px(10.0);
    let cell_area = |cfg: &CellConfig| {
        let res = find_white_cells(&img, cfg, &ScaleEstimate::given(0.1));
        assert_eq!(res.cells.len(), 1, "{:?}", res.cells);
        res.cells[0].cell_area as f32
    };
    let found = cell_area(&CellConfig::default());
    assert!((found / drawn_cell - 1.0).abs() < 0.15, "cell {found} px, drawn {drawn_cell:.0}");
    // Without the rule its own outer cytoplasm is the red-cell colour and most of it is refused.
    let refused = cell_area(&CellConfig { lone_cell_on_glass: false, ..CellConfig::default() });
    assert!(refused < 0.6 * drawn_cell, "without the rule: cell {refused} px");
}

#[test]
fn a_clump_of_touching_cells_is_not_the_dominant_cell() {
    // Four overlapping white cells (one nucleus blob, ~28 um across: a clump) and one single
    // smaller cell: the single cell is the field's dominant cell, the clump is kept and flagged.
    let wbcs = [
        (30.0, 30.0, 12.0, 1),
        (40.0, 30.0, 12.0, 1),
        (30.0, 40.0, 12.0, 1),
        (40.0, 40.0, 12.0, 1),
        (75.0, 75.0, 9.0, 1),
    ];
    let (img, drawn, _) = smear(0.2, 100.0, &wbcs, 21);
    let res = analyse(&img);
    let clump =
        res.cells.iter().find(|c| c.has(CellFlag::Clump)).unwrap_or_else(|| panic!("no clump: {:?}", res.cells));
    assert!(clump.cell_area > res.cells[0].cell_area, "{:?}", res.cells);
    assert!(res.cells[0].flags.is_empty() && overlaps(&res.cells[0], &drawn[4]), "{:?}", res.cells);
}

#[test]
fn packed_red_cells_give_the_scale_within_ten_percent() {
    // Red cells in touching chains of three, 6.8 um apart, merged into one blob each (no
    // isolated round one, as in Aria's crowded fields), and one lymphocyte: the packed ruler
    // (inscribed discs, calibrated by PACKED_TO_ISOLATED) measures them. Drawn with pale
    // seams instead, the chains' cells pass as isolated and that ruler reads 0.97 of the
    // true diameter while the uncorrected packed one reads 0.89-0.91 (the real-field ratio).
    for um in [0.2f32, 0.37, 0.5] {
        let px = |v: f32| v / um;
        let side = px(100.0).round() as u32;
        let r = px(7.5 / 2.0);
        let mut centres = Vec::new();
        for gy in 0..8 {
            for gx in 0..4 {
                let (x0, y0) =
                    (px(6.0 + 24.0 * gx as f32 + if gy % 2 == 1 { 6.0 } else { 0.0 }), px(6.0 + 12.0 * gy as f32));
                for k in 0..3 {
                    centres.push((x0 + px(6.8) * k as f32, y0));
                }
            }
        }
        let mut img = RgbImage::from_fn(side, side, |x, y| {
            let (fx, fy) = (x as f32, y as f32);
            let mut d: Vec<f32> = centres.iter().map(|c| ((c.0 - fx).powi(2) + (c.1 - fy).powi(2)).sqrt()).collect();
            d.sort_by(f32::total_cmp);
            if d[0] > r {
                Rgb(GLASS)
            } else if d[0] < 0.35 * r {
                Rgb(RBC_CENTRE)
            } else {
                Rgb(RBC)
            }
        });
        draw_wbc(&mut img, Wbc { x: px(90.0), y: px(95.0), nucleus_r: px(4.0), cell_r: px(4.5), lobes: 1 });
        let (isolated, packed) =
            allscan_preprocess::scale::red_cell_rulers_on(&allscan_preprocess::scale::WorkField::new(&img));
        assert!(isolated.len() < 5 && packed.len() >= 5, "{um}: {isolated:?} {packed:?}");
        let est = red_cell_scale(&img, &ScaleConfig::default()).unwrap_or_else(|why| panic!("{um}: {why}"));
        let err = (est.um_per_px - um).abs() / um;
        assert!(err <= 0.10, "at {um} um/px estimated {} ({:.1}% off): {est:?}", est.um_per_px, err * 100.0);
    }
}

/// `img` resampled to `ratio` times its width: pixels `1 / ratio` times as wide as before
/// (0.8: a field squashed from a wider camera frame, as Aria's).
fn squash(img: &RgbImage, ratio: f32) -> RgbImage {
    let w = (img.width() as f32 * ratio).round() as u32;
    image::imageops::resize(img, w, img.height(), image::imageops::FilterType::Triangle)
}

/// Width / height of the non-fill pixels of a crop.
fn crop_extent(img: &RgbImage, fill: u8) -> f32 {
    let (mut x0, mut y0, mut x1, mut y1) = (u32::MAX, u32::MAX, 0, 0);
    for (x, y, p) in img.enumerate_pixels() {
        if p.0[0].abs_diff(fill) > 8 {
            (x0, y0, x1, y1) = (x0.min(x), y0.min(y), x1.max(x), y1.max(y));
        }
    }
    (x1 + 1 - x0) as f32 / (y1 + 1 - y0) as f32
}

#[test]
fn a_squashed_field_is_measured_and_stretched_back_to_square_pixels() {
    use allscan_preprocess::{field_aspect, prepare_cells, AspectSource, PreprocessConfig, SegmentMode};
    let (square, wbcs, _) = smear(0.2, 100.0, &[(50.0, 50.0, 9.0, 1)], 11);
    let own = field_aspect(&square, &ScaleConfig::default());
    assert_eq!((own.ratio, own.source), (1.0, AspectSource::Square), "{own:?}");
    assert!(own.own_cells >= 30 && own.own_log.abs() < 0.03, "{own:?}");

    // Pixels 1.25 times as wide as tall: 0.25 um across, 0.2 um down.
    let squashed = squash(&square, 0.8);
    let a = field_aspect(&squashed, &ScaleConfig::default());
    assert_eq!(a.source, AspectSource::RedCells, "{a:?}");
    assert!((a.ratio - 1.25).abs() / 1.25 <= 0.05, "{a:?}");

    let cfg = PreprocessConfig { mode: SegmentMode::Cell, input_size: 64, ..Default::default() };
    let (views, found) = prepare_cells(&squashed, &cfg);
    let scale = views.scale.clone().unwrap();
    assert!((scale.um_per_px - 0.2).abs() / 0.2 <= 0.10, "the pixel's height: {scale:?}");
    assert_eq!(found.labels.dimensions(), squashed.dimensions(), "masks in the caller's pixels");
    let i =
        found.cells.iter().position(|c| overlaps(c, &Wbc { x: wbcs[0].x * 0.8, ..wbcs[0] })).expect("the white cell");
    let b = found.cells[i].cell;
    assert!((b.width as f32 / b.height as f32 - 0.8).abs() < 0.08, "box in the squashed field: {b:?}");
    let (_, _, rw, rh) = views.field_region(i).unwrap();
    assert!((rw as f32 / rh as f32 - 0.8).abs() < 0.05, "region {rw}x{rh}");
    // The model sees a round cell again; taken as square it would be squashed.
    let round = crop_extent(&views.images[i], cfg.cell.fill);
    assert!((round - 1.0).abs() < 0.08, "crop extent {round}");
    let as_square = PreprocessConfig {
        cell: allscan_preprocess::CellViewConfig {
            scale: ScaleConfig { pixel_aspect: Some(1.0), ..Default::default() },
            ..cfg.cell.clone()
        },
        ..cfg.clone()
    };
    let (flat, _) = prepare_cells(&squashed, &as_square);
    assert!(crop_extent(&flat.images[i], cfg.cell.fill) < 0.88, "without the correction the cell is squashed");

    // A camera-sized field is shrunk along its rows instead; scales stay the file's pixel
    // height (given ones mean the same) and the cell's box is the file's.
    let (big, wbcs, _) = smear(0.1, 230.0, &[(115.0, 115.0, 9.0, 1)], 12);
    let big = squash(&big, 0.8);
    assert!(big.width() as u64 * big.height() as u64 > 4_000_000);
    let given = PreprocessConfig {
        cell: allscan_preprocess::CellViewConfig {
            scale: ScaleConfig { um_per_px: Some(0.1), pixel_aspect: Some(1.25), ..Default::default() },
            ..cfg.cell.clone()
        },
        ..cfg.clone()
    };
    let (views, found) = prepare_cells(&big, &given);
    assert_eq!(views.scale.unwrap().um_per_px, 0.1);
    assert_eq!(found.labels.dimensions(), big.dimensions());
    let i =
        found.cells.iter().position(|c| overlaps(c, &Wbc { x: wbcs[0].x * 0.8, ..wbcs[0] })).expect("the white cell");
    let b = found.cells[i].cell;
    assert!((b.width as f32 / b.height as f32 - 0.8).abs() < 0.08, "{b:?}");
    assert!((crop_extent(&views.images[i], cfg.cell.fill) - 1.0).abs() < 0.08);
    // At the right scale the 13 um cell (with its 0.3 um margins) spans ~13.6 / 24 of the 24 um
    // window; told 0.1 um for the shrunk frame's 0.125 um rows it would span 0.8 of that.
    let im = &views.images[i];
    let cols = (0..im.width())
        .filter(|&x| (0..im.height()).any(|y| im.get_pixel(x, y).0[0].abs_diff(cfg.cell.fill) > 8))
        .count();
    let span = cols as f32 / im.width() as f32;
    assert!((0.54..=0.65).contains(&span), "cell spans {span} of the window");
}

#[test]
fn small_squashed_fields_of_one_camera_pool_their_aspect_and_square_ones_stay() {
    use allscan_preprocess::{prepare_cells, prepare_cells_at, AspectSource, PreprocessConfig, SegmentMode};
    let cfg = PreprocessConfig { mode: SegmentMode::Cell, input_size: 64, ..Default::default() };
    for (ratio, expect) in [(0.8f32, Some(1.25f32)), (1.0, None)] {
        let fields: Vec<RgbImage> =
            (0..6).map(|s| squash(&smear(0.3, 45.0, &[(22.0, 22.0, 9.0, 1)], 20 + s).0, ratio)).collect();
        let scales: Vec<ScaleEstimate> = fields.iter().map(|f| prepare_cells(f, &cfg).0.scale.unwrap()).collect();
        // Too few red cells each to stand alone.
        assert!(
            scales.iter().all(|s| s.aspect.source == AspectSource::Square && s.aspect.own_cells < 30),
            "{scales:?}"
        );
        let items: Vec<Option<((u32, u32), &ScaleEstimate)>> =
            fields.iter().zip(&scales).map(|(f, s)| Some((f.dimensions(), s))).collect();
        let again = ScalePool::regroup(&items, &cfg.cell.scale);
        match expect {
            Some(r) => {
                assert_eq!(again.len(), fields.len(), "every field is cut again");
                for (i, s) in &again {
                    assert_eq!(s.aspect.source, AspectSource::Pooled);
                    assert!((s.aspect.ratio - r).abs() / r <= 0.06, "{s:?}");
                    assert_eq!(s.aspect.own_cells, scales[*i].aspect.own_cells, "its own evidence kept");
                    let redone = prepare_cells_at(&fields[*i], &cfg, Some(s)).0.scale.unwrap();
                    assert!((redone.um_per_px - 0.3).abs() / 0.3 <= 0.10, "{redone:?}");
                    assert_eq!(redone.aspect.ratio, s.aspect.ratio);
                }
            }
            None => assert!(again.is_empty(), "{again:?}"),
        }
    }
}

#[test]
fn a_cell_on_black_is_cut_without_a_black_ring() {
    use allscan_preprocess::{prepare_cells, PreprocessConfig, SegmentMode};
    // A flat grey cell on black: standardised, every pixel of it is the centre grey; a margin
    // reaching onto the black would standardise to the darkest ring of the crop.
    let mut img = RgbImage::new(300, 300);
    disc(&mut img, 150.0, 150.0, 90.0, [150, 140, 160]);
    let cfg = PreprocessConfig { mode: SegmentMode::Cell, input_size: 64, ..Default::default() };
    let (views, found) = prepare_cells(&img, &cfg);
    assert!(found.black_level.is_some() && views.images.len() == 1, "{:?}", found.cells);
    let darkest = views.images[0].pixels().map(|p| p.0[0]).min().unwrap();
    assert!(darkest > 100, "darkest crop pixel {darkest}: the black background came in");
    // On glass the margin stays: the cell's blurred edge is kept.
    assert!(cfg.cell.mask_margin_um > 0.0);
}

#[test]
fn square_pixels_stretch_small_fields_and_shrink_large_ones() {
    use allscan_preprocess::scale::stretched_size;
    // Pixels 1.25 times as wide as tall: a small field gains columns, a camera photo loses rows.
    assert_eq!(stretched_size(224, 224, 1.25), Some((280, 224)));
    assert_eq!(stretched_size(2592, 1944, 1.25), Some((2592, 1555)));
    // Taller than wide: the other axis.
    assert_eq!(stretched_size(100, 100, 0.8), Some((100, 125)));
    assert_eq!(stretched_size(2592, 1944, 0.8), Some((2074, 1944)));
    for ratio in [1.0, 1.0005, 0.0, -1.0, f32::NAN, f32::INFINITY] {
        assert_eq!(stretched_size(224, 224, ratio), None, "{ratio}");
    }
    assert_eq!(stretched_size(0, 224, 1.25), None);
}
