//! `vwd`'s Prometheus metrics: their names and labels in one place, and the scrape
//! endpoint.
//!
//! The code records through the `metrics` facade, which does nothing until an exporter
//! is installed, so library users and in-process tests pay nothing. [`serve`] installs
//! `metrics-exporter-prometheus` with its HTTP listener on the address `vwd.toml`'s
//! `metrics` names; every path answers the text exposition format.
//!
//! Labels stay bounded: peers are the cluster's (a configured allow list), deployments
//! are named by their workspace (never the stage's per-attempt nonce), and the other
//! labels come from fixed sets.

use std::net::SocketAddr;
use std::sync::LazyLock;
use std::time::Duration;

use libp2p::PeerId;
use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
use vw_chunkstore::CacheStats;

/// Bytes of verified chunks received, per sending peer and deployment.
pub const RECEIVED: &str = "vw_chunk_bytes_received_total";
/// Bytes of chunks sent (as framed on the wire, compressed or not), per receiving peer
/// and deployment.
pub const SENT: &str = "vw_chunk_bytes_sent_total";
/// Chunks a stage needed, by whether the host held them (`hit`) or fetched them
/// (`miss`).
pub const CACHE_CHUNKS: &str = "vw_chunk_cache_chunks_total";
/// The same in bytes.
pub const CACHE_BYTES: &str = "vw_chunk_cache_bytes_total";
/// The store: bytes of stored chunks, chunks, manifests.
pub const STORE_BYTES: &str = "vw_store_chunk_bytes";
/// Stored chunks.
pub const STORE_CHUNKS: &str = "vw_store_chunks";
/// Stored manifests.
pub const STORE_MANIFESTS: &str = "vw_store_manifests";
/// A host's stages: seconds fetching (`fetch`) and rebuilding and integrating (`stage`).
pub const STAGE_SECONDS: &str = "vw_stage_seconds";
/// The head's deployments: seconds in each phase (validate, inventory, place, ...).
pub const PHASE_SECONDS: &str = "vw_deploy_phase_seconds";
/// Requests refused, by what was asked (`chunks`, `control`, `stage`, ...).
pub const REFUSALS: &str = "vw_refusals_total";

/// Histogram buckets, seconds: a phase takes from milliseconds (planning) to an hour
/// (staging a large image on a slow link).
const BUCKETS: [f64; 12] = [0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0];

/// Starts the scrape endpoint on `addr` and describes every metric. Call once, inside
/// the runtime.
pub fn serve(addr: SocketAddr) -> Result<(), String> {
    PrometheusBuilder::new()
        .with_http_listener(addr)
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &BUCKETS)
        .map_err(|e| e.to_string())?
        .install()
        .map_err(|e| format!("metrics endpoint on {addr}: {e}"))?;
    describe_counter!(RECEIVED, "Bytes of verified chunks received, per sender and deployment");
    describe_counter!(SENT, "Bytes of chunks sent on the wire, per receiver and deployment");
    describe_counter!(CACHE_CHUNKS, "Chunks stages needed: held here (hit) or fetched (miss)");
    describe_counter!(CACHE_BYTES, "Bytes stages needed: held here (hit) or fetched (miss)");
    describe_gauge!(STORE_BYTES, "Bytes of chunks in the store");
    describe_gauge!(STORE_CHUNKS, "Chunks in the store");
    describe_gauge!(STORE_MANIFESTS, "Manifests in the store");
    describe_histogram!(STAGE_SECONDS, "Seconds of this host's stages, fetch and stage parts");
    describe_histogram!(PHASE_SECONDS, "Seconds of the head's deployments, per phase");
    describe_counter!(REFUSALS, "Requests refused, by what was asked");
    Ok(())
}

/// The deployment a stage (`NAME@NONCE`) belongs to.
fn deployment(stage: &str) -> String {
    stage.split('@').next().unwrap_or(stage).to_owned()
}

/// The counter of bytes received from `peer` for `stage`.
pub fn received(peer: &PeerId, stage: &str) -> metrics::Counter {
    counter!(RECEIVED, "peer" => peer.to_string(), "deployment" => deployment(stage))
}

/// The counter of bytes sent to `peer` for `stage`.
pub fn sent(peer: &PeerId, stage: &str) -> metrics::Counter {
    counter!(SENT, "peer" => peer.to_string(), "deployment" => deployment(stage))
}

/// A stage needed `held` chunks it had (and their bytes) and `lacked` it fetched.
pub fn cache(held: (u64, u64), lacked: (u64, u64)) {
    counter!(CACHE_CHUNKS, "result" => "hit").increment(held.0);
    counter!(CACHE_BYTES, "result" => "hit").increment(held.1);
    counter!(CACHE_CHUNKS, "result" => "miss").increment(lacked.0);
    counter!(CACHE_BYTES, "result" => "miss").increment(lacked.1);
}

/// A stage on this host took `fetch` to bring its chunks and `stage` to rebuild.
pub fn stage_times(fetch: Duration, stage: Duration) {
    histogram!(STAGE_SECONDS, "part" => "fetch").record(fetch.as_secs_f64());
    histogram!(STAGE_SECONDS, "part" => "stage").record(stage.as_secs_f64());
}

/// A deployment on the head spent `seconds` in `phase`.
pub fn phase(phase: &str, seconds: f64) {
    histogram!(PHASE_SECONDS, "phase" => phase.to_owned()).record(seconds);
}

/// A request for `op` was refused.
pub fn refused(op: &str) {
    counter!(REFUSALS, "op" => op.to_owned()).increment(1);
}

/// Wakes whoever keeps the store's gauges (the store changed: a stage, an import).
pub static STORE_CHANGED: LazyLock<tokio::sync::Notify> = LazyLock::new(tokio::sync::Notify::new);

/// The store's size now.
pub fn store(stats: &CacheStats) {
    gauge!(STORE_BYTES).set(stats.chunk_bytes as f64);
    gauge!(STORE_CHUNKS).set(stats.chunks as f64);
    gauge!(STORE_MANIFESTS).set(stats.manifests as f64);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stage_is_counted_under_its_deployment() {
        assert_eq!(deployment("grid@0123abcd"), "grid");
        assert_eq!(deployment("grid"), "grid");
    }
}
