//! Pod and container configurations and checks shared by the CRI tests.
#![allow(dead_code, reason = "each test file uses a different subset")]
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test helpers")]

pub mod vm;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use nacre_cri_tests::containerd::{CriContainerd, TEST_IMAGE};
use nacre_cri_tests::cri::v1::{
    ContainerConfig, ContainerMetadata, ContainerState, ContainerStatus, DnsConfig, ImageSpec,
    KeyValue, LinuxContainerConfig, LinuxContainerResources, Mount, PodSandboxConfig,
    PodSandboxMetadata,
};
use nacre_cri_tests::cri::CriClient;
use nacre_cri_tests::stream::{StreamError, TerminalSize};

/// The DNS configuration every test pod asks for.
pub fn dns() -> DnsConfig {
    DnsConfig {
        servers: vec!["10.96.0.10".into()],
        searches: vec!["test.svc.cluster.local".into()],
        options: vec!["ndots:5".into()],
    }
}

pub fn pod_config(ctd: &CriContainerd, name: &str, hostname: &str) -> PodSandboxConfig {
    let logs = ctd.dir.join("logs").join(name);
    std::fs::create_dir_all(&logs).unwrap();
    PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: name.into(),
            uid: format!("uid-{name}"),
            namespace: "default".into(),
            attempt: 0,
        }),
        hostname: hostname.into(),
        log_directory: logs.to_string_lossy().into_owned(),
        dns_config: Some(dns()),
        labels: HashMap::from([("app".to_string(), name.to_string())]),
        ..Default::default()
    }
}

pub fn container_config(name: &str, command: &[&str], mounts: Vec<Mount>) -> ContainerConfig {
    ContainerConfig {
        metadata: Some(ContainerMetadata {
            name: name.into(),
            attempt: 0,
        }),
        image: Some(ImageSpec {
            image: TEST_IMAGE.into(),
            ..Default::default()
        }),
        command: command.iter().map(|s| s.to_string()).collect(),
        envs: vec![KeyValue {
            key: "PATH".into(),
            value: "/bin".into(),
        }],
        mounts,
        log_path: format!("{name}.log"),
        ..Default::default()
    }
}

/// Creates and starts a container, then waits until CRI says it runs.
pub fn run_container(
    cri: &CriClient,
    pod: &str,
    pod_cfg: &PodSandboxConfig,
    cfg: &ContainerConfig,
) -> String {
    let id = cri
        .create_container(pod, cfg, pod_cfg)
        .unwrap_or_else(|e| panic!("CreateContainer: {e}"));
    cri.start_container(&id)
        .unwrap_or_else(|e| panic!("StartContainer: {e}"));
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let st = cri.container_status(&id).unwrap();
        if st.state == ContainerState::ContainerRunning as i32 {
            return id;
        }
        assert!(
            st.state != ContainerState::ContainerExited as i32,
            "container {id} exited: {} {}",
            st.reason,
            st.message
        );
        assert!(Instant::now() < deadline, "container {id} not running");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// ExecSync that must exit 0; returns stdout.
pub fn exec_ok(cri: &CriClient, id: &str, cmd: &[&str]) -> String {
    let r = cri
        .exec_sync(id, cmd, 120)
        .unwrap_or_else(|e| panic!("ExecSync {cmd:?}: {e}"));
    assert_eq!(
        r.exit_code,
        0,
        "ExecSync {cmd:?} exited {}: {}{}",
        r.exit_code,
        String::from_utf8_lossy(&r.stdout),
        String::from_utf8_lossy(&r.stderr)
    );
    String::from_utf8_lossy(&r.stdout).into_owned()
}

/// An HTTP GET from the host; retried while the server comes up.
pub fn http_get(ip: &str, port: u16) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let attempt = (|| -> std::io::Result<String> {
            let addr = format!("{ip}:{port}").parse().unwrap();
            let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
            s.set_read_timeout(Some(Duration::from_secs(10)))?;
            s.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
            let mut out = String::new();
            s.read_to_string(&mut out)?;
            Ok(out)
        })();
        match attempt {
            Ok(body) if !body.is_empty() => return body,
            Ok(_) | Err(_) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(500))
            }
            other => panic!("HTTP GET {ip}:{port}: {other:?}"),
        }
    }
}

/// Network namespaces CNI made (`/var/run/netns/cni-*`).
pub fn cni_netns() -> Vec<String> {
    std::fs::read_dir("/var/run/netns")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("cni-"))
                .collect()
        })
        .unwrap_or_default()
}

