//! One libp2p stream on loopback, one way, over TCP + Noise + Yamux and over QUIC:
//! MB/s and CPU seconds per GB (both peers in this process).

use std::time::{Duration, Instant};

use futures::{AsyncReadExt as _, AsyncWriteExt as _, StreamExt as _};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{identity, noise, tcp, yamux, Multiaddr, StreamProtocol, Swarm};

const PROTOCOL: StreamProtocol = StreamProtocol::new("/bench/1");

#[derive(NetworkBehaviour)]
struct B {
    stream: libp2p_stream::Behaviour,
}

fn swarm() -> Swarm<B> {
    libp2p::SwarmBuilder::with_existing_identity(identity::Keypair::generate_ed25519())
        .with_tokio()
        .with_tcp(tcp::Config::default().nodelay(true), noise::Config::new, yamux::Config::default)
        .expect("tcp")
        .with_quic()
        .with_behaviour(|_| B { stream: libp2p_stream::Behaviour::new() })
        .expect("behaviour")
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
        .build()
}

fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("stat");
    let fields: Vec<&str> = stat.rsplit(')').next().expect("fields").split_whitespace().collect();
    let ticks: f64 =
        fields[11].parse::<f64>().expect("utime") + fields[12].parse::<f64>().expect("stime");
    ticks / 100.0
}

async fn run(listen: &str, mib: usize) -> (f64, f64) {
    let mut a = swarm();
    let mut b = swarm();
    a.listen_on(listen.parse().expect("addr")).expect("listen");
    let addr: Multiaddr = loop {
        if let SwarmEvent::NewListenAddr { address, .. } = a.select_next_some().await {
            break address;
        }
    };
    let a_id = *a.local_peer_id();
    let mut incoming = a.behaviour().stream.new_control().accept(PROTOCOL).expect("accept");
    let mut control = b.behaviour().stream.new_control();
    b.dial(addr.with(libp2p::multiaddr::Protocol::P2p(a_id))).expect("dial");
    tokio::spawn(async move {
        loop {
            a.select_next_some().await;
        }
    });
    tokio::spawn(async move {
        loop {
            b.select_next_some().await;
        }
    });
    let total = mib << 20;
    let reader = tokio::spawn(async move {
        let (_, mut s) = incoming.next().await.expect("stream");
        let mut buf = vec![0u8; 256 << 10];
        let mut got = 0;
        while got < total {
            let n = s.read(&mut buf).await.expect("read");
            assert!(n > 0, "eof");
            got += n;
        }
    });
    let mut s = control.open_stream(a_id, PROTOCOL).await.expect("open");
    let chunk: Vec<u8> = (0..256 << 10).map(|i| (i * 7 + 3) as u8).collect();
    let (t, c) = (Instant::now(), cpu_seconds());
    for _ in 0..total / chunk.len() {
        s.write_all(&chunk).await.expect("write");
    }
    s.flush().await.expect("flush");
    reader.await.expect("reader");
    let secs = t.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - c;
    (total as f64 / secs / 1e6, cpu / (total as f64 / 1e9))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mib: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(512);
    for (name, listen) in
        [("tcp+noise+yamux", "/ip4/127.0.0.1/tcp/0"), ("quic-v1", "/ip4/127.0.0.1/udp/0/quic-v1")]
    {
        for _ in 0..3 {
            let (mbs, cpu) = run(listen, mib).await;
            println!("{name}: {mbs:.0} MB/s, {cpu:.2} CPU s/GB");
        }
    }
}
