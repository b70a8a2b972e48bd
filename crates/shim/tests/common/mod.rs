//! A private containerd for the shim's VM tests, and a locally built OCI
//! image to run in it.
#![allow(dead_code, reason = "each test file uses a different subset")]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test helpers: a failure is a test failure"
)]

pub mod image;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The namespace every test uses.
pub const NS: &str = "nacre-test";
/// The runtime type under test.
pub const RUNTIME: &str = "io.containerd.nacre.v2";

/// A containerd of its own: temp root, state, sockets; stopped (and its
/// directory removed) on drop, even when the test fails.
pub struct Containerd {
    pub dir: PathBuf,
    child: Option<Child>,
    config: PathBuf,
    env: Vec<(String, String)>,
}

impl Containerd {
    /// Starts containerd with `PATH` leading to the shim binary and the
    /// given extra environment (guest image, VMM).
    pub fn start(name: &str, env: Vec<(String, String)>) -> Self {
        let dir = Self::dir_of(name);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("config.toml");
        std::fs::write(
            &config,
            format!(
                r#"version = 2
root = "{d}/root"
state = "{d}/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "{d}/c.sock"
[ttrpc]
  address = "{d}/c.sock.ttrpc"
"#,
                d = dir.display()
            ),
        )
        .unwrap();
        let mut c = Self {
            dir,
            child: None,
            config,
            env,
        };
        c.spawn();
        c
    }

    /// The directory of the containerd `name` (made afresh by
    /// [`Containerd::start`], removed on drop).
    pub fn dir_of(name: &str) -> PathBuf {
        PathBuf::from(format!("/tmp/nacre-ctd-{name}-{}", std::process::id()))
    }

    fn spawn(&mut self) {
        let shim = PathBuf::from(env!("CARGO_BIN_EXE_containerd-shim-nacre-v2"));
        let bin_dir = shim.parent().unwrap().to_path_buf();
        let path = format!(
            "{}:{}",
            bin_dir.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("containerd.log"))
            .unwrap();
        let child = Command::new("containerd")
            .arg("--config")
            .arg(&self.config)
            .arg("--log-level")
            .arg("debug")
            .env("PATH", path)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("containerd (Debian package containerd) must be installed");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if self.ctr(&["version"]).status.success() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "containerd did not come up:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Stops containerd (SIGTERM, then SIGKILL) and starts it again on the
    /// same state: shims must survive.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = i32::try_from(child.id()).unwrap();
            // SAFETY: signalling our own child.
            unsafe { libc::kill(pid, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.join("c.sock")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("containerd.log")).unwrap_or_default()
    }

    fn ctr_cmd(&self, args: &[&str]) -> Command {
        // No ctr call may hang the test run: a VM boot takes at most
        // a few minutes here.
        let mut cmd = Command::new("timeout");
        cmd.args(["-k", "10", "400", "ctr"])
            .arg("-a")
            .arg(self.socket())
            .args(["-n", NS])
            .args(args);
        cmd
    }

    /// Runs `ctr` with `args`, stdin from /dev/null.
    pub fn ctr(&self, args: &[&str]) -> Output {
        self.ctr_cmd(args)
            .stdin(Stdio::null())
            .output()
            .expect("ctr (Debian package containerd) must be installed")
    }

    /// Runs `ctr` with `input` on its stdin.
    pub fn ctr_input(&self, args: &[&str], input: &[u8]) -> Output {
        let mut child = self
            .ctr_cmd(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let input = input.to_vec();
        let writer = std::thread::spawn(move || {
            let _ = stdin.write_all(&input);
        });
        let out = child.wait_with_output().unwrap();
        writer.join().unwrap();
        out
    }

    /// `ctr` that must succeed; returns its stdout.
    pub fn ctr_ok(&self, args: &[&str]) -> String {
        let out = self.ctr(args);
        assert!(
            out.status.success(),
            "ctr {args:?} failed ({}):\nstdout: {}\nstderr: {}\n--- containerd log (tail) ---\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            tail(&self.log(), 60)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Imports an OCI archive as `name`.
    pub fn import(&self, archive: &Path, base_name: &str) {
        self.ctr_ok(&[
            "images",
            "import",
            "--base-name",
            base_name,
            archive.to_str().unwrap(),
        ]);
    }

    /// The task's status column in `ctr task ls` (e.g. RUNNING), if listed.
    pub fn task_status(&self, id: &str) -> Option<String> {
        let out = self.ctr_ok(&["task", "ls"]);
        out.lines()
            .filter_map(|l| {
                let cols: Vec<&str> = l.split_whitespace().collect();
                (cols.first() == Some(&id)).then(|| cols.last().unwrap_or(&"").to_string())
            })
            .next()
    }

    /// Waits until `cond` holds, up to `timeout`.
    pub fn wait_until(&self, what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
        let deadline = Instant::now() + timeout;
        while !cond() {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}\n--- containerd log (tail) ---\n{}",
                tail(&self.log(), 80)
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        // Tasks first, so no shim or VM outlives the test.
        if self.child.is_some() {
            let ids = self.ctr(&["task", "ls", "-q"]);
            for id in String::from_utf8_lossy(&ids.stdout).lines() {
                let _ = self.ctr(&["task", "kill", "-s", "SIGKILL", id]);
                let _ = self.ctr(&["task", "delete", "-f", id]);
            }
            let ids = self.ctr(&["containers", "ls", "-q"]);
            for id in String::from_utf8_lossy(&ids.stdout).lines() {
                let _ = self.ctr(&["containers", "rm", id]);
            }
        }
        self.stop();
        for m in nacre_runtime::container::mounts::mounts_under(&self.dir)
            .into_iter()
            .rev()
        {
            if let Ok(c) = std::ffi::CString::new(m) {
                // SAFETY: a NUL-terminated path.
                unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
            }
        }
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        } else {
            eprintln!("containerd directory kept: {}", self.dir.display());
        }
    }
}

pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// True when running as root; otherwise skips (or, under CI, fails).
pub fn require_root(test: &str) -> bool {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    assert!(
        !nacre_runtime::testing::vm_tests_required(),
        "test {test} needs root; it must run as root under CI / make test"
    );
    eprintln!("SKIPPED {test}: needs root");
    false
}

/// Pids of processes whose command line contains `needle`.
pub fn pids_with(needle: &str) -> Vec<u32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(needle) {
            pids.push(pid);
        }
    }
    pids
}

/// `ctr events` writing to a file (appended to) while it lives.
pub struct EventLog {
    child: Child,
    path: PathBuf,
}

impl EventLog {
    /// Starts `ctr events` of `ctd` (again after a containerd restart:
    /// its connection ends with containerd).
    pub fn start(ctd: &Containerd, path: &Path) -> Self {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap();
        let child = Command::new("ctr")
            .arg("-a")
            .arg(ctd.socket())
            .args(["-n", NS, "events"])
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(Stdio::null())
            .spawn()
            .expect("ctr (Debian package containerd) must be installed");
        Self {
            child,
            path: path.to_path_buf(),
        }
    }

    /// What was logged so far: one event per line, `<time> <namespace>
    /// <topic> <event JSON>`.
    pub fn text(&self) -> String {
        std::fs::read_to_string(&self.path).unwrap_or_default()
    }
}

impl Drop for EventLog {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
