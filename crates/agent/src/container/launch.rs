//! The real [`Launcher`]: forks container processes, reports their setup
//! errors, lets them execve, waits for them through the [`Reaper`].

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use super::child::{self, ChildFds, FAILED, READY};
use super::engine::{CreateRequest, ExecRequest, Gate, Launched, Launcher};
use super::ffi;
use super::spec::Process;
use super::steps::{self as step, timed, ChildSteps};
use super::vfork::{self, Started};
use crate::reaper::{Expecting, Reaper};
use seccompiler::BpfProgram;
use std::sync::{Arc, OnceLock};

/// Starts children with `clone(CLONE_VM | CLONE_VFORK)` (see [`vfork`])
/// on a thread of the agent's pool that first enters the pid namespace the
/// child must be in (a pid namespace applies to the children of the thread
/// that enters it, and a multi-threaded process may do that per thread).
#[derive(Debug, Clone)]
pub struct LinuxLauncher {
    reaper: Reaper,
    /// The agent's own pid namespace: a forking thread returns its
    /// children's pid namespace to it (None if it could not be opened:
    /// each fork then runs on a thread of its own).
    own_pidns: Option<std::sync::Arc<OwnedFd>>,
}

impl LinuxLauncher {
    /// A launcher whose children are waited for through `reaper`.
    #[must_use]
    pub fn new(reaper: Reaper) -> LinuxLauncher {
        let own_pidns = ffi::open(Path::new("/proc/self/ns/pid"), libc::O_RDONLY)
            .map_err(|e| tracing::warn!("opening the agent's pid namespace: {e}"))
            .ok()
            .map(std::sync::Arc::new);
        LinuxLauncher { reaper, own_pidns }
    }
}

/// Where the child's pid namespace comes from.
enum PidNs {
    /// The agent's own.
    Inherit,
    /// A new one.
    New,
    /// This namespace (opened), at this path.
    Join(OwnedFd, PathBuf),
}

impl PidNs {
    fn of(spec: &super::spec::Spec) -> Result<PidNs, String> {
        Ok(match spec.namespace("pid") {
            None => PidNs::Inherit,
            Some(ns) => match ns.path.as_deref().filter(|p| !p.is_empty()) {
                Some(path) => PidNs::join(Path::new(path))?,
                None => PidNs::New,
            },
        })
    }

    fn join(path: &Path) -> Result<PidNs, String> {
        let fd = ffi::open(path, libc::O_RDONLY)
            .map_err(|e| format!("opening pid namespace {}: {e}", path.display()))?;
        Ok(PidNs::Join(fd, path.to_path_buf()))
    }

    /// Sets the calling thread's pid namespace for children.
    fn enter(&self) -> Result<(), String> {
        match self {
            PidNs::Inherit => Ok(()),
            PidNs::New => ffi::unshare(libc::CLONE_NEWPID)
                .map_err(|e| format!("creating the pid namespace: {e}")),
            PidNs::Join(fd, path) => ffi::setns(fd.as_fd(), libc::CLONE_NEWPID)
                .map_err(|e| format!("joining pid namespace {}: {e}", path.display())),
        }
    }
}

/// The child's ends of its stdio.
struct ChildStdio {
    fds: [OwnedFd; 3],
    tty: bool,
    /// The terminal slave's path, bind-mounted on /dev/console.
    console: Option<String>,
}

/// The agent's ends of a process's stdio.
struct AgentStdio {
    stdin: OwnedFd,
    stdout: OwnedFd,
    stderr: Option<OwnedFd>,
    terminal: Option<OwnedFd>,
}

