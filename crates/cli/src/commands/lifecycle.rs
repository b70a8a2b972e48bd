//! create, start, run, kill, delete, and the hidden monitor.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};
use nacre_runtime::config::Config;
use nacre_runtime::container::launch::Reporter;
use nacre_runtime::container::monitor::{run_monitor, MonitorOptions};
use nacre_runtime::container::{ops, parse_signal};
use nacre_runtime::image::locate_vmm;

use super::{exit_code, paths, IdArg};
use crate::Global;

/// `create`'s options (runc's).
#[derive(clap::Args, Debug, Clone)]
pub struct CreateArgs {
    /// The bundle directory (holding config.json).
    #[arg(short = 'b', long, default_value = ".")]
    pub bundle: PathBuf,
    /// Where to write the container's host pid (its monitor).
    #[arg(long)]
    pub pid_file: Option<PathBuf>,
    /// A Unix socket to send the terminal's master fd to.
    #[arg(long)]
    pub console_socket: Option<PathBuf>,
    /// Accepted for compatibility.
    #[arg(long)]
    pub no_pivot: bool,
    /// Accepted for compatibility.
    #[arg(long)]
    pub no_new_keyring: bool,
    /// Refused when above 0: descriptors of this host cannot cross into
    /// the VM.
    #[arg(long, default_value_t = 0)]
    pub preserve_fds: u32,
    /// The container id.
    pub id: String,
}

/// `run`'s options.
#[derive(clap::Args, Debug)]
pub struct RunArgs {
    #[command(flatten)]
    pub create: CreateArgs,
    /// Do not wait for the container: return once it runs.
    #[arg(short = 'd', long)]
    pub detach: bool,
    /// Keep the container's state after it exits (delete it later).
    #[arg(long)]
    pub keep: bool,
}

/// `kill`'s options.
#[derive(clap::Args, Debug)]
pub struct KillArgs {
    /// Signal every process of the container.
    #[arg(short = 'a', long)]
    pub all: bool,
    /// The container id.
    pub id: String,
    /// Signal name (KILL, SIGKILL) or number.
    #[arg(default_value = "SIGTERM")]
    pub signal: String,
}

/// `delete`'s options.
#[derive(clap::Args, Debug)]
pub struct DeleteArgs {
    /// Kill the container first if it runs.
    #[arg(short = 'f', long)]
    pub force: bool,
    /// The container id.
    pub id: String,
}

/// The hidden `monitor` command (arguments passed by `create`).
#[derive(clap::Args, Debug)]
pub struct MonitorArgs {
    pub id: String,
    /// `MonitorOptions` as JSON.
    #[arg(long)]
    pub options: String,
    #[arg(long)]
    pub sync_fd: Option<i32>,
}

impl MonitorArgs {
    /// The monitor's log file when no `--log` is given.
    pub fn default_log(&self, root: &Path) -> PathBuf {
        root.join(&self.id).join("monitor.log")
    }
}

fn absolute(p: &Path) -> Result<PathBuf> {
    std::path::absolute(p).with_context(|| format!("resolving {}", p.display()))
}

/// The global options a helper process gets again.
pub fn global_args(g: &Global, cmd: &mut Command) -> Result<()> {
    cmd.arg("--root").arg(absolute(&g.root)?);
    if let Some(log) = &g.log {
        cmd.arg("--log").arg(absolute(log)?);
    }
    cmd.arg("--log-format").arg(match g.log_format {
        crate::logging::LogFormat::Text => "text",
        crate::logging::LogFormat::Json => "json",
    });
    cmd.arg("--log-level")
        .arg(if g.debug { "debug" } else { &g.log_level });
    Ok(())
}

/// Whether the VMM serves `--shared-dir` (virtio-fs), as its
/// `--features` says; `NACRE_SHARED_FS=0/1` overrides.
fn vmm_has_shared_dir(vmm: &Path) -> bool {
    match std::env::var("NACRE_SHARED_FS").as_deref() {
        Ok("0") => return false,
        Ok("1") => return true,
        _ => {}
    }
    vmm_features(vmm).is_some_and(|f| f.supports("shared-dir"))
}

/// What `vmm --features` reports; None if it cannot say (a VMM older
/// than the flag, or one that does not run).
fn vmm_features(vmm: &Path) -> Option<nacre_vmm_api::Features> {
    let out = Command::new(vmm).arg("--features").output().ok()?;
    if !out.status.success() {
        return None;
    }
    nacre_vmm_api::Features::parse(&String::from_utf8_lossy(&out.stdout)).ok()
}

