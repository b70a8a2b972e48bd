//! The host-side monitor of one container: the process whose pid the
//! caller's `--pid-file` names and whose exit status is the container's.
//!
//! It boots the VM (the VMM is its child), has the agent create the
//! container, reports to `nacre create`, relays the init process's stdio,
//! waits for it, records the exit status, shuts the VM down, unmounts the
//! shared directory and exits with the container's status. It notices a
//! VMM that dies under it, and SIGTERM (from `nacre delete`) makes it kill
//! the VM and clean up.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, SystemTime};

use crate::agent::{
    AgentClient, ClientOptions, Endpoint, RestoredIdentity, TtrpcAgentClient, INIT_EXEC_ID,
};
use crate::image::GuestImage;
use crate::sandbox::{default_boot_timeout, Sandbox};
use crate::template::{start_sandbox, TemplateStore};
use crate::vm::VmSpec;

use super::console::{open_pty, send_console};
use super::launch::Reporter;
use super::lock::DirLock;
use super::paths::{ContainerPaths, SHARED_TAG};
use super::relay::{start_relay, HostIo};
use super::share::SharedDir;
use super::spec::Bundle;
use super::state::{rfc3339, write_atomic, State, Status};
use super::ContainerError;
use crate::host_cgroup::{HostCgroup, HostLimits, VMM_OVERHEAD_MIB};
use crate::vm::HostPlacement;

/// Exit status recorded when the VM died under the container.
pub const VM_LOST_STATUS: i32 = 255;

/// What the monitor of one container needs.
#[derive(Debug, Clone)]
pub struct MonitorOptions {
    pub paths: ContainerPaths,
    pub bundle_dir: PathBuf,
    pub vmm: PathBuf,
    pub image: GuestImage,
    /// The VM's shape (`crate::config::Config::container_shape`).
    pub vcpus: u8,
    pub memory_mib: u32,
    /// Appended to the guest kernel command line.
    pub kernel_params: Option<String>,
    pub console_socket: Option<PathBuf>,
    pub pid_file: Option<PathBuf>,
    /// Serve the shared directory over virtio-fs (`--shared-dir`).
    pub shared_fs: bool,
    /// Start the sandbox from a VM template (the configuration's
    /// `vm.templates`) when the environment allows (`NACRE_TEMPLATES`,
    /// `NACRE_TEMPLATE_DIR`; see `crate::template`).
    pub templates: bool,
}

static TERMINATE: AtomicBool = AtomicBool::new(false);

extern "C" fn on_terminate(_: libc::c_int) {
    TERMINATE.store(true, Ordering::Relaxed);
}

fn install_signal_handlers() {
    let handler = on_terminate as extern "C" fn(libc::c_int);
    // SAFETY: the handler only stores to an atomic, which is
    // async-signal-safe; SIG_IGN for SIGHUP is always valid.
    unsafe {
        libc::signal(libc::SIGTERM, handler as libc::sighandler_t);
        libc::signal(libc::SIGINT, handler as libc::sighandler_t);
        libc::signal(libc::SIGHUP, libc::SIG_IGN);
    }
}

/// Connects a client for the container RPCs (blocking ones have no
/// deadline; see [`AgentClient`]; the others the shim's).
pub fn connect_agent(paths: &ContainerPaths) -> Result<TtrpcAgentClient, ContainerError> {
    let options = ClientOptions {
        connect_timeout: Duration::from_secs(10),
        call_timeout: crate::sandbox::default_call_timeout(),
        ..ClientOptions::default()
    };
    Ok(TtrpcAgentClient::connect(
        Endpoint::agent_vsock(paths.vsock_socket()),
        options,
    )?)
}

/// Writes `pid` into `path` (atomically), as runc does for `--pid-file`.
pub fn write_pid_file(path: &std::path::Path, pid: u32) -> Result<(), ContainerError> {
    write_atomic(path, pid.to_string().as_bytes())
}

/// Sends a pty master to the console socket, returning the slave side.
pub fn console_io(console_socket: Option<&std::path::Path>) -> Result<HostIo, ContainerError> {
    let Some(socket) = console_socket else {
        return Ok(HostIo::Inherited);
    };
    let pty = open_pty()?;
    let name = std::fs::read_link(format!(
        "/proc/self/fd/{}",
        std::os::fd::AsRawFd::as_raw_fd(&pty.slave)
    ))
    .map(|p| p.display().to_string())
    .unwrap_or_else(|_| "/dev/ptmx".into());
    send_console(socket, &name, std::os::fd::AsRawFd::as_raw_fd(&pty.master))?;
    drop(pty.master);
    Ok(HostIo::Pty(pty.slave))
}

