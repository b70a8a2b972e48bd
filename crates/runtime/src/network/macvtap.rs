//! The macvtap model: a passthru macvtap on the CNI interface, whose
//! character device the VMM reads and writes.
//!
//! Passthru mode gives the macvtap the interface's MAC address and every
//! frame the interface receives, so the guest NIC (which takes the same
//! MAC) is the pod's endpoint without tc rules.
//!
//! The device is opened by its device number as the pod's namespace sees
//! it, never by the name `/dev/tap<ifindex>`: interface indexes are per
//! network namespace but `/dev` is host-wide, so that name can belong to
//! another namespace's macvtap with the same index (devtmpfs keeps the
//! first node), and opening it would hand this pod another pod's traffic
//! (security review M4). [`open_device`] reads the number from a sysfs
//! mounted inside the pod's namespace, opens a private node made for it
//! and checks the descriptor's `st_rdev`. The index is still chosen at
//! random from a range CNI and the kernel do not use (and again if taken),
//! which keeps `/dev/tap<index>` collisions rare for tools that look there.

use std::collections::hash_map::RandomState;
use std::ffi::CString;
use std::fmt;
use std::fs::{DirBuilder, File, OpenOptions};
use std::hash::{BuildHasher, Hasher};
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nacre_netlink::Handle;

use super::netns::{self, NetnsError};
use super::{Endpoint, NetworkError};

/// Interface indexes tried for macvtaps: [BASE, BASE + SPAN).
const INDEX_BASE: u32 = 1 << 20;
const INDEX_SPAN: u32 = 1 << 20;
/// Attempts before giving up on finding a free index.
const ATTEMPTS: usize = 16;

/// Where the device thread mounts its scratch tmpfs, in its private mount
/// namespace only (an existing directory on every Linux host).
const SCRATCH: &str = "/sys";

fn random_index() -> u32 {
    let mut h = RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    INDEX_BASE + (h.finish() % u64::from(INDEX_SPAN)) as u32
}

/// A character device number, shown as sysfs writes it (`major:minor`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DevNum {
    pub major: u32,
    pub minor: u32,
}

impl DevNum {
    /// Parses sysfs's `major:minor` (trailing newline allowed).
    pub fn parse(text: &str) -> Option<Self> {
        let (major, minor) = text.trim().split_once(':')?;
        Some(Self {
            major: major.parse().ok()?,
            minor: minor.parse().ok()?,
        })
    }

    pub fn from_dev_t(dev: libc::dev_t) -> Self {
        Self {
            major: libc::major(dev),
            minor: libc::minor(dev),
        }
    }

    pub fn dev_t(self) -> libc::dev_t {
        libc::makedev(self.major, self.minor)
    }
}

impl fmt::Display for DevNum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.major, self.minor)
    }
}

/// Why a macvtap's device could not be opened safely.
#[derive(Debug, thiserror::Error)]
pub enum MacvtapDeviceError {
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error("{step}: {source}")]
    Sys {
        step: String,
        #[source]
        source: io::Error,
    },
    #[error("{path} reads {text:?}, not a device number (major:minor)")]
    BadDevNum { path: PathBuf, text: String },
    #[error("{path} reads {found:?}: the interface is not index {expected}")]
    WrongIndex {
        path: PathBuf,
        found: String,
        expected: u32,
    },
    #[error("{path} changed from {before} to {after} while the device was opened")]
    Changed {
        path: PathBuf,
        before: DevNum,
        after: String,
    },
    #[error("the opened descriptor is {found}, not the macvtap's character device {expected}")]
    WrongDevice { found: String, expected: DevNum },
}

fn sys(step: impl Into<String>) -> impl FnOnce(io::Error) -> MacvtapDeviceError {
    let step = step.into();
    move |source| MacvtapDeviceError::Sys { step, source }
}

