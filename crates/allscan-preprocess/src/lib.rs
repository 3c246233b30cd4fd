//! Stage 2 of the pipeline: a raw smear field (any image file) -> decoded RGB, HSV masks,
//! nucleus masks, ROI crops and normalised tensors as plain `Vec<f32>`.
//!
//! No Burn here: this crate builds in seconds and is testable alone. Modules in data-flow
//! order: [`decode`] -> [`hsv`] (the authors' recipe) / [`nucleus`] (the robust finder) ->
//! [`crop`] -> [`stain`] -> [`normalize`]; [`config`] holds the one settings tree.

pub mod cell;
pub mod cellcrop;
pub mod config;
pub mod crop;
pub mod decode;
pub mod hsv;
pub mod normalize;
pub mod nucleus;
pub mod scale;
pub mod sheet;
pub mod stain;
pub mod workfield;

pub use cell::{find_white_cells, CellConfig, CellFlag, CellResult, WhiteCell};
pub use cellcrop::{cell_crops, cut_cell, CellCrop};
pub use config::{
    CellColour, CellViewConfig, InputChannels, NucleusConfig, PreprocessConfig, RoiConfig, RoiViews, SegmentMode,
};
pub use crop::{largest_nucleus_crop, resize_field, roi_crops, CropRegion, RoiCrop};
pub use decode::{decode_bytes, decode_file, DecodeError, DecodeLimits};
pub use hsv::{apply_mask, aria_hsv_mask, aria_hsv_segment, hs0_image, opencv_rgb2hsv};
pub use normalize::{to_chw_normalized, Normalization};
pub use nucleus::{find_nuclei, nuclei_from_mask, BBox, Nucleus, NucleusResult};
pub use scale::{
    estimate_scale, field_aspect, red_cell_scale, stretch_to_square, AspectSource, PixelAspect, ScaleConfig,
    ScaleEstimate, ScalePool, ScaleSource, RED_CELL_DIAMETER_UM,
};
pub use sheet::contact_sheet;
pub use stain::{macenko_normalize, reinhard_normalize, MacenkoTarget, StainNormalization, StainStats};

use image::RgbImage;

use workfield::WorkField;

/// Why a field could not be turned into model input.
#[derive(Debug, thiserror::Error)]
pub enum PreprocessError {
    /// The file could not be decoded (the error names the file).
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// `nucleus` mode found no nucleus and `roi.fallback_to_field` is off.
    #[error("no nucleus found in a {width}x{height} field")]
    NoNucleus { width: u32, height: u32 },
    /// A setting that cannot work (e.g. an input size of 0).
    #[error("invalid preprocessing setting: {0}")]
    InvalidConfig(String),
}

/// The model input view(s) of a decoded field, before normalisation:
/// - `aria-hsv`: the authors' segmented field (mask applied), resized to `input_size`;
/// - `nucleus`: the crop around the largest nucleus (or one per nucleus with `roi.views =
///   all`), at `input_size`; with no nucleus, the whole field resized (or an error when
///   `roi.fallback_to_field` is off).
///
/// Stain normalisation, when set, is applied to the field before cropping, after
/// segmentation: the mask is computed on the raw colours the recipe was designed for.
pub fn prepare_input(img: &RgbImage, cfg: &PreprocessConfig) -> Result<Vec<RgbImage>, PreprocessError> {
    Ok(prepare_views(img, cfg)?.images)
}

/// The model's views of a field (see [`prepare_input`]) with where each came from, for
/// per-cell outputs and overlays. Inference and training both go through here.
#[derive(Debug, Clone)]
pub struct PreparedViews {
    /// Model inputs, `input_size` x `input_size` each.
    pub images: Vec<RgbImage>,
    /// The square each view was cut from; `None` for a whole-field view.
    pub regions: Vec<Option<CropRegion>>,
    /// Index of each view's nucleus in `nuclei` (`None` for a whole-field view).
    pub nucleus_of_view: Vec<Option<usize>>,
    /// Every nucleus found, largest first (empty outside `nucleus` and `cell` modes).
    pub nuclei: Vec<BBox>,
    /// `cell` mode: every white cell found, dominant first (views follow this order).
    pub cells: Vec<WhiteCell>,
    /// `cell` mode: the field's scale and where it came from.
    pub scale: Option<ScaleEstimate>,
    /// Field pixels per view-frame pixel along x and y: `regions` are in the frame the views
    /// were cut from, the field stretched to square pixels in `cell` mode (1, 1 otherwise).
    pub frame: (f32, f32),
}

