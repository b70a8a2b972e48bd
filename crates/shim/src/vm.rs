//! The sandbox's VM: booted on the first container's create, shut down when
//! the last container is deleted, watched for an unexpected death.

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use nacre_runtime::agent::{
    AgentClient, ClientOptions, Endpoint, RestoredIdentity, TtrpcAgentClient,
};
use nacre_runtime::container::mounts;
use nacre_runtime::container::paths::SHARED_TAG;
use nacre_runtime::container::share::SharedDir;
use nacre_runtime::host_cgroup::{HostCgroup, HostLimits};
use nacre_runtime::image::locate_vmm;
use nacre_runtime::network::{self, PodNetwork};
use nacre_runtime::sandbox::{default_boot_timeout, default_call_timeout, Sandbox};
use nacre_runtime::template::{mark_restored, start_sandbox, StartKind, TemplateStore};
use nacre_runtime::vm::{HostPlacement, VmSpec};

use crate::config::{Config, VmShape};
use crate::error::ShimError;
use crate::podnet::{self, PodSpec};

/// One booted sandbox VM.
#[derive(Debug)]
pub struct Vm {
    client: TtrpcAgentClient,
    sandbox: Mutex<Option<Sandbox>>,
    dir: PathBuf,
    exit: OnceLock<u32>,
    pid: u32,
    shut: AtomicBool,
    /// The pod network the VM is attached to, torn down once the VMM
    /// has exited.
    net: Mutex<Option<PodNetwork>>,
    /// The sandbox's host cgroup (the VMM runs in it), removed once the
    /// VMM has exited.
    cgroup: Option<HostCgroup>,
    /// How it started, for the metrics.
    started: Started,
}

/// How a sandbox VM started.
#[derive(Debug, Clone)]
pub struct Started {
    pub vcpus: u8,
    pub memory_mib: u32,
    /// "cold" or "template".
    pub kind: &'static str,
    /// From the VMM's start to its agent's first answer.
    pub seconds: f64,
}

