//! The tap behind a virtio-net device: opened by name, or adopted from an
//! inherited descriptor and checked, then set up for the device (12-byte
//! vnet header, no offloads, non-blocking).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

use super::frame::VNET_HDR_LEN;

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
const TUNGETIFF: libc::c_ulong = 0x8004_54d2;
const TUNSETVNETHDRSZ: libc::c_ulong = 0x4004_54d8;
const IFF_TAP: u16 = 0x0002;
const IFF_NO_PI: u16 = 0x1000;
const IFF_VNET_HDR: u16 = 0x4000;
/// `struct ifreq`: 16 bytes of name, then a 24-byte union (flags first).
const IFREQ_LEN: usize = 40;

/// Why a tap could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    #[error(
        "tap descriptor {0} is not open in the VMM (was it inherited? close-on-exec must be off)"
    )]
    NotOpen(RawFd),
    #[error("descriptor {fd} is not a tap device: {source}")]
    NotATap {
        fd: RawFd,
        #[source]
        source: io::Error,
    },
    #[error("tap {name:?} (descriptor {fd}) must be a tap opened with IFF_TAP|IFF_NO_PI|IFF_VNET_HDR (flags {flags:#x})")]
    WrongFlags { fd: RawFd, name: String, flags: u16 },
    #[error("opening tap {name:?}: {source}")]
    Open {
        name: String,
        #[source]
        source: io::Error,
    },
    #[error("tap {name:?}: {what}: {source}")]
    Setup {
        name: String,
        what: &'static str,
        #[source]
        source: io::Error,
    },
}

/// An open tap device, set up for virtio-net frames.
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
}

impl Tap {
    /// Opens (creating it if needed) the tap interface `name` in this
    /// process's network namespace.
    pub fn open(name: &str) -> Result<Self, TapError> {
        let open_err = |source| TapError::Open {
            name: name.to_string(),
            source,
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .map_err(open_err)?;
        let mut ifr = ifreq(name);
        ifr[16..18].copy_from_slice(&(IFF_TAP | IFF_NO_PI | IFF_VNET_HDR).to_ne_bytes());
        // SAFETY: TUNSETIFF reads and writes a `struct ifreq`, which the
        // 40-byte buffer holds; the descriptor is the open tun device.
        if unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF as _, ifr.as_mut_ptr()) } != 0 {
            return Err(open_err(io::Error::last_os_error()));
        }
        let tap = Self {
            file,
            name: ifr_name(&ifr),
        };
        tap.configure()?;
        Ok(tap)
    }

    /// Adopts the inherited descriptor `fd`: checks that it is open and a
    /// tap with a vnet header, and takes ownership of it (it is closed
    /// with the device and not passed on to children).
    pub fn from_inherited_fd(fd: RawFd) -> Result<Self, TapError> {
        // SAFETY: F_GETFD only queries the descriptor table.
        if fd < 0 || unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
            return Err(TapError::NotOpen(fd));
        }
        // SAFETY: the descriptor is open (checked above) and was inherited
        // for this device: nothing else in the VMM owns or closes it.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: F_SETFD only changes the descriptor's flags.
        unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
        let mut ifr = [0u8; IFREQ_LEN];
        // SAFETY: TUNGETIFF writes a `struct ifreq` into the 40-byte buffer.
        if unsafe { libc::ioctl(fd, TUNGETIFF as _, ifr.as_mut_ptr()) } != 0 {
            return Err(TapError::NotATap {
                fd,
                source: io::Error::last_os_error(),
            });
        }
        let name = ifr_name(&ifr);
        let flags = u16::from_ne_bytes([ifr[16], ifr[17]]);
        let wanted = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR;
        if flags & wanted != wanted {
            return Err(TapError::WrongFlags { fd, name, flags });
        }
        let tap = Self {
            file: File::from(owned),
            name,
        };
        tap.configure()?;
        Ok(tap)
    }

    /// The interface name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The tap as a file to read and write frames.
    pub fn into_file(self) -> File {
        self.file
    }

    fn configure(&self) -> Result<(), TapError> {
        let fd = self.file.as_raw_fd();
        let setup = |what, ret: libc::c_int| {
            if ret < 0 {
                Err(TapError::Setup {
                    name: self.name.clone(),
                    what,
                    source: io::Error::last_os_error(),
                })
            } else {
                Ok(())
            }
        };
        let hdr_len = VNET_HDR_LEN as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads an int from the pointer given.
        setup("TUNSETVNETHDRSZ", unsafe {
            libc::ioctl(fd, TUNSETVNETHDRSZ as _, &hdr_len)
        })?;
        // SAFETY: TUNSETOFFLOAD takes its argument by value: no offloads.
        setup("TUNSETOFFLOAD", unsafe {
            libc::ioctl(fd, TUNSETOFFLOAD as _, 0 as libc::c_ulong)
        })?;
        // SAFETY: F_GETFL/F_SETFL only read and change the status flags.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
        setup("F_GETFL", flags)?;
        // SAFETY: as above.
        setup("F_SETFL O_NONBLOCK", unsafe {
            libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK)
        })
    }
}

fn ifreq(name: &str) -> [u8; IFREQ_LEN] {
    let mut ifr = [0u8; IFREQ_LEN];
    let n = name.len().min(15);
    ifr[..n].copy_from_slice(&name.as_bytes()[..n]);
    ifr
}

fn ifr_name(ifr: &[u8; IFREQ_LEN]) -> String {
    let end = ifr[..16].iter().position(|&b| b == 0).unwrap_or(16);
    String::from_utf8_lossy(&ifr[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closed_descriptor_is_not_open() {
        assert!(matches!(
            Tap::from_inherited_fd(987_654),
            Err(TapError::NotOpen(987_654))
        ));
    }

    #[test]
    fn a_file_is_not_a_tap() {
        let file = File::open("/proc/self/status").unwrap();
        let fd = std::os::fd::IntoRawFd::into_raw_fd(file);
        let err = Tap::from_inherited_fd(fd).unwrap_err();
        assert!(matches!(err, TapError::NotATap { .. }), "{err}");
        assert!(err.to_string().contains("is not a tap device"), "{err}");
    }
}
