//! A private containerd with the CRI plugin for tests: its own config,
//! root, state and sockets in a scratch directory, runtime handlers `runc`
//! (io.containerd.runc.v2) and `nacre` (the block from
//! `deploy/containerd/nacre-runtime.toml`), CNI from Debian's
//! containernetworking-plugins (`/usr/lib/cni`: bridge + host-local, and
//! loopback which containerd adds itself) on a bridge and subnet of its
//! own, and a locally built pause image as `sandbox_image`.
//!
//! Dropping it removes every pod sandbox through CRI, stops containerd,
//! unmounts what is left under its directory, deletes the bridge and the
//! directory (kept, and named, when the test panicked).

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::cri::{CriClient, CriError};
use crate::image::{self, ImageError};

/// The pause image every sandbox uses (imported, never pulled).
pub const PAUSE_IMAGE: &str = "nacre.test/pause:latest";
/// The busybox image tests run containers from.
pub const TEST_IMAGE: &str = "nacre.test/busybox:latest";
/// The containerd namespace of the CRI plugin.
pub const CRI_NAMESPACE: &str = "k8s.io";

/// The containerd block of the `nacre` handler that clusters get.
pub const NACRE_RUNTIME_TOML: &str = include_str!("../../../deploy/containerd/nacre-runtime.toml");

/// What can go wrong setting up the private containerd.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("starting containerd (Debian package containerd): {0}")]
    Spawn(#[source] std::io::Error),
    #[error("containerd did not serve CRI within {timeout:?}: {last}\n--- containerd log (tail) ---\n{log}")]
    NotReady {
        timeout: Duration,
        last: String,
        log: String,
    },
    #[error("ctr {args}: {output}")]
    Ctr { args: String, output: String },
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error(transparent)]
    Cri(#[from] CriError),
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> HarnessError {
    let path = path.to_path_buf();
    move |source| HarnessError::Io { what, path, source }
}

/// The private containerd.
pub struct CriContainerd {
    /// Scratch directory with config, root, state, sockets, CNI files, log.
    pub dir: PathBuf,
    /// The CNI bridge of this instance.
    pub bridge: String,
    /// The pod subnet (`10.243.N.0/24`) and its gateway on the bridge.
    pub subnet: String,
    pub gateway: String,
    env: Vec<(String, String)>,
    child: Option<Child>,
}

impl std::fmt::Debug for CriContainerd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CriContainerd")
            .field("dir", &self.dir)
            .field("bridge", &self.bridge)
            .finish_non_exhaustive()
    }
}

/// The directory of the test's own binaries (`target/<profile>`), where
/// `containerd-shim-nacre-v2` is when the shim crate is built.
pub fn target_bin_dir() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let dir = exe.parent()?;
    Some(if dir.ends_with("deps") {
        dir.parent()?.to_path_buf()
    } else {
        dir.to_path_buf()
    })
}

impl CriContainerd {
    /// Writes the config and CNI conflist, starts containerd, waits for
    /// CRI, and imports the pause and test images.
    pub fn start(name: &str) -> Result<Self, HarnessError> {
        Self::start_with_env(name, Vec::new())
    }

    /// [`CriContainerd::start`] with extra environment for containerd and
    /// so for the shims it starts (guest image, VMM).
    pub fn start_with_env(name: &str, env: Vec<(String, String)>) -> Result<Self, HarnessError> {
        let pid = std::process::id();
        // Only [A-Za-z0-9-] in the path: overlay mount options split on
        // ':' and ','.
        let name: String = name
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect();
        let dir = PathBuf::from(format!("/tmp/nacre-cri-{name}-{pid}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("cni")).map_err(io("mkdir", &dir))?;
        let n = pid % 250 + 1;
        let mut me = Self {
            bridge: format!("ncri{}", pid % 100_000),
            subnet: format!("10.243.{n}.0/24"),
            gateway: format!("10.243.{n}.1"),
            dir,
            env,
            child: None,
        };
        me.write_files()?;
        me.spawn()?;
        me.wait_ready(Duration::from_secs(120))?;
        let pause = image::build(
            &me.dir.join("images/pause"),
            &[
                "sh",
                "-c",
                "trap 'exit 0' TERM INT; while :; do sleep 3600 & wait $!; done",
            ],
        )?;
        me.import(&pause, "nacre.test/pause")?;
        let busybox = image::build(&me.dir.join("images/busybox"), &["sh"])?;
        me.import(&busybox, "nacre.test/busybox")?;
        Ok(me)
    }

    fn write_files(&self) -> Result<(), HarnessError> {
        let d = self.dir.display();
        let config = format!(
            r#"version = 2
root = "{d}/root"
state = "{d}/state"
[grpc]
  address = "{d}/c.sock"
[ttrpc]
  address = "{d}/c.sock.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "{d}/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  stream_server_port = "0"
  disable_apparmor = true
  # Without CAP_SYS_RESOURCE (a container host) a pause oom_score_adj of
  # -998 is refused; keep it at or above containerd's own.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{d}/cni"
    max_conf_num = 1
  [plugins."io.containerd.grpc.v1.cri".containerd]
    default_runtime_name = "runc"
    snapshotter = "overlayfs"
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"

{NACRE_RUNTIME_TOML}
# Tests only: the nacre shim with the macvtap network model, through
# runtime options (ConfigPath: a shim configuration file; containerd 1.6
# does not pass ConfigBody on).
[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.nacre-macvtap]
  runtime_type = "io.containerd.nacre.v2"
  privileged_without_host_devices = true
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.nacre-macvtap.options]
    ConfigPath = "{d}/nacre-macvtap.toml"
"#
        );
        let path = self.dir.join("config.toml");
        std::fs::write(&path, config).map_err(io("write", &path))?;
        let path = self.dir.join("nacre-macvtap.toml");
        std::fs::write(&path, "[network]\nmodel = \"macvtap\"\n").map_err(io("write", &path))?;
        let conflist = serde_json::json!({
            "cniVersion": "0.4.0",
            "name": format!("nacre-test-{}", self.bridge),
            "plugins": [{
                "type": "bridge",
                "bridge": self.bridge,
                "isGateway": true,
                "ipMasq": false,
                "hairpinMode": true,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": self.subnet, "gateway": self.gateway}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": format!("{d}/ipam"),
                }
            }]
        });
        let path = self.dir.join("cni/10-nacre-test.conflist");
        std::fs::write(&path, conflist.to_string()).map_err(io("write", &path))
    }

