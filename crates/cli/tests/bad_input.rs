//! Bad input and failure paths of the runc-style commands: a clear error,
//! a non-zero exit, and nothing left behind (no state directory, no mount,
//! no VMM). These need root (the shared directory's bind mounts) but no
//! VM: the one that gets as far as starting a VMM uses a stand-in that
//! fails.

mod common;

use std::ffi::OsStr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use common::*;

/// `nacre --root ROOT VERB --bundle BUNDLE ID` with `env` set, which must
/// fail; returns its stderr.
fn fails(root: &Path, verb: &str, bundle: &Path, id: &str, env: &[(&str, &OsStr)]) -> String {
    let mut cmd = nacre();
    for (k, v) in env {
        cmd.env(k, v);
    }
    let o = cmd
        .arg("--root")
        .arg(root)
        .args([verb, "--bundle"])
        .arg(bundle)
        .arg(id)
        .output()
        .unwrap_or_else(|e| panic!("running nacre: {e}"));
    assert!(!o.status.success(), "nacre {verb} {id} succeeded");
    stderr(&o)
}

#[test]
fn malformed_config_names_file_and_error() {
    if !require_root("malformed_config_names_file_and_error") {
        return;
    }
    let s = Scratch::new("malformed");
    let root = s.path().join("root");
    let b = bundle(
        s.path(),
        r#"{"ociVersion": "1.0.2", "root": {"path": "rootfs"}, "mounts": 7}"#,
    );
    let err = fails(&root, "create", &b, "c1", &[]);
    assert!(
        err.contains(&*b.join("config.json").to_string_lossy()),
        "{err}"
    );
    assert!(err.contains("invalid type"), "{err}");
    assert_nothing_left(&root, "c1");

    std::fs::write(b.join("config.json"), "{\"ociVersion\": ").unwrap();
    let err = fails(&root, "run", &b, "c1", &[]);
    assert!(err.contains("EOF while parsing"), "{}", err);
    assert_nothing_left(&root, "c1");
}

#[test]
fn missing_rootfs_and_mount_source_are_named() {
    if !require_root("missing_rootfs_and_mount_source_are_named") {
        return;
    }
    let s = Scratch::new("norootfs");
    let root = s.path().join("root");
    let b = bundle(s.path(), &config(&["true"], ""));
    std::fs::remove_dir(b.join("rootfs")).unwrap();
    let err = fails(&root, "create", &b, "c2", &[]);
    assert!(err.contains(&*b.join("rootfs").to_string_lossy()), "{err}");
    assert_nothing_left(&root, "c2");

    std::fs::create_dir(b.join("rootfs")).unwrap();
    let extra = r#", {"destination": "/data", "type": "bind", "source": "/nonexistent/nacre-src", "options": ["rbind"]}"#;
    std::fs::write(b.join("config.json"), config(&["true"], extra)).unwrap();
    let err = fails(&root, "create", &b, "c2", &[]);
    assert!(err.contains("/nonexistent/nacre-src"), "{}", err);
    assert_nothing_left(&root, "c2");
}

/// A bad configuration file or an unknown `io.nacre.*` annotation stops
/// `create` before anything exists, with the file or the key named.
#[test]
fn bad_configuration_and_annotations_are_named() {
    if !require_root("bad_configuration_and_annotations_are_named") {
        return;
    }
    let s = Scratch::new("badconf");
    let root = s.path().join("root");
    let b = bundle(s.path(), &config(&["true"], ""));
    let file = s.path().join("config.toml");
    std::fs::write(&file, "[vm]\nmemory_mib = 16\n").unwrap();
    let err = fails(
        &root,
        "create",
        &b,
        "c4",
        &[("NACRE_CONFIG", file.as_os_str())],
    );
    assert!(
        err.contains(&*file.to_string_lossy()) && err.contains("memory_mib = 16"),
        "{err}"
    );
    assert_nothing_left(&root, "c4");

    let spec = config(&["true"], "").replace(
        r#""hostname""#,
        r#""annotations": {"io.nacre.vm.gpus": "1"}, "hostname""#,
    );
    std::fs::write(b.join("config.json"), spec).unwrap();
    let err = fails(
        &root,
        "run",
        &b,
        "c4",
        &[("NACRE_CONFIG", std::ffi::OsStr::new(""))],
    );
    assert!(
        err.contains("io.nacre.vm.gpus") && err.contains("io.nacre.vm.memory_mib"),
        "{err}"
    );
    assert_nothing_left(&root, "c4");
}

