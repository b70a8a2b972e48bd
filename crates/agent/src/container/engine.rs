//! The container engine's bookkeeping: ids, states, processes, stdio
//! routing and errors. The system work (fork, namespaces, mounts, execve,
//! wait) is behind [`Launcher`], so this part is tested without root.

use std::collections::HashMap;
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use seccompiler::BpfProgram;

use super::cgroup::{Cgroup, CgroupRoot, Stats};
use super::devices::DeviceFilter;
use super::error::{ContainerError, ErrorKind};
use super::spec::{Process, Resources, Spec};
use super::stdio::{Output, Stdin};

/// What a [`Launcher`] needs to create a container's init process.
#[derive(Debug)]
pub struct CreateRequest<'a> {
    /// The container id.
    pub id: &'a str,
    /// The parsed, validated spec.
    pub spec: &'a Spec,
    /// The rootfs, absolute and resolved.
    pub rootfs: &'a Path,
    /// The cgroup.procs file to join, if the container has a cgroup.
    pub cgroup_procs: Option<&'a Path>,
    /// Compiled seccomp filters to install before execve.
    pub seccomp: &'a [BpfProgram],
}

/// What a [`Launcher`] needs to start a process in a running container.
#[derive(Debug)]
pub struct ExecRequest<'a> {
    /// The container id.
    pub id: &'a str,
    /// The container's init pid (its namespaces are joined).
    pub init_pid: libc::pid_t,
    /// The process.
    pub process: &'a Process,
    /// The cgroup.procs file to join, if the container has a cgroup.
    pub cgroup_procs: Option<&'a Path>,
    /// The container's seccomp filters.
    pub seccomp: &'a [BpfProgram],
}

/// Holds a created init process before execve.
pub trait Gate: Send + std::fmt::Debug {
    /// Lets the process execve; an error if execve failed.
    fn release(self: Box<Self>) -> Result<(), String>;
}

/// A process the launcher started.
#[derive(Debug)]
pub struct Launched {
    /// Its pid (in the agent's pid namespace).
    pub pid: libc::pid_t,
    /// The agent's end of its stdin.
    pub stdin: Option<OwnedFd>,
    /// The agent's end of its stdout (the terminal master with a tty).
    pub stdout: Option<OwnedFd>,
    /// The agent's end of its stderr (none with a tty).
    pub stderr: Option<OwnedFd>,
    /// The terminal master, for resizing.
    pub terminal: Option<OwnedFd>,
    /// For an init process: what lets it execve.
    pub gate: Option<Box<dyn Gate>>,
    /// For an init process: its namespaces other than the agent's
    /// (`/proc/<pid>/ns/*`), held until the container is removed, so that
    /// they are not torn down (every mount unmounted, the network
    /// namespace dismantled) in the init's exit path, before its exit is
    /// reported: a VM shut down right after its container ended skips
    /// that work.
    pub namespaces: Vec<OwnedFd>,
}