impl Vm {
    /// Creates the sandbox directory `dir` (0700) and its shared directory
    /// (`rw` and the read-only `shared` view the VMM serves, see
    /// [`SharedDir`]), attaches the pod network (when `pod` names a network
    /// namespace), boots the VM, waits for its agent and has it configure
    /// the network. Blocking. On failure nothing is left behind.
    pub fn boot(
        id: &str,
        dir: &Path,
        config: &Config,
        shape: &VmShape,
        pod: &PodSpec,
    ) -> Result<Self, ShimError> {
        let hostname = pod.hostname.as_deref();
        let image = config
            .guest_image()
            .map_err(|e| ShimError::FailedPrecondition(e.to_string()))?;
        let vmm = locate_vmm().map_err(|e| ShimError::FailedPrecondition(e.to_string()))?;
        // The VMM runs in the sandbox's host cgroup (the pod's, under
        // kubelet): its memory and CPU are the pod's.
        let cgroup = match pod.cgroups_path.as_deref() {
            Some(path) => Some(
                HostCgroup::create(path, &HostLimits::default()).map_err(|e| {
                    ShimError::FailedPrecondition(format!(
                        "placing the sandbox in its host cgroup: {e}"
                    ))
                })?,
            ),
            None => None,
        };
        let remove_cgroup = |cgroup: &Option<HostCgroup>| {
            if let Some(cg) = cgroup {
                if let Err(e) = cg.remove() {
                    tracing::warn!("removing the sandbox's host cgroup: {e}");
                }
            }
        };
        let host = HostPlacement::new(cgroup.as_ref(), pod.oom_score_adj);
        let net = match &pod.netns {
            Some(netns) => {
                let net = network::attach_with(netns, config.network.model()).map_err(|e| {
                    remove_cgroup(&cgroup);
                    ShimError::Internal(format!("attaching the pod network: {e}"))
                })?;
                tracing::info!(netns = %netns.display(), taps = net.endpoints().len(), "pod network attached");
                Some(net)
            }
            None => None,
        };
        let shared = match SharedDir::create(dir) {
            Ok(share) => share.shared(),
            Err(e) => {
                if let Some(n) = net {
                    podnet::teardown(n);
                }
                remove_dir(dir);
                remove_cgroup(&cgroup);
                return Err(ShimError::Internal(format!(
                    "preparing the shared directory in {}: {e}",
                    dir.display()
                )));
            }
        };
        let spec = VmSpec {
            vcpus: shape.vcpus,
            memory_mib: shape.memory_mib,
            extra_cmdline: shape.extra_cmdline(),
            shared_dirs: vec![(SHARED_TAG.to_string(), shared.clone())],
            nets: net.as_ref().map(PodNetwork::vm_nets).unwrap_or_default(),
            image,
            host,
        };
        let timeout = match config.vm.boot_timeout_secs {
            0 => default_boot_timeout(),
            s => Duration::from_secs(s),
        };
        let started = identity(id, hostname).and_then(|identity| {
            let store = template_store(config);
            start_sandbox(
                store.as_ref(),
                &vmm,
                &spec,
                &dir.join("vm"),
                &identity,
                timeout,
            )
            .map_err(|e| ShimError::Internal(format!("booting the sandbox VM: {e}")))
        });
        match started {
            Ok((sandbox, kind)) => {
                if let Err(e) = sandbox.agent().set_time(std::time::SystemTime::now()) {
                    tracing::warn!("setting the guest clock: {e}");
                }
                match &kind {
                    StartKind::Template(t) => tracing::info!(
                        pid = sandbox.vm().pid(),
                        restore = ?sandbox.boot_time(),
                        template = %t.display(),
                        "sandbox VM ready (restored from a template)"
                    ),
                    StartKind::Cold(reason) => tracing::info!(
                        pid = sandbox.vm().pid(),
                        boot = ?sandbox.boot_time(),
                        template_skipped = reason.as_deref().unwrap_or("templates off"),
                        "sandbox VM ready (cold boot)"
                    ),
                }
                // Container calls get more time than the boot probe's:
                // a loaded host running emulated guests is slow.
                let client = TtrpcAgentClient::connect(
                    Endpoint::agent_vsock(sandbox.vm().vsock_socket()),
                    ClientOptions {
                        call_timeout: default_call_timeout(),
                        ..ClientOptions::default()
                    },
                )
                .unwrap_or_else(|e| {
                    tracing::warn!("second agent connection: {e}; using the boot one");
                    sandbox.client()
                });
                if let Some(n) = &net {
                    let mut guest = pod.guest_network(n);
                    if matches!(kind, StartKind::Template(_)) {
                        // The NICs still have the template's MACs.
                        mark_restored(&mut guest);
                    }
                    if let Err(e) = client.configure_network(&guest) {
                        if let Err(e) = sandbox.shutdown(Duration::from_secs(10)) {
                            tracing::warn!("sandbox VM shutdown: {e}");
                        }
                        if let Some(n) = net {
                            podnet::teardown(n);
                        }
                        remove_dir(dir);
                        remove_cgroup(&cgroup);
                        return Err(ShimError::Internal(format!(
                            "configuring the pod network in the VM: {e}"
                        )));
                    }
                }
                let started = Started {
                    vcpus: shape.vcpus,
                    memory_mib: shape.memory_mib,
                    kind: match kind {
                        StartKind::Template(_) => "template",
                        StartKind::Cold(_) => "cold",
                    },
                    seconds: sandbox.boot_time().as_secs_f64(),
                };
                Ok(Self {
                    started,
                    client,
                    pid: sandbox.vm().pid(),
                    sandbox: Mutex::new(Some(sandbox)),
                    dir: dir.to_path_buf(),
                    exit: OnceLock::new(),
                    shut: AtomicBool::new(false),
                    net: Mutex::new(net),
                    cgroup,
                })
            }
            Err(e) => {
                if let Some(n) = net {
                    podnet::teardown(n);
                }
                remove_dir(dir);
                remove_cgroup(&cgroup);
                Err(e)
            }
        }
    }

    /// Whether [`Vm::shutdown`] was called.
    pub fn is_shut_down(&self) -> bool {
        self.shut.load(Ordering::SeqCst)
    }

    /// The agent connection.
    pub fn client(&self) -> &TtrpcAgentClient {
        &self.client
    }

    /// How the VM started.
    pub fn started(&self) -> &Started {
        &self.started
    }

    /// The VMM's pid.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The sandbox's shared directory (virtio-fs share) on the host.
    pub fn share(&self) -> SharedDir {
        SharedDir::open(&self.dir)
    }

    /// The status tasks get when the VM went away under them: 128 + the
    /// signal that killed the VMM, else 255.
    pub fn exit_status(&self) -> Option<u32> {
        self.exit.get().copied()
    }

