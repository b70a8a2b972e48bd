//! Root tier: the pod network module on a real namespace, veth and tap,
//! without a VM. Attach reads what CNI would have made, creates the tap
//! with tc redirects both ways; teardown leaves nothing; a failing attach
//! leaves nothing either.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

mod common;

use std::io::Write;
use std::os::unix::fs::MetadataExt;

use common::{sh, sh_ok, PodNetns};
use nacre_runtime::network::{self, DevNum, Endpoint, NetworkError};
use nacre_runtime::testing::root_prereqs;

#[test]
fn attach_and_teardown_leave_nothing() {
    if !root_prereqs("attach_and_teardown_leave_nothing") {
        return;
    }
    let ns = PodNetns::create("att", 1);
    let pod = network::attach(&ns.path()).unwrap();
    let eps = pod.endpoints();
    assert_eq!(eps.len(), 1);
    let ep = &eps[0];
    assert_eq!(ep.interface.name, "eth0");
    assert_eq!(ep.interface.mac, ns.mac);
    assert_eq!(ep.interface.mtu, 1450);
    assert_eq!(ep.interface.addresses[0].ip.to_string(), ns.pod_ip);
    assert_eq!(ep.interface.addresses[0].prefix_len, 24);
    assert!(
        ep.interface
            .addresses
            .iter()
            .any(|a| a.ip.to_string() == ns.pod_ip6 && a.prefix_len == 64),
        "{:?}",
        ep.interface.addresses
    );

    let guest = pod.guest_network();
    let default = guest
        .routes
        .iter()
        .find(|r| r.destination.is_none() && !r.ipv6)
        .expect("default route");
    assert_eq!(default.gateway.unwrap().to_string(), ns.gateway);
    assert_eq!(default.interface_mac.as_deref(), Some(ns.mac.as_str()));
    let default6 = guest
        .routes
        .iter()
        .find(|r| r.destination.is_none() && r.ipv6)
        .expect("IPv6 default route");
    assert_eq!(default6.gateway.unwrap().to_string(), ns.gateway6);
    assert_eq!(guest.neighbours.len(), 1, "{:?}", guest.neighbours);
    assert_eq!(guest.neighbours[0].mac, "02:00:00:00:00:09");

    let nets = pod.vm_nets();
    assert_eq!(nets.len(), 1);
    assert!(nets[0].net_arg().unwrap().to_arg().starts_with(&format!(
        "fd={},mac={}",
        nets[0].fd.unwrap(),
        ns.mac
    )));
    assert_eq!(nets[0].mtu, Some(1450));

    let tap = ns.exec(&format!("ip -o link show {}", ep.tap_name));
    assert!(tap.contains("mtu 1450") && tap.contains(",UP"), "{tap}");
    let filters = ns.exec("tc filter show dev eth0 ingress");
    assert!(
        filters.contains(&format!("Egress Redirect to device {}", ep.tap_name)),
        "{filters}"
    );
    let back = ns.exec(&format!("tc filter show dev {} ingress", ep.tap_name));
    assert!(back.contains("Egress Redirect to device eth0"), "{back}");

    let tap_name = ep.tap_name.clone();
    pod.teardown().unwrap();
    assert!(
        !sh_ok(&format!(
            "ip netns exec {} ip link show {tap_name}",
            ns.name
        )),
        "the tap is still there"
    );
    let qdiscs = ns.exec("tc qdisc show dev eth0");
    assert!(!qdiscs.contains("ingress"), "{qdiscs}");
    // The namespace's own network is untouched.
    let addrs = ns.exec("ip -o addr show dev eth0");
    assert!(addrs.contains(&ns.pod_ip), "{addrs}");
}

