//! The sandbox engine: one running pod VM, as both frontends (the CLI's
//! monitor and the containerd shim) drive it.
//!
//! [`Pod::start`] does everything between "a sandbox is wanted" and "its
//! agent answers container calls": the host cgroup the VMM runs in, the
//! pod network (taps in the CNI namespace), the guest identity (host name
//! and share tag), a template restore or a cold boot, the guest clock,
//! the agent connection for container calls (the boot one, with a longer
//! call timeout), and the guest's network configuration. A step that
//! fails undoes the ones before it (their owners' `Drop`), so a
//! half-built pod leaves nothing behind.
//!
//! A started [`Pod`] owns the VMM: [`Pod::watch`] reports its death and
//! its processes' exits as events ([`PodEvent`]), [`Pod::poll_exit`]
//! reaps it, [`Pod::shutdown`] stops it through the agent, [`Pod::kill`]
//! without. A created container is driven through its
//! [`ContainerHandle`] ([`Pod::container`]).
//! Each of them tears the network and the host cgroup down once the VMM
//! has exited. The VMM and the agent are behind traits ([`PodVm`],
//! [`AgentClient`]), so the frontends' state machines run in unit tests
//! against a fake agent (see [`Pod::from_parts`]).

mod container;
mod dir;
mod handle;
mod options;
mod vm;
mod watch;

use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use crate::agent::{AgentClient, AgentClientError};
use crate::host_cgroup::{HostCgroup, HostCgroupError};
use crate::network::{NetworkError, PodNetwork};
use crate::sandbox::{default_call_timeout, SandboxError};
use crate::template::{mark_restored, start_sandbox, StartKind};
use crate::vm::HostPlacement;

pub use container::{ContainerShare, CreateError, Joins};
pub use dir::remove_sandbox_dir;
pub use handle::ContainerHandle;
pub use nacre_vmm_api::CacheMode;
pub use options::{guest_identity, PodCgroup, PodNetworkOptions, PodOptions};
pub use vm::{FakeVm, PodVm};
pub(crate) use watch::wait_readable;
pub use watch::{EventSink, PodEvent, Watcher};

/// The status a process gets when its VM went away under it: 128 + the
/// signal that killed the VMM, else 255 (as runc reports a container
/// whose init was killed).
pub fn lost_status(status: ExitStatus) -> i32 {
    status.signal().map_or(VM_LOST_STATUS, |sig| 128 + sig)
}

/// Exit status of a process whose VM died without a signal.
pub const VM_LOST_STATUS: i32 = 255;

