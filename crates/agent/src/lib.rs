//! nacre's guest agent.
//!
//! In the VM the agent is `/init` of an initramfs: PID 1. It mounts the
//! base file systems (and, with `nacre.shared=TAG`, the host's virtio-fs
//! share at `/run/nacre/shared`), reads its settings from the kernel
//! command line, reaps orphans, and serves the `nacre.agent.v1` ttRPC API
//! on vsock port 1024, containers included ([`container`]). When it is not
//! PID 1 (tests on the host) it skips the init duties, and
//! `Agent.Shutdown` ends the agent instead of resetting the machine.
//!
//! Fatal errors are returned to `main`, which as PID 1 prints them and
//! resets the VM: PID 1 must never exit (the kernel would panic).

pub mod config;
pub mod container;
pub mod debug_console;
pub mod guest_info;
pub mod init;
mod listen;
pub mod log;
pub mod network;
pub mod pool;
pub mod procinfo;
pub mod reaper;
pub mod restored;
pub mod server;
pub mod service;
mod sys;
pub mod trace;

use std::sync::{mpsc, OnceLock};
use std::time::Duration;

pub use config::{Command, Config, ConfigError, ListenAddr};
pub use reaper::Reaper;

/// The line printed on stdout (the console as PID 1) once the agent
/// listens; the host waits for it.
pub const READY_LINE: &str = "nacre-agent: ready";

/// How long the agent lets the `Shutdown` response reach the host before
/// it stops.
const SHUTDOWN_GRACE: Duration = Duration::from_millis(100);

/// Guest uptime when `main` started (see [`mark_start`]).
static STARTED_AT: OnceLock<Duration> = OnceLock::new();

/// Records the guest's uptime at the agent's start, for the ready line:
/// it tells the kernel's share of a boot from the agent's.
pub fn mark_start() {
    if let Ok(t) = sys::boot_time() {
        let _ = STARTED_AT.set(t);
    }
}

/// `", started at 1.234 s, ready at 1.567 s of uptime"` when known.
fn timing_note() -> String {
    match (STARTED_AT.get(), sys::boot_time()) {
        (Some(start), Ok(now)) => format!(
            ", started at {:.3} s, ready at {:.3} s of uptime",
            start.as_secs_f64(),
            now.as_secs_f64()
        ),
        _ => String::new(),
    }
}

/// How the agent runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// PID 1 of the guest: init duties, and Shutdown resets the VM.
    Init,
    /// An ordinary process (host tests): Shutdown ends the agent.
    Process,
}

impl Mode {
    /// `Init` if this process is PID 1.
    #[must_use]
    pub fn detect() -> Mode {
        if sys::getpid() == 1 {
            Mode::Init
        } else {
            Mode::Process
        }
    }
}

/// A fatal error of the agent.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// Setting up the guest failed.
    #[error(transparent)]
    Init(#[from] init::InitError),
    /// /proc/cmdline could not be read.
    #[error("reading /proc/cmdline: {0}")]
    Cmdline(#[source] std::io::Error),
    /// A setting is malformed.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The reaper thread could not start.
    #[error("starting the reaper: {0}")]
    Reaper(#[source] std::io::Error),
    /// The agent could not make itself non-dumpable.
    #[error("making the agent non-dumpable: {0}")]
    NonDumpable(#[source] std::io::Error),
    /// The ttRPC server could not start.
    #[error(transparent)]
    Serve(#[from] server::ServeError),
    /// Resetting the VM failed.
    #[error("rebooting: {0}")]
    Reboot(#[source] std::io::Error),
}

/// PID 1 only: mounts the base file systems and reads the settings from the
/// kernel command line.
pub fn init_config() -> Result<Config, AgentError> {
    init::mount_all().map_err(init::InitError::from)?;
    let cmdline = std::fs::read_to_string("/proc/cmdline").map_err(AgentError::Cmdline)?;
    Ok(Config::from_kernel_cmdline(&cmdline)?)
}

/// Runs the agent until `Shutdown`. As PID 1 it then resets the VM and does
/// not return; otherwise it returns `Ok` for the process to exit 0.
pub fn run(config: &Config, mode: Mode) -> Result<(), AgentError> {
    if mode == Mode::Init {
        init::setup(config.hostname.as_deref(), config.shared_tag.as_deref())?;
    }
    sys::set_non_dumpable().map_err(AgentError::NonDumpable)?;
    // Before any other thread: it blocks SIGCHLD for all threads to come.
    let reaper = Reaper::start().map_err(AgentError::Reaper)?;
    if mode == Mode::Process {
        // Orphans of containers (without a pid namespace) come back to the
        // agent, as they do to PID 1 in the guest.
        sys::set_child_subreaper();
    }
    if let Some(addr) = &config.debug_console {
        if let Err(e) = debug_console::start(addr, reaper.clone()) {
            tracing::error!("debug console on {addr}: {e}");
        }
    }
    let engine = container::Engine::new(
        container::LinuxLauncher::new(reaper),
        Some(config.cgroup_root.clone().into()),
    );
    if mode == Mode::Init {
        // Before the ready line: a VM template is snapshotted with it done.
        engine.prepare();
        if config.warm_up {
            engine.warm_up();
        }
    }
    let (events, requests) = mpsc::channel();
    let server = server::start(&config.listen, events, engine)?;
    println!(
        "{READY_LINE} (listening on {}{})",
        config.listen,
        timing_note()
    );

    // The services hold the only senders: `recv` fails only if the server
    // dropped them, which it does not while it runs.
    let event = requests.recv().ok();
    tracing::info!(?event, "stopping");
    std::thread::sleep(SHUTDOWN_GRACE);
    match mode {
        Mode::Init => {
            sys::sync();
            Err(AgentError::Reboot(sys::reboot()))
        }
        Mode::Process => {
            drop(server);
            if let ListenAddr::Unix(path) = &config.listen {
                let _ = std::fs::remove_file(path);
            }
            Ok(())
        }
    }
}

/// PID 1's last resort: reset the VM (an exiting PID 1 panics the kernel).
pub fn reboot_after_fatal() -> ! {
    sys::sync();
    loop {
        let err = sys::reboot();
        eprintln!("nacre-agent: reboot failed: {err}");
        std::thread::sleep(Duration::from_secs(1));
    }
}
