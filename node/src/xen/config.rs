//! Domain configs in xl.cfg syntax: rendering, and a strict reader of the same subset.
//!
//! Quoting follows libxlutil 4.17 (checked against it by `node/tests/xen_config.rs`):
//! every string is written `"…"` with `\` and `"` escaped, numbers in plain decimal (a
//! leading zero would read as octal), and a disk spec puts `target=` last because
//! Xen's disk parser lets the target swallow the rest of the spec. Values with control
//! characters cannot be written safely and are refused; so are disk targets and vif
//! fields with a comma (neither parser has an escape for it). What is rendered, the
//! reader below reads back as the same values and its check passes (given the disk
//! files exist): render refuses what they would (memory or vCPUs of 0 or past a signed
//! 64-bit number, a device that is not `xvd…`, a MAC that is not Xen's, a config past
//! the 64 KiB the reader takes); the `domain_config` fuzz target holds it to that.
//!
//! The reader is what the simulated driver checks configs with, and it is where vif
//! specs are checked (libxlutil leaves them to xl).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use vw_planner::address::{Mac, XEN_OUI};

use super::XenError;
use crate::workspace::{Access, Boot, GuestType, PYGRUB};

/// Largest config file read back, in bytes.
const MAX_CONFIG: usize = 64 << 10;

/// Everything a domain config says.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DomainConfig {
    /// Domain name (never all digits: xl would read it as a domain id).
    pub name: String,
    /// Guest memory in MiB.
    pub memory_mib: u64,
    /// Virtual CPUs.
    pub vcpus: u32,
    /// Physical CPU pinning, xl syntax.
    pub cpus: Option<String>,
    /// How it boots.
    pub boot: Boot,
    /// Disks, in order.
    pub disks: Vec<Disk>,
    /// Network interfaces, in order.
    pub vifs: Vec<Vif>,
    /// `on_poweroff`, `on_reboot`, `on_crash`.
    pub on_poweroff: String,
    /// See `on_poweroff`.
    pub on_reboot: String,
    /// See `on_poweroff`.
    pub on_crash: String,
    /// The user a bootloader runs as (`[xen] bootloader_user`; none: libxl's choice).
    pub bootloader_user: Option<String>,
}

/// A raw disk.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Disk {
    /// Guest device (`xvda1`).
    pub vdev: String,
    /// Guest access.
    pub access: Access,
    /// The image file on the host.
    pub target: PathBuf,
    /// The hotplug script xl runs for it instead of its own `block` (a lazy disk's:
    /// [`LAZY_BLOCK_SCRIPT`]). Not recorded: only the config written with it names it.
    #[serde(skip)]
    pub script: Option<PathBuf>,
}

/// vw's hotplug script for a lazy disk's device-mapper device (decision 88), which vwd
/// writes beside the domain configs.
pub const LAZY_BLOCK_SCRIPT: &str = include_str!("vw-block");

impl Disk {
    /// A disk xl attaches with its own `block` script.
    pub fn new(vdev: impl Into<String>, access: Access, target: impl Into<PathBuf>) -> Self {
        Disk { vdev: vdev.into(), access, target: target.into(), script: None }
    }
}

/// A network interface.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vif {
    /// Its MAC.
    pub mac: Mac,
    /// Its address (for the anti-spoofing rules of the vif script).
    pub ip: Ipv4Addr,
    /// The bridge it joins.
    pub bridge: String,
}

