//! Dataset index: a folder of image files -> one record per readable image (class, binary
//! label, patient, content hash, perceptual hash), the unreadable files with their reasons,
//! duplicate groups and a dataset fingerprint.
//!
//! Every image is decoded once here (with the limits of `allscan_preprocess::DecodeLimits`), so a
//! file that is listed in the index is known to decode.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use allscan_preprocess::{decode_bytes, DecodeLimits};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::layout::{self, BinaryLabel, LabelMap, Labelled, LayoutKind};
use super::phash;
use super::DataError;

/// One readable image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageRecord {
    /// Path relative to the dataset root, `/`-separated.
    pub path: String,
    /// Class name (Aria subtype folder, class folder, C-NMC `all`/`hem`, ALL-IDB `blast`/`healthy`).
    pub class: String,
    /// Binary label; `None` for a class folder whose name says nothing and that `--map` does not cover.
    pub label: Option<BinaryLabel>,
    /// Patient (subject) id, where the layout carries one.
    pub patient: Option<String>,
    /// SHA-256 of the file bytes, hex.
    pub sha256: String,
    /// Perceptual hash (see [`phash`]), hex.
    #[serde(with = "hex_u64")]
    pub phash: u64,
    pub width: u32,
    pub height: u32,
    /// Aria only: the authors' segmented counterpart, relative to the root.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub segmented: Option<String>,
    /// The source (sub-dataset) of a [`LayoutKind::Sources`] dataset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// The source's micrometres per pixel, when its manifest entry gives one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub um_per_px: Option<f32>,
}

/// A file that looks like an image (by extension or location) but cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BadFile {
    pub path: String,
    pub reason: String,
}

/// A class and how many images it has.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClassInfo {
    pub name: String,
    pub label: Option<BinaryLabel>,
    pub count: usize,
}

/// Options of [`DatasetIndex::build`].
#[derive(Debug, Clone)]
pub struct IndexOptions {
    /// Class name -> binary label, overriding the built-in names.
    pub map: Option<LabelMap>,
    pub limits: DecodeLimits,
    /// Hamming distance of perceptual hashes at or below which images are near-duplicates.
    pub near_threshold: u32,
    /// Show a progress bar (it hides itself when stderr is not a terminal).
    pub progress: bool,
}

impl Default for IndexOptions {
    fn default() -> Self {
        Self {
            map: None,
            limits: DecodeLimits::default(),
            near_threshold: phash::NEAR_DUPLICATE_MAX_DISTANCE,
            progress: false,
        }
    }
}

/// Everything known about a dataset folder.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DatasetIndex {
    pub root: PathBuf,
    pub layout: LayoutKind,
    /// Classes in a fixed order (Aria: Benign, Early, Pre, Pro; otherwise sorted by name).
    pub classes: Vec<ClassInfo>,
    /// Readable images, sorted by path.
    pub images: Vec<ImageRecord>,
    /// Unusable files, sorted by path.
    pub bad: Vec<BadFile>,
    /// Files without an image extension (CSV, README, ...), not indexed.
    pub ignored: usize,
    /// Groups (indices into `images`) of byte-identical files.
    pub exact_duplicates: Vec<Vec<usize>>,
    /// Groups of images within `near_threshold` bits that are not all byte-identical.
    pub near_duplicates: Vec<Vec<usize>>,
    pub near_threshold: u32,
    /// SHA-256 over (path, class, content hash) of every readable image: a split made for one
    /// fingerprint is refused for any other.
    pub fingerprint: String,
}