/// In the namespace's thread: creates the macvtap `ep.tap_name` on the
/// interface, sets it up and opens its device for the VMM. `fixed` is an
/// index to use instead of random ones (tests: a collision on purpose).
pub(super) fn connect(
    netns: &Path,
    ep: &mut Endpoint,
    fixed: Option<u32>,
) -> Result<(), NetworkError> {
    let err = |source| NetworkError::Macvtap {
        netns: netns.to_path_buf(),
        interface: ep.interface.name.clone(),
        source,
    };
    let mut nl = Handle::new().map_err(err)?;
    let index = match fixed {
        Some(index) => create(&mut nl, ep, index).map_err(err)?,
        None => {
            let mut attempt = 0;
            loop {
                match create(&mut nl, ep, random_index()) {
                    Ok(index) => break index,
                    Err(e) if e.errno() == Some(libc::EEXIST) && attempt + 1 < ATTEMPTS => {
                        attempt += 1;
                    }
                    Err(e) => return Err(err(e)),
                }
            }
        }
    };
    ep.macvtap = Some(index);
    nl.set_link(index, None, true).map_err(err)?;
    let (fd, dev) =
        open_device(netns, &ep.tap_name, index).map_err(|source| NetworkError::MacvtapDevice {
            netns: netns.to_path_buf(),
            name: ep.tap_name.clone(),
            index,
            source: Box::new(source),
        })?;
    tracing::debug!(netns = %netns.display(), macvtap = %ep.tap_name, index, %dev, "macvtap device opened");
    ep.tap = Some(fd);
    Ok(())
}

/// Creates the macvtap `ep.tap_name` with interface index `index`.
fn create(nl: &mut Handle, ep: &Endpoint, index: u32) -> Result<u32, nacre_netlink::NetlinkError> {
    nl.add_macvtap(&ep.tap_name, ep.interface.index, index, ep.interface.mtu)?;
    Ok(index)
}

/// Opens the character device of macvtap `name` (interface `index`) in the
/// network namespace at `netns`, checked to be that macvtap's: the device
/// number comes from the namespace's own sysfs, the node is private, and
/// the descriptor's `st_rdev` must match. A macvtap queue opens with
/// `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`, as `nacre-vmm --net fd=` expects.
pub(super) fn open_device(
    netns: &Path,
    name: &str,
    index: u32,
) -> Result<(OwnedFd, DevNum), MacvtapDeviceError> {
    let name = name.to_string();
    let (fd, dev) = netns::run_in(netns, move || open_in_private_mounts(&name, index))??;
    check_device(fd, dev)
}

/// The `fstat` check: `fd` must be the character device `expected`.
fn check_device(fd: OwnedFd, expected: DevNum) -> Result<(OwnedFd, DevNum), MacvtapDeviceError> {
    let file = File::from(fd);
    let meta = file
        .metadata()
        .map_err(sys(format!("fstat of the device {expected}")))?;
    if !meta.file_type().is_char_device() {
        return Err(MacvtapDeviceError::WrongDevice {
            found: format!("not a character device ({:?})", meta.file_type()),
            expected,
        });
    }
    let found = DevNum::from_dev_t(meta.rdev());
    if found != expected {
        return Err(MacvtapDeviceError::WrongDevice {
            found: found.to_string(),
            expected,
        });
    }
    Ok((OwnedFd::from(file), expected))
}

