//! `DomainConfig::render` over any config, against the crate's own reader: render must
//! never panic, and what it writes must read back (`config::read`) as exactly the
//! values it was given, and pass the simulated driver's check (`config::check`, which
//! stands in for xl) unless a disk's target is not a file; or render must refuse.
#![no_main]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::OnceLock;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use vw_node::planner::address::{Mac, XEN_OUI};
use vw_node::workspace::{Access, Boot, GuestType, PYGRUB};
use vw_node::xen::config::{check, read, Disk, DomainConfig, Value, Vif};

#[derive(Arbitrary, Debug)]
struct Input {
    name: String,
    memory_mib: u64,
    vcpus: u32,
    cpus: Option<String>,
    boot: BootInput,
    disks: Vec<DiskInput>,
    vifs: Vec<VifInput>,
    on_poweroff: String,
    on_reboot: String,
    on_crash: String,
    bootloader_user: Option<String>,
}

#[derive(Arbitrary, Debug)]
enum BootInput {
    Kernel {
        pvh: bool,
        /// Prefix `/` (a resolved kernel) to what follows.
        absolute: bool,
        kernel: String,
        ramdisk: Option<String>,
        root: String,
        extra: Option<String>,
    },
    Bootloader {
        /// pygrub, or `path`.
        pygrub: bool,
        path: String,
        args: Option<String>,
    },
}

#[derive(Arbitrary, Debug)]
struct DiskInput {
    /// Prefix `xvd` to what follows.
    xvd: bool,
    vdev: String,
    rw: bool,
    /// The target is a file that exists, or `target`.
    exists: bool,
    target: String,
}

#[derive(Arbitrary, Debug)]
struct VifInput {
    /// A Xen MAC (`00:16:3e`), or the six bytes as they are.
    xen: bool,
    mac: [u8; 6],
    ip: [u8; 4],
    bridge: String,
}

/// A file that exists, for disk targets that should pass the check.
fn image() -> &'static str {
    static PATH: OnceLock<String> = OnceLock::new();
    PATH.get_or_init(|| {
        let dir =
            std::env::temp_dir().join(format!("vw-fuzz-domain-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("disk.img");
        std::fs::write(&path, b"").expect("image file");
        path.to_str().expect("a UTF-8 temp dir").to_owned()
    })
}

fn config(i: Input) -> DomainConfig {
    let boot = match i.boot {
        BootInput::Kernel { pvh, absolute, kernel, ramdisk, root, extra } => Boot::Kernel {
            mode: if pvh { GuestType::Pvh } else { GuestType::Pv },
            kernel: if absolute { format!("/{kernel}") } else { kernel },
            ramdisk,
            root,
            extra,
        },
        BootInput::Bootloader { pygrub, path, args } => {
            Boot::Bootloader { path: if pygrub { PYGRUB.into() } else { path }, args }
        }
    };
    DomainConfig {
        name: i.name,
        memory_mib: i.memory_mib,
        vcpus: i.vcpus,
        cpus: i.cpus,
        boot,
        disks: i
            .disks
            .into_iter()
            .map(|d| {
                Disk::new(
                    if d.xvd { format!("xvd{}", d.vdev) } else { d.vdev },
                    if d.rw { Access::Rw } else { Access::Ro },
                    PathBuf::from(if d.exists { image().to_owned() } else { d.target }),
                )
            })
            .collect(),
        vifs: i
            .vifs
            .into_iter()
            .map(|v| {
                let mut mac = v.mac;
                if v.xen {
                    mac[..3].copy_from_slice(&XEN_OUI);
                }
                Vif { mac: Mac(mac), ip: v.ip.into(), bridge: v.bridge }
            })
            .collect(),
        on_poweroff: i.on_poweroff,
        on_reboot: i.on_reboot,
        on_crash: i.on_crash,
        bootloader_user: i.bootloader_user,
    }
}

/// What the reader must find in what `c` renders: every key, and nothing else.
fn expected(c: &DomainConfig) -> BTreeMap<String, Value> {
    let s = |v: &str| Value::Str(v.to_owned());
    let mut out = BTreeMap::new();
    let mut put = |k: &str, v: Value| {
        out.insert(k.to_owned(), v);
    };
    put("name", s(&c.name));
    match &c.boot {
        Boot::Kernel { mode, kernel, ramdisk, root, extra } => {
            put("type", s(if *mode == GuestType::Pvh { "pvh" } else { "pv" }));
            put("kernel", s(kernel));
            if let Some(r) = ramdisk {
                put("ramdisk", s(r));
            }
            put("root", s(root));
            if let Some(x) = extra {
                put("extra", s(x));
            }
        }
        Boot::Bootloader { args, .. } => {
            put("type", s("pv"));
            put("bootloader", s(PYGRUB));
            if let Some(a) = args {
                put(
                    "bootloader_args",
                    Value::List(a.split_whitespace().map(String::from).collect()),
                );
            }
            put("bootloader_restrict", Value::Num(1));
            if let Some(u) = &c.bootloader_user {
                put("bootloader_user", s(u));
            }
        }
    }
    put("memory", Value::Num(c.memory_mib as i64));
    put("vcpus", Value::Num(i64::from(c.vcpus)));
    if let Some(cpus) = &c.cpus {
        put("cpus", s(cpus));
    }
    let disks = c.disks.iter().map(|d| {
        format!(
            "format=raw, vdev={}, access={}, target={}",
            d.vdev,
            d.access.as_str(),
            d.target.to_str().expect("rendered, so UTF-8")
        )
    });
    put("disk", Value::List(disks.collect()));
    let vifs = c.vifs.iter().map(|v| format!("mac={}, ip={}, bridge={}", v.mac, v.ip, v.bridge));
    put("vif", Value::List(vifs.collect()));
    put("on_poweroff", s(&c.on_poweroff));
    put("on_reboot", s(&c.on_reboot));
    put("on_crash", s(&c.on_crash));
    out
}

fuzz_target!(|input: Input| {
    let c = config(input);
    let Ok(text) = c.render() else { return };
    let keys =
        read(&text).unwrap_or_else(|e| panic!("render wrote what read refuses: {e}\n{text}"));
    assert_eq!(keys, expected(&c), "read back otherwise:\n{text}");
    let all_exist = c.disks.iter().all(|d| d.target.to_str() == Some(image()));
    match check(&text) {
        Ok(name) => assert_eq!(name, c.name),
        Err(e) if !all_exist && e.contains("is not a file") => {}
        Err(e) => panic!("render wrote what check refuses: {e}\n{text}"),
    }
});