impl DatasetIndex {
    /// Indexes `root`. Fails only when the folder is missing, unreadable or holds no image;
    /// every per-file problem becomes a [`BadFile`].
    pub fn build(root: &Path, opts: &IndexOptions) -> Result<DatasetIndex, DataError> {
        let meta = std::fs::metadata(root).map_err(|source| match source.kind() {
            std::io::ErrorKind::NotFound => DataError::NotFound { path: root.to_owned() },
            _ => DataError::Io { path: root.to_owned(), source },
        })?;
        if !meta.is_dir() {
            return Err(DataError::NotADirectory { path: root.to_owned() });
        }
        let mut bad = Vec::new();
        let mut ignored = 0usize;
        let (layout, candidates) = discover(root, opts.map.as_ref(), &mut bad, &mut ignored)?;
        if candidates.is_empty() && bad.is_empty() {
            return Err(DataError::Empty { path: root.to_owned() });
        }
        let (mut images, mut decode_bad) = read_all(root, candidates, &opts.limits, opts.progress);
        bad.append(&mut decode_bad);
        images.sort_by(|a, b| a.path.cmp(&b.path));
        bad.sort_by(|a, b| a.path.cmp(&b.path));
        if images.is_empty() {
            return Err(DataError::NoReadableImages { path: root.to_owned(), bad: bad.len() });
        }
        let classes = class_infos(layout, &images);
        let exact_duplicates = exact_groups(&images);
        let near_duplicates = near_groups(&images, opts.near_threshold);
        let fingerprint = fingerprint(layout, &images);
        Ok(DatasetIndex {
            root: root.to_owned(),
            layout,
            classes,
            images,
            bad,
            ignored,
            exact_duplicates,
            near_duplicates,
            near_threshold: opts.near_threshold,
            fingerprint,
        })
    }

    /// Whether any image carries a patient id.
    pub fn has_patients(&self) -> bool {
        self.images.iter().any(|r| r.patient.is_some())
    }

    /// Index of a class name in [`Self::classes`].
    pub fn class_index(&self, name: &str) -> Option<usize> {
        self.classes.iter().position(|c| c.name == name)
    }

    /// The binary label of every image, or an error naming the classes that have none.
    pub fn binary_labels(&self) -> Result<Vec<BinaryLabel>, DataError> {
        let unmapped: Vec<String> = self.classes.iter().filter(|c| c.label.is_none()).map(|c| c.name.clone()).collect();
        if !unmapped.is_empty() {
            return Err(DataError::UnmappedClasses { classes: unmapped });
        }
        Ok(self.images.iter().map(|r| r.label.unwrap_or(BinaryLabel::Leukemia)).collect())
    }

    /// Absolute path of an image.
    pub fn abs_path(&self, rec: &ImageRecord) -> PathBuf {
        self.root.join(&rec.path)
    }
}

/// A file found by discovery, labelled by layout, not yet decoded.
struct Candidate {
    rel: String,
    class: String,
    /// `None` for a class folder whose name says nothing and that `--map` does not cover.
    label: Option<BinaryLabel>,
    patient: Option<String>,
    segmented: Option<String>,
    source: Option<String>,
    um_per_px: Option<f32>,
}

impl Candidate {
    fn new(rel: String, l: Labelled, segmented: Option<String>) -> Self {
        Candidate {
            rel,
            class: l.class,
            label: Some(l.label),
            patient: l.patient,
            segmented,
            source: None,
            um_per_px: None,
        }
    }
}

fn rel_string(root: &Path, path: &Path) -> Result<String, String> {
    let rel = path.strip_prefix(root).unwrap_or(path);
    let mut parts = Vec::new();
    for c in rel.components() {
        match c.as_os_str().to_str() {
            Some(s) => parts.push(s.to_owned()),
            None => return Err(rel.to_string_lossy().into_owned()),
        }
    }
    Ok(parts.join("/"))
}

