//! The requests: dumps of links, addresses, routes and neighbours, and
//! the changes the agent makes.

use std::net::IpAddr;

use crate::attr;
use crate::socket::{Message, NetlinkError, Socket, NLM_F_CREATE, NLM_F_REPLACE};
use crate::types::{Address, Link, MacAddr, Neighbour, Route, RouteScope};

const RTM_NEWLINK: u16 = 16;
const RTM_GETLINK: u16 = 18;
const RTM_NEWADDR: u16 = 20;
const RTM_GETADDR: u16 = 22;
const RTM_NEWROUTE: u16 = 24;
const RTM_GETROUTE: u16 = 26;
const RTM_NEWNEIGH: u16 = 28;
const RTM_GETNEIGH: u16 = 30;

const IFLA_ADDRESS: u16 = 1;
const IFLA_IFNAME: u16 = 3;
const IFLA_MTU: u16 = 4;
const IFLA_LINKINFO: u16 = 18;
const IFLA_INFO_KIND: u16 = 1;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const IFA_F_NODAD: u8 = 0x02;
const RTA_DST: u16 = 1;
const RTA_OIF: u16 = 4;
const RTA_GATEWAY: u16 = 5;
const RTA_PRIORITY: u16 = 6;
const RTA_PREFSRC: u16 = 7;
const RTA_TABLE: u16 = 15;
const NDA_DST: u16 = 1;
const NDA_LLADDR: u16 = 2;

const IFF_UP: u32 = 0x1;
const IFF_LOOPBACK: u32 = 0x8;
const RT_TABLE_MAIN: u8 = 254;
const RTN_UNICAST: u8 = 1;
const RTPROT_KERNEL: u8 = 2;
const RTPROT_STATIC: u8 = 4;
const NUD_PERMANENT: u16 = 0x80;

const IFINFOMSG_LEN: usize = 16;
const IFADDRMSG_LEN: usize = 8;
const RTMSG_LEN: usize = 12;
const NDMSG_LEN: usize = 12;

/// A netlink connection in the namespace of the thread that made it.
#[derive(Debug)]
pub struct Handle {
    pub(crate) sock: Socket,
}

fn family_of(ip: IpAddr) -> u8 {
    match ip {
        IpAddr::V4(_) => libc::AF_INET as u8,
        IpAddr::V6(_) => libc::AF_INET6 as u8,
    }
}

fn ifinfomsg(index: u32, flags: u32, change: u32) -> Vec<u8> {
    let mut m = vec![0u8; IFINFOMSG_LEN];
    m[4..8].copy_from_slice(&index.to_ne_bytes());
    m[8..12].copy_from_slice(&flags.to_ne_bytes());
    m[12..16].copy_from_slice(&change.to_ne_bytes());
    m
}

fn ne_u32(b: &[u8], at: usize) -> u32 {
    b.get(at..at + 4)
        .and_then(|s| s.try_into().ok())
        .map(u32::from_ne_bytes)
        .unwrap_or(0)
}

impl Handle {
    /// Opens a connection in the calling thread's network namespace.
    pub fn new() -> Result<Self, NetlinkError> {
        Ok(Self {
            sock: Socket::new()?,
        })
    }

    /// Every link.
    pub fn links(&mut self) -> Result<Vec<Link>, NetlinkError> {
        let msgs = self
            .sock
            .dump(RTM_GETLINK, &ifinfomsg(0, 0, 0), &|| "listing links".into())?;
        Ok(msgs.iter().filter_map(parse_link).collect())
    }

    /// The link named `name`.
    pub fn link_by_name(&mut self, name: &str) -> Result<Link, NetlinkError> {
        self.links()?
            .into_iter()
            .find(|l| l.name == name)
            .ok_or_else(|| NetlinkError::NotFound(format!("no interface named {name:?}")))
    }

    /// The link whose MAC address is `mac`.
    pub fn link_by_mac(&mut self, mac: MacAddr) -> Result<Link, NetlinkError> {
        self.links()?
            .into_iter()
            .find(|l| l.mac == Some(mac))
            .ok_or_else(|| NetlinkError::NotFound(format!("no interface with MAC {mac}")))
    }

