//! The tickets a host accepted, remembered until they expire, so that each deploys once.
//!
//! A ticket carries a random nonce and an expiry no further ahead than the cluster
//! allows (`[cluster] ticket_lifetime_max_s`). A host admits a ticket when it accepts a
//! stage order: if the same VO's nonce was admitted before and has not expired, the
//! order is refused. An expired ticket is refused anyway, so a host forgets a nonce once
//! its ticket expires, and what it remembers is bounded by the tickets trusted VOs
//! signed in the last lifetime.
//!
//! `<data_dir>/tickets.seen`, one line per admitted ticket, appended and synced before
//! the order goes on (a restart must not open a window for a replay); expired lines are
//! dropped when the file is opened:
//!
//! ```text
//! VO NONCE-HEX EXPIRES_S
//! ```

use std::collections::HashMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::Ticket;

/// The file name under the data directory.
pub const FILE: &str = "tickets.seen";

/// Why the record of admitted tickets could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum SeenError {
    /// Reading, writing or syncing the file failed.
    #[error("ticket record {path}: {error}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        #[source]
        error: std::io::Error,
    },
    /// A line is not `VO NONCE-HEX EXPIRES_S`.
    #[error("ticket record {path}, line {line}: not `VO NONCE-HEX EXPIRES_S`; the file is vwd's own, so it was damaged: move it aside to start afresh (tickets accepted before are then accepted again until they expire)")]
    Damaged {
        /// The file.
        path: PathBuf,
        /// The line number, from 1.
        line: usize,
    },
}

type Key = (String, [u8; 16]);

/// The tickets this host admitted and that have not expired.
#[derive(Debug)]
pub struct Seen {
    path: PathBuf,
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    seen: HashMap<Key, u64>,
    file: std::fs::File,
}

impl Seen {
    /// Opens the record under `data_dir` at `now_s`: expired lines are dropped (the file
    /// is rewritten at a temp name, then renamed), the rest remembered.
    pub fn open(data_dir: &Path, now_s: u64) -> Result<Self, SeenError> {
        let path = data_dir.join(FILE);
        let io = |error| SeenError::Io { path: path.clone(), error };
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(io(e)),
        };
        let mut seen = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let damaged = || SeenError::Damaged { path: path.clone(), line: i + 1 };
            let (key, expires) = parse(line).ok_or_else(damaged)?;
            if expires > now_s {
                seen.insert(key, expires);
            }
        }
        let temp = data_dir.join(format!(".{FILE}.{}", std::process::id()));
        let _ = std::fs::remove_file(&temp);
        {
            let mut f =
                std::fs::OpenOptions::new().write(true).create_new(true).open(&temp).map_err(io)?;
            let mut out = String::new();
            for (key, expires) in &seen {
                out.push_str(&line(key, *expires));
            }
            f.write_all(out.as_bytes()).map_err(io)?;
            f.sync_all().map_err(io)?;
        }
        std::fs::rename(&temp, &path).map_err(io)?;
        let file = std::fs::OpenOptions::new().append(true).open(&path).map_err(io)?;
        Ok(Seen { path, inner: Mutex::new(Inner { seen, file }) })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether `ticket` was admitted here and has not expired at `now_s`.
    pub fn was_admitted(&self, ticket: &Ticket, now_s: u64) -> bool {
        let inner = self.inner.lock().expect("ticket record lock");
        inner.seen.get(&key(ticket)).is_some_and(|&e| e > now_s)
    }

    /// Admits `ticket` at `now_s`: `Ok(false)` if it was admitted before (a replay),
    /// `Ok(true)` once it is recorded durably. Expired entries are forgotten as it goes.
    pub fn admit(&self, ticket: &Ticket, now_s: u64) -> Result<bool, SeenError> {
        let mut inner = self.inner.lock().expect("ticket record lock");
        let key = key(ticket);
        if inner.seen.get(&key).is_some_and(|&e| e > now_s) {
            return Ok(false);
        }
        let io = |error| SeenError::Io { path: self.path.clone(), error };
        let record = line(&key, ticket.expires_s());
        inner.file.write_all(record.as_bytes()).map_err(io)?;
        inner.file.sync_data().map_err(io)?;
        inner.seen.retain(|_, e| *e > now_s);
        inner.seen.insert(key, ticket.expires_s());
        Ok(true)
    }

    /// How many unexpired tickets it remembers.
    pub fn len(&self) -> usize {
        self.inner.lock().expect("ticket record lock").seen.len()
    }

    /// Whether it remembers none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn key(ticket: &Ticket) -> Key {
    (ticket.vo().to_owned(), ticket.nonce())
}

fn line((vo, nonce): &Key, expires: u64) -> String {
    let hex: String = nonce.iter().map(|b| format!("{b:02x}")).collect();
    format!("{vo} {hex} {expires}\n")
}

fn parse(line: &str) -> Option<(Key, u64)> {
    let mut parts = line.split(' ');
    let (vo, hex, expires) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || vo.is_empty() || hex.len() != 32 {
        return None;
    }
    let mut nonce = [0u8; 16];
    for (i, b) in nonce.iter_mut().enumerate() {
        *b = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(((vo.to_owned(), nonce), expires.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::access::TicketTerms;
    use vw_chunkstore::VoKey;

    fn ticket(key: &VoKey, expires_s: u64) -> Ticket {
        let terms = TicketTerms {
            cluster: "c".into(),
            deployment: "d".into(),
            workspace: blake3::hash(b"<w/>"),
            manifests: Default::default(),
            expires_s,
        };
        Ticket::sign(key, &terms).expect("sign")
    }

    #[test]
    fn a_ticket_is_admitted_once_across_restarts_until_it_expires() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = VoKey::generate("a").expect("key");
        let (t, other) = (ticket(&key, 1_000), ticket(&key, 1_000));
        let seen = Seen::open(dir.path(), 100).expect("open");
        assert!(seen.admit(&t, 100).expect("admit"));
        assert!(!seen.admit(&t, 200).expect("replay"), "a replay is refused");
        assert!(seen.admit(&other, 200).expect("another nonce"));
        drop(seen);
        let seen = Seen::open(dir.path(), 300).expect("reopen");
        assert!(seen.was_admitted(&t, 300));
        assert!(!seen.admit(&t, 300).expect("replay after a restart"));
        drop(seen);
        // Past its expiry it is forgotten (and refused by check_ticket anyway).
        let seen = Seen::open(dir.path(), 1_000).expect("reopen");
        assert!(seen.is_empty());
        let text = std::fs::read_to_string(dir.path().join(FILE)).expect("read");
        assert!(text.is_empty(), "expired lines are dropped: {text}");
    }

    #[test]
    fn a_damaged_record_names_its_file_and_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join(FILE), "a 00000000000000000000000000000000 5\nnonsense\n")
            .expect("write");
        let err = Seen::open(dir.path(), 0).expect_err("damaged").to_string();
        assert!(err.contains("tickets.seen, line 2"), "{err}");
    }
}
