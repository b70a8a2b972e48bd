//! Checking a `ConfigureNetworkRequest` whole, before anything changes.

use std::net::IpAddr;

use nacre_netlink::{MacAddr, Route, RouteScope};
use nacre_protocol::network::ConfigureNetworkRequest;

use super::NetworkError;

/// The most a resolv.conf or hosts file may hold.
const MAX_FILE: usize = 64 * 1024;

/// One interface to configure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterfacePlan {
    pub mac: MacAddr,
    /// The MAC the NIC has now when it is to be given `mac` (a VM
    /// restored from a template).
    pub current_mac: Option<MacAddr>,
    pub mtu: Option<u32>,
    pub addresses: Vec<(IpAddr, u8)>,
}

/// A checked request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkPlan {
    pub interfaces: Vec<InterfacePlan>,
    /// Routes (without their output interface) and the MAC of that
    /// interface; on-link routes first.
    pub routes: Vec<(Route, Option<MacAddr>)>,
    /// (address, its MAC, the interface's MAC).
    pub neighbours: Vec<(IpAddr, MacAddr, MacAddr)>,
    pub hostname: Option<String>,
    pub resolv_conf: Option<String>,
    pub hosts: Option<String>,
}

fn invalid(msg: String) -> NetworkError {
    NetworkError::Invalid(msg)
}

fn mac(s: &str, what: &str) -> Result<MacAddr, NetworkError> {
    s.parse()
        .map_err(|_| invalid(format!("{what}: bad MAC address {s:?}")))
}

fn ip(s: &str, what: &str) -> Result<IpAddr, NetworkError> {
    s.parse()
        .map_err(|_| invalid(format!("{what}: bad IP address {s:?}")))
}

fn opt_ip(s: &str, what: &str) -> Result<Option<IpAddr>, NetworkError> {
    if s.is_empty() {
        Ok(None)
    } else {
        ip(s, what).map(Some)
    }
}

fn prefix(ip: IpAddr, len: u32, what: &str) -> Result<u8, NetworkError> {
    let max = if ip.is_ipv6() { 128 } else { 32 };
    if len > max {
        return Err(invalid(format!(
            "{what}: prefix length {len} is more than {max}"
        )));
    }
    Ok(len as u8)
}

fn file(text: &str, what: &str) -> Result<Option<String>, NetworkError> {
    if text.len() > MAX_FILE {
        return Err(invalid(format!(
            "{what} is {} bytes, at most {MAX_FILE}",
            text.len()
        )));
    }
    Ok((!text.is_empty()).then(|| text.to_string()))
}

/// Checks `req` and turns it into a plan.
pub fn plan(req: &ConfigureNetworkRequest) -> Result<NetworkPlan, NetworkError> {
    let mut interfaces = Vec::new();
    for iface in &req.interfaces {
        let what = format!("interface {:?}", iface.mac);
        let m = mac(&iface.mac, &what)?;
        if interfaces.iter().any(|i: &InterfacePlan| i.mac == m) {
            return Err(invalid(format!("{what} is given twice")));
        }
        if iface.mtu != 0 && !(68..=65_535).contains(&iface.mtu) {
            return Err(invalid(format!("{what}: MTU {} out of range", iface.mtu)));
        }
        let mut addresses = Vec::new();
        for a in &iface.addresses {
            let addr = ip(&a.address, &what)?;
            addresses.push((addr, prefix(addr, a.prefix_len, &what)?));
        }
        let current_mac = if iface.current_mac.is_empty() {
            None
        } else {
            Some(mac(&iface.current_mac, &format!("{what} current MAC"))?)
        };
        if current_mac.is_some_and(|c| {
            interfaces
                .iter()
                .any(|i: &InterfacePlan| i.current_mac == Some(c) || i.mac == c)
        }) {
            return Err(invalid(format!(
                "{what}: current MAC {:?} is given twice",
                iface.current_mac
            )));
        }
        interfaces.push(InterfacePlan {
            mac: m,
            current_mac,
            mtu: (iface.mtu != 0).then_some(iface.mtu),
            addresses,
        });
    }
    let mut routes = Vec::new();
    for r in &req.routes {
        let what = format!("route to {:?} via {:?}", r.destination, r.gateway);
        let dst = opt_ip(&r.destination, &what)?;
        let gateway = opt_ip(&r.gateway, &what)?;
        let ipv6 = dst.or(gateway).map_or(r.ipv6, |a| a.is_ipv6());
        if let (Some(d), Some(g)) = (dst, gateway) {
            if d.is_ipv6() != g.is_ipv6() {
                return Err(invalid(format!("{what}: mixed address families")));
            }
        }
        let dst_len = match dst {
            Some(d) => prefix(d, r.prefix_len, &what)?,
            None if r.prefix_len == 0 => 0,
            None => {
                return Err(invalid(format!(
                    "{what}: a prefix length without a destination"
                )))
            }
        };
        let oif_mac = if r.interface_mac.is_empty() {
            None
        } else {
            Some(mac(&r.interface_mac, &what)?)
        };
        let route = Route {
            dst,
            dst_len,
            gateway,
            oif: None,
            source: opt_ip(&r.source, &what)?,
            metric: (r.metric != 0).then_some(r.metric),
            scope: if r.link_scope {
                RouteScope::Link
            } else {
                RouteScope::Universe
            },
            ipv6,
            kernel: false,
        };
        routes.push((route, oif_mac));
    }
    // On-link routes first: a gateway must be reachable when its route is
    // added.
    routes.sort_by_key(|(r, _)| r.gateway.is_some());
    let mut neighbours = Vec::new();
    for n in &req.neighbours {
        let what = format!("neighbour {:?}", n.address);
        neighbours.push((
            ip(&n.address, &what)?,
            mac(&n.mac, &what)?,
            mac(&n.interface_mac, &what)?,
        ));
    }
    let hostname = if req.hostname.is_empty() {
        None
    } else {
        let h = &req.hostname;
        if h.len() > 64
            || h.bytes()
                .any(|b| b == 0 || b == b'/' || b.is_ascii_whitespace())
        {
            return Err(invalid(format!(
                "hostname {h:?}: at most 64 bytes, no NUL, '/' or space"
            )));
        }
        Some(h.clone())
    };
    Ok(NetworkPlan {
        interfaces,
        routes,
        neighbours,
        hostname,
        resolv_conf: file(&req.resolv_conf, "resolv.conf")?,
        hosts: file(&req.hosts, "hosts")?,
    })
}

