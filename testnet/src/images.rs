//! The scenario's images: the project's Debian images (`scripts/xenlab/build.sh`), or generated ones
//! sharing a base. Imported once into two template stores, copied into each run's
//! fresh data directories: the head's (every image) and a cached host's (the base OS).
//! The templates and generated images are scratch, removed with the testnet.

use std::path::{Path, PathBuf};

use std::sync::Arc;

use vw_localnet::{DemoImages, LocalVos};
use vw_node::chunkstore::{ImageName, ImageRef, Store, Visibility};

use crate::scenario::{ImageSource, Images, WorkerImage};
use crate::TestnetError;

/// Where `scripts/xenlab/build.sh` puts the project's Debian images.
pub const DEBIAN_IMAGES: &str = "/var/cache/vw-xenlab/images";

/// Image names in the stores.
pub const BASE: &str = "base/os:1";
/// The first VO's worker.
pub const WORKER: &str = "vo1/worker:1";
/// The second VO's worker.
pub const VO2: &str = "vo2/worker:1";

/// The image files and the template stores made from them.
#[derive(Clone, Debug)]
pub struct ImageSet {
    /// The base OS.
    pub base: PathBuf,
    /// The first VO's worker.
    pub worker: PathBuf,
    /// The second VO's worker.
    pub vo2: PathBuf,
    /// A store holding all three (the head's).
    pub head_store: PathBuf,
    /// A store holding the base (a host with the base OS cached).
    pub cached_store: PathBuf,
    /// The two worker images' lengths in bytes (worker, vo2).
    lens: (u64, u64),
    /// What the second VO's worker holds that the first's does not: distinct non-zero
    /// chunk bytes, what a host holding only the first VO's worker lacks of it.
    pub vo2_unique: u64,
    /// The second VO's worker in distinct non-zero chunk bytes: what a host lacks of it
    /// when it may count none of the first VO's chunks (the first VO isolated).
    pub vo2_distinct: u64,
    /// The VOs (`base`, whose OS image is public, `vo1`, `vo2`): their keys, and the
    /// cluster config every vwd trusts them by.
    pub vos: Arc<LocalVos>,
}

/// A worker image: its file, its name in the stores, its length.
#[derive(Clone, Copy, Debug)]
pub struct WorkerFile<'a> {
    /// The original file.
    pub path: &'a Path,
    /// Its name in the stores.
    pub name: &'static str,
    /// Its length in bytes.
    pub len: u64,
}

impl ImageSet {
    /// Finds or generates the images and imports them into templates under `work`.
    pub fn prepare(images: &Images, work: &Path) -> Result<ImageSet, TestnetError> {
        let (base, worker, vo2) = match images.source {
            ImageSource::Debian => {
                let dir = std::env::var_os("VW_IMAGES")
                    .map(PathBuf::from)
                    .or_else(|| images.dir.clone())
                    .unwrap_or_else(|| DEBIAN_IMAGES.into());
                let files = ["guest-base.img", "worker.img", "vo2worker.img"].map(|f| dir.join(f));
                if let Some(missing) = files.iter().find(|f| !f.is_file()) {
                    return Err(TestnetError::Run(format!(
                        "{} is missing: build the Debian images with `scripts/xenlab/build.sh guests` \
                         (they go to {DEBIAN_IMAGES}; or set VW_IMAGES), or use a synthetic scenario",
                        missing.display()
                    )));
                }
                let [b, w, v] = files;
                (b, w, v)
            }
            ImageSource::Synthetic => {
                let dir = work.join("images");
                crate::net::scratch_dir(&dir)?;
                let d = DemoImages::write(&dir, images.size_mib.unwrap_or(64))?;
                (d.base, d.worker, d.other)
            }
        };
        let len = |p: &Path| {
            std::fs::metadata(p).map(|m| m.len()).map_err(|error| TestnetError::Io {
                op: "stat",
                path: p.to_owned(),
                error,
            })
        };
        let lens = (len(&worker)?, len(&vo2)?);
        let vo_dir = work.join("vos");
        crate::net::scratch_dir(&vo_dir)?;
        let config = vo_dir.join("cluster.toml");
        let vos = LocalVos::create(
            &config,
            &[("base", false, ""), ("vo1", false, ""), ("vo2", false, "")],
        )?;
        let mut set = ImageSet {
            vos: Arc::new(vos),
            head_store: work.join("template-head"),
            cached_store: work.join("template-cached"),
            base,
            worker,
            vo2,
            lens,
            vo2_unique: 0,
            vo2_distinct: 0,
        };
        // Scratch: removed with the testnet.
        for d in [&set.head_store, &set.cached_store] {
            crate::net::register_dir(d);
        }
        import(
            &set.vos,
            &set.head_store,
            &[(&set.base, BASE), (&set.worker, WORKER), (&set.vo2, VO2)],
        )?;
        import(&set.vos, &set.cached_store, &[(&set.base, BASE)])?;
        (set.vo2_unique, set.vo2_distinct) = unique_bytes(&set.head_store, VO2, WORKER)?;
        Ok(set)
    }