/// Walks `dir` (following symlinks, loops reported), returning image-extension files as
/// root-relative strings. Problems go to `bad`.
fn walk_images(root: &Path, dir: &Path, bad: &mut Vec<BadFile>, ignored: &mut usize) -> Vec<(String, PathBuf)> {
    let mut out = Vec::new();
    for entry in walkdir::WalkDir::new(dir).follow_links(true).sort_by_file_name() {
        match entry {
            Ok(e) => {
                if e.file_type().is_dir() {
                    continue;
                }
                let path = e.path();
                if !layout::has_image_extension(path) {
                    // A dangling link has no type we can trust; report it if it claims to be an image.
                    *ignored += 1;
                    continue;
                }
                match rel_string(root, path) {
                    Ok(rel) => out.push((rel, path.to_owned())),
                    Err(lossy) => bad.push(BadFile {
                        path: lossy,
                        reason: "file name is not valid UTF-8 (rename it; split files record names as text)".into(),
                    }),
                }
            }
            Err(err) => {
                let path = err.path().map(|p| p.strip_prefix(root).unwrap_or(p).to_string_lossy().into_owned());
                let reason = if err.loop_ancestor().is_some() {
                    "symbolic link loop".to_owned()
                } else if let Some(io) = err.io_error() {
                    format!("cannot read: {io}")
                } else {
                    err.to_string()
                };
                bad.push(BadFile { path: path.unwrap_or_else(|| dir.display().to_string()), reason });
            }
        }
    }
    out
}

/// Every source's candidates, paths, classes and patients prefixed with the source's name
/// (`aria/Original/Benign/x.jpg`, class `aria/Benign`, patient `cnmc/H10`) so that sources
/// never collide; a source's `label` overrides what its layout says.
fn source_candidates(
    root: &Path,
    manifest: &layout::SourcesManifest,
    bad: &mut Vec<BadFile>,
    ignored: &mut usize,
) -> Result<Vec<Candidate>, DataError> {
    let mut out = Vec::new();
    for spec in &manifest.sources {
        let dir = root.join(&spec.name);
        if !dir.is_dir() {
            return Err(DataError::BadManifest {
                path: root.join(layout::SOURCES_MANIFEST),
                reason: format!("source `{}`: {} is not a folder", spec.name, dir.display()),
            });
        }
        let map = spec.map.as_deref().map(LabelMap::parse).transpose()?;
        let mut sub_bad = Vec::new();
        let (_, cands) = discover(&dir, map.as_ref(), &mut sub_bad, ignored)?;
        let prefix = |s: &str| format!("{}/{s}", spec.name);
        bad.extend(sub_bad.into_iter().map(|b| BadFile { path: prefix(&b.path), reason: b.reason }));
        for mut c in cands {
            let wanted = spec.extensions.is_empty()
                || c.rel
                    .rsplit_once('.')
                    .is_some_and(|(_, e)| spec.extensions.iter().any(|x| x.eq_ignore_ascii_case(e)));
            if !wanted {
                *ignored += 1;
                continue;
            }
            c.rel = prefix(&c.rel);
            c.class = prefix(&c.class);
            c.patient = c.patient.as_deref().map(prefix);
            c.segmented = c.segmented.as_deref().map(prefix);
            if let Some(l) = spec.label {
                c.label = Some(l);
            }
            c.source = Some(spec.name.clone());
            c.um_per_px = spec.um_per_px;
            out.push(c);
        }
    }
    Ok(out)
}