/// `container_root`: for an exec, the container's root, whose devpts the
/// terminal comes from (as runc's, so the process finds its /dev/pts/N);
/// the guest's when the container has none usable.
fn stdio(process: &Process, container_root: Option<&Path>) -> io::Result<(ChildStdio, AgentStdio)> {
    if process.terminal {
        let (master, slave, path) = match container_root.map(ffi::openpty_in) {
            Some(Ok(pty)) => pty,
            _ => ffi::openpty()?,
        };
        if let Some(size) = process.console_size {
            ffi::set_winsize(master.as_fd(), size.height, size.width)?;
        }
        let child = ChildStdio {
            fds: [slave.try_clone()?, slave.try_clone()?, slave],
            tty: true,
            console: Some(path),
        };
        let agent = AgentStdio {
            stdin: master.try_clone()?,
            stdout: master.try_clone()?,
            stderr: None,
            terminal: Some(master),
        };
        Ok((child, agent))
    } else {
        let (in_r, in_w) = ffi::pipe()?;
        let (out_r, out_w) = ffi::pipe()?;
        let (err_r, err_w) = ffi::pipe()?;
        let child = ChildStdio {
            fds: [in_r, out_w, err_w],
            tty: false,
            console: None,
        };
        let agent = AgentStdio {
            stdin: in_w,
            stdout: out_r,
            stderr: Some(err_r),
            terminal: None,
        };
        Ok((child, agent))
    }
}

/// The agent's ends of the start and sync pipes of a created init.
#[derive(Debug)]
struct PipeGate {
    start: OwnedFd,
    sync: OwnedFd,
}

impl Gate for PipeGate {
    fn release(self: Box<Self>) -> Result<(), String> {
        ffi::write_all(self.start.as_fd(), &[1]).map_err(|e| format!("signalling start: {e}"))?;
        // The sync pipe closes at execve (O_CLOEXEC); a message means it
        // failed.
        let msg =
            ffi::read_to_end(self.sync.as_fd()).map_err(|e| format!("reading exec result: {e}"))?;
        match msg.split_first() {
            None => Ok(()),
            Some((_, text)) => Err(String::from_utf8_lossy(text).into_owned()),
        }
    }
}

impl LinuxLauncher {
    /// Starts `body(&keep)` in a new process whose pid namespace is as
    /// `pidns` says; `keep` is dropped once it exec'd or exited. The
    /// starting thread's namespace for children goes back to the agent's
    /// afterwards (without the agent's own namespace at hand, a thread is
    /// made for the child instead of a pool thread).
    fn spawn<K: vfork::Keep>(
        &self,
        pidns: PidNs,
        body: fn(&K) -> !,
        keep: K,
    ) -> Result<(Started, Expecting), String> {
        let expecting = self.reaper.expect();
        let fresh = self.own_pidns.is_none() && !matches!(pidns, PidNs::Inherit);
        let own = self.own_pidns.clone();
        let back = self.own_pidns.clone();
        let prepare = move || {
            if let Some(own) = &own {
                // A start that failed half-way may have left it moved.
                ffi::setns(own.as_fd(), libc::CLONE_NEWPID)
                    .map_err(|e| format!("resetting the pid namespace for children: {e}"))?;
            }
            pidns.enter()
        };
        let finish = move || {
            if let Some(own) = &back {
                if let Err(e) = ffi::setns(own.as_fd(), libc::CLONE_NEWPID) {
                    tracing::error!("resetting the pid namespace for children: {e}");
                }
            }
        };
        let started = vfork::start(body, keep, prepare, finish, fresh)?;
        Ok((started, expecting))
    }

    /// The pid of a child that reported (or whose pipe reached EOF),
    /// watched by the reaper from now on.
    fn claim(started: &Started, expecting: Expecting) -> Result<libc::pid_t, String> {
        let pid = started.pid()?;
        expecting.claim(pid);
        Ok(pid)
    }

    /// After a failed setup: collect the child's exit status.
    fn reap(&self, pid: libc::pid_t) {
        let _ = ffi::kill(pid, libc::SIGKILL);
        let _ = self.reaper.wait(pid);
    }

    /// A child that reported a failure or exited: `message`, the child
    /// reaped; the start's own error when the child was never made.
    fn failed(&self, started: &Started, expecting: Expecting, message: String) -> String {
        match Self::claim(started, expecting) {
            Ok(pid) => {
                self.reap(pid);
                message
            }
            Err(e) => e,
        }
    }
}

fn launched(pid: libc::pid_t, io: AgentStdio, gate: Option<Box<dyn Gate>>) -> Launched {
    Launched {
        pid,
        stdin: Some(io.stdin),
        stdout: Some(io.stdout),
        stderr: io.stderr,
        terminal: io.terminal,
        gate,
        namespaces: Vec::new(),
    }
}