#[test]
fn unknown_id_is_reported_by_every_command() {
    let s = Scratch::new("unknown");
    let root = s.path().join("root");
    for args in [
        vec!["state", "ghost"],
        vec!["start", "ghost"],
        vec!["kill", "ghost", "KILL"],
        vec!["delete", "ghost"],
        vec!["pause", "ghost"],
        vec!["resume", "ghost"],
        vec!["ps", "ghost"],
        vec!["exec", "ghost", "true"],
        vec!["update", "--pids-limit", "5", "ghost"],
        vec!["events", "--stats", "ghost"],
    ] {
        let o = nacre()
            .arg("--root")
            .arg(&root)
            .args(&args)
            .output()
            .unwrap();
        assert!(!o.status.success(), "{args:?}");
        assert!(
            stderr(&o).contains("container ghost does not exist"),
            "{args:?}: {}",
            stderr(&o)
        );
        // runc: exec's failures exit 255, the other commands' 1.
        let want = if args[0] == "exec" { 255 } else { 1 };
        assert_eq!(o.status.code(), Some(want), "{args:?}");
    }
    // runc: a forced delete of a missing container succeeds.
    let o = nacre()
        .arg("--root")
        .arg(&root)
        .args(["delete", "-f", "ghost"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!root.join("ghost").exists());
}

#[test]
fn bad_signal_and_bad_id() {
    let s = Scratch::new("badsig");
    let root = s.path().join("root");
    let o = nacre()
        .arg("--root")
        .arg(&root)
        .args(["kill", "c", "FOO"])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(stderr(&o).contains("unknown signal FOO"), "{}", stderr(&o));
    let o = nacre()
        .arg("--root")
        .arg(&root)
        .args(["state", "../etc"])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("invalid container id"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn duplicate_id_is_refused_and_the_existing_one_kept() {
    if !require_root("duplicate_id_is_refused_and_the_existing_one_kept") {
        return;
    }
    let s = Scratch::new("dup");
    let root = s.path().join("root");
    std::fs::create_dir_all(root.join("d1")).unwrap();
    std::fs::write(root.join("d1/marker"), "x").unwrap();
    let b = bundle(s.path(), &config(&["true"], ""));
    let err = fails(&root, "create", &b, "d1", &[]);
    assert!(err.contains("container d1 already exists"), "{}", err);
    assert!(
        root.join("d1/marker").exists(),
        "the existing container was touched"
    );
}

/// Security review L6: an id whose VM run directory (the short one under
/// `/run/nacre-vm`, used when the root is long) is a live VMM's is
/// refused, and that directory and its VMM are left alone. (The directory
/// names are 128 bits of SHA-256, so nobody can choose such an id; the
/// stand-in VMM below plays the collision.)
#[test]
fn a_run_directory_in_use_by_a_live_vmm_is_never_removed() {
    use std::os::unix::process::CommandExt;
    if !require_root("a_run_directory_in_use_by_a_live_vmm_is_never_removed") {
        return;
    }
    let s = Scratch::new("rundir-in-use");
    let root = s.path().join("r".repeat(90));
    let id = "victim-of-a-collision";
    let vm_dir = nacre_runtime::container::paths::ContainerPaths::new(&root, id)
        .unwrap()
        .vm_dir();
    assert!(vm_dir.starts_with("/run/nacre-vm"), "{}", vm_dir.display());
    std::fs::create_dir_all(&vm_dir).unwrap();
    std::fs::write(vm_dir.join("vsock.sock"), "another VM's socket").unwrap();
    let mut vmm = std::process::Command::new("sh")
        .arg0("nacre-vmm")
        .args(["-c", "sleep 100; :"])
        .arg(&vm_dir)
        .spawn()
        .unwrap();
    std::fs::write(vm_dir.join("vmm.pid"), vmm.id().to_string()).unwrap();
    // Once the stand-in has exec'd (its command line is its own).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while nacre_runtime::container::process::vmm_in(&vm_dir, &[]).is_none()
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let b = bundle(s.path(), &config(&["true"], ""));
    // A guest image that would never boot: the create must stop before.
    let kernel = s.path().join("vmlinux");
    std::fs::write(&kernel, "k").unwrap();
    let vmm_bin = s.path().join("fake-vmm");
    std::fs::write(&vmm_bin, "#!/bin/sh\nexit 69\n").unwrap();
    std::fs::set_permissions(&vmm_bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    let env = [
        ("NACRE_VMM", vmm_bin.as_os_str()),
        ("NACRE_KERNEL", kernel.as_os_str()),
        ("NACRE_INITRD", kernel.as_os_str()),
        ("NACRE_TEMPLATES", OsStr::new("0")),
    ];
    let err = fails(&root, "create", &b, id, &env);
    let alive = nacre_runtime::container::process::pid_alive(vmm.id());
    let _ = vmm.kill();
    let _ = vmm.wait();
    let kept = vm_dir.join("vsock.sock").exists();
    let _ = std::fs::remove_dir_all(&vm_dir);
    assert!(
        err.contains(&format!("{} is in use by nacre-vmm pid", vm_dir.display())),
        "{err}"
    );
    assert!(alive, "the other VM's VMM was killed");
    assert!(kept, "the other VM's run directory was removed");
    assert!(!root.join(id).exists(), "a state directory was left");
}

/// Issue 17: `nacre debug-console` is refused by name while the
/// configuration does not enable it, and names an unknown sandbox.
#[test]
fn debug_console_is_refused_unless_enabled() {
    if !require_root("debug_console_is_refused_unless_enabled") {
        return;
    }
    let s = Scratch::new("debug-console");
    let root = s.path().join("root");
    let off = s.path().join("off.toml");
    std::fs::write(&off, "[vm]\nvcpus = 1\n").unwrap();
    let o = nacre()
        .env("NACRE_CONFIG", &off)
        .arg("--root")
        .arg(&root)
        .args(["debug-console", "c1"])
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains("the debug console is disabled")
            && err.contains("[debug] console = true")
            && err.contains(&*off.to_string_lossy()),
        "{err}"
    );
    let on = s.path().join("on.toml");
    std::fs::write(&on, "[debug]\nconsole = true\n").unwrap();
    let o = nacre()
        .env("NACRE_CONFIG", &on)
        .env("NACRE_SHIM_ROOT", s.path().join("shim"))
        .arg("--root")
        .arg(&root)
        .args(["debug-console", "nope"])
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains("no container nope") && err.contains("no pod sandbox nope"),
        "{err}"
    );
}

#[test]
fn vmm_failure_after_mounting_leaves_nothing() {
    if !require_root("vmm_failure_after_mounting_leaves_nothing") {
        return;
    }
    let s = Scratch::new("vmmfail");
    let root = s.path().join("root");
    let data = s.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let extra = format!(
        r#", {{"destination": "/data", "type": "bind", "source": "{}", "options": ["rbind", "ro"]}}"#,
        data.display()
    );
    let b = bundle(s.path(), &config(&["true"], &extra));
    std::fs::write(b.join("rootfs/keep"), "precious").unwrap();
    let vmm = s.path().join("fake-vmm");
    std::fs::write(
        &vmm,
        "#!/bin/sh\necho 'fake VMM: no KVM here' >&2\nexit 69\n",
    )
    .unwrap();
    std::fs::set_permissions(&vmm, std::fs::Permissions::from_mode(0o755)).unwrap();
    let kernel = s.path().join("vmlinux");
    std::fs::write(&kernel, "k").unwrap();
    let log = s.path().join("log.json");
    let o = nacre()
        .env("NACRE_VMM", &vmm)
        .env("NACRE_KERNEL", &kernel)
        .env("NACRE_INITRD", &kernel)
        .env("NACRE_SHARED_FS", "0")
        .arg("--root")
        .arg(&root)
        .arg("--log")
        .arg(&log)
        .args(["--log-format", "json", "create", "-b"])
        .arg(&b)
        .arg("c3")
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(err.contains("VMM exited"), "{err}");
    assert!(err.contains("fake VMM: no KVM here"), "{err}");
    assert_nothing_left(&root, "c3");
    // The bundle is untouched.
    assert_eq!(
        std::fs::read_to_string(b.join("rootfs/keep")).unwrap(),
        "precious"
    );
    // containerd's shim reads the last error from the JSON log.
    let logged = std::fs::read_to_string(&log).unwrap();
    let last: serde_json::Value = serde_json::from_str(logged.lines().last().unwrap()).unwrap();
    assert_eq!(last["level"], "error", "{logged}");
    assert!(
        last["msg"].as_str().unwrap().contains("VMM exited"),
        "{logged}"
    );
}

#[test]
fn spec_features_and_version() {
    let s = Scratch::new("spec");
    let o = nacre()
        .args(["spec", "--bundle"])
        .arg(s.path())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let spec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(s.path().join("config.json")).unwrap()).unwrap();
    assert_eq!(spec["root"]["path"], "rootfs");
    let o = nacre()
        .args(["spec", "--bundle"])
        .arg(s.path())
        .output()
        .unwrap();
    assert!(
        !o.status.success(),
        "an existing config.json is not overwritten"
    );
    let o = nacre()
        .args(["--rootless", "spec", "-b"])
        .arg(s.path().join("r"))
        .output();
    assert!(
        !o.unwrap().status.success(),
        "missing bundle dir is an error"
    );

    let o = nacre().arg("features").output().unwrap();
    let f: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(f["ociVersionMax"], "1.0.2");

    let o = nacre().arg("--version").output().unwrap();
    let v = stdout(&o);
    assert!(v.starts_with("nacre version "), "{v}");
    assert!(v.contains("spec: 1.0.2"), "{v}");
    assert!(v.contains("runtime: nacre (KVM VM per container)"), "{v}");

    let o = nacre()
        .args(["list", "--root"])
        .arg(s.path().join("none"))
        .args(["-f", "json"])
        .output()
        .unwrap();
    assert!(o.status.success());
    // runc's empty list, byte for byte.
    assert_eq!(stdout(&o).trim(), "null");
}

/// Runs `nacre --root ROOT ARGS...`.
fn nacre_in(root: &Path, args: &[&str]) -> std::process::Output {
    nacre()
        .arg("--root")
        .arg(root)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running nacre: {e}"))
}

#[test]
fn signal_zero_is_a_liveness_probe() {
    let s = Scratch::new("sig0");
    let root = s.path().join("root");
    for args in [
        vec!["kill", "ghost", "0"],
        vec!["kill", "--all", "ghost", "0"],
    ] {
        let o = nacre_in(&root, &args);
        // Parsed (runc accepts 0); the container is what is missing.
        assert!(
            stderr(&o).contains("container ghost does not exist"),
            "{args:?}: {}",
            stderr(&o)
        );
    }
}

#[test]
fn exec_refuses_preserve_fds_by_name() {
    let s = Scratch::new("pfds");
    let root = s.path().join("root");
    let o = nacre_in(&root, &["exec", "--preserve-fds", "2", "ghost", "true"]);
    assert_eq!(o.status.code(), Some(255));
    assert!(stderr(&o).contains("--preserve-fds 2"), "{}", stderr(&o));
    assert!(stderr(&o).contains("not supported"), "{}", stderr(&o));
}

/// `create`/`run --preserve-fds N` (N > 0) are refused by name before
/// anything exists: no descriptor of this host can reach the VM.
#[test]
fn create_refuses_preserve_fds_by_name() {
    let s = Scratch::new("cpfds");
    let root = s.path().join("root");
    let b = bundle(s.path(), &config(&["true"], ""));
    for verb in ["create", "run"] {
        let o = nacre_in(
            &root,
            &[verb, "--preserve-fds", "1", "-b", b.to_str().unwrap(), "p1"],
        );
        assert_eq!(o.status.code(), Some(1), "{verb}: {}", stderr(&o));
        assert!(
            stderr(&o).contains("--preserve-fds 1 is not supported"),
            "{verb}: {}",
            stderr(&o)
        );
        assert!(!root.join("p1").exists(), "{verb} left its state");
    }
    let o = nacre_in(
        &root,
        &[
            "create",
            "--preserve-fds",
            "0",
            "-b",
            "/nonexistent/b",
            "p1",
        ],
    );
    assert!(
        !stderr(&o).contains("preserve-fds"),
        "0 is accepted: {}",
        stderr(&o)
    );
}

#[test]
fn each_cause_is_printed_once() {
    let s = Scratch::new("once");
    let root = s.path().join("root");
    let b = s.path().join("bundle");
    std::fs::create_dir_all(b.join("config.json")).unwrap();
    std::fs::create_dir_all(b.join("rootfs")).unwrap();
    let err = fails(&root, "create", &b, "c1", &[]);
    assert_eq!(
        err.matches("Is a directory").count(),
        1,
        "the cause twice: {err}"
    );
    assert!(err.contains("config.json"), "{err}");
}

#[test]
fn oversized_spec_is_e2big_before_any_boot() {
    let s = Scratch::new("e2big");
    let root = s.path().join("root");
    let mut spec: serde_json::Value = serde_json::from_str(&config(&["true"], "")).unwrap();
    spec["process"]["env"]
        .as_array_mut()
        .unwrap()
        .push(format!("BIG={}", "x".repeat(5 << 20)).into());
    let b = bundle(s.path(), &spec.to_string());
    let err = fails(&root, "run", &b, "big", &[]);
    assert!(err.contains("argument list too long (E2BIG)"), "{err}");
    assert!(err.contains("ttrpc message limit"), "{err}");
    assert!(!err.contains("connection to the agent"), "{err}");
    assert_nothing_left(&root, "big");
}

/// ^C while `nacre run` creates the container no longer kills it half
/// way: the signal waits, the create finishes (here: fails, the VMM is a
/// stand-in), and everything is cleaned up.
#[test]
fn interrupt_during_run_create_is_queued() {
    if !require_root("interrupt_during_run_create_is_queued") {
        return;
    }
    let s = Scratch::new("sigint");
    let root = s.path().join("root");
    let b = bundle(s.path(), &config(&["true"], ""));
    let vmm = s.path().join("slow-vmm");
    std::fs::write(
        &vmm,
        "#!/bin/sh\nsleep 2\necho 'slow VMM gives up' >&2\nexit 69\n",
    )
    .unwrap();
    std::fs::set_permissions(&vmm, std::fs::Permissions::from_mode(0o755)).unwrap();
    let kernel = s.path().join("vmlinux");
    std::fs::write(&kernel, "k").unwrap();
    let child = nacre()
        .env("NACRE_VMM", &vmm)
        .env("NACRE_KERNEL", &kernel)
        .env("NACRE_INITRD", &kernel)
        .env("NACRE_SHARED_FS", "0")
        .arg("--root")
        .arg(&root)
        .args(["run", "-b"])
        .arg(&b)
        .arg("c5")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(700));
    let pid = libc::pid_t::try_from(child.id()).unwrap();
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: kill has no memory effects; the child is ours.
        unsafe { libc::kill(pid, sig) };
    }
    let o = child.wait_with_output().unwrap();
    let err = stderr(&o);
    assert_eq!(
        o.status.code(),
        Some(1),
        "killed by a signal mid-create ({:?}): {err}",
        o.status
    );
    assert!(err.contains("slow VMM gives up"), "{err}");
    assert_nothing_left(&root, "c5");
}
