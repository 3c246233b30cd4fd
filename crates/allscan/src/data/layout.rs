//! Dataset layouts: a folder -> which of the known layouts it is, and for each image file its
//! class, binary label and (where the layout carries one) patient id.
//!
//! Recognised without being told, in this order:
//! - **Sources** (several datasets trained together): a root holding
//!   [`SOURCES_MANIFEST`], which names sub-folders (or links), each an ordinary dataset of any
//!   layout below, with an optional label map or one label for all its images.
//! - **Aria** (Aria et al., Kaggle 2021): `Original/{Benign,Early,Pre,Pro}/`, optional
//!   `Segmented/` with the same names. Benign = healthy (hematogones), the rest = leukemia.
//! - **C-NMC 2019**: file names `UID_<patient>_<image>_<cell>_<all|hem>.<ext>`, anywhere below
//!   the root; `all` = leukemia, `hem` = healthy; a patient id starting with `H` is a healthy subject.
//! - **ALL-IDB**: file names `ImNNN_1.<ext>` (blast, leukemia) and `ImNNN_0.<ext>` (healthy).
//! - **Class folders**: every sub-folder of the root holding images is a class; the binary label
//!   comes from the folder name (see [`binary_label_for_name`]) or from `--map`.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::DataError;

/// Binary task label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BinaryLabel {
    Healthy,
    Leukemia,
}

impl BinaryLabel {
    pub fn is_leukemia(self) -> bool {
        self == BinaryLabel::Leukemia
    }
    pub fn as_str(self) -> &'static str {
        match self {
            BinaryLabel::Healthy => "healthy",
            BinaryLabel::Leukemia => "leukemia",
        }
    }
}

/// Which layout a dataset folder has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LayoutKind {
    Aria,
    Cnmc,
    AllIdb,
    ClassFolders,
    Sources,
}

impl LayoutKind {
    pub fn describe(self) -> &'static str {
        match self {
            LayoutKind::Aria => "Aria et al. (Original/{Benign,Early,Pre,Pro})",
            LayoutKind::Cnmc => "C-NMC 2019 (UID_<patient>_<image>_<cell>_<all|hem>)",
            LayoutKind::AllIdb => "ALL-IDB (ImNNN_1 = blast, ImNNN_0 = healthy)",
            LayoutKind::ClassFolders => "class folders",
            LayoutKind::Sources => "several sources (allscan-sources.json)",
        }
    }
}

/// The file that makes a folder a [`LayoutKind::Sources`] dataset.
pub const SOURCES_MANIFEST: &str = "allscan-sources.json";

/// One source of a [`LayoutKind::Sources`] dataset.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SourceSpec {
    /// Sub-folder (or link) of the root; also the source's name in outputs and the sampler.
    pub name: String,
    /// `--map`-style label map for its classes (`"all=leukemia,hem=healthy"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub map: Option<String>,
    /// One label for every image of the source (e.g. a set of normal cells: `healthy`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<BinaryLabel>,
    /// Micrometres per pixel of every image of this source (one microscope and camera),
    /// instead of each image's own red-cell estimate (`cell` mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub um_per_px: Option<f32>,
    /// Only files with these extensions are images of this source (e.g. `["bmp"]` beside PNG
    /// masks); empty = every image extension.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extensions: Vec<String>,
}

/// The contents of [`SOURCES_MANIFEST`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SourcesManifest {
    /// The sources, in the order they are listed in outputs.
    pub sources: Vec<SourceSpec>,
}

