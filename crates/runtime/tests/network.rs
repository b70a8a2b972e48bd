//! Root tier: the pod network module on a real namespace, veth and tap,
//! without a VM. Attach reads what CNI would have made, creates the tap
//! with tc redirects both ways; teardown leaves nothing; a failing attach
//! leaves nothing either.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

mod common;

use common::{sh, sh_ok, PodNetns};
use nacre_runtime::network::{self, NetworkError};
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
    assert!(nets[0]
        .arg()
        .starts_with(&format!("fd={},mac={}", nets[0].fd.unwrap(), ns.mac)));
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
    assert!(std::path::Path::new(&format!("/dev/tap{index}")).exists());
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