    /// Polls the VMM; once it has exited, records the status, drops its
    /// run directory and returns the status.
    pub fn poll_exit(&self) -> Option<u32> {
        if let Some(s) = self.exit.get() {
            return Some(*s);
        }
        let mut guard = self.sandbox.lock().ok()?;
        let sandbox = guard.as_mut()?;
        let status = match sandbox.vm_mut().try_wait() {
            Ok(Some(status)) => status,
            Ok(None) => return None,
            Err(e) => {
                tracing::warn!("polling the VMM: {e}");
                return None;
            }
        };
        let code = status.signal().map_or(255, |s| 128 + s.unsigned_abs());
        tracing::warn!(%status, "the sandbox VM exited");
        // Dropping the sandbox removes the VMM's run directory.
        drop(guard.take());
        self.teardown_net();
        let _ = self.exit.set(code);
        Some(code)
    }

    /// Shuts the VM down (agent Shutdown, kill after a timeout), unmounts
    /// the shared directory and removes the sandbox directory. Blocking.
    pub fn shutdown(&self) {
        self.shut.store(true, Ordering::SeqCst);
        let sandbox = self.sandbox.lock().ok().and_then(|mut g| g.take());
        if let Some(sandbox) = sandbox {
            if let Err(e) = sandbox.shutdown(Duration::from_secs(10)) {
                tracing::warn!("sandbox VM shutdown: {e}");
            }
        }
        self.teardown_net();
        let _ = self.exit.set(255);
        remove_dir(&self.dir);
    }

    /// The sandbox's host cgroup directories (empty without one).
    pub fn host_cgroup_dirs(&self) -> Vec<PathBuf> {
        self.cgroup
            .as_ref()
            .map(HostCgroup::dirs)
            .unwrap_or_default()
    }

    /// Tears the pod network down and removes the host cgroup (once the
    /// VMM has exited).
    fn teardown_net(&self) {
        if let Some(cg) = &self.cgroup {
            if let Err(e) = cg.remove() {
                tracing::warn!("removing the sandbox's host cgroup: {e}");
            }
        }
        let net = match self.net.lock() {
            Ok(mut g) => g.take(),
            Err(e) => e.into_inner().take(),
        };
        if let Some(n) = net {
            podnet::teardown(n);
        }
    }
}

/// The configured extra kernel command line (the identity, host name
/// and share, is not on it: see [`identity`]).
/// The host name (when it is a plain DNS name) and the share a cold boot
/// gets on its command line and a restored agent over `Agent.Restored`.
fn identity(id: &str, hostname: Option<&str>) -> Result<RestoredIdentity, ShimError> {
    let hostname = hostname
        .filter(|h| {
            !h.is_empty()
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        })
        .unwrap_or("");
    let mut identity = RestoredIdentity::new(hostname, id)
        .map_err(|e| ShimError::Internal(format!("reading host entropy (getrandom): {e}")))?;
    identity.shared_tag = Some(SHARED_TAG.to_string());
    Ok(identity)
}

/// The template store for `spec`, or None when templates are off (the
/// configuration's `vm.templates`, `NACRE_TEMPLATES`).
fn template_store(config: &Config) -> Option<TemplateStore> {
    if !config.vm.templates {
        return None;
    }
    TemplateStore::from_env()
}

/// Tears the sandbox directory `dir`'s share down (unmounting only inside
/// `rw`, see [`SharedDir::teardown`]) and removes `dir` once no mount
/// remains under it.
pub fn remove_dir(dir: &Path) {
    if let Err(e) = SharedDir::open(dir).teardown() {
        tracing::warn!("tearing the share of {} down: {e}", dir.display());
    }
    let left = mounts::mounts_under(dir);
    if !left.is_empty() {
        tracing::warn!(
            ?left,
            "mounts remain under {}; not removing it",
            dir.display()
        );
        return;
    }
    if let Err(e) = std::fs::remove_dir_all(dir) {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!("removing {}: {e}", dir.display());
        }
    }
}

/// Lazily unmounts every mount at or under `dir`, deepest first, never
/// through a symlink in the last component. Not for the share (see
/// [`SharedDir`]): for containerd's bundle rootfs.
pub fn unmount_all(dir: &Path) {
    for _ in 0..8 {
        let mut left = mounts::mounts_under(dir);
        if left.is_empty() {
            return;
        }
        left.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in left {
            if let Ok(c) = std::ffi::CString::new(m) {
                // SAFETY: a NUL-terminated path that outlives the call.
                unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH | libc::UMOUNT_NOFOLLOW) };
            }
        }
    }
}
