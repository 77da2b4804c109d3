//! `vw vo create|ls|export`: the VO keys this user holds, one `NAME.key` file (mode
//! 0600) per VO in the VO directory (`--vo-dir`, `$VW_VO_DIR`, else
//! `~/.config/vw/vo`). The secret half never leaves it; the public half goes into the
//! cluster config's `[[vo]]` list.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use vw_node::chunkstore::VoKey;
use vw_node::config::VoConfig;

use crate::output::Out;

/// The VO directory: `dir` if given, else `~/.config/vw/vo`.
pub fn dir(dir: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(d) = dir {
        return Ok(d.to_owned());
    }
    let config = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
        .context("no VO directory: set --vo-dir, VW_VO_DIR or HOME")?;
    Ok(config.join("vw").join("vo"))
}

/// The key file of `vo` in `dir`.
fn path(dir: &Path, vo: &str) -> PathBuf {
    dir.join(format!("{vo}.key"))
}

/// Loads `vo`'s key from `dir`, saying how to make one if there is none.
pub fn key(dir: &Path, vo: &str) -> anyhow::Result<VoKey> {
    let path = path(dir, vo);
    if !path.exists() {
        anyhow::bail!(
            "no key for VO {vo} in {}: create one with `vw vo create {vo}` (and add `vw vo export {vo}` to the cluster config), or pass --vo-dir",
            dir.display()
        );
    }
    Ok(VoKey::load(&path)?)
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
