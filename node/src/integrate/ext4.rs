//! In-image edits, as in the paper, for images without cloud-init: the VM's own copy of
//! an ext4 root partition is edited with `debugfs -w` (no mount, no root), every file
//! is read back (debugfs exits 0 even when a write fails), then `e2fsck -fn` checks the
//! file system. The shared staged copy is never edited.

use std::fs;
use std::io::Read;
use std::path::Path;

use super::files::GuestFile;
use super::{run_tool, IntegrationError};

/// Where the ext2/3/4 superblock magic is, and what it is.
const MAGIC_OFFSET: u64 = 1024 + 56;
const MAGIC: [u8; 2] = [0x53, 0xef];

/// Whether `image` holds an ext2/3/4 file system.
pub fn is_ext4(image: &Path) -> Result<bool, IntegrationError> {
    use std::io::{Seek, SeekFrom};
    let mut f = fs::File::open(image).map_err(|e| IntegrationError::io("open", image, e))?;
    let mut magic = [0u8; 2];
    let read = f.seek(SeekFrom::Start(MAGIC_OFFSET)).and_then(|_| f.read_exact(&mut magic));
    match read {
        Ok(()) => Ok(magic == MAGIC),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(IntegrationError::io("read", image, e)),
    }
}

/// Writes `files` into `image`, reads them back, and checks the file system.
pub fn edit(image: &Path, files: &[GuestFile]) -> Result<(), IntegrationError> {
    if !is_ext4(image)? {
        return Err(IntegrationError::NotExt4 { image: image.to_owned() });
    }
    let staging = super::seed::tempdir(image)?;
    let result = edit_in(image, files, &staging);
    let _ = fs::remove_dir_all(&staging);
    result
}

fn edit_in(image: &Path, files: &[GuestFile], staging: &Path) -> Result<(), IntegrationError> {
    // Appends need the current content first.
    let mut wanted = Vec::new();
    let current = dump(image, files.iter().filter(|f| f.append).map(|f| f.path.as_str()))?;
    for f in files {
        let content = if f.append {
            let old = current.get(&f.path).cloned().flatten().unwrap_or_default();
            let old = String::from_utf8_lossy(&old).into_owned();
            let missing: String = f
                .content
                .lines()
                .filter(|l| !old.lines().any(|o| o == *l))
                .map(|l| format!("{l}\n"))
                .collect();
            if old.is_empty() || old.ends_with('\n') {
                old + &missing
            } else {
                format!("{old}\n{missing}")
            }
        } else {
            f.content.clone()
        };
        wanted.push((f.path.clone(), content));
    }
    let owners = owners(image, files)?;

    // Only directories that are missing are made: debugfs 1.47's `mkdir` of one that
    // exists can leave an unconnected directory behind (e2fsck then fails). `cat` of a
    // directory succeeds, so `dump` tells which exist.
    let mut dirs: Vec<String> = Vec::new();
    for (path, _) in &wanted {
        for dir in parents(path) {
            if !dirs.contains(&dir) {
                dirs.push(dir);
            }
        }
    }
    let existing = dump(image, dirs.iter().map(String::as_str))?;
    let mut script = String::new();
    for dir in dirs.iter().filter(|d| existing.get(*d).is_some_and(|e| e.is_none())) {
        script.push_str(&format!("mkdir {}\n", quote(Path::new(dir))?));
    }
    for (i, ((path, content), (uid, gid))) in wanted.iter().zip(&owners).enumerate() {
        let local = staging.join(format!("in{i}"));
        fs::write(&local, content).map_err(|e| IntegrationError::io("write", &local, e))?;
        let (local, path) = (quote(&local)?, quote(Path::new(path))?);
        // A regular file (0o100000) with the file's permission bits.
        let mode = 0o100000 | (files[i].mode & 0o7777);
        script.push_str(&format!(
            "rm {path}\nwrite {local} {path}\nsif {path} mode 0{mode:o}\nsif {path} uid {uid}\nsif {path} gid {gid}\n"
        ));
    }
    let cmds = staging.join("edit.cmds");
    fs::write(&cmds, &script).map_err(|e| IntegrationError::io("write", &cmds, e))?;
    run_tool(
        "debugfs",
        "e2fsprogs",
        &["-w".as_ref(), "-f".as_ref(), cmds.as_os_str(), image.as_os_str()],
        image,
    )?;

    let back = dump(image, wanted.iter().map(|(p, _)| p.as_str()))?;
    for (path, content) in &wanted {
        match back.get(path).cloned().flatten() {
            Some(bytes) if bytes == content.as_bytes() => {}
            Some(bytes) => {
                let detail = format!("{} bytes written, {} read", content.len(), bytes.len());
                return Err(IntegrationError::Readback {
                    image: image.to_owned(),
                    file: path.clone(),
                    detail,
                });
            }
            None => {
                let detail = "the file is missing after the write".to_owned();
                return Err(IntegrationError::Readback {
                    image: image.to_owned(),
                    file: path.clone(),
                    detail,
                });
            }
        }
    }
    fsck(image)
}

