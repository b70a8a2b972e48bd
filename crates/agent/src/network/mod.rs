//! The guest's network: applies what the host read in the pod's network
//! namespace (`Network.ConfigureNetwork`) with netlink (nacre-netlink):
//! each interface found by MAC gets its MTU, addresses and link up; then
//! routes (on-link ones first, so gateways are reachable), permanent
//! neighbours, `/etc/resolv.conf`, `/etc/hosts` and the hostname. An
//! interface whose NIC still has another MAC (`current_mac`: a VM restored
//! from a template) is given its MAC first.
//!
//! The request is checked whole before anything changes ([`plan`]); then
//! [`apply`] makes the changes, each replacing what exists, so a request
//! may be sent again.

mod plan;
mod service;

pub use plan::{plan, NetworkPlan};
pub use service::NetworkService;

use std::io::Write;
use std::path::{Path, PathBuf};

use nacre_netlink::{Handle, NetlinkError};

/// Why the network could not be configured.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    /// The request is malformed.
    #[error("invalid network configuration: {0}")]
    Invalid(String),
    /// No guest interface has a requested MAC.
    #[error("no guest interface has MAC {0}")]
    NoInterface(String),
    /// The kernel refused a change.
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    /// A file could not be written.
    #[error("writing {path}: {source}")]
    File {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// sethostname failed.
    #[error("setting the hostname: {0}")]
    Hostname(#[source] std::io::Error),
}

/// Applies `plan`, writing the files under `etc` (`/etc` in the guest).
/// Returns the guest interface names, in request order.
pub fn apply(plan: &NetworkPlan, etc: &Path) -> Result<Vec<String>, NetworkError> {
    let mut nl = Handle::new()?;
    let mut links = nl.links()?;
    if let Some(lo) = links.iter().find(|l| l.loopback && !l.up) {
        nl.set_link(lo.index, None, true)?;
    }
    // A NIC restored from a template still has the template's MAC.
    let mut renamed = false;
    for iface in &plan.interfaces {
        let Some(current) = iface.current_mac else {
            continue;
        };
        if links.iter().any(|l| l.mac == Some(iface.mac)) {
            continue;
        }
        let link = links
            .iter()
            .find(|l| l.mac == Some(current))
            .ok_or_else(|| NetworkError::NoInterface(format!("{} (nor {current})", iface.mac)))?;
        nl.set_link_address(link.index, iface.mac)?;
        tracing::info!(name = %link.name, from = %current, to = %iface.mac, "interface MAC set");
        renamed = true;
    }
    if renamed {
        links = nl.links()?;
    }
    let mut names = Vec::new();
    for iface in &plan.interfaces {
        let link = links
            .iter()
            .find(|l| l.mac == Some(iface.mac))
            .ok_or_else(|| NetworkError::NoInterface(iface.mac.to_string()))?;
        nl.set_link(link.index, iface.mtu, true)?;
        for &(ip, prefix_len) in &iface.addresses {
            tolerate_no_ipv6(ip.is_ipv6(), nl.add_address(link.index, ip, prefix_len))?;
        }
        tracing::info!(name = %link.name, mac = %iface.mac, addresses = ?iface.addresses, "interface configured");
        names.push(link.name.clone());
    }
    let oif = |mac: Option<nacre_netlink::MacAddr>| -> Result<Option<u32>, NetworkError> {
        match mac {
            None => Ok(None),
            Some(mac) => links
                .iter()
                .find(|l| l.mac == Some(mac))
                .map(|l| Some(l.index))
                .ok_or_else(|| NetworkError::NoInterface(mac.to_string())),
        }
    };
    for (route, mac) in &plan.routes {
        let mut route = route.clone();
        route.oif = oif(*mac)?;
        tolerate_no_ipv6(route.ipv6, nl.add_route(&route))?;
        tracing::info!(route = %nacre_netlink::describe_route(&route), "route added");
    }
    for (ip, lladdr, mac) in &plan.neighbours {
        let index = oif(Some(*mac))?.unwrap_or(0);
        tolerate_no_ipv6(ip.is_ipv6(), nl.add_neighbour(index, *ip, *lladdr))?;
    }
    if let Some(text) = &plan.resolv_conf {
        write_file(etc, "resolv.conf", text)?;
    }
    if let Some(text) = &plan.hosts {
        write_file(etc, "hosts", text)?;
    }
    if let Some(name) = &plan.hostname {
        crate::sys::set_hostname(name).map_err(NetworkError::Hostname)?;
        write_file(etc, "hostname", &format!("{name}\n"))?;
    }
    Ok(names)
}

/// A guest kernel booted without IPv6 (`ipv6.disable=1`) answers IPv6
/// changes with EAFNOSUPPORT: the pod then runs on IPv4 alone, with a
/// warning, rather than not at all.
fn tolerate_no_ipv6(ipv6: bool, result: Result<(), NetlinkError>) -> Result<(), NetworkError> {
    match result {
        Err(e) if ipv6 && e.errno() == Some(libc::EAFNOSUPPORT) => {
            tracing::warn!("IPv6 is off in the guest kernel, skipped: {e}");
            Ok(())
        }
        other => other.map_err(NetworkError::from),
    }
}

/// Replaces `etc/name` atomically (a temporary file, then rename).
fn write_file(etc: &Path, name: &str, text: &str) -> Result<(), NetworkError> {
    let path = etc.join(name);
    let err = |source| NetworkError::File {
        path: path.clone(),
        source,
    };
    std::fs::create_dir_all(etc).map_err(err)?;
    let tmp = etc.join(format!(".{name}.nacre-tmp"));
    let mut f = std::fs::File::create(&tmp).map_err(err)?;
    f.write_all(text.as_bytes()).map_err(err)?;
    drop(f);
    std::fs::rename(&tmp, &path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        err(e)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_ipv6_is_tolerated_for_ipv6_only() {
        let no_v6 = || {
            Err(NetlinkError::Kernel {
                what: "adding address fd00::5/64".into(),
                source: std::io::Error::from_raw_os_error(libc::EAFNOSUPPORT),
            })
        };
        assert!(tolerate_no_ipv6(true, no_v6()).is_ok());
        assert!(tolerate_no_ipv6(false, no_v6()).is_err());
        let refused = Err(NetlinkError::Kernel {
            what: "adding address fd00::5/64".into(),
            source: std::io::Error::from_raw_os_error(libc::EINVAL),
        });
        assert!(tolerate_no_ipv6(true, refused).is_err());
    }

    #[test]
    fn files_are_replaced() {
        let dir = std::env::temp_dir().join(format!("nacre-agent-net-{}", std::process::id()));
        let etc = dir.join("etc");
        write_file(&etc, "resolv.conf", "nameserver 10.0.0.2\n").unwrap();
        write_file(&etc, "resolv.conf", "nameserver 10.0.0.3\n").unwrap();
        assert_eq!(
            std::fs::read_to_string(etc.join("resolv.conf")).unwrap(),
            "nameserver 10.0.0.3\n"
        );
        assert_eq!(std::fs::read_dir(&etc).unwrap().count(), 1);
        let _ = std::fs::remove_dir_all(dir);
    }
}
