//! `--net`: what one virtio-net device is given: a tap (an inherited
//! descriptor or a tap name), the guest's MAC address and optionally the
//! MTU.

use std::fmt;
use std::str::FromStr;

/// The lowest MTU a virtio-net device may advertise (IPv4 minimum).
pub const MIN_MTU: u16 = 68;
/// The highest MTU this device accepts (a frame must fit 64 KiB).
pub const MAX_MTU: u16 = 65_500;

/// An Ethernet MAC address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// Whether the address is a unicast one (a guest NIC may not use a
    /// multicast/broadcast address).
    pub fn is_unicast(&self) -> bool {
        self.0[0] & 1 == 0
    }
}

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

impl FromStr for MacAddr {
    type Err = NetArgError;

    /// Parses `xx:xx:xx:xx:xx:xx` (hex, either case).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || NetArgError::BadMac(s.to_string());
        let mut mac = [0u8; 6];
        let mut parts = s.split(':');
        for byte in &mut mac {
            let part = parts.next().ok_or_else(bad)?;
            if part.len() != 2 {
                return Err(bad());
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| bad())?;
        }
        if parts.next().is_some() {
            return Err(bad());
        }
        let mac = MacAddr(mac);
        if !mac.is_unicast() {
            return Err(NetArgError::MulticastMac(s.to_string()));
        }
        Ok(mac)
    }
}

/// Where the device's frames go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetBackend {
    /// A tap descriptor inherited from the parent (opened with
    /// `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`). The device owns it from then on.
    Fd(i32),
    /// A tap interface opened (or created) by name in the VMM's own
    /// network namespace: needs CAP_NET_ADMIN.
    TapName(String),
    /// No host side: transmitted frames are dropped, none is ever
    /// received. For a template's VM, whose restored copies get their
    /// own taps (`--restore DIR --net fd=N,...`).
    Detached,
}

/// One `--net` device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetArg {
    pub backend: NetBackend,
    pub mac: MacAddr,
    /// Advertised to the guest with VIRTIO_NET_F_MTU when set.
    pub mtu: Option<u16>,
}

/// A malformed `--net` value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NetArgError {
    #[error("{0:?}: expected fd=N,mac=XX:XX:XX:XX:XX:XX[,mtu=M], tap=NAME,mac=...[,mtu=M] or detached,mac=...[,mtu=M]")]
    Syntax(String),
    #[error("unknown --net key {key:?} in {value:?} (known: fd, tap, mac, mtu)")]
    UnknownKey { key: String, value: String },
    #[error("--net key {key:?} given twice in {value:?}")]
    DuplicateKey { key: String, value: String },
    #[error("{0:?}: give exactly one of fd=N, tap=NAME and detached")]
    Backend(String),
    #[error("{0:?}: mac=XX:XX:XX:XX:XX:XX is required")]
    MissingMac(String),
    #[error(
        "bad MAC address {0:?}: expected six hex bytes separated by ':' (e.g. 02:00:00:00:00:01)"
    )]
    BadMac(String),
    #[error(
        "MAC address {0:?} is a multicast address; a NIC needs a unicast one (first byte even)"
    )]
    MulticastMac(String),
    #[error("bad tap descriptor {0:?}: expected a number of 3 or more (0-2 are stdio)")]
    BadFd(String),
    #[error("bad tap name {0:?}: 1-15 bytes, no '/', whitespace or NUL")]
    BadTapName(String),
    #[error("bad MTU {0:?}: expected {MIN_MTU}..={MAX_MTU}")]
    BadMtu(String),
    #[error("MAC address {0} is used by two --net devices")]
    DuplicateMac(MacAddr),
    #[error("tap descriptor {0} is given to two --net devices")]
    DuplicateFd(i32),
}

