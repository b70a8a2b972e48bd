//! Containers run by the real agent binary on the host (not PID 1, on a
//! Unix socket), driven through the runtime's `TtrpcAgentClient`, with a
//! busybox-static rootfs built in a temporary directory.
//!
//! These need root (namespaces, mounts, cgroups): without it they fail.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nacre_protocol::ttrpc::Code;
use nacre_runtime::agent::{
    AgentClient, AgentClientError, ClientOptions, ContainerStatus, Endpoint, TtrpcAgentClient,
};
use serde_json::{json, Value};

const AGENT: &str = env!("CARGO_BIN_EXE_nacre-agent");
const BUSYBOX: &str = "/bin/busybox";
const APPLETS: &[&str] = &[
    "sh", "echo", "cat", "id", "sleep", "hostname", "uname", "ls", "touch", "ps", "true", "tty",
    "mount", "test", "[", "mkdir", "stty", "grep", "pwd", "stat", "env",
];

fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "container tests need root (namespaces, mounts, cgroups)"
    );
}

/// The cgroup v2 hierarchy of this host.
fn cgroup_root() -> PathBuf {
    let plain = Path::new("/sys/fs/cgroup");
    if plain.join("cgroup.controllers").exists() {
        plain.to_path_buf()
    } else {
        plain.join("unified")
    }
}

