//! Evaluation stage, leakage checks: the images of the training and test parts (path, patient
//! id, content hash, perceptual hash) in, warnings out.
//!
//! A test figure means something only if the test images are new to the model. Three ways they
//! are not: the same patient in both parts (cells of one patient look alike), the same file in
//! both parts (byte-identical), or a near-copy (re-saved, resized or recompressed image). And
//! without patient ids the split can only be by image, so the first cannot even be checked.
//!
//! Near-copies are found with a 64-bit perceptual hash computed by the caller: the data stage's
//! `data::phash::phash`, with its tuned `NEAR_DUPLICATE_MAX_DISTANCE` as `max_distance`, so
//! that the split and the evaluation agree on what a near-copy is.

use std::collections::{BTreeSet, HashMap};

/// Examples named per warning.
const EXAMPLES: usize = 3;

/// One image of a part, as the leakage check sees it.
#[derive(Debug, Clone, Default)]
pub struct LeakageItem {
    /// Path or id, for the warning text.
    pub id: String,
    pub patient: Option<String>,
    /// Hash of the file bytes (e.g. SHA-256 hex).
    pub content_hash: Option<String>,
    /// Perceptual hash of the decoded image.
    pub near_hash: Option<u64>,
}

/// The two parts to compare.
#[derive(Debug, Clone, Default)]
pub struct LeakageInput {
    pub train: Vec<LeakageItem>,
    pub test: Vec<LeakageItem>,
}

fn plural(n: usize, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

fn examples<'a>(items: impl Iterator<Item = &'a str>) -> String {
    let v: Vec<&str> = items.take(EXAMPLES).collect();
    v.join(", ")
}

/// Warnings about the split, in order of severity; empty when none apply. Two images whose
/// perceptual hashes differ in at most `max_distance` bits are near-copies.
pub fn leakage_warnings(input: &LeakageInput, max_distance: u32) -> Vec<String> {
    let mut out = Vec::new();
    let all = || input.train.iter().chain(&input.test);
    let n_all = input.train.len() + input.test.len();
    let n_with_patient = all().filter(|i| i.patient.is_some()).count();

    // Patients in both parts.
    if n_with_patient == 0 && n_all > 0 {
        out.push(
            "no patient ids: the split is by image, so images of one patient may sit in both \
             training and test parts and the test figures may be optimistic"
                .to_string(),
        );
    } else {
        if n_with_patient < n_all {
            out.push(format!(
                "{} of {n_all} images have no patient id: they could not be checked for \
                 patients shared between parts",
                n_all - n_with_patient
            ));
        }
        let train_patients: BTreeSet<&str> = input.train.iter().filter_map(|i| i.patient.as_deref()).collect();
        let shared: BTreeSet<&str> =
            input.test.iter().filter_map(|i| i.patient.as_deref()).filter(|p| train_patients.contains(p)).collect();
        if !shared.is_empty() {
            let n_images =
                input.test.iter().filter(|i| i.patient.as_deref().is_some_and(|p| shared.contains(p))).count();
            out.push(format!(
                "{} ({n_images} test images) appear in both training and test parts (e.g. {})",
                plural(shared.len(), "patient"),
                examples(shared.iter().copied())
            ));
        }
    }

    // Byte-identical files.
    let train_by_hash: HashMap<&str, &str> =
        input.train.iter().filter_map(|i| i.content_hash.as_deref().map(|h| (h, i.id.as_str()))).collect();
    let exact: Vec<(&str, &str)> = input
        .test
        .iter()
        .filter_map(|i| {
            let h = i.content_hash.as_deref()?;
            train_by_hash.get(h).map(|t| (i.id.as_str(), *t))
        })
        .collect();
    if !exact.is_empty() {
        out.push(format!(
            "{} test images are byte-identical to training images (e.g. {})",
            exact.len(),
            examples(exact.iter().map(|(a, _)| *a))
        ));
    }
    let exact_ids: BTreeSet<&str> = exact.iter().map(|(a, _)| *a).collect();

    // Near-copies (not already counted as exact).
    let train_hashes: Vec<(u64, &str)> =
        input.train.iter().filter_map(|i| i.near_hash.map(|h| (h, i.id.as_str()))).collect();
    let mut near = Vec::new();
    for item in &input.test {
        let Some(h) = item.near_hash else { continue };
        if exact_ids.contains(item.id.as_str()) {
            continue;
        }
        if let Some((_, t)) = train_hashes.iter().find(|(th, _)| (th ^ h).count_ones() <= max_distance) {
            near.push(format!("{} ~ {}", item.id, t));
        }
    }
    if !near.is_empty() {
        out.push(format!(
            "{} test images are near-copies of training images (perceptual hash within {} \
             bits; e.g. {})",
            near.len(),
            max_distance,
            examples(near.iter().map(String::as_str))
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(id: &str, patient: Option<&str>, hash: Option<&str>, near_hash: Option<u64>) -> LeakageItem {
        LeakageItem {
            id: id.to_string(),
            patient: patient.map(str::to_string),
            content_hash: hash.map(str::to_string),
            near_hash,
        }
    }

    #[test]
    fn clean_split_has_no_warnings() {
        let input = LeakageInput {
            train: vec![item("a.png", Some("P1"), Some("h1"), Some(0))],
            test: vec![item("b.png", Some("P2"), Some("h2"), Some(u64::MAX))],
        };
        assert!(leakage_warnings(&input, 4).is_empty());
    }

    #[test]
    fn finds_shared_patients_copies_and_missing_ids() {
        let input = LeakageInput {
            train: vec![
                item("a.png", Some("P1"), Some("h1"), Some(0b1111_0000)),
                item("b.png", None, Some("h2"), Some(u64::MAX)),
            ],
            test: vec![
                item("c.png", Some("P1"), Some("h1"), Some(0b1111_0000)),
                item("d.png", Some("P3"), Some("h4"), Some(0b1111_0011)),
            ],
        };
        let w = leakage_warnings(&input, 4);
        assert_eq!(w.len(), 4, "{w:#?}");
        assert!(w[0].starts_with("1 of 4 images have no patient id"));
        assert!(w[1].starts_with("1 patient (1 test images)"));
        assert!(w[2].contains("byte-identical") && w[2].contains("c.png"));
        assert!(w[3].contains("near-copies") && w[3].contains("d.png ~ a.png"));
    }

    #[test]
    fn no_patient_ids_at_all() {
        let input =
            LeakageInput { train: vec![item("a.png", None, None, None)], test: vec![item("b.png", None, None, None)] };
        let w = leakage_warnings(&input, 4);
        assert_eq!(w.len(), 1);
        assert!(w[0].starts_with("no patient ids"));
    }
}
