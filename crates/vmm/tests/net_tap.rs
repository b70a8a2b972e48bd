//! Root tier: virtio-net's tap handling on real taps (no guest): a tap
//! opened by name, an inherited tap without a vnet header refused, and
//! the VMM with `--net tap=NAME` running a guest that resets at once,
//! leaving no tap behind.

mod common;

use std::fs::OpenOptions;
use std::os::fd::{AsRawFd, IntoRawFd};
use std::path::Path;
use std::process::Command;

use common::{require_kvm, reset_kernel, scratch, strict, vmm_bin};
use nacre_vmm::devices::virtio::net::{Tap, TapError};

fn require_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    assert!(!strict(), "strict mode and not root: taps cannot be made");
    eprintln!("skipping: not root");
    false
}

fn exists(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}

/// The kernel unregisters a closed tap's netdev asynchronously (after an
/// RCU grace period), so its sysfs entry can outlive the close briefly.
fn gone_within(name: &str, limit: std::time::Duration) -> bool {
    let start = std::time::Instant::now();
    while exists(name) {
        if start.elapsed() > limit {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    true
}

#[test]
fn taps_by_name_and_by_descriptor() {
    if !require_root() {
        return;
    }
    let name = format!("nt{}", std::process::id());
    let tap = Tap::open(&name).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(tap.name(), name);
    assert!(exists(&name));
    drop(tap);
    assert!(
        gone_within(&name, std::time::Duration::from_secs(5)),
        "a non-persistent tap goes with its descriptor"
    );

    // A tap without IFF_VNET_HDR is refused, by name.
    let tun = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .unwrap_or_else(|e| panic!("{e}"));
    let mut ifr = [0u8; 40];
    ifr[..name.len()].copy_from_slice(name.as_bytes());
    ifr[16..18].copy_from_slice(&0x1002u16.to_ne_bytes()); // IFF_TAP | IFF_NO_PI
                                                           // SAFETY: TUNSETIFF reads and writes the 40-byte ifreq buffer.
    let rc = unsafe { libc::ioctl(tun.as_raw_fd(), 0x4004_54ca, ifr.as_mut_ptr()) };
    assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
    let err = Tap::from_inherited_fd(tun.into_raw_fd()).err();
    let Some(err @ TapError::WrongFlags { .. }) = err else {
        panic!("expected WrongFlags, got {err:?}");
    };
    assert!(err.to_string().contains("IFF_VNET_HDR"), "{err}");
    assert!(err.to_string().contains(&name), "{err}");
}

#[test]
fn vmm_with_a_named_tap_leaves_none() {
    if !require_root() || !require_kvm() {
        return;
    }
    let dir = scratch("net-tap");
    let k = dir.join("vmlinux");
    std::fs::write(&k, reset_kernel()).unwrap_or_default();
    let k = k.to_str().unwrap_or("");
    let name = format!("nv{}", std::process::id());
    let out = Command::new(vmm_bin())
        .args(["--kernel", k, "--initrd", k, "--no-host-quirks"])
        .args([
            "--net",
            &format!("tap={name},mac=02:00:00:00:00:01,mtu=1400"),
        ])
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(err.contains("virtio-net device"), "{err}");
    assert!(
        gone_within(&name, std::time::Duration::from_secs(5)),
        "the tap outlived the VMM"
    );
    let _ = std::fs::remove_dir_all(dir);
}