fn controllers() -> Vec<String> {
    std::fs::read_to_string(cgroup_root().join("cgroup.controllers"))
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

/// The agent process and its directory, cleaned up on drop.
struct Agent {
    child: Child,
    socket: PathBuf,
    dir: PathBuf,
}

impl Agent {
    fn start(name: &str) -> Agent {
        require_root();
        let dir = std::env::temp_dir().join(format!("nacre-ctr-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let socket = dir.join("agent.sock");
        let mut child = Command::new(AGENT)
            .arg("--listen")
            .arg(format!("unix://{}", socket.display()))
            .arg("--cgroup-root")
            .arg(cgroup_root())
            .arg("--log")
            .arg("info")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let _ = tx.send(line.unwrap_or_default());
            }
        });
        let line = rx.recv_timeout(Duration::from_secs(20)).unwrap();
        assert!(line.contains("nacre-agent: ready"), "{line:?}");
        Agent { child, socket, dir }
    }

    fn client(&self) -> TtrpcAgentClient {
        TtrpcAgentClient::connect(
            Endpoint::unix(&self.socket),
            ClientOptions {
                connect_timeout: Duration::from_secs(10),
                retry_interval: Duration::from_millis(20),
                call_timeout: Duration::from_secs(20),
            },
        )
        .unwrap()
    }

    /// A fresh busybox rootfs under the agent's directory.
    fn rootfs(&self, name: &str) -> PathBuf {
        let root = self.dir.join(name).join("rootfs");
        let bin = root.join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::copy(BUSYBOX, bin.join("busybox")).unwrap();
        for applet in APPLETS {
            std::os::unix::fs::symlink("busybox", bin.join(applet)).unwrap();
        }
        for d in ["proc", "sys", "dev", "tmp", "etc"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        root
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn caps() -> Value {
    let set = json!([
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
    json!({"bounding": set, "effective": set, "permitted": set, "inheritable": [], "ambient": []})
}

/// A spec in the shape containerd/runc generate.
fn spec(rootfs: &Path, args: &[&str]) -> Value {
    json!({
        "ociVersion": "1.0.2",
        "root": {"path": rootfs, "readonly": false},
        "hostname": "nacre-test",
        "process": {
            "terminal": false,
            "user": {"uid": 0, "gid": 0},
            "args": args,
            "env": ["PATH=/bin", "TERM=xterm"],
            "cwd": "/",
            "capabilities": caps(),
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": true
        },
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
             "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
             "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
            {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
             "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs",
             "options": ["nosuid", "noexec", "nodev", "ro"]},
            {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
             "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]}
        ],
        "linux": {
            "namespaces": [
                {"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"},
                {"type": "cgroup"}
            ],
            "maskedPaths": ["/proc/kcore", "/proc/keys", "/proc/timer_list", "/sys/firmware"],
            "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys"],
            "resources": {}
        }
    })
}

fn bytes(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).unwrap()
}

/// Reads a stream to its end.
fn read_all(client: &TtrpcAgentClient, id: &str, exec_id: &str, stderr: bool) -> String {
    let mut out = Vec::new();
    loop {
        let chunk = if stderr {
            client.read_stderr(id, exec_id, 0).unwrap()
        } else {
            client.read_stdout(id, exec_id, 0).unwrap()
        };
        if chunk.is_empty() {
            return String::from_utf8_lossy(&out).into_owned();
        }
        out.extend(chunk);
    }
}

fn status_code(err: &AgentClientError) -> Code {
    match err {
        AgentClientError::Status { code, .. } => *code,
        other => panic!("not a status: {other}"),
    }
}

/// Runs a container to completion: (exit status, stdout, stderr).
fn run(agent: &Agent, id: &str, spec: &Value) -> (i32, String, String) {
    let client = agent.client();
    client.create_container(id, &bytes(spec)).unwrap();
    client.start_container(id).unwrap();
    let out = read_all(&client, id, "", false);
    let err = read_all(&client, id, "", true);
    let exit = client.wait_process(id, "").unwrap();
    remove_and_check(&client, id, spec);
    (exit.status, out, err)
}

/// Removes a container and checks its cgroup and mounts are gone.
fn remove_and_check(client: &TtrpcAgentClient, id: &str, spec: &Value) {
    client.remove_container(id).unwrap();
    let cg = cgroup_root().join("nacre").join(id);
    assert!(!cg.exists(), "{} left behind", cg.display());
    let rootfs = spec["root"]["path"].as_str().unwrap();
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mountinfo.contains(rootfs),
        "mounts of {rootfs} left on the host:\n{mountinfo}"
    );
    let err = client.state_container(id).unwrap_err();
    assert_eq!(status_code(&err), Code::NOT_FOUND, "{err}");
}

#[test]
fn echo_hello_lifecycle() {
    let agent = Agent::start("hello");
    let client = agent.client();
    let spec = spec(&agent.rootfs("hello"), &["echo", "hello"]);
    let pid = client.create_container("hello", &bytes(&spec)).unwrap();
    assert!(pid > 1);
    let state = client.state_container("hello").unwrap();
    assert_eq!(state.status, ContainerStatus::Created);
    assert_eq!(state.pid, pid);
    assert!(agent_cgroup("hello").join("cgroup.procs").exists());
    client.start_container("hello").unwrap();
    let err = client.start_container("hello").unwrap_err();
    assert_eq!(status_code(&err), Code::FAILED_PRECONDITION, "{err}");
    assert_eq!(read_all(&client, "hello", "", false), "hello\n");
    let exit = client.wait_process("hello", "").unwrap();
    assert_eq!(exit.status, 0);
    assert!(exit.exited_at > std::time::UNIX_EPOCH);
    let state = client.state_container("hello").unwrap();
    assert_eq!(state.status, ContainerStatus::Stopped);
    assert_eq!(state.exit_status, Some(0));
    remove_and_check(&client, "hello", &spec);
}

fn agent_cgroup(id: &str) -> PathBuf {
    cgroup_root().join("nacre").join(id)
}

#[test]
fn exit_status_and_stderr() {
    let agent = Agent::start("exit7");
    let spec = spec(&agent.rootfs("r"), &["sh", "-c", "echo oops >&2; exit 7"]);
    let (status, out, err) = run(&agent, "exit7", &spec);
    assert_eq!(status, 7);
    assert_eq!(out, "");
    assert_eq!(err, "oops\n");
}

#[test]
fn sigkill_while_waiting_and_reading() {
    let agent = Agent::start("kill");
    let client = agent.client();
    let spec = spec(&agent.rootfs("r"), &["sleep", "1000"]);
    client.create_container("kill", &bytes(&spec)).unwrap();
    client.start_container("kill").unwrap();
    // Blocked calls on the same connection must not starve the signal.
    let waiter = {
        let c = client.clone();
        std::thread::spawn(move || c.wait_process("kill", "").unwrap())
    };
    let reader = {
        let c = client.clone();
        std::thread::spawn(move || c.read_stdout("kill", "", 0).unwrap())
    };
    let reader2 = {
        let c = client.clone();
        std::thread::spawn(move || c.read_stderr("kill", "", 0).unwrap())
    };
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        client.state_container("kill").unwrap().status,
        ContainerStatus::Running
    );
    // Signal 0 probes a live process (runc kill <id> 0).
    client.signal_process("kill", "", 0, false).unwrap();
    let err = client.signal_process("kill", "", 1000, false).unwrap_err();
    assert_eq!(status_code(&err), Code::INVALID_ARGUMENT, "{err}");
    client.signal_process("kill", "", 9, false).unwrap();
    assert_eq!(waiter.join().unwrap().status, 137);
    assert!(reader.join().unwrap().is_empty(), "EOF after the kill");
    assert!(reader2.join().unwrap().is_empty());
    remove_and_check(&client, "kill", &spec);
}

/// Attack: a process of a container reads the memory of the container's
/// init while it waits for start (it runs in the agent's memory until its
/// execve). The agent is not dumpable: without CAP_SYS_PTRACE the read is
/// refused.
#[test]
fn a_starting_init_is_not_readable_from_its_container() {
    let agent = Agent::start("dump");
    let client = agent.client();
    let spec = spec(&agent.rootfs("r"), &["sleep", "1000"]);
    client.create_container("dump", &bytes(&spec)).unwrap();
    let process = json!({"args": ["sh", "-c",
        "grep -q nacre-agent /proc/1/cmdline && echo found-init; cat /proc/1/environ"],
        "env": ["PATH=/bin"], "cwd": "/", "user": {"uid": 0, "gid": 0},
        "capabilities": caps()});
    client.exec_process("dump", "a", &bytes(&process)).unwrap();
    let out = read_all(&client, "dump", "a", false);
    let err = read_all(&client, "dump", "a", true);
    client.wait_process("dump", "a").unwrap();
    assert!(
        out.starts_with("found-init"),
        "not the waiting init: {out:?} {err:?}"
    );
    assert_eq!(out, "found-init\n", "the agent's memory was read: {err:?}");
    assert!(
        err.contains("/proc/1/environ") && err.contains("denied"),
        "{err:?}"
    );
    remove_and_check(&client, "dump", &spec);
}

#[test]
fn exec_into_a_running_container() {
    let agent = Agent::start("exec");
    let client = agent.client();
    let spec = spec(&agent.rootfs("r"), &["sleep", "1000"]);
    let init = client.create_container("exec", &bytes(&spec)).unwrap();
    let process =
        json!({"args": ["sh", "-c", "echo exec-$(hostname)"], "env": ["PATH=/bin"], "cwd": "/"});
    // runc runs processes in a created container too.
    client.exec_process("exec", "e0", &bytes(&process)).unwrap();
    assert_eq!(read_all(&client, "exec", "e0", false), "exec-nacre-test\n");
    assert_eq!(client.wait_process("exec", "e0").unwrap().status, 0);
    assert_eq!(
        client.state_container("exec").unwrap().status,
        ContainerStatus::Created
    );
    client.start_container("exec").unwrap();
    let pid = client.exec_process("exec", "e1", &bytes(&process)).unwrap();
    assert!(pid > 0);
    assert_eq!(read_all(&client, "exec", "e1", false), "exec-nacre-test\n");
    assert_eq!(client.wait_process("exec", "e1").unwrap().status, 0);
    let err = client
        .exec_process("exec", "e1", &bytes(&process))
        .unwrap_err();
    assert_eq!(status_code(&err), Code::ALREADY_EXISTS, "{err}");
    let err = client.exec_process("exec", "e2", b"{bad").unwrap_err();
    assert_eq!(status_code(&err), Code::INVALID_ARGUMENT, "{err}");
    // The exec'd process sees the container's pid namespace: init is 1.
    let ps = json!({"args": ["sh", "-c", "cat /proc/1/cmdline; echo; echo $$"], "cwd": "/"});
    client.exec_process("exec", "e3", &bytes(&ps)).unwrap();
    let out = read_all(&client, "exec", "e3", false);
    assert!(out.starts_with("sleep"), "{out:?}");
    let pids = client.list_processes("exec").unwrap();
    assert!(pids.contains(&init), "{pids:?} lacks {init}");
    let err = client.wait_process("exec", "nope").unwrap_err();
    assert_eq!(status_code(&err), Code::NOT_FOUND, "{err}");
    remove_and_check(&client, "exec", &spec);
}

#[test]
fn stdin_to_cat_comes_back() {
    let agent = Agent::start("cat");
    let client = agent.client();
    let spec = spec(&agent.rootfs("r"), &["cat"]);
    client.create_container("cat", &bytes(&spec)).unwrap();
    client.start_container("cat").unwrap();
    assert_eq!(client.write_stdin("cat", "", b"ping\n").unwrap(), 5);
    assert_eq!(client.read_stdout("cat", "", 0).unwrap(), b"ping\n");
    client.write_stdin("cat", "", b"pong").unwrap();
    client.close_stdin("cat", "").unwrap();
    assert_eq!(read_all(&client, "cat", "", false), "pong");
    assert_eq!(client.wait_process("cat", "").unwrap().status, 0);
    remove_and_check(&client, "cat", &spec);
}

#[test]
fn terminal_process_outputs() {
    let agent = Agent::start("tty");
    let client = agent.client();
    let mut spec = spec(
        &agent.rootfs("r"),
        &[
            "sh",
            "-c",
            "[ -t 0 ] && [ -t 1 ] && echo is-a-tty; stty size; echo tty-ok",
        ],
    );
    spec["process"]["terminal"] = json!(true);
    spec["process"]["consoleSize"] = json!({"height": 40, "width": 120});
    client.create_container("tty", &bytes(&spec)).unwrap();
    client.start_container("tty").unwrap();
    let out = read_all(&client, "tty", "", false);
    assert!(out.contains("is-a-tty"), "{out:?}");
    assert!(
        out.contains("40 120"),
        "stty size from consoleSize: {out:?}"
    );
    assert!(out.contains("tty-ok"), "{out:?}");
    assert_eq!(
        read_all(&client, "tty", "", true),
        "",
        "no stderr with a tty"
    );
    assert_eq!(client.wait_process("tty", "").unwrap().status, 0);
    remove_and_check(&client, "tty", &spec);

    // An exec'd terminal process, resized while it waits for input.
    let spec = self::spec(&agent.rootfs("r2"), &["sleep", "1000"]);
    client.create_container("tty2", &bytes(&spec)).unwrap();
    client.start_container("tty2").unwrap();
    let process = json!({"args": ["sh", "-c", "read x; stty size"], "terminal": true, "cwd": "/"});
    client.exec_process("tty2", "t", &bytes(&process)).unwrap();
    client.resize_tty("tty2", "t", 33, 77).unwrap();
    client.write_stdin("tty2", "t", b"go\n").unwrap();
    let out = read_all(&client, "tty2", "t", false);
    assert!(out.contains("33 77"), "stty size after ResizeTty: {out:?}");
    assert_eq!(client.wait_process("tty2", "t").unwrap().status, 0);
    remove_and_check(&client, "tty2", &spec);
}

#[test]
fn read_only_bind_mount_and_hostname() {
    let agent = Agent::start("robind");
    let data = agent.dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("hello.txt"), "from the host\n").unwrap();
    let mut spec = spec(
        &agent.rootfs("r"),
        &[
            "sh",
            "-c",
            "cat /data/hello.txt; hostname; touch /data/x && echo wrote",
        ],
    );
    spec["mounts"].as_array_mut().unwrap().push(json!({
        "destination": "/data", "type": "bind", "source": data,
        "options": ["rbind", "ro", "nosuid", "nodev"]
    }));
    let (status, out, err) = run(&agent, "robind", &spec);
    assert_ne!(
        status, 0,
        "touch on a read-only mount must fail: {out} {err}"
    );
    assert_eq!(out, "from the host\nnacre-test\n");
    assert!(err.contains("Read-only file system"), "{err:?}");
    assert!(!data.join("x").exists());
}

