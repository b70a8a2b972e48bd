//! The hybrid vsock handshake a host client speaks on the Unix socket:
//! it writes `CONNECT <port>\n`; once the guest accepted, the device
//! answers `OK <host port>\n` and the socket carries the stream.

/// Longest accepted `CONNECT` line, newline included.
pub const MAX_LINE: usize = 64;

/// Why a `CONNECT` line was refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    #[error("no newline within {MAX_LINE} bytes")]
    TooLong,
    #[error("expected `CONNECT <port>`")]
    NotConnect,
    #[error("bad port number")]
    BadPort,
}

/// A complete `CONNECT` line found at the start of a buffer.
#[derive(Debug, PartialEq, Eq)]
pub struct Connect {
    /// The guest port to connect to.
    pub port: u32,
    /// Bytes of the buffer the line took, newline included; anything after
    /// is stream data.
    pub consumed: usize,
}

/// Parses the `CONNECT <port>\n` line at the start of `buf`. `Ok(None)`
/// means more bytes are needed.
pub fn parse_connect(buf: &[u8]) -> Result<Option<Connect>, HandshakeError> {
    let Some(nl) = buf.iter().position(|&b| b == b'\n') else {
        if buf.len() >= MAX_LINE {
            return Err(HandshakeError::TooLong);
        }
        return Ok(None);
    };
    if nl + 1 > MAX_LINE {
        return Err(HandshakeError::TooLong);
    }
    let mut line = &buf[..nl];
    if let [rest @ .., b'\r'] = line {
        line = rest;
    }
    let digits = line
        .strip_prefix(b"CONNECT ")
        .ok_or(HandshakeError::NotConnect)?;
    if digits.is_empty() || digits.len() > 10 || !digits.iter().all(u8::is_ascii_digit) {
        return Err(HandshakeError::BadPort);
    }
    let port = digits
        .iter()
        .try_fold(0u32, |acc, &d| {
            acc.checked_mul(10)?.checked_add(u32::from(d - b'0'))
        })
        .ok_or(HandshakeError::BadPort)?;
    Ok(Some(Connect {
        port,
        consumed: nl + 1,
    }))
}

/// The reply written to the client once the guest accepted.
pub fn ok_line(host_port: u32) -> Vec<u8> {
    format!("OK {host_port}\n").into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_connect_line() {
        assert_eq!(
            parse_connect(b"CONNECT 1024\n"),
            Ok(Some(Connect {
                port: 1024,
                consumed: 13
            }))
        );
        assert_eq!(
            parse_connect(b"CONNECT 4294967295\r\nhello"),
            Ok(Some(Connect {
                port: u32::MAX,
                consumed: 20
            }))
        );
    }

    #[test]
    fn waits_for_the_newline() {
        assert_eq!(parse_connect(b""), Ok(None));
        assert_eq!(parse_connect(b"CONNECT 1024"), Ok(None));
        assert_eq!(parse_connect(b"CONN"), Ok(None));
    }

    #[test]
    fn refuses_bad_lines() {
        assert_eq!(
            parse_connect(b"CONNECT abc\n"),
            Err(HandshakeError::BadPort)
        );
        assert_eq!(parse_connect(b"CONNECT \n"), Err(HandshakeError::BadPort));
        assert_eq!(
            parse_connect(b"CONNECT +12\n"),
            Err(HandshakeError::BadPort)
        );
        assert_eq!(
            parse_connect(b"CONNECT 4294967296\n"),
            Err(HandshakeError::BadPort)
        );
        assert_eq!(
            parse_connect(b"CONNECT 12 \n"),
            Err(HandshakeError::BadPort)
        );
        assert_eq!(
            parse_connect(b"connect 12\n"),
            Err(HandshakeError::NotConnect)
        );
        assert_eq!(parse_connect(b"\n"), Err(HandshakeError::NotConnect));
    }

    #[test]
    fn refuses_overlong_lines() {
        let long = vec![b'1'; MAX_LINE];
        assert_eq!(parse_connect(&long), Err(HandshakeError::TooLong));
        let mut long_line = b"CONNECT ".to_vec();
        long_line.extend(std::iter::repeat_n(b'0', MAX_LINE));
        long_line.push(b'\n');
        assert_eq!(parse_connect(&long_line), Err(HandshakeError::TooLong));
    }

    #[test]
    fn ok_reply() {
        assert_eq!(ok_line(1 << 30), b"OK 1073741824\n");
    }
}
