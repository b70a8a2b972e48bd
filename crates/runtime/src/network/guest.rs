//! What the guest agent is told about the network
//! (`Network.ConfigureNetwork`): plain data the shim can also store.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// An address with its prefix length.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpNet {
    pub ip: IpAddr,
    pub prefix_len: u8,
}

/// One guest interface, found in the guest by its MAC.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestInterface {
    /// `xx:xx:xx:xx:xx:xx`: the CNI interface's MAC, which the guest NIC gets.
    pub mac: String,
    /// The name of the CNI interface on the host side (e.g. `eth0`).
    pub name: String,
    pub mtu: u32,
    pub addresses: Vec<IpNet>,
    /// The MAC the guest NIC has now, when it differs from `mac` (a VM
    /// restored from a template: [`crate::template::placeholder_mac`]);
    /// the agent then gives the NIC `mac`.
    #[serde(default)]
    pub current_mac: Option<String>,
}

/// One route.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestRoute {
    /// None: the default route.
    pub destination: Option<IpNet>,
    pub gateway: Option<IpAddr>,
    /// The MAC of the interface it leaves through.
    pub interface_mac: Option<String>,
    pub source: Option<IpAddr>,
    pub metric: Option<u32>,
    /// An on-link route (scope link).
    pub link_scope: bool,
    pub ipv6: bool,
}

/// A permanent neighbour entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestNeighbour {
    pub ip: IpAddr,
    pub mac: String,
    pub interface_mac: String,
}

/// Everything the agent configures.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestNetwork {
    pub interfaces: Vec<GuestInterface>,
    pub routes: Vec<GuestRoute>,
    pub neighbours: Vec<GuestNeighbour>,
    /// None: the guest's hostname stays.
    pub hostname: Option<String>,
    /// The contents of /etc/resolv.conf (None: unchanged).
    pub resolv_conf: Option<String>,
    /// The contents of /etc/hosts (None: unchanged).
    pub hosts: Option<String>,
}