    fn spawn(&mut self) -> Result<(), HarnessError> {
        let mut path = std::env::var("PATH").unwrap_or_default();
        if let Some(bin) = target_bin_dir() {
            path = format!("{}:{path}", bin.display());
        }
        let log_path = self.dir.join("containerd.log");
        let log = std::fs::File::create(&log_path).map_err(io("create", &log_path))?;
        let log2 = log.try_clone().map_err(io("dup", &log_path))?;
        let mut cmd = Command::new("containerd");
        // SAFETY: prctl is async-signal-safe; the closure touches no
        // memory shared with the parent.
        unsafe {
            cmd.pre_exec(|| {
                // containerd dies with the test thread that started it,
                // even when the test process aborts.
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        let child = cmd
            .arg("--config")
            .arg(self.dir.join("config.toml"))
            .args(["--log-level", "debug"])
            .env("PATH", path)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .map_err(HarnessError::Spawn)?;
        self.child = Some(child);
        Ok(())
    }

    fn wait_ready(&mut self, timeout: Duration) -> Result<(), HarnessError> {
        let deadline = Instant::now() + timeout;
        let mut last = String::from("socket not there yet");
        while Instant::now() < deadline {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                last = format!("containerd exited: {status}");
                break;
            }
            if self.socket().exists() {
                match self.client().and_then(|c| Ok(c.version()?)) {
                    Ok(_) => return Ok(()),
                    Err(e) => last = e.to_string(),
                }
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Err(HarnessError::NotReady {
            timeout,
            last,
            log: self.log_tail(40),
        })
    }

    /// containerd's gRPC socket (CRI is served on it).
    pub fn socket(&self) -> PathBuf {
        self.dir.join("c.sock")
    }

    /// A new CRI client on this containerd.
    pub fn client(&self) -> Result<CriClient, HarnessError> {
        Ok(CriClient::connect(&self.socket())?)
    }

    /// The last `n` lines of containerd's log.
    pub fn log_tail(&self, n: usize) -> String {
        let log = std::fs::read_to_string(self.dir.join("containerd.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Runs `ctr` on this containerd in the CRI namespace.
    pub fn ctr(&self, args: &[&str]) -> Result<String, HarnessError> {
        let out = Command::new("timeout")
            .args(["-k", "10", "300", "ctr", "-a"])
            .arg(self.socket())
            .args(["-n", CRI_NAMESPACE])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| HarnessError::Ctr {
                args: args.join(" "),
                output: e.to_string(),
            })?;
        if !out.status.success() {
            return Err(HarnessError::Ctr {
                args: args.join(" "),
                output: format!(
                    "{}: {}{}",
                    out.status,
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                ),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Imports an OCI archive as `<base_name>:latest` for CRI.
    pub fn import(&self, archive: &Path, base_name: &str) -> Result<(), HarnessError> {
        let archive = archive.to_string_lossy();
        self.ctr(&["images", "import", "--base-name", base_name, &archive])
            .map(drop)
    }

    /// Stops and removes every pod sandbox (and so every container).
    pub fn remove_all_pods(&self) -> Result<(), HarnessError> {
        let client = self.client()?;
        let mut first_error = None;
        // Every pod gets its turn even when one fails.
        for pod in client.list_pod_sandboxes()? {
            let _ = client.stop_pod_sandbox(&pod);
            if let Err(e) = client.remove_pod_sandbox(&pod) {
                eprintln!("removing pod sandbox {pod}: {e}");
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), |e| Err(e.into()))
    }

    fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Ok(pid) = i32::try_from(child.id()) {
            // SAFETY: signalling our own child, which we have not reaped.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
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

impl Drop for CriContainerd {
    fn drop(&mut self) {
        if self.child.is_some() {
            if let Err(e) = self.remove_all_pods() {
                eprintln!("removing pod sandboxes at teardown: {e}");
            }
        }
        self.stop();
        for m in nacre_runtime::container::mounts::mounts_under(&self.dir)
            .into_iter()
            .rev()
        {
            if let Ok(c) = std::ffi::CString::new(m) {
                // SAFETY: a NUL-terminated path; a failed unmount is harmless.
                unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
            }
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .stderr(Stdio::null())
            .status();
        // The shims' own root, once they left it empty (a non-empty one
        // is a leftover the test reports, kept for a look).
        for (_, root) in self.env.iter().filter(|(k, _)| k == "NACRE_SHIM_ROOT") {
            let _ = std::fs::remove_dir(root);
        }
        if std::thread::panicking() {
            eprintln!("containerd directory kept: {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
