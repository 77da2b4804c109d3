//! The contents integration writes, as pure functions of a [`VmSetup`]: the guest's
//! own files (for in-image edits) and the three cloud-init NoCloud documents (for the
//! seed volume). Both say the same thing; tests compare them.
//!
//! Scalars in YAML are written as JSON strings (JSON is a subset of YAML 1.2), so no
//! value can break the document's structure.

use std::fmt::Write as _;

use super::VmSetup;
use crate::workspace::{BatchRole, Network};

/// Torque's spool directory on Debian (`torque-common`).
pub const TORQUE_HOME: &str = "/var/spool/torque";

/// A file in the guest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuestFile {
    /// Absolute path in the guest.
    pub path: String,
    /// Its whole content, or the lines to append.
    pub content: String,
    /// Append `content` (once) rather than replace the file.
    pub append: bool,
}

fn json(s: &str) -> String {
    serde_json::to_string(s).expect("strings always serialise")
}

/// The NIC name of the `i`th interface.
pub fn nic_name(i: usize) -> String {
    format!("eth{i}")
}

/// `/etc/hosts`: the loopback lines and every VM of the cluster.
pub fn hosts(setup: &VmSetup) -> String {
    let mut out = String::from("# Written by vw for the virtual cluster.\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n");
    for (name, ip) in &setup.cluster.hosts {
        let _ = writeln!(out, "{ip}\t{name}");
    }
    out
}

/// `/etc/network/interfaces` (ifupdown): static addresses on every NIC.
pub fn interfaces(setup: &VmSetup) -> String {
    let mut out =
        String::from("# Written by vw for the virtual cluster.\nauto lo\niface lo inet loopback\n");
    for (i, nic) in setup.nics.iter().enumerate() {
        let name = nic_name(i);
        let _ =
            write!(out, "\nauto {name}\niface {name} inet static\n    address {}\n", nic.address);
        if let Some(gw) = nic.gateway {
            let _ = writeln!(out, "    gateway {gw}");
        }
    }
    out
}

/// `/etc/resolv.conf`, if name servers are configured.
pub fn resolv_conf(setup: &VmSetup) -> Option<String> {
    (!setup.dns.is_empty()).then(|| setup.dns.iter().map(|d| format!("nameserver {d}\n")).collect())
}

/// `/etc/exports` for an NFS server: each export open to the private network.
pub fn exports(setup: &VmSetup) -> Option<String> {
    let net = setup.cluster.private_net;
    let lines: String = setup
        .roles
        .nfs_exports
        .iter()
        .map(|e| format!("{e}\t{net}(rw,sync,no_subtree_check,no_root_squash)\n"))
        .collect();
    (!lines.is_empty()).then_some(lines)
}

/// The fstab entries of the NFS mounts.
pub fn fstab_entries(setup: &VmSetup) -> Vec<[String; 6]> {
    let head = &setup.cluster.head;
    setup
        .roles
        .nfs_mounts
        .iter()
        .map(|m| {
            [
                format!("{head}:{}", m.export),
                m.mount.clone(),
                "nfs".into(),
                "defaults,_netdev".into(),
                "0".into(),
                "0".into(),
            ]
        })
        .collect()
}

/// Torque's files: every node names the server; the server lists the workers.
pub fn batch_files(setup: &VmSetup) -> Vec<(String, String)> {
    let Some(role) = setup.roles.batch else { return Vec::new() };
    let mut files =
        vec![(format!("{TORQUE_HOME}/server_name"), format!("{}\n", setup.cluster.head))];
    if role == BatchRole::Server {
        let nodes: String =
            setup.cluster.batch_nodes.iter().map(|(n, np)| format!("{n} np={np}\n")).collect();
        files.push((format!("{TORQUE_HOME}/server_priv/nodes"), nodes));
    }
    files
}