/// The namespaces the init `pid` made for itself as `spec` asks (a
/// mount namespace unless it joins one; cgroup, ipc and uts when asked
/// without a path; the network is the VM's unless joined), opened (see
/// [`Launched::namespaces`]). Told by the spec, not by comparing
/// `/proc/*/ns` links: ten fewer path walks in the guest per container.
/// The pid namespace is left out: its end is the init's, whatever holds
/// it.
fn own_namespaces(pid: libc::pid_t, spec: &super::spec::Spec) -> Vec<OwnedFd> {
    let made = |kind: &str| {
        spec.namespace(kind)
            .is_some_and(|ns| ns.path.as_deref().is_none_or(str::is_empty))
    };
    let joins_mount = spec
        .namespace("mount")
        .and_then(|ns| ns.path.as_deref())
        .is_some_and(|p| !p.is_empty());
    let names = [
        ("mnt", !joins_mount),
        ("ipc", made("ipc")),
        ("uts", made("uts")),
        ("cgroup", made("cgroup")),
    ];
    names
        .iter()
        .filter(|(_, own)| *own)
        .filter_map(|(name, _)| {
            let path = PathBuf::from(format!("/proc/{pid}/ns/{name}"));
            ffi::open(&path, libc::O_RDONLY)
                .map_err(|e| tracing::debug!("holding {}: {e}", path.display()))
                .ok()
        })
        .collect()
}

fn child_fds(io: &ChildStdio, start: Option<&OwnedFd>, sync: &OwnedFd) -> ChildFds {
    ChildFds {
        stdio: [
            io.fds[0].as_raw_fd(),
            io.fds[1].as_raw_fd(),
            io.fds[2].as_raw_fd(),
        ],
        tty: io.tty,
        start: start.map(AsRawFd::as_raw_fd),
        sync: sync.as_raw_fd(),
    }
}

/// What an init child uses, owned by the job that started it (see
/// [`vfork`]): the agent's call returns while the child waits for start.
struct InitPlan {
    spec: super::spec::Spec,
    process: Process,
    rootfs: PathBuf,
    cgroup_procs: Option<PathBuf>,
    seccomp: Vec<BpfProgram>,
    io: ChildStdio,
    start: OwnedFd,
    sync: OwnedFd,
    steps: Option<Arc<ChildSteps>>,
    env: OnceLock<Vec<String>>,
    exec: OnceLock<ffi::ExecArgs>,
}

/// The body of an init child: setup, report, wait for start, execve.
fn init_child(plan: &InitPlan) -> ! {
    let fds = child_fds(&plan.io, Some(&plan.start), &plan.sync);
    let steps = plan.steps.as_deref();
    let placed = || -> Result<(), String> {
        ffi::reset_signals().map_err(|e| format!("resetting signals: {e}"))?;
        child::arrange_fds(&fds)
    };
    if let Err(e) = timed(steps, step::PREPARE, placed) {
        child::report_to(fds.sync, &Err(e));
        ffi::exit_now(1);
    }
    let process = &plan.process;
    let setup = || -> Result<Vec<String>, String> {
        child::set_oom_score_adj(process)?;
        timed(steps, step::CGROUP, || {
            child::join_cgroup(plan.cgroup_procs.as_deref())
        })?;
        timed(steps, step::NAMESPACES, || {
            child::enter_namespaces(&plan.spec)
        })?;
        timed(steps, step::MOUNTS, || {
            child::mount_rootfs(&plan.spec, &plan.rootfs, plan.io.console.as_deref(), steps)
        })?;
        timed(steps, step::PIVOT_ROOT, || child::switch_root(&plan.rootfs))?;
        child::create_cwd(process)?;
        let env = child::process_env(process);
        timed(steps, step::FINISH_ROOTFS, || {
            child::finish_rootfs(&plan.spec)
        })?;
        timed(steps, step::PROCESS, || {
            child::apply_process(process, &plan.seccomp)
        })?;
        Ok(env)
    };
    // What is still allocated at execve stays in the agent's memory: the
    // environment goes into the plan, errors are dropped before _exit.
    match setup() {
        Ok(env) => {
            let _ = plan.env.set(env);
            child::report(&Ok(()));
        }
        Err(e) => {
            child::report(&Err(e));
            ffi::exit_now(1);
        }
    }
    if !child::wait_for_start() {
        ffi::exit_now(1);
    }
    let env = plan.env.get().map_or(&[][..], Vec::as_slice);
    child::report(&Err(child::exec(process, env, &plan.exec)));
    ffi::exit_now(127)
}

