//! VM tier: containers in a real guest. Boots the guest image with a
//! busybox rootfs appended to its initrd (a second cpio archive: the
//! kernel unpacks both), and runs containers through the agent over the
//! hybrid vsock. This covers what the host cannot: an initramfs root
//! (no pivot_root), the guest's own cgroup v2 with the pids and memory
//! controllers.
//!
//! Needs /dev/kvm, the guest image (`make guest`, or NACRE_KERNEL /
//! NACRE_INITRD) with an agent of protocol version 2 or later, and root.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use nacre_agent::container::cgroup::INTERFACE_FILES;
use nacre_runtime::agent::{AgentClient, ContainerStatus};
use nacre_runtime::sandbox::{default_boot_timeout, Sandbox};
use nacre_runtime::testing::vm_prereqs;
use nacre_runtime::vm::VmSpec;
use serde_json::{json, Value};

/// Where the appended archive puts the rootfs in the guest.
const GUEST_ROOTFS: &str = "/containers/busybox/rootfs";

/// Writes a newc cpio with a busybox rootfs at [`GUEST_ROOTFS`].
fn rootfs_cpio(dir: &Path) -> std::path::PathBuf {
    let stage = dir.join("stage");
    let root = stage.join(GUEST_ROOTFS.trim_start_matches('/'));
    let bin = root.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::copy("/bin/busybox", bin.join("busybox")).unwrap();
    for applet in ["sh", "echo", "cat", "sleep", "hostname", "true", "ls"] {
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

fn spec(args: &[&str], resources: &Value) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "ociVersion": "1.0.2",
        "root": {"path": GUEST_ROOTFS},
        "hostname": "in-vm",
        "process": {"args": args, "env": ["PATH=/bin"], "cwd": "/"},
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}
        ],
        "linux": {
            "namespaces": [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}],
            "resources": resources
        }
    }))
    .unwrap()
}

