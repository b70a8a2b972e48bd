//! VM tier: Docker Engine with nacre as an OCI runtime (issue 16). A
//! private `dockerd` (Debian's docker.io 20.10: own data root, exec root,
//! socket and managed containerd; no iptables, no bridge) has `nacre` in
//! its `runtimes`; dockerd drives it through containerd's runc shim, so
//! this is runc's command line as Docker really sends it: limits with
//! Docker's default swap (twice the memory), pids limits, `-i` stdin,
//! detached containers with exec, stop, kill, logs, stats, restart
//! policy, env, workdir, user, read-only rootfs, tmpfs and bind volumes.
//! Needs root, /dev/kvm, the guest image and dockerd (required under CI).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a failure is a test failure"
)]

mod common;

use std::io::Write;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;
use nacre_runtime::testing::vm_prereqs;

const IMAGE: &str = "nacre-busybox:latest";

struct Dockerd {
    child: Child,
    dir: PathBuf,
    socket: PathBuf,
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        // Containers first (each a VM), then the daemon.
        if let Ok(o) = self.docker(&["ps", "-aq"]).output() {
            for id in String::from_utf8_lossy(&o.stdout).split_whitespace() {
                let _ = self.docker(&["rm", "-f", id]).output();
            }
        }
        // SAFETY: kill(2) of the dockerd this test started.
        unsafe { libc::kill(i32::try_from(self.child.id()).unwrap_or(0), libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        for m in nacre_runtime::container::mounts::mounts_under(&self.dir) {
            let _ = Command::new("umount").arg("-l").arg(m).status();
        }
    }
}

impl Dockerd {
    fn docker(&self, args: &[&str]) -> Command {
        let mut c = Command::new("docker");
        c.arg("-H")
            .arg(format!("unix://{}", self.socket.display()))
            .args(args)
            .stdin(Stdio::null());
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.docker(args).output().unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(
            o.status.success(),
            "docker {args:?}: {}\n{}{}",
            o.status,
            stdout(&o),
            stderr(&o)
        );
        stdout(&o)
    }
}

/// A busybox rootfs tarball with `/etc/passwd` (root and a user 1000).
fn rootfs_tar(dir: &Path) -> PathBuf {
    let rootfs = dir.join("rootfs");
    std::fs::create_dir_all(rootfs.join("bin")).unwrap();
    std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).unwrap();
    for a in [
        "sh", "uname", "echo", "cat", "true", "sleep", "id", "pwd", "ls", "touch", "seq", "head",
        "sed", "trap",
    ] {
        let _ = symlink("busybox", rootfs.join("bin").join(a));
    }
    for d in ["proc", "sys", "dev", "etc", "tmp", "data", "home/user"] {
        std::fs::create_dir_all(rootfs.join(d)).unwrap();
    }
    std::fs::write(
        rootfs.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000:user:/home/user:/bin/sh\n",
    )
    .unwrap();
    std::fs::write(rootfs.join("etc/group"), "root:x:0:\nuser:x:1000:\n").unwrap();
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
    tar
}