impl PreparedViews {
    fn whole(image: RgbImage, nuclei: Vec<BBox>) -> Self {
        PreparedViews {
            images: vec![image],
            regions: vec![None],
            nucleus_of_view: vec![None],
            nuclei,
            cells: Vec::new(),
            scale: None,
            frame: (1.0, 1.0),
        }
    }

    /// View `i`'s region in field pixels, `(x, y, width, height)`; `None` for a whole-field view.
    pub fn field_region(&self, i: usize) -> Option<(i64, i64, u32, u32)> {
        let r = (*self.regions.get(i)?)?;
        let (fx, fy) = self.frame;
        let x = (r.x as f32 * fx).round() as i64;
        let y = (r.y as f32 * fy).round() as i64;
        let w = ((r.side as f32 * fx).round() as u32).max(1);
        let h = ((r.side as f32 * fy).round() as u32).max(1);
        Some((x, y, w, h))
    }
}

/// `cell` mode on a decoded field: scale, white cells, one crop per cell. A field with no white
/// cell gives no view (a result, not an error: "no white cell found").
pub fn prepare_cells(img: &RgbImage, cfg: &PreprocessConfig) -> (PreparedViews, CellResult) {
    prepare_cells_at(img, cfg, None)
}

/// A field's white cells in its square-pixel frame ([`find_cells_square`]): what
/// [`prepare_cells_at`] crops from and maps back, and what a measurement in micrometres
/// (shapes, areas) should read.
pub struct SquareCells<'a> {
    /// The field at square pixels (the file itself where its pixels are square).
    pub field: std::borrow::Cow<'a, RgbImage>,
    /// The cells found on `field`; `scale.um_per_px` is per pixel of `field`.
    pub found: CellResult,
    /// File rows per row of `field` (1 unless a large field was shrunk along its rows).
    pub rows: f32,
}

/// The first half of [`prepare_cells_at`]: the pixel aspect (a hint's where it was measured,
/// else the field's own), the field stretched to square pixels, the scale and the white cells
/// found there.
pub fn find_cells_square<'a>(
    img: &'a RgbImage,
    cfg: &PreprocessConfig,
    scale: Option<&ScaleEstimate>,
) -> SquareCells<'a> {
    let (work, field, scale, rows) = square_frame(img, cfg, scale);
    let found = cell::find_white_cells_on(&work, &field, &cfg.cell.finder, &scale);
    SquareCells { field: work, found, rows }
}

/// The scale [`find_cells_square`] would find the cells at (its aspect included), without
/// finding them: what a set's first pass needs for [`ScalePool`].
pub fn square_scale(img: &RgbImage, cfg: &PreprocessConfig) -> ScaleEstimate {
    square_frame(img, cfg, None).2
}

/// The field at square pixels, its reduced field, the scale there and the file rows per row.
fn square_frame<'a>(
    img: &'a RgbImage,
    cfg: &PreprocessConfig,
    scale: Option<&ScaleEstimate>,
) -> (std::borrow::Cow<'a, RgbImage>, WorkField, ScaleEstimate, f32) {
    let sc = &cfg.cell.scale;
    // The reduced field is built once where the pixels are square (the common case).
    let own_field = WorkField::new(img);
    let hinted = scale.filter(|s| s.aspect.own_cells > 0 || s.aspect.source != scale::AspectSource::Square);
    // One measurement of the red cells gives the aspect and, where it is square, the scale.
    let (own, aspect) = match hinted {
        Some(s) => (None, s.aspect),
        None => {
            let (est, aspect) = scale::scale_and_aspect_on(img, &own_field, sc);
            (Some(est), aspect)
        }
    };
    let work = scale::stretch_to_square(img, aspect.ratio);
    let (field, own) = match &work {
        std::borrow::Cow::Borrowed(_) => (own_field, own),
        std::borrow::Cow::Owned(stretched) => (WorkField::new(stretched), None),
    };
    // Scales are the file's pixel height; the square frame's rows may be fewer (a large field
    // is shrunk along its longer pixel side), each `rows` file rows high.
    let rows = img.height() as f32 / work.height().max(1) as f32;
    // A given or pooled scale stands; an own estimate is measured again (at this aspect).
    let mut scale = match scale {
        Some(s) if matches!(s.source, ScaleSource::Given | ScaleSource::Pooled) => s.clone(),
        _ => own.unwrap_or_else(|| scale::estimate_scale_on(&work, &field, sc)),
    };
    if scale.source != ScaleSource::RedCells && scale.source != ScaleSource::Assumed {
        scale.um_per_px *= rows;
    }
    scale.aspect = aspect;
    (work, field, scale, rows)
}

