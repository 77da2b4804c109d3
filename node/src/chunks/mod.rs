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
//! Zero chunks are never sent. The wire format is in [`protocol`]; serving in `serve`,
//! fetching in `fetch`, the store writer fetched chunks go to in `intake`, forwarding
//! in a cascade in `relay`, passing on a chunk a guest waits on as it arrives in `pass`, handing a slow sender's chunks to a holder with upload to
//! spare in `relief`.
//!
//! A server bounds what peers can make it hold: streams served at once (in all, and per
//! peer; an excess stream gets [`Frame::Refused`] with the reason), the time a fetcher
//! has to send its request, and the time a served stream may go without progress
//! (`ServeLimits`).

#[cfg(feature = "host")]
pub mod demand;
#[cfg(feature = "host")]
pub mod fetch;
#[cfg(feature = "host")]
pub mod intake;
#[cfg(feature = "host")]
pub mod pass;
pub mod protocol;
#[cfg(feature = "host")]
pub mod rate;
#[cfg(feature = "host")]
pub mod relay;
#[cfg(feature = "host")]
pub mod relief;
#[cfg(feature = "host")]
pub mod serve;
#[cfg(feature = "host")]
pub mod spare;
#[cfg(feature = "host")]
pub mod urgent;

#[cfg(feature = "host")]
pub use fetch::{fetch, fetch_from_any, fetch_into, Fetched, Floor, PullReport};
#[cfg(feature = "host")]
pub use intake::Intake;
pub use protocol::{Frame, FrameDecoder, FrameError, PROTOCOL_NAME};
#[cfg(feature = "host")]
pub use relay::Relay;
#[cfg(feature = "host")]
pub use serve::{serve, ChunkSource, Sending, ServeLimits};

/// The protocol as libp2p names it.
#[cfg(feature = "host")]
pub fn chunks_protocol() -> libp2p::StreamProtocol {
    libp2p::StreamProtocol::new(PROTOCOL_NAME)
}

/// The chunk server a peer runs ([`crate::peer::Peer::start`]): every incoming
/// `/vw/chunks` stream served from `source` (usually the store), sending as `sending`
/// says (upload cap, compression, grants, audit, limits).
#[cfg(feature = "host")]
pub fn server(source: std::sync::Arc<dyn ChunkSource>, sending: Sending) -> crate::peer::Server {
    crate::peer::Server {
        protocol: chunks_protocol(),
        run: Box::new(move |incoming, stop| Box::pin(serve(incoming, source, sending, stop))),
    }
}
#[cfg(feature = "host")]
pub use shared::*;

/// What the stream modules share.
#[cfg(feature = "host")]
mod shared {
    use std::time::Duration;

    use libp2p::Stream;
    use vw_chunkstore::ManifestId;

    use super::{Frame, FrameError};

    /// How long a fetch waits for the next frame before it gives the peer up.
    pub const QUIET: Duration = Duration::from_secs(30);
    /// Chunks a fetcher lets be in flight on one stream (4 MiB at the mean chunk size,
    /// 16 MiB at most): 64 measured 297 MB/s on loopback against 253 MB/s for 16.
    pub const WINDOW: u32 = 64;
    pub(crate) async fn read_frame(stream: &mut Stream) -> Result<Option<Frame>, FrameError> {
        crate::wire::read(stream).await
    }

    pub(crate) async fn write_frame(stream: &mut Stream, frame: &Frame) -> Result<(), FrameError> {
        crate::wire::write(stream, frame).await
    }
    /// What a fetch is for: the deployment, and the manifest (staged for it) that lists the
    /// chunks wanted. The sender checks both.
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub struct Purpose {
        /// The deployment.
        pub deployment: String,
        /// The manifest.
        pub manifest: ManifestId,
    }
}