/// Reads the sources manifest of `root`, if it has one.
pub fn sources_manifest(root: &Path) -> Result<Option<SourcesManifest>, DataError> {
    let path = root.join(SOURCES_MANIFEST);
    if !path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&path).map_err(|source| DataError::Io { path: path.clone(), source })?;
    let m: SourcesManifest = serde_json::from_str(&text)
        .map_err(|e| DataError::BadManifest { path: path.clone(), reason: e.to_string() })?;
    if m.sources.is_empty() {
        return Err(DataError::BadManifest { path, reason: "lists no source".into() });
    }
    for s in &m.sources {
        if s.um_per_px.is_some_and(|u| !(u.is_finite() && u > 0.0)) {
            return Err(DataError::BadManifest {
                path,
                reason: format!("source `{}`: um_per_px must be a positive number", s.name),
            });
        }
        if s.name.is_empty() || s.name.contains(['/', '\\']) || s.name.starts_with('.') {
            return Err(DataError::BadManifest {
                path,
                reason: format!("source name `{}` must be a plain sub-folder name", s.name),
            });
        }
    }
    Ok(Some(m))
}

/// The four Aria class folders, in the order used for subtype indices.
pub const ARIA_CLASSES: [&str; 4] = ["Benign", "Early", "Pre", "Pro"];

/// Image file extensions that are indexed; other files are counted as ignored.
pub const IMAGE_EXTENSIONS: [&str; 9] = ["jpg", "jpeg", "png", "tif", "tiff", "bmp", "gif", "webp", "jfif"];

pub fn has_image_extension(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .map(|e| IMAGE_EXTENSIONS.iter().any(|x| x.eq_ignore_ascii_case(e)))
        .unwrap_or(false)
}

/// What a file name or location says about one image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Labelled {
    pub class: String,
    pub label: BinaryLabel,
    pub patient: Option<String>,
}

/// Parses a C-NMC name `UID_<patient>_<image>_<cell>_<all|hem>.<ext>`.
pub fn parse_cnmc(file_name: &str) -> Option<Labelled> {
    let stem = file_name.rsplit_once('.').map(|(s, _)| s).unwrap_or(file_name);
    let rest = stem.strip_prefix("UID_")?;
    let parts: Vec<&str> = rest.split('_').collect();
    if parts.len() != 4 || parts[0].is_empty() || !parts[0].chars().all(|c| c.is_ascii_alphanumeric()) {
        return None;
    }
    if !parts[1].chars().all(|c| c.is_ascii_digit()) || !parts[2].chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let label = match parts[3].to_ascii_lowercase().as_str() {
        "all" => BinaryLabel::Leukemia,
        "hem" => BinaryLabel::Healthy,
        _ => return None,
    };
    Some(Labelled { class: parts[3].to_ascii_lowercase(), label, patient: Some(parts[0].to_owned()) })
}

/// Parses an ALL-IDB name `ImNNN_<0|1>.<ext>`.
pub fn parse_all_idb(file_name: &str) -> Option<Labelled> {
    let stem = file_name.rsplit_once('.').map(|(s, _)| s)?;
    let rest = stem.strip_prefix("Im")?;
    let (num, flag) = rest.split_once('_')?;
    if num.is_empty() || !num.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let (class, label) = match flag {
        "1" => ("blast", BinaryLabel::Leukemia),
        "0" => ("healthy", BinaryLabel::Healthy),
        _ => return None,
    };
    Some(Labelled { class: class.to_owned(), label, patient: None })
}

/// The binary label a class-folder name implies, when it is one of the usual names.
pub fn binary_label_for_name(name: &str) -> Option<BinaryLabel> {
    const HEALTHY: [&str; 9] =
        ["healthy", "benign", "hem", "normal", "negative", "neg", "0", "hematogone", "hematogones"];
    const LEUKEMIA: [&str; 12] =
        ["leukemia", "leukaemia", "all", "blast", "blasts", "malignant", "positive", "pos", "1", "early", "pre", "pro"];
    let n = name.to_ascii_lowercase();
    if HEALTHY.contains(&n.as_str()) {
        Some(BinaryLabel::Healthy)
    } else if LEUKEMIA.contains(&n.as_str()) {
        Some(BinaryLabel::Leukemia)
    } else {
        None
    }
}