fn output(agent: &dyn AgentClient, id: &str, stderr: bool) -> String {
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

fn run(agent: &dyn AgentClient, id: &str, spec: &[u8]) -> (i32, String, String) {
    let start = Instant::now();
    agent.create_container(id, spec).unwrap();
    agent.start_container(id).unwrap();
    let out = output(agent, id, false);
    let err = output(agent, id, true);
    let status = agent.wait_process(id, "").unwrap().status;
    agent.remove_container(id).unwrap();
    eprintln!("container {id}: {:.1} s", start.elapsed().as_secs_f64());
    (status, out, err)
}

#[test]
fn containers_in_a_real_guest() {
    let Some(mut p) = vm_prereqs("containers_in_a_real_guest") else {
        return;
    };
    let dir = std::env::temp_dir().join(format!("nacre-vm-ctr-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut initrd = std::fs::read(&p.image.initrd).unwrap();
    initrd.extend(std::fs::read(rootfs_cpio(&dir)).unwrap());
    let combined = dir.join("initrd.cpio");
    std::fs::write(&combined, initrd).unwrap();
    p.image.initrd = combined;

    let spec_vm = VmSpec {
        memory_mib: 256,
        // The agent logs how long each container step took.
        extra_cmdline: Some("nacre.log=info".into()),
        ..VmSpec::new(p.image.clone())
    };
    let run_dir = dir.join("run");
    let sandbox = Sandbox::boot(&p.vmm, &spec_vm, &run_dir, default_boot_timeout())
        .unwrap_or_else(|e| panic!("boot: {e}"));
    let agent = sandbox.agent();
    let details = agent.guest_details().unwrap();
    assert!(
        details.protocol_version >= 2,
        "the image's agent (protocol {}) predates containers: rebuild it (make initrd)",
        details.protocol_version
    );

    let (status, out, err) = run(
        agent,
        "hello",
        &spec(&["sh", "-c", "echo hello; hostname; exit 7"], &json!({})),
    );
    assert_eq!(
        (status, out.as_str()),
        (7, "hello\nin-vm\n"),
        "stderr: {err}"
    );

    let (_, _, err) = run(
        agent,
        "pids",
        &spec(
            &["sh", "-c", "for i in 1 2 3 4 5 6; do sleep 5 & done; wait"],
            &json!({"pids": {"limit": 4}}),
        ),
    );
    assert!(
        err.contains("can't fork") || err.contains("Resource temporarily"),
        "{err:?}"
    );

    // Every cgroup interface file the agent writes or reads exists in a
    // container's cgroup of the built guest kernel (CPU bandwidth, swap
    // accounting...): a missing kernel option fails here, not in a pod.
    // The limits are kubelet's (swap = memory: no swap) and a quota.
    let mut cg_spec: Value = serde_json::from_slice(&spec(
        &[
            "sh",
            "-c",
            "p=$(cat /proc/self/cgroup); ls /sys/fs/cgroup${p#0::}",
        ],
        // cpus/mems: the agent enables cpuset (like cpu) for a container
        // cgroup only when it is asked for.
        &json!({"memory": {"limit": 33554432, "swap": 33554432},
                "cpu": {"quota": 50000, "period": 100000, "shares": 512,
                        "cpus": "0", "mems": "0"}}),
    ))
    .unwrap();
    cg_spec["mounts"]
        .as_array_mut()
        .unwrap()
        .push(json!({"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup"}));
    let (status, out, err) = run(
        agent,
        "cgroup-files",
        &serde_json::to_vec(&cg_spec).unwrap(),
    );
    assert_eq!(status, 0, "{err}");
    let offered: std::collections::BTreeSet<&str> = out.split_whitespace().collect();
    let missing: Vec<&&str> = INTERFACE_FILES
        .iter()
        .filter(|f| !offered.contains(**f))
        .collect();
    assert!(
        missing.is_empty(),
        "the guest kernel lacks {missing:?}; a container cgroup offers {offered:?}"
    );
    // A setting the kernel cannot honour is refused naming it.
    let e = agent
        .create_container(
            "bad-resources",
            &spec(&["true"], &json!({"unified": {"hugetlb.2MB.max": "1"}})),
        )
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("linux.resources.unified") && e.contains("hugetlb.2MB.max"),
        "{e}"
    );

    // Device control (security review M5): with containerd's default
    // device rules and capabilities (CAP_MKNOD), a serial port node can be
    // made (runc's `c *:* m`) but not opened; /dev/null still works.
    let mut dev_spec: Value = serde_json::from_slice(&spec(
        &[
            "sh",
            "-c",
            "busybox mknod /dev/s c 4 64; echo x > /dev/s && echo WROTE || echo REFUSED; \
             echo y > /dev/null && echo NULL",
        ],
        &json!({"devices": [{"allow": false, "access": "rwm"}]}),
    ))
    .unwrap();
    let caps = json!([
        "CAP_CHOWN",
        "CAP_DAC_OVERRIDE",
        "CAP_FSETID",
        "CAP_FOWNER",
        "CAP_MKNOD",
        "CAP_NET_RAW",
        "CAP_SETGID",
        "CAP_SETUID",
        "CAP_SETFCAP",
        "CAP_SETPCAP",
        "CAP_NET_BIND_SERVICE",
        "CAP_SYS_CHROOT",
        "CAP_KILL",
        "CAP_AUDIT_WRITE"
    ]);
    dev_spec["process"]["capabilities"] =
        json!({"bounding": caps, "effective": caps, "permitted": caps});
    let (status, out, err) = run(agent, "devices", &serde_json::to_vec(&dev_spec).unwrap());
    assert_eq!(
        (status, out.as_str()),
        (0, "REFUSED\nNULL\n"),
        "stderr: {err}"
    );
    assert!(err.contains("Operation not permitted"), "{err}");

    agent
        .create_container(
            "stats",
            &spec(&["sleep", "100"], &json!({"memory": {"limit": 33554432}})),
        )
        .unwrap();
    agent.start_container("stats").unwrap();
    let process = json!({"args": ["sh", "-c", "echo exec-$(hostname)"], "cwd": "/"});
    agent
        .exec_process("stats", "e1", &serde_json::to_vec(&process).unwrap())
        .unwrap();
    let mut out = Vec::new();
    loop {
        let chunk = agent.read_stdout("stats", "e1", 0).unwrap();
        if chunk.is_empty() {
            break;
        }
        out.extend(chunk);
    }
    assert_eq!(String::from_utf8_lossy(&out), "exec-in-vm\n");
    assert_eq!(agent.wait_process("stats", "e1").unwrap().status, 0);
    let stats = agent.stats_container("stats").unwrap();
    eprintln!("stats: {stats:?}");
    assert!(stats.memory_usage_bytes > 0, "{stats:?}");
    assert_eq!(stats.memory_limit_bytes, Some(32 << 20));
    agent.pause_container("stats").unwrap();
    assert_eq!(
        agent.state_container("stats").unwrap().status,
        ContainerStatus::Paused
    );
    agent.remove_container("stats").unwrap();

    for line in sandbox.vm().console().lines() {
        if line.contains("container ") {
            eprintln!("guest: {line}");
        }
    }
    let leftovers = sandbox.shutdown(Duration::from_secs(120)).unwrap();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    let _ = std::fs::remove_dir_all(&dir);
}