/// On a dedicated thread that has entered the pod's network namespace and
/// ends when this returns ([`netns::run_in`]): gives the thread a private
/// mount namespace with a scratch tmpfs holding a fresh sysfs (which shows
/// the mounting task's network namespace, so the pod's interfaces) and a
/// 0700 directory for the device node, reads the macvtap's device number,
/// makes a node for it and opens it.
///
/// Why a thread rather than a forked child: the runtime is multithreaded,
/// and a forked child may only make async-signal-safe calls, not the
/// allocating file reads done here. unshare(CLONE_NEWNS) is sound on a
/// thread when it comes with CLONE_FS (the kernel adds it anyway): the
/// thread gets its own root, cwd and umask and its own mount namespace,
/// and no other thread of the runtime is affected. The thread is never
/// reused; when it exits its mount namespace is freed and the kernel
/// unmounts everything in it, so nothing mounted or made here outlives
/// it on any path (an early error return included) and nothing of it is
/// ever visible to the host. The descriptor is process-wide and is
/// returned to the caller.
fn open_in_private_mounts(name: &str, index: u32) -> Result<(OwnedFd, DevNum), MacvtapDeviceError> {
    // SAFETY: unshare takes flags only; CLONE_FS | CLONE_NEWNS change only
    // this thread's filesystem context and mount namespace, and this
    // thread ends when the closure returns.
    if unsafe { libc::unshare(libc::CLONE_FS | libc::CLONE_NEWNS) } != 0 {
        return Err(sys("unshare(CLONE_NEWNS)")(io::Error::last_os_error()));
    }
    // No mount below may propagate to the host's mount namespace.
    mount(None, "/", None, libc::MS_SLAVE | libc::MS_REC, None)?;
    let scratch = Path::new(SCRATCH);
    mount(
        Some("nacre-macvtap"),
        SCRATCH,
        Some("tmpfs"),
        libc::MS_NOSUID | libc::MS_NOEXEC,
        Some("mode=0700,size=64k"),
    )?;
    let sysfs = scratch.join("sysfs");
    mkdir_private(&sysfs)?;
    mount(
        Some("sysfs"),
        path_str(&sysfs)?,
        Some("sysfs"),
        libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
        None,
    )?;
    let class = sysfs.join("class/net").join(name);
    let dev_file = class.join(format!("macvtap/tap{index}/dev"));
    let index_file = class.join("ifindex");
    let dev = read_dev(&dev_file, &index_file, index)?;

    let dir = scratch.join("node");
    mkdir_private(&dir)?;
    let node = dir.join(format!("tap{index}"));
    let c_node = CString::new(node.as_os_str().as_bytes())
        .map_err(|e| sys(format!("{}", node.display()))(io::Error::other(e)))?;
    // SAFETY: c_node is a NUL-terminated path that outlives the call;
    // mknod makes a node in this thread's private tmpfs.
    if unsafe { libc::mknod(c_node.as_ptr(), libc::S_IFCHR | 0o600, dev.dev_t()) } != 0 {
        return Err(sys(format!("mknod {} ({dev})", node.display()))(
            io::Error::last_os_error(),
        ));
    }
    let opened = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(&node)
        .map_err(sys(format!("opening {} ({dev})", node.display())));
    // The node and its directory go now; the tmpfs with the namespace.
    if let Err(e) = std::fs::remove_file(&node).and_then(|()| std::fs::remove_dir(&dir)) {
        tracing::warn!(node = %node.display(), "removing the private macvtap node: {e}");
    }
    let fd = OwnedFd::from(opened?);
    // The macvtap must still be there with the same number: had it gone
    // between the read and the open, the number could have been reused.
    let again = read_dev(&dev_file, &index_file, index)?;
    if again != dev {
        return Err(MacvtapDeviceError::Changed {
            path: dev_file,
            before: dev,
            after: again.to_string(),
        });
    }
    Ok((fd, dev))
}

/// Reads `dev_file` after checking that `index_file` holds `index`.
fn read_dev(dev_file: &Path, index_file: &Path, index: u32) -> Result<DevNum, MacvtapDeviceError> {
    let found = std::fs::read_to_string(index_file)
        .map_err(sys(format!("reading {}", index_file.display())))?;
    if found.trim().parse::<u32>().ok() != Some(index) {
        return Err(MacvtapDeviceError::WrongIndex {
            path: index_file.to_path_buf(),
            found: found.trim().to_string(),
            expected: index,
        });
    }
    let text = std::fs::read_to_string(dev_file)
        .map_err(sys(format!("reading {}", dev_file.display())))?;
    DevNum::parse(&text).ok_or_else(|| MacvtapDeviceError::BadDevNum {
        path: dev_file.to_path_buf(),
        text: text.trim().to_string(),
    })
}