/// The system side of the engine.
pub trait Launcher: Send + Sync + 'static {
    /// Forks the init process and sets the container up; it waits before
    /// execve until the gate is released. Errors are the child's message.
    fn create(&self, req: &CreateRequest<'_>) -> Result<Launched, String>;
    /// Starts a process in the container's namespaces and cgroup.
    fn exec(&self, req: &ExecRequest<'_>) -> Result<Launched, String>;
    /// Blocks until `pid` exits; its status (128 + signal if killed).
    fn wait(&self, pid: libc::pid_t) -> i32;
    /// Has `f` called with `pid`'s status (as [`Launcher::wait`] gives
    /// it) once it exits, without a thread of its own; a launcher that
    /// cannot hands `f` back and the engine waits on a thread.
    fn on_exit(&self, _pid: libc::pid_t, f: ExitFn) -> Result<(), ExitFn> {
        Err(f)
    }
    /// Sends a signal.
    fn signal(&self, pid: libc::pid_t, signal: libc::c_int) -> io::Result<()>;
    /// Sets a terminal's window size.
    fn resize(&self, terminal: &OwnedFd, rows: u16, cols: u16) -> io::Result<()>;
}

/// How a process ended: status and time (ms since the epoch).
pub type Exit = (i32, u64);

/// What runs when a process exits, with its status.
pub type ExitFn = Box<dyn FnOnce(i32) + Send>;

/// One process of a container.
#[derive(Debug)]
struct Proc {
    pid: libc::pid_t,
    tty: bool,
    terminal: Option<OwnedFd>,
    stdin: Stdin,
    stdout: Arc<Output>,
    stderr: Arc<Output>,
    gate: Mutex<Option<Box<dyn Gate>>>,
    exit: Mutex<Option<Exit>>,
    exited: Condvar,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Proc {
    fn new(l: Launched) -> Result<Arc<Proc>, String> {
        let reader = |fd: Option<OwnedFd>, stream: &str| match fd {
            Some(fd) => {
                Output::spawn_reader(fd).map_err(|e| format!("starting the {stream} reader: {e}"))
            }
            None => Ok(Output::closed()),
        };
        Ok(Arc::new(Proc {
            pid: l.pid,
            tty: l.terminal.is_some(),
            stdout: reader(l.stdout, "stdout")?,
            stderr: reader(l.stderr, "stderr")?,
            stdin: Stdin::new(l.stdin),
            terminal: l.terminal,
            gate: Mutex::new(l.gate),
            exit: Mutex::new(None),
            exited: Condvar::new(),
        }))
    }

    fn exit(&self) -> Option<Exit> {
        *lock(&self.exit)
    }

    fn wait(&self) -> Exit {
        let mut exit = lock(&self.exit);
        loop {
            if let Some(e) = *exit {
                return e;
            }
            exit = self
                .exited
                .wait(exit)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    fn wait_timeout(&self, timeout: Duration) -> Option<Exit> {
        let exit = lock(&self.exit);
        let (exit, _) = self
            .exited
            .wait_timeout_while(exit, timeout, |e| e.is_none())
            .unwrap_or_else(PoisonError::into_inner);
        *exit
    }
}

/// A container's lifecycle state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Set up, init waits before execve.
    Created,
    /// Init runs.
    Running,
    /// Frozen.
    Paused,
    /// Init exited.
    Stopped,
}

impl Status {
    /// The protocol's name.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Created => "created",
            Status::Running => "running",
            Status::Paused => "paused",
            Status::Stopped => "stopped",
        }
    }
}

/// `StateContainer`'s answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct State {
    /// Lifecycle state.
    pub status: Status,
    /// Init pid.
    pub pid: libc::pid_t,
    /// Init's exit status once stopped.
    pub exit_status: Option<i32>,
}

#[derive(Debug)]
struct Container {
    id: String,
    init: Arc<Proc>,
    execs: Mutex<HashMap<String, Arc<Proc>>>,
    cgroup: Option<Cgroup>,
    /// The device program attached to the cgroup.
    devices: Mutex<Option<DeviceFilter>>,
    seccomp: Vec<BpfProgram>,
    has_pid_ns: bool,
    started: AtomicBool,
    paused: AtomicBool,
    /// See [`Launched::namespaces`]; closed with the container.
    _namespaces: Vec<OwnedFd>,
}

impl Container {
    fn status(&self) -> Status {
        if self.init.exit().is_some() {
            Status::Stopped
        } else if !self.started.load(Ordering::SeqCst) {
            Status::Created
        } else if self.paused.load(Ordering::SeqCst) {
            Status::Paused
        } else {
            Status::Running
        }
    }

    fn process(&self, exec_id: &str) -> Result<Arc<Proc>, ContainerError> {
        if exec_id.is_empty() {
            return Ok(Arc::clone(&self.init));
        }
        lock(&self.execs).get(exec_id).cloned().ok_or_else(|| {
            ContainerError::new(
                ErrorKind::NotFound,
                &self.id,
                format!("no process with exec id {exec_id:?}"),
            )
        })
    }

