//! Preprocessing settings: one serialisable tree (`PreprocessConfig`) that goes into the model
//! bundle, so inference repeats training's preprocessing exactly.

use image::RgbImage;
use serde::{Deserialize, Serialize};

use crate::cell::CellConfig;
use crate::decode::DecodeLimits;
use crate::normalize::Normalization;
use crate::scale::ScaleConfig;
use crate::stain::StainNormalization;

/// How a field is segmented before the model sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SegmentMode {
    /// The Aria authors' OpenCV HSV recipe, bit for bit: the field with non-pink pixels
    /// blacked out, resized whole. Reproduces the seed; fails on bluish stains.
    AriaHsv,
    /// The stain-robust nucleus finder ([`crate::find_nuclei`]); the model sees square crops
    /// around nuclei. The default.
    #[default]
    Nucleus,
    /// No segmentation: the whole field, resized. For small from-scratch models that see
    /// the cell in its context (the `cpu` training profile).
    Field,
    /// Every white cell ([`crate::find_white_cells`]), each cut at one physical window
    /// ([`CellViewConfig::window_um`]) at the field's estimated scale, with everything outside
    /// the cell replaced by a flat fill: the model judges a cell, not a lab's field.
    Cell,
}

impl std::fmt::Display for SegmentMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SegmentMode::AriaHsv => "aria-hsv",
            SegmentMode::Nucleus => "nucleus",
            SegmentMode::Field => "field",
            SegmentMode::Cell => "cell",
        })
    }
}

impl std::str::FromStr for SegmentMode {
    type Err = String;
    /// The spellings [`Display`](std::fmt::Display) writes.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "aria-hsv" => Ok(SegmentMode::AriaHsv),
            "nucleus" => Ok(SegmentMode::Nucleus),
            "field" => Ok(SegmentMode::Field),
            "cell" => Ok(SegmentMode::Cell),
            other => Err(format!("unknown view `{other}` (cell, field, nucleus or aria-hsv)")),
        }
    }
}

/// Which crops [`crate::prepare_input`] returns in `nucleus` mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RoiViews {
    /// One crop around the largest nucleus: the seed's single-ROI mode.
    #[default]
    Largest,
    /// One crop per nucleus, largest first (up to `RoiConfig::max_crops`).
    All,
}

/// Square crops around nuclei.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RoiConfig {
    /// Context added on each side of the nucleus box, as a fraction of the box's longer side
    /// (0.5 doubles the side): the cytoplasm rim matters for lymphoblast vs. hematogone.
    pub margin: f32,
    /// Smallest crop side in field pixels, so a tiny nucleus still gets context.
    pub min_side: u32,
    /// Side of the output crop in pixels (crops are resized to it).
    pub output_size: u32,
    /// Largest number of crops per field (largest nuclei first).
    pub max_crops: usize,
    /// Which crops the model input uses.
    pub views: RoiViews,
    /// When no nucleus is found, use the whole field resized instead of failing. Aria fields
    /// always contain a leukocyte, so a miss is the finder's fault, not the field's.
    pub fallback_to_field: bool,
    /// Colour used where a square crop extends beyond the field: white, like slide glass.
    pub pad_rgb: [u8; 3],
}

impl Default for RoiConfig {
    fn default() -> Self {
        Self {
            margin: 0.25,
            min_side: 48,
            output_size: 224,
            max_crops: 16,
            views: RoiViews::Largest,
            fallback_to_field: true,
            pad_rgb: [255, 255, 255],
        }
    }
}

/// Settings of the nucleus finder. Lengths are in pixels of a 224-pixel field and scale with
/// the field's shorter side; areas are fractions of the field.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct NucleusConfig {
    /// Gain on the purple channel `(R + B) / 2 - G` before it is clamped to 0..255.
    pub channel_gain: f32,
    /// Gaussian smoothing of the channel, sigma in pixels (0 = none).
    pub smoothing_sigma: f32,
    /// Lower floor for the Otsu threshold on the gained channel: a field without any purple
    /// must not have its noise thresholded into "nuclei".
    pub min_threshold: u8,
    /// Radius of the binary opening that removes specks and thin bridges.
    pub opening_radius: u8,
    /// Radius of the binary closing that joins a granular chromatin texture.
    pub closing_radius: u8,
    /// Fill holes inside nuclei (pale nucleoli).
    pub fill_holes: bool,
    /// Split touching nuclei along the distance-transform valleys when a component holds
    /// several well-separated cores.
    pub split_touching: bool,
    /// Smallest nucleus area as a fraction of the field (0.004 = 200 px at 224x224).
    pub min_area_fraction: f32,
    /// Largest nucleus area as a fraction of the field.
    pub max_area_fraction: f32,
    /// Largest ratio of bounding-box sides (drops stain streaks and the scale bar).
    pub max_aspect: f32,
    /// Smallest fill of the bounding box (area / box area): drops ragged filaments.
    pub min_extent: f32,
}

impl Default for NucleusConfig {
    fn default() -> Self {
        Self {
            channel_gain: 3.0,
            smoothing_sigma: 1.0,
            min_threshold: 30,
            opening_radius: 2,
            closing_radius: 2,
            fill_holes: true,
            split_touching: true,
            min_area_fraction: 0.004,
            max_area_fraction: 0.5,
            max_aspect: 4.0,
            min_extent: 0.3,
        }
    }
}