fn mkdir_private(path: &Path) -> Result<(), MacvtapDeviceError> {
    DirBuilder::new()
        .mode(0o700)
        .create(path)
        .map_err(sys(format!("mkdir {}", path.display())))
}

fn path_str(path: &Path) -> Result<&str, MacvtapDeviceError> {
    path.to_str()
        .ok_or_else(|| sys(format!("{}", path.display()))(io::Error::other("path is not UTF-8")))
}

/// mount(2) with optional source, type and data.
fn mount(
    source: Option<&str>,
    target: &str,
    fstype: Option<&str>,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> Result<(), MacvtapDeviceError> {
    let what = format!("mounting {} on {target}", fstype.unwrap_or("(propagation)"));
    let cstr = |s: &str| CString::new(s).map_err(|e| sys(what.clone())(io::Error::other(e)));
    let source = source.map(cstr).transpose()?;
    let c_target = cstr(target)?;
    let fstype = fstype.map(cstr).transpose()?;
    let data = data.map(cstr).transpose()?;
    let ptr = |s: &Option<CString>| s.as_ref().map_or(std::ptr::null(), |s| s.as_ptr());
    // SAFETY: every pointer is null or a NUL-terminated string that
    // outlives the call; the caller has a private mount namespace (or is
    // making its mounts private), so only this thread's mounts change.
    let rc = unsafe {
        libc::mount(
            ptr(&source),
            c_target.as_ptr(),
            ptr(&fstype),
            flags,
            ptr(&data).cast(),
        )
    };
    if rc != 0 {
        return Err(sys(what)(io::Error::last_os_error()));
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dev_num_parses_sysfs_text() {
        assert_eq!(
            DevNum::parse("236:3\n"),
            Some(DevNum {
                major: 236,
                minor: 3
            })
        );
        assert_eq!(DevNum::parse("236"), None);
        assert_eq!(DevNum::parse("a:1"), None);
        let d = DevNum {
            major: 511,
            minor: 1_048_577,
        };
        assert_eq!(DevNum::from_dev_t(d.dev_t()), d);
        assert_eq!(d.to_string(), "511:1048577");
    }

    /// Root: the failure paths name what failed and leave no mount in
    /// the caller's namespace (reads only, in the test's own namespace).
    #[test]
    fn missing_or_wrong_interface_is_named() {
        if !crate::testing::root_prereqs("missing_or_wrong_interface_is_named") {
            return;
        }
        let here = Path::new("/proc/self/ns/net");
        let err = open_device(here, "nacre-none0", 1_048_600).unwrap_err();
        assert!(
            err.to_string()
                .contains("reading /sys/sysfs/class/net/nacre-none0/ifindex"),
            "{err}"
        );
        let err = open_device(here, "lo", 1_048_600).unwrap_err();
        assert!(
            matches!(
                err,
                MacvtapDeviceError::WrongIndex {
                    expected: 1_048_600,
                    ..
                }
            ),
            "{err}"
        );
        let err = open_device(Path::new("/nonexistent/netns"), "lo", 1).unwrap_err();
        assert!(matches!(err, MacvtapDeviceError::Netns(_)), "{err}");
        let after = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        // (Other tests may mount in parallel: look for ours only.)
        assert!(
            !after.contains("nacre-macvtap") && !after.contains(" /sys/sysfs "),
            "{after}"
        );
    }

    #[test]
    fn a_file_is_not_the_device() {
        let file = File::open("/proc/self/status").unwrap();
        let err = check_device(OwnedFd::from(file), DevNum { major: 1, minor: 3 }).unwrap_err();
        assert!(err.to_string().contains("not a character device"), "{err}");
        let null = File::open("/dev/null").unwrap();
        let err = check_device(OwnedFd::from(null), DevNum { major: 1, minor: 5 }).unwrap_err();
        assert!(
            err.to_string()
                .contains("is 1:3, not the macvtap's character device 1:5"),
            "{err}"
        );
        let null = File::open("/dev/null").unwrap();
        check_device(OwnedFd::from(null), DevNum { major: 1, minor: 3 }).unwrap();
    }
}