/// What an exec child uses, owned by the job that started it.
struct ExecPlan {
    process: Process,
    cgroup_procs: Option<PathBuf>,
    seccomp: Vec<BpfProgram>,
    namespaces: Vec<(OwnedFd, libc::c_int)>,
    io: ChildStdio,
    sync: OwnedFd,
    env: OnceLock<Vec<String>>,
    exec: OnceLock<ffi::ExecArgs>,
}

/// The body of an exec child: join the container, apply, execve.
fn exec_child(plan: &ExecPlan) -> ! {
    let fds = child_fds(&plan.io, None, &plan.sync);
    // Before the mount namespace changes the view of /sys/fs/cgroup, and
    // before arrange_fds closes the namespace descriptors.
    let join = || -> Result<(), String> {
        ffi::reset_signals().map_err(|e| format!("resetting signals: {e}"))?;
        child::set_oom_score_adj(&plan.process)?;
        child::join_cgroup(plan.cgroup_procs.as_deref())?;
        for (fd, kind) in &plan.namespaces {
            ffi::setns(fd.as_fd(), *kind).map_err(|e| format!("setns({kind:#x}): {e}"))?;
        }
        Ok(())
    };
    if let Err(e) = join() {
        child::report_to(fds.sync, &Err(e));
        ffi::exit_now(127);
    }
    if let Err(e) = child::arrange_fds(&fds) {
        child::report_to(fds.sync, &Err(e));
        ffi::exit_now(127);
    }
    let env = plan.env.get_or_init(|| child::process_env(&plan.process));
    let msg = match child::apply_process(&plan.process, &plan.seccomp) {
        Ok(()) => child::exec(&plan.process, env, &plan.exec),
        Err(e) => e,
    };
    child::report(&Err(msg));
    ffi::exit_now(127)
}

/// Namespaces of the init process an exec joins, other than pid, in the
/// order they are entered (mount last: it changes the root).
const EXEC_NAMESPACES: &[(&str, libc::c_int)] = &[
    ("cgroup", libc::CLONE_NEWCGROUP),
    ("ipc", libc::CLONE_NEWIPC),
    ("uts", libc::CLONE_NEWUTS),
    ("net", libc::CLONE_NEWNET),
    ("mnt", libc::CLONE_NEWNS),
];

fn same_ns(pid: libc::pid_t, name: &str) -> bool {
    let theirs = std::fs::read_link(format!("/proc/{pid}/ns/{name}"));
    let ours = std::fs::read_link(format!("/proc/self/ns/{name}"));
    matches!((theirs, ours), (Ok(a), Ok(b)) if a == b)
}