/// How a cell crop's colours reach the model (`cell` mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CellColour {
    /// Grey levels (luminance), standardised over the cell's pixels: no stain hue at all.
    #[default]
    Grey,
    /// RGB, each channel standardised over the cell's pixels (a per-cell Reinhard-like
    /// normalisation).
    Rgb,
}

/// `cell` mode: how each white cell becomes a model input.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct CellViewConfig {
    /// Side of the square window around each cell, in micrometres; it is resampled to
    /// `input_size`, so the model sees every source at `window_um / input_size` um per pixel.
    pub window_um: f32,
    /// The cell mask is grown by this much before everything outside it is filled.
    pub mask_margin_um: f32,
    /// Grey level of the fill outside the cell (0..255), the same for every source.
    pub fill: u8,
    /// Colour handling of the cell's pixels.
    pub colour: CellColour,
    /// Largest number of cells scored per field (dominant cell first, then by area).
    pub max_cells: usize,
    /// The finest detail the model is shown, in micrometres per pixel: a window sampled finer
    /// is first reduced to this before it is resampled to the input, so a sharp camera and a
    /// coarse one look alike. `None`: each window straight to the input.
    pub floor_um_per_px: Option<f32>,
    /// Physical scale estimation (red cells, a given scale, or the stated fallback).
    pub scale: ScaleConfig,
    /// The white-cell finder.
    pub finder: CellConfig,
}

impl Default for CellViewConfig {
    fn default() -> Self {
        Self {
            // 24 um holds the largest blasts (~20 um); at the cell profile's 64 px that is
            // 0.375 um/px (48 px at Aria's own 0.52 um/px scored lower in and out of domain:
            // docs/EXPERIMENTS.md).
            window_um: 24.0,
            mask_margin_um: 0.3,
            fill: 224,
            colour: CellColour::Grey,
            max_cells: 64,
            floor_um_per_px: None,
            scale: ScaleConfig::default(),
            finder: CellConfig::default(),
        }
    }
}

/// Which channels the model input carries, computed from each view's RGB after
/// segmentation and stain normalisation, before any crop or resize
/// ([`crate::prepare_views`]), so training, validation and inference see the same values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum InputChannels {
    /// The field's RGB, as decoded.
    #[default]
    Rgb,
    /// The seed authors' script: H and S of OpenCV's 8-bit HSV (H 0..180, S 0..255) and a
    /// third channel of zeros ([`crate::hsv::hs0_image`]). Their script read the file with
    /// `cv2.imread` (BGR in memory) and converted with `COLOR_BGR2HSV`, so this is the true
    /// hue, not the swapped one of the `aria-hsv` mask recipe.
    Hs0,
}

impl InputChannels {
    /// A view (true RGB order) in this channel layout; `Rgb` returns it untouched.
    pub fn apply(self, img: RgbImage) -> RgbImage {
        match self {
            Self::Rgb => img,
            Self::Hs0 => crate::hsv::hs0_image(&img),
        }
    }

    /// One pixel (true RGB order) in this channel layout.
    #[inline]
    pub fn pixel(self, rgb: [u8; 3]) -> [u8; 3] {
        match self {
            Self::Rgb => rgb,
            Self::Hs0 => {
                let [h, s, _v] = crate::hsv::opencv_rgb2hsv(rgb[0], rgb[1], rgb[2]);
                [h, s, 0]
            }
        }
    }
}

/// All preprocessing settings of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PreprocessConfig {
    /// Segmentation mode.
    pub mode: SegmentMode,
    /// Side of the square model input in pixels (DenseNet: 224).
    pub input_size: u32,
    /// Channels of the model input (RGB by default; `hs0` for the seed authors' script).
    pub channels: InputChannels,
    /// Crops around nuclei (`nucleus` mode).
    pub roi: RoiConfig,
    /// Nucleus finder settings (`nucleus` mode).
    pub nucleus: NucleusConfig,
    /// Per-cell views (`cell` mode).
    pub cell: CellViewConfig,
    /// Per-channel mean/std normalisation of the model input (ImageNet by default, because
    /// the backbone was pretrained with it).
    pub normalization: Normalization,
    /// Optional stain normalisation applied to the field before cropping (none by default).
    pub stain: Option<StainNormalization>,
    /// Decoding limits (smallest and largest accepted images).
    pub decode: DecodeLimits,
}

impl Default for PreprocessConfig {
    fn default() -> Self {
        Self {
            mode: SegmentMode::default(),
            input_size: 224,
            channels: InputChannels::default(),
            roi: RoiConfig::default(),
            nucleus: NucleusConfig::default(),
            cell: CellViewConfig::default(),
            normalization: Normalization::default(),
            stain: None,
            decode: DecodeLimits::default(),
        }
    }
}

impl PreprocessConfig {
    /// Rejects settings that cannot work: an input size of 0, and `hs0` channels in `cell`
    /// mode, whose crops are grey by default (`cell.colour`) and would turn into zeros.
    pub fn validate(&self) -> Result<(), String> {
        if self.input_size == 0 {
            return Err("input_size must be > 0".into());
        }
        if self.mode == SegmentMode::Cell && self.channels != InputChannels::Rgb {
            return Err(
                "cell mode sets its colours with preprocess.cell.colour; preprocess.channels must be rgb".into()
            );
        }
        Ok(())
    }
}
