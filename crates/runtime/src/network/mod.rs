//! Pod networking on the host side: the VM joins the network that CNI
//! made in the pod's network namespace.
//!
//! [`attach`] enters the namespace (a dedicated thread, [`netns`]), reads
//! its CNI interfaces, addresses, routes and neighbours over netlink
//! (nacre-netlink), and for each interface opens a tap there (a
//! non-persistent one: it disappears with its last descriptor) and ties
//! tap and interface together with tc: ingress qdiscs and mirred egress
//! redirects both ways, done with iproute2's `tc` run inside the namespace
//! ([`tc`]). The tap gets the interface's MTU and is set up. The result, a
//! [`PodNetwork`], holds the tap descriptors for `nacre-vmm --net fd=N`
//! ([`PodNetwork::vm_nets`]) and the description the guest agent applies
//! ([`PodNetwork::guest_network`]): the guest NIC takes the CNI
//! interface's MAC and addresses, so the pod's IP is the guest's.
//!
//! With [`NetworkModel::Macvtap`] (an option, as in Kata) each interface
//! gets a passthru macvtap instead of tap + tc ([`macvtap`]): it takes the
//! interface's MAC and all its traffic, and the VMM gets its character
//! device, opened by the device number the pod's namespace gives it
//! (never by the host-wide name `/dev/tap<ifindex>`).
//!
//! [`PodNetwork::teardown`] (or drop) removes the tc rules (or deletes the
//! macvtaps) and closes the taps; a tap goes away once the VMM's copy is closed too (the VMM
//! exited). Any failure in [`attach`] undoes what was done. Nothing here
//! creates or deletes the namespace or the CNI interfaces: CNI does.

mod guest;
mod macvtap;
pub mod netns;
mod tap;
pub mod tc;

pub use guest::{GuestInterface, GuestNeighbour, GuestNetwork, GuestRoute, IpNet};
pub use macvtap::{DevNum, MacvtapDeviceError};

use std::net::IpAddr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use nacre_netlink::{Address, Handle, Link, NetlinkError, Route, RouteScope};

use crate::vm::VmNet;
use netns::NetnsError;
use tc::TcError;

/// The name prefix of the taps (`nacre_tap0`, ...).
pub const TAP_PREFIX: &str = "nacre_tap";

/// Why the pod network could not be attached or torn down.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error("reading network namespace {netns}: {source}")]
    Read {
        netns: PathBuf,
        #[source]
        source: NetlinkError,
    },
    #[error("network namespace {0} has no interface with an address (did CNI run?)")]
    NoInterface(PathBuf),
    #[error("creating tap {name} in {netns}: {source}")]
    Tap {
        netns: PathBuf,
        name: String,
        #[source]
        source: std::io::Error,
    },
    #[error("setting tap {name} up with MTU {mtu} in {netns}: {source}")]
    TapUp {
        netns: PathBuf,
        name: String,
        mtu: u32,
        #[source]
        source: NetlinkError,
    },
    #[error("connecting {interface} and {tap} in {netns}: {source}")]
    Tc {
        netns: PathBuf,
        interface: String,
        tap: String,
        #[source]
        source: Box<TcError>,
    },
    #[error("creating a macvtap on {interface} in {netns}: {source}")]
    Macvtap {
        netns: PathBuf,
        interface: String,
        #[source]
        source: NetlinkError,
    },
    #[error("opening the device of macvtap {name} (index {index}) in {netns}: {source}")]
    MacvtapDevice {
        netns: PathBuf,
        name: String,
        index: u32,
        #[source]
        source: Box<MacvtapDeviceError>,
    },
    #[error("tearing down the network of {netns}: {}", errors.join("; "))]
    Teardown { netns: PathBuf, errors: Vec<String> },
}

/// How a VM's NIC is tied to the pod's CNI interface.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum NetworkModel {
    /// A tap, and tc ingress + mirred redirects between it and the
    /// interface (the default: works with any CNI interface type).
    #[default]
    TcFilter,
    /// A passthru macvtap on the interface: no tc, the kernel hands the
    /// interface's frames to the VMM directly.
    Macvtap,
}

impl std::str::FromStr for NetworkModel {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "tcfilter" => Ok(Self::TcFilter),
            "macvtap" => Ok(Self::Macvtap),
            other => Err(format!(
                "unknown network model {other:?} (expected \"tcfilter\" or \"macvtap\")"
            )),
        }
    }
}

/// A CNI interface of the pod as read in its namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodInterface {
    pub name: String,
    pub index: u32,
    pub mac: String,
    pub mtu: u32,
    pub addresses: Vec<IpNet>,
}

