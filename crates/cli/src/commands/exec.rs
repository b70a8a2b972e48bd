//! exec and the hidden exec-monitor of a detached exec.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result};
use nacre_runtime::container::exec::{
    build_process, container_process, new_exec_id, run_exec, ExecOverrides,
};
use nacre_runtime::container::launch::{launch_detached, Reporter};
use nacre_runtime::container::state::write_atomic;

use super::lifecycle::global_args;
use super::paths;
use crate::Global;

/// `exec`'s options (runc's).
#[derive(clap::Args, Debug)]
pub struct ExecArgs {
    /// A JSON file holding the OCI process to run.
    #[arg(short = 'p', long)]
    pub process: Option<PathBuf>,
    /// Run on a terminal.
    #[arg(short = 't', long)]
    pub tty: bool,
    /// Return once the process runs.
    #[arg(short = 'd', long)]
    pub detach: bool,
    /// Where to write the process's host pid (its exec monitor).
    #[arg(long)]
    pub pid_file: Option<PathBuf>,
    /// A Unix socket to send the terminal's master fd to.
    #[arg(long)]
    pub console_socket: Option<PathBuf>,
    /// Working directory in the container.
    #[arg(long)]
    pub cwd: Option<String>,
    /// Extra environment (NAME=value), repeatable.
    #[arg(short = 'e', long)]
    pub env: Vec<String>,
    /// uid[:gid] to run as.
    #[arg(short = 'u', long)]
    pub user: Option<String>,
    /// Set no_new_privs for the process.
    #[arg(long)]
    pub no_new_privs: bool,
    /// Refused when above 0: descriptors cannot cross into the VM.
    #[arg(long)]
    pub preserve_fds: Option<u32>,
    /// Accepted for compatibility.
    #[arg(long)]
    pub cgroup: Option<String>,
    /// A capability to add to the process (repeatable).
    #[arg(short = 'c', long)]
    pub cap: Vec<String>,
    /// A supplementary group for the process (repeatable).
    #[arg(short = 'g', long)]
    pub additional_gids: Vec<u32>,
    /// Accepted for compatibility.
    #[arg(long)]
    pub process_label: Option<String>,
    /// Accepted for compatibility.
    #[arg(long)]
    pub apparmor: Option<String>,
    /// The container id.
    pub id: String,
    /// The command and its arguments (without --process).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<String>,
}

/// The hidden `exec-monitor` command.
#[derive(clap::Args, Debug)]
pub struct ExecMonitorArgs {
    pub id: String,
    #[arg(long)]
    pub exec_id: String,
    #[arg(long)]
    pub process_file: PathBuf,
    #[arg(long)]
    pub console_socket: Option<PathBuf>,
    #[arg(long)]
    pub pid_file: Option<PathBuf>,
    #[arg(long)]
    pub sync_fd: Option<i32>,
}

pub fn exec(g: &Global, a: &ExecArgs) -> Result<i32> {
    if let Some(n) = a.preserve_fds.filter(|&n| n > 0) {
        anyhow::bail!(
            "--preserve-fds {n} is not supported: the process runs in a VM, \
             descriptors of this host cannot reach it"
        );
    }
    let paths = paths(g, &a.id)?;
    let base = container_process(&paths)?;
    let overrides = ExecOverrides {
        args: a.args.clone(),
        env: a.env.clone(),
        cwd: a.cwd.clone(),
        user: a.user.clone(),
        tty: a.tty,
        caps: a.cap.clone(),
        additional_gids: a.additional_gids.clone(),
        no_new_privs: a.no_new_privs,
    };
    let process = build_process(a.process.as_deref(), base.as_ref(), &overrides)?;
    // runc's checks: a console socket is for a detached process on a
    // terminal, and a detached terminal needs one.
    let terminal = process.get("terminal").and_then(serde_json::Value::as_bool) == Some(true);
    if a.console_socket.is_some() && (!a.detach || !terminal) {
        anyhow::bail!("cannot use console socket if nacre will not detach or allocate tty");
    }
    if a.detach && terminal && a.console_socket.is_none() {
        anyhow::bail!("cannot allocate tty if nacre will detach without setting console socket");
    }
    let exec_id = new_exec_id();
    if !a.detach {
        let code = run_exec(
            &paths,
            &exec_id,
            &process,
            a.console_socket.as_deref(),
            a.pid_file.as_deref(),
            &mut Reporter::none(),
        )?;
        return Ok(code);
    }
    // Detached: a small monitor of its own holds the process.
    let file = paths.dir().join(format!("{exec_id}.json"));
    write_atomic(&file, process.to_string().as_bytes())?;
    let mut cmd = Command::new(std::env::current_exe().context("finding the nacre binary")?);
    global_args(g, &mut cmd)?;
    cmd.arg("exec-monitor")
        .arg(&a.id)
        .arg("--exec-id")
        .arg(&exec_id)
        .arg("--process-file")
        .arg(&file);
    if let Some(s) = &a.console_socket {
        cmd.arg("--console-socket").arg(std::path::absolute(s)?);
    }
    if let Some(p) = &a.pid_file {
        cmd.arg("--pid-file").arg(std::path::absolute(p)?);
    }
    let result = launch_detached(cmd);
    let _ = std::fs::remove_file(&file);
    result?;
    Ok(0)
}

pub fn exec_monitor(g: &Global, a: &ExecMonitorArgs) -> Result<i32> {
    let mut reporter = match a.sync_fd {
        // SAFETY: `exec --detach` passes the inherited write end of its
        // pipe, which nothing else in this process owns.
        Some(fd) => unsafe { Reporter::from_raw_fd(fd) },
        None => Reporter::none(),
    };
    let paths = paths(g, &a.id)?;
    let process = std::fs::read(&a.process_file)
        .with_context(|| format!("reading {}", a.process_file.display()))
        .and_then(|b| serde_json::from_slice(&b).context("parsing the process"));
    let process = match process {
        Ok(p) => p,
        Err(e) => {
            reporter.fail(&crate::report::error_text(&e));
            return Err(e);
        }
    };
    Ok(run_exec(
        &paths,
        &a.exec_id,
        &process,
        a.console_socket.as_deref(),
        a.pid_file.as_deref(),
        &mut reporter,
    )?)
}
