//! Text and JSON output. Results go to stdout; notes, progress and errors to stderr.

use serde::Serialize;

/// Where results go and in which form.
pub struct Out {
    json: bool,
}

impl Out {
    pub fn new(json: bool) -> Self {
        Self { json }
    }

    pub fn is_json(&self) -> bool {
        self.json
    }

    /// Prints a result: `value` as JSON, or `text()`.
    pub fn emit<T: Serialize + ?Sized>(&self, value: &T, text: impl FnOnce() -> String) {
        if self.json {
            println!("{}", serde_json::to_string_pretty(value).expect("serialisable"));
        } else {
            println!("{}", text());
        }
    }

    /// Prints a side note on stderr (text mode only).
    pub fn note(&self, text: &str) {
        if !self.json {
            eprintln!("{text}");
        }
    }

    /// Reports a failure: on stderr, and as `{"error": ...}` on stdout with `--json`.
    pub fn error(&self, e: &anyhow::Error) {
        eprintln!("error: {e:#}");
        if self.json {
            println!("{}", serde_json::json!({ "error": format!("{e:#}") }));
        }
    }
}

pub use vw_node::storecmd::bytes;

/// Parses `20G`, `512M`, `1.5T`, `4096` (binary units).
pub fn parse_size(s: &str) -> anyhow::Result<u64> {
    vw_node::workspace::parse_size(s).map_err(anyhow::Error::msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("20G").ok(), Some(20 << 30));
        assert_eq!(parse_size("512m").ok(), Some(512 << 20));
        assert_eq!(parse_size("4096").ok(), Some(4096));
        assert_eq!(parse_size("1.5K").ok(), Some(1536));
        assert!(parse_size("12X").is_err());
        assert!(parse_size("lots").is_err());
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(12), "12 B");
    }
}
