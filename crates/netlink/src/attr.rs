//! Netlink attributes (`struct rtattr`/`nlattr`): a 4-byte header
//! (length, type) and a payload, padded to 4 bytes.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Rounds `len` up to the netlink alignment (4).
pub fn align(len: usize) -> usize {
    (len + 3) & !3
}

/// Appends one attribute to `buf`.
pub fn push(buf: &mut Vec<u8>, kind: u16, data: &[u8]) {
    let len = 4 + data.len();
    // Attributes built here are small (names, addresses, integers).
    buf.extend_from_slice(&(len as u16).to_ne_bytes());
    buf.extend_from_slice(&kind.to_ne_bytes());
    buf.extend_from_slice(data);
    buf.resize(align(buf.len()), 0);
}

/// Appends an IP address attribute.
pub fn push_ip(buf: &mut Vec<u8>, kind: u16, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => push(buf, kind, &v4.octets()),
        IpAddr::V6(v6) => push(buf, kind, &v6.octets()),
    }
}

/// Iterates over the attributes in `buf`, stopping at the first malformed
/// one. Yields (type without the nested/byte-order flags, payload).
pub fn parse(buf: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    let mut rest = buf;
    std::iter::from_fn(move || {
        if rest.len() < 4 {
            return None;
        }
        let len = usize::from(u16::from_ne_bytes([rest[0], rest[1]]));
        let kind = u16::from_ne_bytes([rest[2], rest[3]]) & 0x3fff;
        if len < 4 || len > rest.len() {
            return None;
        }
        let data = &rest[4..len];
        rest = rest.get(align(len)..).unwrap_or(&[]);
        Some((kind, data))
    })
}

/// Decodes an address of 4 or 16 bytes.
pub fn ip(data: &[u8]) -> Option<IpAddr> {
    match data.len() {
        4 => Some(IpAddr::V4(Ipv4Addr::new(
            data[0], data[1], data[2], data[3],
        ))),
        16 => {
            let mut b = [0u8; 16];
            b.copy_from_slice(data);
            Some(IpAddr::V6(Ipv6Addr::from(b)))
        }
        _ => None,
    }
}

/// Decodes a native-endian u32.
pub fn u32_of(data: &[u8]) -> Option<u32> {
    Some(u32::from_ne_bytes(data.get(..4)?.try_into().ok()?))
}

/// Decodes a NUL-terminated string.
pub fn string(data: &[u8]) -> String {
    let end = data.iter().position(|&b| b == 0).unwrap_or(data.len());
    String::from_utf8_lossy(&data[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_with_padding() {
        let mut buf = Vec::new();
        push(&mut buf, 3, b"eth0\0");
        push(&mut buf, 4, &1500u32.to_ne_bytes());
        push_ip(&mut buf, 1, "10.0.0.1".parse().unwrap());
        assert_eq!(buf.len(), 12 + 8 + 8);
        let got: Vec<_> = parse(&buf).collect();
        assert_eq!(got.len(), 3);
        assert_eq!(string(got[0].1), "eth0");
        assert_eq!(u32_of(got[1].1), Some(1500));
        assert_eq!(ip(got[2].1), Some("10.0.0.1".parse().unwrap()));
    }

    #[test]
    fn malformed_input_stops() {
        assert_eq!(parse(&[0, 0]).count(), 0);
        // Length 2 (< header) and length beyond the buffer.
        assert_eq!(parse(&[2, 0, 1, 0]).count(), 0);
        assert_eq!(parse(&[200, 0, 1, 0, 0, 0]).count(), 0);
        assert_eq!(ip(&[1, 2, 3]), None);
        assert_eq!(u32_of(&[1]), None);
    }
}
