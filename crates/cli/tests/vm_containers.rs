//! VM tier: real containers in real VMs through the `nacre` binary. Each
//! test boots one VM (~30 s on hosts whose guest kernel mode is emulated),
//! so the checks are grouped: one foreground `run`, one long-running
//! container that serves the lifecycle, exec, mount and pids checks, and
//! one terminal container that ends with its VMM killed under it.
//!
//! Needs /dev/kvm, root and the guest image (NACRE_KERNEL, NACRE_INITRD);
//! under CI / `make test` a missing prerequisite fails the test.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a failure is a test failure"
)]

mod common;

use std::io::{Read, Write};
use std::os::unix::fs::symlink;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::*;
use nacre_runtime::container::console::recv_fd;
use nacre_runtime::testing::{vm_prereqs, VmPrereqs};
use serde_json::Value;

/// One VM at a time: boots are CPU-bound on emulated hosts.
static ONE_VM: Mutex<()> = Mutex::new(());

const APPLETS: &[&str] = &[
    "sh", "uname", "echo", "cat", "sleep", "seq", "ls", "true", "false", "hostname", "mkdir",
    "touch", "id", "tty", "stty", "wc", "head", "ps", "kill", "sed",
];

/// The guest's cgroup2 file system in the container (no cgroup
/// namespace: the whole guest hierarchy, read through /proc/self/cgroup).
const CGROUP_MOUNT: &str =
    r#", {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup"}"#;

/// A bundle whose rootfs is busybox-static and its applet links.
fn busybox_bundle(dir: &Path, config: &str) -> PathBuf {
    let b = bundle(dir, config);
    let rootfs = b.join("rootfs");
    for d in ["bin", "proc", "sys", "dev", "tmp", "data", "etc", "root"] {
        std::fs::create_dir_all(rootfs.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).unwrap();
    for a in APPLETS {
        symlink("busybox", rootfs.join("bin").join(a)).unwrap();
    }
    b
}

struct Vm {
    _guard: std::sync::MutexGuard<'static, ()>,
    p: VmPrereqs,
    scratch: Scratch,
    root: PathBuf,
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.cleanup();
    }
}

impl Vm {
    fn new(test: &str) -> Option<Vm> {
        let p = vm_prereqs(test)?;
        if !require_root(test) {
            return None;
        }
        let guard = ONE_VM
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let scratch = Scratch::new(test);
        let root = scratch.path().join("root");
        Some(Vm {
            _guard: guard,
            p,
            scratch,
            root,
        })
    }

    /// Force-deletes every container left under the root (after a failed
    /// assertion), so no VM outlives the test.
    fn cleanup(&self) {
        if let Ok(entries) = std::fs::read_dir(&self.root) {
            for e in entries.flatten() {
                let _ = self
                    .nacre()
                    .arg("delete")
                    .arg("-f")
                    .arg(e.file_name())
                    .output();
            }
        }
    }

    fn nacre(&self) -> Command {
        let mut c = nacre();
        c.env("NACRE_VMM", &self.p.vmm)
            .env("NACRE_KERNEL", &self.p.image.kernel)
            .env("NACRE_INITRD", &self.p.image.initrd)
            .arg("--root")
            .arg(&self.root);
        c
    }

    /// Runs a command that must succeed; returns its stdout.
    fn ok(&self, args: &[&str]) -> String {
        let o = self
            .nacre()
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "nacre {args:?}: {}\n{}",
            o.status,
            stderr(&o)
        );
        stdout(&o)
    }

    fn run(&self, args: &[&str]) -> Output {
        self.nacre()
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    fn state(&self, id: &str) -> Value {
        serde_json::from_str(&self.ok(&["state", id])).unwrap()
    }

    /// `create` with its stdio away from the test's pipes (the monitor
    /// keeps them, as a container's init would).
    fn create(&self, id: &str, bundle: &Path, extra: &[&str]) {
        let err = self.scratch.path().join(format!("{id}.create.err"));
        let status = self
            .nacre()
            .args(["create", "--bundle"])
            .arg(bundle)
            .args(extra)
            .arg(id)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&err).unwrap())
            .status()
            .unwrap();
        assert!(
            status.success(),
            "create {id}: {}",
            std::fs::read_to_string(&err).unwrap()
        );
    }
}

