//! The container operations behind the runc-style commands. Each takes the
//! state directory's lock for its read-modify-write of `state.json`.

use std::fs;
use std::path::Path;
use std::process::{Child, Command};
use std::sync::Arc;
use std::time::Duration;

use nacre_protocol::ttrpc::Code;

use crate::agent::{AgentClientError, ContainerStats, INIT_EXEC_ID};
use crate::pod::ContainerHandle;

use super::launch::launch_detached;
use super::lock::DirLock;
use super::monitor::connect_agent;
use super::mounts::{create_private_dir, ensure_private_dir};
use super::paths::ContainerPaths;
use super::process::{kill_if_runs, kill_vmm, pid_alive, send_signal, wait_dead};
use super::share::SharedDir;
use super::state::{State, Status};
use super::ContainerError;

/// The executable name of the monitor (the `nacre` binary itself).
pub const MONITOR_EXE: &str = "nacre";
/// The VMM's executable name.
pub const VMM_EXE: &str = "nacre-vmm";
/// runc's reason for refusing to signal a stopped container: containerd's
/// runc shim matches this text to mean "already finished".
pub const NOT_RUNNING: &str = "container not running";

/// `create`: makes the state and shared directories,
/// then starts the monitor (`monitor`, a prepared `nacre monitor ...`
/// command; `--sync-fd N` is appended) and waits for its report. On any
/// failure nothing is left behind. Returns the monitor, running detached.
pub fn create(paths: &ContainerPaths, monitor: Command) -> Result<Child, ContainerError> {
    let dir = paths.dir();
    if dir.exists() {
        return Err(ContainerError::Exists(paths.id().into()));
    }
    ensure_private_dir(paths.root()).map_err(ContainerError::io("creating", paths.root()))?;
    if let Err(e) = create_private_dir(&dir) {
        return Err(if e.kind() == std::io::ErrorKind::AlreadyExists {
            ContainerError::Exists(paths.id().into())
        } else {
            ContainerError::Io {
                what: "creating",
                path: dir,
                source: e,
            }
        });
    }
    let vm_dir = paths.vm_dir();
    if !vm_dir.starts_with(&dir) && vm_dir.exists() {
        // Left by a container of the same root and id that was never
        // deleted (its state directory is gone). Removed only when no VMM
        // runs there: a live one is somebody's VM, never ours to break.
        if let Some(pid) = super::process::vmm_in(&vm_dir, &[]) {
            let _ = fs::remove_dir(&dir);
            return Err(ContainerError::RunDirInUse { path: vm_dir, pid });
        }
        tracing::warn!("removing the stale run directory {}", vm_dir.display());
        let _ = fs::remove_dir_all(&vm_dir);
    }
    let result = (|| {
        let _lock = DirLock::acquire(&dir, paths.id())?;
        // The monitor shares the rootfs and volumes (`Pod::add_container`).
        SharedDir::create(&dir)?;
        launch_detached(monitor)
    })();
    if result.is_err() {
        if let Err(e) = destroy(paths) {
            tracing::error!("cleaning up after the failed create: {e}");
        }
        // A monitor killed while it made a VM template leaves the
        // template's work directory (its VMM died with it).
        if let Some(store) = crate::template::TemplateStore::from_env() {
            store.prune();
        }
    }
    result
}

/// Reads the state of an existing container.
pub fn load(paths: &ContainerPaths) -> Result<State, ContainerError> {
    let file = paths.state_file();
    if !paths.dir().is_dir() {
        return Err(ContainerError::NotFound(paths.id().into()));
    }
    if !file.exists() {
        return Err(ContainerError::WrongStatus {
            id: paths.id().into(),
            status: "creating",
            reason: "it is still being created",
        });
    }
    State::load(&file)
}

fn wrong(state: &State, status: Status, reason: &'static str) -> ContainerError {
    ContainerError::WrongStatus {
        id: state.id.clone(),
        status: status.as_str(),
        reason,
    }
}

/// Locks the container and loads its state.
fn locked(paths: &ContainerPaths) -> Result<(DirLock, State), ContainerError> {
    let lock = DirLock::acquire(&paths.dir(), paths.id())?;
    let state = load(paths)?;
    Ok((lock, state))
}

/// `start`: lets the created container's init process run.
pub fn start(paths: &ContainerPaths) -> Result<(), ContainerError> {
    let (_lock, mut state) = locked(paths)?;
    let status = state.effective_status();
    if status != Status::Created {
        return Err(wrong(
            &state,
            status,
            "only a created container can be started",
        ));
    }
    // Through the monitor's agent connection when it answers (see
    // `control`), else a connection of this process's own.
    let timeout = crate::sandbox::default_call_timeout() + Duration::from_secs(5);
    match super::control::request_start(&paths.dir(), timeout) {
        Some(Ok(())) => {}
        Some(Err(e)) => return Err(ContainerError::Monitor(e)),
        None => container(paths)?.start()?,
    }
    state.status = Status::Running;
    state.save(&paths.state_file())
}

/// `kill`: signals the init process (`all`: every process).
pub fn kill(paths: &ContainerPaths, signal: i32, all: bool) -> Result<(), ContainerError> {
    let (_lock, state) = locked(paths)?;
    let status = state.effective_status();
    if status == Status::Stopped {
        return Err(wrong(&state, status, NOT_RUNNING));
    }
    let signal =
        u32::try_from(signal).map_err(|_| ContainerError::UnknownSignal(signal.to_string()))?;
    match container(paths)?.signal(INIT_EXEC_ID, signal, all) {
        // Its init exited in the guest before the monitor recorded it.
        Err(AgentClientError::Status {
            code: Code::NOT_FOUND,
            ..
        }) => Err(wrong(&state, Status::Stopped, NOT_RUNNING)),
        other => Ok(other?),
    }
}

