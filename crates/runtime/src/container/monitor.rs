//! The host-side monitor of one container: the process whose pid the
//! caller's `--pid-file` names and whose exit status is the container's.
//!
//! It boots the VM (the VMM is its child), has the agent create the
//! container, reports to `nacre create`, relays the init process's stdio,
//! waits for it, records the exit status, stops the VM, unmounts the
//! shared directory and exits with the container's status. It notices a
//! VMM that dies under it, and SIGTERM (from `nacre delete`) makes it kill
//! the VM and clean up.

use std::os::fd::{FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, SystemTime};

use crate::agent::{ClientOptions, Endpoint, TtrpcAgentClient, INIT_EXEC_ID};
use crate::image::GuestImage;
use crate::pod::{CreateError, EventSink, Joins, Pod, PodCgroup, PodError, PodEvent, PodOptions};
use crate::sandbox::default_boot_timeout;
use crate::template::TemplateStore;
use nacre_vmm_api::CacheMode;

use super::console::{open_pty, send_console};
use super::launch::Reporter;
use super::lock::DirLock;
use super::paths::ContainerPaths;
use super::relay::{start_relay, HostIo};
use super::share::SharedDir;
use super::spec::Bundle;
use super::state::{rfc3339, write_atomic, State, Status};
use super::ContainerError;
use crate::host_cgroup::{HostLimits, VMM_OVERHEAD_MIB};

/// Exit status recorded when the VM died under the container.
pub use crate::pod::VM_LOST_STATUS;

/// What the monitor of one container is started with: one serialised
/// value (`nacre create` passes it as JSON, `nacre monitor --options`),
/// not a flag per field.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MonitorOptions {
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
/// The write end of the pipe that turns SIGTERM into a [`Wake`] (-1 until
/// [`install_signal_handlers`] made it).
static TERMINATE_PIPE: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_terminate(_: libc::c_int) {
    TERMINATE.store(true, Ordering::Relaxed);
    let fd = TERMINATE_PIPE.load(Ordering::Relaxed);
    if fd >= 0 {
        let b = 1u8;
        // SAFETY: write(2) is async-signal-safe; one byte from a local.
        let _ = unsafe { libc::write(fd, (&b as *const u8).cast(), 1) };
    }
}

/// Installs the SIGTERM/SIGINT handler; returns the read end of the pipe
/// it writes to (None if no pipe could be made: the flag still works for
/// setup, but the running container is then only stopped by its end).
fn install_signal_handlers() -> Option<OwnedFd> {
    let mut fds = [-1; 2];
    // SAFETY: pipe2 writes two descriptors into `fds`.
    let piped = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } == 0;
    let read = if piped {
        TERMINATE_PIPE.store(fds[1], Ordering::Relaxed);
        // SAFETY: fds[0] is the new pipe's read end, owned by no one else
        // (the write end stays open for the process's life).
        Some(unsafe { OwnedFd::from_raw_fd(fds[0]) })
    } else {
        tracing::warn!(
            "creating the SIGTERM pipe: {}",
            std::io::Error::last_os_error()
        );
        None
    };
    let handler = on_terminate as extern "C" fn(libc::c_int);
    // SAFETY: the handler only stores to an atomic and writes to a pipe,
    // both async-signal-safe; SIG_IGN for SIGHUP is always valid.
    unsafe {
        libc::signal(libc::SIGTERM, handler as libc::sighandler_t);
        libc::signal(libc::SIGINT, handler as libc::sighandler_t);
        libc::signal(libc::SIGHUP, libc::SIG_IGN);
    }
    read
}