/// Makes this process the reaper of orphans, as containerd's shim is, so
/// the monitor (whose parent `nacre create` exits) can be waited for.
fn become_subreaper() {
    // SAFETY: prctl with integer arguments only.
    let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    assert_eq!(rc, 0);
}

/// Waits for the monitor `pid` and returns its exit code.
fn wait_monitor(pid: i32, timeout: Duration) -> i32 {
    let deadline = Instant::now() + timeout;
    loop {
        let mut status = 0;
        // SAFETY: waitpid writes the status into our local.
        let rc = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        assert!(
            rc >= 0,
            "waitpid({pid}): {}",
            std::io::Error::last_os_error()
        );
        if rc == pid {
            if libc::WIFEXITED(status) {
                return libc::WEXITSTATUS(status);
            }
            return 128 + libc::WTERMSIG(status);
        }
        assert!(
            Instant::now() < deadline,
            "monitor {pid} still runs after {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn guest_release(out: &str) -> String {
    let release = out.lines().next().unwrap_or_default().trim().to_string();
    assert!(
        release.starts_with("6.1."),
        "guest kernel {release:?} is not 6.1.x"
    );
    assert_ne!(
        release,
        nacre_runtime::host::kernel_release(),
        "uname -r ran on the host"
    );
    release
}

/// Also: the VM is sized and booted as `/etc/nacre/config.toml` (here
/// `NACRE_CONFIG`) says, grown by the container's memory limit, with the
/// configured kernel parameters, and cold (`templates = false`).
#[test]
fn vm_run_prints_guest_kernel_and_exits_with_the_container_status() {
    let Some(vm) = Vm::new("vm_run_prints_guest_kernel") else {
        return;
    };
    // Limits as Docker and kubelet send them: memory with a swap limit
    // (equal: no swap) and a CPU quota; the container reads them back
    // from its guest cgroup.
    let script = "uname -r; grep MemTotal /proc/meminfo; cat /proc/cmdline; \
                  p=$(cat /proc/self/cgroup); p=${p#0::}; \
                  cat /sys/fs/cgroup$p/cpu.max /sys/fs/cgroup$p/memory.max \
                  /sys/fs/cgroup$p/memory.swap.max | sed 's/^/cgroup: /'; \
                  grep -E ' / .* virtiofs .*dax=inode' /proc/self/mountinfo \
                  >/dev/null && echo rootfs-dax; \
                  echo to-stderr >&2; read x; exit 7";
    let spec = config(&["sh", "-c", script], CGROUP_MOUNT).replace(
        r#""linux": {"#,
        r#""linux": {"resources": {"memory": {"limit": 134217728, "swap": 134217728},
                     "cpu": {"quota": 50000, "period": 100000}}, "#,
    );
    let b = busybox_bundle(vm.scratch.path(), &spec);
    let config_file = vm.scratch.path().join("config.toml");
    std::fs::write(
        &config_file,
        "[vm]\nmemory_mib = 192\nkernel_params = \"nacre.test=config\"\ntemplates = false\n\
         [debug]\nconsole = true\n",
    )
    .unwrap();
    let log = vm.scratch.path().join("nacre.log");
    let t = Instant::now();
    let trace = vm.scratch.path().join("trace.json");
    let mut run = vm
        .nacre()
        .env("NACRE_CONFIG", &config_file)
        .env("NACRE_TRACE", &trace)
        .arg("--log")
        .arg(&log)
        .args(["--log-level", "info", "run", "-b"])
        .arg(&b)
        .arg("run1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Issue 17: the debug console (enabled by this configuration) is a
    // shell in the VM outside the container: PID 1 there is the agent
    // (`init`), and the container's guest cgroup is visible. The
    // container waits on its stdin meanwhile.
    let console = debug_console(&vm, &config_file, "run1");
    assert!(console.lines().any(|l| l.trim() == "init"), "{console}");
    assert!(console.contains("cgroup-of:run1"), "{console}");
    drop(run.stdin.take());
    let o = run.wait_with_output().unwrap();
    eprintln!(
        "nacre run took {:.1} s; stderr: {}",
        t.elapsed().as_secs_f64(),
        stderr(&o)
    );
    assert_eq!(o.status.code(), Some(7), "{}", stderr(&o));
    let out = stdout(&o);
    guest_release(&out);
    assert!(stderr(&o).contains("to-stderr"), "{}", stderr(&o));
    // 192 MiB configured + the 128 MiB limit, less what the kernel keeps.
    let mem_kib: u64 = out
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no MemTotal in {out}"));
    assert!(
        (256 * 1024..=320 * 1024).contains(&mem_kib),
        "guest MemTotal {mem_kib} KiB is not a 320 MiB VM's"
    );
    assert!(out.contains("nacre.test=config"), "{out}");
    // The share is mounted for per-file DAX: the rootfs's files are mapped
    // from the host through the share's DAX window (no copy in the guest's
    // page cache; which files may be is the VMM's to say).
    assert!(out.contains("rootfs-dax"), "{out}");
    let cgroup: Vec<&str> = out
        .lines()
        .filter_map(|l| l.strip_prefix("cgroup: "))
        .collect();
    assert_eq!(cgroup, ["50000 100000", "134217728", "0"], "{out}");
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(
        log.contains("sandbox started") && log.contains("Cold(None)"),
        "templates = false did not boot cold:\n{log}"
    );
    assert_nothing_left(&vm.root, "run1");
    // Issue 17 (2): NACRE_TRACE gave one Trace Event Format file with the
    // host's steps (the CLI, the monitor) and the guest agent's.
    let events = trace_events(&trace);
    let has = |cat: &str, name: &str| {
        events
            .iter()
            .any(|e| e["ph"] == "X" && e["cat"] == cat && e["name"] == name)
    };
    for (cat, name) in [
        ("host", "cli"),
        ("host", "monitor.setup"),
        ("host", "sandbox.start"),
        ("host", "agent.CreateContainer"),
        ("host", "container.wait"),
        ("host", "agent.StartContainer"),
        ("guest", "agent.CreateContainer"),
        ("guest", "agent.create.launch"),
        ("guest", "agent.child.mounts"),
        ("guest", "agent.StartContainer"),
        ("guest", "agent.WaitProcess"),
    ] {
        assert!(has(cat, name), "no {cat} span {name} in {events:?}");
    }
    // A VM restored from a template reports its own spans, not the
    // template's boot and warm-up.
    assert!(
        !has("guest", "agent.engine.warm_up"),
        "the template's spans in {events:?}"
    );
    // The host CPU of each process, and the VMM's split (what the bench's
    // phase table reads).
    let cpu = |name: &str| events.iter().filter(|e| e["name"] == name).count();
    assert!(cpu("cpu.self") >= 2, "{events:?}");
    assert_eq!(cpu("cpu.vmm"), 1, "{events:?}");
    for e in events.iter().filter(|e| e["ph"] == "X") {
        assert!(
            e["ts"].is_u64() && e["dur"].is_u64() && e["pid"].is_u64() && e["tid"].is_u64(),
            "{e}"
        );
    }
}

/// The events of a `NACRE_TRACE` file once every process of the run has
/// added its own (the monitor writes after the CLI may have returned).
fn trace_events(file: &Path) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let doc: Option<Value> = std::fs::read(file)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        let events = doc
            .as_ref()
            .and_then(|d| d["traceEvents"].as_array().cloned())
            .unwrap_or_default();
        let monitor = events
            .iter()
            .any(|e| e["ph"] == "M" && e["args"]["name"] == "nacre monitor");
        if monitor || Instant::now() > deadline {
            assert!(doc.is_some(), "{} is not JSON", file.display());
            return events;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Runs `nacre debug-console ID` under the configuration `config` until
/// the guest's shell answers (the VM may still be booting), with a script
/// on stdin; returns what the console printed.
fn debug_console(vm: &Vm, config: &Path, id: &str) -> String {
    use std::io::Write;
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let mut c = vm
            .nacre()
            .env("NACRE_CONFIG", config)
            .args(["debug-console", id])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // It may have ended already (the container is not there yet):
        // then the write fails and the loop tries again.
        let _ = c.stdin.take().unwrap().write_all(
            b"cat /proc/1/comm; ls /sys/fs/cgroup/nacre | sed 's/^/cgroup-of:/'; exit\n",
        );
        let o = c.wait_with_output().unwrap();
        // The console answers as soon as the agent runs, which may be
        // before the container exists: until its cgroup is listed. (The
        // terminal echoes the script, hence the id in the test.)
        if o.status.success() && stdout(&o).contains(&format!("cgroup-of:{id}")) {
            return stdout(&o);
        }
        assert!(
            Instant::now() < deadline,
            "debug-console {id}: {}\n{}{}",
            o.status,
            stdout(&o),
            stderr(&o)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn vm_lifecycle_exec_readonly_mount_pids_limit() {
    let Some(vm) = Vm::new("vm_lifecycle") else {
        return;
    };
    become_subreaper();
    let data = vm.scratch.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("hello.txt"), "hello from the host\n").unwrap();
    let mounts = format!(
        r#", {{"destination": "/data", "type": "bind", "source": "{}", "options": ["rbind", "ro"]}}"#,
        data.display()
    );
    let mounts = format!("{mounts}{CGROUP_MOUNT}");
    let mut spec: Value = serde_json::from_str(&config(&["sleep", "100000"], &mounts)).unwrap();
    spec["linux"]["resources"] = serde_json::json!({"pids": {"limit": 4}});
    let b = busybox_bundle(vm.scratch.path(), &spec.to_string());
    let pid_file = vm.scratch.path().join("life.pid");
    let id = "life";

    let t = Instant::now();
    vm.create(id, &b, &["--pid-file", pid_file.to_str().unwrap()]);
    eprintln!("create took {:.1} s", t.elapsed().as_secs_f64());
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let s = vm.state(id);
    assert_eq!(s["status"], "created", "{s}");
    assert_eq!(s["id"], id);
    assert_eq!(s["pid"], pid, "{s}");
    assert_eq!(s["ociVersion"], "1.0.2");
    assert_eq!(s["bundle"], b.to_str().unwrap());
    assert_eq!(s["rootfs"], b.join("rootfs").to_str().unwrap());
    assert!(s["created"].as_str().unwrap().ends_with('Z'), "{s}");
    let listed: Value = serde_json::from_str(&vm.ok(&["list", "-f", "json"])).unwrap();
    assert_eq!(listed[0]["id"], id, "{listed}");

    vm.ok(&["start", id]);
    assert_eq!(vm.state(id)["status"], "running");
    // Issue 14: serving the share, the jailed VMM keeps uid 0 with only
    // the six capabilities the virtio-fs passthrough needs (0xdb).
    if std::env::var("NACRE_VMM_JAIL").as_deref() != Ok("0") {
        let state: Value =
            serde_json::from_slice(&std::fs::read(vm.root.join(id).join("state.json")).unwrap())
                .unwrap();
        let vmm = state["vmm_pid"].as_u64().unwrap();
        let status = std::fs::read_to_string(format!("/proc/{vmm}/status")).unwrap();
        assert!(
            status.contains("CapEff:\t00000000000000db") && status.contains("NoNewPrivs:\t1"),
            "{status}"
        );
    }
    let o = vm.run(&["start", id]);
    assert!(!o.status.success(), "a second start must fail");
    // Issue 17: a VM started while the debug console was off serves none,
    // even once the configuration enables it; the error says so.
    let on = vm.scratch.path().join("debug-on.toml");
    std::fs::write(&on, "[debug]\nconsole = true\n").unwrap();
    let o = vm
        .nacre()
        .env("NACRE_CONFIG", &on)
        .args(["debug-console", id])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("serves no debug console"),
        "{}",
        stderr(&o)
    );

    // exec (each costs seconds in an emulated guest, so one does a lot):
    // output on both streams, env, the read-only bind mount is readable,
    // the exit code, the guest kernel.
    let o = vm.run(&[
        "exec",
        "-e",
        "GREETING=hi",
        id,
        "sh",
        "-c",
        "uname -r; echo err >&2; cat /data/hello.txt; echo $GREETING; exit 5",
    ]);
    assert_eq!(o.status.code(), Some(5), "{}", stderr(&o));
    let out = stdout(&o);
    guest_release(&out);
    assert!(out.ends_with("hello from the host\nhi\n"), "{out:?}");
    assert!(stderr(&o).contains("err"), "{}", stderr(&o));

    // The read-only bind mount is not writable; the rootfs is, and the
    // write reaches the host's bundle.
    let out = vm.ok(&[
        "exec",
        id,
        "sh",
        "-c",
        "echo y > /tmp/written; if echo x > /data/new; then echo ro-broken; else echo ro-ok; fi",
    ]);
    assert!(
        out.contains("ro-ok"),
        "writing the read-only mount succeeded: {out}"
    );
    assert!(!data.join("new").exists());
    assert_eq!(
        std::fs::read_to_string(b.join("rootfs/tmp/written")).unwrap(),
        "y\n"
    );

    // update: a CPU quota reaches the container's guest cgroup (the
    // guest kernel has CFS bandwidth control).
    vm.ok(&[
        "update",
        "--cpu-quota",
        "20000",
        "--cpu-period",
        "100000",
        id,
    ]);
    let cpu_max = vm.ok(&[
        "exec",
        id,
        "sh",
        "-c",
        "p=$(cat /proc/self/cgroup); cat /sys/fs/cgroup${p#0::}/cpu.max",
    ]);
    assert_eq!(cpu_max, "20000 100000\n");

    // The pids limit (4) holds in the guest: init, sh and two sleeps fit.
    let o = vm.run(&[
        "exec",
        id,
        "sh",
        "-c",
        "for i in 1 2 3 4 5 6; do sleep 1000 & done; echo spawned",
    ]);
    let text = format!("{}{}", stdout(&o), stderr(&o));
    assert!(
        text.contains("fork") || text.contains("Resource temporarily unavailable"),
        "6 processes started under a pids limit of 4: {text}"
    );

    let ps: Value = serde_json::from_str(&vm.ok(&["ps", "-f", "json", id])).unwrap();
    assert!(ps.as_array().is_some_and(|a| !a.is_empty()), "{ps}");

    // Pause and resume.
    vm.ok(&["pause", id]);
    assert_eq!(vm.state(id)["status"], "paused");
    let o = vm.run(&["delete", id]);
    assert!(
        !o.status.success(),
        "delete of a paused container must need --force"
    );
    vm.ok(&["resume", id]);
    assert_eq!(vm.state(id)["status"], "running");

    // Kill: the monitor exits with 128+9, the state turns stopped.
    vm.ok(&["kill", id, "KILL"]);
    assert_eq!(wait_monitor(pid, Duration::from_secs(300)), 137);
    let s = vm.state(id);
    assert_eq!(s["status"], "stopped", "{s}");
    assert_eq!(s["pid"], 0, "{s}");
    let o = vm.run(&["kill", id, "KILL"]);
    assert!(!o.status.success(), "kill of a stopped container must fail");
    // runc's words, which containerd's runc shim takes for "finished".
    assert!(
        stderr(&o).contains("container not running"),
        "{}",
        stderr(&o)
    );
    vm.ok(&["delete", id]);
    assert_nothing_left(&vm.root, id);
}

#[test]
fn vm_terminal_over_console_socket_and_vmm_killed_under_it() {
    let Some(vm) = Vm::new("vm_terminal") else {
        return;
    };
    become_subreaper();
    let mut spec: Value = serde_json::from_str(&config(&["sh"], "")).unwrap();
    spec["process"]["terminal"] = Value::Bool(true);
    spec["process"]["env"] = serde_json::json!(["PATH=/bin", "TERM=xterm", "PS1=$ "]);
    let b = busybox_bundle(vm.scratch.path(), &spec.to_string());
    let sock = vm.scratch.path().join("console.sock");
    let listener = UnixListener::bind(&sock).unwrap();
    let receiver = std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        recv_fd(&stream).unwrap()
    });
    let pid_file = vm.scratch.path().join("tty.pid");
    let id = "tty";
    vm.create(
        id,
        &b,
        &[
            "--console-socket",
            sock.to_str().unwrap(),
            "--pid-file",
            pid_file.to_str().unwrap(),
        ],
    );
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let (_name, master) = receiver.join().unwrap();
    let mut master = std::fs::File::from(master);
    vm.ok(&["start", id]);

    let mut reader = master.try_clone().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<Vec<u8>>();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = reader.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let mut seen = String::new();
    let mut expect = |what: &str| {
        let deadline = Instant::now() + Duration::from_secs(300);
        while !seen.contains(what) {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(b) => seen.push_str(&String::from_utf8_lossy(&b)),
                Err(_) => panic!("no {what:?} on the terminal; saw {seen:?}"),
            }
        }
    };
    master.write_all(b"echo tty-$((40+2))\n").unwrap();
    expect("tty-42");
    master
        .write_all(b"tty; test -t 0 && echo is-a-tty\n")
        .unwrap();
    expect("is-a-tty");

    // The VMM dies under the container: the monitor notices, records the
    // container as stopped and exits with 128+9.
    let state: Value =
        serde_json::from_slice(&std::fs::read(vm.root.join(id).join("state.json")).unwrap())
            .unwrap();
    let vmm_pid = state["vmm_pid"].as_u64().unwrap();
    // SAFETY: kill(2) of the VMM this test started.
    unsafe { libc::kill(i32::try_from(vmm_pid).unwrap(), libc::SIGKILL) };
    assert_eq!(wait_monitor(pid, Duration::from_secs(300)), 137);
    assert_eq!(vm.state(id)["status"], "stopped");
    vm.ok(&["delete", id]);
    assert_nothing_left(&vm.root, id);
}