/// Every file an in-image edit writes, in order.
pub fn guest_files(setup: &VmSetup) -> Vec<GuestFile> {
    let whole =
        |path: &str, content: String| GuestFile { path: path.to_owned(), content, append: false };
    let mut files = vec![
        whole("/etc/hostname", format!("{}\n", setup.hostname)),
        whole("/etc/hosts", hosts(setup)),
        whole("/etc/network/interfaces", interfaces(setup)),
    ];
    if let Some(r) = resolv_conf(setup) {
        files.push(whole("/etc/resolv.conf", r));
    }
    if let Some(e) = exports(setup) {
        files.push(whole("/etc/exports", e));
    }
    let fstab: String =
        fstab_entries(setup).iter().map(|f| format!("{}\n", f.join("\t"))).collect();
    if !fstab.is_empty() {
        files.push(GuestFile { path: "/etc/fstab".into(), content: fstab, append: true });
    }
    files.extend(batch_files(setup).into_iter().map(|(p, c)| whole(&p, c)));
    files
}

/// NoCloud `meta-data`.
pub fn meta_data(setup: &VmSetup) -> String {
    format!(
        "instance-id: {}\nlocal-hostname: {}\n",
        json(&setup.instance_id),
        json(&setup.hostname)
    )
}

/// NoCloud `network-config`, version 2: static addresses matched by MAC.
pub fn network_config(setup: &VmSetup) -> String {
    let mut out = String::from("version: 2\nethernets:\n");
    for (i, nic) in setup.nics.iter().enumerate() {
        let name = nic_name(i);
        let _ = write!(
            out,
            "  {name}:\n    match:\n      macaddress: {}\n    set-name: {name}\n    addresses: [{}]\n",
            json(&nic.mac.to_string()),
            json(&nic.address.to_string())
        );
        if let Some(gw) = nic.gateway {
            let _ = writeln!(
                out,
                "    routes:\n      - to: default\n        via: {}",
                json(&gw.to_string())
            );
        }
        if nic.network == Network::Private && !setup.dns.is_empty() {
            let dns: Vec<String> = setup.dns.iter().map(|d| json(&d.to_string())).collect();
            let _ = writeln!(out, "    nameservers:\n      addresses: [{}]", dns.join(", "));
        }
    }
    out
}

/// NoCloud `user-data` (`#cloud-config`): hostname, `/etc/hosts`, NFS, batch system.
pub fn user_data(setup: &VmSetup) -> String {
    let mut out = format!(
        "#cloud-config\n# Written by vw for the virtual cluster.\nhostname: {}\nmanage_etc_hosts: false\nwrite_files:\n",
        json(&setup.hostname)
    );
    let mut write = |path: &str, content: &str| {
        let _ = writeln!(
            out,
            "  - path: {}\n    permissions: \"0644\"\n    content: {}",
            json(path),
            json(content)
        );
    };
    write("/etc/hosts", &hosts(setup));
    if let Some(e) = exports(setup) {
        write("/etc/exports", &e);
    }
    for (path, content) in batch_files(setup) {
        write(&path, &content);
    }
    let mounts = fstab_entries(setup);
    if !mounts.is_empty() {
        out.push_str("mounts:\n");
        for m in &mounts {
            let fields: Vec<String> = m.iter().map(|f| json(f)).collect();
            let _ = writeln!(out, "  - [{}]", fields.join(", "));
        }
    }
    let mut cmds = Vec::new();
    if !setup.roles.nfs_exports.is_empty() {
        cmds.push("exportfs -ra");
    }
    match setup.roles.batch {
        Some(BatchRole::Server) => cmds.push("systemctl restart pbs_server"),
        Some(BatchRole::Worker) => cmds.push("systemctl restart pbs_mom"),
        None => {}
    }
    if !cmds.is_empty() {
        out.push_str("runcmd:\n");
        for c in cmds {
            let _ = writeln!(out, "  - {}", json(c));
        }
    }
    out
}