/// Attack: an image whose mount destination is a symlink out of its
/// rootfs (`/data -> /srv/data`, `/cache -> ../../../../tmp/...`).
/// Safe outcome, as runc's: each resolves inside the rootfs and the
/// volume is where the container looks, not on the agent's own tree.
#[test]
fn mount_destinations_resolve_inside_the_rootfs() {
    let agent = Agent::start("sjoin");
    let data = agent.dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("hello.txt"), "from the volume\n").unwrap();
    let rootfs = agent.rootfs("r");
    std::fs::create_dir_all(rootfs.join("srv/data")).unwrap();
    std::os::unix::fs::symlink("/srv/data", rootfs.join("data")).unwrap();
    let outside = agent.dir.join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    let escape = format!("../../../../../../..{}", outside.display());
    std::os::unix::fs::symlink(&escape, rootfs.join("cache")).unwrap();
    let mut spec = spec(&rootfs, &["sh", "-c", "cat /srv/data/hello.txt; ls /cache"]);
    for dest in ["/data", "/cache"] {
        spec["mounts"].as_array_mut().unwrap().push(json!({
            "destination": dest, "type": "bind", "source": data,
            "options": ["rbind", "ro"]
        }));
    }
    let (status, out, err) = run(&agent, "sjoin", &spec);
    assert_eq!(status, 0, "{out} {err}");
    assert_eq!(out, "from the volume\nhello.txt\n", "{err}");
    // The second bind went to <rootfs>/<outside path>, made there.
    assert!(rootfs.join(outside.strip_prefix("/").unwrap()).is_dir());
    assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
}

