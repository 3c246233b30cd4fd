//! Changes to a profile's defaults, one path for all of them: `allscan train`'s typed flags
//! (`--epochs`, `--input-size`, `--view`, `--batch-size`, `--unfreeze`, `--weights`) are sugar
//! for `--set KEY=VALUE`, each an [`Override`] of a key as in `config.json`, applied by
//! [`apply_overrides`].
//!
//! Order: the profile's defaults, then the typed flags, then the `--set`s in command-line order
//! (of two `--set`s of one key the later wins). A typed flag and a `--set` that reach the same
//! key, or one inside the other (`--epochs 5` and `--set train.stage2={...}`), are an error:
//! the command line says two things about one setting and neither reading is safe to guess.

use std::fmt::Display;

use allscan_preprocess::SegmentMode;
use serde::Serialize;
use serde_json::Value;

use super::{ConfigError, ProfileDefaults, WeightsSource};

/// Where an override came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// A typed flag (its spelling, e.g. `--input-size`).
    Flag(&'static str),
    /// `--set KEY=VALUE`.
    Set,
}

/// One change to the config tree: a dotted key as in `config.json` (`train.stage2.epochs`,
/// `preprocess.input_size`, `model.backbone.block_config`, `weights`) and its new value.
#[derive(Debug, Clone, PartialEq)]
pub struct Override {
    /// The dotted key; it must already exist in the tree.
    pub key: String,
    /// The new value.
    pub value: Value,
    /// The flag or `--set` it came from.
    pub origin: Origin,
    /// As the command line said it, for errors (`--input-size 64`, `--set train.shards=0`).
    said: String,
}

impl Override {
    /// `--set KEY=VALUE`: `VALUE` is read as JSON when it parses (`0.1`, `[4,8,12,8]`, `null`)
    /// and as a string otherwise.
    pub fn set(arg: &str) -> Result<Self, ConfigError> {
        let (key, value) =
            arg.split_once('=').ok_or_else(|| ConfigError(format!("--set {arg}: expected KEY=VALUE")))?;
        let value = serde_json::from_str(value.trim()).unwrap_or_else(|_| Value::String(value.trim().into()));
        Ok(Self { key: key.trim().into(), value, origin: Origin::Set, said: format!("--set {arg}") })
    }

    /// A typed flag setting `key`.
    fn flag(flag: &'static str, shown: impl Display, key: &str, value: impl Serialize) -> Self {
        // The values below are numbers, strings and string lists: serialising cannot fail.
        let value = serde_json::to_value(value).unwrap_or(Value::Null);
        Self { key: key.into(), value, origin: Origin::Flag(flag), said: format!("{flag} {shown}") }
    }

    /// `--epochs`: the epochs of stage 1 or 2.
    pub fn epochs(stage: u8, epochs: usize) -> Self {
        let key = if stage == 1 { "train.stage1.epochs" } else { "train.stage2.epochs" };
        Self::flag("--epochs", format!("(stage {stage}: {epochs})"), key, epochs)
    }

    /// `--input-size`: the model input side in pixels.
    pub fn input_size(px: u32) -> Self {
        Self::flag("--input-size", px, "preprocess.input_size", px)
    }

    /// `--view`: what the model sees of a field.
    pub fn view(mode: SegmentMode) -> Self {
        Self::flag("--view", mode, "preprocess.mode", mode)
    }

    /// `--batch-size`: images per optimiser step.
    pub fn batch_size(n: usize) -> Self {
        Self::flag("--batch-size", n, "train.batch_size", n)
    }

    /// `--unfreeze`: the stage-2 trainable parts.
    pub fn unfreeze(parts: &[String]) -> Self {
        Self::flag("--unfreeze", parts.join(","), "train.stage2.unfreeze", parts)
    }

