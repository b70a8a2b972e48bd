//! Boots the real guest kernel with the busybox test initrd and checks the
//! serial log for the init's marker and a clean exit through `reboot -f`.
//!
//! Takes tens of seconds on hosts where guest kernel mode is emulated.
//! Paths: `NACRE_TEST_KERNEL` / `NACRE_TEST_INITRD`, by default
//! /tmp/nacre-dev/vmlinux and /tmp/nacre-dev/initrd-busybox.cpio. Skipped
//! when KVM or the files are missing, unless `CI` is set (then it fails);
//! `NACRE_SKIP_GUEST_BOOT=1` skips it explicitly.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::*;

const MARKER: &str = "NACRE-SMOKE-OK";

fn path_from_env(var: &str, default: &str) -> PathBuf {
    std::env::var_os(var)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(default))
}

#[test]
fn busybox_guest_boots_and_reboots() {
    if std::env::var_os("NACRE_SKIP_GUEST_BOOT").is_some() {
        eprintln!("skipping: NACRE_SKIP_GUEST_BOOT is set");
        return;
    }
    let kernel = path_from_env("NACRE_TEST_KERNEL", "/tmp/nacre-dev/vmlinux");
    let initrd = path_from_env("NACRE_TEST_INITRD", "/tmp/nacre-dev/initrd-busybox.cpio");
    if !require_kvm() || !require_file(&kernel) || !require_file(&initrd) {
        return;
    }
    let dir = scratch("guest-boot");
    let log = dir.join("serial.log");
    let api = dir.join("api.sock");
    let started = Instant::now();
    let mut vmm = spawn_vmm(&[
        "--kernel",
        kernel.to_str().unwrap_or(""),
        "--initrd",
        initrd.to_str().unwrap_or(""),
        "--memory-mib",
        "128",
        "--serial-log",
        log.to_str().unwrap_or(""),
        "--api-socket",
        api.to_str().unwrap_or(""),
    ]);
    let status = wait_timeout(&mut vmm.0, Duration::from_secs(300));
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(0),
        "serial log:\n{text}"
    );
    assert!(text.contains(MARKER), "no {MARKER} in:\n{text}");
    assert!(!api.exists(), "api socket left behind");
    eprintln!("guest booted and rebooted in {:?}", started.elapsed());
    let _ = std::fs::remove_dir_all(dir);
}
