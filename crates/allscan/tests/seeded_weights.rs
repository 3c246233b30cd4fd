//! Seeded initialisation is reproducible byte for byte. Its own test binary: Burn's seeded
//! generator is one per process, and a test drawing from it in another thread between this
//! test's seed and its init made the two saves differ.

use std::path::Path;

use allscan::bundle::testing::BundleFixture;
use allscan::bundle::{save_weights, weights_bytes};
use allscan::config::TaskKind;
use allscan::model::LeukemiaClassifier;
use allscan::params::path_param_id;
use burn::module::Module;
use burn::tensor::Device;

/// (dotted path, id) of every float tensor a module visits.
#[derive(Default)]
struct IdCollector(Vec<(String, u64)>, Vec<String>);
impl burn::module::ModuleVisitor for IdCollector {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.1.push(name.to_string());
    }
    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.1.pop();
    }
    fn visit_float<const D: usize>(&mut self, param: &burn::module::Param<burn::tensor::Tensor<D>>) {
        self.0.push((self.1.join("."), param.id.val()));
    }
}

#[test]
fn the_same_seed_saves_byte_identical_weights_that_load_back() {
    let dir = tempfile::tempdir().unwrap();
    let config = BundleFixture::new(TaskKind::Binary).config;
    let device = Device::flex();
    let mut files = Vec::new();
    let mut models = Vec::new();
    for k in 0..2 {
        device.seed(7);
        let model = config.model.init(&device).unwrap();
        let path = dir.path().join(format!("m{k}.bpk"));
        save_weights(&model, &path).unwrap();
        files.push(std::fs::read(&path).unwrap());
        models.push(model);
    }
    assert!(files[0] == files[1], "two saves of the same seeded model differ");
    // The live ids are the path ids the file records (BatchNorm running statistics aside).
    let ids = |m: &LeukemiaClassifier| {
        let mut c = IdCollector::default();
        m.visit(&mut c);
        c.0
    };
    let live = ids(&models[0]);
    let trainable: Vec<_> =
        live.iter().filter(|(p, _)| !p.ends_with("running_mean") && !p.ends_with("running_var")).collect();
    assert!(trainable.len() > 10 && trainable.iter().any(|(p, _)| p == "fc1.weight"), "{live:?}");
    for (p, id) in &trainable {
        assert_eq!(*id, path_param_id(p).val(), "{p}");
    }
    // A different seed gives different bytes (the test can fail).
    device.seed(8);
    let other = weights_bytes(&config.model.init(&device).unwrap(), Path::new("m.bpk")).unwrap();
    assert!(other != files[0]);
    // Loads back to the same values and the same ids, and re-saves to the same bytes.
    let loaded = config.model.init(&device).unwrap().try_load_file(dir.path().join("m0.bpk")).unwrap();
    let x = burn::tensor::Tensor::<4>::ones([1, 3, 32, 32], &device);
    let a = models[0].valid().forward(x.clone()).into_data().try_to_vec::<f32>().unwrap();
    let c = loaded.valid().forward(x).into_data().try_to_vec::<f32>().unwrap();
    assert_eq!(a, c);
    let loaded_ids = ids(&loaded);
    assert!(trainable.iter().all(|t| loaded_ids.contains(t)));
    assert!(weights_bytes(&loaded, Path::new("m.bpk")).unwrap() == files[0]);
}
