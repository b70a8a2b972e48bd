//! VM tier: templates. Boots the guest image once (with a busybox rootfs
//! appended to the initrd), snapshots it into a template, restores two
//! sandboxes from that one template and checks they are two machines:
//! both answer, run containers, have their own host names and RNG output,
//! and a write in one is not seen by the other (nor by the template).
//! Then checks a damaged or mismatched template is refused by name, and
//! that the runtime boots cold after such a refusal (one more cold boot).
//!
//! Needs /dev/kvm, the guest image (`make guest`) with an agent that
//! serves `Agent.Restored`, and root.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use nacre_runtime::agent::{AgentClient, HealthStatus, RestoredIdentity};
use nacre_runtime::sandbox::{default_boot_timeout, Sandbox, SandboxError};
use nacre_runtime::template::{start_sandbox, StartKind, TemplateStore};
use nacre_runtime::testing::vm_prereqs;
use nacre_runtime::vm::VmSpec;
use serde_json::json;

const GUEST_ROOTFS: &str = "/containers/busybox/rootfs";

/// A newc cpio with a busybox rootfs at [`GUEST_ROOTFS`].
fn rootfs_cpio(dir: &Path) -> PathBuf {
    let stage = dir.join("stage");
    let root = stage.join(GUEST_ROOTFS.trim_start_matches('/'));
    let bin = root.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::copy("/bin/busybox", bin.join("busybox")).unwrap();
    for applet in ["sh", "echo", "cat", "hostname", "od", "head", "test"] {
        std::os::unix::fs::symlink("busybox", bin.join(applet)).unwrap();
    }
    for d in ["proc", "sys", "dev", "tmp"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    let out = dir.join("rootfs.cpio");
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "cd {} && find . -mindepth 1 | LC_ALL=C sort | cpio --quiet -o -H newc -R 0:0 > {}",
            stage.display(),
            out.display()
        ))
        .status()
        .unwrap();
    assert!(status.success(), "cpio failed");
    out
}

/// A container sharing the VM's UTS namespace (so `hostname` is the
/// sandbox's), with /proc and a private /dev.
fn spec(script: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "ociVersion": "1.0.2",
        "root": {"path": GUEST_ROOTFS},
        "process": {"args": ["sh", "-c", script], "env": ["PATH=/bin"], "cwd": "/"},
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}
        ],
        "linux": {"namespaces": [{"type": "pid"}, {"type": "ipc"}, {"type": "mount"}]}
    }))
    .unwrap()
}

fn drain(agent: &dyn AgentClient, id: &str, stderr: bool) -> String {
    let mut out = Vec::new();
    loop {
        let chunk = if stderr {
            agent.read_stderr(id, "", 0).unwrap()
        } else {
            agent.read_stdout(id, "", 0).unwrap()
        };
        if chunk.is_empty() {
            return String::from_utf8_lossy(&out).into_owned();
        }
        out.extend(chunk);
    }
}

fn run(agent: &dyn AgentClient, id: &str, script: &str) -> (i32, String) {
    agent.create_container(id, &spec(script)).unwrap();
    agent.start_container(id).unwrap();
    let out = drain(agent, id, false);
    let err = drain(agent, id, true);
    let status = agent.wait_process(id, "").unwrap().status;
    agent.remove_container(id).unwrap();
    eprintln!("{id}: status {status} stdout {out:?} stderr {err:?}");
    (status, out)
}

fn sha256(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned()
}

