//! A host's whole check of a stage order (`control::check::check_order`), fed what a
//! hostile head could send. The harness holds an honest order, signed by a VO its
//! cluster config trusts, and the first byte picks which part of it the rest of the
//! input replaces: the workspace, the ticket, a manifest, a seal, an image reference,
//! the share of the cluster, or the whole order. A manifest comes as what a host holds
//! once a head sent it (bytes that decode, under their own id) or as an id it was
//! never sent. The honest order must pass (so the
//! checks behind the signatures are reached), anything must be checked or refused
//! without a panic, and an order that passes must bind every partition here to a
//! manifest its ticket allows.
#![no_main]

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use vw_node::access::{Ticket, TicketTerms};
use vw_node::chunkstore::chunker::ChunkerParams;
use vw_node::chunkstore::{
    ChunkId, ChunkRef, ImageRef, Manifest, ManifestId, Seal, Visibility, VoKey,
};
use vw_node::config::{ClusterConfig, VoConfig};
use vw_node::control::check::check_order;
use vw_node::control::protocol::{ImageOrder, StageOrder};
use vw_node::control::Request;
use vw_node::report::{ClusterShare, Member};

const NOW: u64 = 1_800_000_000;

const WORKSPACE: &str = r#"<virtualWorkspace type="cluster" name="fz" nodeNumber="2">
  <headnode name="head">
    <memory>256</memory><vcpus>1</vcpus><bootloader path="pygrub"/>
    <partition image="vo/base:1" device="xvda1" role="root"/>
    <nic network="private"/>
    <roles><nfsServer export="/home"/><batchServer/></roles>
  </headnode>
  <workernode name="worker" count="1">
    <memory>128</memory><vcpus>1</vcpus><bootloader path="pygrub"/>
    <partition image="vo/worker:1" device="xvda1" role="root"/>
    <nic network="private"/>
    <roles><nfsClient export="/home"/><batchWorker/></roles>
  </workernode>
</virtualWorkspace>"#;

/// Manifests a host holds, by id.
type Held = HashMap<ManifestId, Arc<Manifest>>;

fn fixture() -> &'static (ClusterConfig, StageOrder, Held) {
    static F: OnceLock<(ClusterConfig, StageOrder, Held)> = OnceLock::new();
    F.get_or_init(|| {
        let key = VoKey::generate("vo").expect("key");
        let mut text = ClusterConfig::EMBEDDED.to_owned();
        text.push('\n');
        text.push_str(&VoConfig::entry("vo", &key.public(), false));
        let config = ClusterConfig::parse(&text, "fuzz").expect("config");
        let params = ChunkerParams::DEFAULT;
        let image = |name: &str, seed: u8| {
            let chunks: Vec<ChunkRef> = (0..3u8)
                .map(|i| ChunkRef { id: ChunkId::of(&[seed, i]), len: params.max })
                .collect();
            let len = 3 * u64::from(params.max);
            let manifest =
                Manifest::new(params, len, blake3::hash(&[seed]), chunks).expect("manifest");
            let name = name.parse().expect("name");
            let seal = Seal::sign(&key, &name, manifest.id(), Visibility::Private).expect("seal");
            (
                manifest.clone(),
                ImageOrder {
                    image: name.to_string(),
                    manifest: manifest.id(),
                    seal: seal.encode(),
                    stagers: vec![],
                    pulls: vec![],
                    fallback: vec![],
                    trace: None,
                },
            )
        };
        let (base, base_order) = image("vo/base:1", 1);
        let (worker, worker_order) = image("vo/worker:1", 2);
        let terms = TicketTerms {
            cluster: config.cluster.name.clone(),
            deployment: "fz".into(),
            workspace: blake3::hash(WORKSPACE.as_bytes()),
            manifests: [base.id(), worker.id()].into_iter().collect(),
            expires_s: NOW + 600,
        };
        let order = StageOrder {
            stage: "fz@0123456789abcdef".into(),
            workspace: WORKSPACE.to_owned(),
            ticket: Ticket::sign(&key, &terms).expect("ticket").encode(),
            share: ClusterShare {
                here: vec![Member { name: "fz-worker1".into(), nics: vec![], cores: None }],
                elsewhere: vec![],
            },
            images: vec![base_order, worker_order],
            serves: vec![],
            munge_key: None,
            cap: None,
            lazy: false,
        };
        let held: Held =
            [base, worker].into_iter().map(|m| (m.id(), Arc::new(m))).collect();
        check_order(&config, &order, &held, NOW).expect("the honest order passes");
        (config, order, held)
    })
}

fuzz_target!(|data: &[u8]| {
    let (config, honest, held) = fixture();
    let Some((&pick, rest)) = data.split_first() else { return };
    let text = || String::from_utf8_lossy(rest).into_owned();
    let mut order = honest.clone();
    let mut held = held.clone();
    // A manifest from the input: held if it decodes (as a head sent it), else an id
    // this host was never sent.
    let mut manifest = || match Manifest::decode(rest) {
        Ok(m) => {
            let id = m.id();
            held.insert(id, Arc::new(m));
            id
        }
        Err(_) => ManifestId::from(blake3::hash(rest)),
    };
    match pick % 10 {
        0 => order.workspace = text(),
        1 => order.ticket = rest.to_vec(),
        2 => order.images[1].manifest = manifest(),
        3 => order.images[1].seal = rest.to_vec(),
        4 => order.images[1].image = text(),
        5 => {
            order.share.here = text()
                .split(',')
                .map(|n| Member { name: n.into(), nics: vec![], cores: None })
                .collect()
        }
        6 => match vw_node::wire::decode_body::<Request>(rest) {
            Ok(Request::Stage(o)) => order = *o,
            _ => return,
        },
        7 => {
            // One byte of the ticket changed.
            if let Some((&at, _)) = rest.split_first() {
                let i = usize::from(at) % order.ticket.len();
                order.ticket[i] ^= rest.get(1).copied().unwrap_or(1).max(1);
            }
        }
        8 => {
            order.serves = vec![ImageOrder { manifest: manifest(), ..honest.images[0].clone() }]
        }
        _ => {
            // The whole time axis: expired, valid, too far ahead.
            let mut now = [0u8; 8];
            let n = rest.len().min(8);
            now[..n].copy_from_slice(&rest[..n]);
            let now = u64::from_le_bytes(now);
            if let Ok(c) = check_order(config, &order, &held, now) {
                assert!(now < c.ticket.expires_s());
            }
            return;
        }
    }
    if let Ok(checked) = check_order(config, &order, &held, NOW) {
        let here: Vec<String> = order.share.here.iter().map(|m| m.name.to_string()).collect();
        let mut spec = checked.spec.clone();
        for node in spec.nodes_of_mut(&here) {
            for p in &node.partitions {
                match &p.image {
                    ImageRef::Id(id) => {
                        assert!(checked.ticket.allows(id), "bound to an allowed id")
                    }
                    ImageRef::Name(n) => panic!("partition {} left unbound to {n}", p.device),
                }
            }
        }
    }
});
