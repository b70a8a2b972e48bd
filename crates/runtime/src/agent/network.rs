//! `Network.ConfigureNetwork`: the request built from a [`GuestNetwork`].

use nacre_protocol::network::{ConfigureNetworkRequest, Interface, IpAddress, Neighbour, Route};

use crate::network::GuestNetwork;

/// The request for `net`.
pub fn to_request(net: &GuestNetwork) -> ConfigureNetworkRequest {
    let mut req = ConfigureNetworkRequest::new();
    for i in &net.interfaces {
        let mut iface = Interface::new();
        iface.mac.clone_from(&i.mac);
        iface.name.clone_from(&i.name);
        iface.mtu = i.mtu;
        iface.current_mac = i.current_mac.clone().unwrap_or_default();
        for a in &i.addresses {
            let mut addr = IpAddress::new();
            addr.address = a.ip.to_string();
            addr.prefix_len = u32::from(a.prefix_len);
            iface.addresses.push(addr);
        }
        req.interfaces.push(iface);
    }
    for r in &net.routes {
        let mut route = Route::new();
        if let Some(dst) = &r.destination {
            route.destination = dst.ip.to_string();
            route.prefix_len = u32::from(dst.prefix_len);
        }
        route.gateway = r.gateway.map(|g| g.to_string()).unwrap_or_default();
        route.interface_mac = r.interface_mac.clone().unwrap_or_default();
        route.source = r.source.map(|s| s.to_string()).unwrap_or_default();
        route.metric = r.metric.unwrap_or(0);
        route.link_scope = r.link_scope;
        route.ipv6 = r.ipv6;
        req.routes.push(route);
    }
    for n in &net.neighbours {
        let mut neigh = Neighbour::new();
        neigh.address = n.ip.to_string();
        neigh.mac.clone_from(&n.mac);
        neigh.interface_mac.clone_from(&n.interface_mac);
        req.neighbours.push(neigh);
    }
    req.hostname = net.hostname.clone().unwrap_or_default();
    req.resolv_conf = net.resolv_conf.clone().unwrap_or_default();
    req.hosts = net.hosts.clone().unwrap_or_default();
    req
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::network::{GuestInterface, GuestRoute, IpNet};

    #[test]
    fn request_carries_everything() {
        let net = GuestNetwork {
            interfaces: vec![GuestInterface {
                mac: "0a:58:0a:58:00:05".into(),
                name: "eth0".into(),
                mtu: 1500,
                addresses: vec![IpNet {
                    ip: "10.88.0.5".parse().unwrap(),
                    prefix_len: 16,
                }],
                current_mac: Some("02:6e:61:63:00:00".into()),
            }],
            routes: vec![GuestRoute {
                destination: None,
                gateway: Some("10.88.0.1".parse().unwrap()),
                interface_mac: Some("0a:58:0a:58:00:05".into()),
                source: None,
                metric: None,
                link_scope: false,
                ipv6: false,
            }],
            neighbours: vec![],
            hostname: Some("pod".into()),
            resolv_conf: Some("nameserver 10.96.0.10\n".into()),
            hosts: None,
        };
        let req = to_request(&net);
        assert_eq!(req.interfaces[0].addresses[0].address, "10.88.0.5");
        assert_eq!(req.interfaces[0].addresses[0].prefix_len, 16);
        assert_eq!(req.interfaces[0].current_mac, "02:6e:61:63:00:00");
        assert_eq!(req.routes[0].destination, "");
        assert_eq!(req.routes[0].gateway, "10.88.0.1");
        assert_eq!(req.hostname, "pod");
        assert_eq!(req.hosts, "");
    }
}
