//! Pretrained backbone weights: fetch torchvision's DenseNet files, import them into Burn's
//! format in a cache directory, check files without saving (DenseNet, arXiv:1608.06993).
//!
//! Input: a variant name or a torchvision `state_dict` file (`densenet201-c1103571.pth`).
//! Output: `<cache>/densenet201-features.bpk` (the features-only backbone in Burn's format) and
//! counts of applied / missing / unused tensors; typed [`WeightsError`]s naming file and key.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use burn::tensor::Device;
use densenet_burn::weights::{apply_torchvision, check_report, load_burnpack, save_burnpack, ImportReport};
use densenet_burn::{DenseNet, DenseNetError, DenseNetVariant};
use sha2::{Digest, Sha256};

/// Environment variable that overrides the cache root (weights go to `$ALLSCAN_HOME/weights`).
pub const HOME_ENV: &str = "ALLSCAN_HOME";

/// Errors from fetching, importing and checking weights.
#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    /// No cache directory could be determined.
    #[error("no cache directory: set {HOME_ENV} (or HOME / XDG_CACHE_HOME / LOCALAPPDATA)")]
    NoCacheDir,
    /// Filesystem failure.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The server could not be reached (offline, DNS, refused).
    #[error(
        "cannot download {url}: {reason}\n\
         Offline? Download {file} on a connected machine and put it at {manual_path}, \
         then run `allscan weights import {manual_path}` (or `allscan weights fetch {variant}` \
         again, which uses that file)"
    )]
    Offline {
        /// The URL tried.
        url: String,
        /// Transport error.
        reason: String,
        /// Official file name.
        file: String,
        /// Where a manually downloaded file is picked up.
        manual_path: PathBuf,
        /// The variant.
        variant: DenseNetVariant,
    },
    /// The download started but did not complete (HTTP error, connection cut).
    #[error("download of {url} failed after {received} bytes: {reason}")]
    Download {
        /// The URL.
        url: String,
        /// Bytes received before the failure.
        received: u64,
        /// What happened.
        reason: String,
    },
    /// The file's SHA-256 does not start with the prefix its name carries.
    #[error("{path}: SHA-256 {actual} does not start with {expected} (corrupt or wrong file)")]
    HashMismatch {
        /// The file (already removed for downloads).
        path: PathBuf,
        /// Prefix from the file name.
        expected: String,
        /// Full hash of what was received.
        actual: String,
    },
    /// The variant could not be determined from the file name or its contents.
    #[error("{path}: cannot tell which DenseNet this is ({reason}); pass --variant")]
    UnknownVariant {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// Loading or saving the network failed (boxed: the key lists make it large).
    #[error(transparent)]
    DenseNet(Box<DenseNetError>),
}

