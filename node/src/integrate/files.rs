//! The contents integration writes, as pure functions of a [`VmSetup`]: the guest's
//! own files (for in-image edits) and the three cloud-init NoCloud documents (for the
//! seed volume). Both say the same thing; tests compare them.
//!
//! Scalars in YAML are written as JSON strings (JSON is a subset of YAML 1.2), so no
//! value can break the document's structure.

use std::fmt::Write as _;

use super::VmSetup;
use crate::workspace::{BatchRole, BatchSystem, Network};

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
    /// Its permission bits (`0o644`).
    pub mode: u32,
    /// The guest user (and that user's group) it belongs to; root if none.
    pub owner: Option<String>,
}

impl GuestFile {
    /// A whole file of root's, mode 0644.
    pub fn whole(path: &str, content: String) -> Self {
        GuestFile { path: path.to_owned(), content, append: false, mode: 0o644, owner: None }
    }
}

/// MUNGE's key in the guest (Debian's `munge`).
pub const MUNGE_KEY: &str = "/etc/munge/munge.key";

/// The MUNGE key of a Slurm node: the `munge` user's alone (munged refuses a key anyone
/// else may read).
fn munge_key(setup: &VmSetup) -> Option<GuestFile> {
    let key = setup.cluster.munge_key.as_ref()?;
    let slurm = setup.cluster.batch_system == Some(BatchSystem::Slurm);
    (slurm && setup.roles.batch.is_some()).then(|| GuestFile {
        mode: 0o400,
        owner: Some("munge".into()),
        ..GuestFile::whole(MUNGE_KEY, key.as_str().to_owned())
    })
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

/// A systemd `.link` file per NIC (`/etc/systemd/network/10-vw-ethN.link`): udev names
/// the NIC with vw's MAC `ethN` whatever the kernel or predictable naming called it
/// (`enX0` for Xen's netfront), so the ifupdown stanzas above find it. The seed
/// strategy gets the same from cloud-init's `match: macaddress` with `set-name`.
pub fn link_files(setup: &VmSetup) -> Vec<(String, String)> {
    setup
        .nics
        .iter()
        .enumerate()
        .map(|(i, nic)| {
            let name = nic_name(i);
            (
                format!("/etc/systemd/network/10-vw-{name}.link"),
                format!(
                    "# Written by vw: the NIC with this MAC is {name}.\n[Match]\nMACAddress={}\n\n[Link]\nName={name}\n",
                    nic.mac
                ),
            )
        })
        .collect()
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

/// The fstab entries: the swap partition, then the NFS mounts.
pub fn fstab_entries(setup: &VmSetup) -> Vec<[String; 6]> {
    let head = &setup.cluster.head;
    let swap = setup.swap.iter().map(|dev| {
        [format!("/dev/{dev}"), "none".into(), "swap".into(), "sw".into(), "0".into(), "0".into()]
    });
    let nfs = setup.roles.nfs_mounts.iter().map(|m| {
        [
            format!("{head}:{}", m.export),
            m.mount.clone(),
            "nfs".into(),
            "defaults,_netdev".into(),
            "0".into(),
            "0".into(),
        ]
    });
    swap.chain(nfs).collect()
}

/// The batch system's files. Torque: every node names the server, the server lists the
/// workers. Slurm: every node has the same `slurm.conf`, naming the controller and
/// every worker (Slurm wants it identical everywhere).
pub fn batch_files(setup: &VmSetup) -> Vec<(String, String)> {
    let Some(role) = setup.roles.batch else { return Vec::new() };
    match setup.cluster.batch_system {
        Some(BatchSystem::Slurm) => vec![(SLURM_CONF.to_owned(), slurm_conf(setup))],
        Some(BatchSystem::Torque) | None => {
            let mut files =
                vec![(format!("{TORQUE_HOME}/server_name"), format!("{}\n", setup.cluster.head))];
            if role == BatchRole::Server {
                let nodes: String = setup
                    .cluster
                    .batch_nodes
                    .iter()
                    .map(|(n, np)| format!("{n} np={np}\n"))
                    .collect();
                files.push((format!("{TORQUE_HOME}/server_priv/nodes"), nodes));
            }
            files
        }
    }
}

/// Slurm's configuration on Debian (`slurm-wlm`).
pub const SLURM_CONF: &str = "/etc/slurm/slurm.conf";

/// `slurm.conf`: the head runs `slurmctld`, every batch worker a node of one partition.
/// Authentication is munge's, with the key the images carry.
pub fn slurm_conf(setup: &VmSetup) -> String {
    let c = &setup.cluster;
    let mut out = format!(
        "# Written by vw for the virtual cluster.\n\
         ClusterName={}\nSlurmctldHost={}\nAuthType=auth/munge\nCryptoType=crypto/munge\n\
         SlurmUser=slurm\nStateSaveLocation=/var/lib/slurm/slurmctld\n\
         SlurmdSpoolDir=/var/lib/slurm/slurmd\nSlurmctldPidFile=/run/slurmctld.pid\n\
         SlurmdPidFile=/run/slurmd.pid\nProctrackType=proctrack/linuxproc\nTaskPlugin=task/none\n\
         SchedulerType=sched/backfill\nSelectType=select/cons_tres\nSelectTypeParameters=CR_Core\n\
         MpiDefault=none\nReturnToService=2\nSlurmctldTimeout=300\nSlurmdTimeout=300\n",
        slurm_name(&c.name),
        c.head
    );
    for (node, cpus) in &c.batch_nodes {
        let _ = writeln!(out, "NodeName={node} CPUs={cpus} State=UNKNOWN");
    }
    if !c.batch_nodes.is_empty() {
        let nodes: Vec<&str> = c.batch_nodes.iter().map(|(n, _)| n.as_str()).collect();
        let _ = writeln!(
            out,
            "PartitionName=batch Nodes={} Default=YES MaxTime=INFINITE State=UP",
            nodes.join(",")
        );
    }
    out
}

/// Slurm's cluster name: lowercase letters, digits and `-`, at most 40 characters.
fn slurm_name(cluster: &str) -> String {
    cluster
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' })
        .take(40)
        .collect()
}

/// Every file an in-image edit writes, in order.
pub fn guest_files(setup: &VmSetup) -> Vec<GuestFile> {
    let whole = GuestFile::whole;
    let mut files = vec![
        whole("/etc/hostname", format!("{}\n", setup.hostname)),
        whole("/etc/hosts", hosts(setup)),
        whole("/etc/network/interfaces", interfaces(setup)),
        // An image with cloud-init would otherwise run it without a datasource and lay
        // its fallback network config over these edits.
        whole(
            "/etc/cloud/cloud-init.disabled",
            "# Written by vw: this VM is configured by edits to its image, not by cloud-init.\n"
                .into(),
        ),
    ];
    files.extend(link_files(setup).into_iter().map(|(p, c)| whole(&p, c)));
    if let Some(r) = resolv_conf(setup) {
        files.push(whole("/etc/resolv.conf", r));
    }
    if let Some(e) = exports(setup) {
        files.push(whole("/etc/exports", e));
    }
    let fstab: String =
        fstab_entries(setup).iter().map(|f| format!("{}\n", f.join("\t"))).collect();
    if !fstab.is_empty() {
        files.push(GuestFile { append: true, ..whole("/etc/fstab", fstab) });
    }
    files.extend(batch_files(setup).into_iter().map(|(p, c)| whole(&p, c)));
    files.extend(munge_key(setup));
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
            // `0.0.0.0/0`, not `default`: cloud-init before 23.1 (Debian 12 has 22.4)
            // refuses the whole network config over `default`.
            let _ = writeln!(
                out,
                "    routes:\n      - to: 0.0.0.0/0\n        via: {}",
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
    if let Some(k) = munge_key(setup) {
        let owner = k.owner.as_deref().unwrap_or("root");
        let _ = writeln!(
            out,
            "  - path: {}\n    owner: {}\n    permissions: \"0{:o}\"\n    content: {}",
            json(&k.path),
            json(&format!("{owner}:{owner}")),
            k.mode,
            json(&k.content)
        );
    }
    let mut mounts = fstab_entries(setup);
    // cloud-init mounts with `mount -a` inside its own unit, which sshd and the rest of
    // the boot wait for; an NFS server that is not up yet (the head boots beside its
    // workers) must not hold it there, so NFS mounts retry in the background.
    for m in mounts.iter_mut().filter(|m| m[2] == "nfs") {
        m[3].push_str(",bg");
    }
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
    match (setup.roles.batch, setup.cluster.batch_system) {
        (Some(BatchRole::Server), _) => cmds.push("systemctl restart pbs_server"),
        // munged read the image's key at boot, before write_files laid down the cluster's.
        (Some(BatchRole::SlurmServer), _) => {
            cmds.extend(["systemctl restart munge", "systemctl restart slurmctld"])
        }
        (Some(BatchRole::Worker), Some(BatchSystem::Slurm)) => {
            cmds.extend(["systemctl restart munge", "systemctl restart slurmd"])
        }
        (Some(BatchRole::Worker), _) => cmds.push("systemctl restart pbs_mom"),
        (None, _) => {}
    }
    if !cmds.is_empty() {
        out.push_str("runcmd:\n");
        for c in cmds {
            let _ = writeln!(out, "  - {}", json(c));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::integrate::{ClusterView, NicSetup};
    use crate::workspace::{NfsMount, Roles};
    use yaml_rust2::{Yaml, YamlLoader};

    fn head() -> VmSetup {
        VmSetup {
            instance_id: "grid3-head-1".into(),
            hostname: "head".into(),
            nics: vec![
                NicSetup {
                    network: Network::Private,
                    address: "10.77.1.10/16".parse().expect("net"),
                    mac: "00:16:3e:00:00:01".parse().expect("mac"),
                    gateway: None,
                },
                NicSetup {
                    network: Network::Public,
                    address: "172.30.0.10/24".parse().expect("net"),
                    mac: "00:16:3e:00:00:02".parse().expect("mac"),
                    gateway: Some("172.30.0.1".parse().expect("ip")),
                },
            ],
            dns: vec!["10.77.0.1".parse().expect("ip")],
            roles: Roles {
                nfs_exports: vec!["/home".into()],
                nfs_mounts: vec![],
                batch: Some(BatchRole::Server),
            },
            vcpus: 2,
            swap: None,
            cluster: ClusterView {
                name: "grid3".into(),
                hosts: vec![
                    ("head".into(), "10.77.1.10".parse().expect("ip")),
                    ("worker1".into(), "10.77.1.11".parse().expect("ip")),
                ],
                head: "head".into(),
                private_net: "10.77.0.0/16".parse().expect("net"),
                batch_nodes: vec![("worker1".into(), 1)],
                batch_system: Some(BatchSystem::Torque),
                munge_key: None,
            },
        }
    }

    fn yaml(text: &str) -> Yaml {
        let mut docs =
            YamlLoader::load_from_str(text).unwrap_or_else(|e| panic!("not YAML: {e}\n{text}"));
        assert_eq!(docs.len(), 1, "{text}");
        docs.remove(0)
    }

    #[test]
    fn network_config_is_v2_with_both_nics_matched_by_mac() {
        let doc = yaml(&network_config(&head()));
        assert_eq!(doc["version"].as_i64(), Some(2));
        let eth1 = &doc["ethernets"]["eth1"];
        assert_eq!(eth1["match"]["macaddress"].as_str(), Some("00:16:3e:00:00:02"));
        assert_eq!(eth1["addresses"][0].as_str(), Some("172.30.0.10/24"));
        assert_eq!(eth1["routes"][0]["via"].as_str(), Some("172.30.0.1"));
        assert_eq!(eth1["routes"][0]["to"].as_str(), Some("0.0.0.0/0"));
        assert_eq!(
            doc["ethernets"]["eth0"]["nameservers"]["addresses"][0].as_str(),
            Some("10.77.0.1")
        );
        assert!(
            doc["ethernets"]["eth0"]["routes"].is_badvalue(),
            "one default route, on the public NIC"
        );
    }

    /// Both strategies find a NIC by its MAC: the seed by cloud-init's `match`, the
    /// edits by a `.link` file per NIC that names it `ethN` whatever the kernel called it.
    #[test]
    fn edits_name_each_nic_by_its_mac() {
        let files = guest_files(&head());
        let link = |n: &str| {
            let path = format!("/etc/systemd/network/10-vw-{n}.link");
            files.iter().find(|f| f.path == path).map(|f| f.content.clone()).expect(&path)
        };
        assert!(
            link("eth0").contains("[Match]\nMACAddress=00:16:3e:00:00:01\n"),
            "{}",
            link("eth0")
        );
        assert!(link("eth1").contains("MACAddress=00:16:3e:00:00:02\n\n[Link]\nName=eth1\n"));
        let paths: Vec<&str> = files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(paths.iter().filter(|p| p.ends_with(".link")).count(), 2, "{paths:?}");
    }

    #[test]
    fn user_data_writes_hosts_exports_and_the_node_list() {
        let text = user_data(&head());
        assert!(text.starts_with("#cloud-config\n"));
        let doc = yaml(&text);
        assert_eq!(doc["hostname"].as_str(), Some("head"));
        let files = doc["write_files"].as_vec().expect("write_files");
        let file = |p: &str| {
            files
                .iter()
                .find(|f| f["path"].as_str() == Some(p))
                .and_then(|f| f["content"].as_str())
                .unwrap_or_default()
                .to_owned()
        };
        assert!(file("/etc/hosts").contains("10.77.1.11\tworker1\n"));
        assert_eq!(
            file("/etc/exports"),
            "/home\t10.77.0.0/16(rw,sync,no_subtree_check,no_root_squash)\n"
        );
        assert_eq!(file("/var/spool/torque/server_priv/nodes"), "worker1 np=1\n");
        assert_eq!(doc["runcmd"][0].as_str(), Some("exportfs -ra"));
        let meta = yaml(&meta_data(&head()));
        assert_eq!(meta["instance-id"].as_str(), Some("grid3-head-1"));
    }

    #[test]
    fn slurm_nodes_share_one_conf_naming_the_controller_and_every_worker() {
        let mut h = head();
        h.roles.batch = Some(BatchRole::SlurmServer);
        h.cluster.batch_system = Some(BatchSystem::Slurm);
        h.cluster.batch_nodes = vec![("worker1".into(), 1), ("worker2".into(), 2)];
        let mut w = h.clone();
        w.hostname = "worker2".into();
        w.roles.batch = Some(BatchRole::Worker);
        w.roles.nfs_exports.clear();
        let (hf, wf) = (batch_files(&h), batch_files(&w));
        assert_eq!(hf, wf, "slurm.conf is the same on every node");
        assert_eq!(hf.len(), 1);
        let conf = &hf[0].1;
        assert_eq!(hf[0].0, "/etc/slurm/slurm.conf");
        for line in [
            "ClusterName=grid3\n",
            "SlurmctldHost=head\n",
            "AuthType=auth/munge\n",
            "NodeName=worker1 CPUs=1 State=UNKNOWN\n",
            "NodeName=worker2 CPUs=2 State=UNKNOWN\n",
            "PartitionName=batch Nodes=worker1,worker2 Default=YES",
        ] {
            assert!(conf.contains(line), "{line} missing from\n{conf}");
        }
        assert!(!guest_files(&h).iter().any(|f| f.path.contains("torque")));
        let doc = yaml(&user_data(&h));
        let cmds: Vec<&str> =
            doc["runcmd"].as_vec().expect("runcmd").iter().filter_map(Yaml::as_str).collect();
        assert!(cmds.contains(&"systemctl restart slurmctld"), "{cmds:?}");
        let doc = yaml(&user_data(&w));
        assert_eq!(doc["runcmd"][0].as_str(), Some("systemctl restart munge"));
        assert_eq!(doc["runcmd"][1].as_str(), Some("systemctl restart slurmd"));
    }

    /// Every Slurm node gets the cluster's MUNGE key, the munge user's alone (in the
    /// image and through cloud-init); a Torque cluster gets none.
    #[test]
    fn slurm_nodes_get_the_clusters_munge_key_for_the_munge_user_alone() {
        let key = crate::integrate::MungeKey::derive(&[1; 32], "grid3", 7);
        let mut h = head();
        h.roles.batch = Some(BatchRole::SlurmServer);
        h.cluster.batch_system = Some(BatchSystem::Slurm);
        h.cluster.munge_key = Some(key.clone());
        let mut w = h.clone();
        w.roles.batch = Some(BatchRole::Worker);
        for setup in [&h, &w] {
            let files = guest_files(setup);
            let k = files.iter().find(|f| f.path == MUNGE_KEY).expect("the key is written");
            assert_eq!(
                (k.content.as_str(), k.mode, k.owner.as_deref()),
                (key.as_str(), 0o400, Some("munge"))
            );
            let doc = yaml(&user_data(setup));
            let entry = doc["write_files"]
                .as_vec()
                .expect("write_files")
                .iter()
                .find(|f| f["path"].as_str() == Some(MUNGE_KEY))
                .expect("cloud-init writes the key");
            assert_eq!(entry["owner"].as_str(), Some("munge:munge"));
            assert_eq!(entry["permissions"].as_str(), Some("0400"));
            assert_eq!(entry["content"].as_str(), Some(key.as_str()));
        }
        // A node outside the batch system, or a Torque cluster, gets no key.
        let mut outside = w.clone();
        outside.roles.batch = None;
        assert!(!guest_files(&outside).iter().any(|f| f.path == MUNGE_KEY));
        assert!(!guest_files(&head()).iter().any(|f| f.path == MUNGE_KEY));
        assert!(!user_data(&head()).contains("munge"));
    }

    #[test]
    fn a_worker_mounts_the_head_export() {
        let mut w = head();
        w.hostname = "worker1".into();
        w.nics.truncate(1);
        w.nics[0].gateway = Some("10.77.0.1".parse().expect("ip"));
        w.roles = Roles {
            nfs_exports: vec![],
            nfs_mounts: vec![NfsMount { export: "/home".into(), mount: "/home".into() }],
            batch: Some(BatchRole::Worker),
        };
        let doc = yaml(&user_data(&w));
        let mount: Vec<&str> =
            doc["mounts"][0].as_vec().expect("mount").iter().filter_map(Yaml::as_str).collect();
        assert_eq!(mount, ["head:/home", "/home", "nfs", "defaults,_netdev,bg", "0", "0"]);
        assert!(interfaces(&w).contains(
            "iface eth0 inet static\n    address 10.77.1.10/16\n    gateway 10.77.0.1\n"
        ));
        let files = guest_files(&w);
        let fstab = files.iter().find(|f| f.path == "/etc/fstab").expect("fstab");
        assert!(fstab.append);
        // Edits turn off a cloud-init in the image, which would undo them.
        assert!(files.iter().any(|f| f.path == "/etc/cloud/cloud-init.disabled" && !f.append));
        assert_eq!(fstab.content, "head:/home\t/home\tnfs\tdefaults,_netdev\t0\t0\n");
        // With a swap partition, it is in fstab (both strategies) before the mounts.
        w.swap = Some("xvda2".into());
        let files = guest_files(&w);
        let fstab = files.iter().find(|f| f.path == "/etc/fstab").expect("fstab");
        assert!(
            fstab.content.starts_with("/dev/xvda2\tnone\tswap\tsw\t0\t0\n"),
            "{}",
            fstab.content
        );
        let doc = yaml(&user_data(&w));
        assert_eq!(doc["mounts"][0][2].as_str(), Some("swap"));
        assert_eq!(doc["mounts"][1][0].as_str(), Some("head:/home"));
        assert!(
            !files.iter().any(|f| f.path.ends_with("server_priv/nodes")),
            "only the server lists nodes"
        );
    }
}
