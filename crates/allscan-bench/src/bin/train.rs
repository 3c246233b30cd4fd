//! Training-step benchmark, Burn side: the seed's classifier (DenseNet201 + MLP head, random
//! init) on the autodiff Flex device; one step = forward, BCE loss, backward, Adam update.
//! Prints one JSON line (median ms per step, images/s, peak RSS) that `scripts/bench-train.sh`
//! sets against PyTorch's same step in the same script.

use std::time::Instant;

use allscan::model::ClassifierConfig;
use allscan::train::stage::{loss, optimizer};
use allscan::train::{Profile, TaskKind};
use burn::optim::GradientsParams;
use burn::tensor::{Device, Distribution, Tensor};
use clap::Parser;
use densenet_burn::DenseNetVariant;

/// DenseNet train-step images/s on Burn Flex.
#[derive(Debug, Parser)]
struct Args {
    /// densenet121, densenet169 or densenet201.
    #[arg(long, default_value = "densenet201")]
    variant: String,
    /// Images per step.
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// Input side.
    #[arg(long, default_value_t = 224)]
    size: usize,
    /// Timed steps (after one warm-up step).
    #[arg(long, default_value_t = 3)]
    iters: usize,
}

fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM:")).map(|l| l.to_string()))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse::<f64>().ok()))
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let variant =
        DenseNetVariant::from_name(&args.variant).ok_or_else(|| anyhow::anyhow!("unknown variant {}", args.variant))?;
    let device = Device::flex().autodiff();
    device.seed(0);
    let cfg = ClassifierConfig::binary(variant);
    let mut model = cfg.init(&device)?;
    // The paper profile's stage settings, so the step is the one `allscan train` runs.
    let defaults = Profile::Paper.defaults(TaskKind::Binary, 2);
    let mut optim = optimizer(&defaults.train.stage2, &defaults.train);
    let x = Tensor::<4>::random([args.batch, 3, args.size, args.size], Distribution::Default, &device);
    let targets: Vec<usize> = (0..args.batch).map(|i| i % 2).collect();
    let weights = vec![1.0f32; args.batch];
    let mut times = Vec::new();
    for i in 0..=args.iters {
        let t = Instant::now();
        let logits = model.forward(x.clone()); // [B, 1]
        let l = loss(cfg.task, logits, &targets, &weights, 0.0);
        let grads = GradientsParams::from_grads(l.backward(), &model);
        model = optim.step(1e-4, model, grads);
        // Force the update to finish before the clock stops.
        let _ = model.fc2.weight.val().into_data();
        if i > 0 {
            times.push(t.elapsed().as_secs_f64());
        }
    }
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    println!(
        "{}",
        serde_json::json!({
            "side": "burn", "backend": "flex", "variant": args.variant, "batch": args.batch, "size": args.size,
            "ms_per_step": median * 1e3, "images_per_s": args.batch as f64 / median, "peak_rss_mib": peak_rss_mib(),
        })
    );
    Ok(())
}
