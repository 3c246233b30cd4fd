//! DenseNet hyper-parameters (arXiv:1608.06993, torchvision's `DenseNet` signature).
//!
//! Input: a variant name or custom numbers. Output: a [`DenseNetConfig`] that builds a
//! [`DenseNet`](crate::DenseNet) and round-trips through serde (saved beside every model).

use serde::{Deserialize, Serialize};

use crate::DenseNetError;

/// The three torchvision ImageNet variants this crate has weights for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DenseNetVariant {
    /// Blocks 6/12/24/16, 1,024 final channels, 7.98 M parameters.
    DenseNet121,
    /// Blocks 6/12/32/32, 1,664 final channels, 14.1 M parameters.
    DenseNet169,
    /// Blocks 6/12/48/32, 1,920 final channels, 20.0 M parameters.
    DenseNet201,
}

impl DenseNetVariant {
    /// All variants, smallest first.
    pub const ALL: [DenseNetVariant; 3] = [Self::DenseNet121, Self::DenseNet169, Self::DenseNet201];

    /// Lower-case name as used by torchvision and the CLI (`densenet201`).
    pub fn name(self) -> &'static str {
        match self {
            Self::DenseNet121 => "densenet121",
            Self::DenseNet169 => "densenet169",
            Self::DenseNet201 => "densenet201",
        }
    }

    /// Parses `densenet121|densenet169|densenet201` (case-insensitive, `-`/`_` ignored).
    pub fn from_name(name: &str) -> Option<Self> {
        let norm: String = name.chars().filter(|c| *c != '-' && *c != '_').collect::<String>().to_ascii_lowercase();
        Self::ALL.into_iter().find(|v| v.name() == norm)
    }

    /// Layers per dense block.
    pub fn block_config(self) -> [usize; 4] {
        match self {
            Self::DenseNet121 => [6, 12, 24, 16],
            Self::DenseNet169 => [6, 12, 32, 32],
            Self::DenseNet201 => [6, 12, 48, 32],
        }
    }

    /// Official torchvision file name; its hex suffix is a SHA-256 prefix of the file.
    pub fn torchvision_file_name(self) -> &'static str {
        match self {
            Self::DenseNet121 => "densenet121-a639ec97.pth",
            Self::DenseNet169 => "densenet169-b2777c0a.pth",
            Self::DenseNet201 => "densenet201-c1103571.pth",
        }
    }

    /// Official torchvision download URL (IMAGENET1K_V1 weights).
    pub fn torchvision_url(self) -> String {
        format!("https://download.pytorch.org/models/{}", self.torchvision_file_name())
    }

    /// The ImageNet configuration of this variant (1,000 classes).
    pub fn config(self) -> DenseNetConfig {
        DenseNetConfig {
            growth_rate: 32,
            block_config: self.block_config().to_vec(),
            num_init_features: 64,
            bn_size: 4,
            compression: 0.5,
            num_classes: Some(1000),
        }
    }
}

impl std::fmt::Display for DenseNetVariant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Everything that fixes a DenseNet's structure. torchvision's defaults are growth 32,
/// bn_size 4, 64 initial features and compression 0.5; a slim network (growth 8, blocks
/// 2/2/2/2) trains from scratch on a CPU in minutes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DenseNetConfig {
    /// Channels each dense layer adds (k in the paper).
    pub growth_rate: usize,
    /// Dense layers per block; a transition (compression + 2x2 average pool) sits between blocks.
    pub block_config: Vec<usize>,
    /// Channels out of the 7x7 stem convolution.
    pub num_init_features: usize,
    /// Bottleneck width factor: each 1x1 conv outputs `bn_size * growth_rate` channels.
    pub bn_size: usize,
    /// Fraction of channels a transition keeps (theta in the paper).
    #[serde(default = "default_compression")]
    pub compression: f64,
    /// Size of the final `classifier` Linear; `None` builds the features-only network.
    pub num_classes: Option<usize>,
}

fn default_compression() -> f64 {
    0.5
}

impl DenseNetConfig {
    /// A custom network with torchvision's bn_size 4 and compression 0.5.
    pub fn custom(
        growth_rate: usize,
        block_config: Vec<usize>,
        num_init_features: usize,
        num_classes: Option<usize>,
    ) -> Self {
        Self { growth_rate, block_config, num_init_features, bn_size: 4, compression: 0.5, num_classes }
    }

    /// The same network without the `classifier` layer.
    pub fn features_only(mut self) -> Self {
        self.num_classes = None;
        self
    }

    /// The same network with a `classifier` of `num_classes` outputs.
    pub fn with_num_classes(mut self, num_classes: usize) -> Self {
        self.num_classes = Some(num_classes);
        self
    }