    fn cgroup(&self) -> Result<&Cgroup, ContainerError> {
        self.cgroup.as_ref().ok_or_else(|| {
            ContainerError::new(
                ErrorKind::FailedPrecondition,
                &self.id,
                "the container has no cgroup (no cgroup v2 hierarchy in the guest)",
            )
        })
    }
}

/// The containers of this agent.
pub struct Engine<L: Launcher> {
    launcher: Arc<L>,
    cgroups: Option<CgroupRoot>,
    containers: Mutex<HashMap<String, Arc<Container>>>,
    /// Ids being created (reserved against duplicates).
    creating: Mutex<Vec<String>>,
    /// Whether the first sysfs a container of this VM mounted was
    /// read-only (see [`pod_sysfs`]).
    sysfs_ro: Mutex<Option<bool>>,
}

/// On a host, a pod's containers share one network namespace and so one
/// sysfs superblock: the first sysfs mount in it (the pause container's,
/// read-only unless the pod is privileged) decides whether every later
/// sysfs mount there is read-only, whatever the later spec asks (the
/// kernel reuses the superblock; a privileged container of a pod sees
/// `/sys` read-only under runc). In the guest all containers share the
/// VM's network namespace whose sysfs the agent mounted read-write, so
/// the agent applies the same rule itself: `first` is the read-only flag
/// of the first sysfs mount (recorded here), later ones follow it.
pub fn pod_sysfs(first: &mut Option<bool>, spec: &mut Spec) {
    for m in spec
        .mounts
        .iter_mut()
        .filter(|m| m.kind.as_deref() == Some("sysfs"))
    {
        let ro = super::mounts::parse(Some("sysfs"), &m.options).flags & libc::MS_RDONLY != 0;
        match *first {
            None => *first = Some(ro),
            Some(true) if !ro => m.options.push("ro".to_owned()),
            Some(_) => {}
        }
    }
}

impl<L: Launcher> std::fmt::Debug for Engine<L> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("cgroups", &self.cgroups)
            .finish_non_exhaustive()
    }
}

/// A container id must be a safe single path component.
pub fn validate_id(id: &str) -> Result<(), ContainerError> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && id != "."
        && id != ".."
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '+'));
    if ok {
        Ok(())
    } else {
        Err(ContainerError::new(
            ErrorKind::InvalidArgument,
            id,
            "bad container id (use 1-128 of A-Z a-z 0-9 + - _ ., as runc)",
        ))
    }
}

/// A signal number the kernel accepts (0..=SIGRTMAX; 0 checks that the
/// process exists, as `runc kill <id> 0` does).
pub fn validate_signal(id: &str, signal: u32) -> Result<libc::c_int, ContainerError> {
    match libc::c_int::try_from(signal) {
        Ok(s) if s >= 0 && s <= libc::SIGRTMAX() => Ok(s),
        _ => Err(ContainerError::new(
            ErrorKind::InvalidArgument,
            id,
            format!("bad signal {signal}"),
        )),
    }
}

/// Device rules the usual clients write, whose programs the agent loads
/// before a template is snapshotted (the kernel's verifier costs about
/// half a second of emulated guest time per new program): deny all (runc,
/// crun, podman, containerd's CRI), and deny all with containerd's default
/// Unix devices allowed (`ctr run`, containerd 1.6's
/// `oci.WithDefaultUnixDevices`, in its order).
const USUAL_DEVICE_RULES: &[(&str, &str)] = &[
    (
        "runc's default spec",
        r#"{"devices":[{"allow":false,"access":"rwm"}]}"#,
    ),
    (
        "containerd's default Unix devices",
        r#"{"devices":[{"allow":false,"access":"rwm"},
            {"allow":true,"type":"c","major":1,"minor":3,"access":"rwm"},
            {"allow":true,"type":"c","major":1,"minor":8,"access":"rwm"},
            {"allow":true,"type":"c","major":1,"minor":7,"access":"rwm"},
            {"allow":true,"type":"c","major":5,"minor":0,"access":"rwm"},
            {"allow":true,"type":"c","major":1,"minor":5,"access":"rwm"},
            {"allow":true,"type":"c","major":1,"minor":9,"access":"rwm"},
            {"allow":true,"type":"c","major":5,"minor":1,"access":"rwm"},
            {"allow":true,"type":"c","major":136,"access":"rwm"},
            {"allow":true,"type":"c","major":5,"minor":2,"access":"rwm"}]}"#,
    ),
];

