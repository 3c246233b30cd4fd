//! `allscan segment`: a field or a folder of fields -> masks, segmented fields, nucleus crops,
//! `nuclei.csv`, the `config.json` used, and optionally a contact sheet for review.
//!
//! Output names keep the source's whole relative path, extension included
//! (`a/x.jpg` -> `masks/a/x.jpg.png`, `segmented/a/x.jpg.png`, `crops/a/x.jpg/N.png`), so two
//! fields that differ only by extension (`a/x.jpg`, `a/x.png`) never write the same file and
//! each CSV row points at its own field's crops.
//!
//! Glue only: every image operation is in `allscan_preprocess`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use allscan_preprocess::{
    apply_mask, aria_hsv_mask, contact_sheet, decode_file, find_nuclei, nuclei_from_mask, roi_crops, NucleusResult,
    PreprocessConfig, SegmentMode,
};
use anyhow::Context;
use image::{GrayImage, RgbImage};

/// Options of `allscan segment`.
#[derive(Debug, clap::Args)]
pub struct SegmentArgs {
    /// A field image, or a folder searched recursively for images (jpg, png, tif, bmp, webp).
    pub path: PathBuf,
    /// Output folder: masks/, segmented/, crops/ (relative paths kept, extension included:
    /// a/x.jpg -> masks/a/x.jpg.png, crops/a/x.jpg/0.png), nuclei.csv, config.json.
    #[arg(long)]
    pub out: PathBuf,
    /// aria-hsv: the dataset authors' OpenCV recipe, bit for bit (crops from its mask's blobs);
    /// nucleus: the stain-robust nucleus finder.
    #[arg(long, value_enum, default_value_t = ModeArg::Nucleus)]
    pub mode: ModeArg,
    /// Also write DIR/sheet.png: one row per field (original | mask | crops) for review.
    #[arg(long)]
    pub sheet: bool,
    /// Fields shown on the contact sheet (the first ones in path order).
    #[arg(long, default_value_t = 40)]
    pub sheet_rows: usize,
    /// Preprocessing settings as JSON (e.g. a model bundle's); --mode overrides its mode.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// `--mode cell`: micrometres per pixel of every image (e.g. the microscope's
    /// calibration), instead of estimating it from the red cells.
    #[arg(long)]
    pub um_per_px: Option<f32>,
    /// `--mode cell`: each image at its own scale estimate. By default the files of one call
    /// of one size are taken to come from one microscope, as in `predict`: an image without
    /// measurable red cells takes the median scale of the others (scale_source `pooled`).
    #[arg(long)]
    pub per_image_scale: bool,
}

/// `--mode` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ModeArg {
    /// The authors' HSV thresholding, as OpenCV computes it.
    AriaHsv,
    /// The stain-robust nucleus finder (default).
    Nucleus,
    /// Every white cell at the field's physical scale: masks/ holds 255 = nucleus, 128 =
    /// cytoplasm; crops/ the model's per-cell views; cells.csv one row per cell with its scale.
    Cell,
}