    /// Every address of every link.
    pub fn addresses(&mut self) -> Result<Vec<Address>, NetlinkError> {
        let msgs = self.sock.dump(RTM_GETADDR, &[0u8; IFADDRMSG_LEN], &|| {
            "listing addresses".into()
        })?;
        Ok(msgs.iter().filter_map(parse_address).collect())
    }

    /// The unicast routes of the main table, IPv4 and IPv6.
    pub fn routes(&mut self) -> Result<Vec<Route>, NetlinkError> {
        let msgs = self
            .sock
            .dump(RTM_GETROUTE, &[0u8; RTMSG_LEN], &|| "listing routes".into())?;
        Ok(msgs.iter().filter_map(parse_route).collect())
    }

    /// Every neighbour entry.
    pub fn neighbours(&mut self) -> Result<Vec<Neighbour>, NetlinkError> {
        let msgs = self.sock.dump(RTM_GETNEIGH, &[0u8; NDMSG_LEN], &|| {
            "listing neighbours".into()
        })?;
        Ok(msgs.iter().filter_map(parse_neighbour).collect())
    }

    /// Sets the MTU (when given) and brings the link up or down.
    pub fn set_link(&mut self, index: u32, mtu: Option<u32>, up: bool) -> Result<(), NetlinkError> {
        let mut msg = ifinfomsg(index, if up { IFF_UP } else { 0 }, IFF_UP);
        if let Some(mtu) = mtu {
            attr::push(&mut msg, IFLA_MTU, &mtu.to_ne_bytes());
        }
        self.sock.request(RTM_NEWLINK, 0, &msg, &|| {
            format!(
                "setting link {index}{} {}",
                mtu.map(|m| format!(" mtu {m}")).unwrap_or_default(),
                if up { "up" } else { "down" }
            )
        })
    }

    /// Gives link `index` the hardware address `mac` (RTM_NEWLINK with
    /// IFLA_ADDRESS). Drivers that cannot change it while the link is up
    /// answer EBUSY; virtio-net can.
    pub fn set_link_address(&mut self, index: u32, mac: MacAddr) -> Result<(), NetlinkError> {
        self.sock
            .request(RTM_NEWLINK, 0, &link_address_msg(index, mac), &|| {
                format!("setting the MAC address of link {index} to {mac}")
            })
    }

    /// Adds (or replaces) `ip/prefix_len` on link `index`. IPv6 addresses
    /// skip duplicate address detection: the host side owns the address.
    pub fn add_address(
        &mut self,
        index: u32,
        ip: IpAddr,
        prefix_len: u8,
    ) -> Result<(), NetlinkError> {
        let mut msg = vec![0u8; IFADDRMSG_LEN];
        msg[0] = family_of(ip);
        msg[1] = prefix_len;
        msg[2] = if ip.is_ipv6() { IFA_F_NODAD } else { 0 };
        msg[4..8].copy_from_slice(&index.to_ne_bytes());
        attr::push_ip(&mut msg, IFA_LOCAL, ip);
        attr::push_ip(&mut msg, IFA_ADDRESS, ip);
        self.sock
            .request(RTM_NEWADDR, NLM_F_CREATE | NLM_F_REPLACE, &msg, &|| {
                format!("adding address {ip}/{prefix_len} to link {index}")
            })
    }

    /// Adds (or replaces) a route in the main table.
    pub fn add_route(&mut self, route: &Route) -> Result<(), NetlinkError> {
        let mut msg = vec![0u8; RTMSG_LEN];
        msg[0] = if route.ipv6 {
            libc::AF_INET6 as u8
        } else {
            libc::AF_INET as u8
        };
        msg[1] = route.dst_len;
        msg[4] = RT_TABLE_MAIN;
        msg[5] = RTPROT_STATIC;
        msg[6] = route.scope.to_raw();
        msg[7] = RTN_UNICAST;
        if let Some(dst) = route.dst {
            attr::push_ip(&mut msg, RTA_DST, dst);
        }
        if let Some(gw) = route.gateway {
            attr::push_ip(&mut msg, RTA_GATEWAY, gw);
        }
        if let Some(oif) = route.oif {
            attr::push(&mut msg, RTA_OIF, &oif.to_ne_bytes());
        }
        if let Some(src) = route.source {
            attr::push_ip(&mut msg, RTA_PREFSRC, src);
        }
        if let Some(metric) = route.metric {
            attr::push(&mut msg, RTA_PRIORITY, &metric.to_ne_bytes());
        }
        self.sock
            .request(RTM_NEWROUTE, NLM_F_CREATE | NLM_F_REPLACE, &msg, &|| {
                format!("adding route {}", describe_route(route))
            })
    }