impl<L: Launcher> Engine<L> {
    /// An engine starting processes through `launcher`, with container
    /// cgroups under `cgroup_root` (none if it has no cgroup v2 there).
    pub fn new(launcher: L, cgroup_root: Option<PathBuf>) -> Engine<L> {
        let cgroups = cgroup_root.map(CgroupRoot::new).filter(|root| {
            let ok = root.available();
            if !ok {
                tracing::warn!(
                    "no cgroup v2 hierarchy at {root:?}: containers get no cgroup and no device control"
                );
            }
            ok
        });
        Engine {
            launcher: Arc::new(launcher),
            cgroups,
            containers: Mutex::new(HashMap::new()),
            creating: Mutex::new(Vec::new()),
            sysfs_ro: Mutex::new(None),
        }
    }

    /// Does ahead of any container what every container needs (the
    /// parent cgroup with its controllers, the device program of the
    /// usual deny-all rules), so that a VM template holds it done.
    pub fn prepare(&self) {
        super::child::prepare_devices();
        super::ffi::non_default_signals();
        let Some(root) = &self.cgroups else {
            return;
        };
        let _span = crate::trace::span("engine.prepare");
        if let Err(e) = root.prepare() {
            tracing::warn!("preparing the containers' cgroup: {e}");
            return;
        }
        for (what, resources) in USUAL_DEVICE_RULES {
            let spec = format!(
                r#"{{"root":{{"path":"/"}},"process":{{"args":["true"]}},"linux":{{"resources":{resources}}}}}"#
            );
            let rules = Spec::parse(spec.as_bytes()).ok().and_then(|spec| {
                Some((
                    spec.resources().device_rules().ok()?,
                    spec.device_node_rules().ok()?,
                ))
            });
            let Some((rules, nodes)) = rules else {
                tracing::warn!("the device rules of {what} did not parse");
                continue;
            };
            if let Err(e) = super::devices::preload(&rules, &nodes) {
                tracing::warn!("loading the device program of {what}: {e}");
            }
        }
    }

    fn get(&self, id: &str) -> Result<Arc<Container>, ContainerError> {
        lock(&self.containers)
            .get(id)
            .cloned()
            .ok_or_else(|| ContainerError::new(ErrorKind::NotFound, id, "no such container"))
    }

    /// Records the exit of `proc` when it comes: through the launcher's
    /// exit callback, else on a thread of its own.
    fn watch(&self, proc: &Arc<Proc>) {
        let p = Arc::clone(proc);
        let record: ExitFn = Box::new(move |status| {
            *lock(&p.exit) = Some((status, super::ffi::now_unix_ms()));
            p.exited.notify_all();
        });
        if self.launcher.on_exit(proc.pid, record).is_ok() {
            return;
        }
        let launcher = Arc::clone(&self.launcher);
        let p = Arc::clone(proc);
        let spawned = crate::pool::spawn(move || {
            let status = launcher.wait(p.pid);
            *lock(&p.exit) = Some((status, super::ffi::now_unix_ms()));
            p.exited.notify_all();
        });
        if let Err(e) = spawned {
            tracing::error!("starting the waiter of pid {}: {e}", proc.pid);
        }
    }

