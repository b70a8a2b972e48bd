//! The VMM on real KVM with hand-made test kernels: 64-bit entry, the
//! serial console, the i8042 reset, the control socket, signals, cleanup.
//! Skipped without /dev/kvm unless CI is set (then they fail).

mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use common::*;

fn write_kernels(dir: &Path) -> (String, String, String) {
    let reset = dir.join("reset.elf");
    let spin = dir.join("spin.elf");
    let initrd = dir.join("initrd.cpio");
    std::fs::write(&reset, reset_kernel()).unwrap_or_default();
    std::fs::write(&spin, spinning_kernel()).unwrap_or_default();
    std::fs::write(&initrd, vec![0u8; 4096]).unwrap_or_default();
    let s = |p: &Path| p.to_string_lossy().into_owned();
    (s(&reset), s(&spin), s(&initrd))
}

#[test]
fn guest_reset_exits_zero_with_console_output() {
    if !require_kvm() {
        return;
    }
    let dir = scratch("kvm-reset");
    let (reset, _, initrd) = write_kernels(&dir);
    let log = dir.join("serial.log");
    let mut child = spawn_vmm(&[
        "--kernel",
        &reset,
        "--initrd",
        &initrd,
        "--vcpus",
        "2",
        "--memory-mib",
        "64",
        "--serial-log",
        log.to_str().unwrap_or(""),
        "--serial-stdout",
    ]);
    let status = wait_timeout(&mut child.0, Duration::from_secs(30));
    assert_eq!(status.and_then(|s| s.code()), Some(0));
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(text, TEST_KERNEL_MESSAGE);
    let _ = std::fs::remove_dir_all(dir);
}

fn request(stream: &mut UnixStream, reader: &mut impl BufRead, line: &str) -> serde_json::Value {
    let _ = stream.write_all(format!("{line}\n").as_bytes());
    let mut resp = String::new();
    let _ = reader.read_line(&mut resp);
    serde_json::from_str(&resp).unwrap_or_else(|e| panic!("{resp:?}: {e}"))
}

#[test]
fn api_pause_resume_shutdown_and_cleanup() {
    if !require_kvm() {
        return;
    }
    let dir = scratch("kvm-api");
    let (_, spin, initrd) = write_kernels(&dir);
    let api = dir.join("api.sock");
    let vsock = dir.join("vsock.sock");
    let mut child = spawn_vmm(&[
        "--kernel",
        &spin,
        "--initrd",
        &initrd,
        "--vcpus",
        "2",
        "--memory-mib",
        "64",
        "--api-socket",
        api.to_str().unwrap_or(""),
        "--vsock-uds",
        vsock.to_str().unwrap_or(""),
    ]);
    assert!(
        wait_for_path(&api, Duration::from_secs(10)),
        "api socket never appeared"
    );
    assert!(vsock.exists());
    let mut stream = UnixStream::connect(&api).unwrap_or_else(|e| panic!("{e}"));
    let mut reader = BufReader::new(stream.try_clone().unwrap_or_else(|e| panic!("{e}")));

    let status = request(&mut stream, &mut reader, r#"{"op":"status"}"#);
    assert_eq!(status["ok"], true);
    assert_eq!(status["state"], "running");
    assert_eq!(status["vcpus"], 2);
    assert_eq!(status["memory_mib"], 64);
    assert_eq!(status["pid"], child.0.id());

    let r = request(&mut stream, &mut reader, r#"{"op":"pause"}"#);
    assert_eq!(r["state"], "paused", "{r}");
    let r = request(&mut stream, &mut reader, r#"{"op":"status"}"#);
    assert_eq!(r["state"], "paused");
    let r = request(&mut stream, &mut reader, r#"{"op":"resume"}"#);
    assert_eq!(r["state"], "running");
    let r = request(&mut stream, &mut reader, r#"{"op":"frobnicate"}"#);
    assert_eq!(r["ok"], false);
    assert!(r["error"].as_str().is_some());
    let r = request(&mut stream, &mut reader, r#"{"op":"shutdown"}"#);
    assert_eq!(r["ok"], true);

    let status = wait_timeout(&mut child.0, Duration::from_secs(10));
    assert_eq!(status.and_then(|s| s.code()), Some(0));
    assert!(!api.exists(), "api socket left behind");
    assert!(!vsock.exists(), "vsock socket left behind");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn sigterm_exits_143_and_cleans_up() {
    if !require_kvm() {
        return;
    }
    let dir = scratch("kvm-sigterm");
    let (_, spin, initrd) = write_kernels(&dir);
    let api = dir.join("api.sock");
    let mut child = spawn_vmm(&[
        "--kernel",
        &spin,
        "--initrd",
        &initrd,
        "--memory-mib",
        "64",
        "--api-socket",
        api.to_str().unwrap_or(""),
    ]);
    assert!(wait_for_path(&api, Duration::from_secs(10)));
    // SAFETY: plain kill(2) on our own child's pid.
    let rc = unsafe { libc::kill(child.0.id() as libc::pid_t, libc::SIGTERM) };
    assert_eq!(rc, 0);
    let status = wait_timeout(&mut child.0, Duration::from_secs(10));
    assert_eq!(status.and_then(|s| s.code()), Some(143));
    assert!(!api.exists(), "api socket left behind");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn guest_panic_then_reset_exits_70() {
    if !require_kvm() {
        return;
    }
    let dir = scratch("kvm-panic");
    let (_, _, initrd) = write_kernels(&dir);
    let kernel = dir.join("panic.elf");
    std::fs::write(&kernel, panicking_kernel()).unwrap_or_default();
    let mut child = spawn_vmm(&[
        "--kernel",
        kernel.to_str().unwrap_or(""),
        "--initrd",
        &initrd,
        "--memory-mib",
        "64",
    ]);
    let status = wait_timeout(&mut child.0, Duration::from_secs(30));
    assert_eq!(status.and_then(|s| s.code()), Some(70));
    let _ = std::fs::remove_dir_all(dir);
}