fn start_dockerd(test: &str) -> Option<Dockerd> {
    let p = vm_prereqs(test)?;
    if !require_root(test) {
        return None;
    }
    if Command::new("dockerd").arg("--version").output().is_err() {
        assert!(
            !nacre_runtime::testing::vm_tests_required(),
            "dockerd is not installed (apt-get install docker.io)"
        );
        eprintln!("SKIPPED: dockerd is not installed");
        return None;
    }
    // Short paths: containerd's and the runtime's sockets live below.
    let dir = PathBuf::from(format!("/tmp/ndk-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    // containerd's runc shim does not pass dockerd's environment on: a
    // wrapper gives nacre its guest image.
    let wrapper = dir.join("nacre-runtime");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nexport NACRE_VMM='{}' NACRE_KERNEL='{}' NACRE_INITRD='{}'\nexec '{}' \"$@\"\n",
            p.vmm.display(),
            p.image.kernel.display(),
            p.image.initrd.display(),
            env!("CARGO_BIN_EXE_nacre"),
        ),
    )
    .unwrap();
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let config = dir.join("daemon.json");
    std::fs::write(
        &config,
        serde_json::json!({
            "iptables": false,
            "ip-masq": false,
            "bridge": "none",
            "storage-driver": "vfs",
            "runtimes": {"nacre": {"path": wrapper}},
        })
        .to_string(),
    )
    .unwrap();
    let socket = dir.join("d.sock");
    let log = std::fs::File::create(dir.join("dockerd.log")).unwrap();
    let child = Command::new("dockerd")
        .arg("--data-root")
        .arg(dir.join("data"))
        .arg("--exec-root")
        .arg(dir.join("exec"))
        .arg("--pidfile")
        .arg(dir.join("d.pid"))
        .arg("-H")
        .arg(format!("unix://{}", socket.display()))
        .arg("--config-file")
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let d = Dockerd { child, dir, socket };
    let deadline = Instant::now() + Duration::from_secs(60);
    while !d.run(&["info"]).status.success() {
        assert!(
            Instant::now() < deadline,
            "dockerd did not answer:\n{}",
            std::fs::read_to_string(d.dir.join("dockerd.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    let tar = rootfs_tar(&d.dir);
    d.ok(&["import", tar.to_str().unwrap(), IMAGE]);
    Some(d)
}

/// The cgroup files of the container's own guest cgroup.
const CGROUP_FILES: &str = "p=$(cat /proc/self/cgroup); cd /sys/fs/cgroup${p#0::} && \
                            cat memory.max memory.swap.max cpu.max pids.max";

#[test]
fn vm_docker_runs_containers_like_runc() {
    let Some(d) = start_dockerd("vm_docker") else {
        return;
    };
    let run = |args: &[&str]| -> Output {
        let mut all = vec!["run", "--rm", "--runtime", "nacre", "--network", "none"];
        all.extend_from_slice(args);
        d.run(&all)
    };

    // Output, exit code, the guest kernel.
    let o = run(&[IMAGE, "sh", "-c", "uname -r; echo to-err >&2; exit 3"]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(stdout(&o).starts_with("6.1."), "{}", stdout(&o));
    assert_ne!(stdout(&o).trim(), nacre_runtime::host::kernel_release());
    assert!(stderr(&o).contains("to-err"), "{}", stderr(&o));

    // Limits as Docker sends them: --memory (swap defaults to twice the
    // memory), --cpus, --pids-limit; the guest enforces them.
    let o = run(&[
        "--memory",
        "128m",
        "--cpus",
        "1",
        "--pids-limit",
        "50",
        IMAGE,
        "sh",
        "-c",
        CGROUP_FILES,
    ]);
    assert!(o.status.success(), "limits: {}", stderr(&o));
    assert_eq!(
        stdout(&o).lines().collect::<Vec<_>>(),
        ["134217728", "134217728", "100000 100000", "50"],
        "{}",
        stderr(&o)
    );

    // -i stdin, env, workdir, user.
    let mut child = d
        .docker(&[
            "run",
            "--rm",
            "-i",
            "--runtime",
            "nacre",
            "--network",
            "none",
            "-e",
            "GREETING=hi",
            "-w",
            "/tmp",
            "-u",
            "1000:1000",
            IMAGE,
            "sh",
            "-c",
            "cat; echo $GREETING; pwd; id -u; echo HOME=$HOME",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"from-stdin\n")
        .unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "-i: {}", stderr(&o));
    assert_eq!(
        stdout(&o),
        "from-stdin\nhi\n/tmp\n1000\nHOME=/home/user\n",
        "{}",
        stderr(&o)
    );

    // --read-only with a --tmpfs, and bind volumes rw and ro.
    let vol = d.dir.join("vol");
    std::fs::create_dir_all(&vol).unwrap();
    std::fs::write(vol.join("in"), "host-file\n").unwrap();
    let rw = format!("{}:/data", vol.display());
    let ro = format!("{}:/ro:ro", vol.display());
    let o = run(&[
        "--read-only",
        "--tmpfs",
        "/scratch",
        "-v",
        &rw,
        "-v",
        &ro,
        IMAGE,
        "sh",
        "-c",
        "cat /ro/in; echo out > /data/out; touch /scratch/ok && echo tmpfs-ok; \
         touch /rootfs-file 2>/dev/null || echo rootfs-ro; \
         touch /ro/x 2>/dev/null || echo volume-ro",
    ]);
    assert!(o.status.success(), "volumes: {}", stderr(&o));
    assert_eq!(
        stdout(&o),
        "host-file\ntmpfs-ok\nrootfs-ro\nvolume-ro\n",
        "{}",
        stderr(&o)
    );
    assert_eq!(std::fs::read_to_string(vol.join("out")).unwrap(), "out\n");
    assert!(!vol.join("x").exists());

    // Detached: exec, logs, stats, kill -s, stop, rm.
    d.ok(&[
        "run",
        "-d",
        "--name",
        "bg",
        "--runtime",
        "nacre",
        "--network",
        "none",
        "--memory",
        "64m",
        IMAGE,
        "sh",
        "-c",
        "trap 'echo got-usr1' USR1; echo started; while :; do sleep 1; done",
    ]);
    assert_eq!(d.ok(&["exec", "bg", "echo", "exec-ok"]), "exec-ok\n");
    let o = d.run(&["exec", "bg", "sh", "-c", "exit 7"]);
    assert_eq!(o.status.code(), Some(7));
    d.ok(&["kill", "-s", "USR1", "bg"]);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let logs = d.run(&["logs", "bg"]);
        let text = stdout(&logs);
        if text.contains("started") && text.contains("got-usr1") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "docker logs: {text}{}",
            stderr(&logs)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let stats = d.ok(&[
        "stats",
        "--no-stream",
        "--format",
        "{{.Name}} {{.MemUsage}}",
        "bg",
    ]);
    assert!(stats.starts_with("bg "), "{stats}");
    assert!(
        !stats.contains("0B / 0B"),
        "docker stats sees no memory use: {stats}"
    );
    d.ok(&["stop", "-t", "2", "bg"]);
    let state = d.ok(&[
        "inspect",
        "-f",
        "{{.State.Status}} {{.State.ExitCode}}",
        "bg",
    ]);
    assert!(state.starts_with("exited "), "{state}");
    d.ok(&["rm", "bg"]);

    // Past its memory limit a container is OOMKilled, as Docker reports
    // it under runc: the guest's OOM kill is raised on the host cgroup
    // that containerd's runc shim watches (the monitor's).
    let o = d.run(&[
        "run",
        "--name",
        "oom",
        "--runtime",
        "nacre",
        "--network",
        "none",
        "--memory",
        "16m",
        IMAGE,
        "sh",
        "-c",
        "x=0123456789abcdef; while :; do x=$x$x; done",
    ]);
    assert_eq!(o.status.code(), Some(137), "oom: {}", stderr(&o));
    let state = d.ok(&[
        "inspect",
        "-f",
        "{{.State.OOMKilled}} {{.State.ExitCode}}",
        "oom",
    ]);
    assert_eq!(
        state.trim(),
        "true 137",
        "docker inspect of the OOM container"
    );
    d.ok(&["rm", "oom"]);

    // Restart policy: a container that fails is restarted by dockerd.
    d.ok(&[
        "run",
        "-d",
        "--name",
        "again",
        "--runtime",
        "nacre",
        "--network",
        "none",
        "--restart",
        "on-failure:1",
        IMAGE,
        "sh",
        "-c",
        "echo run; exit 1",
    ]);
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let count = d.ok(&[
            "inspect",
            "-f",
            "{{.RestartCount}} {{.State.Status}}",
            "again",
        ]);
        if count.starts_with("1 exited") {
            break;
        }
        assert!(Instant::now() < deadline, "restart policy: {count}");
        std::thread::sleep(Duration::from_millis(500));
    }
    d.ok(&["rm", "-f", "again"]);

    // Nothing of any container is left: no VMM, no mount.
    let exec_root = d.dir.join("exec").display().to_string();
    let deadline = Instant::now() + Duration::from_secs(30);
    while nacre_vmms().iter().any(|c| c.contains(&exec_root)) {
        assert!(Instant::now() < deadline, "a VMM outlived its container");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Command lines of the live nacre-vmm processes.
fn nacre_vmms() -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(c) = std::fs::read(e.path().join("cmdline")) {
            let c = String::from_utf8_lossy(&c).replace('\0', " ");
            if c.split(' ')
                .next()
                .is_some_and(|a| a.ends_with("nacre-vmm"))
            {
                out.push(c);
            }
        }
    }
    out
}