struct Running {
    /// The container's host cgroup (`linux.cgroupsPath`), where its VMM
    /// runs; dropped after the VMM.
    cgroup: Option<HostCgroup>,
    /// The container has a memory limit (only then can the guest's
    /// cgroup OOM-kill it, which runc's host cgroup would report).
    memory_limited: bool,
    sandbox: Sandbox,
    agent: Arc<TtrpcAgentClient>,
    io: HostIo,
    terminal: bool,
}

fn setup(opts: &MonitorOptions) -> Result<Running, ContainerError> {
    let _span = tracing::info_span!("monitor.setup", id = opts.paths.id()).entered();
    let paths = &opts.paths;
    let bundle = Bundle::load(&opts.bundle_dir)?;
    let io = console_io(opts.console_socket.as_deref())?;
    let mut spec = VmSpec {
        vcpus: opts.vcpus,
        memory_mib: opts.memory_mib,
        extra_cmdline: opts.kernel_params.clone(),
        ..VmSpec::new(opts.image.clone())
    };
    let hostname = bundle
        .hostname
        .as_deref()
        .filter(|h| {
            !h.is_empty()
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        })
        .unwrap_or("");
    let mut identity =
        RestoredIdentity::new(hostname, paths.id()).map_err(|source| ContainerError::Io {
            what: "reading host entropy (getrandom) for",
            path: paths.vm_dir(),
            source,
        })?;
    // The VMM is the container's process on the host: it goes where
    // runc would put the container (`linux.cgroupsPath`), limited to the
    // VM's memory plus the VMM's overhead when the container has a limit.
    let cgroup = bundle
        .cgroups_path()
        .map(|path| {
            let limits = HostLimits {
                memory_bytes: bundle
                    .memory_limit
                    .map(|_| (u64::from(opts.memory_mib) + VMM_OVERHEAD_MIB) << 20),
            };
            HostCgroup::create(path, &limits)
        })
        .transpose()
        .map_err(|e| ContainerError::Monitor(format!("the container's host cgroup: {e}")))?;
    // The monitor is the container's process on the host for whoever
    // holds its pid (containerd's runc shim under Docker reads its cgroup
    // for stats and OOM events, as it would runc's init): it joins too.
    if let Some(cg) = &cgroup {
        cg.add(std::process::id())
            .map_err(|e| ContainerError::Monitor(format!("joining the host cgroup: {e}")))?;
    }
    spec.host = HostPlacement::new(cgroup.as_ref(), bundle.oom_score_adj());
    if opts.shared_fs {
        identity.shared_tag = Some(SHARED_TAG.to_string());
        spec.shared_dirs
            .push((SHARED_TAG.to_string(), paths.shared_dir()));
    }
    let store = if opts.templates {
        TemplateStore::from_env()
    } else {
        None
    };
    let start_span = tracing::info_span!("sandbox.start", kind = tracing::field::Empty).entered();
    let (sandbox, kind) = start_sandbox(
        store.as_ref(),
        &opts.vmm,
        &spec,
        &paths.vm_dir(),
        &identity,
        default_boot_timeout(),
    )?;
    start_span.record("kind", tracing::field::debug(&kind));
    drop(start_span);
    tracing::info!(id = paths.id(), ?kind, "sandbox started");
    let agent = Arc::new(tracing::info_span!("agent.connect").in_scope(|| connect_agent(paths))?);
    if let Err(e) =
        tracing::info_span!("agent.SetTime").in_scope(|| agent.set_time(SystemTime::now()))
    {
        tracing::warn!("setting the guest clock: {e}");
    }
    let guest_spec = serde_json::to_vec(&bundle.guest_spec(paths)).map_err(|source| {
        ContainerError::BadState {
            path: opts.bundle_dir.join("config.json"),
            source,
        }
    })?;
    let guest_pid = tracing::info_span!("agent.CreateContainer")
        .in_scope(|| agent.create_container(paths.id(), &guest_spec))?;
    tracing::info!(id = paths.id(), guest_pid, "container created in the guest");
    let me = std::process::id();
    let state = State {
        id: paths.id().to_string(),
        oci_version: bundle.oci_version.clone(),
        status: Status::Created,
        bundle: bundle.dir.clone(),
        rootfs: bundle.rootfs.clone(),
        created: rfc3339(SystemTime::now()),
        owner: String::new(),
        annotations: bundle.annotations.clone(),
        monitor_pid: me,
        vmm_pid: sandbox.vm().pid(),
        exit_status: None,
        terminal: bundle.terminal,
    };
    // `nacre create` holds the lock while the monitor sets up.
    state.save(&paths.state_file())?;
    if let Some(pid_file) = &opts.pid_file {
        write_pid_file(pid_file, me)?;
    }
    Ok(Running {
        cgroup,
        memory_limited: bundle.memory_limit.is_some(),
        sandbox,
        agent,
        io,
        terminal: bundle.terminal,
    })
}

