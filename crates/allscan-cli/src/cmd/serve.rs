//! `allscan serve RUN [--addr 127.0.0.1:8080] [--token T]`: the web page and JSON API of
//! `allscan_server` for one trained run, on loopback unless told otherwise. Any other
//! address prints a warning; a token (`--token` or `ALLSCAN_TOKEN`) makes every `/api/*`
//! route require `Authorization: Bearer <token>` (the page takes it as `/?token=...`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use allscan_server::{AppState, ServerConfig};
use anyhow::Context;

use super::predict::load_predictor;

/// Options of `allscan serve`.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// The trained run directory (bundle).
    pub run: PathBuf,
    /// Address to listen on (loopback by default; another interface exposes the service).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub addr: SocketAddr,
    /// Requests processed at once; more get 503 with Retry-After (default: CPU threads).
    #[arg(long)]
    pub max_concurrent: Option<usize>,
    /// Largest request body in MiB.
    #[arg(long, default_value_t = 32)]
    pub max_body_mib: usize,
    /// Largest image in megapixels.
    #[arg(long, default_value_t = 40.0)]
    pub max_megapixels: f64,
    /// Largest total of all images of one request in megapixels, read from the image headers
    /// before decoding (413 above it).
    #[arg(long, default_value_t = 80.0)]
    pub max_request_megapixels: f64,
    /// Largest total of megapixels being decoded at once across all requests (503 above it).
    #[arg(long, default_value_t = 160.0)]
    pub max_inflight_megapixels: f64,
    /// Time limit in seconds for decoding and prediction, once the upload is read (504 after it).
    #[arg(long, default_value_t = 60)]
    pub timeout_s: u64,
    /// Time limit in seconds for receiving the whole upload (408 after it); no processing slot
    /// is held meanwhile.
    #[arg(long, default_value_t = 30)]
    pub body_timeout_s: u64,
    /// Time limit in seconds for a connection to send its request headers (closed after it).
    #[arg(long, default_value_t = 10)]
    pub header_timeout_s: u64,
    /// Require `Authorization: Bearer TOKEN` on every /api/* route (default: the ALLSCAN_TOKEN
    /// environment variable; none when neither is set). The web page takes it as /?token=TOKEN.
    #[arg(long)]
    pub token: Option<String>,
}

/// The token from `--token`, else from `ALLSCAN_TOKEN`; empty means none.
fn token(flag: Option<String>) -> Option<String> {
    flag.or_else(|| std::env::var("ALLSCAN_TOKEN").ok()).map(|t| t.trim().to_string()).filter(|t| !t.is_empty())
}

fn megapixels(mp: f64) -> u64 {
    (mp.max(0.0) * 1e6) as u64
}

pub fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let (bundle, predictor) = load_predictor(&args.run)?;
    let mut info = serde_json::to_value(&bundle.metadata).context("serialising the bundle metadata")?;
    if let Some(o) = info.as_object_mut() {
        // The preprocessing is stored once, in config.json; /api/model still shows it beside
        // what training produced, with the input size and normalisation drawn from it.
        let p = bundle.preprocess();
        o.insert("preprocess".into(), serde_json::to_value(p).context("serialising the preprocessing")?);
        o.insert("input_size".into(), p.input_size.into());
        o.insert("normalization".into(), serde_json::to_value(&p.normalization).context("serialising it")?);
        o.insert("run".into(), serde_json::Value::String(bundle.dir.display().to_string()));
    }
    let mut config = ServerConfig {
        max_body_bytes: args.max_body_mib.saturating_mul(1024 * 1024),
        max_image_pixels: megapixels(args.max_megapixels),
        max_request_pixels: megapixels(args.max_request_megapixels),
        max_inflight_pixels: megapixels(args.max_inflight_megapixels),
        request_timeout: Duration::from_secs(args.timeout_s.max(1)),
        body_read_timeout: Duration::from_secs(args.body_timeout_s.max(1)),
        header_read_timeout: Duration::from_secs(args.header_timeout_s.max(1)),
        token: token(args.token),
        ..ServerConfig::default()
    };
    let has_token = config.token.is_some();
    if let Some(n) = args.max_concurrent {
        config.max_concurrent = n.max(1);
    }
    let state = AppState::new(predictor, info, config);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the runtime")?;
    rt.block_on(async {
        let listener =
            tokio::net::TcpListener::bind(args.addr).await.with_context(|| format!("binding {}", args.addr))?;
        let local = listener.local_addr().context("reading the bound address")?;
        // One write, errors ignored: a closed stdout (a supervisor that read the address and
        // went away) must not take the server down.
        {
            use std::io::Write;
            let mut out = std::io::stdout().lock();
            let _ = writeln!(
                out,
                "allscan serving {} on http://{local}/ (Ctrl-C stops it)\nResearch use only, not a diagnostic device.",
                args.run.display()
            );
            let _ = out.flush();
        }
        if !local.ip().is_loopback() {
            let auth = if has_token {
                "every /api/* call needs the token"
            } else {
                "anyone who can reach it can use it (no --token / ALLSCAN_TOKEN set)"
            };
            eprintln!(
                "warning: listening on {local}, which is not a loopback address: the service is \
                 reachable from other machines and {auth}; traffic is plain HTTP (put TLS in front)."
            );
        }
        allscan_server::serve(listener, state).await.context("serving")
    })?;
    Ok(ExitCode::SUCCESS)
}
