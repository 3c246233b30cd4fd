//! Progress display for long work (indexing, preprocessing, training, scoring, the CLI's
//! loops): one indicatif bar style on stderr, hidden when stderr is not a terminal (logs and CI
//! stay clean) or when the caller asks for quiet.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A bar of `len` steps labelled `what`; hidden unless `show` and stderr is a terminal.
pub fn bar(len: u64, what: &str, show: bool) -> ProgressBar {
    use std::io::IsTerminal;
    let target = if show && std::io::stderr().is_terminal() {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    };
    let bar = ProgressBar::with_draw_target(Some(len), target);
    if let Ok(style) =
        ProgressStyle::with_template("{prefix:>14} {bar:30} {pos}/{len} [{elapsed_precise}<{eta_precise}] {msg}")
    {
        bar.set_style(style);
    }
    bar.set_prefix(what.to_string());
    bar
}