fn discover(
    root: &Path,
    map: Option<&LabelMap>,
    bad: &mut Vec<BadFile>,
    ignored: &mut usize,
) -> Result<(LayoutKind, Vec<Candidate>), DataError> {
    if let Some(manifest) = layout::sources_manifest(root)? {
        return Ok((LayoutKind::Sources, source_candidates(root, &manifest, bad, ignored)?));
    }
    if let Some(original) = layout::aria_original(root) {
        let segmented_dir = std::fs::read_dir(root)
            .ok()
            .and_then(|rd| rd.flatten().find(|e| e.file_name().to_string_lossy().eq_ignore_ascii_case("segmented")))
            .map(|e| e.path());
        let mut out = Vec::new();
        for (rel, _) in walk_images(root, &original, bad, ignored) {
            // rel = Original/<Class>/.../<file>
            let parts: Vec<&str> = rel.split('/').collect();
            if parts.len() < 3 {
                bad.push(BadFile { path: rel.clone(), reason: "not inside a class folder of Original/".into() });
                continue;
            }
            let class = parts[1].to_owned();
            // Aria's rule: Benign = healthy, every subtype folder = leukemia; `--map` overrides.
            let label = map.and_then(|m| m.get(&class)).unwrap_or(if class.eq_ignore_ascii_case("benign") {
                BinaryLabel::Healthy
            } else {
                BinaryLabel::Leukemia
            });
            let label = Some(label);
            let segmented = segmented_dir.as_ref().and_then(|sd| {
                let p = sd.join(parts[1..].join("/"));
                if p.is_file() {
                    rel_string(root, &p).ok()
                } else {
                    None
                }
            });
            out.push(Candidate { rel, class, label, patient: None, segmented, source: None, um_per_px: None });
        }
        return Ok((LayoutKind::Aria, out));
    }

    let files = walk_images(root, root, bad, ignored);
    let name_of = |rel: &str| rel.rsplit('/').next().unwrap_or(rel).to_owned();
    let cnmc = files.iter().filter(|(r, _)| layout::parse_cnmc(&name_of(r)).is_some()).count();
    let allidb = files.iter().filter(|(r, _)| layout::parse_all_idb(&name_of(r)).is_some()).count();
    let majority = |n: usize| n > 0 && n * 2 >= files.len();
    let (kind, parse): (LayoutKind, fn(&str) -> Option<Labelled>) = if majority(cnmc) {
        (LayoutKind::Cnmc, layout::parse_cnmc)
    } else if majority(allidb) {
        (LayoutKind::AllIdb, layout::parse_all_idb)
    } else {
        return Ok((LayoutKind::ClassFolders, class_folder_candidates(files, map, bad)));
    };
    let mut out = Vec::new();
    for (rel, _) in files {
        match parse(&name_of(&rel)) {
            Some(mut labelled) => {
                if let Some(l) = map.and_then(|m| m.get(&labelled.class)) {
                    labelled.label = l;
                }
                out.push(Candidate::new(rel, labelled, None));
            }
            None => bad.push(BadFile {
                path: rel,
                reason: format!("file name does not follow the {} pattern", kind.describe()),
            }),
        }
    }
    Ok((kind, out))
}

fn class_folder_candidates(
    files: Vec<(String, PathBuf)>,
    map: Option<&LabelMap>,
    bad: &mut Vec<BadFile>,
) -> Vec<Candidate> {
    let mut out = Vec::new();
    for (rel, _) in files {
        let Some((class, _)) = rel.split_once('/') else {
            bad.push(BadFile { path: rel, reason: "not inside a class folder".into() });
            continue;
        };
        let class = class.to_owned();
        let label = map.and_then(|m| m.get(&class)).or_else(|| layout::binary_label_for_name(&class));
        out.push(Candidate { rel, class, label, patient: None, segmented: None, source: None, um_per_px: None });
    }
    out
}

/// Reads, hashes and decodes every candidate on all cores.
fn read_all(
    root: &Path,
    candidates: Vec<Candidate>,
    limits: &DecodeLimits,
    progress: bool,
) -> (Vec<ImageRecord>, Vec<BadFile>) {
    let bar = crate::progress::bar(candidates.len() as u64, "reading images", progress);
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Result<ImageRecord, BadFile>>> = Mutex::new(Vec::with_capacity(candidates.len()));
    let workers = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).min(8);
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(c) = candidates.get(i) else { break };
                let r = read_one(root, c, limits);
                if let Ok(mut v) = results.lock() {
                    v.push(r);
                }
                bar.inc(1);
            });
        }
    });
    bar.finish_and_clear();
    let mut images = Vec::new();
    let mut bad = Vec::new();
    for r in results.into_inner().unwrap_or_default() {
        match r {
            Ok(rec) => images.push(rec),
            Err(b) => bad.push(b),
        }
    }
    (images, bad)
}

fn read_one(root: &Path, c: &Candidate, limits: &DecodeLimits) -> Result<ImageRecord, BadFile> {
    let path = root.join(&c.rel);
    let bad = |reason: String| BadFile { path: c.rel.clone(), reason };
    let bytes = allscan_preprocess::decode::read_regular_file(&path).map_err(|e| bad(format!("cannot read: {e}")))?;
    let img = decode_bytes(&bytes, Path::new(&c.rel), limits).map_err(|e| bad(e.reason()))?;
    Ok(ImageRecord {
        path: c.rel.clone(),
        class: c.class.clone(),
        label: c.label,
        patient: c.patient.clone(),
        sha256: hex::encode(Sha256::digest(&bytes)),
        phash: phash::phash(&img),
        width: img.width(),
        height: img.height(),
        segmented: c.segmented.clone(),
        source: c.source.clone(),
        um_per_px: c.um_per_px,
    })
}