/// [`prepare_cells`] at a scale already known (e.g. a set's pooled one, [`ScalePool`]);
/// `None`: the field's own estimate.
pub fn prepare_cells_at(
    img: &RgbImage,
    cfg: &PreprocessConfig,
    scale: Option<&ScaleEstimate>,
) -> (PreparedViews, CellResult) {
    // Square pixels first (scale::PixelAspect), then scale and cells there.
    let SquareCells { field: work, found, rows } = find_cells_square(img, cfg, scale);
    let field = match &cfg.stain {
        Some(s) => s.apply(&work),
        None => work.clone().into_owned(),
    };
    let crops = cell_crops(&field, &found, &cfg.cell, cfg.input_size);
    let frame = (img.width() as f32 / work.width().max(1) as f32, img.height() as f32 / work.height().max(1) as f32);
    // Back to the caller's pixels: every box, mask and region is the field's own.
    let mut found = found.in_frame(img.width(), img.height());
    found.scale.um_per_px /= rows;
    let views = PreparedViews {
        regions: crops.iter().map(|c| Some(c.region)).collect(),
        nucleus_of_view: crops.iter().map(|c| Some(c.cell_index)).collect(),
        images: crops.into_iter().map(|c| c.image).collect(),
        nuclei: found.cells.iter().map(|c| c.nucleus).collect(),
        cells: found.cells.clone(),
        scale: Some(found.scale.clone()),
        frame,
    };
    (views, found)
}

/// [`prepare_input`], keeping each view's region and nucleus.
pub fn prepare_views(img: &RgbImage, cfg: &PreprocessConfig) -> Result<PreparedViews, PreprocessError> {
    prepare_views_at(img, cfg, None)
}