impl DomainConfig {
    /// The config file's text.
    pub fn render(&self) -> Result<String, XenError> {
        let bad = |key: &str, why: String| XenError::BadConfigValue {
            domain: self.name.clone(),
            key: key.to_owned(),
            reason: why,
        };
        if self.name.is_empty() || self.name.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad("name", "a domain name must not be empty or all digits".into()));
        }
        // What xl (and `check`) take: positive numbers that fit its 64-bit signed reader.
        if self.memory_mib == 0 || i64::try_from(self.memory_mib).is_err() {
            return Err(bad(
                "memory",
                format!("{} MiB: a guest needs 1..={} MiB", self.memory_mib, i64::MAX),
            ));
        }
        if self.vcpus == 0 {
            return Err(bad("vcpus", "a guest needs at least one vCPU".into()));
        }
        let mut out = String::new();
        let mut line = |key: &str, value: String| {
            let _ = writeln!(out, "{key} = {value}");
        };
        line("name", quote(&self.name).map_err(|e| bad("name", e))?);
        match &self.boot {
            Boot::Kernel { mode, kernel, ramdisk, root, extra } => {
                let mode = match mode {
                    GuestType::Pv => "pv",
                    GuestType::Pvh => "pvh",
                };
                line("type", quote(mode).map_err(|e| bad("type", e))?);
                line("kernel", host_file(kernel).map_err(|e| bad("kernel", e))?);
                if let Some(r) = ramdisk {
                    line("ramdisk", host_file(r).map_err(|e| bad("ramdisk", e))?);
                }
                line("root", quote(root).map_err(|e| bad("root", e))?);
                if let Some(x) = extra {
                    line("extra", quote(x).map_err(|e| bad("extra", e))?);
                }
            }
            Boot::Bootloader { path, args } => {
                if path != PYGRUB {
                    return Err(bad("bootloader", format!("`{path}` is not `{PYGRUB}`")));
                }
                line("type", quote("pv").map_err(|e| bad("type", e))?);
                line("bootloader", quote(PYGRUB).map_err(|e| bad("bootloader", e))?);
                if let Some(a) = args {
                    let a: Vec<String> = a
                        .split_whitespace()
                        .map(quote)
                        .collect::<Result<_, _>>()
                        .map_err(|e| bad("bootloader_args", e))?;
                    line("bootloader_args", format!("[ {} ]", a.join(", ")));
                }
                // Xen 4.18 and later read these; 4.17 takes the same from the
                // environment `xl` runs in (XlDriver sets it).
                line("bootloader_restrict", "1".into());
                if let Some(user) = &self.bootloader_user {
                    line("bootloader_user", quote(user).map_err(|e| bad("bootloader_user", e))?);
                }
            }
        }
        line("memory", self.memory_mib.to_string());
        line("vcpus", self.vcpus.to_string());
        if let Some(cpus) = &self.cpus {
            line("cpus", quote(cpus).map_err(|e| bad("cpus", e))?);
        }
        let mut disks = Vec::new();
        for d in &self.disks {
            let target = d
                .target
                .to_str()
                .ok_or_else(|| bad("disk", format!("{} is not UTF-8", d.target.display())))?;
            if target.is_empty() || target.contains(',') {
                return Err(bad(
                    "disk",
                    format!("target {target:?} is empty or has a comma, which xl cannot express"),
                ));
            }
            simple(&d.vdev).map_err(|e| bad("disk", e))?;
            if !d.vdev.starts_with("xvd") {
                return Err(bad(
                    "disk",
                    format!("device {:?} is not a Xen block device like `xvda1`", d.vdev),
                ));
            }
            let script = match &d.script {
                None => String::new(),
                Some(s) => match s.to_str() {
                    Some(s) if s.starts_with('/') && !s.contains([',', '=']) => {
                        format!("script={s}, ")
                    }
                    _ => {
                        return Err(bad(
                            "disk",
                            format!("script {} is not an absolute path xl can take", s.display()),
                        ))
                    }
                },
            };
            let spec = format!(
                "format=raw, vdev={}, access={}, {script}target={target}",
                d.vdev,
                d.access.as_str()
            );
            disks.push(quote(&spec).map_err(|e| bad("disk", e))?);
        }
        line("disk", list(&disks));
        let mut vifs = Vec::new();
        for v in &self.vifs {
            simple(&v.bridge).map_err(|e| bad("vif", e))?;
            if v.mac.0[..3] != XEN_OUI {
                return Err(bad("vif", format!("{} is not a Xen MAC (00:16:3e:…)", v.mac)));
            }
            vifs.push(
                quote(&format!("mac={}, ip={}, bridge={}", v.mac, v.ip, v.bridge))
                    .map_err(|e| bad("vif", e))?,
            );
        }
        line("vif", list(&vifs));
        line("on_poweroff", quote(&self.on_poweroff).map_err(|e| bad("on_poweroff", e))?);
        line("on_reboot", quote(&self.on_reboot).map_err(|e| bad("on_reboot", e))?);
        line("on_crash", quote(&self.on_crash).map_err(|e| bad("on_crash", e))?);
        let text =
            format!("# Generated by vw for domain {}; edits are overwritten.\n{out}", self.name);
        if text.len() > MAX_CONFIG {
            return Err(bad(
                "config",
                format!(
                    "{} bytes, more than the {MAX_CONFIG} a config is read back up to; give the \
                     domain fewer or shorter disks and values",
                    text.len()
                ),
            ));
        }
        Ok(text)
    }
}