#[test]
fn pids_limit() {
    let agent = Agent::start("pids");
    let mut spec = spec(
        &agent.rootfs("r"),
        &[
            "sh",
            "-c",
            "for i in 1 2 3 4 5 6 7 8; do sleep 5 & done; wait",
        ],
    );
    spec["linux"]["resources"] = json!({"pids": {"limit": 4}});
    if controllers().iter().any(|c| c == "pids") {
        let (status, _out, err) = run(&agent, "pids", &spec);
        assert!(
            err.contains("Resource temporarily unavailable") || err.contains("can't fork"),
            "status {status}, stderr {err:?}"
        );
    } else {
        // This host's cgroup v2 hierarchy has no pids controller (hybrid
        // cgroups): the limit is skipped with a warning, the container
        // still runs.
        eprintln!(
            "no pids controller in {}: checking that the limit is skipped",
            cgroup_root().display()
        );
        let (status, _, err) = run(&agent, "pids", &spec);
        assert_eq!(status, 0, "{err}");
    }
}

#[test]
fn device_rules_confine_and_update() {
    let agent = Agent::start("devices");
    let client = agent.client();
    let mut spec = spec(&agent.rootfs("r"), &["sleep", "1000"]);
    // containerd's default: deny everything (then runc's defaults).
    spec["linux"]["resources"] = json!({"devices": [{"allow": false, "access": "rwm"}]});
    client.create_container("devices", &bytes(&spec)).unwrap();
    client.start_container("devices").unwrap();
    // A node of major 42 ("demo/sample use": no driver). Opening it is
    // refused by the device program (EPERM) or, if let through, by the
    // kernel finding no driver (ENXIO).
    let try_open = |exec_id: &str| {
        let script = "busybox mknod /dev/k c 42 0 2>/dev/null; (true </dev/k) 2>&1; \
                      echo y >/dev/null && echo NULL";
        let process = json!({"args": ["sh", "-c", script], "env": ["PATH=/bin"], "cwd": "/",
                             "capabilities": caps()});
        client
            .exec_process("devices", exec_id, &bytes(&process))
            .unwrap();
        let out = read_all(&client, "devices", exec_id, false);
        assert_eq!(client.wait_process("devices", exec_id).unwrap().status, 0);
        out
    };
    let out = try_open("e1");
    assert!(
        out.contains("Operation not permitted") && out.ends_with("NULL\n"),
        "{out:?}"
    );
    client
        .update_container(
            "devices",
            br#"{"devices":[{"allow":true,"type":"c","major":42,"minor":0,"access":"r"}]}"#,
        )
        .unwrap();
    let out = try_open("e2");
    assert!(
        out.contains("No such device or address") && out.ends_with("NULL\n"),
        "{out:?}"
    );
    let err = client
        .update_container("devices", br#"{"devices":[{"allow":true,"access":"rwx"}]}"#)
        .unwrap_err();
    assert_eq!(status_code(&err), Code::INVALID_ARGUMENT, "{err}");
    remove_and_check(&client, "devices", &spec);
}

#[test]
fn pause_resume_stats_update() {
    let agent = Agent::start("pause");
    let client = agent.client();
    let spec = spec(
        &agent.rootfs("r"),
        &[
            "sh",
            "-c",
            "i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done; sleep 1000",
        ],
    );
    client.create_container("pause", &bytes(&spec)).unwrap();
    client.start_container("pause").unwrap();
    let err = client.resume_container("pause").unwrap_err();
    assert_eq!(status_code(&err), Code::FAILED_PRECONDITION, "{err}");
    client.pause_container("pause").unwrap();
    assert_eq!(
        client.state_container("pause").unwrap().status,
        ContainerStatus::Paused
    );
    let freeze = std::fs::read_to_string(agent_cgroup("pause").join("cgroup.freeze")).unwrap();
    assert_eq!(freeze.trim(), "1");
    client.resume_container("pause").unwrap();
    assert_eq!(
        client.state_container("pause").unwrap().status,
        ContainerStatus::Running
    );
    std::thread::sleep(Duration::from_millis(300));
    let stats = client.stats_container("pause").unwrap();
    assert!(stats.cpu_usage_usec > 0, "{stats:?}");
    if controllers().iter().any(|c| c == "memory") {
        assert!(stats.memory_usage_bytes > 0, "{stats:?}");
        client
            .update_container("pause", br#"{"memory":{"limit":67108864}}"#)
            .unwrap();
        let stats = client.stats_container("pause").unwrap();
        assert_eq!(stats.memory_limit_bytes, Some(64 << 20));
    } else {
        eprintln!("no memory controller in {}", cgroup_root().display());
    }
    let err = client.update_container("pause", b"[1,2]").unwrap_err();
    assert_eq!(status_code(&err), Code::INVALID_ARGUMENT, "{err}");
    // Removing a running (here: paused) container kills it.
    client.pause_container("pause").unwrap();
    remove_and_check(&client, "pause", &spec);
}

#[test]
fn bad_requests_get_the_right_codes() {
    let agent = Agent::start("bad");
    let client = agent.client();
    let err = client.create_container("bad", b"{not json").unwrap_err();
    assert_eq!(status_code(&err), Code::INVALID_ARGUMENT, "{err}");
    assert!(err.to_string().contains("container bad"), "{err}");

    let missing = spec(Path::new("/nonexistent/rootfs"), &["true"]);
    let err = client
        .create_container("bad", &bytes(&missing))
        .unwrap_err();
    assert_eq!(status_code(&err), Code::INVALID_ARGUMENT, "{err}");
    assert!(err.to_string().contains("/nonexistent/rootfs"), "{err}");

    let err = client
        .create_container("../x", &bytes(&missing))
        .unwrap_err();
    assert_eq!(status_code(&err), Code::INVALID_ARGUMENT, "{err}");

    let err = client.start_container("ghost").unwrap_err();
    assert_eq!(status_code(&err), Code::NOT_FOUND, "{err}");
    assert!(err.to_string().contains("ghost"), "{err}");
    let err = client.remove_container("ghost").unwrap_err();
    assert_eq!(status_code(&err), Code::NOT_FOUND, "{err}");

    let good = spec(&agent.rootfs("r"), &["sleep", "1000"]);
    client.create_container("dup", &bytes(&good)).unwrap();
    let err = client.create_container("dup", &bytes(&good)).unwrap_err();
    assert_eq!(status_code(&err), Code::ALREADY_EXISTS, "{err}");
    let err = client.signal_process("dup", "", 99_999, false).unwrap_err();
    assert_eq!(status_code(&err), Code::INVALID_ARGUMENT, "{err}");

    // A command that does not exist fails at start, with its name.
    let nocmd = spec(&agent.rootfs("r2"), &["no-such-command"]);
    client.create_container("nocmd", &bytes(&nocmd)).unwrap();
    let err = client.start_container("nocmd").unwrap_err();
    assert!(err.to_string().contains("no-such-command"), "{err}");
    client.remove_container("nocmd").unwrap();

    // runc: proc goes only on an ordinary directory; an image whose
    // /proc is a symlink is refused by name, not mounted through it.
    let planted = agent.rootfs("r4");
    std::fs::remove_dir(planted.join("proc")).unwrap();
    std::os::unix::fs::symlink("/", planted.join("proc")).unwrap();
    let err = client
        .create_container("planted", &bytes(&spec(&planted, &["true"])))
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("filesystem \"proc\" must be mounted on ordinary directory"),
        "{err}"
    );

    // A mount that cannot be made fails create with what failed.
    let mut badmount = spec(&agent.rootfs("r3"), &["true"]);
    badmount["mounts"].as_array_mut().unwrap().push(json!({
        "destination": "/x", "type": "bind", "source": "/nonexistent/src", "options": ["rbind"]
    }));
    let err = client
        .create_container("badmount", &bytes(&badmount))
        .unwrap_err();
    assert_eq!(status_code(&err), Code::INTERNAL, "{err}");
    assert!(err.to_string().contains("/nonexistent/src"), "{err}");
    assert!(!agent_cgroup("badmount").exists());

    let start = Instant::now();
    remove_and_check(&client, "dup", &good);
    assert!(start.elapsed() < Duration::from_secs(10));
}

#[test]
fn seccomp_profile_denies_mkdir() {
    let agent = Agent::start("seccomp");
    let profile = json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64"],
        "syscalls": [
            {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}
        ]
    });
    for nnp in [true, false] {
        let id = format!("seccomp-{nnp}");
        let mut spec = spec(
            &agent.rootfs(&id),
            &["sh", "-c", "mkdir /tmp/x && echo made; echo done"],
        );
        spec["linux"]["seccomp"] = profile.clone();
        spec["process"]["noNewPrivileges"] = json!(nnp);
        let (status, out, err) = run(&agent, &id, &spec);
        assert_eq!(status, 0, "{err}");
        assert_eq!(out, "done\n", "no new privileges {nnp}: {err}");
        assert!(err.contains("Operation not permitted"), "{err:?}");
    }
    let client = agent.client();
    let mut bad = spec(&agent.rootfs("bad"), &["true"]);
    bad["linux"]["seccomp"] = json!({"defaultAction": "SCMP_ACT_NOTIFY"});
    let err = client.create_container("bad", &bytes(&bad)).unwrap_err();
    assert_eq!(status_code(&err), Code::INVALID_ARGUMENT, "{err}");
}

