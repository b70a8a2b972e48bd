//! The hybrid vsock `CONNECT <port>\n` line a host client writes to the
//! VMM's Unix socket, fed as raw bytes.
//!
//! Invariants: a parsed line ends at its newline within `MAX_LINE` bytes,
//! names exactly the decimal port it carries (round trip through the
//! canonical line), and every shorter prefix asks for more bytes, so the
//! muxer's chunked reads agree with one whole read; "need more" is only
//! answered while no newline came and the line is short.

#![no_main]

use libfuzzer_sys::fuzz_target;
use nacre_vmm::devices::virtio::vsock::fuzzing::{parse_connect, Connect, MAX_LINE};

fuzz_target!(|buf: &[u8]| {
    match parse_connect(buf) {
        Ok(Some(Connect { port, consumed })) => {
            assert!(consumed <= MAX_LINE && consumed <= buf.len());
            assert_eq!(buf[consumed - 1], b'\n');
            assert!(!buf[..consumed - 1].contains(&b'\n'));
            let line = format!("CONNECT {port}\n");
            assert_eq!(
                parse_connect(line.as_bytes()),
                Ok(Some(Connect {
                    port,
                    consumed: line.len()
                }))
            );
            for k in 0..consumed {
                assert_eq!(parse_connect(&buf[..k]), Ok(None), "prefix of {k} bytes");
            }
        }
        Ok(None) => {
            assert!(!buf.contains(&b'\n'));
            assert!(buf.len() < MAX_LINE);
        }
        Err(_) => {}
    }
});