/// `"…"` with `\` and `"` escaped; control characters refused.
fn quote(value: &str) -> Result<String, String> {
    if let Some(c) = value.chars().find(|c| c.is_control()) {
        return Err(format!("{value:?} contains control character {c:?}"));
    }
    Ok(format!("\"{}\"", value.replace('\\', "\\\\").replace('"', "\\\"")))
}

/// A kernel or ramdisk: the absolute path [`super::boot`] resolved it to.
fn host_file(path: &str) -> Result<String, String> {
    if !path.starts_with('/') {
        return Err(format!("`{path}` was not resolved to a file in the kernel directories"));
    }
    quote(path)
}

/// Whether `target` can back a disk: a file (an image), a block device (a lazy disk
/// attached through the kernel's NBD driver) or a Unix socket (a lazy disk's NBD export,
/// which only the simulated driver's guest reads).
fn disk_target(target: &std::path::Path) -> bool {
    use std::os::unix::fs::FileTypeExt as _;
    std::fs::metadata(target).is_ok_and(|m| {
        let t = m.file_type();
        t.is_file() || t.is_block_device() || t.is_socket()
    })
}

/// A value inside a disk or vif spec other than the target: no `,` `=` or spaces.
fn simple(value: &str) -> Result<(), String> {
    if value.is_empty()
        || value.chars().any(|c| c == ',' || c == '=' || c.is_whitespace() || c.is_control())
    {
        return Err(format!("{value:?} must be non-empty, without commas, `=` or spaces"));
    }
    Ok(())
}

/// A list, one item per line.
fn list(items: &[String]) -> String {
    if items.is_empty() {
        "[ ]".to_owned()
    } else {
        format!("[\n{}]", items.iter().map(|i| format!("    {i},\n")).collect::<String>())
    }
}

/// A value in a config file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    /// A decoded string.
    Str(String),
    /// A number.
    Num(i64),
    /// A list of strings.
    List(Vec<String>),
}

/// Reads a config file written in the subset [`DomainConfig::render`] writes (which
/// is also what people write by hand): `key = value` lines, `#` comments, strings in
/// either quote with libxlutil's escapes, decimal numbers, lists of strings. Later
/// keys replace earlier ones, as in xl.
pub fn read(text: &str) -> Result<BTreeMap<String, Value>, String> {
    if text.len() > MAX_CONFIG {
        return Err(format!("larger than {MAX_CONFIG} bytes"));
    }
    let mut out = BTreeMap::new();
    let mut p = Parser { s: text.as_bytes(), i: 0, line: 1 };
    loop {
        p.skip_blank();
        if p.i >= p.s.len() {
            return Ok(out);
        }
        let key = p.key()?;
        p.spaces();
        p.expect(b'=')?;
        p.spaces();
        let value = p.value()?;
        p.end_of_statement()?;
        out.insert(key, value);
    }
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
    line: usize,
}

