//! `vwd`, the per-host peer. The daemon arrives with the peer issue (5); until then it
//! says so instead of pretending to run.

fn main() {
    eprintln!(
        "vwd: the host daemon is not built yet (see issue 5); use `vw image` for the chunk store"
    );
    std::process::exit(2);
}
