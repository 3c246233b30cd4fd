//! A throwaway server for the browser test and manual checks: the real `app()` on a tiny
//! random-weight DenseNet (predictions are meaningless, the plumbing is real).
//!
//! Usage: `cargo run -p allscan-server --example tiny_server -- [ADDR] [--sample OUT.png]`.
//! Prints `listening on http://ADDR/` once bound (ADDR defaults to 127.0.0.1:0, any port).

use allscan::infer::Predictor;
use allscan::model::ClassifierConfig;
use allscan_preprocess::{PreprocessConfig, RoiConfig, RoiViews};
use allscan_server::{AppState, ServerConfig};
use burn::tensor::Device;
use densenet_burn::{DenseNetConfig, DenseNetVariant};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut addr = "127.0.0.1:0".to_string();
    let mut i = 0;
    while i < args.len() {
        if args[i] == "--sample" {
            let out = args.get(i + 1).ok_or("--sample needs a path")?;
            let f = allscan::synth::render_field(3, 224, &mut allscan::synth::field_rng(7, 3, 0));
            std::fs::write(out, allscan::explain::png_bytes(&f.image)?)?;
            i += 2;
        } else {
            addr = args[i].clone();
            i += 1;
        }
    }
    let device = Device::flex();
    let mut config = ClassifierConfig::binary(DenseNetVariant::DenseNet121)
        .with_custom_backbone(DenseNetConfig::custom(8, vec![2, 2], 16, None));
    config.hidden = 16;
    let model = config.init(&device)?;
    let preprocess = PreprocessConfig {
        input_size: 96,
        roi: RoiConfig { views: RoiViews::All, ..Default::default() },
        ..Default::default()
    };
    let predictor = Predictor::new(model, config, preprocess, allscan::decision::Decision::binary(0.5)?)?;
    let info = serde_json::json!({
        "task": {"kind": "binary"}, "class_names": ["healthy", "leukemia"], "threshold": 0.5,
        "note": "tiny random-weight model for tests"
    });
    let state = AppState::new(predictor, info, ServerConfig::default());
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind(&addr).await?;
        println!("listening on http://{}/", listener.local_addr()?);
        allscan_server::serve(listener, state).await
    })?;
    Ok(())
}