/// [`prepare_views`] at a known scale in `cell` mode (ignored by the other modes).
pub fn prepare_views_at(
    img: &RgbImage,
    cfg: &PreprocessConfig,
    scale: Option<&ScaleEstimate>,
) -> Result<PreparedViews, PreprocessError> {
    cfg.validate().map_err(PreprocessError::InvalidConfig)?;
    let size = cfg.input_size;
    // The model's channels (RGB, or the seed script's H, S, 0) are computed on the field,
    // before it is resized or cropped, as that script did.
    let channels = cfg.channels;
    let stained = |field: &RgbImage| match &cfg.stain {
        Some(s) => s.apply(field),
        None => field.clone(),
    };
    match cfg.mode {
        SegmentMode::AriaHsv => {
            // Without stain normalisation, mask and segmented field come from one pass.
            let segmented = match &cfg.stain {
                None => aria_hsv_segment(img).1,
                Some(_) => apply_mask(&stained(img), &aria_hsv_mask(img)),
            };
            Ok(PreparedViews::whole(resize_field(&channels.apply(segmented), size), Vec::new()))
        }
        SegmentMode::Field => Ok(PreparedViews::whole(resize_field(&channels.apply(stained(img)), size), Vec::new())),
        SegmentMode::Cell => Ok(prepare_cells_at(img, cfg, scale).0),
        SegmentMode::Nucleus => {
            let found = find_nuclei(img, &cfg.nucleus);
            let field = channels.apply(stained(img));
            // The glass-white padding of crops past the border, in the same channels.
            let roi = RoiConfig { output_size: size, pad_rgb: channels.pixel(cfg.roi.pad_rgb), ..cfg.roi.clone() };
            let crops: Vec<RoiCrop> = match roi.views {
                RoiViews::Largest => largest_nucleus_crop(&field, &found, &roi).into_iter().collect(),
                RoiViews::All => roi_crops(&field, &found, &roi),
            };
            let nuclei: Vec<BBox> = found.nuclei.iter().map(|n| n.bbox).collect();
            if !crops.is_empty() {
                Ok(PreparedViews {
                    regions: crops.iter().map(|c| Some(c.region)).collect(),
                    nucleus_of_view: crops.iter().map(|c| Some(c.nucleus_index)).collect(),
                    images: crops.into_iter().map(|c| c.image).collect(),
                    nuclei,
                    cells: Vec::new(),
                    scale: None,
                    frame: (1.0, 1.0),
                })
            } else if roi.fallback_to_field {
                Ok(PreparedViews::whole(resize_field(&field, size), nuclei))
            } else {
                Err(PreprocessError::NoNucleus { width: img.width(), height: img.height() })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_mode_is_the_whole_field_resized() {
        let img = RgbImage::from_fn(100, 60, |x, y| image::Rgb([x as u8, y as u8, 200]));
        let cfg = PreprocessConfig { mode: SegmentMode::Field, input_size: 32, ..Default::default() };
        let views = prepare_input(&img, &cfg).unwrap();
        assert_eq!(views.len(), 1);
        assert_eq!(views[0], resize_field(&img, 32));
        assert_eq!(views[0].dimensions(), (32, 32));
    }

    #[test]
    fn hs0_channels_are_computed_before_the_resize() {
        // Left half red, right half blue: resizing RGB first would blend a purple column
        // (hue ~150); the seed script converts first and blends hues 0 and 120.
        let img = RgbImage::from_fn(8, 4, |x, _| image::Rgb(if x < 4 { [255, 0, 0] } else { [0, 0, 255] }));
        let cfg = PreprocessConfig {
            mode: SegmentMode::Field,
            input_size: 4,
            channels: InputChannels::Hs0,
            ..Default::default()
        };
        let views = prepare_input(&img, &cfg).unwrap();
        assert_eq!(views[0], resize_field(&hs0_image(&img), 4));
        assert_ne!(views[0], hs0_image(&resize_field(&img, 4)));
        assert!(views[0].pixels().all(|p| p[2] == 0 && p[1] == 255), "S stays 255, the third channel 0");
        // Nucleus mode pads past the border with glass white in the same channels (H 0, S 0).
        assert_eq!(InputChannels::Hs0.pixel([255, 255, 255]), [0, 0, 0]);
        // Cell crops are grey by default: H and S of grey are zeros, so hs0 is refused there.
        let cell = PreprocessConfig { mode: SegmentMode::Cell, channels: InputChannels::Hs0, ..Default::default() };
        assert!(matches!(prepare_views(&img, &cell), Err(PreprocessError::InvalidConfig(_))));
    }

    #[test]
    fn config_round_trips_through_json() {
        let cfg = PreprocessConfig {
            mode: SegmentMode::AriaHsv,
            stain: Some(StainNormalization::Reinhard {
                target: StainStats { mean: [1.0, 2.0, 3.0], std: [0.1, 0.2, 0.3] },
            }),
            ..Default::default()
        };
        let json = serde_json::to_string(&cfg).unwrap();
        assert!(json.contains("\"aria-hsv\""), "{json}");
        let back: PreprocessConfig = serde_json::from_str(&json).unwrap();
        assert_eq!(back, cfg);
        // Missing fields take their defaults, so older bundles still load.
        let partial: PreprocessConfig = serde_json::from_str(r#"{"mode":"nucleus"}"#).unwrap();
        assert_eq!(partial, PreprocessConfig::default());
    }

    #[test]
    fn prepare_input_sizes_and_fallback() {
        let field = RgbImage::from_pixel(100, 80, image::Rgb([235, 230, 240]));
        let cfg = PreprocessConfig::default();
        let views = prepare_input(&field, &cfg).unwrap();
        assert_eq!(views.len(), 1);
        assert_eq!(views[0].dimensions(), (224, 224));
        let strict = PreprocessConfig {
            roi: RoiConfig { fallback_to_field: false, ..Default::default() },
            ..Default::default()
        };
        assert!(matches!(prepare_input(&field, &strict), Err(PreprocessError::NoNucleus { .. })));
        let hsv = PreprocessConfig { mode: SegmentMode::AriaHsv, input_size: 64, ..Default::default() };
        assert_eq!(prepare_input(&field, &hsv).unwrap()[0].dimensions(), (64, 64));
    }
}
