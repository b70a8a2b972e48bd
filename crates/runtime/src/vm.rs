//! One `nacre-vmm` process and the run directory it owns.
//!
//! The run directory holds everything the VM has on the host: the control
//! socket, the hybrid vsock socket, the serial console log and the VMM's own
//! log. Dropping a [`VmProcess`] kills the VMM if it still runs and removes
//! the directory, so no failure path leaves a VM or a socket behind.

use std::fs::{self, File};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nacre_vmm_api::{
    MacAddr, NetArg, NetArgError, NetBackend, Request, Response, SharedDir, VmmArgs,
};

use crate::container::mounts::create_private_dir;
use crate::image::GuestImage;

/// The shape of a VM.
#[derive(Debug, Clone)]
pub struct VmSpec {
    pub image: GuestImage,
    pub vcpus: u8,
    pub memory_mib: u32,
    /// Appended to the kernel command line (e.g. `nacre.hostname=pod1`).
    pub extra_cmdline: Option<String>,
    /// Host directories served to the guest over virtio-fs, as (tag, path)
    /// (`nacre-vmm --shared-dir TAG=PATH`).
    pub shared_dirs: Vec<SharedDir>,
    /// virtio-net devices on tap descriptors this process holds
    /// (`nacre-vmm --net fd=N,...`; see [`crate::network::PodNetwork::vm_nets`]).
    pub nets: Vec<VmNet>,
    /// Where the VMM runs on the host (its cgroup, its OOM score).
    pub host: HostPlacement,
}

/// Where a VMM process is put on the host before it runs: the sandbox's
/// host cgroup (joined between fork and exec, so every page of the VM is
/// charged there) and its OOM score.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostPlacement {
    /// `cgroup.procs` files to join (see [`crate::host_cgroup`]).
    pub cgroup_procs: Vec<std::ffi::CString>,
    /// `/proc/self/oom_score_adj` for the VMM: never below 0, so a VM is
    /// never better protected from the OOM killer than an ordinary
    /// process (it would otherwise inherit containerd's -999).
    pub oom_score_adj: Option<i32>,
}

impl HostPlacement {
    /// In `cgroup` (if any), with the spec's OOM score `oom_score_adj`
    /// (0 when unset; never below 0, see [`HostPlacement::oom_score_adj`]).
    pub fn new(
        cgroup: Option<&crate::host_cgroup::HostCgroup>,
        oom_score_adj: Option<i32>,
    ) -> Self {
        Self {
            cgroup_procs: cgroup
                .map(crate::host_cgroup::HostCgroup::procs_files)
                .unwrap_or_default(),
            oom_score_adj: Some(oom_score_adj.unwrap_or(0)),
        }
    }

    /// Applies the placement to the calling process with raw system
    /// calls only (safe between fork and exec).
    fn apply_in_child(&self) -> std::io::Result<()> {
        crate::host_cgroup::join_self(&self.cgroup_procs)?;
        if let Some(adj) = self.oom_score_adj {
            let mut buf = [0u8; 16];
            let text = format_i32(adj.max(0), &mut buf);
            // SAFETY: a NUL-terminated literal path; open/write/close are
            // async-signal-safe and allocate nothing.
            unsafe {
                let fd = libc::open(
                    c"/proc/self/oom_score_adj".as_ptr(),
                    libc::O_WRONLY | libc::O_CLOEXEC,
                );
                if fd >= 0 {
                    libc::write(fd, text.as_ptr().cast(), text.len());
                    libc::close(fd);
                }
            }
        }
        Ok(())
    }
}

/// Formats a non-negative `n` into `buf` without allocating.
fn format_i32(n: i32, buf: &mut [u8; 16]) -> &[u8] {
    let mut v = n.unsigned_abs();
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 || i == 0 {
            break;
        }
    }
    &buf[i..]
}

/// One virtio-net device of a VM: a tap descriptor of this process, which
/// the VMM inherits (it must stay open until the VMM started), the guest
/// MAC and the MTU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmNet {
    /// None: a detached device (no host side; a template's VM).
    pub fd: Option<std::os::fd::RawFd>,
    pub mac: String,
    pub mtu: Option<u16>,
}