    /// `CreateContainer`.
    pub fn create(&self, id: &str, spec_json: &[u8]) -> Result<libc::pid_t, ContainerError> {
        validate_id(id)?;
        let mut spec = Spec::parse(spec_json)
            .map_err(|e| ContainerError::new(ErrorKind::InvalidArgument, id, e.to_string()))?;
        {
            let containers = lock(&self.containers);
            let mut creating = lock(&self.creating);
            if containers.contains_key(id) || creating.iter().any(|c| c == id) {
                return Err(ContainerError::new(
                    ErrorKind::AlreadyExists,
                    id,
                    "a container with this id exists",
                ));
            }
            creating.push(id.to_owned());
        }
        let mut sysfs_ro = *lock(&self.sysfs_ro);
        pod_sysfs(&mut sysfs_ro, &mut spec);
        let began = std::time::Instant::now();
        let result = self.create_reserved(id, &spec);
        if result.is_ok() {
            *lock(&self.sysfs_ro) = sysfs_ro;
            tracing::info!("container {id}: created in {:?}", began.elapsed());
        }
        lock(&self.creating).retain(|c| c != id);
        result
    }

    fn create_reserved(&self, id: &str, spec: &Spec) -> Result<libc::pid_t, ContainerError> {
        let invalid = |m: String| ContainerError::new(ErrorKind::InvalidArgument, id, m);
        let internal = |m: String| ContainerError::new(ErrorKind::Internal, id, m);
        let root = spec
            .root
            .as_ref()
            .map(|r| r.path.as_str())
            .unwrap_or_default();
        if !root.starts_with('/') {
            return Err(invalid(format!("root.path {root:?} is not absolute")));
        }
        let rootfs =
            std::fs::canonicalize(root).map_err(|e| invalid(format!("rootfs {root}: {e}")))?;
        if !rootfs.is_dir() {
            return Err(invalid(format!("rootfs {root} is not a directory")));
        }
        let seccomp = match spec.linux.as_ref().and_then(|l| l.seccomp.as_ref()) {
            Some(profile) => {
                let _span = crate::trace::span("create.seccomp");
                super::seccomp::compile(profile).map_err(invalid)?
            }
            None => Vec::new(),
        };
        let mut devices = None;
        let cgroup = match &self.cgroups {
            Some(root) => {
                let cg_span = crate::trace::span("create.cgroup");
                let cg = root.create(id).map_err(|e| internal(e.to_string()))?;
                if let Err(e) = cg.apply(&spec.resources()) {
                    let _ = cg.destroy();
                    return Err(cgroup_error(id, &e));
                }
                drop(cg_span);
                let _span = crate::trace::span("create.devices");
                match attach_devices(id, &cg, spec) {
                    Ok(d) => devices = Some(d),
                    Err(e) => {
                        let _ = cg.destroy();
                        return Err(e);
                    }
                }
                Some(cg)
            }
            None => None,
        };
        let procs = cgroup.as_ref().map(|c| c.path().join("cgroup.procs"));
        let req = CreateRequest {
            id,
            spec,
            rootfs: &rootfs,
            cgroup_procs: procs.as_deref(),
            seccomp: &seccomp,
        };
        let launch_span = crate::trace::span("create.launch");
        let launched = self.launcher.create(&req);
        drop(launch_span);
        let mut launched = match launched {
            Ok(l) => l,
            Err(e) => {
                if let Some(cg) = &cgroup {
                    let _ = cg.destroy();
                }
                return Err(internal(e));
            }
        };
        let pid = launched.pid;
        let namespaces = std::mem::take(&mut launched.namespaces);
        let init = Proc::new(launched).map_err(internal)?;
        self.watch(&init);
        let container = Arc::new(Container {
            id: id.to_owned(),
            init,
            execs: Mutex::new(HashMap::new()),
            cgroup,
            devices: Mutex::new(devices),
            seccomp,
            // Its own, not one joined by path (a pod's shared one).
            has_pid_ns: spec
                .namespace("pid")
                .is_some_and(|ns| ns.path.as_deref().is_none_or(str::is_empty)),
            started: AtomicBool::new(false),
            paused: AtomicBool::new(false),
            _namespaces: namespaces,
        });
        lock(&self.containers).insert(id.to_owned(), container);
        tracing::debug!("container {id}: init pid {pid}");
        Ok(pid)
    }