/// A pod with two interfaces (as Multus gives one): a tap and a virtio-net
/// device each, the second interface's address and route described for
/// the guest on its own MAC, and both taps gone after teardown.
#[test]
fn two_interfaces_get_two_devices() {
    if !root_prereqs("two_interfaces_get_two_devices") {
        return;
    }
    let ns = PodNetns::create("two", 5);
    let (_, second_mac) = ns.add_net1(5, 1400);
    ns.exec("ip route add 10.99.0.0/16 via 10.214.5.1 dev net1");
    let pod = network::attach(&ns.path()).unwrap();
    let eps = pod.endpoints();
    let mut names: Vec<&str> = eps.iter().map(|e| e.interface.name.as_str()).collect();
    names.sort_unstable();
    assert_eq!(names, ["eth0", "net1"]);
    let net1 = eps.iter().find(|e| e.interface.name == "net1").unwrap();
    assert_eq!(net1.interface.mac, second_mac);
    assert_eq!(net1.interface.mtu, 1400);
    let nets = pod.vm_nets();
    assert_eq!(nets.len(), 2);
    assert_ne!(nets[0].fd, nets[1].fd);
    let mut macs: Vec<&str> = nets.iter().map(|n| n.mac.as_str()).collect();
    macs.sort_unstable();
    let mut want = [ns.mac.as_str(), second_mac.as_str()];
    want.sort_unstable();
    assert_eq!(macs, want);
    let guest = pod.guest_network();
    assert_eq!(guest.interfaces.len(), 2);
    let route = guest
        .routes
        .iter()
        .find(|r| {
            r.destination
                .as_ref()
                .is_some_and(|d| d.ip.to_string() == "10.99.0.0")
        })
        .expect("the route over net1");
    assert_eq!(route.interface_mac.as_deref(), Some(second_mac.as_str()));
    assert_eq!(route.gateway.unwrap().to_string(), "10.214.5.1");
    let filters = ns.exec("tc filter show dev net1 ingress");
    assert!(
        filters.contains(&format!("Egress Redirect to device {}", net1.tap_name)),
        "{filters}"
    );
    let taps: Vec<String> = eps.iter().map(|e| e.tap_name.clone()).collect();
    assert_ne!(taps[0], taps[1]);
    pod.teardown().unwrap();
    for tap in &taps {
        assert!(
            !sh_ok(&format!("ip netns exec {} ip link show {tap}", ns.name)),
            "tap {tap} is still there"
        );
    }
    let qdiscs = ns.exec("tc qdisc show dev net1");
    assert!(!qdiscs.contains("ingress"), "{qdiscs}");
}

#[test]
fn macvtap_model_attaches_and_leaves_nothing() {
    if !root_prereqs("macvtap_model_attaches_and_leaves_nothing") {
        return;
    }
    let ns = PodNetns::create("mvt", 4);
    let pod = network::attach_with(&ns.path(), network::NetworkModel::Macvtap).unwrap();
    let ep = &pod.endpoints()[0];
    let name = ep.tap_name.clone();
    // Passthru: the macvtap has the interface's MAC and MTU, no tc rules.
    let link = ns.exec(&format!("ip -o -d link show {name}"));
    assert!(
        link.contains("macvtap") && link.contains("passthru"),
        "{link}"
    );
    assert!(
        link.contains(&ns.mac) && link.contains("mtu 1450") && link.contains(",UP"),
        "{link}"
    );
    let filters = ns.exec("tc filter show dev eth0 ingress");
    assert!(filters.trim().is_empty(), "{filters}");
    let index: u32 = ns
        .exec(&format!("cat /sys/class/net/{name}/ifindex"))
        .trim()
        .parse()
        .unwrap();
    assert_eq!(ep.macvtap_index(), Some(index));
    assert!(std::path::Path::new(&format!("/dev/tap{index}")).exists());
    // The descriptor is the macvtap's device as the namespace's sysfs
    // names it, and opening it left no mount in the host's namespace.
    let sysfs_dev = sysfs_dev(&ns, &name, index);
    assert_eq!(fd_dev(ep), sysfs_dev);
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains("nacre-macvtap") && !mounts.contains(" /sys/sysfs "),
        "{mounts}"
    );
    let nets = pod.vm_nets();
    assert_eq!(nets.len(), 1);
    assert_eq!(nets[0].mac, ns.mac);
    pod.teardown().unwrap();
    assert!(
        !sh_ok(&format!("ip netns exec {} ip link show {name}", ns.name)),
        "the macvtap is still there"
    );
    let gone = (0..50).any(|_| {
        let gone = !std::path::Path::new(&format!("/dev/tap{index}")).exists();
        if !gone {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        gone
    });
    assert!(gone, "/dev/tap{index} is still there");
    assert!(sh("ip netns list").contains(&ns.name));
}

/// The device number of macvtap `name` (index `index`) as the sysfs of
/// `ns` shows it (`ip netns exec` mounts the namespace's own sysfs).
fn sysfs_dev(ns: &PodNetns, name: &str, index: u32) -> DevNum {
    let text = ns.exec(&format!("cat /sys/class/net/{name}/macvtap/tap{index}/dev"));
    DevNum::parse(&text).unwrap()
}

/// The device number of the endpoint's descriptor (`stat` follows the
/// `/proc/self/fd` link to the open file itself).
fn fd_dev(ep: &Endpoint) -> DevNum {
    use std::os::fd::AsRawFd;
    let fd = ep.device().unwrap().as_raw_fd();
    DevNum::from_dev_t(
        std::fs::metadata(format!("/proc/self/fd/{fd}"))
            .unwrap()
            .rdev(),
    )
}

fn tx_packets(ns: &PodNetns) -> u64 {
    ns.exec("cat /sys/class/net/eth0/statistics/tx_packets")
        .trim()
        .parse()
        .unwrap()
}