/// One CNI interface and the tap tied to it.
#[derive(Debug)]
pub struct Endpoint {
    pub interface: PodInterface,
    pub tap_name: String,
    tap: Option<OwnedFd>,
    /// The index of the macvtap made for this endpoint (macvtap model).
    macvtap: Option<u32>,
    /// Which redirects are in place (teardown removes only these).
    from_interface: bool,
    from_tap: bool,
}

impl Endpoint {
    /// The tap (or macvtap) descriptor the VMM gets, while open.
    pub fn device(&self) -> Option<BorrowedFd<'_>> {
        self.tap.as_ref().map(|fd| fd.as_fd())
    }

    /// The interface index of the macvtap made for this endpoint, if any.
    pub fn macvtap_index(&self) -> Option<u32> {
        self.macvtap
    }
}

/// What was read in the namespace, before any change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamespaceInfo {
    pub interfaces: Vec<PodInterface>,
    /// Routes through the interfaces (kernel subnet routes left out: the
    /// guest makes its own when the addresses are added).
    pub routes: Vec<GuestRoute>,
    pub neighbours: Vec<GuestNeighbour>,
}

/// The pod's network as attached for one VM.
#[derive(Debug)]
pub struct PodNetwork {
    netns: PathBuf,
    endpoints: Vec<Endpoint>,
    routes: Vec<GuestRoute>,
    neighbours: Vec<GuestNeighbour>,
    torn_down: bool,
}

/// The network namespace path of an OCI spec
/// (`linux.namespaces[type=network].path`), if it names one. Containers
/// that join the VM's network should have that namespace entry removed
/// from the spec the guest gets: the guest's own network is the pod's.
pub fn netns_path(spec: &serde_json::Value) -> Option<PathBuf> {
    spec.get("linux")?
        .get("namespaces")?
        .as_array()?
        .iter()
        .find(|ns| ns.get("type").and_then(|t| t.as_str()) == Some("network"))?
        .get("path")?
        .as_str()
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
}

/// Makes a container spec meant for the guest join the VM's own network
/// (the pod's, configured by the agent): removes its network namespace
/// entry, which would otherwise give it a new, empty namespace in the
/// guest. Returns whether there was one.
pub fn join_vm_network(spec: &mut serde_json::Value) -> bool {
    let Some(nss) = spec
        .get_mut("linux")
        .and_then(|l| l.get_mut("namespaces"))
        .and_then(|n| n.as_array_mut())
    else {
        return false;
    };
    let before = nss.len();
    nss.retain(|ns| ns.get("type").and_then(|t| t.as_str()) != Some("network"));
    nss.len() != before
}

/// Reads the CNI interfaces, routes and neighbours of the namespace at
/// `netns`, changing nothing.
pub fn inspect(netns: &Path) -> Result<NamespaceInfo, NetworkError> {
    let read = netns::run_in(netns, read_namespace)?;
    read.map_err(|source| NetworkError::Read {
        netns: netns.to_path_buf(),
        source,
    })
}

/// Attaches the pod network at `netns` (e.g. the OCI spec's
/// `linux.namespaces[type=network].path`): reads it, then creates and
/// connects one tap per CNI interface. On error nothing is left behind.
pub fn attach(netns: &Path) -> Result<PodNetwork, NetworkError> {
    attach_with(netns, NetworkModel::TcFilter)
}

/// [`attach`] with the given model.
pub fn attach_with(netns: &Path, model: NetworkModel) -> Result<PodNetwork, NetworkError> {
    attach_inner(netns, model, None)
}

/// For tests only: [`attach_with`] the macvtap model, giving the macvtap
/// interface index `index` instead of a random one (a pod with one
/// interface; fails if the index is taken in the namespace). Lets a test
/// make two namespaces' macvtaps share an index on purpose.
#[doc(hidden)]
pub fn attach_macvtap_at(netns: &Path, index: u32) -> Result<PodNetwork, NetworkError> {
    attach_inner(netns, NetworkModel::Macvtap, Some(index))
}

