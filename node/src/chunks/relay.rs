//! Forwarding chunks in a cascade: what a host receives is served to its children
//! from memory as soon as it is verified, and a chunk a lazy stage is still fetching
//! as it arrives ([`super::pass`]).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use tokio::sync::watch;
use vw_chunkstore::{ChunkId, Store};

use super::demand::{Demand, WeakDemand};
use super::pass::Passing;
use super::ChunkSource;

/// Chunks a host is receiving and forwarding at once (a cascade): served to its
/// children from memory as soon as each is verified, before its own image is complete,
/// and from the store once written. Memory is bounded: the most recent
/// [`Relay::KEEP_BYTES`] of chunks.
pub struct Relay {
    store: Arc<Store>,
    state: Mutex<RelayState>,
    signal: watch::Sender<u64>,
    /// The lazy stages under way, by deployment (stage) name.
    lazy: Mutex<HashMap<String, WeakDemand>>,
}

#[derive(Default)]
struct RelayState {
    recent: HashMap<ChunkId, Vec<u8>>,
    order: VecDeque<ChunkId>,
    bytes: usize,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay").finish_non_exhaustive()
    }
}

impl Relay {
    /// Bytes of chunks kept in memory. A child in a cascade asks for chunks moments
    /// after its parent receives them; one that falls further behind waits for the
    /// store's next sync (at most a second) and reads them from there.
    pub const KEEP_BYTES: usize = 32 << 20;

    /// A relay over `store`.
    pub fn new(store: Arc<Store>) -> Arc<Self> {
        let (signal, _) = watch::channel(0);
        Arc::new(Relay { store, state: Default::default(), signal, lazy: Mutex::default() })
    }

    /// A verified chunk has arrived.
    pub fn arrived(&self, id: ChunkId, data: Vec<u8>) {
        let mut st = self.state.lock().expect("relay lock");
        let len = data.len();
        if st.recent.insert(id, data).is_none() {
            st.order.push_back(id);
            st.bytes += len;
        }
        while st.bytes > Self::KEEP_BYTES {
            let Some(old) = st.order.pop_front() else { break };
            if let Some(gone) = st.recent.remove(&old) {
                st.bytes -= gone.len();
            }
        }
        drop(st);
        self.signal.send_modify(|n| *n += 1);
    }

    /// A lazy stage of `deployment` fetches with `demand`, until it is over: a chunk it
    /// is still fetching is passed on as it arrives to a host below this one.
    pub fn lazy_stage(&self, deployment: &str, demand: &Demand) {
        let mut lazy = self.lazy.lock().expect("relay lock");
        lazy.retain(|_, d| d.upgrade().is_some());
        lazy.insert(deployment.to_owned(), demand.downgrade());
    }

    /// Something changed that waiting servers should look at again (a store sync).
    pub fn poke(&self) {
        self.signal.send_modify(|n| *n += 1);
    }
}

impl ChunkSource for Relay {
    fn chunk(&self, id: &ChunkId) -> Option<Vec<u8>> {
        if let Some(data) = self.state.lock().expect("relay lock").recent.get(id) {
            return Some(data.clone());
        }
        self.store.chunk(id)
    }

    /// Any chunk may still arrive: a child's request can reach this host before the
    /// head's stage order does. A server waits while chunks keep arriving, and answers
    /// `Missing` after [`QUIET`] without one.
    fn arriving(&self, _id: &ChunkId) -> Option<watch::Receiver<u64>> {
        Some(self.signal.subscribe())
    }

    fn pass_on(&self, deployment: &str, id: &ChunkId) -> Option<Arc<Passing>> {
        let demand = self.lazy.lock().expect("relay lock").get(deployment)?.upgrade()?;
        demand.pass_on(id)
    }
}