    /// `StartContainer`.
    pub fn start(&self, id: &str) -> Result<(), ContainerError> {
        let c = self.get(id)?;
        let status = c.status();
        let gate = lock(&c.init.gate).take();
        let Some(gate) = gate.filter(|_| status == Status::Created) else {
            return Err(ContainerError::new(
                ErrorKind::FailedPrecondition,
                id,
                format!("cannot start a {} container", status.as_str()),
            ));
        };
        c.started.store(true, Ordering::SeqCst);
        let began = std::time::Instant::now();
        gate.release()
            .map_err(|e| ContainerError::new(ErrorKind::Internal, id, e))?;
        tracing::info!("container {id}: started in {:?}", began.elapsed());
        Ok(())
    }

    /// `ExecProcess`.
    pub fn exec(
        &self,
        id: &str,
        exec_id: &str,
        process_json: &[u8],
    ) -> Result<libc::pid_t, ContainerError> {
        let c = self.get(id)?;
        if exec_id.is_empty() {
            return Err(ContainerError::new(
                ErrorKind::InvalidArgument,
                id,
                "an exec id must not be empty",
            ));
        }
        let process = Process::parse(process_json)
            .map_err(|e| ContainerError::new(ErrorKind::InvalidArgument, id, e.to_string()))?;
        // runc also runs a process in a created container (its init
        // waits before execve, its namespaces are set up).
        let status = c.status();
        if !matches!(status, Status::Running | Status::Created) {
            return Err(ContainerError::new(
                ErrorKind::FailedPrecondition,
                id,
                format!("cannot exec in a {} container", status.as_str()),
            ));
        }
        let mut execs = lock(&c.execs);
        if execs.contains_key(exec_id) {
            return Err(ContainerError::new(
                ErrorKind::AlreadyExists,
                id,
                format!("exec id {exec_id:?} exists"),
            ));
        }
        let procs = c.cgroup.as_ref().map(|cg| cg.path().join("cgroup.procs"));
        let req = ExecRequest {
            id,
            init_pid: c.init.pid,
            process: &process,
            cgroup_procs: procs.as_deref(),
            seccomp: &c.seccomp,
        };
        let internal = |m: String| ContainerError::new(ErrorKind::Internal, id, m);
        let launched = self
            .launcher
            .exec(&req)
            .map_err(|e| internal(format!("exec {exec_id}: {e}")))?;
        let pid = launched.pid;
        let proc = Proc::new(launched).map_err(internal)?;
        self.watch(&proc);
        execs.insert(exec_id.to_owned(), proc);
        Ok(pid)
    }

    /// `WaitProcess`: blocks until the process exits.
    pub fn wait(&self, id: &str, exec_id: &str) -> Result<Exit, ContainerError> {
        let proc = self.get(id)?.process(exec_id)?;
        Ok(proc.wait())
    }

    /// `SignalProcess`.
    pub fn signal(
        &self,
        id: &str,
        exec_id: &str,
        signal: u32,
        all: bool,
    ) -> Result<(), ContainerError> {
        let signal = validate_signal(id, signal)?;
        let c = self.get(id)?;
        let proc = c.process(exec_id)?;
        let internal = |m: String| ContainerError::new(ErrorKind::Internal, id, m);
        if all {
            if let Some(cg) = &c.cgroup {
                cg.signal_all(signal).map_err(|e| internal(e.to_string()))?;
            }
            for p in lock(&c.execs).values().chain([&c.init]) {
                if p.exit().is_none() {
                    let _ = self.launcher.signal(p.pid, signal);
                }
            }
            return Ok(());
        }
        if proc.exit().is_some() {
            // runc's words, which containerd's runc shim matches to mean
            // "already finished", and NotFound, which containerd's own
            // shims answer for it.
            return Err(ContainerError::new(
                ErrorKind::NotFound,
                id,
                format!("process {exec_id:?} already finished: container not running"),
            ));
        }
        self.launcher
            .signal(proc.pid, signal)
            .map_err(|e| internal(format!("kill({}, {signal}): {e}", proc.pid)))
    }