fn create_inner(g: &Global, a: &CreateArgs) -> Result<std::process::Child> {
    if a.preserve_fds > 0 {
        anyhow::bail!(
            "--preserve-fds {} is not supported: the container runs in a VM, \
             descriptors of this host cannot reach it",
            a.preserve_fds
        );
    }
    let paths = paths(g, &a.id)?;
    // Cheap checks first: they create nothing.
    if paths.dir().exists() {
        anyhow::bail!("container {} already exists", a.id);
    }
    let bundle = nacre_runtime::container::spec::Bundle::load(&a.bundle)?;
    let config = Config::load()?;
    let shape =
        config.container_shape(&bundle.annotations, bundle.memory_limit, bundle.cpu_limit)?;
    let image = config.guest_image()?;
    let vmm = locate_vmm()?;
    let options = MonitorOptions {
        bundle_dir: absolute(&a.bundle)?,
        vmm: vmm.clone(),
        image,
        vcpus: shape.vcpus,
        memory_mib: shape.memory_mib,
        kernel_params: shape.extra_cmdline(),
        console_socket: a.console_socket.as_deref().map(absolute).transpose()?,
        pid_file: a.pid_file.as_deref().map(absolute).transpose()?,
        shared_fs: vmm_has_shared_dir(&vmm),
        templates: config.vm.templates,
    };
    let mut cmd = Command::new(std::env::current_exe().context("finding the nacre binary")?);
    global_args(g, &mut cmd)?;
    cmd.arg("monitor")
        .arg(&a.id)
        .arg("--options")
        .arg(serde_json::to_string(&options).context("encoding the monitor's options")?);
    tracing::debug!(?cmd, "starting the monitor");
    Ok(ops::create(&paths, cmd)?)
}

pub fn create(g: &Global, a: &CreateArgs) -> Result<i32> {
    create_inner(g, a)?;
    Ok(0)
}

pub fn start(g: &Global, a: &IdArg) -> Result<i32> {
    ops::start(&paths(g, &a.id)?)?;
    Ok(0)
}

pub fn run(g: &Global, a: &RunArgs) -> Result<i32> {
    // As runc: from here on ^C, SIGTERM and SIGHUP are queued, not fatal,
    // so the create below always finishes (or fails and cleans up) and
    // nothing is left behind a dead `nacre run`; a foreground run
    // forwards them once the container started, a detached one drops
    // them.
    let signals = super::forward::SignalQueue::install();
    let paths = paths(g, &a.create.id)?;
    let mut monitor = create_inner(g, &a.create)?;
    if let Err(e) = ops::start(&paths) {
        if !a.keep {
            let _ = ops::delete(&paths, true);
        }
        return Err(e.into());
    }
    if a.detach {
        return Ok(0);
    }
    if let Some(signals) = signals {
        signals.forward_to(paths.clone());
    }
    let status = monitor.wait().context("waiting for the container")?;
    // runc --keep: the stopped container stays until `delete`.
    if !a.keep {
        ops::delete(&paths, true)?;
    }
    Ok(exit_code(status))
}

pub fn kill(g: &Global, a: &KillArgs) -> Result<i32> {
    let signal = parse_signal(&a.signal)?;
    ops::kill(&paths(g, &a.id)?, signal, a.all)?;
    Ok(0)
}

pub fn delete(g: &Global, a: &DeleteArgs) -> Result<i32> {
    let paths = paths(g, &a.id)?;
    match ops::delete(&paths, a.force) {
        // runc: `delete --force` of a missing container succeeds.
        Err(nacre_runtime::container::ContainerError::NotFound(_)) if a.force => Ok(0),
        r => r.map(|()| 0).map_err(Into::into),
    }
}

pub fn monitor(g: &Global, a: &MonitorArgs) -> Result<i32> {
    let mut reporter = match a.sync_fd {
        // SAFETY: `create` passes the inherited write end of its pipe,
        // which nothing else in this process owns.
        Some(fd) => unsafe { Reporter::from_raw_fd(fd) },
        None => Reporter::none(),
    };
    let opts: MonitorOptions =
        serde_json::from_str(&a.options).context("reading the monitor's --options")?;
    Ok(run_monitor(&paths(g, &a.id)?, &opts, &mut reporter))
}
