//! Training-step benchmark, Burn side: the seed's classifier (DenseNet201 + MLP head, random
//! init) on an autodiff device (Flex by default; `--device cuda|wgpu` in a build with that
//! feature); one step = forward, BCE loss, backward, Adam update. Prints one JSON line (median
//! ms per step, images/s, peak RSS) that `scripts/bench-train.sh` (CPU) and
//! `scripts/bench-gpu.sh` (GPU) set against PyTorch's same step in the same script.

use std::time::Instant;

use allscan::device::DeviceKind;
use allscan::model::ClassifierConfig;
use allscan::train::pass::loss;
use allscan::train::stage::{optimizer, step_in_parts};
use allscan::train::{Profile, TaskKind};
use burn::optim::GradientsParams;
use burn::tensor::{Distribution, Tensor};
use clap::Parser;
use densenet_burn::DenseNetVariant;

/// DenseNet train-step images/s on Burn Flex.
#[derive(Debug, Parser)]
struct Args {
    /// densenet121, densenet169, densenet201, or `cpu` (the cpu profile's slim model).
    #[arg(long, default_value = "densenet201")]
    variant: String,
    /// Images per step.
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// Input side.
    #[arg(long, default_value_t = 224)]
    size: usize,
    /// With `--variant cpu`: another trunk, `growth,init,b1,b2,...` (e.g. `24,48,3,6,8,6`).
    #[arg(long)]
    trunk: Option<String>,
    /// Split each batch into this many parts run on parallel threads (default: the profile's
    /// `train.shards`, as `allscan train` does).
    #[arg(long)]
    shards: Option<usize>,
    /// Timed steps (after the warm-up steps).
    #[arg(long, default_value_t = 3)]
    iters: usize,
    /// Untimed steps first. On a GPU the first steps compile and autotune every kernel.
    #[arg(long, default_value_t = 1)]
    warmup: usize,
    /// cpu (Flex), cuda or wgpu (the last two need `--features cuda` / `--features wgpu`).
    #[arg(long, default_value = "cpu")]
    device: DeviceKind,
    /// The convolutions' gemms: fp32, or bf16 with fp32 accumulation (AMX; fp32 where the CPU
    /// lacks it, and the report says which ran).
    #[arg(long, default_value = "fp32")]
    precision: String,
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
    anyhow::ensure!(args.iters > 0, "--iters must be at least 1");
    let precision = match args.precision.as_str() {
        "fp32" => densenet_burn::bf16::Precision::Fp32,
        "bf16" => densenet_burn::bf16::Precision::Bf16,
        other => anyhow::bail!("--precision {other}: fp32 or bf16"),
    };
    densenet_burn::bf16::set_precision(precision);
    let device = allscan::device::device(args.device)?.autodiff();
    device.seed(0);
    // `cpu`: the cpu profile's slim classifier (4 subtypes) with that profile's stage settings;
    // otherwise a torchvision DenseNet with the paper profile's, so the step is the one
    // `allscan train` runs.
    let (cfg, defaults) = if args.variant == "cpu" {
        let d = Profile::Cpu.defaults(TaskKind::Subtype, 4);
        let mut model = d.model.clone();
        if let Some(t) = &args.trunk {
            let v: Vec<usize> = t.split(',').map(|x| x.trim().parse()).collect::<Result<_, _>>()?;
            anyhow::ensure!(v.len() >= 3, "--trunk growth,init,blocks...");
            model =
                model.with_custom_backbone(densenet_burn::DenseNetConfig::custom(v[0], v[2..].to_vec(), v[1], None));
        }
        (model, d)
    } else {
        let variant = DenseNetVariant::from_name(&args.variant)
            .ok_or_else(|| anyhow::anyhow!("unknown variant {} (densenet121/169/201 or cpu)", args.variant))?;
        (ClassifierConfig::binary(variant), Profile::Paper.defaults(TaskKind::Binary, 2))
    };
    let mut model = cfg.init(&device)?;
    let shards = args.shards.unwrap_or(defaults.train.shards).clamp(1, args.batch);
    let mut optim = optimizer(&defaults.train.stage2, &defaults.train);
    let x = Tensor::<4>::random([args.batch, 3, args.size, args.size], Distribution::Default, &device);
    let targets: Vec<usize> = (0..args.batch).map(|i| i % 2).collect();
    let weights = vec![1.0f32; args.batch];
    let mut times = Vec::new();
    for i in 0..args.warmup + args.iters {
        let t = Instant::now();
        // The batch in `shards` parts on parallel threads, as `allscan train` runs it.
        let per = args.batch / shards;
        let (replica, grads, _) = step_in_parts(model, shards, |k, m| {
            let x = x.clone().narrow(0, k * per, per);
            let (t, w) = (&targets[k * per..(k + 1) * per], &weights[k * per..(k + 1) * per]);
            let l = loss(cfg.task, m.forward(x), t, w, 0.0).div_scalar(shards as f64);
            Ok((GradientsParams::from_grads(l.backward(), m), ()))
        })?;
        model = optim.step(1e-4, replica, grads);
        // Force the update to finish before the clock stops (on a GPU: wait for the queue).
        let _ = model.fc2.weight.val().into_data();
        if i >= args.warmup {
            times.push(t.elapsed().as_secs_f64());
        }
    }
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    println!(
        "{}",
        serde_json::json!({
            "side": "burn", "backend": if args.device == DeviceKind::Cpu { "flex" } else { args.device.name() }, "variant": args.variant, "batch": args.batch, "size": args.size,
            "shards": shards, "precision": if densenet_burn::bf16::active() { "bf16" } else { "fp32" }, "ms_per_step": median * 1e3, "images_per_s": args.batch as f64 / median, "peak_rss_mib": peak_rss_mib(),
        })
    );
    Ok(())
}