/// `pause` / `resume`.
pub fn set_paused(paths: &ContainerPaths, pause: bool) -> Result<(), ContainerError> {
    let (_lock, mut state) = locked(paths)?;
    let status = state.effective_status();
    let container = container(paths);
    match (pause, status) {
        (true, Status::Running) => {
            container?.pause()?;
            state.status = Status::Paused;
        }
        (false, Status::Paused) => {
            container?.resume()?;
            state.status = Status::Running;
        }
        (true, s) => return Err(wrong(&state, s, "only a running container can be paused")),
        (false, s) => return Err(wrong(&state, s, "only a paused container can be resumed")),
    }
    state.save(&paths.state_file())
}

/// The container as its pod's agent drives it (a connection of this
/// process's own).
fn container(paths: &ContainerPaths) -> Result<ContainerHandle, ContainerError> {
    Ok(ContainerHandle::attach(
        Arc::new(connect_agent(paths)?),
        paths.id(),
    ))
}

/// [`container`], refused once the container stopped.
fn live_container(paths: &ContainerPaths) -> Result<ContainerHandle, ContainerError> {
    let state = load(paths)?;
    let status = state.effective_status();
    if status == Status::Stopped {
        return Err(wrong(&state, status, NOT_RUNNING));
    }
    container(paths)
}

/// `update`: applies an OCI `linux.resources` object.
pub fn update(paths: &ContainerPaths, resources: &serde_json::Value) -> Result<(), ContainerError> {
    let _lock = DirLock::acquire(&paths.dir(), paths.id())?;
    let json =
        serde_json::to_vec(resources).map_err(|e| ContainerError::BadResources(e.to_string()))?;
    live_container(paths)?.update(&json)?;
    Ok(())
}

/// `ps`: the container's guest pids.
pub fn processes(paths: &ContainerPaths) -> Result<Vec<u32>, ContainerError> {
    Ok(live_container(paths)?.pids()?)
}

/// `ps`: the container's guest processes as `ps -ef` describes them.
pub fn process_table(
    paths: &ContainerPaths,
) -> Result<Vec<crate::agent::ProcessInfo>, ContainerError> {
    Ok(live_container(paths)?.processes()?)
}

/// `events --stats`: resource usage.
pub fn stats(paths: &ContainerPaths) -> Result<ContainerStats, ContainerError> {
    Ok(live_container(paths)?.stats()?)
}

/// `delete`: stops what runs (with `force`, even a running container) and
/// removes every trace: monitor, VMM, mounts, state directory.
pub fn delete(paths: &ContainerPaths, force: bool) -> Result<(), ContainerError> {
    let _lock = DirLock::acquire(&paths.dir(), paths.id())?;
    match load(paths) {
        Ok(state) => {
            let status = state.effective_status();
            if matches!(status, Status::Running | Status::Paused) && !force {
                return Err(wrong(
                    &state,
                    status,
                    "cannot delete a running container (stop it first or use --force)",
                ));
            }
        }
        // A broken or half-made container: nothing to protect.
        Err(e) => tracing::debug!("deleting {}: {e}", paths.id()),
    }
    destroy(paths)
}

/// Kills the monitor and the VMM if they still run, unmounts the shared
/// directory and removes the state directory. Does not take the lock.
pub fn destroy(paths: &ContainerPaths) -> Result<(), ContainerError> {
    let state = State::load(&paths.state_file()).ok();
    if let Some(state) = &state {
        let monitor = state.monitor_pid;
        if monitor != std::process::id() && super::process::pid_runs(monitor, MONITOR_EXE) {
            // The monitor kills the VM and unmounts on SIGTERM.
            send_signal(monitor, libc::SIGTERM);
            if !wait_dead(monitor, Duration::from_secs(10)) {
                kill_if_runs(monitor, MONITOR_EXE);
            }
        }
    }
    let pids: Vec<u32> = state.as_ref().map(|s| s.vmm_pid).into_iter().collect();
    kill_vmm(&paths.vm_dir(), &pids);
    // The VMM's host cgroup, left by a monitor that died (empty now).
    // (Only config.json's path: the bundle's rootfs may be gone already.)
    let cgroup = state
        .as_ref()
        .and_then(|s| fs::read(s.bundle.join("config.json")).ok())
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|spec| super::spec::cgroups_path(&spec).map(str::to_string));
    if let Some(path) = cgroup {
        if let Err(e) = crate::host_cgroup::HostCgroup::locate(&path).and_then(|cg| cg.remove()) {
            tracing::warn!("removing the host cgroup {path}: {e}");
        }
    }
    SharedDir::open(&paths.dir()).teardown()?;
    let vm_dir = paths.vm_dir();
    if !vm_dir.starts_with(paths.dir()) {
        if let Err(e) = fs::remove_dir_all(&vm_dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!("removing {}: {e}", vm_dir.display());
            }
        }
    }
    let dir = paths.dir();
    match fs::remove_dir_all(&dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(ContainerError::Io {
            what: "removing",
            path: dir,
            source: e,
        }),
    }
}

/// `list`: the states of all containers under `root`, sorted by id.
pub fn list(root: &Path) -> Vec<State> {
    let Ok(entries) = fs::read_dir(root) else {
        return Vec::new();
    };
    let mut states: Vec<State> = entries
        .flatten()
        .filter_map(|e| State::load(&e.path().join("state.json")).ok())
        .collect();
    states.sort_by(|a, b| a.id.cmp(&b.id));
    states
}

/// Whether the container's monitor still runs.
pub fn monitor_alive(state: &State) -> bool {
    pid_alive(state.monitor_pid)
}