impl VmNet {
    /// The `--net` device (fails on a malformed MAC).
    pub fn net_arg(&self) -> Result<NetArg, VmError> {
        let mac: MacAddr = self.mac.parse().map_err(VmError::Net)?;
        Ok(NetArg {
            backend: match self.fd {
                Some(fd) => NetBackend::Fd(fd),
                None => NetBackend::Detached,
            },
            mac,
            mtu: self.mtu,
        })
    }
}

impl VmSpec {
    /// One vCPU and 256 MiB: the default sandbox shape.
    pub fn new(image: GuestImage) -> Self {
        Self {
            image,
            vcpus: 1,
            memory_mib: 256,
            extra_cmdline: None,
            shared_dirs: Vec::new(),
            nets: Vec::new(),
            host: HostPlacement::default(),
        }
    }
}

/// Errors starting or driving a VMM process.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("run directory {path}: {source}")]
    RunDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("starting {vmm}: {source}")]
    Spawn {
        vmm: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("waiting for the VMM (pid {pid}): {source}")]
    Wait {
        pid: u32,
        #[source]
        source: std::io::Error,
    },
    #[error("control socket {path}: {source}")]
    Api {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("control socket {path}: bad reply {reply:?}")]
    ApiReply { path: PathBuf, reply: String },
    #[error("--net device: {0}")]
    Net(#[source] NetArgError),
}

/// The longest answer read from a VMM's control socket.
pub const API_REPLY_MAX: u64 = 64 << 10;

/// A running (or exited) `nacre-vmm` process.
#[derive(Debug)]
pub struct VmProcess {
    child: Child,
    dir: PathBuf,
    exited: Option<ExitStatus>,
    /// The write end of the VMM's lifeline (`--owner-fd`): never written,
    /// closed by the kernel when this process dies, which stops the VM.
    _lifeline: OwnedFd,
}