    /// Adds (or replaces) a permanent neighbour entry.
    pub fn add_neighbour(
        &mut self,
        index: u32,
        ip: IpAddr,
        mac: MacAddr,
    ) -> Result<(), NetlinkError> {
        let mut msg = vec![0u8; NDMSG_LEN];
        msg[0] = family_of(ip);
        msg[4..8].copy_from_slice(&index.to_ne_bytes());
        msg[8..10].copy_from_slice(&NUD_PERMANENT.to_ne_bytes());
        attr::push_ip(&mut msg, NDA_DST, ip);
        attr::push(&mut msg, NDA_LLADDR, &mac.0);
        self.sock
            .request(RTM_NEWNEIGH, NLM_F_CREATE | NLM_F_REPLACE, &msg, &|| {
                format!("adding neighbour {ip} lladdr {mac} on link {index}")
            })
    }
}

/// `dst/len via gw dev oif`, for messages.
pub fn describe_route(r: &Route) -> String {
    let mut s = match r.dst {
        Some(dst) => format!("{dst}/{}", r.dst_len),
        None => "default".to_string(),
    };
    if let Some(gw) = r.gateway {
        s.push_str(&format!(" via {gw}"));
    }
    if let Some(oif) = r.oif {
        s.push_str(&format!(" dev {oif}"));
    }
    s
}

fn parse_link(m: &Message) -> Option<Link> {
    if m.kind != RTM_NEWLINK || m.payload.len() < IFINFOMSG_LEN {
        return None;
    }
    let p = &m.payload;
    let flags = ne_u32(p, 8);
    let mut link = Link {
        index: ne_u32(p, 4),
        name: String::new(),
        mac: None,
        mtu: 0,
        up: flags & IFF_UP != 0,
        loopback: flags & IFF_LOOPBACK != 0,
        kind: None,
    };
    for (kind, data) in attr::parse(&p[IFINFOMSG_LEN..]) {
        match kind {
            IFLA_IFNAME => link.name = attr::string(data),
            IFLA_ADDRESS => link.mac = MacAddr::from_bytes(data),
            IFLA_MTU => link.mtu = attr::u32_of(data).unwrap_or(0),
            IFLA_LINKINFO => {
                link.kind = attr::parse(data)
                    .find(|(k, _)| *k == IFLA_INFO_KIND)
                    .map(|(_, d)| attr::string(d));
            }
            _ => {}
        }
    }
    Some(link)
}

fn parse_address(m: &Message) -> Option<Address> {
    if m.kind != RTM_NEWADDR || m.payload.len() < IFADDRMSG_LEN {
        return None;
    }
    let p = &m.payload;
    let mut local = None;
    let mut address = None;
    for (kind, data) in attr::parse(&p[IFADDRMSG_LEN..]) {
        match kind {
            IFA_LOCAL => local = attr::ip(data),
            IFA_ADDRESS => address = attr::ip(data),
            _ => {}
        }
    }
    Some(Address {
        index: ne_u32(p, 4),
        // IFA_LOCAL is the interface's own address on point-to-point links.
        ip: local.or(address)?,
        prefix_len: p[1],
        scope: p[3],
    })
}

fn parse_route(m: &Message) -> Option<Route> {
    if m.kind != RTM_NEWROUTE || m.payload.len() < RTMSG_LEN {
        return None;
    }
    let p = &m.payload;
    let mut table = u32::from(p[4]);
    let mut route = Route {
        dst: None,
        dst_len: p[1],
        gateway: None,
        oif: None,
        source: None,
        metric: None,
        scope: RouteScope::from_raw(p[6]),
        ipv6: i32::from(p[0]) == libc::AF_INET6,
        kernel: p[5] == RTPROT_KERNEL,
    };
    for (kind, data) in attr::parse(&p[RTMSG_LEN..]) {
        match kind {
            RTA_DST => route.dst = attr::ip(data),
            RTA_GATEWAY => route.gateway = attr::ip(data),
            RTA_OIF => route.oif = attr::u32_of(data),
            RTA_PREFSRC => route.source = attr::ip(data),
            RTA_PRIORITY => route.metric = attr::u32_of(data),
            RTA_TABLE => table = attr::u32_of(data).unwrap_or(table),
            _ => {}
        }
    }
    (table == u32::from(RT_TABLE_MAIN) && p[7] == RTN_UNICAST).then_some(route)
}