impl NetArg {
    /// Parses `fd=N,mac=M[,mtu=U]`, `tap=NAME,mac=M[,mtu=U]` or
    /// `detached,mac=M[,mtu=U]`.
    pub fn parse(value: &str) -> Result<Self, NetArgError> {
        let mut fd = None;
        let mut tap = None;
        let mut detached = false;
        let mut mac = None;
        let mut mtu = None;
        for item in value.split(',') {
            if item == "detached" {
                if std::mem::replace(&mut detached, true) {
                    return Err(NetArgError::DuplicateKey {
                        key: item.to_string(),
                        value: value.to_string(),
                    });
                }
                continue;
            }
            let Some((key, val)) = item.split_once('=') else {
                return Err(NetArgError::Syntax(value.to_string()));
            };
            let slot = match key {
                "fd" => &mut fd,
                "tap" => &mut tap,
                "mac" => &mut mac,
                "mtu" => &mut mtu,
                _ => {
                    return Err(NetArgError::UnknownKey {
                        key: key.to_string(),
                        value: value.to_string(),
                    })
                }
            };
            if slot.replace(val).is_some() {
                return Err(NetArgError::DuplicateKey {
                    key: key.to_string(),
                    value: value.to_string(),
                });
            }
        }
        let backend = match (fd, tap, detached) {
            (None, None, true) => NetBackend::Detached,
            (Some(fd), None, false) => NetBackend::Fd(parse_fd(fd)?),
            (None, Some(name), false) => {
                validate_tap_name(name)?;
                NetBackend::TapName(name.to_string())
            }
            _ => return Err(NetArgError::Backend(value.to_string())),
        };
        let mac = mac
            .ok_or_else(|| NetArgError::MissingMac(value.to_string()))?
            .parse()?;
        let mtu = mtu.map(parse_mtu).transpose()?;
        Ok(Self { backend, mac, mtu })
    }
}