pub fn run(args: SegmentArgs) -> anyhow::Result<ExitCode> {
    let mut cfg = match &args.config {
        Some(p) => {
            let text = std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            serde_json::from_str::<PreprocessConfig>(&text).with_context(|| format!("parsing {}", p.display()))?
        }
        None => PreprocessConfig::default(),
    };
    cfg.mode = match args.mode {
        ModeArg::AriaHsv => SegmentMode::AriaHsv,
        ModeArg::Nucleus => SegmentMode::Nucleus,
        ModeArg::Cell => SegmentMode::Cell,
    };
    if let Some(um) = args.um_per_px {
        anyhow::ensure!(um.is_finite() && um > 0.0, "--um-per-px {um}: must be a positive number");
        cfg.cell.scale.um_per_px = Some(um);
    }
    if args.per_image_scale {
        cfg.cell.scale.pool = false;
    }
    let single_file = args.path.is_file();
    let (root, files, skipped) = if single_file {
        let root = args.path.parent().map(Path::to_path_buf).unwrap_or_default();
        (root, vec![args.path.clone()], Vec::new())
    } else if args.path.is_dir() {
        let (files, skipped) = list_images(&args.path);
        (args.path.clone(), files, skipped)
    } else {
        anyhow::bail!("{}: no such file or folder", args.path.display());
    };
    anyhow::ensure!(!files.is_empty(), "{}: no image files found", args.path.display());
    std::fs::create_dir_all(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
    let config_path = args.out.join("config.json");
    allscan::fsutil::write_atomic(&config_path, serde_json::to_string_pretty(&cfg)?.as_bytes())
        .with_context(|| format!("writing {}", config_path.display()))?;

    let bar = allscan::progress::bar(files.len() as u64, "fields", files.len() > 1);
    if cfg.mode == SegmentMode::Cell {
        return segment_cells(&files, &skipped, &root, &args, &cfg, &bar);
    }
    let mut csv = Table::new(&[
        "path",
        "status",
        "nucleus",
        "x",
        "y",
        "width",
        "height",
        "area",
        "centroid_x",
        "centroid_y",
        "crop",
    ]);
    let mut sheet_rows: Vec<RgbImage> = Vec::new();
    let (mut ok, mut without, mut nuclei_total) = (0usize, 0usize, 0usize);
    // Entries the walker passed over (link loops, FIFOs) count as skipped files, as in predict.
    let mut failed = skipped_rows(&mut csv, &skipped, &root)?;
    for file in &files {
        bar.inc(1);
        let rel = file.strip_prefix(&root).unwrap_or(file).to_path_buf();
        let rel_s = rel.to_string_lossy().replace('\\', "/");
        match segment_one(file, &rel, &args.out, &cfg) {
            Ok(field) => {
                ok += 1;
                if field.found.nuclei.is_empty() {
                    without += 1;
                    csv.row([rel_s.clone(), "no nucleus found".into()])?;
                }
                for (k, n) in field.found.nuclei.iter().enumerate() {
                    nuclei_total += 1;
                    let crop = if k < field.crops.len() { field.crops[k].clone() } else { String::new() };
                    csv.row([
                        rel_s.clone(),
                        "ok".into(),
                        k.to_string(),
                        n.bbox.x.to_string(),
                        n.bbox.y.to_string(),
                        n.bbox.width.to_string(),
                        n.bbox.height.to_string(),
                        n.area.to_string(),
                        format!("{:.2}", n.centroid.0),
                        format!("{:.2}", n.centroid.1),
                        crop,
                    ])?;
                }
                if args.sheet && sheet_rows.len() < args.sheet_rows {
                    sheet_rows.push(field.sheet_row);
                }
            }
            Err(err) => {
                failed += 1;
                bar.suspend(|| eprintln!("skipped: {err:#}"));
                csv.row([rel_s, format!("error: {err:#}")])?;
            }
        }
    }
    bar.finish_and_clear();
    csv.save(&args.out.join("nuclei.csv"))?;
    if args.sheet && !sheet_rows.is_empty() {
        let sheet_path = args.out.join("sheet.png");
        save_rgb(&stack_rows(&sheet_rows), &sheet_path)?;
    }
    println!(
        "{} fields segmented ({} mode): {nuclei_total} nuclei; {without} with no nucleus found; {failed} unreadable (skipped); output in {}",
        ok,
        cfg.mode,
        args.out.display()
    );
    // One unreadable file among many is reported and the rest segmented; the exit code says
    // that something was skipped.
    Ok(if ok == 0 || failed > 0 { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

/// Columns of `cells.csv`.
const CELL_COLUMNS: [&str; 18] = [
    "path",
    "status",
    "um_per_px",
    "scale_source",
    "scale_note",
    "cell",
    "x",
    "y",
    "width",
    "height",
    "nucleus_x",
    "nucleus_y",
    "nucleus_width",
    "nucleus_height",
    "cell_area",
    "nucleus_area",
    "flags",
    "crop",
];

/// `--mode cell`: masks (255 nucleus / 128 cytoplasm), per-cell model views and cells.csv.
/// The files are one set, as in `predict`: a field whose own scale fell back to the assumed
/// one is segmented again at the pooled scale of the fields of its size
/// ([`allscan_preprocess::ScalePool`]; `--per-image-scale` turns it off), and a folder of
/// 224 px Aria fields takes their pooled pixel aspect, so masks, crops and cells.csv are what
/// the model is given.
fn segment_cells(
    files: &[PathBuf],
    skipped: &[(PathBuf, String)],
    root: &Path,
    args: &SegmentArgs,
    cfg: &PreprocessConfig,
    bar: &indicatif::ProgressBar,
) -> anyhow::Result<ExitCode> {
    let mut csv = Table::new(&CELL_COLUMNS);
    let mut failed = skipped_rows(&mut csv, skipped, root)?;
    let rel_of = |file: &Path| file.strip_prefix(root).unwrap_or(file).to_path_buf();
    let sheet = |k: usize| args.sheet && k < args.sheet_rows;
    let mut fields: Vec<Result<CellField, String>> = Vec::with_capacity(files.len());
    for (k, file) in files.iter().enumerate() {
        bar.inc(1);
        let field = cell_field(file, &rel_of(file), &args.out, cfg, None, sheet(k))?;
        if let Err(reason) = &field {
            bar.suspend(|| eprintln!("skipped: {}: {reason}", file.display()));
        }
        fields.push(field);
    }
    let items: Vec<Option<((u32, u32), &allscan_preprocess::ScaleEstimate)>> =
        fields.iter().map(|f| f.as_ref().ok().map(|f| (f.size, &f.scale))).collect();
    for (k, pooled) in allscan_preprocess::ScalePool::regroup(&items, &cfg.cell.scale) {
        let rel = rel_of(&files[k]);
        // The first pass's crops go: the pooled scale may find fewer cells.
        let crops = args.out.join("crops").join(&rel);
        if crops.is_dir() {
            std::fs::remove_dir_all(&crops).with_context(|| format!("removing {}", crops.display()))?;
        }
        fields[k] = cell_field(&files[k], &rel, &args.out, cfg, Some(&pooled), sheet(k))?;
    }
    bar.finish_and_clear();
    let (mut ok, mut without, mut total) = (0usize, 0usize, 0usize);
    let mut sheet_rows: Vec<RgbImage> = Vec::new();
    for (file, field) in files.iter().zip(fields) {
        match field {
            Ok(f) => {
                ok += 1;
                without += (f.cells == 0) as usize;
                total += f.cells;
                for row in f.rows {
                    csv.record(row)?;
                }
                sheet_rows.extend(f.sheet_row);
            }
            Err(e) => {
                failed += 1;
                csv.row([rel_of(file).to_string_lossy().replace('\\', "/"), format!("error: {e}")])?;
            }
        }
    }
    csv.save(&args.out.join("cells.csv"))?;
    if !sheet_rows.is_empty() {
        let sheet_path = args.out.join("sheet.png");
        save_rgb(&stack_rows(&sheet_rows), &sheet_path)?;
    }
    println!(
        "{ok} fields segmented (cell mode): {total} white cells; {without} with no white cell found; {failed} unreadable (skipped); output in {}",
        args.out.display()
    );
    Ok(if ok == 0 || failed > 0 { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

/// One field of `--mode cell`, its mask and crops written.
struct CellField {
    /// Its `cells.csv` rows.
    rows: Vec<Vec<String>>,
    /// White cells found.
    cells: usize,
    /// The scale it was segmented at, and the file's size (the pool's key).
    scale: allscan_preprocess::ScaleEstimate,
    size: (u32, u32),
    sheet_row: Option<RgbImage>,
}

/// Segments one field at `scale` (`None`: its own estimate), writing its mask and crops. An
/// unreadable file is the inner error (its reason: skipped and counted); a failed write of
/// the outputs is the outer one (the run stops).
fn cell_field(
    file: &Path,
    rel: &Path,
    out: &Path,
    cfg: &PreprocessConfig,
    scale: Option<&allscan_preprocess::ScaleEstimate>,
    sheet: bool,
) -> anyhow::Result<Result<CellField, String>> {
    let img = match decode_file(file, &cfg.decode) {
        Ok(img) => img,
        Err(e) => return Ok(Err(e.reason())),
    };
    let rel_s = rel.to_string_lossy().replace('\\', "/");
    let (views, found) = allscan_preprocess::prepare_cells_at(&img, cfg, scale);
    let s = &found.scale;
    let source = serde_json::to_value(s.source)?.as_str().unwrap_or_default().to_string();
    let mut note = s.note.clone().unwrap_or_default();
    if !s.aspect.is_square() {
        let sep = if note.is_empty() { "" } else { "; " };
        note = format!("{note}{sep}pixels {:.3} times as wide as tall: measured at square pixels", s.aspect.ratio);
    }
    let um_per_px = format!("{:.4}", s.um_per_px);
    save_gray(&found.mask, &out.join("masks").join(png_name(rel)))?;
    let mut rows = Vec::new();
    if found.cells.is_empty() {
        rows.push(vec![rel_s.clone(), "no white cell found".into(), um_per_px.clone(), source.clone(), note.clone()]);
    }
    let crop_dir_rel = Path::new("crops").join(rel);
    for (k, c) in found.cells.iter().enumerate() {
        let crop = match views.nucleus_of_view.iter().position(|v| *v == Some(k)) {
            Some(v) => {
                let p = crop_dir_rel.join(format!("{k}.png"));
                save_rgb(&views.images[v], &out.join(&p))?;
                p.to_string_lossy().replace('\\', "/")
            }
            None => String::new(),
        };
        let flags: Vec<String> = c
            .flags
            .iter()
            .filter_map(|f| serde_json::to_value(f).ok().and_then(|v| v.as_str().map(String::from)))
            .collect();
        rows.push(vec![
            rel_s.clone(),
            "ok".into(),
            um_per_px.clone(),
            source.clone(),
            note.clone(),
            k.to_string(),
            c.cell.x.to_string(),
            c.cell.y.to_string(),
            c.cell.width.to_string(),
            c.cell.height.to_string(),
            c.nucleus.x.to_string(),
            c.nucleus.y.to_string(),
            c.nucleus.width.to_string(),
            c.nucleus.height.to_string(),
            c.cell_area.to_string(),
            c.nucleus_area.to_string(),
            flags.join(" "),
            crop,
        ]);
    }
    let sheet_row = sheet.then(|| {
        let crops: Vec<allscan_preprocess::RoiCrop> = views
            .images
            .iter()
            .zip(&views.regions)
            .enumerate()
            .filter_map(|(i, (im, r))| {
                r.map(|region| allscan_preprocess::RoiCrop { image: im.clone(), region, nucleus_index: i })
            })
            .collect();
        contact_sheet(&img, &found.mask, &crops, 6)
    });
    Ok(Ok(CellField { rows, cells: found.cells.len(), scale: found.scale, size: img.dimensions(), sheet_row }))
}

/// What one field produced.
struct FieldOutput {
    found: NucleusResult,
    /// Crop paths relative to the output folder, one per nucleus (in order).
    crops: Vec<String>,
    sheet_row: RgbImage,
}

fn segment_one(file: &Path, rel: &Path, out: &Path, cfg: &PreprocessConfig) -> anyhow::Result<FieldOutput> {
    let img = decode_file(file, &cfg.decode)?;
    let (mask, found): (GrayImage, NucleusResult) = match cfg.mode {
        // The mask written is the authors' exact mask; crops come from its cleaned blobs.
        SegmentMode::AriaHsv => {
            let mask = aria_hsv_mask(&img);
            let found = nuclei_from_mask(&mask, &cfg.nucleus);
            (mask, found)
        }
        // `field` feeds the model the whole field; what there is to segment is the nuclei.
        SegmentMode::Nucleus | SegmentMode::Field | SegmentMode::Cell => {
            let found = find_nuclei(&img, &cfg.nucleus);
            (found.mask.clone(), found)
        }
    };
    let field = match &cfg.stain {
        Some(s) => s.apply(&img),
        None => img.clone(),
    };
    let crops = roi_crops(&field, &found, &cfg.roi);
    let png_rel = png_name(rel);
    save_gray(&mask, &out.join("masks").join(&png_rel))?;
    save_rgb(&apply_mask(&img, &mask), &out.join("segmented").join(&png_rel))?;
    let crop_dir_rel = Path::new("crops").join(rel);
    let mut crop_paths = Vec::with_capacity(crops.len());
    for (k, c) in crops.iter().enumerate() {
        let p = crop_dir_rel.join(format!("{k}.png"));
        save_rgb(&c.image, &out.join(&p))?;
        crop_paths.push(p.to_string_lossy().replace('\\', "/"));
    }
    let sheet_row = contact_sheet(&img, &mask, &crops, 6);
    Ok(FieldOutput { found, crops: crop_paths, sheet_row })
}

/// The PNG written for the field at `rel`: `rel` with `.png` appended, not substituted
/// (`a/x.jpg` -> `a/x.jpg.png`), so distinct sources always get distinct names.
fn png_name(rel: &Path) -> PathBuf {
    let mut name = rel.as_os_str().to_owned();
    name.push(".png");
    PathBuf::from(name)
}

fn save_gray(img: &GrayImage, path: &Path) -> anyhow::Result<()> {
    save_png(img.as_raw(), img.dimensions(), image::ExtendedColorType::L8, path)
}

fn save_rgb(img: &RgbImage, path: &Path) -> anyhow::Result<()> {
    save_png(img.as_raw(), img.dimensions(), image::ExtendedColorType::Rgb8, path)
}

/// Encodes the pixels as PNG and writes them atomically (an interrupted run leaves no half
/// image).
fn save_png(raw: &[u8], (w, h): (u32, u32), colour: image::ExtendedColorType, path: &Path) -> anyhow::Result<()> {
    use image::ImageEncoder;
    let mut bytes = Vec::new();
    image::codecs::png::PngEncoder::new(&mut bytes)
        .write_image(raw, w, h, colour)
        .with_context(|| format!("encoding {}", path.display()))?;
    allscan::fsutil::write_atomic(path, &bytes).with_context(|| format!("writing {}", path.display()))
}

/// Image files under `dir` and what was passed over (`allscan::data::walk`: each file once;
/// link loops, FIFOs and unreadable entries are reported on stderr and skipped).
fn list_images(dir: &Path) -> (Vec<PathBuf>, Vec<(PathBuf, String)>) {
    let walked = allscan::data::walk::image_files(&[dir.to_path_buf()]);
    for (p, why) in &walked.skipped {
        eprintln!("skipped: {}: {why}", p.display());
    }
    (walked.files, walked.skipped)
}

/// One `error:` CSV row (path, status, the other columns empty) per skipped entry; returns
/// how many.
fn skipped_rows(csv: &mut Table, skipped: &[(PathBuf, String)], root: &Path) -> anyhow::Result<usize> {
    for (p, why) in skipped {
        let rel = p.strip_prefix(root).unwrap_or(p).to_string_lossy().replace('\\', "/");
        csv.row([rel, format!("error: {why}")])?;
    }
    Ok(skipped.len())
}

/// A CSV table (`nuclei.csv`, `cells.csv`) written through the `csv` crate: fields with a
/// comma, a quote or a line break are quoted; a short row is padded with empty columns.
struct Table {
    writer: csv::Writer<Vec<u8>>,
    columns: usize,
}

impl Table {
    fn new(header: &[&str]) -> Self {
        let mut writer = csv::Writer::from_writer(Vec::new());
        // Writing into memory cannot fail.
        let _ = writer.write_record(header);
        Self { writer, columns: header.len() }
    }

    /// One row: `fields`, then empty columns up to the header's length.
    fn row<const N: usize>(&mut self, fields: [String; N]) -> anyhow::Result<()> {
        self.record(fields.into())
    }

    /// [`Self::row`] of a length known at run time.
    fn record(&mut self, fields: Vec<String>) -> anyhow::Result<()> {
        let pad = self.columns.saturating_sub(fields.len());
        self.writer.write_record(fields.into_iter().chain(std::iter::repeat_n(String::new(), pad)))?;
        Ok(())
    }

    fn save(self, path: &Path) -> anyhow::Result<()> {
        let bytes = self.writer.into_inner().map_err(|e| e.into_error())?;
        allscan::fsutil::write_atomic(path, &bytes).with_context(|| format!("writing {}", path.display()))
    }
}

/// Stacks sheet rows vertically on a grey background (rows may differ in width).
fn stack_rows(rows: &[RgbImage]) -> RgbImage {
    let gutter = 4;
    let width = rows.iter().map(|r| r.width()).max().unwrap_or(1);
    let height = rows.iter().map(|r| r.height() + gutter).sum::<u32>().max(1);
    let mut sheet = RgbImage::from_pixel(width, height, image::Rgb([128, 128, 128]));
    let mut y = 0i64;
    for r in rows {
        image::imageops::replace(&mut sheet, r, 0, y);
        y += (r.height() + gutter) as i64;
    }
    sheet
}
