//! Which host files a guest may boot from.
//!
//! A workspace is untrusted input to every host, and `xl` reads a guest's kernel and
//! ramdisk as root: a ramdisk of `/var/lib/vw/node.key` would hand the host's key to the
//! guest. So a `<kernel path ramdisk>` names a file in one of the directories the
//! host's cluster config allows (`[xen] kernel_dirs`, or the VO's own list): a bare
//! name is looked up in them in order, and every path is resolved with symlinks
//! followed and refused unless the file it reaches is a regular file inside one of
//! them. The domain config then names the resolved file, never the document's text.
//!
//! A bootloader is only ever pygrub, run restricted (the workspace validator and
//! [`super::config::DomainConfig::render`] refuse anything else).

use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use super::XenError;
use crate::workspace::{Boot, NodeSpec, WorkspaceSpec};

/// `spec` with the kernel and ramdisk of every node with a VM `here` (Xen domain names)
/// replaced by the file it resolves to in `dirs`; refused if any resolves elsewhere, or
/// to nothing. The other nodes boot on other hosts, which check them against their own
/// directories.
pub fn resolve_spec(
    spec: &WorkspaceSpec,
    here: &[String],
    dirs: &[PathBuf],
) -> Result<WorkspaceSpec, XenError> {
    let mut out = spec.clone();
    for node in out.nodes_of_mut(here) {
        resolve_node(node, dirs)?;
    }
    Ok(out)
}

fn resolve_node(node: &mut NodeSpec, dirs: &[PathBuf]) -> Result<(), XenError> {
    if let Boot::Kernel { kernel, ramdisk, .. } = &mut node.boot {
        let refused = |key: &'static str, path: &str, reason: String| XenError::HostFile {
            node: node.name.clone(),
            key,
            path: path.to_owned(),
            reason,
        };
        *kernel = resolve(kernel, dirs).map_err(|r| refused("kernel", kernel, r))?;
        if let Some(r) = ramdisk {
            *r = resolve(r, dirs).map_err(|reason| refused("ramdisk", r, reason))?;
        }
    }
    Ok(())
}

/// The file `name` reaches in `dirs`, as a canonical path.
fn resolve(name: &str, dirs: &[PathBuf]) -> Result<String, String> {
    let allowed: Vec<PathBuf> = dirs.iter().filter_map(|d| fs::canonicalize(d).ok()).collect();
    if allowed.is_empty() {
        return Err(if dirs.is_empty() {
            "this host allows no kernel directory; set [xen] kernel_dirs (or the VO's \
             kernel_dirs) in its cluster config"
                .into()
        } else {
            format!("none of this host's kernel directories exists ({})", list(dirs))
        });
    }
    let candidates: Vec<PathBuf> = if Path::new(name).is_absolute() {
        vec![PathBuf::from(name)]
    } else {
        allowed.iter().map(|d| d.join(name)).collect()
    };
    for candidate in candidates {
        let real = match fs::canonicalize(&candidate) {
            Ok(real) => real,
            Err(e) if e.kind() == ErrorKind::NotFound => continue,
            Err(e) => return Err(format!("{}: {e}", candidate.display())),
        };
        if !allowed.iter().any(|d| real.starts_with(d)) {
            return Err(format!(
                "resolves to {}, outside this host's kernel directories ({})",
                real.display(),
                list(&allowed)
            ));
        }
        let meta = fs::metadata(&real).map_err(|e| format!("{}: {e}", real.display()))?;
        if !meta.is_file() {
            return Err(format!("{} is not a regular file", real.display()));
        }
        return real
            .into_os_string()
            .into_string()
            .map_err(|p| format!("{} is not UTF-8", Path::new(&p).display()));
    }
    Err(format!("no such file in this host's kernel directories ({})", list(&allowed)))
}

fn list(dirs: &[PathBuf]) -> String {
    dirs.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lab() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().expect("tempdir");
        let kernels = dir.path().join("kernels");
        fs::create_dir(&kernels).expect("mkdir");
        fs::write(kernels.join("vmlinuz"), b"k").expect("write");
        fs::write(dir.path().join("node.key"), b"secret").expect("write");
        (dir, kernels)
    }

    #[test]
    fn a_name_or_a_path_inside_an_allowed_directory_resolves_to_its_file() {
        let (_dir, kernels) = lab();
        let real = fs::canonicalize(kernels.join("vmlinuz")).expect("real");
        let dirs = [kernels.clone()];
        assert_eq!(resolve("vmlinuz", &dirs), Ok(real.display().to_string()));
        let absolute = kernels.join("vmlinuz").display().to_string();
        assert_eq!(resolve(&absolute, &dirs), Ok(real.display().to_string()));
    }

    /// A host checks the kernels of the nodes it runs VMs of; the head's kernel is the
    /// head's host's business (each host has its own directories).
    #[test]
    fn only_the_nodes_with_vms_here_are_resolved() {
        let (_dir, kernels) = lab();
        let spec = crate::workspace::parse(
            r#"<virtualWorkspace type="cluster" name="c" nodeNumber="2">
  <headnode name="head"><memory>64</memory><vcpus>1</vcpus><kernel path="head-only"/>
    <partition image="vo/head:1" device="xvda1" role="root"/></headnode>
  <workernode name="w" count="1"><memory>64</memory><vcpus>1</vcpus><kernel path="vmlinuz"/>
    <partition image="vo/w:1" device="xvda1" role="root"/></workernode>
</virtualWorkspace>"#,
            "c.xml",
        )
        .expect("workspace");
        let dirs = [kernels.clone()];
        let out = resolve_spec(&spec, &["c-w1".into()], &dirs).expect("the worker's kernel");
        let kernel = |n: &NodeSpec| match &n.boot {
            Boot::Kernel { kernel, .. } => kernel.clone(),
            Boot::Bootloader { .. } => unreachable!(),
        };
        assert_eq!(kernel(&out.head), "head-only");
        let worker = &out.workers.as_ref().expect("workers").template;
        assert!(kernel(worker).starts_with('/'), "{}", kernel(worker));
        let err = resolve_spec(&spec, &["c-head".into()], &dirs).expect_err("no head kernel");
        assert!(err.to_string().contains("node head: kernel `head-only`"), "{err}");
    }

    #[test]
    fn a_path_that_leaves_the_allowed_directories_is_refused() {
        let (dir, kernels) = lab();
        let key = dir.path().join("node.key");
        std::os::unix::fs::symlink(&key, kernels.join("initrd.img")).expect("symlink");
        let dirs = [kernels.clone()];
        for name in [
            "initrd.img".to_owned(),
            "../node.key".to_owned(),
            key.display().to_string(),
            format!("{}/../node.key", kernels.display()),
        ] {
            let err = resolve(&name, &dirs).expect_err(&name);
            assert!(err.contains("outside this host's kernel directories"), "{name}: {err}");
        }
        let err = resolve("/etc", &[PathBuf::from("/")]).expect_err("a directory");
        assert!(err.contains("not a regular file"), "{err}");
        let err = resolve("nothing", &dirs).expect_err("missing");
        assert!(err.contains("no such file"), "{err}");
        let err = resolve("vmlinuz", &[]).expect_err("no directories");
        assert!(err.contains("set [xen] kernel_dirs"), "{err}");
    }
}
