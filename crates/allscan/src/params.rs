//! Parameter ids that depend only on a module's structure: Burn gives every parameter a random
//! [`ParamId`]; the bundle's weights file and the optimizer state are keyed by them, so a model
//! built twice from one config gets the same ids ([`with_path_ids`]) and the weights written
//! for it are byte-identical (`crate::bundle::weights_bytes`).

use burn::module::{Module, ModuleMapper, Param, ParamId};
use burn::tensor::{Bool, Int, Tensor};
use sha2::{Digest, Sha256};

/// The parameter id of the tensor at dotted module path `path` (e.g.
/// `backbone.features.conv0.weight`): the first 8 bytes of SHA-256 of the path. Unique within
/// a module as its paths are; the same in every process and every run.
pub fn path_param_id(path: &str) -> ParamId {
    let digest = Sha256::digest(path.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    ParamId::from(u64::from_le_bytes(first))
}

/// `module` with every parameter's id set to [`path_param_id`] of its path, so that the ids a
/// live model trains with (and its optimizer state is keyed by) are the ones
/// [`save_weights`] writes. BatchNorm running statistics keep their own ids: Burn's
/// `RunningState` ignores an id a mapper returns, and no optimizer is keyed by them.
pub fn with_path_ids<M: Module>(module: M) -> M {
    struct PathIds(Vec<String>);
    impl PathIds {
        fn id(&self) -> ParamId {
            path_param_id(&self.0.join("."))
        }
    }
    impl ModuleMapper for PathIds {
        fn enter_module(&mut self, name: &str, _container_type: &str) {
            self.0.push(name.to_string());
        }
        fn exit_module(&mut self, _name: &str, _container_type: &str) {
            self.0.pop();
        }
        fn map_float<const D: usize>(&mut self, mut param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            param.id = self.id();
            param
        }
        fn map_int<const D: usize>(&mut self, mut param: Param<Tensor<D, Int>>) -> Param<Tensor<D, Int>> {
            param.id = self.id();
            param
        }
        fn map_bool<const D: usize>(&mut self, mut param: Param<Tensor<D, Bool>>) -> Param<Tensor<D, Bool>> {
            param.id = self.id();
            param
        }
    }
    module.map(&mut PathIds(Vec::new()))
}
