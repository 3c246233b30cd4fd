//! `allscan serve RUN [--addr 127.0.0.1:8080]`: the web page and JSON API of
//! `allscan_server` for one trained run, on loopback unless told otherwise.

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
    /// Per-request time limit in seconds (504 after it).
    #[arg(long, default_value_t = 60)]
    pub timeout_s: u64,
}

pub fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let (bundle, predictor) = load_predictor(&args.run)?;
    let mut info = serde_json::to_value(&bundle.metadata).context("serialising the bundle metadata")?;
    if let Some(o) = info.as_object_mut() {
        o.insert("run".into(), serde_json::Value::String(bundle.dir.display().to_string()));
    }
    let mut config = ServerConfig {
        max_body_bytes: args.max_body_mib.saturating_mul(1024 * 1024),
        max_image_pixels: (args.max_megapixels.max(0.0) * 1e6) as u64,
        request_timeout: Duration::from_secs(args.timeout_s.max(1)),
        ..ServerConfig::default()
    };
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
        allscan_server::serve(listener, state).await.context("serving")
    })?;
    Ok(ExitCode::SUCCESS)
}