    /// A worker image's file, name and length.
    pub fn worker(&self, which: WorkerImage) -> WorkerFile<'_> {
        match which {
            WorkerImage::Worker => {
                WorkerFile { path: &self.worker, name: WORKER, len: self.lens.0 }
            }
            WorkerImage::Vo2 => WorkerFile { path: &self.vo2, name: VO2, len: self.lens.1 },
        }
    }
}

/// Imports each image, sealed by its VO (the base OS public, the workers private).
fn import(vos: &LocalVos, store: &Path, images: &[(&PathBuf, &str)]) -> Result<(), TestnetError> {
    let s =
        Store::open(store).map_err(|e| TestnetError::Run(format!("{}: {e}", store.display())))?;
    for (path, name) in images {
        let visibility = if *name == BASE { Visibility::Public } else { Visibility::Private };
        vos.import(&s, path, name, visibility)
            .map_err(|e| TestnetError::Run(format!("importing {}: {e}", path.display())))?;
    }
    Ok(())
}

/// The distinct non-zero chunk bytes of image `name` in `store` that image `other`
/// lacks, and all of them.
fn unique_bytes(store: &Path, name: &str, other: &str) -> Result<(u64, u64), TestnetError> {
    let fail = |e: &dyn std::fmt::Display| TestnetError::Run(format!("{}: {e}", store.display()));
    let s = Store::open(store).map_err(|e| fail(&e))?;
    let chunks = |name: &str| -> Result<std::collections::HashMap<_, u64>, TestnetError> {
        let name: ImageName = name.parse().map_err(|e| fail(&e))?;
        let id = s.resolve(&ImageRef::Name(name)).map_err(|e| fail(&e))?;
        let manifest = s.manifest(&id).map_err(|e| fail(&e))?;
        Ok(manifest
            .chunks()
            .iter()
            .filter(|c| !c.is_zero())
            .map(|c| (c.id, u64::from(c.len)))
            .collect())
    };
    let (mine, theirs) = (chunks(name)?, chunks(other)?);
    let unique = mine.iter().filter(|(id, _)| !theirs.contains_key(*id)).map(|(_, len)| len).sum();
    Ok((unique, mine.values().sum()))
}

/// Copies a template store's files into `data_dir` (which already has its key and
/// config).
pub fn copy_store(template: &Path, data_dir: &Path) -> Result<(), TestnetError> {
    let from = format!("{}/.", template.display());
    crate::net::run("cp", &["-a", "--reflink=auto", &from, &data_dir.display().to_string()])
        .map(drop)
}

/// Compares `exported` with `original` byte for byte; the first differing offset if
/// they differ.
pub fn first_difference(original: &Path, exported: &Path) -> Result<Option<u64>, TestnetError> {
    use std::io::Read as _;
    let open = |p: &Path| {
        std::fs::File::open(p).map_err(|error| TestnetError::Io {
            op: "open",
            path: p.into(),
            error,
        })
    };
    let (mut a, mut b) = (open(original)?, open(exported)?);
    let (mut ba, mut bb) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    let mut offset = 0u64;
    loop {
        let na = read_full(&mut a, &mut ba).map_err(|error| TestnetError::Io {
            op: "read",
            path: original.into(),
            error,
        })?;
        let nb = read_full(&mut b, &mut bb).map_err(|error| TestnetError::Io {
            op: "read",
            path: exported.into(),
            error,
        })?;
        if let Some(i) = ba[..na.min(nb)].iter().zip(&bb[..na.min(nb)]).position(|(x, y)| x != y) {
            return Ok(Some(offset + i as u64));
        }
        if na != nb {
            return Ok(Some(offset + na.min(nb) as u64));
        }
        if na == 0 {
            return Ok(None);
        }
        offset += na as u64;
    }

    fn read_full(f: &mut std::fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
        let mut n = 0;
        while n < buf.len() {
            match f.read(&mut buf[n..])? {
                0 => break,
                k => n += k,
            }
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn differences_are_found_where_they_are() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        let mut bytes = vec![7u8; 3 << 20];
        std::fs::write(&a, &bytes).expect("write");
        std::fs::write(&b, &bytes).expect("write");
        assert_eq!(first_difference(&a, &b).expect("cmp"), None);
        bytes[(2 << 20) + 5] = 8;
        std::fs::write(&b, &bytes).expect("write");
        assert_eq!(first_difference(&a, &b).expect("cmp"), Some((2 << 20) + 5));
        std::fs::write(&b, &bytes[..100]).expect("write");
        assert_eq!(first_difference(&a, &b).expect("cmp"), Some(100));
    }
}