fn class_infos(layout: LayoutKind, images: &[ImageRecord]) -> Vec<ClassInfo> {
    let mut by: BTreeMap<String, ClassInfo> = BTreeMap::new();
    for r in images {
        by.entry(r.class.clone()).or_insert(ClassInfo { name: r.class.clone(), label: r.label, count: 0 }).count += 1;
    }
    let mut classes: Vec<ClassInfo> = by.into_values().collect();
    if layout == LayoutKind::Aria {
        let rank = |n: &str| layout::ARIA_CLASSES.iter().position(|c| c.eq_ignore_ascii_case(n)).unwrap_or(usize::MAX);
        classes.sort_by(|a, b| rank(&a.name).cmp(&rank(&b.name)).then(a.name.cmp(&b.name)));
    }
    classes
}

fn exact_groups(images: &[ImageRecord]) -> Vec<Vec<usize>> {
    let mut by: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, r) in images.iter().enumerate() {
        by.entry(&r.sha256).or_default().push(i);
    }
    let mut groups: Vec<Vec<usize>> = by.into_values().filter(|g| g.len() > 1).collect();
    groups.sort();
    groups
}

fn near_groups(images: &[ImageRecord], threshold: u32) -> Vec<Vec<usize>> {
    let mut uf = UnionFind::new(images.len());
    for i in 0..images.len() {
        for j in (i + 1)..images.len() {
            if images[i].sha256 != images[j].sha256 && phash::distance(images[i].phash, images[j].phash) <= threshold {
                uf.union(i, j);
            }
        }
    }
    let mut groups: Vec<Vec<usize>> = uf.groups().into_iter().filter(|g| g.len() > 1).collect();
    groups.retain(|g| g.iter().any(|&i| images[i].sha256 != images[g[0]].sha256));
    groups.sort();
    groups
}

fn fingerprint(layout: LayoutKind, images: &[ImageRecord]) -> String {
    let mut h = Sha256::new();
    h.update(b"allscan-dataset-v1\n");
    h.update(format!("{layout:?}\n").as_bytes());
    for r in images {
        h.update(format!("{}\t{}\t{}\n", r.path, r.class, r.sha256).as_bytes());
    }
    hex::encode(h.finalize())
}

/// Disjoint sets over `0..n`, for grouping images that must stay together.
pub(crate) struct UnionFind {
    parent: Vec<usize>,
}

impl UnionFind {
    pub(crate) fn new(n: usize) -> Self {
        Self { parent: (0..n).collect() }
    }
    pub(crate) fn find(&mut self, mut x: usize) -> usize {
        while self.parent[x] != x {
            self.parent[x] = self.parent[self.parent[x]];
            x = self.parent[x];
        }
        x
    }
    pub(crate) fn union(&mut self, a: usize, b: usize) {
        let (ra, rb) = (self.find(a), self.find(b));
        if ra != rb {
            self.parent[ra.max(rb)] = ra.min(rb);
        }
    }
    /// Groups in order of their smallest member, members ascending.
    pub(crate) fn groups(&mut self) -> Vec<Vec<usize>> {
        let mut by: HashMap<usize, Vec<usize>> = HashMap::new();
        for i in 0..self.parent.len() {
            let r = self.find(i);
            by.entry(r).or_default().push(i);
        }
        let mut g: Vec<Vec<usize>> = by.into_values().collect();
        g.sort();
        g
    }
}

mod hex_u64 {
    use serde::{Deserialize, Deserializer, Serializer};
    pub fn serialize<S: Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{v:016x}"))
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        let s = String::deserialize(d)?;
        u64::from_str_radix(&s, 16).map_err(serde::de::Error::custom)
    }
}