/// Live processes whose executable is `exe` and whose command line
/// contains every one of `needles`.
fn pids_of(exe: &str, needles: &[&str]) -> Vec<u32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        let first = cmdline.split(' ').next().unwrap_or_default();
        if Path::new(first).file_name().and_then(|n| n.to_str()) == Some(exe)
            && needles.iter().all(|n| cmdline.contains(n))
            && nacre_runtime::container::process::pid_alive(pid)
        {
            pids.push(pid);
        }
    }
    pids
}

fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "{what} after {timeout:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Issue 12 (6): the monitor killed with SIGKILL while it makes a VM
/// template and while it boots a VM: `nacre create` fails, and within
/// seconds no nacre-vmm, template work directory, state directory,
/// socket or mount is left (the VMM dies with its owner, --owner-fd).
#[test]
fn vm_monitor_killed_while_making_a_template_or_booting_leaves_nothing() {
    let Some(vm) = Vm::new("vm_owner_killed_mid_create") else {
        return;
    };
    let b = busybox_bundle(vm.scratch.path(), &config(&["true"], ""));
    // Short: the template's VMM sockets live below it (a Unix socket
    // path has at most 107 bytes).
    let templates = std::env::temp_dir().join(format!("ntk-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&templates);
    let root = vm.root.to_string_lossy().into_owned();
    let store = templates.to_string_lossy().into_owned();
    // (which VMM to wait for, environment)
    let cases = [
        ("making a template", store.clone(), "1"),
        ("a cold boot", root.clone(), "0"),
    ];
    for (i, (what, vmm_needle, templates_on)) in cases.iter().enumerate() {
        let id = format!("killed{i}");
        let create = vm
            .nacre()
            .env("NACRE_TEMPLATES", templates_on)
            .env("NACRE_TEMPLATE_DIR", &templates)
            .args(["create", "--bundle"])
            .arg(&b)
            .arg(&id)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        wait_for(&format!("{what}: no VMM"), Duration::from_secs(120), || {
            !pids_of("nacre-vmm", &[vmm_needle]).is_empty()
        });
        // (" monitor ": the subcommand, not a path that contains it.)
        let monitors = pids_of("nacre", &[" monitor ", &root, &id]);
        assert_eq!(monitors.len(), 1, "{what}: monitors {monitors:?}");
        // SAFETY: kill(2) of the monitor this test started.
        unsafe { libc::kill(i32::try_from(monitors[0]).unwrap(), libc::SIGKILL) };
        let out = create.wait_with_output().unwrap();
        assert!(!out.status.success(), "{what}: create succeeded");
        wait_for(
            &format!("{what}: a VMM outlived its monitor"),
            Duration::from_secs(10),
            || pids_of("nacre-vmm", &[vmm_needle]).is_empty(),
        );
        assert_nothing_left(&vm.root, &id);
        let work: Vec<_> = std::fs::read_dir(&templates)
            .map(|d| d.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default();
        assert!(
            work.iter()
                .all(|n| n == ".lock" || !n.to_string_lossy().starts_with('.')),
            "{what}: template work directory left: {work:?}"
        );
    }
    let _ = std::fs::remove_dir_all(&templates);
}

#[test]
fn vm_delete_cleans_up_after_the_monitor_was_killed() {
    let Some(vm) = Vm::new("vm_monitor_killed") else {
        return;
    };
    become_subreaper();
    let b = busybox_bundle(vm.scratch.path(), &config(&["sleep", "100000"], ""));
    let pid_file = vm.scratch.path().join("orphan.pid");
    let id = "orphan";
    vm.create(id, &b, &["--pid-file", pid_file.to_str().unwrap()]);
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let state: Value =
        serde_json::from_slice(&std::fs::read(vm.root.join(id).join("state.json")).unwrap())
            .unwrap();
    let vmm_pid = i32::try_from(state["vmm_pid"].as_u64().unwrap()).unwrap();
    // SAFETY: kill(2) of the monitor this test started.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    assert_eq!(wait_monitor(pid, Duration::from_secs(30)), 137);
    // The VM dies with its monitor (issue 12: no VM outlives its owner),
    // and every command tells the truth about it.
    wait_for(
        "the VMM outlived its monitor",
        Duration::from_secs(10),
        || !nacre_runtime::container::process::pid_alive(vmm_pid.unsigned_abs()),
    );
    assert_eq!(vm.state(id)["status"], "stopped");
    let o = vm.run(&["kill", id, "TERM"]);
    assert!(
        !o.status.success() && stderr(&o).contains("container not running"),
        "kill after the monitor died: {}",
        stderr(&o)
    );
    vm.ok(&["delete", id]);
    assert_nothing_left(&vm.root, id);
}

/// runc behaviours of issue 16 that need the guest: a missing cwd is made
/// for init, HOME comes from the container's /etc/passwd, exec works in a
/// created container and says why it fails (exit 255), `kill 0` probes,
/// `run --keep` keeps the stopped container.
#[test]
fn vm_runc_process_setup_exec_errors_and_keep() {
    let Some(vm) = Vm::new("vm_runc_compat") else {
        return;
    };
    let script = "pwd; echo HOME=$HOME; exit 3";
    let mut spec: Value = serde_json::from_str(&config(&["sh", "-c", script], "")).unwrap();
    spec["process"]["cwd"] = "/work/a".into();
    spec["process"]["user"] = serde_json::json!({"uid": 1000, "gid": 1000});
    let b = busybox_bundle(vm.scratch.path(), &spec.to_string());
    std::fs::write(
        b.join("rootfs/etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n",
    )
    .unwrap();
    let o = vm.run(&["run", "--keep", "-b", b.to_str().unwrap(), "keep"]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert_eq!(stdout(&o), "/work/a\nHOME=/home/app\n", "{}", stderr(&o));
    assert_eq!(vm.state("keep")["status"], "stopped");
    vm.ok(&["delete", "keep"]);
    assert_nothing_left(&vm.root, "keep");

    spec["process"]["args"] = serde_json::json!(["sleep", "100000"]);
    std::fs::write(b.join("config.json"), spec.to_string()).unwrap();
    vm.create("made", &b, &[]);
    let out = vm.ok(&["exec", "made", "sh", "-c", "echo $HOME; pwd"]);
    assert_eq!(out, "/home/app\n/work/a\n");
    assert_eq!(vm.state("made")["status"], "created");
    vm.ok(&["kill", "made", "0"]);
    let o = vm.run(&["exec", "made", "ping"]);
    assert_eq!(o.status.code(), Some(255), "{}", stderr(&o));
    assert!(
        stderr(&o).contains(r#"exec: "ping": executable file not found in $PATH"#),
        "{}",
        stderr(&o)
    );
    vm.ok(&["delete", "-f", "made"]);
    assert_nothing_left(&vm.root, "made");
}

/// ^C during `nacre run`'s create: queued, forwarded once the container
/// runs (its init, not a pid namespace's init, dies of it: 130), nothing
/// left behind.
#[test]
fn vm_interrupt_during_run_create_reaches_the_container() {
    let Some(vm) = Vm::new("vm_run_sigint") else {
        return;
    };
    // Without a pid namespace: a namespace's init ignores signals it has
    // no handler for, and a shell's trap may come after the forward.
    let spec = config(&["sleep", "100000"], "").replace(r#"{"type": "pid"}, "#, "");
    assert!(!spec.contains(r#""pid""#), "{spec}");
    let b = busybox_bundle(vm.scratch.path(), &spec);
    let child = vm
        .nacre()
        .args(["run", "-b"])
        .arg(&b)
        .arg("sigint")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Well inside the boot.
    std::thread::sleep(Duration::from_millis(500));
    // SAFETY: kill has no memory effects; the child is ours.
    unsafe { libc::kill(i32::try_from(child.id()).unwrap(), libc::SIGINT) };
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(130), "{:?}: {}", o.status, stderr(&o));
    assert_nothing_left(&vm.root, "sigint");
}
