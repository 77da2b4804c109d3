//! A simulated hypervisor, for machines without Xen (tests, CI, the demo).
//!
//! It does what `xl` would check before creating a domain (the config reads, names a
//! kernel or bootloader, its disks exist, its vifs are well formed; see
//! [`super::config::check`]), refuses what Xen refuses (a second domain of the same
//! name, pausing an absent domain), and keeps the domains' states in a JSON file of
//! its own, apart from the manager's records, so a restarted manager has something to
//! reconcile with. It never runs a guest, and [`Driver::simulated`] says so.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use super::{config, DomainState, Driver, DriverKind, GuestReport, StopHow, XenError};

/// The simulated hypervisor's state file, under its directory.
const STATE_FILE: &str = "domains.json";

/// The simulated driver.
#[derive(Debug)]
pub struct SimulatedDriver {
    path: PathBuf,
    /// Serialises read-modify-write of the state file within this process (the store
    /// lock keeps other processes out).
    lock: Mutex<()>,
    /// The simulated boots of domains whose disks are lazy disks' sockets: each is up
    /// once it has read what a boot reads.
    #[cfg(feature = "host")]
    boots: Mutex<
        std::collections::HashMap<String, std::sync::Arc<Mutex<super::simulated_boot::Boot>>>,
    >,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct State {
    next_domid: u32,
    domains: BTreeMap<String, Domain>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Domain {
    domid: u32,
    state: DomainState,
    cfg: PathBuf,
}

impl SimulatedDriver {
    /// A simulated hypervisor keeping its state in `dir`.
    pub fn new(dir: &Path) -> Self {
        SimulatedDriver {
            path: dir.join(STATE_FILE),
            lock: Mutex::new(()),
            #[cfg(feature = "host")]
            boots: Mutex::default(),
        }
    }

    fn state_err(&self, error: std::io::Error) -> XenError {
        XenError::State { path: self.path.clone(), error }
    }

    fn read(&self) -> Result<State, XenError> {
        match fs::read(&self.path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| self.state_err(e.into())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Ok(State { next_domid: 1, ..State::default() })
            }
            Err(e) => Err(self.state_err(e)),
        }
    }

    /// Writes the state through a temp file and a rename.
    fn write(&self, state: &State) -> Result<(), XenError> {
        let dir = self.path.parent().expect("the state file has a directory");
        fs::create_dir_all(dir).map_err(|e| self.state_err(e))?;
        let tmp = self.path.with_extension("json.tmp");
        let bytes = serde_json::to_vec_pretty(state).map_err(|e| self.state_err(e.into()))?;
        let mut f = fs::File::create(&tmp).map_err(|e| self.state_err(e))?;
        f.write_all(&bytes).and_then(|()| f.sync_all()).map_err(|e| self.state_err(e))?;
        fs::rename(&tmp, &self.path).map_err(|e| self.state_err(e))
    }

    /// Applies `f` to the state and saves it.
    fn update<T>(&self, f: impl FnOnce(&mut State) -> Result<T, XenError>) -> Result<T, XenError> {
        let _guard = self.lock.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut state = self.read()?;
        let out = f(&mut state)?;
        self.write(&state)?;
        Ok(out)
    }

    /// Changes a domain's state from `from` to `to`, as `op`.
    fn transition(
        &self,
        domain: &str,
        op: &str,
        from: DomainState,
        to: DomainState,
    ) -> Result<(), XenError> {
        self.update(|s| {
            let d = s.domains.get_mut(domain).ok_or_else(|| absent(domain, op))?;
            if d.state != from {
                return Err(XenError::Simulated(format!(
                    "cannot {op} domain {domain}: it is {}",
                    d.state
                )));
            }
            d.state = to;
            Ok(())
        })
    }
}

#[cfg(feature = "host")]
impl SimulatedDriver {
    /// Starts the simulated boot of `domain` if its disks include lazy disks' sockets.
    fn boot(&self, domain: &str) -> Result<(), XenError> {
        use std::os::unix::fs::FileTypeExt as _;
        if self.boots.lock().expect("boots lock").contains_key(domain) {
            return Ok(()); // unpaused after a pause: it booted already
        }
        let cfg = self.read()?.domains.get(domain).map(|d| d.cfg.clone());
        let Some(cfg) = cfg else { return Ok(()) };
        let bad = |reason: String| XenError::BadConfig { path: cfg.clone(), reason };
        let text = fs::read_to_string(&cfg).map_err(|e| bad(e.to_string()))?;
        let sockets: Vec<PathBuf> = config::disk_targets(&text)
            .map_err(bad)?
            .into_iter()
            .filter(|t| fs::metadata(t).is_ok_and(|m| m.file_type().is_socket()))
            .collect();
        let mut boots = self.boots.lock().expect("boots lock");
        if sockets.is_empty() {
            boots.remove(domain);
        } else {
            boots.insert(domain.to_owned(), super::simulated_boot::start(domain, sockets));
        }
        Ok(())
    }
}

fn absent(domain: &str, op: &str) -> XenError {
    XenError::Simulated(format!("cannot {op} {domain}: no such domain"))
}

impl Driver for SimulatedDriver {
    fn kind(&self) -> DriverKind {
        DriverKind::Simulated
    }

