use nacre_netlink::MacAddr;

use super::*;

fn link(index: u32, name: &str, mac: Option<[u8; 6]>, kind: Option<&str>) -> Link {
    Link {
        index,
        name: name.into(),
        mac: mac.map(MacAddr),
        mtu: 1450,
        up: true,
        loopback: name == "lo",
        kind: kind.map(Into::into),
    }
}

fn addr(index: u32, ip: &str, prefix_len: u8, scope: u8) -> Address {
    Address {
        index,
        ip: ip.parse().unwrap(),
        prefix_len,
        scope,
    }
}

#[test]
fn selects_cni_interfaces_routes_and_neighbours() {
    let eth0 = [0x0a, 0x58, 0x0a, 0x58, 0, 5];
    let links = vec![
        link(1, "lo", Some([0; 6]), None),
        link(2, "eth0", Some(eth0), Some("veth")),
        link(3, "nacre_tap0", Some([2, 0, 0, 0, 0, 9]), Some("tun")),
        link(4, "down0", Some([2, 0, 0, 0, 0, 8]), Some("veth")),
    ];
    let addresses = vec![
        addr(1, "127.0.0.1", 8, 254),
        addr(2, "10.88.0.5", 16, 0),
        addr(2, "fd00::5", 64, 0),
        addr(2, "fe80::858:aff:fe58:5", 64, 253),
        addr(3, "10.1.1.1", 24, 0),
    ];
    let route = |dst: Option<&str>, len, gw: Option<&str>, oif, kernel| Route {
        dst: dst.map(|d| d.parse().unwrap()),
        dst_len: len,
        gateway: gw.map(|g| g.parse().unwrap()),
        oif,
        source: None,
        metric: None,
        scope: RouteScope::Universe,
        ipv6: false,
        kernel,
    };
    let routes = vec![
        route(None, 0, Some("10.88.0.1"), Some(2), false),
        route(Some("10.88.0.0"), 16, None, Some(2), true),
        route(Some("10.99.0.0"), 16, Some("10.88.0.1"), Some(4), false),
        route(Some("fe80::"), 64, None, Some(2), false),
    ];
    let neighbours = vec![
        nacre_netlink::Neighbour {
            index: 2,
            ip: "10.88.0.1".parse().unwrap(),
            mac: MacAddr([2, 0, 0, 0, 0, 1]),
            permanent: true,
        },
        nacre_netlink::Neighbour {
            index: 2,
            ip: "10.88.0.7".parse().unwrap(),
            mac: MacAddr([2, 0, 0, 0, 0, 7]),
            permanent: false,
        },
    ];
    let info = select(&links, &addresses, &routes, &neighbours);
    assert_eq!(info.interfaces.len(), 1, "{info:?}");
    let eth = &info.interfaces[0];
    assert_eq!(eth.name, "eth0");
    assert_eq!(eth.mac, "0a:58:0a:58:00:05");
    assert_eq!(eth.mtu, 1450);
    assert_eq!(
        eth.addresses,
        vec![
            IpNet {
                ip: "10.88.0.5".parse().unwrap(),
                prefix_len: 16
            },
            IpNet {
                ip: "fd00::5".parse().unwrap(),
                prefix_len: 64
            }
        ]
    );
    assert_eq!(info.routes.len(), 1, "{:?}", info.routes);
    assert_eq!(info.routes[0].destination, None);
    assert_eq!(info.routes[0].gateway, Some("10.88.0.1".parse().unwrap()));
    assert_eq!(
        info.routes[0].interface_mac.as_deref(),
        Some("0a:58:0a:58:00:05")
    );
    assert_eq!(info.neighbours.len(), 1);
    assert_eq!(info.neighbours[0].mac, "02:00:00:00:00:01");
}

#[test]
fn a_missing_namespace_is_named() {
    let err = attach(Path::new("/nonexistent/nacre-netns")).unwrap_err();
    assert!(
        err.to_string().contains("/nonexistent/nacre-netns"),
        "{err}"
    );
}

#[test]
fn netns_path_from_a_spec() {
    let spec = serde_json::json!({"linux": {"namespaces": [
        {"type": "pid"},
        {"type": "network", "path": "/var/run/netns/cni-1234"}
    ]}});
    assert_eq!(
        netns_path(&spec),
        Some(PathBuf::from("/var/run/netns/cni-1234"))
    );
    let own = serde_json::json!({"linux": {"namespaces": [{"type": "network"}]}});
    assert_eq!(netns_path(&own), None);
    assert_eq!(netns_path(&serde_json::json!({})), None);
}

#[test]
fn joining_the_vm_network_drops_the_namespace() {
    let mut spec = serde_json::json!({"linux": {"namespaces": [
        {"type": "pid"},
        {"type": "network", "path": "/var/run/netns/cni-1234"}
    ]}});
    assert!(join_vm_network(&mut spec));
    assert_eq!(
        spec["linux"]["namespaces"],
        serde_json::json!([{"type": "pid"}])
    );
    assert!(!join_vm_network(&mut spec));
    assert!(!join_vm_network(&mut serde_json::json!({})));
}
