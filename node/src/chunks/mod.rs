//! `/vw/chunks`: chunk exchange between peers.
//!
//! A receiver opens a stream to a sender per deployment and sends [`Frame::Want`] with
//! the ids it needs from that sender (its parent in the plan, or any holder when it
//! pulls), then grants [`Frame::Credit`]: the sender keeps at most that many chunks in
//! flight, so memory on both ends is bounded. The sender answers each id in order with
//! [`Frame::Chunk`] or [`Frame::Missing`] and ends with [`Frame::Done`]. In a cascade a
//! host forwards each chunk to its children as soon as it has verified it, before its
//! own image is complete.
//!
//! Every chunk is checked against its BLAKE3 id before it is stored or forwarded; a peer
//! that sends a bad one is dropped for the deployment and the chunk fetched elsewhere.
//! Zero chunks are never sent. The wire format is in [`protocol`]; the per-stream logic
//! (serving, fetching) in `handler`.
//!
//! A server bounds what peers can make it hold: streams served at once (in all, and per
//! peer; an excess stream gets [`Frame::Refused`] with the reason), the time a fetcher
//! has to send its request, and the time a served stream may go without progress
//! (`handler::ServeLimits`).

#[cfg(feature = "host")]
pub mod handler;
pub mod protocol;

pub use protocol::{Frame, FrameDecoder, FrameError, PROTOCOL_NAME};