impl FromStr for NetArg {
    type Err = NetArgError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

fn parse_fd(value: &str) -> Result<i32, NetArgError> {
    match value.parse::<i32>() {
        Ok(fd) if fd >= 3 => Ok(fd),
        _ => Err(NetArgError::BadFd(value.to_string())),
    }
}

fn parse_mtu(value: &str) -> Result<u16, NetArgError> {
    match value.parse::<u16>() {
        Ok(mtu) if (MIN_MTU..=MAX_MTU).contains(&mtu) => Ok(mtu),
        _ => Err(NetArgError::BadMtu(value.to_string())),
    }
}

/// Checks an interface name as the kernel would (IFNAMSIZ 16 with NUL).
pub fn validate_tap_name(name: &str) -> Result<(), NetArgError> {
    let bad = name.is_empty()
        || name.len() > 15
        || name == "."
        || name == ".."
        || name
            .bytes()
            .any(|b| b == b'/' || b == b'\0' || b == b':' || b.is_ascii_whitespace());
    if bad {
        return Err(NetArgError::BadTapName(name.to_string()));
    }
    Ok(())
}

/// Checks a set of devices: no MAC and no descriptor used twice.
pub fn validate_all(nets: &[NetArg]) -> Result<(), NetArgError> {
    for (i, net) in nets.iter().enumerate() {
        if nets[..i].iter().any(|n| n.mac == net.mac) {
            return Err(NetArgError::DuplicateMac(net.mac));
        }
        if let NetBackend::Fd(fd) = net.backend {
            if nets[..i].iter().any(|n| n.backend == NetBackend::Fd(fd)) {
                return Err(NetArgError::DuplicateFd(fd));
            }
        }
    }
    Ok(())
}

impl NetArg {
    /// The `--net` value: `fd=N`, `tap=NAME` or `detached`, then `mac=`
    /// and `mtu=` if set.
    pub fn to_arg(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for NetArg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.backend {
            NetBackend::Fd(fd) => write!(f, "fd={fd}")?,
            NetBackend::TapName(name) => write!(f, "tap={name}")?,
            NetBackend::Detached => f.write_str("detached")?,
        }
        write!(f, ",mac={}", self.mac)?;
        if let Some(mtu) = self.mtu {
            write!(f, ",mtu={mtu}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: MacAddr = MacAddr([0x02, 0, 0, 0xaa, 0xbb, 0x0c]);

    #[test]
    fn parses_fd_and_tap_forms() {
        assert_eq!(
            NetArg::parse("fd=7,mac=02:00:00:AA:bb:0c,mtu=1400"),
            Ok(NetArg {
                backend: NetBackend::Fd(7),
                mac: MAC,
                mtu: Some(1400)
            })
        );
        assert_eq!(
            NetArg::parse("mac=02:00:00:aa:bb:0c,tap=tap0"),
            Ok(NetArg {
                backend: NetBackend::TapName("tap0".into()),
                mac: MAC,
                mtu: None
            })
        );
        assert_eq!(MAC.to_string(), "02:00:00:aa:bb:0c");
        assert_eq!(
            NetArg::parse("detached,mac=02:00:00:aa:bb:0c,mtu=1500"),
            Ok(NetArg {
                backend: NetBackend::Detached,
                mac: MAC,
                mtu: Some(1500)
            })
        );
    }

    #[test]
    fn rejects_bad_values() {
        let err = |v: &str| NetArg::parse(v).unwrap_err();
        assert!(matches!(err("fd=7"), NetArgError::MissingMac(_)));
        assert!(matches!(
            err("mac=02:00:00:00:00:01"),
            NetArgError::Backend(_)
        ));
        assert!(matches!(
            err("fd=7,tap=t,mac=02:00:00:00:00:01"),
            NetArgError::Backend(_)
        ));
        for mac in [
            "02:00:00:00:00",
            "02:00:00:00:00:01:02",
            "02:00:00:00:00:1",
            "02:00:00:00:00:zz",
            "",
        ] {
            let e = err(&format!("fd=7,mac={mac}"));
            assert_eq!(e, NetArgError::BadMac(mac.into()));
            assert!(e.to_string().contains("bad MAC address"));
        }
        assert!(matches!(
            err("fd=7,mac=01:00:5e:00:00:01"),
            NetArgError::MulticastMac(_)
        ));
        for fd in ["-1", "0", "2", "x", ""] {
            assert_eq!(
                err(&format!("fd={fd},mac=02:00:00:00:00:01")),
                NetArgError::BadFd(fd.into())
            );
        }
        for mtu in ["0", "67", "65501", "big"] {
            assert_eq!(
                err(&format!("fd=3,mac=02:00:00:00:00:01,mtu={mtu}")),
                NetArgError::BadMtu(mtu.into())
            );
        }
        assert!(matches!(
            err("tap=a/b,mac=02:00:00:00:00:01"),
            NetArgError::BadTapName(_)
        ));
        assert!(matches!(
            err("tap=0123456789abcdef,mac=02:00:00:00:00:01"),
            NetArgError::BadTapName(_)
        ));
        assert!(matches!(
            err("fd=3,mac=02:00:00:00:00:01,speed=10"),
            NetArgError::UnknownKey { .. }
        ));
        assert!(matches!(
            err("fd=3,fd=4,mac=02:00:00:00:00:01"),
            NetArgError::DuplicateKey { .. }
        ));
        assert!(matches!(err("fd3"), NetArgError::Syntax(_)));
        assert!(matches!(
            err("detached,fd=3,mac=02:00:00:00:00:01"),
            NetArgError::Backend(_)
        ));
        assert!(matches!(
            err("detached,detached,mac=02:00:00:00:00:01"),
            NetArgError::DuplicateKey { .. }
        ));
    }

    #[test]
    fn duplicates_rejected() {
        let a = NetArg::parse("fd=3,mac=02:00:00:00:00:01").unwrap();
        let b = NetArg::parse("fd=4,mac=02:00:00:00:00:02").unwrap();
        assert_eq!(validate_all(&[a.clone(), b.clone()]), Ok(()));
        let same_mac = NetArg::parse("fd=5,mac=02:00:00:00:00:01").unwrap();
        assert_eq!(
            validate_all(&[a.clone(), same_mac]),
            Err(NetArgError::DuplicateMac(a.mac))
        );
        let same_fd = NetArg::parse("fd=3,mac=02:00:00:00:00:03").unwrap();
        assert_eq!(
            validate_all(&[a, b, same_fd]),
            Err(NetArgError::DuplicateFd(3))
        );
    }

    #[test]
    fn to_arg_round_trips() {
        for arg in [
            "fd=7,mac=02:00:00:aa:bb:0c,mtu=1400",
            "tap=tap0,mac=02:00:00:aa:bb:0c",
            "detached,mac=02:6e:61:63:00:00,mtu=1500",
        ] {
            let net = NetArg::parse(arg).unwrap();
            assert_eq!(net.to_arg(), arg);
        }
    }
}
