//! `nacre-vmm`: boots one Linux guest on KVM. A thin shell over the
//! `nacre_vmm` library: parse arguments ([`nacre_vmm::cli`]), set up
//! logging, run, map the result to an exit code.

use std::process::ExitCode;

use nacre_vmm::cli::{self, Invocation};
use nacre_vmm::logging::LogLimits;
use nacre_vmm::{exit_code, exit_code_for};
use nacre_vmm_api::VmmArgs;

fn code(c: i32) -> ExitCode {
    ExitCode::from(u8::try_from(c).unwrap_or(u8::MAX))
}

fn main() -> ExitCode {
    let args = match cli::parse_from(std::env::args_os()) {
        Ok(Invocation::Run(args)) => *args,
        Ok(Invocation::Features) => {
            return match cli::features().to_json() {
                Ok(json) => {
                    println!("{json}");
                    code(exit_code::OK)
                }
                Err(e) => {
                    eprintln!("nacre-vmm: --features: {e}");
                    code(exit_code::FAILURE)
                }
            };
        }
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                code(exit_code::CONFIG)
            } else {
                // --help, --version
                code(exit_code::OK)
            };
        }
    };
    let limits = LogLimits {
        max_bytes: args.log_max_bytes,
        ..LogLimits::default()
    };
    let log = match nacre_vmm::logging::init(&args.log_level, &limits) {
        Ok(log) => log,
        Err(e) => {
            eprintln!("nacre-vmm: --log-level: {e}");
            return code(exit_code::CONFIG);
        }
    };
    let c = run(args);
    log.flush();
    c
}

fn run(mut args: VmmArgs) -> ExitCode {
    // The profiler's output (a developer's tool, NACRE_VMM_PROFILE) is
    // opened before the jail hides the host's paths.
    if let Err(e) = nacre_vmm::profile::init() {
        eprintln!("nacre-vmm: opening the profile output: {e}");
        return code(exit_code::FAILURE);
    }
    // First: nothing the guest controls is read before the jail holds.
    match cli::jail_spec(&mut args) {
        Ok(None) => {}
        Ok(Some(spec)) => {
            if let Err(e) = nacre_vmm::jail::enter(&spec) {
                eprintln!("nacre-vmm: {}", chain(&e));
                return code(exit_code::JAIL);
            }
        }
        Err(e) => {
            eprintln!("nacre-vmm: {}", chain(&e));
            return code(exit_code::JAIL);
        }
    }
    if let Err(e) = nacre_vmm::seccomp::install(args.seccomp) {
        eprintln!("nacre-vmm: {e}");
        return code(exit_code::FAILURE);
    }
    if let Some(fd) = args.owner_fd {
        if let Err(e) = nacre_vmm::owner::watch(fd) {
            eprintln!("nacre-vmm: --owner-fd {fd}: {e}");
            return code(exit_code::CONFIG);
        }
    }
    let result = match args.restore.clone() {
        Some(dir) => nacre_vmm::restore(&cli::restore_config(&args, dir)),
        None => nacre_vmm::run(&cli::vm_config(args)),
    };
    match result {
        Ok(event) => {
            let c = exit_code_for(&event);
            tracing::info!(?event, exit_code = c, "nacre-vmm exiting");
            code(c)
        }
        Err(e) => {
            eprintln!("nacre-vmm: {}", error_chain(&e));
            code(e.exit_code())
        }
    }
}

/// The error with its sources, as one line.
fn error_chain(e: &nacre_vmm::VmmError) -> String {
    chain(e)
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        source = s.source();
    }
    text
}
