//! `vw vo create|ls|export|seal|sign-ticket`: the VO keys this user holds, one `NAME.key` file (mode
//! 0600) per VO in the VO directory (`--vo-dir`, `$VW_VO_DIR`, else
//! `~/.config/vw/vo`, else, with no home, `/etc/vw/vo`). The secret half never leaves it; the public half goes into the
//! cluster config's `[[vo]]` list.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use vw_node::access::{Ticket, TicketTerms};
use vw_node::chunkstore::chunker::ChunkerParams;
use vw_node::chunkstore::{
    manifest_of_file, ImageName, ImageRef, ManifestId, Seal, Visibility, VoKey,
};
use vw_node::config::VoConfig;

use crate::output::Out;

/// The VO directory: `dir` if given, else `$XDG_CONFIG_HOME/vw/vo` or
/// `~/.config/vw/vo`, else (no home: a service, a bare root shell) the host's
/// [`SYSTEM_DIR`].
pub fn dir(dir: Option<&Path>) -> PathBuf {
    dir_from(dir, std::env::var_os("XDG_CONFIG_HOME"), std::env::var_os("HOME"))
}

fn dir_from(
    dir: Option<&Path>,
    xdg_config_home: Option<std::ffi::OsString>,
    home: Option<std::ffi::OsString>,
) -> PathBuf {
    if let Some(d) = dir {
        return d.to_owned();
    }
    xdg_config_home
        .map(PathBuf::from)
        .or_else(|| home.map(|h| PathBuf::from(h).join(".config")))
        .map_or_else(|| PathBuf::from(SYSTEM_DIR), |config| config.join("vw").join("vo"))
}

/// The key file of `vo` in `dir`.
fn path(dir: &Path, vo: &str) -> PathBuf {
    dir.join(format!("{vo}.key"))
}

/// Where VO keys kept for the whole host live (root's, mode 0700): looked in after the
/// user's directory, so `sudo vw deploy` finds them whatever root's home holds.
pub const SYSTEM_DIR: &str = "/etc/vw/vo";

/// Loads `vo`'s key from `dir`, else from [`SYSTEM_DIR`], saying where it looked and
/// how to make one if there is none.
pub fn key(dir: &Path, vo: &str) -> anyhow::Result<VoKey> {
    key_in(&[dir, Path::new(SYSTEM_DIR)], vo)
}

/// Loads `vo`'s key from the first of `dirs` that has it.
fn key_in(dirs: &[&Path], vo: &str) -> anyhow::Result<VoKey> {
    match dirs.iter().map(|d| path(d, vo)).find(|p| p.exists()) {
        Some(path) => Ok(VoKey::load(&path)?),
        None => {
            let looked: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
            anyhow::bail!(
                "no key for VO {vo} in {}: create one with `vw vo create {vo}` (and add `vw vo export {vo}` to the cluster config), or pass --vo-dir",
                looked.join(" or ")
            )
        }
    }
}

/// `vw vo create NAME`.
pub fn create(dir: &Path, vo: &str, out: &Out) -> anyhow::Result<ExitCode> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = path(dir, vo);
    if path.exists() {
        anyhow::bail!("{} exists: VO {vo} has a key already (`vw vo ls`)", path.display());
    }
    let key = VoKey::generate(vo)?;
    key.save(&path)?;
    let public = key.public();
    out.emit(&serde_json::json!({ "vo": vo, "key": public.to_string(), "file": path }), || {
        format!(
            "created VO {vo}: {} (mode 0600)\nadd this to the cluster config of every host:\n\n{}",
            path.display(),
            VoConfig::entry(vo, &public, false)
        )
    });
    Ok(ExitCode::SUCCESS)
}

