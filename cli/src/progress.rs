//! Progress bars on stderr, only when it is a terminal and the output is not JSON.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressStyle};
use vw_node::chunkstore::Progress;

use crate::output::Out;

/// A byte-count bar, or nothing.
pub struct Bar(Option<ProgressBar>);

impl Bar {
    pub fn new(out: &Out, what: &'static str) -> Self {
        if out.is_json() || !std::io::stderr().is_terminal() {
            return Self(None);
        }
        let bar = ProgressBar::new(0);
        bar.set_style(
            ProgressStyle::with_template(
                "{prefix:>7} {bar:40} {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
            )
            .expect("valid template"),
        );
        bar.set_prefix(what);
        Self(Some(bar))
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.0 {
            bar.finish_and_clear();
        }
    }
}

impl Progress for Bar {
    fn start(&self, total: u64) {
        if let Some(bar) = &self.0 {
            bar.set_length(total);
        }
    }

    fn advance(&self, bytes: u64) {
        if let Some(bar) = &self.0 {
            bar.inc(bytes);
        }
    }
}
