//! VM tier: podman with nacre as its OCI runtime (`podman --runtime`).
//! conmon calls `nacre create --bundle --pid-file`, waits for the pid in
//! the pid file and reads the container's stdout through its pipes.
//!
//! The image is built locally (`podman import` of a busybox-static tree),
//! podman's storage is private to the test. Needs root, /dev/kvm, the
//! guest image and podman (a missing podman skips unless
//! `NACRE_REQUIRE_PODMAN=1`).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a failure is a test failure"
)]

mod common;

use std::os::unix::fs::{symlink, PermissionsExt};
use std::process::Command;
use std::time::Instant;

use common::*;
use nacre_runtime::testing::vm_prereqs;

#[test]
fn vm_podman_run_uname_prints_the_guest_kernel() {
    let Some(p) = vm_prereqs("vm_podman_run_uname_prints_the_guest_kernel") else {
        return;
    };
    if !require_root("vm_podman_run_uname_prints_the_guest_kernel") {
        return;
    }
    if Command::new("podman").arg("--version").output().is_err() {
        assert!(
            std::env::var("NACRE_REQUIRE_PODMAN").as_deref() != Ok("1"),
            "podman is not installed"
        );
        eprintln!("SKIPPED: podman is not installed (apt-get install podman)");
        return;
    }
    let s = Scratch::new("podman");
    let dir = s.path();
    let rootfs = dir.join("rootfs");
    std::fs::create_dir_all(rootfs.join("bin")).unwrap();
    std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).unwrap();
    for a in ["sh", "uname", "echo", "cat", "true"] {
        symlink("busybox", rootfs.join("bin").join(a)).unwrap();
    }
    for d in ["proc", "sys", "dev", "etc", "tmp"] {
        std::fs::create_dir_all(rootfs.join(d)).unwrap();
    }
    let tar = dir.join("rootfs.tar");
    let st = Command::new("tar")
        .arg("-C")
        .arg(&rootfs)
        .arg("-cf")
        .arg(&tar)
        .arg(".")
        .status()
        .unwrap();
    assert!(st.success());

    // conmon does not pass podman's environment on: a wrapper sets it.
    let root = dir.join("nacre-root");
    let wrapper = dir.join("nacre-runtime");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nexport NACRE_VMM='{}' NACRE_KERNEL='{}' NACRE_INITRD='{}'\nexec '{}' --root '{}' \"$@\"\n",
            p.vmm.display(),
            p.image.kernel.display(),
            p.image.initrd.display(),
            env!("CARGO_BIN_EXE_nacre"),
            root.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();

    let podman = || {
        let mut c = Command::new("podman");
        c.arg("--root")
            .arg(dir.join("storage"))
            .arg("--runroot")
            .arg(dir.join("runroot"))
            .args(["--cgroup-manager", "cgroupfs", "--events-backend", "file"]);
        c
    };
    let o = podman()
        .arg("import")
        .arg(&tar)
        .arg("localhost/nacre-busybox")
        .output()
        .unwrap();
    assert!(o.status.success(), "podman import: {}", stderr(&o));

    let t = Instant::now();
    let o = podman()
        .arg("--runtime")
        .arg(&wrapper)
        .args([
            "run",
            "--rm",
            "--network",
            "none",
            "localhost/nacre-busybox",
            "uname",
            "-r",
        ])
        .output()
        .unwrap();
    eprintln!("podman run took {:.1} s", t.elapsed().as_secs_f64());
    assert!(
        o.status.success(),
        "podman run: {}\n{}",
        o.status,
        stderr(&o)
    );
    let release = stdout(&o).trim().to_string();
    assert!(
        release.starts_with("6.1."),
        "guest kernel {release:?}; stderr {}",
        stderr(&o)
    );
    assert_ne!(release, nacre_runtime::host::kernel_release());

    // conmon runs `podman container cleanup` after the exit, in the
    // background: let it finish before removing the storage.
    let deadline = Instant::now() + std::time::Duration::from_secs(60);
    while Instant::now() < deadline && processes_naming(dir) > 0 {
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let _ = podman()
        .args(["rmi", "-f", "localhost/nacre-busybox"])
        .output();
    let _ = podman().args(["system", "reset", "-f"]).output();
    let mounts = nacre_runtime::container::mounts::mounts_under(dir);
    for m in &mounts {
        let _ = Command::new("umount").arg("-l").arg(m).status();
    }
    assert!(
        std::fs::read_dir(&root).map_or(true, |mut d| d.next().is_none()),
        "containers left under {}",
        root.display()
    );
}

/// Processes (other than this one) whose command line names `dir`.
fn processes_naming(dir: &std::path::Path) -> usize {
    let needle = dir.to_string_lossy().into_owned();
    let me = std::process::id().to_string();
    std::fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter(|e| e.file_name().to_string_lossy() != me.as_str())
                .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
                .filter(|c| String::from_utf8_lossy(c).contains(&needle))
                .count()
        })
        .unwrap_or(0)
}