impl From<DenseNetError> for WeightsError {
    fn from(e: DenseNetError) -> Self {
        Self::DenseNet(Box::new(e))
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> WeightsError + '_ {
    move |source| WeightsError::Io { path: path.to_path_buf(), source }
}

/// `$ALLSCAN_HOME/weights`, else the platform cache dir (`$XDG_CACHE_HOME/allscan/weights`,
/// `~/.cache/allscan/weights`, `~/Library/Caches/allscan/weights`,
/// `%LOCALAPPDATA%\allscan\weights`).
pub fn cache_dir() -> Result<PathBuf, WeightsError> {
    let env = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(home) = env(HOME_ENV) {
        return Ok(home.join("weights"));
    }
    let base = if cfg!(target_os = "windows") {
        env("LOCALAPPDATA")
    } else if cfg!(target_os = "macos") {
        env("HOME").map(|h| h.join("Library/Caches"))
    } else {
        env("XDG_CACHE_HOME").or_else(|| env("HOME").map(|h| h.join(".cache")))
    };
    base.map(|b| b.join("allscan").join("weights")).ok_or(WeightsError::NoCacheDir)
}

/// Where the imported features-only backbone of `variant` lives in `dir`.
pub fn backbone_path(dir: &Path, variant: DenseNetVariant) -> PathBuf {
    dir.join(format!("{}-features.bpk", variant.name()))
}

/// The SHA-256 prefix a torchvision file name carries (`densenet201-c1103571.pth` -> `c1103571`).
pub fn sha256_prefix_from_name(path: &Path) -> Option<String> {
    let stem = path.file_stem()?.to_str()?;
    let (_, hash) = stem.rsplit_once('-')?;
    (hash.len() >= 6 && hash.chars().all(|c| c.is_ascii_hexdigit())).then(|| hash.to_ascii_lowercase())
}

/// Hex SHA-256 of a file.
pub fn sha256_file(path: &Path) -> Result<String, WeightsError> {
    let mut file = File::open(path).map_err(io_err(path))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buf).map_err(io_err(path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// What an import did.
#[derive(Debug, Clone)]
pub struct ImportSummary {
    /// The variant imported.
    pub variant: DenseNetVariant,
    /// The Burn-format file written.
    pub saved_to: PathBuf,
    /// Per-tensor counts.
    pub report: ImportReport,
}

/// Guesses the variant from the file name (`densenet201-...`), else from the dense-block
/// layer counts in the file.
fn detect_variant(path: &Path, report: Option<&ImportReport>) -> Option<DenseNetVariant> {
    let name = path.file_name()?.to_str()?.to_ascii_lowercase();
    if let Some(v) = DenseNetVariant::ALL.into_iter().find(|v| name.starts_with(v.name())) {
        return Some(v);
    }
    let blocks = &report?.file_blocks;
    DenseNetVariant::ALL.into_iter().find(|v| v.block_config().as_slice() == blocks.as_slice())
}

/// Applies a torchvision file to a fresh features-only `variant` network (detected from the
/// name or contents when `None`) and reports counts, without saving or judging.
pub fn check(
    path: &Path,
    variant: Option<DenseNetVariant>,
    device: &Device,
) -> Result<(DenseNetVariant, DenseNet, ImportReport), WeightsError> {
    let variant = match variant.or_else(|| detect_variant(path, None)) {
        Some(v) => v,
        None => {
            // Read the keys once with the smallest network to learn the block layout.
            let probe_cfg = DenseNetVariant::DenseNet121.config().features_only();
            let mut probe = DenseNet::new(&probe_cfg, device)?;
            let report = apply_torchvision(&mut probe, &probe_cfg, path)?;
            detect_variant(path, Some(&report)).ok_or_else(|| WeightsError::UnknownVariant {
                path: path.to_path_buf(),
                reason: format!("dense blocks {:?}", report.file_blocks),
            })?
        }
    };
    let config = variant.config().features_only();
    let mut model = DenseNet::new(&config, device)?;
    let report = apply_torchvision(&mut model, &config, path)?;
    Ok((variant, model, report))
}

/// Strict import: checks the SHA-256 prefix if the name carries one, loads every tensor (any
/// missing or unused key other than `num_batches_tracked` and the ImageNet classifier is an
/// error listing the keys) and saves the backbone in Burn's format in `dest_dir`.
pub fn import(
    path: &Path,
    variant: Option<DenseNetVariant>,
    dest_dir: &Path,
    device: &Device,
) -> Result<ImportSummary, WeightsError> {
    if let Some(expected) = sha256_prefix_from_name(path) {
        if path.is_file() {
            let actual = sha256_file(path)?;
            if !actual.starts_with(&expected) {
                return Err(WeightsError::HashMismatch { path: path.to_path_buf(), expected, actual });
            }
        }
    }
    let (variant, model, report) = check(path, variant, device)?;
    check_report(&report, &variant.config().features_only(), path)?;
    std::fs::create_dir_all(dest_dir).map_err(io_err(dest_dir))?;
    let saved_to = backbone_path(dest_dir, variant);
    // Save beside the target and rename, so a reader never sees half a file.
    let tmp = saved_to.with_extension(format!("bpk.part{}", std::process::id()));
    save_burnpack(&model, &tmp)?;
    std::fs::rename(&tmp, &saved_to).map_err(io_err(&saved_to))?;
    Ok(ImportSummary { variant, saved_to, report })
}

/// Loads an imported backbone from the cache (`weights import` / `weights fetch` first).
pub fn load_backbone(dir: &Path, variant: DenseNetVariant, device: &Device) -> Result<DenseNet, WeightsError> {
    let path = backbone_path(dir, variant);
    if !path.is_file() {
        return Err(WeightsError::Io {
            path,
            source: std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("not imported yet; run `allscan weights fetch {variant}`"),
            ),
        });
    }
    Ok(load_burnpack(&variant.config().features_only(), &path, device)?)
}

/// Progress callback for downloads: `(bytes so far, total if known)`.
pub trait Progress {
    /// Called after each chunk.
    fn update(&mut self, done: u64, total: Option<u64>);
}

impl<F: FnMut(u64, Option<u64>)> Progress for F {
    fn update(&mut self, done: u64, total: Option<u64>) {
        self(done, total)
    }
}

/// An indicatif progress bar for a byte download (hidden when stderr is not a terminal).
pub fn progress_bar() -> impl Progress {
    let bar = indicatif::ProgressBar::new(0);
    if let Ok(style) =
        indicatif::ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
    {
        bar.set_style(style);
    }
    move |done: u64, total: Option<u64>| {
        if let Some(t) = total {
            bar.set_length(t);
        }
        bar.set_position(done);
        if total == Some(done) {
            bar.finish_and_clear();
        }
    }
}

/// Downloads `url` to `dest` atomically: the body goes to `dest.part`, is hashed on the way,
/// checked against `sha256_prefix` and the Content-Length, then renamed. On any failure the
/// partial file is removed, so `dest` is either absent or complete.
pub fn download(
    url: &str,
    dest: &Path,
    sha256_prefix: Option<&str>,
    progress: &mut dyn Progress,
    variant: DenseNetVariant,
) -> Result<(), WeightsError> {
    let part = dest.with_extension("part");
    let result = download_to(url, &part, dest, sha256_prefix, progress, variant);
    if result.is_err() {
        let _ = std::fs::remove_file(&part);
    }
    result?;
    std::fs::rename(&part, dest).map_err(io_err(dest))
}

fn download_to(
    url: &str,
    part: &Path,
    dest: &Path,
    sha256_prefix: Option<&str>,
    progress: &mut dyn Progress,
    variant: DenseNetVariant,
) -> Result<(), WeightsError> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_connect(Some(Duration::from_secs(20)))
        .timeout_recv_body(Some(Duration::from_secs(60)))
        .build()
        .into();
    let response = agent.get(url).call().map_err(|e| match e {
        ureq::Error::StatusCode(code) => {
            WeightsError::Download { url: url.to_string(), received: 0, reason: format!("HTTP status {code}") }
        }
        other => WeightsError::Offline {
            url: url.to_string(),
            reason: other.to_string(),
            file: variant.torchvision_file_name().to_string(),
            manual_path: dest.to_path_buf(),
            variant,
        },
    })?;
    let total = response.body().content_length();
    let mut reader = response.into_body().into_reader();
    let mut file = File::create(part).map_err(io_err(part))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut received = 0u64;
    let fail = |received: u64, reason: String| WeightsError::Download { url: url.to_string(), received, reason };
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(fail(received, e.to_string())),
        };
        hasher.update(&buf[..n]);
        file.write_all(&buf[..n]).map_err(io_err(part))?;
        received += n as u64;
        progress.update(received, total);
    }
    if let Some(t) = total {
        if received != t {
            return Err(fail(received, format!("connection closed early: expected {t} bytes")));
        }
    }
    file.sync_all().map_err(io_err(part))?;
    drop(file);
    let actual = hex::encode(hasher.finalize());
    if let Some(expected) = sha256_prefix {
        if !actual.starts_with(&expected.to_ascii_lowercase()) {
            return Err(WeightsError::HashMismatch {
                path: dest.to_path_buf(),
                expected: expected.to_string(),
                actual,
            });
        }
    }
    Ok(())
}

