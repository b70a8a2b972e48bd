//! `nacre`: the command line of the nacre runtime.
//!
//! runc's command line (as containerd's runc shim, podman and docker call
//! it), where every container runs in its own KVM VM, plus `nacre check`,
//! the host check. Each command is a thin layer over
//! `nacre_runtime::container`; errors go to stderr and, with `--log`, to
//! the log file as runc writes them.

mod check;
mod commands;
mod logging;
mod report;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::logging::{LogFormat, Logger};

/// The text of `nacre --version`: runc's lines (version, commit, spec),
/// then what runs the containers.
const VERSION: &str = concat!(
    "nacre version ",
    env!("CARGO_PKG_VERSION"),
    "\ncommit: ",
    env!("NACRE_GIT_COMMIT"),
    "\nspec: 1.0.2\nruntime: nacre (KVM VM per container)"
);

#[derive(Parser)]
#[command(
    name = "nacre",
    disable_version_flag = true,
    about = "nacre: containers in lightweight KVM virtual machines (runc-compatible)"
)]
struct Cli {
    /// Print the version.
    #[arg(short = 'v', long = "version")]
    version: bool,
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Command,
}

/// runc's global options.
#[derive(clap::Args, Debug, Clone)]
pub struct Global {
    /// Root directory for container state.
    #[arg(long, global = true, default_value = nacre_runtime::container::DEFAULT_ROOT)]
    pub root: PathBuf,
    /// Log file (default: stderr).
    #[arg(long, global = true)]
    pub log: Option<PathBuf>,
    /// Log format.
    #[arg(long, global = true, value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// Debug logging.
    #[arg(long, global = true)]
    pub debug: bool,
    /// Log level (error, warn, info, debug, trace); --debug means debug.
    #[arg(long, global = true, default_value = "warn")]
    pub log_level: String,
    /// Accepted for compatibility: the guest manages its own cgroups.
    #[arg(long, global = true)]
    pub systemd_cgroup: bool,
    /// Accepted for compatibility (true, false or auto).
    #[arg(long, global = true, num_args = 0..=1, default_missing_value = "true")]
    pub rootless: Option<String>,
    /// Accepted for compatibility.
    #[arg(long, global = true, hide = true)]
    pub criu: Option<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Check that this host can run nacre sandboxes.
    Check(check::CheckArgs),
    /// Create a container (its VM boots; the process waits for `start`).
    Create(commands::lifecycle::CreateArgs),
    /// Start a created container's process.
    Start(commands::IdArg),
    /// Create and start a container.
    Run(commands::lifecycle::RunArgs),
    /// Print a container's state as JSON.
    State(commands::IdArg),
    /// Send a signal to a container's init process (or all processes).
    Kill(commands::lifecycle::KillArgs),
    /// Delete a container and everything it holds on the host.
    Delete(commands::lifecycle::DeleteArgs),
    /// Run a new process in a container.
    Exec(commands::exec::ExecArgs),
    /// List a container's processes (the guest's, as `ps -ef` shows them).
    Ps(commands::query::PsArgs),
    /// List containers.
    #[command(alias = "ls")]
    List(commands::query::ListArgs),
    /// Freeze a container's processes.
    Pause(commands::IdArg),
    /// Thaw a paused container.
    Resume(commands::IdArg),
    /// Change a container's resource limits.
    Update(commands::manage::UpdateArgs),
    /// Print container events (resource usage).
    Events(commands::query::EventsArgs),
    /// Write a default config.json.
    Spec(commands::spec::SpecArgs),
    /// Print the features nacre supports, as JSON.
    Features,
    /// Open a shell in a sandbox's VM, outside every container (needs
    /// `[debug] console = true` in the configuration file when the VM
    /// starts).
    DebugConsole(commands::debug::DebugConsoleArgs),
    /// The host-side monitor of a container (started by `create`).
    #[command(hide = true)]
    Monitor(commands::lifecycle::MonitorArgs),
    /// The monitor of a detached exec (started by `exec --detach`).
    #[command(hide = true)]
    ExecMonitor(commands::exec::ExecMonitorArgs),
}