/// Sends [`Wake::Terminate`] on `tx` once `pipe` (from
/// [`install_signal_handlers`]) is written to.
fn forward_terminate(pipe: OwnedFd, tx: mpsc::Sender<Wake>) {
    let spawned = std::thread::Builder::new()
        .name("sigterm".into())
        .spawn(move || {
            if crate::pod::wait_readable(&pipe) {
                let _ = tx.send(Wake::Terminate);
            }
        });
    if let Err(e) = spawned {
        tracing::warn!("starting the SIGTERM forwarder: {e}");
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
    pod: Pod,
    /// The container has a memory limit (only then can the guest's
    /// cgroup OOM-kill it, which runc's host cgroup would report).
    memory_limited: bool,
    io: HostIo,
    terminal: bool,
}

fn setup(paths: &ContainerPaths, opts: &MonitorOptions) -> Result<Running, ContainerError> {
    let _span = tracing::info_span!("monitor.setup", id = paths.id()).entered();
    let image = GuestImage::checked(opts.image.kernel.clone(), opts.image.initrd.clone())
        .map_err(|e| ContainerError::Monitor(e.to_string()))?;
    let bundle = Bundle::load(&opts.bundle_dir)?;
    let io = console_io(opts.console_socket.as_deref())?;
    let pod = Pod::start(PodOptions {
        id: paths.id().to_string(),
        hostname: bundle.hostname.clone(),
        vmm: opts.vmm.clone(),
        image,
        vcpus: opts.vcpus,
        memory_mib: opts.memory_mib,
        kernel_params: opts.kernel_params.clone(),
        vm_dir: paths.vm_dir(),
        share: opts.shared_fs.then(|| paths.shared_dir()),
        // The container's rootfs and its volumes share one directory:
        // volumes may change on the host, so close-to-open.
        share_cache: CacheMode::Auto,
        // The VMM is the container's process on the host: it goes where
        // runc would put the container (`linux.cgroupsPath`), limited to
        // the VM's memory plus the VMM's overhead when the container has a
        // limit. The monitor is the container's process on the host for
        // whoever holds its pid (containerd's runc shim under Docker reads
        // its cgroup for stats and OOM events, as it would runc's init):
        // it joins too.
        cgroup: bundle.cgroups_path().map(|path| PodCgroup {
            path: path.to_string(),
            limits: HostLimits {
                memory_bytes: bundle
                    .memory_limit
                    .map(|_| (u64::from(opts.memory_mib) + VMM_OVERHEAD_MIB) << 20),
            },
            join: true,
        }),
        oom_score_adj: bundle.oom_score_adj(),
        network: None,
        templates: if opts.templates {
            TemplateStore::from_env()
        } else {
            None
        },
        boot_timeout: default_boot_timeout(),
    })
    .map_err(|e| match e {
        PodError::Start(e) => ContainerError::from(e),
        e => ContainerError::Monitor(e.to_string()),
    })?;
    tracing::info!(
        id = paths.id(),
        kind = pod.started().kind,
        "sandbox started"
    );
    let share = SharedDir::open(&paths.dir());
    pod.add_container(paths.id(), &bundle, Joins::default(), &share)
        .map_err(|e| match e {
            CreateError::Share(e) => e,
            CreateError::Agent(e) => ContainerError::from(e),
            CreateError::Spec(source) => ContainerError::BadState {
                path: opts.bundle_dir.join("config.json"),
                source,
            },
        })?;
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
        vmm_pid: pod.pid(),
        exit_status: None,
        terminal: bundle.terminal,
    };
    // `nacre create` holds the lock while the monitor sets up.
    state.save(&paths.state_file())?;
    if let Some(pid_file) = &opts.pid_file {
        write_pid_file(pid_file, me)?;
    }
    Ok(Running {
        pod,
        memory_limited: bundle.memory_limit.is_some() && bundle.cgroups_path().is_some(),
        io,
        terminal: bundle.terminal,
    })
}

/// Runs the monitor to the end; returns the exit status to exit with.
pub fn run_monitor(paths: &ContainerPaths, opts: &MonitorOptions, reporter: &mut Reporter) -> i32 {
    let terminate_pipe = install_signal_handlers();
    let Running {
        pod,
        memory_limited,
        io,
        terminal,
    } = match setup(paths, opts) {
        Ok(r) => r,
        Err(e) => {
            tracing::error!("creating container {}: {e}", paths.id());
            reporter.fail(&e.to_string());
            return 1;
        }
    };
    // Before the report: `nacre start` may follow at once.
    if let Err(e) = super::control::serve(&paths.dir(), pod.container(paths.id())) {
        tracing::warn!("serving the control socket of {}: {e}", paths.id());
    }
    reporter.ok();
    let id = paths.id().to_string();
    let client = pod.agent();
    let relay = start_relay(Arc::clone(&client), &id, INIT_EXEC_ID, io, terminal);

    let wait_span = tracing::info_span!("container.wait", id = id.as_str()).entered();
    let (tx, rx) = mpsc::channel();
    if let Some(pipe) = terminate_pipe {
        forward_terminate(pipe, tx.clone());
    }
    let status = supervise(&pod, &id, tx, &rx);
    drop(wait_span);
    let vm_alive = pod.exit_status().is_none();
    let terminated = TERMINATE.load(Ordering::Relaxed);
    relay.finish(if vm_alive && !terminated {
        Duration::from_secs(5)
    } else {
        Duration::ZERO
    });
    if !terminated {
        // When terminated, `delete` holds the lock and removes the state.
        record_exit(paths, status);
    }
    // An OOM kill in the guest, to be shown on the host cgroup.
    if vm_alive
        && !terminated
        && memory_limited
        && pod
            .container(&id)
            .stats()
            .is_ok_and(|s| s.memory_oom_kill > 0)
    {
        pod.raise_guest_oom();
    }
    if vm_alive && crate::trace::file().is_some() {
        crate::trace::add_vmm_cpu(pod.pid());
        match client.trace() {
            Ok(spans) => crate::trace::add_guest(&spans, pod.pid()),
            Err(e) => tracing::warn!("reading the guest's trace: {e}"),
        }
    }
    // The container's init has exited: nothing in the guest holds data the
    // host still needs (the share is write-through, FUSE writeback off;
    // the VM has no block device; its tmpfs volumes die with it), so the
    // VMM is stopped at once instead of through a guest shutdown (sync,
    // kernel power-off: emulated kernel work on hosts without VT-x).
    {
        let _span = tracing::info_span!("sandbox.stop").entered();
        pod.kill();
    }
    if let Err(e) = SharedDir::open(&paths.dir()).teardown() {
        tracing::warn!("removing the shared directory of {id}: {e}");
    }
    status
}

