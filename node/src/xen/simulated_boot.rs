//! The simulated driver's guest boot, for a domain whose disk is a lazy disk's NBD
//! socket: a thread reads what a boot would read through the export (an NBD client,
//! as a real guest's block front end reads through Xen's backend) and is "up" once it
//! has. Nothing here is a real guest: the reads are a fixed pattern, the same for the
//! same image size ([`reads`]), and the report still says simulated.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// A simulated boot reads this fraction of its disk (1/16: about what Slacker and Nydus
/// measured a container's start reads of its image, 6–6.4%).
pub const BOOT_FRACTION: u64 = 16;
/// Each read's size.
const READ: u64 = 64 << 10;

/// Where a boot is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Boot {
    /// Still reading.
    Reading,
    /// Read all it reads: up.
    Up,
    /// A read failed: the guest is stuck, and why.
    Failed(String),
}

/// The reads a simulated boot of a `size`-byte disk makes, in order: the first 64 KiB
/// (the superblock and group descriptors), then 64 KiB reads spread over the disk by a
/// fixed generator until a [`BOOT_FRACTION`]th of it is read.
pub fn reads(size: u64) -> Vec<(u64, u32)> {
    let blocks = size / READ;
    if blocks == 0 {
        return vec![(0, size as u32)];
    }
    let want = (blocks / BOOT_FRACTION).max(1);
    let mut out = vec![(0, READ as u32)];
    let mut x = size | 1;
    while (out.len() as u64) < want {
        // xorshift64: the same image size, the same reads.
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let at = (x % blocks) * READ;
        if !out.iter().any(|&(o, _)| o == at) {
            out.push((at, READ as u32));
        }
    }
    out
}

/// Boots a guest from the NBD sockets `disks` on a thread of its own; the returned
/// state says when it is up.
pub fn start(domain: &str, disks: Vec<PathBuf>) -> Arc<Mutex<Boot>> {
    let state = Arc::new(Mutex::new(Boot::Reading));
    let out = Arc::clone(&state);
    let name = domain.to_owned();
    let spawned = std::thread::Builder::new().name(format!("vw-sim-{domain}")).spawn(move || {
        let result = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())
            .and_then(|rt| rt.block_on(boot(&disks)));
        if let Err(why) = &result {
            tracing::warn!(domain = %name, %why, "the simulated guest's boot failed");
        }
        *out.lock().expect("boot lock") = match result {
            Ok(()) => Boot::Up,
            Err(why) => Boot::Failed(why),
        };
    });
    if let Err(e) = spawned {
        *state.lock().expect("boot lock") = Boot::Failed(format!("cannot start its thread: {e}"));
    }
    state
}

async fn boot(disks: &[PathBuf]) -> Result<(), String> {
    for socket in disks {
        let at = |e: crate::lazy::nbd::NbdError| format!("{}: {e}", socket.display());
        let io = tokio::net::UnixStream::connect(socket)
            .await
            .map_err(|e| format!("{}: {e}", socket.display()))?;
        let mut disk = crate::lazy::nbd::Client::connect(io, "").await.map_err(at)?;
        for (offset, len) in reads(disk.size()) {
            disk.read(offset, len)
                .await
                .map_err(|e| format!("reading {len} bytes at {offset}: {}", at(e)))?;
        }
        // A boot writes too (a log, the journal): into the VM's own copy.
        disk.write(READ, &[0x5a; 4096]).await.map_err(at)?;
        disk.flush().await.map_err(at)?;
        disk.disconnect().await.map_err(at)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_boot_reads_a_fixed_sixteenth_of_its_disk() {
        let size = 550 << 20;
        let r = reads(size);
        assert_eq!(r, reads(size), "the same size, the same reads");
        let bytes: u64 = r.iter().map(|&(_, l)| u64::from(l)).sum();
        assert_eq!(bytes, (size / READ / BOOT_FRACTION) * READ);
        assert_eq!(r[0], (0, READ as u32));
        assert!(r.iter().all(|&(o, l)| o + u64::from(l) <= size));
        assert_eq!(reads(1000), vec![(0, 1000)]);
    }
}
