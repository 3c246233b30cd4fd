//! Benchmark: DenseNet eval-mode forward speed and peak memory in allscan (Burn Flex), to be
//! compared with PyTorch by `scripts/bench-densenet.sh`, which runs both sides the same way
//! (one process per side and batch size, peak RSS from /proc/self/status VmHWM).
//!
//! Input: variant, batch size, image size, iterations. Output: one JSON line
//! `{"side":"burn", "images_per_s":..., "ms_per_batch":..., "peak_rss_mib":...}` on stdout.

use std::time::Instant;

use anyhow::Context;
use burn::module::Module;
use burn::tensor::{Device, Distribution, Tensor};
use clap::Parser;
use densenet_burn::{DenseNet, DenseNetVariant};

/// Time DenseNet eval-mode forward passes in Burn (random weights; speed does not depend on them).
#[derive(Debug, Parser)]
struct Args {
    /// densenet121, densenet169 or densenet201.
    #[arg(long, default_value = "densenet201")]
    variant: String,
    /// Images per forward pass.
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// Image side in pixels.
    #[arg(long, default_value_t = 224)]
    size: usize,
    /// Timed iterations (after one warm-up pass).
    #[arg(long, default_value_t = 5)]
    iters: usize,
    /// Model path to time: `fast` (BatchNorm folded + the compiled NHWC inference plan; what
    /// `predict` uses), `folded` (BatchNorm folded, Burn modules with preallocated block
    /// buffers), `plain` (eval mode, buffers), or `concat` (eval mode, torchvision's
    /// re-concatenation).
    #[arg(long, default_value = "fast")]
    mode: String,
    /// Also print where one forward pass spends its time (per op kind), on stderr.
    #[arg(long)]
    breakdown: bool,
}

/// Times each kind of op in one eval forward pass (Flex runs eagerly, so wall time per call
/// is the op's cost). Mirrors `DenseBlock::forward_buffer`.
fn breakdown(model: &DenseNet, x: Tensor<4>) {
    use std::collections::BTreeMap;
    let mut t: BTreeMap<&str, f64> = BTreeMap::new();
    let mut time = |k: &'static str, t0: Instant| *t.entry(k).or_default() += t0.elapsed().as_secs_f64();
    let f = &model.features;
    let t0 = Instant::now();
    let h = f.conv0.forward(x);
    let h = if f.norm0_folded { h } else { f.norm0.forward(h) };
    time("stem conv0", t0);
    let t0 = Instant::now();
    let h = burn::tensor::activation::relu(h);
    time("stem relu", t0);
    let t0 = Instant::now();
    let mut h = f.pool0.forward(h);
    time("stem maxpool", t0);
    for (i, block) in f.denseblock.iter().enumerate() {
        let [b, c0, hh, ww] = h.dims();
        let total = c0 + block.added_channels();
        let t0 = Instant::now();
        let mut buf = Tensor::<4>::empty([b, total, hh, ww], &h.device());
        buf = buf.slice_assign([0..b, 0..c0, 0..hh, 0..ww], h);
        time("block buffer", t0);
        let mut c = c0;
        for l in &block.denselayer {
            let t0 = Instant::now();
            let a = match &l.norm1_affine {
                Some(a) => a.relu(buf.clone().narrow(1, 0, c)),
                None => burn::tensor::activation::relu(l.norm1.forward(buf.clone().narrow(1, 0, c))),
            };
            time("norm1+relu", t0);
            let t0 = Instant::now();
            let a = l.conv1.forward(a);
            time("conv1 1x1", t0);
            let t0 = Instant::now();
            let a = if l.norm2_folded { a } else { l.norm2.forward(a) };
            let a = burn::tensor::activation::relu(a);
            time("norm2+relu", t0);
            let t0 = Instant::now();
            let a = l.conv2.forward(a);
            time("conv2 3x3", t0);
            let t0 = Instant::now();
            let k = a.dims()[1];
            buf = buf.slice_assign([0..b, c..c + k, 0..hh, 0..ww], a);
            c += k;
            time("slice_assign", t0);
        }
        h = buf;
        if let Some(tr) = f.transition.get(i) {
            let t0 = Instant::now();
            let a = match &tr.norm_affine {
                Some(a) => a.relu(h),
                None => burn::tensor::activation::relu(tr.norm.forward(h)),
            };
            time("transition bn+relu", t0);
            let t0 = Instant::now();
            let a = tr.conv.forward(a);
            time("transition conv", t0);
            let t0 = Instant::now();
            h = tr.pool.forward(a);
            time("transition avgpool", t0);
        }
    }
    let t0 = Instant::now();
    let _ = model.forward_from(model.num_blocks(), h).into_data();
    time("norm5+pool", t0);
    let total: f64 = t.values().sum();
    for (k, v) in &t {
        eprintln!("{k:>14}: {:8.1} ms {:5.1}%", v * 1e3, 100.0 * v / total);
    }
}

/// Peak resident set size of this process in MiB (Linux VmHWM), if available.
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

fn forward(model: &DenseNet, x: Tensor<4>, concat: bool) -> Tensor<2> {
    if !concat {
        return model.forward(x);
    }
    let mut h = model.forward_stem(x);
    let f = &model.features;
    for (i, block) in f.denseblock.iter().enumerate() {
        h = block.forward_concat(h);
        if let Some(t) = f.transition.get(i) {
            h = t.forward(h);
        }
    }
    let h = burn::tensor::activation::relu(f.norm5.forward(h));
    let pooled = DenseNet::pool(h);
    match &model.classifier {
        Some(l) => l.forward(pooled),
        None => pooled,
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let variant =
        DenseNetVariant::from_name(&args.variant).with_context(|| format!("unknown variant {}", args.variant))?;
    let device = Device::flex();
    let base = DenseNet::new(&variant.config(), &device)?.valid();
    // `base` is moved or dropped here so that only one copy of the weights stays resident.
    let (model, concat) = match args.mode.as_str() {
        "fast" => {
            let folded = base.fold_batchnorm();
            drop(base);
            (folded, false)
        }
        "folded" => {
            let folded = DenseNet { inference_plan: None, ..base.fold_batchnorm() };
            drop(base);
            (folded, false)
        }
        "plain" => (base, false),
        "concat" => (base, true),
        other => anyhow::bail!("unknown mode {other}: use fast, folded, plain or concat"),
    };
    let x = Tensor::<4>::random([args.batch, 3, args.size, args.size], Distribution::Normal(0.0, 1.0), &device);
    if args.breakdown {
        breakdown(&model, x.clone());
    }
    // Warm-up: first-touch allocations and kernel selection.
    let _ = forward(&model, x.clone(), concat).into_data();
    let mut times = Vec::with_capacity(args.iters);
    for _ in 0..args.iters.max(1) {
        let t0 = Instant::now();
        let out = forward(&model, x.clone(), concat).into_data();
        times.push(t0.elapsed().as_secs_f64());
        std::hint::black_box(out);
    }
    times.sort_by(|a, b| a.total_cmp(b));
    let median = times[times.len() / 2];
    println!(
        "{}",
        serde_json::json!({
            "side": "burn",
            "mode": args.mode,
            "variant": variant.name(),
            "batch": args.batch,
            "size": args.size,
            "iters": times.len(),
            "ms_per_batch": median * 1e3,
            "images_per_s": args.batch as f64 / median,
            "peak_rss_mib": peak_rss_mib(),
        })
    );
    Ok(())
}