impl Launcher for LinuxLauncher {
    fn create(&self, req: &CreateRequest<'_>) -> Result<Launched, String> {
        // The pod's tmpfs volumes, in the agent's mount namespace so that
        // every container of the pod binds the same one.
        super::ephemeral::prepare(req.spec)?;
        let process = req.spec.process();
        let (child_io, io) = stdio(&process, None).map_err(|e| format!("creating stdio: {e}"))?;
        let (start_r, start_w) = ffi::pipe().map_err(|e| format!("creating start pipe: {e}"))?;
        let (sync_r, sync_w) = ffi::pipe().map_err(|e| format!("creating sync pipe: {e}"))?;
        let pidns = PidNs::of(req.spec)?;
        let steps = ChildSteps::new().map(Arc::new);
        let plan = InitPlan {
            spec: req.spec.clone(),
            process,
            rootfs: req.rootfs.to_path_buf(),
            cgroup_procs: req.cgroup_procs.map(Path::to_path_buf),
            seccomp: req.seccomp.to_vec(),
            io: child_io,
            start: start_r,
            sync: sync_w,
            steps: steps.clone(),
            env: OnceLock::new(),
            exec: OnceLock::new(),
        };
        let fork_span = crate::trace::span("launch.fork");
        let (started, expecting) = self.spawn(pidns, init_child, plan)?;
        drop(fork_span);
        let mut first = [0u8; 1];
        let pid = match ffi::read(sync_r.as_fd(), &mut first) {
            Ok(1) if first[0] == READY => Self::claim(&started, expecting)?,
            Ok(1) if first[0] == FAILED => {
                let rest = ffi::read_to_end(sync_r.as_fd()).unwrap_or_default();
                let msg = String::from_utf8_lossy(&rest).into_owned();
                return Err(self.failed(&started, expecting, msg));
            }
            Ok(_) => {
                let msg = "the init process exited during setup".to_owned();
                return Err(self.failed(&started, expecting, msg));
            }
            Err(e) => {
                let msg = format!("reading the setup result: {e}");
                return Err(self.failed(&started, expecting, msg));
            }
        };
        for (name, start_us, duration_us) in steps.iter().flat_map(|s| s.recorded()) {
            crate::trace::add(crate::trace::Span {
                name,
                start_us,
                duration_us,
                thread: u32::try_from(pid).unwrap_or(0),
            });
        }
        let gate = PipeGate {
            start: start_w,
            sync: sync_r,
        };
        let mut l = launched(pid, io, Some(Box::new(gate)));
        l.namespaces = own_namespaces(pid, req.spec);
        Ok(l)
    }

    fn exec(&self, req: &ExecRequest<'_>) -> Result<Launched, String> {
        let init = req.init_pid;
        let root = PathBuf::from(format!("/proc/{init}/root"));
        let (child_io, io) =
            stdio(req.process, Some(&root)).map_err(|e| format!("creating stdio: {e}"))?;
        let (sync_r, sync_w) = ffi::pipe().map_err(|e| format!("creating sync pipe: {e}"))?;
        let mut namespaces = Vec::new();
        for (name, kind) in EXEC_NAMESPACES {
            if same_ns(init, name) {
                continue;
            }
            let path = PathBuf::from(format!("/proc/{init}/ns/{name}"));
            let fd = ffi::open(&path, libc::O_RDONLY)
                .map_err(|e| format!("opening {}: {e}", path.display()))?;
            namespaces.push((fd, *kind));
        }
        let pidns = if same_ns(init, "pid") {
            PidNs::Inherit
        } else {
            PidNs::join(&PathBuf::from(format!("/proc/{init}/ns/pid")))?
        };
        let plan = ExecPlan {
            process: req.process.clone(),
            cgroup_procs: req.cgroup_procs.map(Path::to_path_buf),
            seccomp: req.seccomp.to_vec(),
            namespaces,
            io: child_io,
            sync: sync_w,
            env: OnceLock::new(),
            exec: OnceLock::new(),
        };
        let (started, expecting) = self.spawn(pidns, exec_child, plan)?;
        // EOF once the child exec'd (its end is close-on-exec, the plan's
        // is dropped then); a message if it failed.
        match ffi::read_to_end(sync_r.as_fd()) {
            Ok(m) if m.is_empty() => {
                let pid = Self::claim(&started, expecting)?;
                Ok(launched(pid, io, None))
            }
            Ok(m) => {
                let msg = String::from_utf8_lossy(m.get(1..).unwrap_or_default()).into_owned();
                Err(self.failed(&started, expecting, msg))
            }
            Err(e) => Err(self.failed(&started, expecting, format!("reading exec result: {e}"))),
        }
    }

    fn wait(&self, pid: libc::pid_t) -> i32 {
        self.reaper.wait(pid).map_or(-1, |s| s.code())
    }

    fn on_exit(
        &self,
        pid: libc::pid_t,
        f: super::engine::ExitFn,
    ) -> Result<(), super::engine::ExitFn> {
        self.reaper.on_exit(
            pid,
            crate::reaper::ExitCallback(Box::new(move |status| f(status.code()))),
        );
        Ok(())
    }

    fn signal(&self, pid: libc::pid_t, signal: libc::c_int) -> io::Result<()> {
        ffi::kill(pid, signal)
    }

    fn resize(&self, terminal: &OwnedFd, rows: u16, cols: u16) -> io::Result<()> {
        ffi::set_winsize(terminal.as_fd(), rows, cols)
    }
}