/// The host's kernel release.
pub fn host_release() -> String {
    let out = std::process::Command::new("uname")
        .arg("-r")
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Pids of processes whose command line contains `needle` and whose
/// executable name is `exe`.
pub fn pids_of(exe: &str, needle: &str) -> Vec<u32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let raw = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let args: Vec<String> = raw
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let is_exe = args
            .first()
            .map(|a| a.rsplit('/').next() == Some(exe))
            .unwrap_or(false);
        if is_exe && args.iter().any(|a| a.contains(needle)) {
            pids.push(pid);
        }
    }
    pids
}

/// Children of `parent` whose executable name is `exe`.
pub fn children_named(parent: u32, exe: &str) -> Vec<u32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        // pid (comm) state ppid ...
        let Some((comm_part, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let comm = comm_part.split_once('(').map(|(_, c)| c).unwrap_or("");
        let ppid = rest
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(parent) && exe.starts_with(comm) {
            pids.push(pid);
        }
    }
    pids
}

pub fn alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// CRI Exec through the streaming server (WebSocket) in running container
/// `id`: stdout, stderr and a non-zero exit code apart; stdin, small and
/// over several messages (containerd 1.6 cannot close it: the commands
/// read a known length); a terminal of the size asked; an unknown
/// container refused by the Exec call.
pub fn check_exec_stream(cri: &CriClient, id: &str) {
    let start = Instant::now();
    let out = cri
        .exec_stream(
            id,
            &["sh", "-c", "echo out; echo err >&2; exit 3"],
            None,
            None,
        )
        .unwrap_or_else(|e| panic!("exec stream: {e}"));
    assert_eq!(
        (out.stdout.as_slice(), out.stderr.as_slice(), out.exit_code),
        (&b"out\n"[..], &b"err\n"[..], 3),
        "{out:?}"
    );

    let out = cri
        .exec_stream(id, &["head", "-c", "6"], Some(b"hello\nnot read"), None)
        .unwrap_or_else(|e| panic!("exec stream with stdin: {e}"));
    assert_eq!(out.stdout, b"hello\n", "{out:?}");
    assert_eq!(out.exit_code, 0, "{out:?}");
    let big = vec![b'x'; 100 * 1024];
    let out = cri
        .exec_stream(
            id,
            &["sh", "-c", "head -c 102400 | wc -c"],
            Some(&big),
            None,
        )
        .unwrap_or_else(|e| panic!("exec stream with 100 KiB of stdin: {e}"));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "102400",
        "{out:?}"
    );

    // The resize goes its own way to the process: poll for it.
    let size = TerminalSize {
        width: 111,
        height: 33,
    };
    let poll = "i=0; while [ $i -lt 100 ]; do s=$(busybox stty size 2>/dev/null); \
                [ \"$s\" = '33 111' ] && break; i=$((i+1)); sleep 0.1; done; echo \"$s\"";
    let out = cri
        .exec_stream(id, &["sh", "-c", poll], None, Some(size))
        .unwrap_or_else(|e| panic!("exec stream with a terminal: {e}"));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "33 111",
        "{out:?}"
    );
    assert_eq!(out.exit_code, 0, "{out:?}");

    let err = cri
        .exec_stream("no-such-container", &["true"], None, None)
        .unwrap_err();
    assert!(matches!(err, StreamError::Cri(_)), "{err}");
    eprintln!("streamed exec checks (5 execs): {:?}", start.elapsed());
}

pub fn limits(cpu_quota: i64, memory: i64) -> LinuxContainerResources {
    LinuxContainerResources {
        cpu_period: 100_000,
        cpu_quota,
        cpu_shares: 512,
        memory_limit_in_bytes: memory,
        memory_swap_limit_in_bytes: memory,
        oom_score_adj: 900,
        ..Default::default()
    }
}

pub fn with_limits(mut cfg: ContainerConfig, linux: LinuxContainerResources) -> ContainerConfig {
    cfg.linux = Some(LinuxContainerConfig {
        resources: Some(linux),
        ..Default::default()
    });
    cfg
}

/// The container's own guest cgroup files `files` (its cgroup path from
/// /proc/self/cgroup under CRI's read-only cgroupfs mount).
pub fn cgroup_files(cri: &CriClient, c: &str, files: &str) -> String {
    let script =
        format!("p=$(cat /proc/self/cgroup); p=${{p#0::}}; cd /sys/fs/cgroup$p && cat {files}");
    exec_ok(cri, c, &["sh", "-c", &script])
}

/// Waits until CRI reports container `id` exited; its status.
pub fn wait_exited(cri: &CriClient, id: &str) -> ContainerStatus {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let st = cri.container_status(id).unwrap();
        if st.state == ContainerState::ContainerExited as i32 {
            return st;
        }
        assert!(Instant::now() < deadline, "container {id} did not exit");
        std::thread::sleep(Duration::from_millis(200));
    }
}
