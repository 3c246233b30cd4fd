use super::*;
use crate::decision::Decision;
use crate::model::Task;
use allscan_preprocess::{RoiConfig, RoiViews};
use densenet_burn::{DenseNetConfig, DenseNetVariant};

/// A tiny random binary classifier for fast tests.
pub(crate) fn tiny_predictor(task: Task, preprocess: PreprocessConfig) -> Predictor {
    let device = Device::flex();
    let mut config = ClassifierConfig::binary(DenseNetVariant::DenseNet121)
        .with_custom_backbone(DenseNetConfig::custom(4, vec![2, 2], 8, None));
    config.task = task;
    config.hidden = 8;
    let model = config.init(&device).unwrap();
    let (names, leuk): (Vec<String>, Vec<String>) = match task {
        Task::Binary => (vec!["healthy".into(), "leukemia".into()], vec!["leukemia".into()]),
        Task::Subtype { num_classes } => {
            let names: Vec<String> = (0..num_classes).map(|i| format!("c{i}")).collect();
            (names.clone(), names[1..].to_vec())
        }
    };
    Predictor::new(model, config, preprocess, Decision::new(task, names, leuk, 0.5).unwrap()).unwrap()
}

fn small_cfg(views: RoiViews) -> PreprocessConfig {
    PreprocessConfig { input_size: 64, roi: RoiConfig { views, ..Default::default() }, ..Default::default() }
}

#[test]
fn binary_field_prediction_has_cells_and_a_consistent_label() {
    let p = tiny_predictor(Task::Binary, small_cfg(RoiViews::All));
    let mut rng = crate::synth::field_rng(1, 2, 0);
    let field = crate::synth::render_field(2, 128, &mut rng);
    let r = p.predict_field(&field.image).unwrap();
    assert!(!r.cells.is_empty());
    assert!(!r.nuclei.is_empty(), "a synthetic field has a nucleus");
    let max = r.cells.iter().map(|c| c.p_leukemia).fold(0.0f32, f32::max);
    assert_eq!(r.p_leukemia, max);
    assert_eq!(r.prediction == LEUKEMIA, f64::from(r.p_leukemia) >= 0.5);
    assert_eq!(r.probabilities.len(), 2);
    assert!((r.probabilities[0].p + r.probabilities[1].p - 1.0).abs() < 1e-5);
}

#[test]
fn batching_does_not_change_results_and_threshold_moves_the_label() {
    let p = tiny_predictor(Task::Subtype { num_classes: 4 }, small_cfg(RoiViews::Largest));
    let fields: Vec<RgbImage> =
        (0..3).map(|i| crate::synth::render_field(i, 96, &mut crate::synth::field_rng(3, i, i)).image).collect();
    let refs: Vec<&RgbImage> = fields.iter().collect();
    let a: Vec<_> = p.predict_fields(&refs).into_iter().map(Result::unwrap).collect();
    let p = p.with_batch_size(1);
    let b: Vec<_> = p.predict_fields(&refs).into_iter().map(Result::unwrap).collect();
    for (x, y) in a.iter().zip(&b) {
        assert!((x.p_leukemia - y.p_leukemia).abs() < 1e-4);
        assert!(x.subtype.is_some());
        let s: f32 = x.probabilities.iter().map(|c| c.p).sum();
        assert!((s - 1.0).abs() < 1e-4);
    }
    let p0 = p.with_threshold(0.0);
    assert!(p0.predict_fields(&refs).into_iter().all(|r| r.unwrap().prediction == LEUKEMIA));
}

#[test]
fn random_bundles_load_into_predictors() {
    use crate::config::TaskKind;
    for task in [TaskKind::Binary, TaskKind::Subtype] {
        let dir = tempfile::tempdir().unwrap();
        let b = crate::bundle::testing::write_random_bundle(dir.path(), task).unwrap();
        let p = Predictor::from_bundle(&crate::bundle::RunBundle::open(&b.dir).unwrap(), &Device::flex()).unwrap();
        assert_eq!(p.is_subtype(), task == TaskKind::Subtype);
        let f = crate::synth::render_field(1, 96, &mut crate::synth::field_rng(0, 1, 0)).image;
        assert!(p.predict_field(&f).unwrap().cells.len() <= 4);
    }
}

#[test]
fn adapt_reestimates_batchnorm_on_the_images_to_predict() {
    use crate::config::TaskKind;
    let dir = tempfile::tempdir().unwrap();
    let b = crate::bundle::testing::write_random_bundle(dir.path(), TaskKind::Binary).unwrap();
    let bundle = crate::bundle::RunBundle::open(&b.dir).unwrap();
    let p = Predictor::from_bundle(&bundle, &Device::flex()).unwrap();
    let fields: Vec<RgbImage> =
        (0..4).map(|i| crate::synth::render_field(i, 96, &mut crate::synth::field_rng(5, i, i)).image).collect();
    let refs: Vec<&RgbImage> = fields.iter().collect();
    let score =
        |p: &Predictor| -> Vec<f32> { p.predict_fields(&refs).into_iter().map(|r| r.unwrap().p_leukemia).collect() };
    let before = score(&p);
    let (adapted, views) = p.adapt(&bundle, &fields).unwrap();
    assert!(views >= fields.len(), "{views} views of {} fields", fields.len());
    let after = score(&adapted);
    assert!(
        before.iter().zip(&after).any(|(a, b)| (a - b).abs() > 1e-4),
        "the fresh model's unit statistics were kept: {before:?} vs {after:?}"
    );
    // Adapting again on the same images is the same estimate.
    let (again, _) = adapted.adapt(&bundle, &fields).unwrap();
    for (a, b) in after.iter().zip(score(&again)) {
        assert!((a - b).abs() < 1e-4);
    }
    let p = Predictor::from_bundle(&bundle, &Device::flex()).unwrap();
    assert!(matches!(p.adapt(&bundle, &[]), Err(InferError::InvalidConfig(_))));
}

#[test]
fn wrong_class_names_are_rejected() {
    let device = Device::flex();
    let config = ClassifierConfig::binary(DenseNetVariant::DenseNet121).with_custom_backbone(DenseNetConfig::custom(
        4,
        vec![2],
        8,
        None,
    ));
    let model = config.init(&device).unwrap();
    // A subtype decision for a binary head.
    let four =
        Decision::new(Task::Subtype { num_classes: 4 }, ["a", "b", "c", "d"].map(String::from).to_vec(), vec![], 0.5)
            .unwrap();
    let r = Predictor::new(model, config, PreprocessConfig::default(), four);
    assert!(matches!(r, Err(InferError::InvalidConfig(_))), "{r:?}");
}

#[test]
fn no_nucleus_without_fallback_is_an_error() {
    let mut cfg = small_cfg(RoiViews::Largest);
    cfg.roi.fallback_to_field = false;
    let p = tiny_predictor(Task::Binary, cfg);
    let blank = RgbImage::from_pixel(80, 80, image::Rgb([235, 230, 240]));
    assert!(matches!(p.predict_field(&blank), Err(InferError::NoNucleus { .. })));
}
