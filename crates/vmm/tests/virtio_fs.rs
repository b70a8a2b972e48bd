//! A real guest mounts a `--shared-dir` over virtio-fs: reads a host file,
//! writes one back, and finds a read-only bind mount inside the share
//! read-only.
//!
//! The initrd is made here: static busybox and an /init script, as an
//! uncompressed newc cpio. Takes tens of seconds (minutes on a loaded host)
//! where guest kernel mode is emulated.
//! This is the crate's one real-guest boot: it also checks the clean exit
//! through `reboot -f` and that the api socket is removed.
//! Paths: `NACRE_TEST_KERNEL` (default /tmp/nacre-dev/vmlinux),
//! `NACRE_TEST_BUSYBOX` (default /bin/busybox). Skipped when KVM or the
//! files are missing, unless `CI` or `NACRE_REQUIRE_VM` is set (then it
//! fails); `NACRE_SKIP_GUEST_BOOT=1` skips it explicitly. The read-only
//! bind mount needs root (the VMM then runs in a private mount namespace);
//! without root that part is not checked, or fails in strict mode.

mod common;

use std::ffi::CString;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const INIT: &str = r#"#!/bin/sh
export PATH=/bin
mount -t proc proc /proc
mount -t virtiofs nacre /mnt && echo "FS: mounted"
cat /mnt/hello.txt
echo data > /mnt/out.txt && echo "FS: wrote"
echo "FS: ro has $(ls /mnt/ro)"
touch /mnt/ro/x 2>/dev/null || echo "FS: RO-OK"
sync
reboot -f
"#;

const HELLO: &str = "hello through virtio-fs";

/// Same rule as `common::strict`: a missing prerequisite fails the test.
fn strict() -> bool {
    ["CI", "NACRE_REQUIRE_VM"]
        .iter()
        .any(|v| std::env::var(v).is_ok_and(|s| !s.is_empty() && s != "0" && s != "false"))
}

fn path_from_env(var: &str, default: &str) -> PathBuf {
    std::env::var_os(var)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(default))
}

/// Appends one newc entry.
fn cpio_entry(out: &mut Vec<u8>, name: &str, mode: u32, rdev: (u32, u32), data: &[u8]) {
    let ino = out.len() as u32 / 4 + 1;
    let fields = [
        ino,
        mode,
        0,
        0,
        1,
        0,
        data.len() as u32,
        0,
        0,
        rdev.0,
        rdev.1,
        name.len() as u32 + 1,
        0,
    ];
    out.extend_from_slice(b"070701");
    for f in fields {
        out.extend_from_slice(format!("{f:08x}").as_bytes());
    }
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    while out.len() % 4 != 0 {
        out.push(0);
    }
    out.extend_from_slice(data);
    while out.len() % 4 != 0 {
        out.push(0);
    }
}

fn initrd(busybox: &Path) -> Vec<u8> {
    let bb = std::fs::read(busybox).unwrap_or_else(|e| panic!("{}: {e}", busybox.display()));
    let mut out = Vec::new();
    for dir in ["bin", "dev", "mnt", "proc"] {
        cpio_entry(&mut out, dir, 0o040_755, (0, 0), &[]);
    }
    cpio_entry(&mut out, "dev/console", 0o020_600, (5, 1), &[]);
    cpio_entry(&mut out, "dev/null", 0o020_666, (1, 3), &[]);
    cpio_entry(&mut out, "bin/busybox", 0o100_755, (0, 0), &bb);
    for applet in [
        "sh", "cat", "echo", "ls", "mount", "touch", "sync", "reboot",
    ] {
        cpio_entry(
            &mut out,
            &format!("bin/{applet}"),
            0o120_777,
            (0, 0),
            b"busybox",
        );
    }
    cpio_entry(&mut out, "init", 0o100_755, (0, 0), INIT.as_bytes());
    cpio_entry(&mut out, "TRAILER!!!", 0, (0, 0), &[]);
    out
}

fn cstring(p: &Path) -> CString {
    CString::new(p.as_os_str().as_encoded_bytes()).unwrap_or_else(|e| panic!("{e}"))
}