/// A user label map, `--map "hem=healthy,all=leukemia"`: class name -> binary label.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabelMap(pub BTreeMap<String, BinaryLabel>);

impl LabelMap {
    pub fn parse(spec: &str) -> Result<Self, DataError> {
        let mut map = BTreeMap::new();
        for pair in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (k, v) = pair.split_once('=').ok_or_else(|| DataError::BadMap {
                spec: spec.to_owned(),
                reason: format!("`{pair}` is not NAME=healthy|leukemia"),
            })?;
            let label = match v.trim().to_ascii_lowercase().as_str() {
                "healthy" | "0" | "benign" | "hem" => BinaryLabel::Healthy,
                "leukemia" | "leukaemia" | "1" | "all" | "blast" => BinaryLabel::Leukemia,
                other => {
                    return Err(DataError::BadMap {
                        spec: spec.to_owned(),
                        reason: format!("`{other}` is not `healthy` or `leukemia`"),
                    })
                }
            };
            map.insert(k.trim().to_owned(), label);
        }
        if map.is_empty() {
            return Err(DataError::BadMap { spec: spec.to_owned(), reason: "no NAME=LABEL pair".into() });
        }
        Ok(LabelMap(map))
    }

    pub fn get(&self, class: &str) -> Option<BinaryLabel> {
        self.0
            .get(class)
            .copied()
            .or_else(|| self.0.iter().find(|(k, _)| k.eq_ignore_ascii_case(class)).map(|(_, v)| *v))
    }
}

/// Finds the `Original` folder of an Aria layout (case-insensitive), if `root` is one.
pub fn aria_original(root: &Path) -> Option<std::path::PathBuf> {
    let entries = std::fs::read_dir(root).ok()?;
    for e in entries.flatten() {
        let name = e.file_name();
        if name.to_string_lossy().eq_ignore_ascii_case("original") && e.path().is_dir() {
            let dir = e.path();
            let has_class = ARIA_CLASSES.iter().any(|c| dir.join(c).is_dir());
            if has_class {
                return Some(dir);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cnmc_names() {
        let l = parse_cnmc("UID_H10_187_4_hem.png").unwrap();
        assert_eq!((l.class.as_str(), l.label, l.patient.as_deref()), ("hem", BinaryLabel::Healthy, Some("H10")));
        let l = parse_cnmc("UID_44_2_1_all.bmp").unwrap();
        assert_eq!((l.label, l.patient.as_deref()), (BinaryLabel::Leukemia, Some("44")));
        assert!(parse_cnmc("UID_44_2_all.bmp").is_none());
        assert!(parse_cnmc("UID_44_x_1_all.bmp").is_none());
        assert!(parse_cnmc("WBC-Benign-001.jpg").is_none());
    }

    #[test]
    fn all_idb_names() {
        assert_eq!(parse_all_idb("Im001_1.tif").unwrap().label, BinaryLabel::Leukemia);
        assert_eq!(parse_all_idb("Im130_0.jpg").unwrap().label, BinaryLabel::Healthy);
        assert!(parse_all_idb("Im130_2.jpg").is_none());
        assert!(parse_all_idb("Image_1.jpg").is_none());
    }

    #[test]
    fn label_map() {
        let m = LabelMap::parse("hem=healthy, all=leukemia").unwrap();
        assert_eq!(m.get("HEM"), Some(BinaryLabel::Healthy));
        assert_eq!(m.get("all"), Some(BinaryLabel::Leukemia));
        assert!(LabelMap::parse("hem:healthy").is_err());
        assert!(LabelMap::parse("hem=sick").is_err());
        assert_eq!(binary_label_for_name("Benign"), Some(BinaryLabel::Healthy));
        assert_eq!(binary_label_for_name("Pro"), Some(BinaryLabel::Leukemia));
        assert_eq!(binary_label_for_name("cats"), None);
    }
}