/// Each file's owner as (uid, gid) in the guest: root's, or the named user's and that
/// user's group from the image's own `/etc/passwd` (read like any guest file: capped,
/// and parsed field by field; a line that does not parse is skipped).
fn owners(image: &Path, files: &[GuestFile]) -> Result<Vec<(u32, u32)>, IntegrationError> {
    let passwd = if files.iter().any(|f| f.owner.is_some()) {
        dump(image, std::iter::once("/etc/passwd"))?.remove("/etc/passwd").flatten()
    } else {
        None
    };
    let passwd = String::from_utf8_lossy(passwd.as_deref().unwrap_or_default()).into_owned();
    files
        .iter()
        .map(|f| match &f.owner {
            None => Ok((0, 0)),
            Some(user) => passwd
                .lines()
                .filter_map(|l| {
                    let fields: Vec<&str> = l.split(':').collect();
                    let (uid, gid) = (fields.get(2)?.parse().ok()?, fields.get(3)?.parse().ok()?);
                    (fields[0] == user).then_some((uid, gid))
                })
                .next()
                .ok_or_else(|| IntegrationError::UnknownUser {
                    image: image.to_owned(),
                    user: user.clone(),
                    file: f.path.clone(),
                }),
        })
        .collect()
}

/// A path as one debugfs argument: in double quotes (debugfs splits commands at
/// spaces); paths with a quote or a control character cannot be passed.
fn quote(path: &Path) -> Result<String, IntegrationError> {
    let text = path.to_str().filter(|t| !t.chars().any(|c| c == '"' || c.is_control()));
    match text {
        Some(t) => Ok(format!("\"{t}\"")),
        None => Err(IntegrationError::Unquotable { path: path.to_owned() }),
    }
}

/// Each directory above `path`, outermost first (`/etc/network/interfaces` → `/etc`,
/// `/etc/network`).
fn parents(path: &str) -> Vec<String> {
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    (1..parts.len()).map(|n| format!("/{}", parts[..n].join("/"))).collect()
}

/// The largest file read back from a guest image: vw reads and writes only small
/// configuration files there (hosts, fstab, interfaces); anything larger is refused
/// rather than copied onto the host or into memory.
pub const MAX_GUEST_FILE: usize = 1 << 20;

/// Reads files out of `image` (`None` for files that do not exist), each with its own
/// `debugfs -R cat` whose output is capped at [`MAX_GUEST_FILE`]: the image is the
/// VO's, and a file in it may be made huge (or a sparse file of terabytes) to fill the
/// host's disk or memory. Nothing is written to the host.
fn dump<'a>(
    image: &Path,
    paths: impl Iterator<Item = &'a str>,
) -> Result<std::collections::BTreeMap<String, Option<Vec<u8>>>, IntegrationError> {
    let mut out = std::collections::BTreeMap::new();
    for path in paths {
        let request = format!("cat {}", quote(Path::new(path))?);
        let mut command = std::process::Command::new("debugfs");
        command.arg("-R").arg(&request).arg(image);
        let read =
            super::tool_output_within("debugfs", "e2fsprogs", &mut command, image, MAX_GUEST_FILE)?;
        if read.truncated {
            return Err(IntegrationError::GuestFileTooLarge {
                image: image.to_owned(),
                file: path.to_owned(),
                max: MAX_GUEST_FILE,
            });
        }
        let missing =
            String::from_utf8_lossy(&read.stderr).contains("File not found by ext2_lookup");
        if !read.status.success() {
            return Err(IntegrationError::ToolFailed {
                command: format!("debugfs -R '{request}' {}", image.display()),
                path: image.to_owned(),
                status: read.status.to_string(),
                stderr: String::from_utf8_lossy(&read.stderr).trim().to_owned(),
            });
        }
        out.insert(path.to_owned(), (!missing).then_some(read.stdout));
    }
    Ok(out)
}

