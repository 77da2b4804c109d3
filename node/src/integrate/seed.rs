//! The cloud-init NoCloud seed volume: a small vfat file system labelled `CIDATA`
//! holding `meta-data`, `network-config` and `user-data`, attached to the VM read-only
//! as an extra disk. Built with dosfstools and mtools (no mount, no root), every file
//! read back, written under a temp name and renamed into place.

use std::ffi::OsStr;
use std::fs;
use std::path::Path;

use super::{files, run_tool, IntegrationError, VmSetup};

/// The volume label cloud-init looks for.
pub const LABEL: &str = "CIDATA";
/// Volume size in KiB (the documents take a few KiB).
const SIZE_KIB: u32 = 1024;

/// The three NoCloud documents, by file name.
pub fn documents(setup: &VmSetup) -> [(&'static str, String); 3] {
    [
        ("meta-data", files::meta_data(setup)),
        ("network-config", files::network_config(setup)),
        ("user-data", files::user_data(setup)),
    ]
}

/// Writes the seed volume for `setup` to `out`.
pub fn make(setup: &VmSetup, out: &Path) -> Result<(), IntegrationError> {
    let tmp = out.with_extension("tmp");
    let result = build(setup, &tmp).and_then(|()| {
        fs::File::open(&tmp)
            .and_then(|f| f.sync_all())
            .map_err(|e| IntegrationError::io("sync", &tmp, e))?;
        fs::rename(&tmp, out).map_err(|e| IntegrationError::io("rename", &tmp, e))
    });
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

fn build(setup: &VmSetup, tmp: &Path) -> Result<(), IntegrationError> {
    let _ = fs::remove_file(tmp);
    let staging = tempdir(tmp)?;
    let docs = documents(setup);
    let mut locals = Vec::new();
    for (name, content) in &docs {
        let local = staging.join(name);
        fs::write(&local, content).map_err(|e| IntegrationError::io("write", &local, e))?;
        locals.push(local);
    }
    let size = SIZE_KIB.to_string();
    let result = (|| {
        run_tool(
            "mkfs.vfat",
            "dosfstools",
            &["-n".as_ref(), LABEL.as_ref(), "-C".as_ref(), tmp.as_os_str(), size.as_ref()],
            tmp,
        )?;
        let mut args: Vec<&OsStr> = vec!["-i".as_ref(), tmp.as_os_str()];
        args.extend(locals.iter().map(|l| l.as_os_str()));
        args.push("::/".as_ref());
        run_tool("mcopy", "mtools", &args, tmp)?;
        for (name, content) in &docs {
            let inside = format!("::/{name}");
            let back = run_tool(
                "mtype",
                "mtools",
                &["-i".as_ref(), tmp.as_os_str(), inside.as_ref()],
                tmp,
            )?;
            if back != content.as_bytes() {
                let detail = format!("{} bytes written, {} read", content.len(), back.len());
                return Err(IntegrationError::Readback {
                    image: tmp.to_owned(),
                    file: (*name).to_owned(),
                    detail,
                });
            }
        }
        Ok(())
    })();
    let _ = fs::remove_dir_all(&staging);
    result
}

/// A private scratch directory beside `near`.
pub(crate) fn tempdir(near: &Path) -> Result<std::path::PathBuf, IntegrationError> {
    let dir = near.with_extension(format!("staging.{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).map_err(|e| IntegrationError::io("create", &dir, e))?;
    Ok(dir)
}