/// Security review M4: namespace A's live macvtap has index N, so the
/// host-wide `/dev/tapN` is A's. Pod B's macvtap gets the same index N on
/// purpose; the runtime must still open B's device, not `/dev/tapN`: the
/// descriptor's device number differs from `/dev/tapN`'s and is the one
/// B's sysfs gives, and frames written to it leave on B's eth0, not A's.
#[test]
fn macvtap_index_taken_by_another_namespace_opens_its_own_device() {
    if !root_prereqs("macvtap_index_taken_by_another_namespace_opens_its_own_device") {
        return;
    }
    let a = PodNetns::create("mva", 6);
    let b = PodNetns::create("mvb", 7);
    let index = (1 << 20) + 500_000 + std::process::id() % 100_000;
    a.exec(&format!(
        "ip link add link eth0 name mvta index {index} type macvtap mode passthru"
    ));
    a.exec("ip link set mvta up");
    let node = format!("/dev/tap{index}");
    let a_dev = DevNum::from_dev_t(std::fs::metadata(&node).unwrap().rdev());
    assert_eq!(a_dev, sysfs_dev(&a, "mvta", index), "{node} is not A's");

    let pod = network::attach_macvtap_at(&b.path(), index).unwrap();
    let ep = &pod.endpoints()[0];
    assert_eq!(ep.macvtap_index(), Some(index));
    let b_dev = sysfs_dev(&b, &ep.tap_name, index);
    assert_ne!(a_dev, b_dev);
    let opened = fd_dev(ep);
    assert_ne!(opened, a_dev, "the runtime opened A's macvtap");
    assert_eq!(opened, b_dev);
    // devtmpfs kept A's node: the name still leads to A.
    assert_eq!(
        DevNum::from_dev_t(std::fs::metadata(&node).unwrap().rdev()),
        a_dev
    );

    // Frames written to B's descriptor leave on B's eth0. A zero
    // virtio-net header (macvtap queues have IFF_VNET_HDR, 10 bytes),
    // then a broadcast frame of a local experimental ethertype.
    let mut frame = vec![0u8; 10];
    frame.extend_from_slice(&[0xff; 6]);
    frame.extend_from_slice(&[0x0a, 0x58, 0x0a, 0xd5, 0x07, 0x02]);
    frame.extend_from_slice(&[0x88, 0xb5]);
    frame.extend_from_slice(&[0x4d; 46]);
    let mut device = std::fs::File::from(ep.device().unwrap().try_clone_to_owned().unwrap());
    let (a_before, b_before) = (tx_packets(&a), tx_packets(&b));
    const FRAMES: u64 = 50;
    for _ in 0..FRAMES {
        device.write_all(&frame).unwrap();
    }
    drop(device);
    let (a_sent, b_sent) = (tx_packets(&a) - a_before, tx_packets(&b) - b_before);
    assert!(b_sent >= FRAMES, "B's eth0 sent {b_sent} frames");
    assert!(a_sent < FRAMES, "A's eth0 sent {a_sent} frames: ours?");

    let name = ep.tap_name.clone();
    pod.teardown().unwrap();
    assert!(
        !sh_ok(&format!("ip netns exec {} ip link show {name}", b.name)),
        "B's macvtap is still there"
    );
    // A's macvtap and node are untouched.
    a.exec("ip link show mvta");
    assert_eq!(
        DevNum::from_dev_t(std::fs::metadata(&node).unwrap().rdev()),
        a_dev
    );
    a.exec("ip link del mvta");
}

#[test]
fn failed_attach_leaves_nothing() {
    if !root_prereqs("failed_attach_leaves_nothing") {
        return;
    }
    let ns = PodNetns::create("bad", 2);
    // Someone else's tap by our first name, and someone else's ingress
    // qdisc on eth0: the tap gets another name, the redirect fails after
    // the tap was made; the undo removes our tap and leaves theirs.
    ns.exec("ip tuntap add nacre_tap0 mode tap");
    ns.exec("tc qdisc add dev eth0 ingress");
    let err = network::attach(&ns.path()).unwrap_err();
    assert!(matches!(err, NetworkError::Tc { .. }), "{err}");
    let text = err.to_string();
    assert!(text.contains("connecting eth0 and nacre_tap1"), "{text}");
    assert!(text.contains("tc qdisc add dev eth0 ingress"), "{text}");
    assert!(
        !sh_ok(&format!(
            "ip netns exec {} ip link show nacre_tap1",
            ns.name
        )),
        "our tap is still there"
    );
    let qdiscs = ns.exec("tc qdisc show dev eth0");
    assert!(qdiscs.contains("ingress"), "their qdisc went: {qdiscs}");
    assert_eq!(ns.exec("tc filter show dev eth0 ingress"), "");
    ns.exec("ip link show nacre_tap0");
    ns.exec("ip tuntap del nacre_tap0 mode tap");

    // A namespace without interfaces.
    let empty = format!("nacre-empty-{}", std::process::id());
    sh(&format!("ip netns add {empty}"));
    let err =
        network::attach(std::path::Path::new(&format!("/var/run/netns/{empty}"))).unwrap_err();
    sh(&format!("ip netns del {empty}"));
    assert!(matches!(err, NetworkError::NoInterface(_)), "{err}");
    assert!(err.to_string().contains("did CNI run?"), "{err}");
}