    /// Channels entering each dense block and leaving the last one:
    /// `[in_0, in_1, ..., in_{n-1}, out]` (DenseNet201: 64, 128, 256, 896, 1920).
    pub fn stage_channels(&self) -> Vec<usize> {
        let mut out = Vec::with_capacity(self.block_config.len() + 1);
        let mut c = self.num_init_features;
        for (i, &n) in self.block_config.iter().enumerate() {
            out.push(c);
            c += n * self.growth_rate;
            if i + 1 < self.block_config.len() {
                c = transition_out(c, self.compression);
            }
        }
        out.push(c);
        out
    }

    /// Channels of [`DenseNet::forward_features`](crate::DenseNet::forward_features).
    pub fn num_features(&self) -> usize {
        *self.stage_channels().last().unwrap_or(&self.num_init_features)
    }

    /// Which torchvision variant this is, if any (ignores `num_classes`).
    pub fn variant(&self) -> Option<DenseNetVariant> {
        DenseNetVariant::ALL.into_iter().find(|v| {
            let c = v.config();
            c.growth_rate == self.growth_rate
                && c.block_config == self.block_config
                && c.num_init_features == self.num_init_features
                && c.bn_size == self.bn_size
                && c.compression == self.compression
        })
    }

    /// Rejects configurations that cannot build (zero sizes, empty blocks, bad compression).
    pub fn validate(&self) -> Result<(), DenseNetError> {
        let bad = |reason: String| Err(DenseNetError::InvalidConfig { reason });
        if self.growth_rate == 0 || self.num_init_features == 0 || self.bn_size == 0 {
            return bad(format!(
                "growth_rate ({}), num_init_features ({}) and bn_size ({}) must be > 0",
                self.growth_rate, self.num_init_features, self.bn_size
            ));
        }
        if self.block_config.is_empty() || self.block_config.contains(&0) {
            return bad(format!(
                "block_config {:?} must list at least one block, each with > 0 layers",
                self.block_config
            ));
        }
        if !(self.compression > 0.0 && self.compression <= 1.0) {
            return bad(format!("compression {} must be in (0, 1]", self.compression));
        }
        if self.num_classes == Some(0) {
            return bad("num_classes must be > 0 (or None for features only)".into());
        }
        let mut c = self.num_init_features;
        for (i, &n) in self.block_config.iter().enumerate() {
            c += n * self.growth_rate;
            if i + 1 < self.block_config.len() && transition_out(c, self.compression) == 0 {
                return bad(format!("transition {} would keep 0 channels", i + 1));
            }
            c = transition_out(c, self.compression);
        }
        Ok(())
    }
}

/// torchvision: `num_features = num_features // 2` (generalised to `floor(c * compression)`).
pub(crate) fn transition_out(c: usize, compression: f64) -> usize {
    (c as f64 * compression).floor() as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stage_channels_match_torchvision() {
        assert_eq!(DenseNetVariant::DenseNet121.config().stage_channels(), vec![64, 128, 256, 512, 1024]);
        assert_eq!(DenseNetVariant::DenseNet169.config().stage_channels(), vec![64, 128, 256, 640, 1664]);
        assert_eq!(DenseNetVariant::DenseNet201.config().stage_channels(), vec![64, 128, 256, 896, 1920]);
    }

    #[test]
    fn names_round_trip_and_serde() {
        for v in DenseNetVariant::ALL {
            assert_eq!(DenseNetVariant::from_name(v.name()), Some(v));
            assert_eq!(v.config().variant(), Some(v));
        }
        assert_eq!(DenseNetVariant::from_name("DenseNet-201"), Some(DenseNetVariant::DenseNet201));
        let c = DenseNetConfig::custom(8, vec![2, 2, 2, 2], 16, Some(3));
        let json = serde_json::to_string(&c).unwrap();
        let back: DenseNetConfig = serde_json::from_str(&json).unwrap();
        assert_eq!(back, c);
        assert_eq!(c.variant(), None);
    }

    #[test]
    fn validate_rejects_bad_configs() {
        assert!(DenseNetConfig::custom(0, vec![2], 8, None).validate().is_err());
        assert!(DenseNetConfig::custom(8, vec![], 8, None).validate().is_err());
        assert!(DenseNetConfig::custom(8, vec![2, 0], 8, None).validate().is_err());
        assert!(DenseNetConfig::custom(8, vec![2, 2], 8, Some(0)).validate().is_err());
        assert!(DenseNetConfig::custom(8, vec![2, 2], 8, Some(2)).validate().is_ok());
    }
}
