//! `nacre-agent`: see the library docs. Parses arguments, runs, maps the
//! outcome to an exit code (or, as PID 1, to a VM reset).

use std::process::ExitCode;

use nacre_agent::log::{self, ConsoleLogger};
use nacre_agent::{Command, Config, Mode};

fn main() -> ExitCode {
    nacre_agent::mark_start();
    // One malloc arena for every thread: each extra arena is 64 MiB of
    // address space with page tables that every fork copies and every
    // container's execve tears down again (emulated kernel work here).
    // SAFETY: mallopt before any other thread exists; it only sets a
    // malloc parameter.
    unsafe { libc::mallopt(libc::M_ARENA_MAX, 1) };
    // At the default level until the settings are read.
    ConsoleLogger::install();
    let mode = Mode::detect();
    let config = match mode {
        // The kernel passes init unknown parameters as arguments: ignore
        // them, the settings come from /proc/cmdline.
        Mode::Init => match nacre_agent::init_config() {
            Ok(config) => config,
            Err(e) => fatal_init(&e),
        },
        Mode::Process => match Config::from_args(std::env::args().skip(1)) {
            Ok(Command::Run(config)) => config,
            Ok(Command::Help) => {
                print!("{}", nacre_agent::config::USAGE);
                return ExitCode::SUCCESS;
            }
            Ok(Command::Version) => {
                println!("nacre-agent {}", env!("CARGO_PKG_VERSION"));
                return ExitCode::SUCCESS;
            }
            Err(e) => {
                eprintln!("nacre-agent: {e}");
                return ExitCode::from(2);
            }
        },
    };
    log::set_level(config.log_level);
    match nacre_agent::run(&config, mode) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if mode == Mode::Init => fatal_init(&e),
        Err(e) => {
            eprintln!("nacre-agent: fatal: {e}");
            ExitCode::FAILURE
        }
    }
}

fn fatal_init(e: &dyn std::fmt::Display) -> ! {
    eprintln!("nacre-agent: fatal: {e}; rebooting");
    nacre_agent::reboot_after_fatal()
}