    fn load(&self, domain: &str, cfg: &Path) -> Result<(), XenError> {
        let bad = |reason: String| XenError::BadConfig { path: cfg.to_owned(), reason };
        let text = fs::read_to_string(cfg).map_err(|e| bad(e.to_string()))?;
        let name = config::check(&text).map_err(bad)?;
        if name != domain {
            return Err(bad(format!("it names domain {name}, not {domain}")));
        }
        self.update(|s| {
            if s.domains.contains_key(domain) {
                return Err(XenError::Simulated(format!(
                    "domain with name \"{domain}\" already exists"
                )));
            }
            let domid = s.next_domid.max(1);
            s.next_domid = domid + 1;
            s.domains.insert(
                domain.to_owned(),
                Domain { domid, state: DomainState::Paused, cfg: cfg.to_owned() },
            );
            Ok(())
        })
    }

    fn unpause(&self, domain: &str) -> Result<(), XenError> {
        self.transition(domain, "unpause", DomainState::Paused, DomainState::Running)?;
        #[cfg(feature = "host")]
        self.boot(domain)?;
        Ok(())
    }

    fn pause(&self, domain: &str) -> Result<(), XenError> {
        self.transition(domain, "pause", DomainState::Running, DomainState::Paused)
    }

    fn stop(&self, domain: &str) -> Result<StopHow, XenError> {
        #[cfg(feature = "host")]
        self.boots.lock().expect("boots lock").remove(domain);
        self.update(|s| {
            Ok(if s.domains.remove(domain).is_some() { StopHow::Shutdown } else { StopHow::Absent })
        })
    }

    fn destroy(&self, domain: &str) -> Result<StopHow, XenError> {
        #[cfg(feature = "host")]
        self.boots.lock().expect("boots lock").remove(domain);
        self.update(|s| {
            Ok(if s.domains.remove(domain).is_some() {
                StopHow::Destroyed
            } else {
                StopHow::Absent
            })
        })
    }

    fn status(&self, domain: &str) -> Result<Option<DomainState>, XenError> {
        Ok(self.read()?.domains.get(domain).map(|d| d.state))
    }

    /// No guest runs here: a running domain gets a report that says it is simulated
    /// (one booting from lazy disks once its simulated boot has read them).
    fn guest_report(&self, domain: &str) -> Result<Option<GuestReport>, XenError> {
        #[cfg(feature = "host")]
        if let Some(boot) = self.boots.lock().expect("boots lock").get(domain) {
            match &*boot.lock().expect("boot lock") {
                super::simulated_boot::Boot::Reading => return Ok(None),
                super::simulated_boot::Boot::Up => {}
                super::simulated_boot::Boot::Failed(why) => {
                    return Err(XenError::Simulated(format!(
                        "the simulated guest of {domain} cannot read its disk: {why}"
                    )))
                }
            }
        }
        Ok((self.status(domain)? == Some(DomainState::Running))
            .then(|| GuestReport { pairs: Vec::new(), simulated: true }))
    }

    fn console_tail(&self, _domain: &str, _lines: usize) -> Vec<String> {
        vec!["simulated driver: no guest, no console".to_owned()]
    }

    /// Asking is a look at this driver's own records: ten times a second, so the
    /// testnet's times to ready are known to within 0.1 s.
    fn ready_poll(&self) -> std::time::Duration {
        std::time::Duration::from_millis(100)
    }
}