/// A pipe whose ends are close-on-exec: (read, write).
fn lifeline() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two new descriptors into the array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: both descriptors were just created and nothing else owns them.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Lets the child inherit `fds` (close-on-exec cleared in the child only,
/// so no other child of this process gets them).
fn inherit_fds(cmd: &mut Command, fds: Vec<std::os::fd::RawFd>) {
    if fds.is_empty() {
        return;
    }
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs in the child between fork and exec and
    // calls only fcntl, which is async-signal-safe; it allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            for &fd in &fds {
                if libc::fcntl(fd, libc::F_SETFD, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
}

/// The `--net` devices and the tap descriptors the child must inherit.
fn net_args(nets: &[VmNet]) -> Result<(Vec<NetArg>, Vec<std::os::fd::RawFd>), VmError> {
    let args = nets.iter().map(VmNet::net_arg).collect::<Result<_, _>>()?;
    Ok((args, nets.iter().filter_map(|n| n.fd).collect()))
}

impl VmProcess {
    /// Creates `dir` (which must not exist) and starts the VMM in it.
    pub fn spawn(vmm: &Path, spec: &VmSpec, dir: &Path) -> Result<Self, VmError> {
        let (nets, fds) = net_args(&spec.nets)?;
        let args = VmmArgs {
            vcpus: spec.vcpus,
            memory_mib: u64::from(spec.memory_mib),
            cmdline: spec.extra_cmdline.clone().unwrap_or_default(),
            shared_dirs: spec.shared_dirs.clone(),
            nets,
            ..VmmArgs::boot(&spec.image.kernel, &spec.image.initrd)
        };
        Self::start(vmm, dir, &spec.host, args, fds)
    }

    /// Creates `dir` (which must not exist) and starts a VMM in it that
    /// restores the VM saved in `template` (`nacre-vmm --restore`). The
    /// VMM checks the template was made from `image`; `shared_dirs` must
    /// name one directory per share of the template, `nets` one device
    /// per network device of the template, in order, with its MTU.
    pub fn spawn_restore(
        vmm: &Path,
        template: &Path,
        image: &GuestImage,
        shared_dirs: &[SharedDir],
        nets: &[VmNet],
        dir: &Path,
        host: &HostPlacement,
    ) -> Result<Self, VmError> {
        let (nets, fds) = net_args(nets)?;
        let args = VmmArgs {
            shared_dirs: shared_dirs.to_vec(),
            nets,
            ..VmmArgs::restore(template, &image.kernel, &image.initrd)
        };
        Self::start(vmm, dir, host, args, fds)
    }

    /// Creates `dir` and starts the VMM with `args` plus the run
    /// directory's sockets and logs, its lifeline and jail; the child
    /// inherits `fds` (the taps of `args.nets`).
    fn start(
        vmm: &Path,
        dir: &Path,
        host: &HostPlacement,
        mut args: VmmArgs,
        fds: Vec<std::os::fd::RawFd>,
    ) -> Result<Self, VmError> {
        let run_dir_err = |source| VmError::RunDir {
            path: dir.to_path_buf(),
            source,
        };
        // 0700 whatever the umask: the sockets in it reach the agent and
        // the VMM's control API. Missing parents get 0700 or less; an
        // existing parent keeps its mode.
        if let Some(parent) = dir.parent() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(parent)
                .map_err(run_dir_err)?;
        }
        create_private_dir(dir).map_err(run_dir_err)?;
        let vmm_log = File::create(dir.join("vmm.log")).map_err(|source| {
            let _ = fs::remove_dir_all(dir);
            run_dir_err(source)
        })?;
        let (owner_read, owner_write) = lifeline().map_err(|source| {
            let _ = fs::remove_dir_all(dir);
            run_dir_err(source)
        })?;
        let mut cmd = Command::new(vmm);
        inherit_fds(&mut cmd, fds);
        // The VM dies with this process, however it dies.
        args.owner_fd = Some(owner_read.as_raw_fd());
        inherit_fds(&mut cmd, vec![owner_read.as_raw_fd()]);
        if *host != HostPlacement::default() {
            use std::os::unix::process::CommandExt;
            let host = host.clone();
            // SAFETY: the closure runs between fork and exec and makes
            // only open/write/close system calls on prepared buffers.
            unsafe {
                cmd.pre_exec(move || host.apply_in_child());
            }
        }
        args.jail = jail_dir(dir);
        args.serial_log = Some(dir.join("console.log"));
        args.vsock_uds = Some(dir.join("vsock.sock"));
        args.api_socket = Some(dir.join("api.sock"));
        cmd.args(args.to_args());
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(vmm_log));
        tracing::debug!(?cmd, "starting VMM");
        let spawned = cmd.spawn();
        drop(owner_read);
        match spawned {
            Ok(child) => {
                // Lets a later process find (and kill) a VMM whose owner
                // died without cleaning up.
                if let Err(e) = fs::write(dir.join("vmm.pid"), child.id().to_string()) {
                    tracing::warn!("writing {}: {e}", dir.join("vmm.pid").display());
                }
                Ok(Self {
                    child,
                    dir: dir.to_path_buf(),
                    exited: None,
                    _lifeline: owner_write,
                })
            }
            Err(source) => {
                let _ = fs::remove_dir_all(dir);
                Err(VmError::Spawn {
                    vmm: vmm.to_path_buf(),
                    source,
                })
            }
        }
    }

    /// The VMM's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The file holding the VMM's pid, written right after it starts.
    pub fn pid_file(&self) -> PathBuf {
        self.dir.join("vmm.pid")
    }

    /// The run directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The hybrid vsock socket (host side of the guest's vsock).
    pub fn vsock_socket(&self) -> PathBuf {
        self.dir.join("vsock.sock")
    }

    /// The VMM control socket.
    pub fn api_socket(&self) -> PathBuf {
        self.dir.join("api.sock")
    }

    /// The guest's serial console log.
    pub fn console_log(&self) -> PathBuf {
        self.dir.join("console.log")
    }

    /// The guest console so far (lossy UTF-8; empty if none yet).
    pub fn console(&self) -> String {
        fs::read(self.console_log())
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// The VMM's own log so far.
    pub fn vmm_log(&self) -> String {
        fs::read(self.dir.join("vmm.log"))
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// Returns the exit status if the VMM has exited.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>, VmError> {
        if self.exited.is_none() {
            self.exited = self.child.try_wait().map_err(|source| VmError::Wait {
                pid: self.child.id(),
                source,
            })?;
        }
        Ok(self.exited)
    }

    /// Waits up to `timeout` for the VMM to exit.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Result<Option<ExitStatus>, VmError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_wait()? {
                return Ok(Some(status));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills the VMM (SIGKILL) and reaps it.
    pub fn kill(&mut self) -> Result<ExitStatus, VmError> {
        if let Some(status) = self.try_wait()? {
            return Ok(status);
        }
        let pid = self.child.id();
        let _ = self.child.kill();
        let status = self
            .child
            .wait()
            .map_err(|source| VmError::Wait { pid, source })?;
        self.exited = Some(status);
        Ok(status)
    }

    /// Sends one request to the control socket and returns the reply
    /// (which may be a refusal: see [`Response::into_result`]), read to
    /// at most [`API_REPLY_MAX`] bytes within 10 s.
    pub fn api(&self, request: &Request) -> Result<Response, VmError> {
        let path = self.api_socket();
        let api_err = |source| VmError::Api {
            path: path.clone(),
            source,
        };
        let mut stream = UnixStream::connect(&path).map_err(api_err)?;
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(api_err)?;
        let line = request
            .to_line()
            .map_err(|e| api_err(std::io::Error::new(std::io::ErrorKind::InvalidInput, e)))?;
        stream.write_all(line.as_bytes()).map_err(api_err)?;
        let mut line = String::new();
        // A VMM the guest took over may answer without end.
        BufReader::new(stream.take(API_REPLY_MAX))
            .read_line(&mut line)
            .map_err(api_err)?;
        Response::parse(&line).map_err(|_| VmError::ApiReply {
            path: path.clone(),
            reply: line,
        })
    }
}

/// `--jail <dir>/jail` unless `NACRE_VMM_JAIL=0` (for debugging): the
/// VMM pivots into a tmpfs there (in its own mount namespace) holding,
/// at their own paths, only the run directory, the kernel, initrd,
/// template and shares, so every argument stays valid.
fn jail_dir(dir: &Path) -> Option<PathBuf> {
    let off = std::env::var("NACRE_VMM_JAIL").is_ok_and(|v| v == "0" || v == "false");
    (!off).then(|| dir.join("jail"))
}

impl Drop for VmProcess {
    fn drop(&mut self) {
        if let Err(e) = self.kill() {
            tracing::warn!("killing VMM: {e}");
        }
        if let Err(e) = fs::remove_dir_all(&self.dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!("removing {}: {e}", self.dir.display());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image() -> GuestImage {
        GuestImage {
            kernel: "/nonexistent/vmlinux".into(),
            initrd: "/nonexistent/initrd".into(),
        }
    }

    #[test]
    fn spawn_failure_removes_run_dir() {
        let dir = std::env::temp_dir().join(format!("nacre-vm-test-{}", std::process::id()));
        let err = VmProcess::spawn(
            Path::new("/nonexistent/nacre-vmm"),
            &VmSpec::new(image()),
            &dir,
        )
        .unwrap_err();
        assert!(err.to_string().contains("/nonexistent/nacre-vmm"), "{err}");
        assert!(!dir.exists());
    }

    #[test]
    fn existing_run_dir_is_refused() {
        let dir = std::env::temp_dir();
        let err = VmProcess::spawn(Path::new("/bin/true"), &VmSpec::new(image()), &dir)
            .unwrap_err()
            .to_string();
        assert!(err.contains("run directory"), "{err}");
    }

    #[test]
    fn drop_kills_process_and_removes_dir() {
        // A shell script that ignores the VMM's flags stands in for it.
        let dir = std::env::temp_dir().join(format!("nacre-vm-drop-{}", std::process::id()));
        let script = std::env::temp_dir().join(format!("nacre-fake-vmm-{}", std::process::id()));
        fs::write(&script, "#!/bin/sh\nexec sleep 1000\n").unwrap();
        fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let vm = VmProcess::spawn(&script, &VmSpec::new(image()), &dir).unwrap();
        let pid = vm.pid();
        assert!(dir.is_dir());
        drop(vm);
        fs::remove_file(&script).unwrap();
        assert!(!dir.exists());
        assert!(!Path::new(&format!("/proc/{pid}")).exists());
    }
}