#[cfg(test)]
mod tests {
    use nacre_protocol::network::{Interface, IpAddress, Neighbour, Route as PbRoute};

    use super::*;

    fn request() -> ConfigureNetworkRequest {
        let mut req = ConfigureNetworkRequest::new();
        let mut iface = Interface::new();
        iface.mac = "0a:58:0a:58:00:05".into();
        iface.mtu = 1450;
        for (a, p) in [("10.88.0.5", 16), ("fd00::5", 64)] {
            let mut addr = IpAddress::new();
            addr.address = a.into();
            addr.prefix_len = p;
            iface.addresses.push(addr);
        }
        req.interfaces.push(iface);
        let mut default = PbRoute::new();
        default.gateway = "10.88.0.1".into();
        default.interface_mac = "0a:58:0a:58:00:05".into();
        req.routes.push(default);
        let mut onlink = PbRoute::new();
        onlink.destination = "10.99.0.0".into();
        onlink.prefix_len = 24;
        onlink.link_scope = true;
        req.routes.push(onlink);
        let mut n = Neighbour::new();
        n.address = "10.88.0.1".into();
        n.mac = "0a:58:0a:58:00:01".into();
        n.interface_mac = "0a:58:0a:58:00:05".into();
        req.neighbours.push(n);
        req.hostname = "pod-a".into();
        req.resolv_conf = "nameserver 10.96.0.10\n".into();
        req
    }

    #[test]
    fn a_good_request_is_planned() {
        let p = plan(&request()).unwrap();
        assert_eq!(p.interfaces.len(), 1);
        assert_eq!(p.interfaces[0].mtu, Some(1450));
        assert_eq!(p.interfaces[0].current_mac, None);
        let mut restored = request();
        restored.interfaces[0].current_mac = "02:6e:61:63:00:00".into();
        assert_eq!(
            plan(&restored).unwrap().interfaces[0].current_mac,
            Some("02:6e:61:63:00:00".parse().unwrap())
        );
        assert_eq!(
            p.interfaces[0].addresses[1],
            ("fd00::5".parse().unwrap(), 64)
        );
        // The on-link route comes first.
        assert_eq!(p.routes[0].0.dst, Some("10.99.0.0".parse().unwrap()));
        assert_eq!(p.routes[0].0.scope, RouteScope::Link);
        assert_eq!(p.routes[1].0.dst, None);
        assert!(!p.routes[1].0.ipv6);
        assert_eq!(p.hostname.as_deref(), Some("pod-a"));
        assert!(p.hosts.is_none());
        assert_eq!(p.neighbours.len(), 1);
    }

    #[test]
    fn bad_requests_are_named() {
        let check = |edit: &dyn Fn(&mut ConfigureNetworkRequest), needle: &str| {
            let mut req = request();
            edit(&mut req);
            let err = plan(&req).unwrap_err();
            assert!(matches!(err, NetworkError::Invalid(_)));
            assert!(err.to_string().contains(needle), "{err} lacks {needle}");
        };
        check(
            &|r| r.interfaces[0].mac = "zz".into(),
            "bad MAC address \"zz\"",
        );
        check(
            &|r| r.interfaces[0].addresses[0].address = "10.88.0".into(),
            "bad IP address",
        );
        check(
            &|r| r.interfaces[0].addresses[0].prefix_len = 33,
            "prefix length 33",
        );
        check(&|r| r.interfaces[0].mtu = 20, "MTU 20");
        check(
            &|r| {
                let dup = r.interfaces[0].clone();
                r.interfaces.push(dup);
            },
            "given twice",
        );
        check(
            &|r| r.routes[0].destination = "fd00::".into(),
            "mixed address families",
        );
        check(&|r| r.hostname = "a/b".into(), "hostname");
        check(
            &|r| r.interfaces[0].current_mac = "02:00".into(),
            "current MAC: bad MAC address",
        );
        check(
            &|r| {
                r.interfaces[0].current_mac = "02:6e:61:63:00:00".into();
                let mut other = r.interfaces[0].clone();
                other.mac = "0a:58:0a:58:00:06".into();
                r.interfaces.push(other);
            },
            "current MAC \"02:6e:61:63:00:00\" is given twice",
        );
        check(&|r| r.hosts = "x".repeat(MAX_FILE + 1), "hosts is");
    }
}