/// What `fetch` did.
#[derive(Debug, Clone)]
pub struct FetchSummary {
    /// The `.pth` file in the cache.
    pub pth: PathBuf,
    /// Whether it was downloaded now (false: a complete file was already there).
    pub downloaded: bool,
    /// The import into Burn's format.
    pub import: ImportSummary,
}

/// Downloads `variant`'s official torchvision file into `dir` (from `base_url` + file name,
/// default `https://download.pytorch.org/models/`), verifies its SHA-256 prefix, then
/// [`import`]s it. A file already at `dir/<official name>` with the right hash is reused, which
/// is also the offline route.
pub fn fetch(
    variant: DenseNetVariant,
    dir: &Path,
    base_url: Option<&str>,
    progress: &mut dyn Progress,
    device: &Device,
) -> Result<FetchSummary, WeightsError> {
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    let file_name = variant.torchvision_file_name();
    let pth = dir.join(file_name);
    let prefix = sha256_prefix_from_name(&pth);
    let have = pth.is_file()
        && match &prefix {
            Some(p) => sha256_file(&pth)?.starts_with(p.as_str()),
            None => true,
        };
    if !have {
        let url = match base_url {
            Some(base) => format!("{}/{file_name}", base.trim_end_matches('/')),
            None => variant.torchvision_url(),
        };
        download(&url, &pth, prefix.as_deref(), progress, variant)?;
    }
    let import = import(&pth, Some(variant), dir, device)?;
    Ok(FetchSummary { pth, downloaded: !have, import })
}