    /// `WriteStdin`.
    pub fn write_stdin(
        &self,
        id: &str,
        exec_id: &str,
        data: &[u8],
    ) -> Result<usize, ContainerError> {
        let proc = self.get(id)?.process(exec_id)?;
        proc.stdin.write(data).map_err(|e| {
            ContainerError::new(ErrorKind::Internal, id, format!("writing stdin: {e}"))
        })
    }

    /// `CloseStdin`.
    pub fn close_stdin(&self, id: &str, exec_id: &str) -> Result<(), ContainerError> {
        let proc = self.get(id)?.process(exec_id)?;
        proc.stdin.close(proc.tty).map_err(|e| {
            ContainerError::new(ErrorKind::Internal, id, format!("closing stdin: {e}"))
        })
    }

    /// `ReadStdout` / `ReadStderr`: blocks until output or its end.
    pub fn read(
        &self,
        id: &str,
        exec_id: &str,
        stderr: bool,
        max: usize,
    ) -> Result<Vec<u8>, ContainerError> {
        let proc = self.get(id)?.process(exec_id)?;
        let out = if stderr { &proc.stderr } else { &proc.stdout };
        Ok(out.read(max))
    }

    /// `ResizeTty`.
    pub fn resize(
        &self,
        id: &str,
        exec_id: &str,
        rows: u32,
        cols: u32,
    ) -> Result<(), ContainerError> {
        let proc = self.get(id)?.process(exec_id)?;
        let Some(terminal) = &proc.terminal else {
            return Err(ContainerError::new(
                ErrorKind::FailedPrecondition,
                id,
                format!("process {exec_id:?} has no terminal"),
            ));
        };
        let dim = |v: u32| u16::try_from(v).unwrap_or(u16::MAX);
        self.launcher
            .resize(terminal, dim(rows), dim(cols))
            .map_err(|e| {
                ContainerError::new(
                    ErrorKind::Internal,
                    id,
                    format!("resizing the terminal: {e}"),
                )
            })
    }

    /// `ListProcesses`.
    pub fn list(&self, id: &str) -> Result<Vec<u32>, ContainerError> {
        let c = self.get(id)?;
        if let Some(cg) = &c.cgroup {
            return cg
                .procs()
                .map_err(|e| ContainerError::new(ErrorKind::Internal, id, e.to_string()));
        }
        let execs = lock(&c.execs);
        Ok(execs
            .values()
            .chain([&c.init])
            .filter(|p| p.exit().is_none())
            .filter_map(|p| u32::try_from(p.pid).ok())
            .collect())
    }

    /// `PauseContainer` (`true`) / `ResumeContainer` (`false`).
    pub fn set_paused(&self, id: &str, paused: bool) -> Result<(), ContainerError> {
        let c = self.get(id)?;
        let (want, verb) = if paused {
            (Status::Running, "pause")
        } else {
            (Status::Paused, "resume")
        };
        let status = c.status();
        if status != want {
            return Err(ContainerError::new(
                ErrorKind::FailedPrecondition,
                id,
                format!("cannot {verb} a {} container", status.as_str()),
            ));
        }
        c.cgroup()?
            .freeze(paused)
            .map_err(|e| ContainerError::new(ErrorKind::Internal, id, e.to_string()))?;
        c.paused.store(paused, Ordering::SeqCst);
        Ok(())
    }