/// Errors starting a pod.
#[derive(Debug, thiserror::Error)]
pub enum PodError {
    #[error("placing the sandbox in its host cgroup: {0}")]
    Cgroup(#[from] HostCgroupError),
    #[error("attaching the pod network: {0}")]
    Network(#[from] NetworkError),
    #[error("reading host entropy (getrandom) for the guest identity: {0}")]
    Entropy(std::io::Error),
    #[error("booting the sandbox VM: {0}")]
    Start(#[from] SandboxError),
    #[error("configuring the pod network in the VM: {0}")]
    GuestNetwork(AgentClientError),
}

/// How a pod's VM started.
#[derive(Debug, Clone)]
pub struct Started {
    pub vcpus: u8,
    pub memory_mib: u32,
    /// "cold" or "template".
    pub kind: &'static str,
    /// From the VMM's start to its agent's first answer.
    pub seconds: f64,
}

/// One running pod VM. See the module documentation.
pub struct Pod {
    agent: Arc<dyn AgentClient>,
    vm: Mutex<Option<Box<dyn PodVm>>>,
    pid: u32,
    exit: OnceLock<i32>,
    shut: AtomicBool,
    net: Mutex<Option<PodNetwork>>,
    cgroup: Option<HostCgroup>,
    /// The caller joined the host cgroup (the CLI's monitor): it leaves
    /// before the cgroup is removed.
    joined: bool,
    /// A guest OOM kill to raise on the host cgroup once the VMM is gone.
    guest_oom: AtomicBool,
    started: Started,
}

impl Pod {
    /// Starts a pod as `opts` says and waits until its agent answers.
    /// Blocking. On failure nothing it made is left behind (the caller's
    /// directories excepted).
    pub fn start(opts: PodOptions) -> Result<Self, PodError> {
        let cgroup = match &opts.cgroup {
            Some(c) => Some(HostCgroup::create(&c.path, &c.limits)?),
            None => None,
        };
        // Removes the cgroup (after the caller left it) when a later step
        // fails.
        let mut cgroup = CgroupGuard(cgroup, false);
        if let (Some(cg), Some(c)) = (&cgroup.0, &opts.cgroup) {
            if c.join {
                cg.add(std::process::id())?;
                cgroup.1 = true;
            }
        }
        let net = match &opts.network {
            Some(n) => {
                let net = tracing::info_span!("network.attach")
                    .in_scope(|| crate::network::attach_with(&n.netns, n.model))?;
                tracing::info!(netns = %n.netns.display(), taps = net.endpoints().len(), "pod network attached");
                Some(net)
            }
            None => None,
        };
        let mut spec = opts.vm_spec();
        spec.host = HostPlacement::new(cgroup.0.as_ref(), opts.oom_score_adj);
        spec.nets = net.as_ref().map(PodNetwork::vm_nets).unwrap_or_default();
        let identity = opts.identity().map_err(PodError::Entropy)?;
        let start_span =
            tracing::info_span!("sandbox.start", kind = tracing::field::Empty).entered();
        // Dropping the sandbox kills the VMM and removes its run directory.
        let (sandbox, kind) = start_sandbox(
            opts.templates.as_ref(),
            &opts.vmm,
            &spec,
            &opts.vm_dir,
            &identity,
            opts.boot_timeout,
        )?;
        start_span.record("kind", tracing::field::debug(&kind));
        drop(start_span);
        tracing::info!(id = opts.id, ?kind, "sandbox started");
        match &kind {
            StartKind::Template(t) => tracing::info!(
                id = opts.id,
                pid = sandbox.vm().pid(),
                restore = ?sandbox.boot_time(),
                template = %t.display(),
                "sandbox VM ready (restored from a template)"
            ),
            StartKind::Cold(reason) => tracing::info!(
                id = opts.id,
                pid = sandbox.vm().pid(),
                boot = ?sandbox.boot_time(),
                template_skipped = reason.as_deref().unwrap_or("templates off"),
                "sandbox VM ready (cold boot)"
            ),
        }
        // A restored guest got the time with `Agent.Restored` just now; a
        // cold one has its RTC's (whole seconds) and gets it here.
        if matches!(kind, StartKind::Cold(_)) {
            if let Err(e) = tracing::info_span!("agent.SetTime")
                .in_scope(|| sandbox.agent().set_time(SystemTime::now()))
            {
                tracing::warn!("setting the guest clock: {e}");
            }
        }
        // Container calls share the boot connection with more time than
        // the boot probe's (a loaded host running emulated guests is
        // slow). A second connection would cost the guest a server thread
        // pool of its own: hundreds of milliseconds of emulated kernel
        // work per start here.
        let agent: Arc<dyn AgentClient> =
            Arc::new(sandbox.client().with_call_timeout(default_call_timeout()));
        if let (Some(n), Some(o)) = (&net, &opts.network) {
            let mut guest = o.guest_network(n);
            if matches!(kind, StartKind::Template(_)) {
                // The NICs still have the template's MACs.
                mark_restored(&mut guest);
            }
            let configured = tracing::info_span!("agent.ConfigureNetwork")
                .in_scope(|| agent.configure_network(&guest));
            if let Err(e) = configured {
                if let Err(e) = sandbox.shutdown(Duration::from_secs(10)) {
                    tracing::warn!("sandbox VM shutdown: {e}");
                }
                return Err(PodError::GuestNetwork(e));
            }
        }
        let started = Started {
            vcpus: opts.vcpus,
            memory_mib: opts.memory_mib,
            kind: match kind {
                StartKind::Template(_) => "template",
                StartKind::Cold(_) => "cold",
            },
            seconds: sandbox.boot_time().as_secs_f64(),
        };
        let joined = cgroup.1;
        let cgroup = cgroup.defuse();
        let mut pod = Self::from_parts(agent, Box::new(sandbox), started);
        pod.cgroup = cgroup;
        pod.joined = joined;
        *pod.net.get_mut().unwrap_or_else(|e| e.into_inner()) = net;
        Ok(pod)
    }

    /// A pod of an already running VM and its agent, without a network or
    /// host cgroup: what [`Pod::start`] ends with, and what unit tests
    /// build around a fake agent and a [`FakeVm`].
    pub fn from_parts(agent: Arc<dyn AgentClient>, vm: Box<dyn PodVm>, started: Started) -> Self {
        Self {
            agent,
            pid: vm.pid(),
            vm: Mutex::new(Some(vm)),
            exit: OnceLock::new(),
            shut: AtomicBool::new(false),
            net: Mutex::new(None),
            cgroup: None,
            joined: false,
            guest_oom: AtomicBool::new(false),
            started,
        }
    }

    /// The agent connection for container calls.
    pub fn agent(&self) -> Arc<dyn AgentClient> {
        Arc::clone(&self.agent)
    }

    /// The VMM's pid.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// How the VM started.
    pub fn started(&self) -> &Started {
        &self.started
    }

    /// The sandbox's host cgroup, if it has one.
    pub fn host_cgroup(&self) -> Option<&HostCgroup> {
        self.cgroup.as_ref()
    }

    /// Whether [`Pod::shutdown`] or [`Pod::kill`] was called.
    pub fn is_shut_down(&self) -> bool {
        self.shut.load(Ordering::SeqCst)
    }

    /// The status processes get once the VM is gone (see
    /// [`lost_status`]), None while it runs.
    pub fn exit_status(&self) -> Option<i32> {
        self.exit.get().copied()
    }

    /// The VMM's own counters (its `status`): the errors the guest caused
    /// in its virtio devices and each device's traffic, bounded (see
    /// [`crate::metrics::VmmCounters`]: the VMM may be the guest's). None
    /// when it does not answer or has exited.
    pub fn vmm_counters(&self) -> Option<crate::metrics::VmmCounters> {
        let guard = self.vm.lock().unwrap_or_else(|e| e.into_inner());
        let status = guard.as_ref()?.vmm_status()?;
        Some(crate::metrics::VmmCounters::from_status(status))
    }

    /// Has the OOM kill of a process in the guest raised on the host
    /// cgroup once the VMM is gone (as runc's host cgroup would show it).
    pub fn raise_guest_oom(&self) {
        self.guest_oom.store(true, Ordering::SeqCst);
    }

    /// Polls the VMM; once it has exited, releases what the pod holds
    /// and returns [`lost_status`] of its exit.
    pub fn poll_exit(&self) -> Option<i32> {
        self.wait_exit(Duration::ZERO)
    }

    /// [`Pod::poll_exit`], waiting up to `timeout` for the VMM to exit.
    pub fn wait_exit(&self, timeout: Duration) -> Option<i32> {
        if let Some(s) = self.exit.get() {
            return Some(*s);
        }
        let mut guard = self.vm.lock().unwrap_or_else(|e| e.into_inner());
        let vm = guard.as_mut()?;
        let waited = if timeout.is_zero() {
            vm.try_wait()
        } else {
            vm.wait_timeout(timeout)
        };
        let status = match waited {
            Ok(Some(status)) => status,
            Ok(None) => return None,
            Err(e) => {
                tracing::warn!("polling the VMM: {e}");
                return None;
            }
        };
        tracing::warn!(%status, pid = self.pid, "the sandbox VM exited");
        // Dropping the VM removes the VMM's run directory.
        drop(guard.take());
        drop(guard);
        let code = lost_status(status);
        self.release(code);
        Some(code)
    }

    /// Shuts the VM down through its agent (killed after `timeout`) and
    /// releases what the pod holds, in any case. Blocking. The error says
    /// how the VM did not stop cleanly.
    pub fn shutdown(&self, timeout: Duration) -> Result<(), SandboxError> {
        self.shut.store(true, Ordering::SeqCst);
        let vm = self.vm.lock().unwrap_or_else(|e| e.into_inner()).take();
        let stopped = match vm {
            Some(vm) => {
                let _span = tracing::info_span!("sandbox.shutdown").entered();
                vm.shutdown(timeout)
            }
            None => Ok(()),
        };
        self.release(VM_LOST_STATUS);
        stopped
    }

    /// Kills the VMM at once and releases what the pod holds.
    pub fn kill(&self) {
        self.shut.store(true, Ordering::SeqCst);
        drop(self.vm.lock().unwrap_or_else(|e| e.into_inner()).take());
        self.release(VM_LOST_STATUS);
    }

    /// Once the VMM has exited: tears the pod network down, raises a
    /// guest OOM kill and removes the host cgroup. Runs once.
    fn release(&self, code: i32) {
        if self.exit.set(code).is_err() {
            return;
        }
        let net = self.net.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(n) = net {
            teardown_network(n);
        }
        if let Some(cg) = &self.cgroup {
            release_cgroup(cg, self.joined, self.guest_oom.load(Ordering::SeqCst));
        }
    }
}

impl std::fmt::Debug for Pod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pod")
            .field("pid", &self.pid)
            .field("exit", &self.exit.get())
            .field("started", &self.started)
            .finish_non_exhaustive()
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        if self.exit.get().is_none() {
            self.kill();
        }
    }
}

/// Tears `net` down, logging what could not be undone.
pub fn teardown_network(net: PodNetwork) {
    let netns = net.netns().to_path_buf();
    match net.teardown() {
        Ok(()) => tracing::info!(netns = %netns.display(), "pod network torn down"),
        Err(e) => tracing::warn!("{e}"),
    }
}

fn release_cgroup(cg: &HostCgroup, joined: bool, guest_oom: bool) {
    if joined {
        if let Err(e) = cg.leave() {
            tracing::warn!("leaving the sandbox's host cgroup: {e}");
        }
    }
    if guest_oom {
        match cg.raise_oom_event() {
            Ok(seen) => tracing::info!(seen, "guest OOM kill raised on the host cgroup"),
            Err(e) => tracing::warn!("raising a guest OOM kill on the host cgroup: {e}"),
        }
    }
    if let Err(e) = cg.remove() {
        tracing::warn!("removing the sandbox's host cgroup: {e}");
    }
}

/// The host cgroup of a pod being started: removed (after this process
/// left it, when it joined) unless the start completes.
struct CgroupGuard(Option<HostCgroup>, bool);

impl CgroupGuard {
    fn defuse(mut self) -> Option<HostCgroup> {
        self.0.take()
    }
}

impl Drop for CgroupGuard {
    fn drop(&mut self) {
        if let Some(cg) = &self.0 {
            release_cgroup(cg, self.1, false);
        }
    }
}

#[cfg(test)]
mod tests;