#[test]
fn process_user_limits_and_capabilities() {
    let agent = Agent::start("proc");
    let mut spec = spec(
        &agent.rootfs("r"),
        &[
            "sh",
            "-c",
            "id -u; id -g; id -G; umask; ulimit -n; pwd; echo $FOO; grep CapEff /proc/self/status; \
             cat /proc/self/oom_score_adj",
        ],
    );
    spec["process"]["user"] =
        json!({"uid": 1000, "gid": 1001, "additionalGids": [2000], "umask": 63});
    spec["process"]["cwd"] = json!("/tmp");
    spec["process"]["env"] = json!(["PATH=/bin", "FOO=bar"]);
    spec["process"]["rlimits"] = json!([{"type": "RLIMIT_NOFILE", "hard": 512, "soft": 256}]);
    spec["process"]["oomScoreAdj"] = json!(500);
    spec["process"]["capabilities"] = json!({
        "bounding": ["CAP_KILL", "CAP_CHOWN"], "effective": ["CAP_KILL"],
        "permitted": ["CAP_KILL"], "inheritable": ["CAP_KILL"], "ambient": ["CAP_KILL"]
    });
    let (status, out, err) = run(&agent, "proc", &spec);
    assert_eq!(status, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[..7],
        ["1000", "1001", "1001 2000", "0077", "256", "/tmp", "bar"],
        "{out}"
    );
    // CAP_KILL is bit 5; a non-root user keeps it across execve only as
    // an ambient capability.
    assert_eq!(
        lines[7].split_whitespace().nth(1),
        Some("0000000000000020"),
        "{out}"
    );
    assert_eq!(lines[8], "500", "oom_score_adj: {out}");
}