    /// `UpdateContainer`.
    pub fn update(&self, id: &str, resources_json: &[u8]) -> Result<(), ContainerError> {
        let c = self.get(id)?;
        let resources = Resources::parse(resources_json)
            .map_err(|e| ContainerError::new(ErrorKind::InvalidArgument, id, e.to_string()))?;
        let cg = c.cgroup()?;
        cg.apply(&resources).map_err(|e| cgroup_error(id, &e))?;
        if resources.devices.is_empty() {
            return Ok(());
        }
        let rules = resources
            .device_rules()
            .map_err(|e| ContainerError::new(ErrorKind::InvalidArgument, id, e.to_string()))?;
        let mut devices = lock(&c.devices);
        let filter = devices.as_mut().ok_or_else(|| {
            ContainerError::new(ErrorKind::Internal, id, "no device program to replace")
        })?;
        filter
            .replace(cg.path(), &rules)
            .map_err(|e| ContainerError::new(ErrorKind::Internal, id, e.to_string()))
    }

    /// `StatsContainer`.
    pub fn stats(&self, id: &str) -> Result<Stats, ContainerError> {
        let c = self.get(id)?;
        Ok(c.cgroup.as_ref().map(Cgroup::stats).unwrap_or_default())
    }

    /// `StateContainer`.
    pub fn state(&self, id: &str) -> Result<State, ContainerError> {
        let c = self.get(id)?;
        let status = c.status();
        Ok(State {
            status,
            pid: c.init.pid,
            exit_status: c.init.exit().map(|(s, _)| s),
        })
    }

    /// `RemoveContainer`: kills what is left, waits for init, removes the
    /// cgroup (the mounts live in the container's mount namespace and go
    /// with its last process).
    pub fn remove(&self, id: &str) -> Result<(), ContainerError> {
        let c = self.get(id)?;
        let began = std::time::Instant::now();
        let internal = |m: String| ContainerError::new(ErrorKind::Internal, id, m);
        if let Some(cg) = &c.cgroup {
            if c.paused.load(Ordering::SeqCst) {
                let _ = cg.freeze(false);
            }
            let _ = cg.signal_all(libc::SIGKILL);
        }
        // Dropping the gate of a created container closes its start pipe.
        drop(lock(&c.init.gate).take());
        let procs: Vec<Arc<Proc>> = lock(&c.execs)
            .values()
            .cloned()
            .chain([Arc::clone(&c.init)])
            .collect();
        for p in &procs {
            if p.exit().is_none() {
                let _ = self.launcher.signal(p.pid, libc::SIGKILL);
            }
        }
        for p in &procs {
            // Without a pid namespace, exec'd processes outlive init.
            if (p.pid == c.init.pid || !c.has_pid_ns)
                && p.wait_timeout(Duration::from_secs(10)).is_none()
            {
                return Err(internal(format!(
                    "process {} did not exit after SIGKILL",
                    p.pid
                )));
            }
        }
        if let Some(cg) = &c.cgroup {
            cg.destroy().map_err(|e| internal(e.to_string()))?;
        }
        lock(&self.containers).remove(id);
        tracing::info!("container {id}: removed in {:?}", began.elapsed());
        Ok(())
    }
}

/// Attaches the device program of `spec` to the container's cgroup.
fn attach_devices(id: &str, cg: &Cgroup, spec: &Spec) -> Result<DeviceFilter, ContainerError> {
    let invalid = |e: super::spec::SpecError| {
        ContainerError::new(ErrorKind::InvalidArgument, id, e.to_string())
    };
    let rules = spec.resources().device_rules().map_err(invalid)?;
    let nodes = spec.device_node_rules().map_err(invalid)?;
    let filter = DeviceFilter::attach(cg.path(), &rules, nodes)
        .map_err(|e| ContainerError::new(ErrorKind::Internal, id, e.to_string()))?;
    tracing::debug!(
        "container {id}: device program of {} instructions",
        filter.len()
    );
    Ok(filter)
}

/// A cgroup error as a container error: a bad or unsupported setting is
/// the request's fault (InvalidArgument), anything else Internal.
fn cgroup_error(id: &str, e: &super::cgroup::CgroupError) -> ContainerError {
    let kind = if e.is_invalid() {
        ErrorKind::InvalidArgument
    } else {
        ErrorKind::Internal
    };
    ContainerError::new(kind, id, e.to_string())
}

#[cfg(test)]
mod tests;
