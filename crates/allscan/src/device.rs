//! Backend choice, in one place: a [`DeviceKind`] named on the command line (or stored nowhere:
//! the device is a property of the machine, not of the run) -> a Burn [`Device`].
//!
//! The default build has only Burn's pure-Rust `flex` CPU backend. GPU backends are cargo
//! features that compile out by default (they pull in CubeCL):
//!
//! ```text
//! cargo build --release -p allscan-cli --features cuda   # NVIDIA: driver loaded at run time, no toolkit
//! cargo build --release -p allscan-cli --features wgpu   # Vulkan / Metal / DX12 through wgpu
//! allscan train DATA --out RUN --device cuda --set train.shards=1
//! ```
//!
//! The `cuda` release build fetches a prebuilt LLVM in cubecl-llvm's build script (CubeCL compiles
//! kernels to PTX with it); `DOCS_RS=1 cargo check --features cuda` skips that (CI, `.ci/run`).
//!
//! Selecting a device whose feature was not built is a clear error, not a silent CPU fallback.

use burn::tensor::Device;
use serde::{Deserialize, Serialize};

/// The compute device a command runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceKind {
    /// Burn's `flex` backend on the CPU (pure Rust, rayon threads). Always built.
    #[default]
    Cpu,
    /// CUDA GPU 0 (cargo feature `cuda`).
    Cuda,
    /// The best wgpu adapter (cargo feature `wgpu`).
    Wgpu,
}

impl DeviceKind {
    /// Every device kind, built or not.
    pub const ALL: [DeviceKind; 3] = [Self::Cpu, Self::Cuda, Self::Wgpu];

    /// The command-line spelling.
    pub fn name(self) -> &'static str {
        match self {
            Self::Cpu => "cpu",
            Self::Cuda => "cuda",
            Self::Wgpu => "wgpu",
        }
    }

    /// Whether this binary was built with the backend.
    pub fn is_built(self) -> bool {
        match self {
            Self::Cpu => true,
            Self::Cuda => cfg!(feature = "cuda"),
            Self::Wgpu => cfg!(feature = "wgpu"),
        }
    }
}

impl std::str::FromStr for DeviceKind {
    type Err = DeviceError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "cpu" | "flex" => Ok(Self::Cpu),
            "cuda" | "gpu" => Ok(Self::Cuda),
            "wgpu" => Ok(Self::Wgpu),
            other => Err(DeviceError::Unknown(other.to_string())),
        }
    }
}

impl std::fmt::Display for DeviceKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a device cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// Not one of `cpu`, `cuda`, `wgpu`.
    #[error("unknown device `{0}` (cpu, cuda or wgpu)")]
    Unknown(String),
    /// The backend's cargo feature was not compiled in.
    #[error(
        "this allscan was built without the `{0}` backend; rebuild with \
         `cargo build --release -p allscan-cli --features {0}`"
    )]
    NotBuilt(&'static str),
}

/// The inference device (no autodiff) for `kind`. Training calls `.autodiff()` on it.
pub fn device(kind: DeviceKind) -> Result<Device, DeviceError> {
    match kind {
        DeviceKind::Cpu => Ok(Device::flex()),
        #[cfg(feature = "cuda")]
        DeviceKind::Cuda => Ok(Device::cuda(0)),
        #[cfg(not(feature = "cuda"))]
        DeviceKind::Cuda => Err(DeviceError::NotBuilt("cuda")),
        #[cfg(feature = "wgpu")]
        DeviceKind::Wgpu => Ok(Device::wgpu(burn::tensor::DeviceKind::DefaultDevice)),
        #[cfg(not(feature = "wgpu"))]
        DeviceKind::Wgpu => Err(DeviceError::NotBuilt("wgpu")),
    }
}

/// Number of CPU worker threads the `flex` backend's rayon pool uses (all cores unless
/// `RAYON_NUM_THREADS` says otherwise).
pub fn cpu_threads() -> usize {
    std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_is_always_there_and_gpus_say_how_to_build_them() {
        assert!(device(DeviceKind::Cpu).is_ok());
        assert_eq!("CPU".parse::<DeviceKind>().unwrap(), DeviceKind::Cpu);
        assert!("tpu".parse::<DeviceKind>().is_err());
        if !cfg!(feature = "cuda") {
            let e = device(DeviceKind::Cuda).unwrap_err().to_string();
            assert!(e.contains("--features cuda"), "{e}");
        }
    }
}