/// Runs the monitor to the end; returns the exit status to exit with.
pub fn run_monitor(opts: &MonitorOptions, reporter: &mut Reporter) -> i32 {
    install_signal_handlers();
    let Running {
        cgroup,
        memory_limited,
        mut sandbox,
        agent,
        io,
        terminal,
    } = match setup(opts) {
        Ok(r) => r,
        Err(e) => {
            tracing::error!("creating container {}: {e}", opts.paths.id());
            reporter.fail(&e.to_string());
            return 1;
        }
    };
    reporter.ok();
    let id = opts.paths.id().to_string();
    let client: Arc<dyn AgentClient> = agent.clone();
    let relay = start_relay(Arc::clone(&client), &id, INIT_EXEC_ID, io, terminal);

    let (tx, rx) = mpsc::channel();
    {
        let (client, id) = (Arc::clone(&client), id.clone());
        std::thread::spawn(move || {
            let _ = tx.send(client.wait_process(&id, INIT_EXEC_ID));
        });
    }
    let mut vm_alive = true;
    let wait_span = tracing::info_span!("container.wait", id = id.as_str()).entered();
    let status = loop {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(Ok(exit)) => break exit.status,
            Ok(Err(e)) => {
                // Usually the VM went away; give the VMM a moment to exit.
                if let Ok(Some(st)) = sandbox.vm_mut().wait_timeout(Duration::from_secs(2)) {
                    vm_alive = false;
                    tracing::warn!("the VMM exited ({st}) under container {id}");
                    break vm_lost_status(st);
                }
                tracing::error!("WaitProcess for container {id}: {e}");
                break VM_LOST_STATUS;
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break VM_LOST_STATUS,
        }
        if let Ok(Some(st)) = sandbox.vm_mut().try_wait() {
            vm_alive = false;
            tracing::warn!("the VMM exited ({st}) under container {id}");
            break vm_lost_status(st);
        }
        if TERMINATE.load(Ordering::Relaxed) {
            tracing::info!("monitor of {id} terminated: stopping the VM");
            break 128 + libc::SIGKILL;
        }
    };
    drop(wait_span);
    if vm_alive && !TERMINATE.load(Ordering::Relaxed) {
        relay.finish(Duration::from_secs(5));
    } else {
        relay.finish(Duration::ZERO);
    }
    let terminated = TERMINATE.load(Ordering::Relaxed);
    if !terminated {
        // When terminated, `delete` holds the lock and removes the state.
        record_exit(&opts.paths, status);
    }
    // An OOM kill in the guest, to be shown on the host cgroup below.
    let guest_oom = vm_alive
        && !terminated
        && memory_limited
        && cgroup.is_some()
        && client
            .stats_container(&id)
            .is_ok_and(|s| s.memory_oom_kill > 0);
    if vm_alive && crate::trace::file().is_some() {
        match client.trace() {
            Ok(spans) => crate::trace::add_guest(&spans, sandbox.vm().pid()),
            Err(e) => tracing::warn!("reading the guest's trace: {e}"),
        }
    }
    if vm_alive && !terminated {
        let _span = tracing::info_span!("sandbox.shutdown").entered();
        if let Err(e) = sandbox.shutdown(Duration::from_secs(15)) {
            tracing::warn!("shutting the VM of {id} down: {e}");
        }
    } else {
        drop(sandbox);
    }
    if let Err(e) = SharedDir::open(&opts.paths.dir()).teardown() {
        tracing::warn!("removing the shared directory of {id}: {e}");
    }
    if let Some(cg) = cgroup {
        if let Err(e) = cg.leave() {
            tracing::warn!("leaving the host cgroup of {id}: {e}");
        }
        if guest_oom {
            match cg.raise_oom_event() {
                Ok(seen) => tracing::info!(id, seen, "guest OOM kill raised on the host cgroup"),
                Err(e) => tracing::warn!("raising the guest OOM kill of {id} on the host: {e}"),
            }
        }
        if let Err(e) = cg.remove() {
            tracing::warn!("removing the host cgroup of {id}: {e}");
        }
    }
    status
}

fn vm_lost_status(st: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    st.signal().map_or(VM_LOST_STATUS, |sig| 128 + sig)
}

/// Records the exit in `state.json` (best effort: `delete` may be removing
/// the directory).
fn record_exit(paths: &ContainerPaths, status: i32) {
    let Ok(_lock) = DirLock::acquire_timeout(&paths.dir(), paths.id(), Duration::from_secs(3))
    else {
        return;
    };
    match State::load(&paths.state_file()) {
        Ok(mut state) => {
            state.status = Status::Stopped;
            state.exit_status = Some(status);
            if let Err(e) = state.save(&paths.state_file()) {
                tracing::debug!("recording the exit: {e}");
            }
        }
        Err(e) => tracing::debug!("recording the exit: {e}"),
    }
}
