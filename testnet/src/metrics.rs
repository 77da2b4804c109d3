//! Scraping a `vwd`'s Prometheus endpoint from inside its host's namespace, and reading
//! the text exposition format back (sums of one metric over label filters).

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use crate::TestnetError;

/// The port each testnet host serves metrics on, at its own address.
pub const PORT: u16 = vw_localnet::METRICS_PORT;

/// `GET /metrics` from `addr`: the body of a 200 answer.
pub fn scrape(addr: SocketAddr) -> Result<String, TestnetError> {
    let fail =
        |message: String| TestnetError::Command { command: format!("scrape {addr}"), message };
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .map_err(|e| fail(e.to_string()))?;
    stream.set_read_timeout(Some(Duration::from_secs(10))).map_err(|e| fail(e.to_string()))?;
    // HTTP/1.0: the server closes when the body is done, so no length or chunking to read.
    write!(stream, "GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n")
        .map_err(|e| fail(e.to_string()))?;
    let mut answer = String::new();
    stream.take(64 << 20).read_to_string(&mut answer).map_err(|e| fail(e.to_string()))?;
    let (head, body) =
        answer.split_once("\r\n\r\n").ok_or_else(|| fail("no HTTP header".into()))?;
    let status = head.lines().next().unwrap_or_default();
    if status.split_whitespace().nth(1) != Some("200") {
        return Err(fail(format!("answered `{status}`")));
    }
    Ok(body.to_owned())
}

/// The sum of every sample of `name` whose labels include each of `labels` (`key`,
/// `value`) in `text`. Comment lines and other metrics are skipped.
pub fn sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (metric, rest) = match series.split_once('{') {
                Some((m, rest)) => (m, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            let has =
                |(k, v): &(&str, &str)| rest.split(',').any(|pair| pair == format!("{k}=\"{v}\""));
            (metric == name && labels.iter().all(has)).then(|| value.parse::<f64>().ok())?
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_are_summed_over_matching_labels() {
        let text = "# HELP vw_x a counter\n# TYPE vw_x counter\n\
                    vw_x{peer=\"a\",deployment=\"grid\"} 10\n\
                    vw_x{peer=\"b\",deployment=\"grid\"} 5\n\
                    vw_x{peer=\"a\",deployment=\"vo2\"} 7\n\
                    vw_xy{deployment=\"grid\"} 100\nvw_store_chunks 3\n";
        assert_eq!(sum(text, "vw_x", &[("deployment", "grid")]), 15.0);
        assert_eq!(sum(text, "vw_x", &[]), 22.0);
        assert_eq!(sum(text, "vw_x", &[("peer", "a"), ("deployment", "vo2")]), 7.0);
        assert_eq!(sum(text, "vw_store_chunks", &[]), 3.0);
        assert_eq!(sum(text, "vw_none", &[]), 0.0);
    }
}
