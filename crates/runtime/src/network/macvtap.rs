//! The macvtap model: a passthru macvtap on the CNI interface, whose
//! character device `/dev/tap<ifindex>` the VMM reads and writes.
//!
//! Passthru mode gives the macvtap the interface's MAC address and every
//! frame the interface receives, so the guest NIC (which takes the same
//! MAC) is the pod's endpoint without tc rules. The device node's name
//! comes from the interface index, which is per network namespace while
//! `/dev` is shared: the index is chosen at random from a range CNI and
//! the kernel do not use, and chosen again if taken.

use std::collections::hash_map::RandomState;
use std::fs::OpenOptions;
use std::hash::{BuildHasher, Hasher};
use std::os::fd::OwnedFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use nacre_netlink::Handle;

use super::{Endpoint, NetworkError};

/// Interface indexes tried for macvtaps: [BASE, BASE + SPAN).
const INDEX_BASE: u32 = 1 << 20;
const INDEX_SPAN: u32 = 1 << 20;
/// Attempts before giving up on finding a free index.
const ATTEMPTS: usize = 16;

fn random_index() -> u32 {
    let mut h = RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    INDEX_BASE + (h.finish() % u64::from(INDEX_SPAN)) as u32
}

/// In the namespace's thread: creates the macvtap `ep.tap_name` on the
/// interface, sets it up and opens its device for the VMM.
pub(super) fn connect(netns: &Path, ep: &mut Endpoint) -> Result<(), NetworkError> {
    let err = |source| NetworkError::Macvtap {
        netns: netns.to_path_buf(),
        interface: ep.interface.name.clone(),
        source,
    };
    let mut nl = Handle::new().map_err(err)?;
    let mut attempt = 0;
    let index = loop {
        let index = random_index();
        match nl.add_macvtap(&ep.tap_name, ep.interface.index, index, ep.interface.mtu) {
            Ok(()) => break index,
            Err(e) if e.errno() == Some(libc::EEXIST) && attempt + 1 < ATTEMPTS => attempt += 1,
            Err(e) => return Err(err(e)),
        }
    };
    ep.macvtap = Some(index);
    nl.set_link(index, None, true).map_err(err)?;
    ep.tap = Some(open_device(index).map_err(|source| NetworkError::Tap {
        netns: netns.to_path_buf(),
        name: ep.tap_name.clone(),
        source,
    })?);
    Ok(())
}

/// Opens `/dev/tap<index>` (the kernel's devtmpfs made it with the link).
/// A macvtap queue opens with `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`, as
/// `nacre-vmm --net fd=` expects.
fn open_device(index: u32) -> std::io::Result<OwnedFd> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(format!("/dev/tap{index}"))?;
    Ok(OwnedFd::from(file))
}

/// In the namespace's thread: deletes macvtap `index`; one already gone
/// is no error.
pub(super) fn delete(index: u32) -> Result<(), String> {
    let gone = |e: &nacre_netlink::NetlinkError| e.errno() == Some(libc::ENODEV);
    match Handle::new().and_then(|mut nl| nl.delete_link(index)) {
        Ok(()) => Ok(()),
        Err(e) if gone(&e) => Ok(()),
        Err(e) => Err(e.to_string()),
    }
}
