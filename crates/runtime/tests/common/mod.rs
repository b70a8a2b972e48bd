//! A scratch network namespace wired like CNI's bridge plugin would: a
//! veth pair, `eth0` with an address in the namespace, the host end with
//! the gateway address in the root namespace, a default route, a
//! permanent neighbour. Removed on drop.

#![allow(dead_code, reason = "each test binary uses a part")]

use std::path::PathBuf;
use std::process::Command;

pub fn sh(cmd: &str) -> String {
    let out = Command::new("sh").arg("-c").arg(cmd).output().unwrap();
    assert!(
        out.status.success(),
        "{cmd}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn sh_ok(cmd: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

pub struct PodNetns {
    pub name: String,
    pub host_if: String,
    /// The pod's address and the gateway (the host end).
    pub pod_ip: String,
    pub gateway: String,
    pub mac: String,
    /// The pod's IPv6 address and gateway (fd00:213:<octet>::2 and ::1).
    pub pod_ip6: String,
    pub gateway6: String,
}

impl PodNetns {
    /// `octet` picks the subnet 10.213.<octet>.0/24 (one per test).
    pub fn create(tag: &str, octet: u8) -> Self {
        let pid = std::process::id();
        let name = format!("nacre-{tag}-{pid}");
        let host_if = format!("nv{}{}", &tag[..tag.len().min(3)], pid % 100_000);
        let pod_ip = format!("10.213.{octet}.2");
        let gateway = format!("10.213.{octet}.1");
        let mac = format!("0a:58:0a:d5:{octet:02x}:02");
        let _ = Command::new("ip")
            .args(["netns", "del", &name])
            .stderr(std::process::Stdio::null())
            .status();
        sh(&format!("ip netns add {name}"));
        let ns = Self {
            name,
            host_if,
            pod_ip,
            gateway,
            mac,
            pod_ip6: format!("fd00:213:{octet}::2"),
            gateway6: format!("fd00:213:{octet}::1"),
        };
        let (n, h) = (&ns.name, &ns.host_if);
        sh(&format!(
            "ip link add {h} type veth peer name eth0 netns {n} && \
             ip addr add {gw}/24 dev {h} && ip link set {h} up && \
             ip -n {n} link set eth0 address {mac} mtu 1450 && \
             ip -n {n} addr add {ip}/24 dev eth0 && ip -n {n} link set eth0 up && \
             ip -n {n} link set lo up && \
             ip -n {n} route add default via {gw} && \
             ip addr add {gw6}/64 dev {h} nodad && \
             ip -n {n} addr add {ip6}/64 dev eth0 nodad && \
             ip -n {n} -6 route add default via {gw6} dev eth0 && \
             ip -n {n} neigh add 10.213.{octet}.9 lladdr 02:00:00:00:00:09 dev eth0 nud permanent",
            gw = ns.gateway,
            ip = ns.pod_ip,
            mac = ns.mac,
            gw6 = ns.gateway6,
            ip6 = ns.pod_ip6,
        ));
        ns
    }

    /// Adds `net1`, a second interface as Multus would: a veth whose host
    /// end has 10.214.<octet>.1/24 and whose `net1` has 10.214.<octet>.2/24,
    /// MAC `0a:58:0a:d6:<octet>:02` and `mtu`. Returns the host end's name
    /// and the MAC; the pair goes away with the namespace.
    pub fn add_net1(&self, octet: u8, mtu: u32) -> (String, String) {
        let host_end = format!("{}b", self.host_if);
        let mac = format!("0a:58:0a:d6:{octet:02x}:02");
        sh(&format!(
            "ip link add {host_end} type veth peer name net1 netns {n} && \
             ip addr add 10.214.{octet}.1/24 dev {host_end} && ip link set {host_end} up && \
             ip -n {n} link set net1 address {mac} mtu {mtu} && \
             ip -n {n} addr add 10.214.{octet}.2/24 dev net1 && ip -n {n} link set net1 up",
            n = self.name,
        ));
        (host_end, mac)
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from(format!("/var/run/netns/{}", self.name))
    }

    /// `cmd` run in the namespace.
    pub fn exec(&self, cmd: &str) -> String {
        sh(&format!("ip netns exec {} {cmd}", self.name))
    }
}

impl Drop for PodNetns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .stderr(std::process::Stdio::null())
            .status();
    }
}