/// `e2fsck -fn`: a forced, read-only check.
fn fsck(image: &Path) -> Result<(), IntegrationError> {
    let mut command = std::process::Command::new("e2fsck");
    command.args(["-f", "-n"]).arg(image);
    let out = super::tool_output("e2fsck", "e2fsprogs", &mut command, image)?;
    if out.status.success() {
        Ok(())
    } else {
        let output = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Err(IntegrationError::Fsck { image: image.to_owned(), output: output.trim().to_owned() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An ext4 image of `size` (`16M`) made by `mkfs.ext4 -d` from a tree holding
    /// `/etc/NAME` for each of `etc`.
    fn image_with_etc(dir: &Path, etc: &[(&str, &[u8])], size: &str) -> std::path::PathBuf {
        let tree = dir.join("tree");
        fs::create_dir_all(tree.join("etc")).expect("tree");
        for (name, content) in etc {
            fs::write(tree.join("etc").join(name), content).expect("etc file");
        }
        let image = dir.join("root.img");
        let out = std::process::Command::new("mkfs.ext4")
            .args(["-q", "-F", "-d"])
            .arg(&tree)
            .arg(&image)
            .arg(size)
            .output()
            .expect("mkfs.ext4 runs (install e2fsprogs)");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        image
    }

    #[test]
    fn edits_under_existing_and_new_directories_leave_a_clean_file_system() {
        // debugfs 1.47's `mkdir` of a directory that exists leaves an unconnected
        // directory behind: found when the lab's first guest image failed e2fsck.
        let dir = tempfile::tempdir().expect("tempdir");
        let image = image_with_etc(dir.path(), &[("hostname", b"debian\n")], "16M");
        let file = |path: &str, content: &str| GuestFile::whole(path, content.into());
        let files = [
            file("/etc/hostname", "worker1\n"),
            file("/etc/slurm/slurm.conf", "ClusterName=lab\n"),
            file("/etc/slurm/plugstack.conf.d/x", "y\n"),
        ];
        edit(&image, &files).expect("edits and a clean e2fsck");
        // Twice: every directory exists the second time.
        edit(&image, &files).expect("edits and a clean e2fsck again");
    }

    /// A VO's image whose /etc/hosts is 64 MiB: vw appends to that file, and used to
    /// copy it whole onto the host and into memory. Now the read stops at the limit and
    /// the edit is refused, naming the file; nothing of it lands on the host.
    #[test]
    fn a_huge_guest_file_is_refused_not_copied() {
        let dir = tempfile::tempdir().expect("tempdir");
        let image = image_with_etc(dir.path(), &[("hosts", &vec![b'#'; 64 << 20])], "128M");
        let append =
            GuestFile { append: true, ..GuestFile::whole("/etc/hosts", "10.0.0.1 head\n".into()) };
        let err = edit(&image, &[append]).expect_err("refused").to_string();
        assert!(err.contains("/etc/hosts is larger than 1048576 bytes"), "{err}");
    }

    /// A file for a guest user gets that user's ids from the image's own /etc/passwd
    /// and its mode; an image without the user is refused, naming the user.
    #[test]
    fn a_file_for_a_guest_user_is_theirs_with_its_mode() {
        let dir = tempfile::tempdir().expect("tempdir");
        let passwd: &[u8] = b"root:x:0:0:root:/root:/bin/bash\nbroken\n\
            munge:x:105:111::/nonexistent:/usr/sbin/nologin\n";
        let image = image_with_etc(dir.path(), &[("passwd", passwd)], "16M");
        let key = GuestFile {
            mode: 0o400,
            owner: Some("munge".into()),
            ..GuestFile::whole("/etc/munge/munge.key", "ab".repeat(512))
        };
        edit(&image, std::slice::from_ref(&key)).expect("written, read back, clean");
        let out = std::process::Command::new("debugfs")
            .args(["-R", "stat /etc/munge/munge.key"])
            .arg(&image)
            .output()
            .expect("debugfs");
        let stat = String::from_utf8_lossy(&out.stdout).into_owned();
        let after = |label: &str| {
            let mut words = stat.split_whitespace().skip_while(|w| *w != label);
            words.nth(1).map(str::to_owned)
        };
        assert_eq!(after("Mode:").as_deref(), Some("0400"), "{stat}");
        assert_eq!(after("User:").as_deref(), Some("105"), "{stat}");
        assert_eq!(after("Group:").as_deref(), Some("111"), "{stat}");

        let dir = tempfile::tempdir().expect("tempdir");
        let image =
            image_with_etc(dir.path(), &[("passwd", b"root:x:0:0::/root:/bin/sh\n")], "16M");
        let err = edit(&image, &[key]).expect_err("no munge user").to_string();
        assert!(err.contains("no user `munge` in /etc/passwd for /etc/munge/munge.key"), "{err}");
    }

    #[test]
    fn parents_outermost_first() {
        assert_eq!(parents("/etc/network/interfaces"), ["/etc", "/etc/network"]);
        assert!(parents("/x").is_empty());
    }
}