/// `vw vo ls`.
pub fn ls(dir: &Path, out: &Out) -> anyhow::Result<ExitCode> {
    let mut keys = Vec::new();
    if dir.exists() {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .with_context(|| format!("reading {}", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "key"))
            .collect();
        files.sort();
        for f in files {
            let key = VoKey::load(&f)?;
            keys.push(
                serde_json::json!({ "vo": key.vo(), "key": key.public().to_string(), "file": f }),
            );
        }
    }
    out.emit(&keys, || {
        if keys.is_empty() {
            return format!("no VO keys in {} (`vw vo create NAME`)", dir.display());
        }
        keys.iter()
            .map(|k| {
                format!(
                    "{:<12} {}",
                    k["vo"].as_str().unwrap_or("?"),
                    k["key"].as_str().unwrap_or("?")
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    });
    Ok(ExitCode::SUCCESS)
}

/// `vw vo export NAME`: the public half, as a cluster-config entry.
pub fn export(dir: &Path, vo: &str, out: &Out) -> anyhow::Result<ExitCode> {
    let public = key(dir, vo)?.public();
    out.emit(&serde_json::json!({ "vo": vo, "key": public.to_string() }), || {
        VoConfig::entry(vo, &public, false).trim_end().to_owned()
    });
    Ok(ExitCode::SUCCESS)
}

/// `vw vo seal FILE --name VO/NAME:TAG`: seals an image where the VO's key lives,
/// without a store. The head then imports the file under the seal (`vw image import
/// FILE --seal SEAL`) and never needs the key.
pub fn seal(
    dir: &Path,
    file: &Path,
    name: &ImageName,
    visibility: Visibility,
    to: &Path,
    out: &Out,
) -> anyhow::Result<ExitCode> {
    let key = key(dir, name.vo())?;
    key.may_sign(name)?;
    let manifest = manifest_of_file(file, ChunkerParams::DEFAULT)?;
    let seal = Seal::sign(&key, name, manifest.id(), visibility)?;
    write_new(to, &seal.encode())?;
    let report = serde_json::json!({
        "name": name.to_string(),
        "manifest": manifest.id(),
        "visibility": visibility,
        "seal": to,
    });
    out.emit(&report, || {
        format!(
            "sealed {name} ({visibility:?}) = manifest {} in {}\nimport it on the head with `vw image import {} --seal {}`",
            manifest.id().to_hex(),
            to.display(),
            file.display(),
            to.display()
        )
    });
    Ok(ExitCode::SUCCESS)
}

/// What `vw vo sign-ticket` signs for.
#[derive(Debug)]
pub struct TicketRequest<'a> {
    /// The workspace document.
    pub workspace: &'a Path,
    /// The cluster's name.
    pub cluster: &'a str,
    /// Seal files naming the manifests of the document's images.
    pub seals: &'a [PathBuf],
    /// `NAME=MANIFEST-ID` pairs for images the VO holds no seal file for.
    pub images: &'a [String],
    /// Seconds it stays valid.
    pub valid_s: u64,
}

/// `vw vo sign-ticket WORKSPACE --vo VO --cluster-name NAME`: a ticket signed where the
/// VO's key lives, for `vw deploy --ticket FILE` on a head that holds no VO key.
pub fn sign_ticket(
    dir: &Path,
    vo: &str,
    request: &TicketRequest<'_>,
    to: &Path,
    out: &Out,
) -> anyhow::Result<ExitCode> {
    let key = key(dir, vo)?;
    let text = std::fs::read_to_string(request.workspace)
        .with_context(|| format!("reading {}", request.workspace.display()))?;
    let spec = vw_node::workspace::parse(&text, &request.workspace.display().to_string())?;
    let mut known: Vec<(String, ManifestId)> = Vec::new();
    for path in request.seals {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let seal = Seal::decode(&bytes).with_context(|| format!("seal {}", path.display()))?;
        known.push((seal.name().to_string(), seal.manifest()));
    }
    for pair in request.images {
        let (name, id) = pair
            .split_once('=')
            .with_context(|| format!("--image `{pair}`: write NAME=MANIFEST-ID"))?;
        let id: ManifestId =
            id.parse().map_err(|e| anyhow::anyhow!("--image `{pair}`: manifest id: {e}"))?;
        known.push((name.to_owned(), id));
    }
    let mut manifests = std::collections::BTreeSet::new();
    for r in spec.image_refs() {
        let id = match r {
            ImageRef::Id(id) => *id,
            ImageRef::Name(n) => known.iter().find(|(k, _)| *k == n.to_string()).map(|(_, id)| *id).with_context(|| {
                format!(
                    "image {n}: no manifest id for it; pass its seal (--seal FILE, from `vw vo seal`) or --image {n}=ID (from `vw image ls` on the head)"
                )
            })?,
        };
        manifests.insert(id);
    }
    let terms = TicketTerms {
        cluster: request.cluster.to_owned(),
        deployment: spec.name.clone(),
        workspace: blake3::hash(text.as_bytes()),
        manifests,
        expires_s: now_s() + request.valid_s,
    };
    let ticket = Ticket::sign(&key, &terms).map_err(anyhow::Error::msg)?;
    write_new(to, &ticket.encode())?;
    let report = serde_json::json!({
        "vo": vo,
        "cluster": terms.cluster,
        "deployment": terms.deployment,
        "manifests": terms.manifests,
        "expires_s": terms.expires_s,
        "ticket": to,
    });
    out.emit(&report, || {
        format!(
            "VO {vo} may deploy {} on cluster {} from {} manifests for {} s: {}\ndeploy it on the head with `vw deploy {} --ticket {}`",
            terms.deployment,
            terms.cluster,
            terms.manifests.len(),
            request.valid_s,
            to.display(),
            request.workspace.display(),
            to.display()
        )
    });
    Ok(ExitCode::SUCCESS)
}

/// Seconds since the epoch.
pub fn now_s() -> u64 {
    let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
    since.map(|d| d.as_secs()).unwrap_or(0)
}

/// A duration: seconds, or a number with `s`, `m`, `h` or `d`.
pub fn parse_duration(text: &str) -> anyhow::Result<u64> {
    let (digits, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(at) => text.split_at(at),
        None => (text, "s"),
    };
    let n: u64 = digits.parse().with_context(|| format!("`{text}`: not a duration"))?;
    let scale = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => anyhow::bail!("`{text}`: a number with s, m, h or d"),
    };
    n.checked_mul(scale).with_context(|| format!("`{text}`: too long"))
}

/// Writes `bytes` to a new file `to` (never over an existing one): at a temp name
/// first, then renamed, so a reader never sees half a file.
fn write_new(to: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write as _;
    if to.exists() {
        anyhow::bail!("{} exists; remove it or name another file", to.display());
    }
    let name = to.file_name().with_context(|| format!("{}: not a file name", to.display()))?;
    let temp = to.with_file_name(format!(".{}.tmp", name.to_string_lossy()));
    let _ = std::fs::remove_file(&temp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&temp)
        .with_context(|| format!("creating {}", temp.display()))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .with_context(|| format!("writing {}", temp.display()))?;
    std::fs::hard_link(&temp, to).with_context(|| format!("writing {}", to.display()))?;
    let _ = std::fs::remove_file(&temp);
    Ok(())
}

#[cfg(test)]
mod tests {

    /// Without a home (vw run by a service, or a bare root shell) the VO directory is
    /// the host's, not an error.
    #[test]
    fn without_a_home_the_vo_directory_is_the_hosts() {
        let home = Some(std::ffi::OsString::from("/home/alice"));
        assert_eq!(dir_from(None, None, home.clone()), Path::new("/home/alice/.config/vw/vo"));
        let xdg = Some(std::ffi::OsString::from("/x"));
        assert_eq!(dir_from(None, xdg, home), Path::new("/x/vw/vo"));
        assert_eq!(dir_from(None, None, None), Path::new(SYSTEM_DIR));
        assert_eq!(dir_from(Some(Path::new("/d")), None, None), Path::new("/d"));
    }

    use super::*;

    #[test]
    fn durations_read_as_seconds() {
        assert_eq!(parse_duration("90").expect("secs"), 90);
        assert_eq!(parse_duration("15m").expect("mins"), 900);
        assert_eq!(parse_duration("2h").expect("hours"), 7200);
        assert_eq!(parse_duration("1d").expect("days"), 86_400);
        assert!(parse_duration("1w").is_err());
        assert!(parse_duration("h").is_err());
    }

    /// A key is found in the user's directory first, then in the host's.
    #[test]
    fn keys_are_found_in_the_users_directory_then_the_hosts() {
        let (user, host) = (tempfile::tempdir().expect("dir"), tempfile::tempdir().expect("dir"));
        let save = |dir: &Path, vo: &str| {
            let key = VoKey::generate(vo).expect("key");
            key.save(&path(dir, vo)).expect("save");
            key.public()
        };
        let mine = save(user.path(), "grid3");
        save(host.path(), "grid3");
        let site = save(host.path(), "site");
        let dirs = [user.path(), host.path()];
        assert_eq!(key_in(&dirs, "grid3").expect("user's").public(), mine);
        assert_eq!(key_in(&dirs, "site").expect("host's").public(), site);
        let err = key_in(&dirs, "atlas").expect_err("none").to_string();
        let both = format!("{} or {}", user.path().display(), host.path().display());
        assert!(err.contains(&both), "{err}");
    }
}