#[test]
fn two_sandboxes_from_one_template() {
    let Some(mut p) = vm_prereqs("two_sandboxes_from_one_template") else {
        return;
    };
    let dir = std::env::temp_dir().join(format!("nacre-vm-tpl-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut initrd = std::fs::read(&p.image.initrd).unwrap();
    initrd.extend(std::fs::read(rootfs_cpio(&dir)).unwrap());
    let combined = dir.join("initrd.cpio");
    std::fs::write(&combined, initrd).unwrap();
    let original_initrd = std::mem::replace(&mut p.image.initrd, combined);
    let spec_vm = VmSpec {
        memory_mib: 256,
        ..VmSpec::new(p.image.clone())
    };

    let store = TemplateStore::new(dir.join("templates"));
    let start = Instant::now();
    let template = store
        .get_or_create(&p.vmm, &spec_vm, default_boot_timeout())
        .unwrap_or_else(|e| panic!("template: {e}"));
    eprintln!(
        "template made in {:.1} s: {}",
        start.elapsed().as_secs_f64(),
        template.display()
    );
    // A second call finds it.
    assert_eq!(
        store
            .get_or_create(&p.vmm, &spec_vm, default_boot_timeout())
            .unwrap(),
        template
    );
    assert!(template.join("inputs").is_file(), "no inputs record");
    let memory = template.join("memory.bin");
    let memory_sha = sha256(&memory);

    let restore = |name: &str| {
        let identity = RestoredIdentity::new(name, name).unwrap();
        let sandbox = Sandbox::restore(
            &p.vmm,
            &template,
            &p.image,
            &[],
            &[],
            &dir.join(name),
            &Default::default(),
            &identity,
            Duration::from_secs(180),
        )
        .unwrap_or_else(|e| panic!("restore {name}: {e}"));
        eprintln!(
            "{name}: restored, agent answered in {:.3} s",
            sandbox.boot_time().as_secs_f64()
        );
        sandbox
    };
    let a = restore("sandbox-a");
    let b = restore("sandbox-b");
    for (sandbox, name) in [(&a, "sandbox-a"), (&b, "sandbox-b")] {
        assert_eq!(sandbox.agent().health().unwrap(), HealthStatus::Serving);
        assert_eq!(sandbox.agent().guest_details().unwrap().hostname, name);
    }

    let script =
        "hostname; cat /proc/sys/kernel/random/uuid; head -c 16 /dev/urandom | od -An -tx1";
    let (status_a, out_a) = run(a.agent(), "c1", script);
    let (status_b, out_b) = run(b.agent(), "c1", script);
    assert_eq!((status_a, status_b), (0, 0));
    let lines_a: Vec<&str> = out_a.lines().collect();
    let lines_b: Vec<&str> = out_b.lines().collect();
    assert_eq!(lines_a.len(), 3, "{out_a}");
    assert_eq!(lines_b.len(), 3, "{out_b}");
    assert_eq!(lines_a[0], "sandbox-a");
    assert_eq!(lines_b[0], "sandbox-b");
    assert_ne!(lines_a[1], lines_b[1], "same uuid in both sandboxes");
    assert_ne!(
        lines_a[2], lines_b[2],
        "same /dev/urandom bytes in both sandboxes"
    );

    // A write to guest RAM (the rootfs is in the initramfs) in one sandbox
    // is not seen by the other, and the template file is unchanged.
    let (status, _) = run(
        a.agent(),
        "write",
        "echo a-was-here > /tmp/marker && cat /tmp/marker",
    );
    assert_eq!(status, 0);
    let (status, out) = run(b.agent(), "read", "cat /tmp/marker || echo absent");
    assert_eq!((status, out.trim()), (0, "absent"));
    let (_, out) = run(a.agent(), "read", "cat /tmp/marker");
    assert_eq!(out.trim(), "a-was-here");

    for sandbox in [a, b] {
        let leftovers = sandbox.shutdown(Duration::from_secs(180)).unwrap();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }
    assert_eq!(
        sha256(&memory),
        memory_sha,
        "the template's memory file changed"
    );

    // A template made from another initrd is refused, by name.
    let mut other = p.image.clone();
    other.initrd = original_initrd;
    let identity = RestoredIdentity::new("x", "x").unwrap();
    let refused = Sandbox::restore(
        &p.vmm,
        &template,
        &other,
        &[],
        &[],
        &dir.join("mismatch"),
        &Default::default(),
        &identity,
        Duration::from_secs(180),
    );
    match refused {
        Err(SandboxError::TemplateRefused { reason, .. }) => {
            assert!(reason.contains("initrd"), "{reason}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert!(!dir.join("mismatch").exists());

    // A damaged state file is refused by its checksum.
    let damaged = dir.join("damaged");
    std::fs::create_dir(&damaged).unwrap();
    for f in ["header.json", "state.json"] {
        std::fs::copy(template.join(f), damaged.join(f)).unwrap();
    }
    std::os::unix::fs::symlink(&memory, damaged.join("memory.bin")).unwrap();
    let mut state = std::fs::read(damaged.join("state.json")).unwrap();
    let mid = state.len() / 2;
    state[mid] = if state[mid] == b'1' { b'2' } else { b'1' };
    std::fs::write(damaged.join("state.json"), state).unwrap();
    // A damaged memory file is refused by its checksum too: one flipped
    // byte in a sparse copy.
    let damaged_mem = dir.join("damaged-mem");
    std::fs::create_dir(&damaged_mem).unwrap();
    for f in ["header.json", "state.json"] {
        std::fs::copy(template.join(f), damaged_mem.join(f)).unwrap();
    }
    let mem_copy = damaged_mem.join("memory.bin");
    let cp = Command::new("cp")
        .arg("--sparse=always")
        .arg(&memory)
        .arg(&mem_copy)
        .status()
        .unwrap();
    assert!(cp.success());
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&mem_copy)
            .unwrap();
        let mut byte = [0u8; 1];
        f.read_exact_at(&mut byte, 0x100_0100).unwrap();
        f.write_all_at(&[byte[0] ^ 0xff], 0x100_0100).unwrap();
    }
    for (bad, file) in [(&damaged, "state.json"), (&damaged_mem, "memory.bin")] {
        let refused = Sandbox::restore(
            &p.vmm,
            bad,
            &p.image,
            &[],
            &[],
            &dir.join("damaged-run"),
            &Default::default(),
            &identity,
            Duration::from_secs(180),
        );
        match refused {
            Err(SandboxError::TemplateRefused { reason, .. }) => {
                assert!(
                    reason.contains("checksum") && reason.contains(file),
                    "{reason}"
                );
            }
            other => panic!("expected a refusal of {file}, got {other:?}"),
        }
    }
    std::fs::remove_dir_all(&damaged_mem).unwrap();

    // The runtime's path: a store whose template for this shape is the
    // damaged one. `start_sandbox` is refused, discards the template, and
    // boots cold; the sandbox works and leaves nothing behind.
    let damaged_store = TemplateStore::new(dir.join("damaged-store"));
    std::fs::create_dir_all(damaged_store.root()).unwrap();
    let planted = damaged_store
        .root()
        .join(TemplateStore::key(&p.vmm, &spec_vm).unwrap());
    std::fs::rename(&damaged, &planted).unwrap();
    assert_eq!(
        damaged_store.find(&p.vmm, &spec_vm).unwrap().as_deref(),
        Some(planted.as_path())
    );
    let identity = RestoredIdentity::new("fallback", "fallback").unwrap();
    let (sandbox, kind) = start_sandbox(
        Some(&damaged_store),
        &p.vmm,
        &spec_vm,
        &dir.join("fallback-run"),
        &identity,
        default_boot_timeout(),
    )
    .unwrap_or_else(|e| panic!("cold boot after a refused template: {e}"));
    match &kind {
        StartKind::Cold(Some(reason)) => assert!(reason.contains("checksum"), "{reason}"),
        other => panic!("expected a cold boot after a refusal, got {other:?}"),
    }
    assert!(!planted.exists(), "the refused template was kept");
    assert_eq!(sandbox.agent().health().unwrap(), HealthStatus::Serving);
    assert_eq!(
        sandbox.agent().guest_details().unwrap().hostname,
        "fallback"
    );
    let (status, out) = run(sandbox.agent(), "after-fallback", "hostname");
    assert_eq!((status, out.trim()), (0, "fallback"));
    let leftovers = sandbox.shutdown(Duration::from_secs(180)).unwrap();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    assert!(!dir.join("fallback-run").exists());
    let _ = std::fs::remove_dir_all(&dir);
}