/// Makes the child bind-mount `src` read-only at `dst` in a mount
/// namespace of its own before it execs.
fn with_ro_bind(cmd: &mut Command, src: &Path, dst: &Path) {
    let (src, dst) = (cstring(src), cstring(dst));
    let check = |rc: libc::c_int| {
        if rc == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    };
    // SAFETY: runs in the forked child before exec; only syscalls on
    // strings allocated before the fork.
    unsafe {
        cmd.pre_exec(move || {
            check(libc::unshare(libc::CLONE_NEWNS))?;
            check(libc::mount(
                c"none".as_ptr(),
                c"/".as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            ))?;
            check(libc::mount(
                src.as_ptr(),
                dst.as_ptr(),
                std::ptr::null(),
                libc::MS_BIND,
                std::ptr::null(),
            ))?;
            check(libc::mount(
                std::ptr::null(),
                dst.as_ptr(),
                std::ptr::null(),
                libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY,
                std::ptr::null(),
            ))
        });
    }
}

#[test]
fn guest_mounts_a_shared_dir() {
    if std::env::var_os("NACRE_SKIP_GUEST_BOOT").is_some() {
        eprintln!("skipping: NACRE_SKIP_GUEST_BOOT is set");
        return;
    }
    let kernel = path_from_env("NACRE_TEST_KERNEL", "/tmp/nacre-dev/vmlinux");
    let busybox = path_from_env("NACRE_TEST_BUSYBOX", "/bin/busybox");
    if !require_kvm() || !require_file(&kernel) || !require_file(&busybox) {
        return;
    }
    let dir = scratch("virtio-fs");
    let share = dir.join("share");
    let ro_src = dir.join("ro-src");
    for d in [share.join("ro"), ro_src.clone()] {
        std::fs::create_dir_all(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display()));
    }
    let write = |p: &Path, data: &str| {
        std::fs::write(p, data).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    };
    write(&share.join("hello.txt"), &format!("{HELLO}\n"));
    write(&ro_src.join("f"), "ro\n");
    let initrd_path = dir.join("initrd.cpio");
    std::fs::write(&initrd_path, initrd(&busybox)).unwrap_or_else(|e| panic!("initrd: {e}"));
    let log = dir.join("serial.log");
    let api = dir.join("api.sock");
    let shared = format!("nacre={}", share.display());

    let mut cmd = Command::new(vmm_bin());
    cmd.args(["--kernel", kernel.to_str().unwrap_or("")])
        .args(["--initrd", initrd_path.to_str().unwrap_or("")])
        .args(["--memory-mib", "128", "--shared-dir", &shared])
        .args(["--serial-log", log.to_str().unwrap_or("")])
        .args(["--api-socket", api.to_str().unwrap_or("")])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if root {
        with_ro_bind(&mut cmd, &ro_src, &share.join("ro"));
        // As the runtime runs it: jailed (root with the six file caps,
        // the fs worker under its own filter).
        cmd.args(["--jail", dir.join("jail").to_str().unwrap_or("")]);
    } else if strict() {
        panic!("strict mode and not root: cannot check the read-only bind mount");
    } else {
        eprintln!("not root: the read-only bind mount is not checked");
    }
    let started = Instant::now();
    let mut vmm = VmmProcess(cmd.spawn().unwrap_or_else(|e| panic!("spawning: {e}")));
    let status = wait_timeout(&mut vmm.0, Duration::from_secs(400));
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(0),
        "serial log:\n{text}"
    );
    for needle in ["FS: mounted", HELLO, "FS: wrote"] {
        assert!(text.contains(needle), "no {needle:?} in:\n{text}");
    }
    assert!(!api.exists(), "api socket left behind");
    let out = std::fs::read_to_string(share.join("out.txt")).unwrap_or_default();
    assert_eq!(out, "data\n", "out.txt on the host; serial log:\n{text}");
    if root {
        assert!(text.contains("FS: ro has f"), "{text}");
        assert!(text.contains("FS: RO-OK"), "{text}");
        assert!(!ro_src.join("x").exists(), "wrote through a ro bind mount");
    }
    eprintln!("virtio-fs guest test took {:?}", started.elapsed());
    let _ = std::fs::remove_dir_all(dir);
}
