//! Benchmark programs live in `src/bin/`; each prints a ratio against a reference run made in
//! the same script (see `scripts/bench-*.sh`).
fn main() {
    eprintln!("run one of the benchmark binaries: cargo run --release -p allscan-bench --bin <name>");
}