/// Test support shared by this crate's tests and the CLI's: a loopback HTTP server.
#[doc(hidden)]
pub mod testing {
    use std::io::{BufRead, Write};
    use std::net::TcpListener;

    /// A one-shot HTTP server on 127.0.0.1: answers one GET with `body`, announcing `announced`
    /// bytes and cutting the connection after `send` bytes (whatever path is asked for).
    /// Returns the base URL `http://127.0.0.1:PORT/models`.
    pub fn serve_once(body: Vec<u8>, announced: usize, send: usize) -> std::io::Result<String> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        std::thread::spawn(move || {
            if let Ok((mut stream, _)) = listener.accept() {
                let Ok(read_half) = stream.try_clone() else { return };
                let mut reader = std::io::BufReader::new(read_half);
                let mut line = String::new();
                while reader.read_line(&mut line).is_ok() {
                    if line == "\r\n" || line.is_empty() {
                        break;
                    }
                    line.clear();
                }
                let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {announced}\r\nConnection: close\r\n\r\n");
                let _ = stream.write_all(head.as_bytes());
                let _ = stream.write_all(&body[..send.min(body.len())]);
                let _ = stream.flush();
            }
        });
        Ok(format!("http://{addr}/models"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    fn serve(body: Vec<u8>, announced: usize, send: usize) -> String {
        format!("{}/file.pth", super::testing::serve_once(body, announced, send).unwrap())
    }

    fn hash(bytes: &[u8]) -> String {
        hex::encode(Sha256::digest(bytes))
    }

    #[test]
    fn good_file_is_downloaded_and_verified() {
        let body: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let url = serve(body.clone(), body.len(), body.len());
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("w-abc.pth");
        let mut seen = 0;
        download(
            &url,
            &dest,
            Some(&hash(&body)[..8]),
            &mut |d: u64, _t: Option<u64>| seen = d,
            DenseNetVariant::DenseNet121,
        )
        .unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), body);
        assert_eq!(seen, body.len() as u64);
        assert!(!dest.with_extension("part").exists());
    }

    #[test]
    fn wrong_hash_leaves_no_file() {
        let body = vec![7u8; 10_000];
        let url = serve(body.clone(), body.len(), body.len());
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("w.pth");
        let err = download(&url, &dest, Some("00000000"), &mut |_, _| {}, DenseNetVariant::DenseNet121).unwrap_err();
        assert!(matches!(err, WeightsError::HashMismatch { .. }), "{err}");
        assert!(!dest.exists());
        assert!(!dest.with_extension("part").exists());
    }

    #[test]
    fn cut_connection_leaves_no_file() {
        let body = vec![1u8; 100_000];
        let url = serve(body.clone(), body.len(), 30_000);
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("w.pth");
        let err = download(&url, &dest, None, &mut |_, _| {}, DenseNetVariant::DenseNet121).unwrap_err();
        assert!(matches!(err, WeightsError::Download { .. }), "{err}");
        assert!(!dest.exists());
        assert!(!dest.with_extension("part").exists());
    }

    #[test]
    fn unreachable_server_says_where_to_put_the_file() {
        // Bind then drop: the port is (almost certainly) closed.
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let dir = tempfile::tempdir().unwrap();
        let err = fetch(
            DenseNetVariant::DenseNet201,
            dir.path(),
            Some(&format!("http://127.0.0.1:{port}/models")),
            &mut |_, _| {},
            &Device::flex(),
        )
        .unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, WeightsError::Offline { .. }), "{msg}");
        assert!(msg.contains("densenet201-c1103571.pth"), "{msg}");
        assert!(msg.contains(&dir.path().display().to_string()), "{msg}");
    }

    #[test]
    fn name_prefix_is_parsed() {
        assert_eq!(sha256_prefix_from_name(Path::new("/x/densenet201-c1103571.pth")).as_deref(), Some("c1103571"));
        assert_eq!(sha256_prefix_from_name(Path::new("tiny.pth")), None);
    }
}