    /// `--weights`: the backbone's starting weights.
    pub fn weights(source: &WeightsSource) -> Self {
        let shown = match source {
            WeightsSource::Imagenet => "imagenet".to_string(),
            WeightsSource::None => "none".to_string(),
            WeightsSource::Path(p) => p.clone(),
        };
        Self::flag("--weights", shown, "weights", source)
    }

    /// Whether the two keys name the same setting or one holds the other.
    fn overlaps(&self, other: &Override) -> bool {
        let inside = |a: &str, b: &str| a == b || a.strip_prefix(b).is_some_and(|rest| rest.starts_with('.'));
        inside(&self.key, &other.key) || inside(&other.key, &self.key)
    }
}

/// Applies `overrides` to a profile's defaults (`model`, `preprocess`, `train` and `weights`
/// of the config tree) in the order the module states: typed flags first, then the `--set`s,
/// each group in the order given. The result must read back as a tree; whether its values
/// can train is for the caller's validation.
pub fn apply_overrides(defaults: ProfileDefaults, overrides: &[Override]) -> Result<ProfileDefaults, ConfigError> {
    let (flags, sets): (Vec<&Override>, Vec<&Override>) =
        overrides.iter().partition(|o| matches!(o.origin, Origin::Flag(_)));
    for s in &sets {
        if let Some(f) = flags.iter().find(|f| f.overlaps(s)) {
            return Err(ConfigError(format!(
                "{} and {} both set `{}`: give one of them",
                f.said,
                s.said,
                if f.key.len() >= s.key.len() { &f.key } else { &s.key }
            )));
        }
    }
    let ProfileDefaults { model, preprocess, train, weights } = defaults;
    let mut tree = serde_json::json!({ "model": model, "preprocess": preprocess, "train": train, "weights": weights });
    for o in flags.iter().chain(&sets) {
        let mut node = &mut tree;
        for part in o.key.split('.') {
            node = match node {
                Value::Object(m) => m.get_mut(part),
                Value::Array(a) => part.parse::<usize>().ok().and_then(|i| a.get_mut(i)),
                _ => None,
            }
            .ok_or_else(|| {
                ConfigError(format!(
                    "{}: the config tree has no `{}` (model.*, preprocess.*, train.*, weights)",
                    o.said, o.key
                ))
            })?;
        }
        *node = o.value.clone();
    }
    let mut part = |name: &str| tree.get_mut(name).map(Value::take).unwrap_or_default();
    let (model, preprocess, train, weights) = (part("model"), part("preprocess"), part("train"), part("weights"));
    let err = |e: serde_json::Error| {
        let said: Vec<&str> = flags.iter().chain(&sets).map(|o| o.said.as_str()).collect();
        ConfigError(format!("{}: the changed config does not read back: {e}", said.join(", ")))
    };
    Ok(ProfileDefaults {
        model: serde_json::from_value(model).map_err(err)?,
        preprocess: serde_json::from_value(preprocess).map_err(err)?,
        train: serde_json::from_value(train).map_err(err)?,
        weights: serde_json::from_value(weights).map_err(err)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Profile, TaskKind};

    fn defaults() -> ProfileDefaults {
        Profile::Cpu.defaults(TaskKind::Binary, 2)
    }

    fn set(arg: &str) -> Override {
        Override::set(arg).unwrap()
    }

    #[test]
    fn typed_flags_set_the_same_keys_as_set() {
        let by_flags = apply_overrides(
            defaults(),
            &[
                Override::epochs(1, 2),
                Override::epochs(2, 3),
                Override::input_size(48),
                Override::view(SegmentMode::Nucleus),
                Override::batch_size(8),
                Override::unfreeze(&["denseblock4".into(), "norm5".into()]),
                Override::weights(&WeightsSource::Path("b.pth".into())),
            ],
        )
        .unwrap();
        let by_sets = apply_overrides(
            defaults(),
            &[
                set("train.stage1.epochs=2"),
                set("train.stage2.epochs=3"),
                set("preprocess.input_size=48"),
                set("preprocess.mode=nucleus"),
                set("train.batch_size=8"),
                set(r#"train.stage2.unfreeze=["denseblock4","norm5"]"#),
                set(r#"weights={"kind":"path","path":"b.pth"}"#),
            ],
        )
        .unwrap();
        for d in [&by_flags, &by_sets] {
            assert_eq!((d.train.stage1.epochs, d.train.stage2.epochs, d.train.batch_size), (2, 3, 8));
            assert_eq!((d.preprocess.input_size, d.preprocess.mode), (48, SegmentMode::Nucleus));
            assert_eq!(d.train.stage2.unfreeze, ["denseblock4", "norm5"]);
            assert_eq!(d.weights, WeightsSource::Path("b.pth".into()));
        }
        assert_eq!(by_flags.model, by_sets.model);
        assert_eq!(by_flags.preprocess, by_sets.preprocess);
        assert_eq!(by_flags.train, by_sets.train);
        // Nothing given: the profile's defaults.
        let d = apply_overrides(defaults(), &[]).unwrap();
        assert_eq!((d.train, d.preprocess), (defaults().train, defaults().preprocess));
    }

    #[test]
    fn the_order_is_profile_then_flags_then_sets_and_a_later_set_wins() {
        // Given in any order, flags apply before sets: a set of another key keeps the flag's.
        let d = apply_overrides(
            defaults(),
            &[set("train.augment.hue=0"), Override::input_size(48), set("train.augment.hue=0.01")],
        )
        .unwrap();
        assert_eq!((d.preprocess.input_size, d.train.augment.hue), (48, 0.01));
        // A set may replace a whole part; the flags' keys elsewhere are kept.
        let stage2 = serde_json::to_string(&defaults().train.stage2).unwrap().replace("\"epochs\":75", "\"epochs\":4");
        let d = apply_overrides(defaults(), &[Override::epochs(1, 2), set(&format!("train.stage2={stage2}"))]).unwrap();
        assert_eq!((d.train.stage1.epochs, d.train.stage2.epochs), (2, 4));
    }

    #[test]
    fn a_flag_and_a_set_of_one_setting_are_an_error_naming_both() {
        for (flag, s) in [
            (Override::input_size(48), set("preprocess.input_size=64")),
            (Override::epochs(2, 5), set("train.stage2={}")),
            (Override::weights(&WeightsSource::Imagenet), set("weights.kind=none")),
        ] {
            let err = apply_overrides(defaults(), &[flag.clone(), s.clone()]).unwrap_err().to_string();
            assert!(err.contains(&flag.said) && err.contains(&s.said), "{err}");
        }
        // Keys that only share a prefix of their names are different settings.
        apply_overrides(defaults(), &[Override::epochs(1, 1), set("train.stage1.lr=0.01")]).unwrap();
    }

    #[test]
    fn the_gemm_precision_is_a_setting_and_only_fp32_or_bf16() {
        assert_eq!(defaults().train.precision, densenet_burn::bf16::Precision::Fp32);
        let d = apply_overrides(defaults(), &[set("train.precision=bf16")]).unwrap();
        assert_eq!(d.train.precision, densenet_burn::bf16::Precision::Bf16);
        let err = apply_overrides(defaults(), &[set("train.precision=fp16")]).unwrap_err().to_string();
        assert!(err.contains("--set train.precision=fp16"), "{err}");
    }

    #[test]
    fn unknown_keys_and_values_that_do_not_fit_are_refused() {
        let err = apply_overrides(defaults(), &[set("train.augment.hue_shift=0")]).unwrap_err().to_string();
        assert!(err.contains("--set train.augment.hue_shift=0") && err.contains("has no"), "{err}");
        let err = apply_overrides(defaults(), &[set("train.batch_size=many")]).unwrap_err().to_string();
        assert!(err.contains("does not read back"), "{err}");
        assert!(Override::set("train.batch_size").unwrap_err().to_string().contains("KEY=VALUE"));
    }
}