/// `runc spec` and `crun spec` list ambient capabilities with an empty
/// inheritable set: the kernel cannot raise those, and runc skips them.
#[test]
fn ambient_capabilities_without_inheritable_are_skipped() {
    let agent = Agent::start("ambient");
    let mut spec = spec(
        &agent.rootfs("r"),
        &["sh", "-c", "grep CapAmb /proc/self/status"],
    );
    let set = json!(["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]);
    spec["process"]["capabilities"] = json!({
        "bounding": set, "effective": set, "permitted": set, "inheritable": [], "ambient": set
    });
    let (status, out, err) = run(&agent, "ambient", &spec);
    assert_eq!(status, 0, "{err}");
    assert_eq!(
        out.split_whitespace().nth(1),
        Some("0000000000000000"),
        "{out}"
    );
}

#[test]
fn rootfs_hardening() {
    let agent = Agent::start("harden");
    let mut spec = spec(
        &agent.rootfs("r"),
        &[
            "sh",
            "-c",
            "cat /proc/sys/kernel/shm_rmid_forced; \
             touch /x 2>/dev/null || echo root-ro; \
             echo 0 2>/dev/null > /proc/sys/kernel/shm_rmid_forced || echo sys-ro; \
             [ -s /proc/kcore ] || echo kcore-masked; \
             [ -z \"$(ls /sys/firmware)\" ] && echo firmware-masked; \
             echo ok > /dev/null && echo devnull; \
             touch /dev/shm/x && echo shm-rw",
        ],
    );
    spec["root"]["readonly"] = json!(true);
    spec["linux"]["sysctl"] = json!({"kernel.shm_rmid_forced": "1"});
    let (status, out, err) = run(&agent, "harden", &spec);
    assert_eq!(status, 0, "{err}");
    for want in [
        "1\n",
        "root-ro",
        "sys-ro",
        "kcore-masked",
        "firmware-masked",
        "devnull",
        "shm-rw",
    ] {
        assert!(out.contains(want), "{want:?} missing from {out:?} ({err})");
    }
}

#[test]
fn several_containers_at_once() {
    let agent = Agent::start("many");
    // One created-but-not-started container holds its init before execve
    // the whole time: its inherited descriptors must not keep the others'
    // output open.
    let client = agent.client();
    let held = spec(&agent.rootfs("held"), &["true"]);
    client.create_container("held", &bytes(&held)).unwrap();
    let specs: Vec<(String, Value)> = (0..4)
        .map(|i| {
            let id = format!("many-{i}");
            let spec = spec(&agent.rootfs(&id), &["sh", "-c", &format!("echo from-{i}")]);
            (id, spec)
        })
        .collect();
    let threads: Vec<_> = specs
        .into_iter()
        .map(|(id, spec)| {
            let client = agent.client();
            std::thread::spawn(move || {
                client.create_container(&id, &bytes(&spec)).unwrap();
                client.start_container(&id).unwrap();
                let out = read_all(&client, &id, "", false);
                let status = client.wait_process(&id, "").unwrap().status;
                remove_and_check(&client, &id, &spec);
                (id, out, status)
            })
        })
        .collect();
    for t in threads {
        let (id, out, status) = t.join().unwrap();
        let n = id.trim_start_matches("many-");
        assert_eq!((out, status), (format!("from-{n}\n"), 0), "{id}");
    }
    assert_eq!(
        client.state_container("held").unwrap().status,
        ContainerStatus::Created
    );
    remove_and_check(&client, "held", &held);
}

/// runc's process setup: a missing cwd is made (as root, 0755), HOME comes
/// from the container's /etc/passwd when unset or empty, an exec'd user
/// enters a cwd only root may enter (chdir before the capabilities go), a
/// tmpfs without `mode=` keeps the mode of the directory it covers, and
/// signal 0 probes a live process.
#[test]
fn runc_process_setup() {
    let agent = Agent::start("runc");
    let client = agent.client();
    let rootfs = agent.rootfs("r");
    std::fs::write(
        rootfs.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n",
    )
    .unwrap();
    let secret = rootfs.join("secret");
    std::fs::create_dir(&secret).unwrap();
    std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    let covered = rootfs.join("covered");
    std::fs::create_dir(&covered).unwrap();
    std::fs::set_permissions(
        &covered,
        std::os::unix::fs::PermissionsExt::from_mode(0o750),
    )
    .unwrap();
    let mut spec = spec(
        &rootfs,
        &[
            "sh",
            "-c",
            "pwd; echo HOME=$HOME; stat -c '%u:%g %a' /work/a/b /covered; exec sleep 1000",
        ],
    );
    spec["process"]["cwd"] = json!("/work/a/b");
    spec["process"]["user"] = json!({"uid": 1000, "gid": 1000});
    spec["mounts"].as_array_mut().unwrap().push(
        json!({"destination": "/covered", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid"]}),
    );
    client.create_container("runc", &bytes(&spec)).unwrap();
    client.start_container("runc").unwrap();
    let mut out = String::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while out.lines().count() < 4 && Instant::now() < deadline {
        let chunk = client.read_stdout("runc", "", 0).unwrap();
        if chunk.is_empty() {
            break;
        }
        out.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert_eq!(
        out,
        "/work/a/b\nHOME=/home/app\n0:0 755\n0:0 750\n",
        "stderr: {}",
        read_all(&client, "runc", "", true)
    );
    client.signal_process("runc", "", 0, false).unwrap();
    client.signal_process("runc", "", 0, true).unwrap();

    let exec = |exec_id: &str, process: &Value| -> String {
        client
            .exec_process("runc", exec_id, &bytes(process))
            .unwrap();
        let out = read_all(&client, "runc", exec_id, false);
        let err = read_all(&client, "runc", exec_id, true);
        let status = client.wait_process("runc", exec_id).unwrap().status;
        assert_eq!(status, 0, "{exec_id}: {err}");
        out
    };
    let home = json!({"args": ["sh", "-c", "echo $HOME; pwd"], "env": ["PATH=/bin", "HOME="],
                      "cwd": "/secret", "user": {"uid": 1000, "gid": 1000}, "capabilities": caps()});
    assert_eq!(exec("e1", &home), "/home/app\n/secret\n");
    let root = json!({"args": ["sh", "-c", "echo $HOME"], "env": ["PATH=/bin"], "cwd": "/"});
    assert_eq!(exec("e2", &root), "/root\n");

    // An exec's missing cwd is not made (runc neither), and says so.
    let nocwd = json!({"args": ["true"], "env": ["PATH=/bin"], "cwd": "/nowhere"});
    let err = client
        .exec_process("runc", "e3", &bytes(&nocwd))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(r#"chdir to cwd ("/nowhere") set in config.json failed"#),
        "{err}"
    );
    remove_and_check(&client, "runc", &spec);
}

/// A guest error reaches the client with its cause, in runc's words.
#[test]
fn exec_errors_carry_their_cause() {
    let agent = Agent::start("cause");
    let client = agent.client();
    let spec = spec(&agent.rootfs("r"), &["sleep", "1000"]);
    client.create_container("cause", &bytes(&spec)).unwrap();
    client.start_container("cause").unwrap();
    let ping = json!({"args": ["ping"], "env": ["PATH=/bin"], "cwd": "/"});
    let err = client
        .exec_process("cause", "e1", &bytes(&ping))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(r#"exec: "ping": executable file not found in $PATH"#),
        "{err}"
    );
    let dir = json!({"args": ["/etc"], "env": ["PATH=/bin"], "cwd": "/"});
    let err = client
        .exec_process("cause", "e2", &bytes(&dir))
        .unwrap_err()
        .to_string();
    assert!(err.contains(r#"exec: "/etc": Permission denied"#), "{err}");
    remove_and_check(&client, "cause", &spec);
}
