//! The objects read and written: links, addresses, routes, neighbours.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

/// An Ethernet MAC address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MacAddr(pub [u8; 6]);

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

/// A string that is not `xx:xx:xx:xx:xx:xx`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad MAC address {0:?}: expected six hex bytes separated by ':'")]
pub struct BadMac(pub String);

impl FromStr for MacAddr {
    type Err = BadMac;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut mac = [0u8; 6];
        let mut parts = s.split(':');
        for byte in &mut mac {
            let part = parts.next().ok_or_else(|| BadMac(s.into()))?;
            if part.len() != 2 {
                return Err(BadMac(s.into()));
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| BadMac(s.into()))?;
        }
        if parts.next().is_some() {
            return Err(BadMac(s.into()));
        }
        Ok(MacAddr(mac))
    }
}

impl MacAddr {
    /// Decodes 6 bytes.
    pub fn from_bytes(data: &[u8]) -> Option<Self> {
        Some(MacAddr(data.try_into().ok()?))
    }
}

/// A network interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    /// None for links without a hardware address (e.g. some tunnels).
    pub mac: Option<MacAddr>,
    pub mtu: u32,
    /// IFF_UP is set.
    pub up: bool,
    /// IFF_LOOPBACK is set.
    pub loopback: bool,
    /// The link kind (`IFLA_INFO_KIND`: "veth", "tun", "bridge", ...).
    pub kind: Option<String>,
}

/// An address of an interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Address {
    pub index: u32,
    pub ip: IpAddr,
    pub prefix_len: u8,
    /// RT_SCOPE_* (0 universe, 253 link, 254 host).
    pub scope: u8,
}

/// Where a route applies (`rtm_scope`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteScope {
    /// Through a gateway or anywhere (RT_SCOPE_UNIVERSE).
    Universe,
    /// Directly on the link (RT_SCOPE_LINK).
    Link,
    /// This host (RT_SCOPE_HOST).
    Host,
}

impl RouteScope {
    pub(crate) fn to_raw(self) -> u8 {
        match self {
            Self::Universe => 0,
            Self::Link => 253,
            Self::Host => 254,
        }
    }

    pub(crate) fn from_raw(raw: u8) -> Self {
        match raw {
            253 => Self::Link,
            254 => Self::Host,
            _ => Self::Universe,
        }
    }
}

/// A unicast route of the main table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// None with `dst_len` 0: the default route.
    pub dst: Option<IpAddr>,
    pub dst_len: u8,
    pub gateway: Option<IpAddr>,
    /// The output interface index.
    pub oif: Option<u32>,
    /// The preferred source address.
    pub source: Option<IpAddr>,
    pub metric: Option<u32>,
    pub scope: RouteScope,
    /// An IPv6 route (else IPv4).
    pub ipv6: bool,
    /// Added by the kernel for an address's subnet (RTPROT_KERNEL): comes
    /// back by itself when the address is added.
    pub kernel: bool,
}

/// A neighbour (ARP/NDP) entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Neighbour {
    pub index: u32,
    pub ip: IpAddr,
    pub mac: MacAddr,
    /// NUD_PERMANENT: set by hand, not learned.
    pub permanent: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_round_trip() {
        let mac: MacAddr = "0a:58:0A:f4:00:1f".parse().unwrap();
        assert_eq!(mac.to_string(), "0a:58:0a:f4:00:1f");
        assert!("0a:58".parse::<MacAddr>().is_err());
        assert!("0a:58:0a:f4:00:1f:00".parse::<MacAddr>().is_err());
        assert!("0a:58:0a:f4:00:g1".parse::<MacAddr>().is_err());
        assert_eq!(MacAddr::from_bytes(&[1, 2, 3]), None);
    }
}
