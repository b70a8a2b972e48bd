//! The binary's exit codes and messages for bad input; no KVM needed.

mod common;

use std::process::Command;

use common::{reset_kernel, scratch, vmm_bin};

fn run(args: &[&str]) -> (i32, String) {
    let out = Command::new(vmm_bin())
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running nacre-vmm: {e}"));
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn missing_kernel_is_66_and_named() {
    let dir = scratch("cli-missing");
    let initrd = dir.join("initrd");
    std::fs::write(&initrd, b"x").unwrap_or_default();
    let (code, err) = run(&[
        "--kernel",
        "/x/vmlinux",
        "--initrd",
        initrd.to_str().unwrap_or(""),
    ]);
    assert_eq!(code, 66, "{err}");
    assert!(
        err.contains("kernel image /x/vmlinux: No such file or directory"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn non_elf_kernel_is_66() {
    let dir = scratch("cli-nonelf");
    let f = dir.join("bzImage");
    std::fs::write(&f, b"MZ not an elf").unwrap_or_default();
    let p = f.to_str().unwrap_or("");
    let (code, err) = run(&["--kernel", p, "--initrd", p]);
    assert_eq!(code, 66, "{err}");
    assert!(err.contains("not an ELF"), "{err}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn missing_initrd_is_66() {
    let dir = scratch("cli-initrd");
    let k = dir.join("vmlinux");
    std::fs::write(&k, reset_kernel()).unwrap_or_default();
    let (code, err) = run(&[
        "--kernel",
        k.to_str().unwrap_or(""),
        "--initrd",
        "/nope/initrd",
    ]);
    assert_eq!(code, 66, "{err}");
    assert!(err.contains("initrd /nope/initrd"), "{err}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn bad_configuration_is_64() {
    let dir = scratch("cli-config");
    let k = dir.join("vmlinux");
    std::fs::write(&k, reset_kernel()).unwrap_or_default();
    let k = k.to_str().unwrap_or("");
    for extra in [
        &["--vcpus", "0"][..],
        &["--memory-mib", "0"],
        &["--memory-mib", "999999999"],
        &["--vcpus", "abc"],
        &["--no-such-flag"],
        &["--vsock-cid", "5"],
        &["--seccomp", "strict"],
    ] {
        let mut args = vec!["--kernel", k, "--initrd", k];
        args.extend_from_slice(extra);
        let (code, err) = run(&args);
        assert_eq!(code, 64, "{extra:?}: {err}");
        assert!(!err.is_empty());
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn help_documents_exit_codes() {
    let out = Command::new(vmm_bin()).arg("--help").output();
    let out = out.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "--kernel",
        "--api-socket",
        "--shared-dir",
        "Exit codes",
        "69",
        "/dev/kvm",
    ] {
        assert!(text.contains(needle), "help lacks {needle}");
    }
}

#[test]
fn bad_shared_dirs_are_named() {
    let dir = scratch("cli-shared");
    let k = dir.join("vmlinux");
    std::fs::write(&k, reset_kernel()).unwrap_or_default();
    let file = dir.join("file");
    std::fs::write(&file, b"x").unwrap_or_default();
    let k = k.to_str().unwrap_or("");
    let long = format!("{}=/tmp", "t".repeat(37));
    let not_dir = format!("t={}", file.display());
    for (value, code, needle) in [
        ("/tmp", 64, "expected TAG=PATH"),
        ("=/tmp", 64, "the tag is empty"),
        (long.as_str(), 64, "37 bytes long, at most 36"),
        ("t=", 64, "the path is empty"),
        ("t=/nonexistent/share", 66, "/nonexistent/share"),
        (not_dir.as_str(), 66, "is not a directory"),
    ] {
        let (got, err) = run(&["--kernel", k, "--initrd", k, "--shared-dir", value]);
        assert_eq!(got, code, "{value}: {err}");
        assert!(err.contains(needle), "{value}: {err}");
    }
    let (got, err) = run(&[
        "--kernel",
        k,
        "--initrd",
        k,
        "--shared-dir",
        "a=/tmp",
        "--shared-dir",
        "a=/tmp",
    ]);
    assert_eq!(got, 64, "{err}");
    assert!(err.contains("tag \"a\" is used twice"), "{err}");
    let _ = std::fs::remove_dir_all(dir);
}

/// Runs the VMM in a private mount namespace where `/dev` is an empty
/// tmpfs, so `/dev/kvm` does not exist for it. Needs root (`unshare -m`).
#[test]
fn no_dev_kvm_is_69_and_named() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        assert!(
            !common::strict(),
            "this test needs root (unshare -m) under CI / NACRE_REQUIRE_VM"
        );
        eprintln!("SKIPPED no_dev_kvm_is_69_and_named: needs root");
        return;
    }
    let dir = scratch("cli-nokvm");
    let k = dir.join("vmlinux");
    std::fs::write(&k, reset_kernel()).unwrap_or_default();
    let script = format!(
        "mount --make-rprivate / && mount -t tmpfs none /dev && exec {} --kernel {} --initrd {}",
        vmm_bin(),
        k.display(),
        k.display()
    );
    let out = Command::new("unshare")
        .args(["-m", "sh", "-c", &script])
        .output()
        .unwrap_or_else(|e| panic!("running unshare: {e}"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(69), "{err}");
    assert!(err.contains("/dev/kvm"), "{err}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn bad_net_devices_are_64_and_named() {
    let dir = scratch("cli-net");
    let k = dir.join("vmlinux");
    std::fs::write(&k, reset_kernel()).unwrap_or_default();
    let k = k.to_str().unwrap_or("");
    let base = ["--kernel", k, "--initrd", k];
    let with = |net: &str| {
        let mut args = base.to_vec();
        args.extend(["--net", net]);
        run(&args)
    };
    let (code, err) = with("fd=3,mac=02:00:00:00:00:zz");
    assert_eq!(code, 64, "{err}");
    assert!(
        err.contains("bad MAC address \"02:00:00:00:00:zz\""),
        "{err}"
    );
    let (code, err) = with("fd=1,mac=02:00:00:00:00:01");
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("bad tap descriptor \"1\""), "{err}");
    let (code, err) = with("fd=4000,mac=02:00:00:00:00:01");
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("tap descriptor 4000 is not open"), "{err}");

    // An inherited descriptor that is not a tap.
    let file = std::fs::File::open(k).unwrap();
    let mut cmd = Command::new(vmm_bin());
    cmd.args(base)
        .args(["--net", "fd=50,mac=02:00:00:00:00:01"]);
    {
        use std::os::fd::AsRawFd;
        use std::os::unix::process::CommandExt;
        let fd = file.as_raw_fd();
        // SAFETY: dup2 is async-signal-safe and only touches the child's
        // descriptor table.
        unsafe {
            cmd.pre_exec(move || {
                if libc::dup2(fd, 50) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    let out = cmd.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{err}");
    assert!(err.contains("descriptor 50 is not a tap device"), "{err}");
    let _ = std::fs::remove_dir_all(dir);
}

/// A template header naming `kernel`, with `patch` applied to its fields.
fn template(dir: &std::path::Path, patch: &[(&str, serde_json::Value)]) {
    let mut header = serde_json::json!({
        "magic": "nacre-vm-template",
        "format_version": 2,
        "vmm_version": env!("CARGO_PKG_VERSION"),
        "kernel": {"path": "/k", "sha256": "00", "size": 1, "dev": 0, "ino": 0, "mtime_ns": 0},
        "initrd": null,
        "memory_size": 33554432,
        "state_sha256": "not-the-checksum",
        "memory_sha256": "not-the-checksum",
        "created_unix": 0
    });
    for (k, v) in patch {
        header[*k] = v.clone();
    }
    std::fs::create_dir_all(dir).unwrap_or_default();
    std::fs::write(dir.join("header.json"), header.to_string()).unwrap_or_default();
    std::fs::write(dir.join("state.json"), b"{}").unwrap_or_default();
}

#[test]
fn unusable_templates_are_65_and_named() {
    let dir = scratch("cli-template");
    type Patch = Vec<(&'static str, serde_json::Value)>;
    let cases: Vec<(&str, Patch, &str)> = vec![
        (
            "old-vmm",
            vec![("vmm_version", "0.0.1".into())],
            "made by nacre-vmm 0.0.1",
        ),
        (
            "format",
            vec![("format_version", 99.into())],
            "format version 99",
        ),
        (
            "magic",
            vec![("magic", "qemu".into())],
            "not a nacre VM template",
        ),
        ("corrupt", vec![], "checksum mismatch"),
    ];
    for (name, patch, expected) in cases {
        let t = dir.join(name);
        template(&t, &patch);
        let (code, err) = run(&["--restore", t.to_str().unwrap_or("")]);
        assert_eq!(code, 65, "{name}: {err}");
        assert!(err.contains(expected), "{name}: {err}");
    }
    let (code, err) = run(&["--restore", dir.join("none").to_str().unwrap_or("")]);
    assert_eq!(code, 65, "{err}");
    assert!(err.contains("header.json"), "{err}");
    let (code, err) = run(&["--restore", "/t", "--vcpus", "2"]);
    assert_eq!(code, 64, "{err}");
    let _ = std::fs::remove_dir_all(dir);
}