impl Parser<'_> {
    fn err<T>(&self, what: &str) -> Result<T, String> {
        Err(format!("line {}: {what}", self.line))
    }

    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn spaces(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t')) {
            self.i += 1;
        }
    }

    /// Spaces, newlines, `;` and comments.
    fn skip_blank(&mut self) {
        loop {
            match self.peek() {
                Some(b' ' | b'\t' | b';') => self.i += 1,
                Some(b'\n') => {
                    self.i += 1;
                    self.line += 1;
                }
                Some(b'#') => {
                    while !matches!(self.peek(), None | Some(b'\n')) {
                        self.i += 1;
                    }
                }
                _ => return,
            }
        }
    }

    fn expect(&mut self, c: u8) -> Result<(), String> {
        if self.peek() == Some(c) {
            self.i += 1;
            Ok(())
        } else {
            self.err(&format!("expected `{}`", c as char))
        }
    }

    fn key(&mut self) -> Result<String, String> {
        let start = self.i;
        if !matches!(self.peek(), Some(b'a'..=b'z')) {
            return self.err("expected a key (lowercase letters, digits, `_`)");
        }
        while matches!(self.peek(), Some(b'a'..=b'z' | b'0'..=b'9' | b'_')) {
            self.i += 1;
        }
        Ok(String::from_utf8_lossy(&self.s[start..self.i]).into_owned())
    }

    fn value(&mut self) -> Result<Value, String> {
        match self.peek() {
            Some(b'"' | b'\'') => self.string().map(Value::Str),
            Some(b'0'..=b'9') => {
                let start = self.i;
                while matches!(self.peek(), Some(b'0'..=b'9')) {
                    self.i += 1;
                }
                let digits = std::str::from_utf8(&self.s[start..self.i]).unwrap_or("");
                if digits.len() > 1 && digits.starts_with('0') {
                    return self.err("a number with a leading zero (xl reads it as octal)");
                }
                digits.parse().map(Value::Num).or_else(|_| self.err("number out of range"))
            }
            Some(b'[') => {
                self.i += 1;
                let mut items = Vec::new();
                loop {
                    self.skip_blank();
                    if self.peek() == Some(b']') {
                        self.i += 1;
                        return Ok(Value::List(items));
                    }
                    items.push(self.string()?);
                    self.skip_blank();
                    match self.peek() {
                        Some(b',') => self.i += 1,
                        Some(b']') => {}
                        _ => return self.err("expected `,` or `]` in a list"),
                    }
                }
            }
            _ => self.err("expected a string, a number or a list"),
        }
    }

    fn string(&mut self) -> Result<String, String> {
        let quote = match self.peek() {
            Some(q @ (b'"' | b'\'')) => q,
            _ => return self.err("expected a quoted string"),
        };
        self.i += 1;
        let mut out = Vec::new();
        loop {
            match self.peek() {
                None | Some(b'\n') => return self.err("unterminated string"),
                Some(0) => return self.err("NUL in a string"),
                Some(c) if c == quote => {
                    self.i += 1;
                    return String::from_utf8(out).or_else(|_| self.err("string is not UTF-8"));
                }
                Some(b'\\') => {
                    let decoded = match self.s.get(self.i + 1) {
                        Some(b'\\') => b'\\',
                        Some(b'"') => b'"',
                        Some(b'\'') => b'\'',
                        Some(b'n') => b'\n',
                        Some(b't') => b'\t',
                        Some(b'r') => b'\r',
                        Some(b'a') => 7,
                        Some(b'b') => 8,
                        Some(b'f') => 12,
                        Some(b'v') => 11,
                        _ => return self.err("unknown escape in a string"),
                    };
                    out.push(decoded);
                    self.i += 2;
                }
                Some(c) => {
                    out.push(c);
                    self.i += 1;
                }
            }
        }
    }

    fn end_of_statement(&mut self) -> Result<(), String> {
        self.spaces();
        match self.peek() {
            None | Some(b'\n' | b';' | b'#') => Ok(()),
            _ => self.err("expected the end of the line"),
        }
    }
}

/// The target of each disk a config names (what follows `target=`, which is last).
pub fn disk_targets(text: &str) -> Result<Vec<PathBuf>, String> {
    match read(text)?.get("disk") {
        None => Ok(Vec::new()),
        Some(Value::List(items)) => Ok(items
            .iter()
            .filter_map(|spec| spec.split_once("target=").map(|(_, t)| t.into()))
            .collect()),
        Some(_) => Err("`disk` must be a list".into()),
    }
}