fn attach_inner(
    netns: &Path,
    model: NetworkModel,
    macvtap_index: Option<u32>,
) -> Result<PodNetwork, NetworkError> {
    let info = inspect(netns)?;
    if info.interfaces.is_empty() {
        return Err(NetworkError::NoInterface(netns.to_path_buf()));
    }
    let mut pod = PodNetwork {
        netns: netns.to_path_buf(),
        endpoints: Vec::new(),
        routes: info.routes,
        neighbours: info.neighbours,
        torn_down: false,
    };
    let interfaces = info.interfaces;
    let path = netns.to_path_buf();
    let result = netns::run_in(netns, || {
        let mut endpoints = Vec::new();
        let taken: Vec<String> = match Handle::new().and_then(|mut nl| nl.links()) {
            Ok(links) => links.into_iter().map(|l| l.name).collect(),
            Err(source) => {
                let e = NetworkError::Read {
                    netns: path.clone(),
                    source,
                };
                return (endpoints, Err(e));
            }
        };
        let mut free = (0..)
            .map(|i| format!("{TAP_PREFIX}{i}"))
            .filter(|n| !taken.contains(n));
        for interface in interfaces {
            let tap_name = free.next().unwrap_or_default();
            // Pushed before it is complete: a failure below tears down
            // what this endpoint already has.
            endpoints.push(Endpoint {
                interface,
                tap_name,
                tap: None,
                macvtap: None,
                from_interface: false,
                from_tap: false,
            });
            if let Some(ep) = endpoints.last_mut() {
                let connected = match model {
                    NetworkModel::TcFilter => connect(&path, ep),
                    NetworkModel::Macvtap => macvtap::connect(&path, ep, macvtap_index),
                };
                if let Err(e) = connected {
                    return (endpoints, Err(e));
                }
            }
        }
        (endpoints, Ok(()))
    })?;
    let (endpoints, outcome) = result;
    pod.endpoints = endpoints;
    match outcome {
        Ok(()) => {
            for ep in &pod.endpoints {
                tracing::info!(netns = %netns.display(), interface = %ep.interface.name, tap = %ep.tap_name, mac = %ep.interface.mac, ?model, "pod interface attached");
            }
            Ok(pod)
        }
        Err(e) => {
            if let Err(undo) = pod.teardown_inner() {
                tracing::warn!("undoing a failed attach: {undo}");
            }
            Err(e)
        }
    }
}

/// In the namespace's thread: opens the tap, sets it up with the
/// interface's MTU, and redirects both ways.
fn connect(netns: &Path, ep: &mut Endpoint) -> Result<(), NetworkError> {
    let tap = tap::open(&ep.tap_name).map_err(|source| NetworkError::Tap {
        netns: netns.to_path_buf(),
        name: ep.tap_name.clone(),
        source,
    })?;
    ep.tap = Some(tap);
    let mtu = ep.interface.mtu;
    let up = Handle::new().and_then(|mut nl| {
        let link = nl.link_by_name(&ep.tap_name)?;
        nl.set_link(link.index, Some(mtu), true)
    });
    up.map_err(|source| NetworkError::TapUp {
        netns: netns.to_path_buf(),
        name: ep.tap_name.clone(),
        mtu,
        source,
    })?;
    let tc_err = |source| NetworkError::Tc {
        netns: netns.to_path_buf(),
        interface: ep.interface.name.clone(),
        tap: ep.tap_name.clone(),
        source: Box::new(source),
    };
    tc::redirect(&ep.interface.name, &ep.tap_name).map_err(tc_err)?;
    ep.from_interface = true;
    tc::redirect(&ep.tap_name, &ep.interface.name).map_err(tc_err)?;
    ep.from_tap = true;
    Ok(())
}

impl PodNetwork {
    /// The namespace this network lives in.
    pub fn netns(&self) -> &Path {
        &self.netns
    }

    /// The CNI interfaces and their taps.
    pub fn endpoints(&self) -> &[Endpoint] {
        &self.endpoints
    }

    /// The `--net` devices of the VMM: tap descriptors (valid while this
    /// value lives; the VMM spawn lets the child inherit them), the MACs
    /// and MTUs of the CNI interfaces.
    pub fn vm_nets(&self) -> Vec<VmNet> {
        self.endpoints
            .iter()
            .filter_map(|ep| {
                Some(VmNet {
                    fd: Some(ep.tap.as_ref()?.as_raw_fd()),
                    mac: ep.interface.mac.clone(),
                    // An MTU no virtio-net device can carry is left to
                    // the guest's default rather than refused by the VMM.
                    mtu: u16::try_from(ep.interface.mtu).ok(),
                })
            })
            .collect()
    }

    /// What the agent configures: the interfaces (by MAC), routes and
    /// neighbours; the caller adds hostname, resolv.conf and hosts.
    pub fn guest_network(&self) -> GuestNetwork {
        GuestNetwork {
            interfaces: self
                .endpoints
                .iter()
                .map(|ep| GuestInterface {
                    mac: ep.interface.mac.clone(),
                    name: ep.interface.name.clone(),
                    mtu: ep.interface.mtu,
                    addresses: ep.interface.addresses.clone(),
                    current_mac: None,
                })
                .collect(),
            routes: self.routes.clone(),
            neighbours: self.neighbours.clone(),
            ..GuestNetwork::default()
        }
    }