fn parse_neighbour(m: &Message) -> Option<Neighbour> {
    if m.kind != RTM_NEWNEIGH || m.payload.len() < NDMSG_LEN {
        return None;
    }
    let p = &m.payload;
    let state = u16::from_ne_bytes([p[8], p[9]]);
    let mut ip = None;
    let mut mac = None;
    for (kind, data) in attr::parse(&p[NDMSG_LEN..]) {
        match kind {
            NDA_DST => ip = attr::ip(data),
            NDA_LLADDR => mac = MacAddr::from_bytes(data),
            _ => {}
        }
    }
    Some(Neighbour {
        index: ne_u32(p, 4),
        ip: ip?,
        mac: mac?,
        permanent: state & NUD_PERMANENT != 0,
    })
}

/// The RTM_NEWLINK payload that sets link `index`'s address to `mac`
/// and changes no flag.
fn link_address_msg(index: u32, mac: MacAddr) -> Vec<u8> {
    let mut msg = ifinfomsg(index, 0, 0);
    attr::push(&mut msg, IFLA_ADDRESS, &mac.0);
    msg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_address_message_names_the_link_and_mac() {
        let mac: MacAddr = "0a:58:0a:58:00:05".parse().unwrap();
        let payload = link_address_msg(7, mac);
        // ifinfomsg: no flag changed.
        assert_eq!(ne_u32(&payload, 12), 0);
        let link = parse_link(&Message {
            kind: RTM_NEWLINK,
            payload,
        })
        .unwrap();
        assert_eq!((link.index, link.mac), (7, Some(mac)));
    }

    #[test]
    fn loopback_is_listed() {
        // Every network namespace has lo; no privileges needed to list.
        let mut h = Handle::new().unwrap();
        let links = h.links().unwrap();
        let lo = links.iter().find(|l| l.loopback).unwrap();
        assert_eq!(lo.name, "lo");
        assert!(lo.mtu > 0);
        let lo_index = lo.index;
        let addrs = h.addresses().unwrap();
        assert!(
            addrs.iter().any(|a| a.index == lo_index
                && a.ip == IpAddr::from([127, 0, 0, 1])
                && a.prefix_len == 8),
            "{addrs:?}"
        );
        h.routes().unwrap();
        h.neighbours().unwrap();
        assert!(matches!(
            h.link_by_name("nacre-no-such"),
            Err(NetlinkError::NotFound(_))
        ));
    }

    #[test]
    fn parses_a_route_message() {
        let mut p = vec![
            libc::AF_INET as u8,
            0,
            0,
            0,
            RT_TABLE_MAIN,
            4,
            0,
            RTN_UNICAST,
            0,
            0,
            0,
            0,
        ];
        attr::push_ip(&mut p, RTA_GATEWAY, "10.88.0.1".parse().unwrap());
        attr::push(&mut p, RTA_OIF, &3u32.to_ne_bytes());
        let r = parse_route(&Message {
            kind: RTM_NEWROUTE,
            payload: p.clone(),
        })
        .unwrap();
        assert_eq!(r.dst, None);
        assert_eq!(r.gateway, Some("10.88.0.1".parse().unwrap()));
        assert_eq!(r.oif, Some(3));
        assert!(!r.ipv6 && !r.kernel);
        assert_eq!(describe_route(&r), "default via 10.88.0.1 dev 3");
        // Another table is left out.
        p[4] = 255;
        assert!(parse_route(&Message {
            kind: RTM_NEWROUTE,
            payload: p,
        })
        .is_none());
        // Truncated messages are ignored, not a panic.
        assert!(parse_route(&Message {
            kind: RTM_NEWROUTE,
            payload: vec![2, 0],
        })
        .is_none());
    }
}