/// Checks a config as xl would before creating the domain: the keys vw relies on have
/// the right types, every disk spec has `target=` last and names an existing file, and
/// every vif has a Xen MAC, an IPv4 address and a bridge. Returns the domain name.
pub fn check(text: &str) -> Result<String, String> {
    let keys = read(text)?;
    let string = |k: &str| match keys.get(k) {
        Some(Value::Str(s)) => Ok(Some(s.as_str())),
        None => Ok(None),
        Some(_) => Err(format!("`{k}` must be a string")),
    };
    let number = |k: &str| match keys.get(k) {
        Some(Value::Num(n)) if *n > 0 => Ok(*n),
        _ => Err(format!("`{k}` must be a positive number")),
    };
    let name = string("name")?.ok_or("no `name`")?;
    if name.is_empty() || name.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("name {name:?} is empty or all digits"));
    }
    number("memory")?;
    number("vcpus")?;
    match string("type")? {
        None | Some("pv" | "pvh" | "hvm") => {}
        Some(t) => return Err(format!("type {t:?} is not pv, pvh or hvm")),
    }
    match (string("kernel")?, string("bootloader")?) {
        (None, None) => return Err("neither `kernel` nor `bootloader`".into()),
        (Some(_), Some(_)) => return Err("both `kernel` and `bootloader`".into()),
        (Some(_), None) => {}
        (None, Some(PYGRUB)) => {
            if keys.get("bootloader_restrict") != Some(&Value::Num(1)) {
                return Err("pygrub without `bootloader_restrict = 1`".into());
            }
        }
        (None, Some(other)) => return Err(format!("bootloader {other:?} is not pygrub")),
    }
    for k in ["kernel", "ramdisk"] {
        if let Some(path) = string(k)?.filter(|p| !p.starts_with('/')) {
            return Err(format!("`{k}` {path:?} is not an absolute path"));
        }
    }
    let known = [
        "on_poweroff",
        "on_reboot",
        "on_crash",
        "cpus",
        "ramdisk",
        "root",
        "extra",
        "bootloader_user",
    ];
    for k in known {
        string(k)?;
    }
    let items = |k: &str| match keys.get(k) {
        Some(Value::List(items)) => Ok(items.clone()),
        None => Ok(Vec::new()),
        Some(_) => Err(format!("`{k}` must be a list")),
    };
    for spec in items("disk")? {
        let (head, target) =
            spec.split_once("target=").ok_or(format!("disk {spec:?} has no target="))?;
        for part in head.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match part.split_once('=') {
                Some(("format", "raw")) | Some(("access", "rw" | "ro" | "r" | "w")) => {}
                Some(("vdev", v)) if v.starts_with("xvd") => {}
                Some(("script", s)) if s.starts_with('/') => {}
                _ => {
                    return Err(format!(
                        "disk {spec:?}: unexpected {part:?} (target= must be last)"
                    ))
                }
            }
        }
        if !disk_target(std::path::Path::new(target)) {
            return Err(format!(
                "disk {spec:?}: target {target} is not a file, a block device or a lazy disk's socket"
            ));
        }
    }
    for spec in items("vif")? {
        let mut fields = BTreeMap::new();
        for part in spec.split(',').map(str::trim) {
            let (k, v) =
                part.split_once('=').ok_or(format!("vif {spec:?}: {part:?} is not key=value"))?;
            if fields.insert(k, v).is_some() {
                return Err(format!("vif {spec:?}: `{k}` twice"));
            }
        }
        let mac: Mac = fields.get("mac").ok_or(format!("vif {spec:?} has no mac"))?.parse()?;
        if mac.0[..3] != XEN_OUI {
            return Err(format!("vif {spec:?}: {mac} is not a Xen MAC (00:16:3e)"));
        }
        fields
            .get("ip")
            .ok_or(format!("vif {spec:?} has no ip"))?
            .parse::<Ipv4Addr>()
            .map_err(|e| format!("vif {spec:?}: {e}"))?;
        fields
            .get("bridge")
            .filter(|b| !b.is_empty())
            .ok_or(format!("vif {spec:?} has no bridge"))?;
        if let Some(k) = fields.keys().find(|k| !["mac", "ip", "bridge"].contains(k)) {
            return Err(format!("vif {spec:?}: unexpected `{k}`"));
        }
    }
    Ok(name.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reader_decodes_what_render_escapes() {
        let text = "name = \"a\\\"b\\\\c\" # comment\nmemory = 64\ndisk = [ 'x', \"y\", ]\n";
        let keys = read(text).expect("reads");
        assert_eq!(keys["name"], Value::Str("a\"b\\c".into()));
        assert_eq!(keys["memory"], Value::Num(64));
        assert_eq!(keys["disk"], Value::List(vec!["x".into(), "y".into()]));
    }

    /// What render writes, the reader reads back and the check passes (given its disk
    /// files exist), or render refuses it: each case here was written and then
    /// refused (found by the `domain_config` fuzz target).
    #[test]
    fn render_refuses_what_its_reader_or_check_would() {
        let dir = tempfile::tempdir().expect("tempdir");
        let img = dir.path().join("x.img");
        std::fs::write(&img, b"").expect("write");
        let good = DomainConfig {
            name: "d".into(),
            memory_mib: 512,
            vcpus: 1,
            cpus: None,
            boot: Boot::Bootloader { path: PYGRUB.into(), args: None },
            disks: vec![Disk::new("xvda1", Access::Rw, img)],
            vifs: vec![Vif {
                mac: Mac([0x00, 0x16, 0x3e, 1, 2, 3]),
                ip: Ipv4Addr::new(10, 0, 0, 2),
                bridge: "xenbr0".into(),
            }],
            on_poweroff: "destroy".into(),
            on_reboot: "restart".into(),
            on_crash: "destroy".into(),
            bootloader_user: None,
        };
        assert_eq!(check(&good.render().expect("renders")).as_deref(), Ok("d"));
        // A lazy disk's hotplug script comes before the target, and passes the check.
        let script = |s: &str| Disk { script: Some(s.into()), ..good.disks[0].clone() };
        let lazy = DomainConfig { disks: vec![script("/var/lib/vw/xen/vw-block")], ..good.clone() };
        let text = lazy.render().expect("renders");
        assert!(text.contains("script=/var/lib/vw/xen/vw-block, target="), "{text}");
        assert_eq!(check(&text).as_deref(), Ok("d"));
        let disk = |vdev: &str| Disk { vdev: vdev.into(), ..good.disks[0].clone() };
        let vif = |mac: [u8; 6]| Vif { mac: Mac(mac), ..good.vifs[0].clone() };
        for (key, c) in [
            ("memory", DomainConfig { memory_mib: 1 << 63, ..good.clone() }),
            ("memory", DomainConfig { memory_mib: 0, ..good.clone() }),
            ("vcpus", DomainConfig { vcpus: 0, ..good.clone() }),
            ("disk", DomainConfig { disks: vec![disk("sda1")], ..good.clone() }),
            // xl would look a relative script up in /etc/xen/scripts, and a comma or
            // `=` would end the spec's field.
            ("disk", DomainConfig { disks: vec![script("vw-block")], ..good.clone() }),
            ("disk", DomainConfig { disks: vec![script("/x,target=/y")], ..good.clone() }),
            ("vif", DomainConfig { vifs: vec![vif([2, 0, 0, 1, 2, 3])], ..good.clone() }),
            ("config", DomainConfig { disks: vec![disk("xvdb"); 1000], ..good.clone() }),
        ] {
            let err = c.render().map(|_| ()).expect_err(key).to_string();
            assert!(err.contains(&format!("`{key}`")), "{key}: {err}");
        }
    }

    #[test]
    fn reader_refuses_what_xl_refuses() {
        for bad in [
            "name = \"a\n",
            "memory = 0400\n",
            "name = \"a\\x41\"\n",
            "Name = \"a\"\n",
            "name = \"a\" b\n",
        ] {
            assert!(read(bad).is_err(), "{bad:?}");
        }
    }
}