/// What wakes the monitor while its container runs.
#[derive(Debug)]
enum Wake {
    Pod(PodEvent),
    /// SIGTERM or SIGINT (`nacre delete` sends SIGTERM).
    Terminate,
}

/// Waits for the container's init to exit, for the VM to die under it or
/// for [`Wake::Terminate`] on `rx` (what `tx` sends), whichever comes
/// first, each an event: the pod's watcher and the signal forwarder send
/// them. Returns the status to record: the init's, 128 + the signal that
/// killed the VMM, or 128 + SIGKILL when terminated.
fn supervise(pod: &Pod, id: &str, tx: mpsc::Sender<Wake>, rx: &mpsc::Receiver<Wake>) -> i32 {
    let sink: EventSink = Arc::new(move |e| {
        let _ = tx.send(Wake::Pod(e));
    });
    match pod.watch(sink) {
        Ok(watcher) => watcher.process(id, INIT_EXEC_ID),
        Err(e) => {
            tracing::error!("watching the VM of container {id}: {e}");
            return VM_LOST_STATUS;
        }
    }
    loop {
        match rx.recv() {
            Ok(Wake::Pod(PodEvent::Exited { cid, exec_id, exit }))
                if cid == id && exec_id == INIT_EXEC_ID =>
            {
                // A failed wait: usually the VM went away; give the VMM a
                // moment to exit.
                break pod.exit_of(id, &exit, Duration::from_secs(2));
            }
            Ok(Wake::Pod(PodEvent::VmExited)) => {
                if let Some(status) = pod.wait_exit(Duration::from_secs(2)) {
                    tracing::warn!("the VMM exited under container {id}");
                    break status;
                }
            }
            Ok(Wake::Pod(e)) => tracing::debug!("ignored pod event {e:?}"),
            Ok(Wake::Terminate) => {
                tracing::info!("monitor of {id} terminated: stopping the VM");
                break 128 + libc::SIGKILL;
            }
            Err(mpsc::RecvError) => break VM_LOST_STATUS,
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::fake::FakeAgent;
    use crate::agent::AgentClient;
    use crate::pod::{FakeVm, Started};

    fn supervise_(pod: &Pod, terminate: bool) -> i32 {
        let (tx, rx) = mpsc::channel();
        if terminate {
            tx.send(Wake::Terminate).unwrap();
        }
        supervise(pod, "c1", tx, &rx)
    }

    fn running() -> (Pod, FakeVm, Arc<FakeAgent>) {
        let agent = Arc::new(FakeAgent::blocking());
        agent.create_container("c1", b"{}").unwrap();
        agent.start_container("c1").unwrap();
        let vm = FakeVm::new();
        let started = Started {
            vcpus: 1,
            memory_mib: 128,
            kind: "cold",
            seconds: 0.0,
        };
        let pod = Pod::from_parts(agent.clone(), Box::new(vm.clone()), started);
        (pod, vm, agent)
    }

    #[test]
    fn the_init_exit_is_the_status() {
        let (pod, vm, agent) = running();
        let a = agent.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            a.exit("c1", "", 42);
        });
        assert_eq!(supervise_(&pod, false), 42);
        t.join().unwrap();
        assert!(vm.running(), "the caller shuts the VM down");
    }

    #[test]
    fn a_vm_killed_under_the_container_gives_128_plus_its_signal() {
        let (pod, vm, agent) = running();
        let v = vm.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            v.die(libc::SIGKILL);
        });
        assert_eq!(supervise_(&pod, false), 137);
        t.join().unwrap();
        assert_eq!(pod.exit_status(), Some(137));
        agent.disconnect();
    }

    #[test]
    fn the_agent_connection_lost_with_the_vm_gives_its_status() {
        let (pod, vm, agent) = running();
        vm.die(libc::SIGSEGV);
        agent.disconnect();
        assert_eq!(supervise_(&pod, false), 128 + libc::SIGSEGV);
    }

    #[test]
    fn the_agent_failing_while_the_vm_runs_gives_255() {
        let (pod, vm, agent) = running();
        agent.disconnect();
        assert_eq!(supervise_(&pod, false), VM_LOST_STATUS);
        assert!(vm.running());
    }

    #[test]
    fn terminate_stops_waiting_with_sigkill_status() {
        let (pod, _vm, agent) = running();
        assert_eq!(supervise_(&pod, true), 128 + libc::SIGKILL);
        agent.disconnect();
    }
}
