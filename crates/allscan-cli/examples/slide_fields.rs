//! Synthetic smear fields of any size for the slide benchmark (`scripts/bench-slide.sh`):
//! 224-pixel synthetic fields (one white cell each, red cells around it) tiled edge to edge into
//! a `W` x `H` camera-sized field, saved as JPEG (as a microscope camera would).
//!
//! Usage: `cargo run --release -p allscan-cli --example slide_fields -- OUT N W H [SEED]`.

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let parse = |i: usize| args.get(i).and_then(|s| s.parse::<u32>().ok());
    let (Some(out), Some(n), Some(w), Some(h)) = (args.first().map(PathBuf::from), parse(1), parse(2), parse(3)) else {
        eprintln!("usage: slide_fields OUT N W H [SEED]");
        return ExitCode::FAILURE;
    };
    let seed = args.get(4).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0);
    if let Err(e) = std::fs::create_dir_all(&out) {
        eprintln!("{}: {e}", out.display());
        return ExitCode::FAILURE;
    }
    let tile = 224;
    for i in 0..n as usize {
        let mut field = image::RgbImage::new(w, h);
        let cols = w.div_ceil(tile);
        for k in 0..(cols * h.div_ceil(tile)) as usize {
            let (tx, ty) = (k as u32 % cols, k as u32 / cols);
            let class = (i + k) % allscan::synth::CLASSES.len();
            let f =
                allscan::synth::render_field(class, tile, &mut allscan::synth::field_rng(seed + i as u64, class, k));
            image::imageops::replace(&mut field, &f.image, i64::from(tx * tile), i64::from(ty * tile));
        }
        let path = out.join(format!("field-{:03}.jpg", i + 1));
        let saved = std::fs::File::create(&path).map_err(|e| e.to_string()).and_then(|f| {
            image::codecs::jpeg::JpegEncoder::new_with_quality(std::io::BufWriter::new(f), 90)
                .encode_image(&field)
                .map_err(|e| e.to_string())
        });
        if let Err(e) = saved {
            eprintln!("{}: {e}", path.display());
            return ExitCode::FAILURE;
        }
    }
    println!("{n} field(s) of {w}x{h} in {}", out.display());
    ExitCode::SUCCESS
}