/// Global options that take a value (`--root DIR`).
const TAKE_VALUE: &[&str] = &["--root", "--log", "--log-format", "--log-level", "--criu"];

/// Where the arguments after the global options start.
fn after_globals(args: &[String]) -> usize {
    let mut i = 0;
    while i < args.len() {
        let a = args[i].as_str();
        if TAKE_VALUE.contains(&a) {
            i += 2;
        } else if a.starts_with('-') {
            i += 1;
        } else {
            break;
        }
    }
    i.min(args.len())
}

/// The topic of `[GLOBAL OPTIONS] help TOPIC` when no command has that
/// name.
fn unknown_help_topic(args: &[String]) -> Option<&str> {
    use clap::CommandFactory;
    match &args[after_globals(args)..] {
        [help, topic] if help == "help" && Cli::command().find_subcommand(topic).is_none() => {
            Some(topic)
        }
        _ => None,
    }
}

fn main() {
    // `nacre --version` needs no subcommand.
    let args: Vec<String> = std::env::args().skip(1).collect();
    let globals = &args[..after_globals(&args)];
    if globals.iter().any(|a| a == "--version" || a == "-v") && globals.len() == args.len() {
        println!("{VERSION}");
        return;
    }
    // runc: `help TOPIC` of an unknown topic fails with exit code 3.
    if let Some(topic) = unknown_help_topic(&args) {
        eprintln!("nacre: No help topic for '{topic}'");
        std::process::exit(3);
    }
    let cli = Cli::parse();
    if cli.version {
        println!("{VERSION}");
        return;
    }
    let g = &cli.global;
    let level = if g.debug {
        "debug"
    } else {
        g.log_level.as_str()
    };
    // The monitor's stderr is the container's: it logs to a file only.
    let log = match &cli.command {
        Command::Monitor(m) if g.log.is_none() => Some(m.default_log(&g.root)),
        _ => g.log.clone(),
    };
    let logger = Logger::init(log.as_deref(), g.log_format, level);
    let is_exec = matches!(cli.command, Command::Exec(_));
    let command = args.get(after_globals(&args)).cloned().unwrap_or_default();
    let span = tracing::info_span!("cli", command = command.as_str()).entered();
    let result = match cli.command {
        Command::Check(args) => check::run(&args).map(|()| 0),
        Command::Create(args) => commands::lifecycle::create(g, &args),
        Command::Start(args) => commands::lifecycle::start(g, &args),
        Command::Run(args) => commands::lifecycle::run(g, &args),
        Command::State(args) => commands::query::state(g, &args),
        Command::Kill(args) => commands::lifecycle::kill(g, &args),
        Command::Delete(args) => commands::lifecycle::delete(g, &args),
        Command::Exec(args) => commands::exec::exec(g, &args),
        Command::Ps(args) => commands::query::ps(g, &args),
        Command::List(args) => commands::query::list(g, &args),
        Command::Pause(args) => commands::manage::pause(g, &args, true),
        Command::Resume(args) => commands::manage::pause(g, &args, false),
        Command::Update(args) => commands::manage::update(g, &args),
        Command::Events(args) => commands::query::events(g, &args),
        Command::Spec(args) => commands::spec::spec(g, &args),
        Command::Features => commands::spec::features(),
        Command::DebugConsole(args) => commands::debug::debug_console(g, &args),
        Command::Monitor(args) => commands::lifecycle::monitor(g, &args),
        Command::ExecMonitor(args) => commands::exec::exec_monitor(g, &args),
    };
    drop(span);
    if let Some(file) = nacre_runtime::trace::file() {
        if let Err(e) = nacre_runtime::trace::flush(&file, &format!("nacre {command}")) {
            eprintln!("nacre: writing the trace {}: {e}", file.display());
        }
    }
    match result {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            let msg = report::error_text(&e);
            if logger.to_file() {
                logger.line("error", &msg);
            }
            eprintln!("nacre: {msg}");
            std::process::exit(report::failure_code(is_exec));
        }
    }
}