    /// Removes the tc rules and closes the taps (each goes away once the
    /// VMM's copy is closed too). A namespace that is gone already counts
    /// as cleaned up.
    pub fn teardown(mut self) -> Result<(), NetworkError> {
        self.teardown_inner()
    }

    fn teardown_inner(&mut self) -> Result<(), NetworkError> {
        if self.torn_down {
            return Ok(());
        }
        self.torn_down = true;
        let mut devices = Vec::new();
        for ep in &self.endpoints {
            if ep.from_interface {
                devices.push(ep.interface.name.clone());
            }
            if ep.from_tap {
                devices.push(ep.tap_name.clone());
            }
        }
        let macvtaps: Vec<u32> = self.endpoints.iter().filter_map(|ep| ep.macvtap).collect();
        let result = netns::run_in(&self.netns, || {
            let mut errors: Vec<String> = devices
                .iter()
                .filter_map(|dev| tc::remove_ingress(dev).err().map(|e| e.to_string()))
                .collect();
            errors.extend(macvtaps.iter().filter_map(|i| macvtap::delete(*i).err()));
            errors
        });
        // Closing our descriptors deletes taps the VMM no longer holds.
        for ep in &mut self.endpoints {
            ep.tap = None;
        }
        let errors = match result {
            Ok(errors) => errors,
            Err(e) if e.is_gone() => Vec::new(),
            Err(e) => vec![e.to_string()],
        };
        if errors.is_empty() {
            tracing::debug!(netns = %self.netns.display(), "pod network torn down");
            Ok(())
        } else {
            Err(NetworkError::Teardown {
                netns: self.netns.clone(),
                errors,
            })
        }
    }
}

impl Drop for PodNetwork {
    fn drop(&mut self) {
        if let Err(e) = self.teardown_inner() {
            tracing::warn!("{e}");
        }
    }
}

/// In the namespace's thread: the interfaces worth giving to the guest
/// (not loopback, not one of our taps, with a MAC and a global address),
/// the main-table routes through them and their permanent neighbours.
fn read_namespace() -> Result<NamespaceInfo, NetlinkError> {
    let mut nl = Handle::new()?;
    let links = nl.links()?;
    let addresses = nl.addresses()?;
    let routes = nl.routes()?;
    let neighbours = nl.neighbours()?;
    Ok(select(&links, &addresses, &routes, &neighbours))
}

fn is_link_local(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80,
    }
}

fn is_multicast(ip: &IpAddr) -> bool {
    ip.is_multicast()
}

/// The pure part of [`read_namespace`].
pub fn select(
    links: &[Link],
    addresses: &[Address],
    routes: &[Route],
    neighbours: &[nacre_netlink::Neighbour],
) -> NamespaceInfo {
    let mut interfaces = Vec::new();
    for link in links {
        let Some(mac) = link.mac else { continue };
        if link.loopback || link.kind.as_deref() == Some("tun") || link.name.starts_with(TAP_PREFIX)
        {
            continue;
        }
        let addrs: Vec<IpNet> = addresses
            .iter()
            .filter(|a| a.index == link.index && a.scope == 0 && !is_link_local(&a.ip))
            .map(|a| IpNet {
                ip: a.ip,
                prefix_len: a.prefix_len,
            })
            .collect();
        if addrs.is_empty() {
            continue;
        }
        interfaces.push(PodInterface {
            name: link.name.clone(),
            index: link.index,
            mac: mac.to_string(),
            mtu: link.mtu,
            addresses: addrs,
        });
    }
    let mac_of = |index: u32| {
        interfaces
            .iter()
            .find(|i| i.index == index)
            .map(|i| i.mac.clone())
    };
    let routes = routes
        .iter()
        .filter(|r| !r.kernel)
        .filter(|r| !r.dst.is_some_and(|d| is_link_local(&d) || is_multicast(&d)))
        .filter_map(|r| {
            // Only routes through a selected interface (or none named).
            let interface_mac = match r.oif {
                Some(oif) => Some(mac_of(oif)?),
                None => None,
            };
            Some(GuestRoute {
                destination: r.dst.map(|ip| IpNet {
                    ip,
                    prefix_len: r.dst_len,
                }),
                gateway: r.gateway,
                interface_mac,
                source: r.source,
                metric: r.metric,
                link_scope: r.scope == RouteScope::Link,
                ipv6: r.ipv6,
            })
        })
        .collect();
    let neighbours = neighbours
        .iter()
        .filter(|n| n.permanent)
        .filter_map(|n| {
            Some(GuestNeighbour {
                ip: n.ip,
                mac: n.mac.to_string(),
                interface_mac: mac_of(n.index)?,
            })
        })
        .collect();
    NamespaceInfo {
        interfaces,
        routes,
        neighbours,
    }
}

#[cfg(test)]
mod tests;
