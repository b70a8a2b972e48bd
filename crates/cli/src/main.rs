//! `nacre`: the command line of the nacre runtime.
//!
//! For now it offers `nacre check`, the host check (KVM, how guest kernel
//! mode runs, the guest image, the VMM) which with `--boot` also boots a
//! sandbox VM and asks its agent for the guest's details. The runc-compatible
//! container commands are built on the same runtime crate.

mod check;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "nacre",
    version,
    about = "nacre: containers in lightweight KVM virtual machines"
)]
struct Cli {
    /// Log level (error, warn, info, debug, trace).
    #[arg(long, global = true, default_value = "warn")]
    log_level: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check that this host can run nacre sandboxes.
    Check(check::CheckArgs),
}

fn main() {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(&cli.log_level))
        .with_writer(std::io::stderr)
        .init();
    let result: Result<()> = match cli.command {
        Command::Check(args) => check::run(&args),
    };
    if let Err(e) = result {
        eprintln!("nacre: {e:#}");
        std::process::exit(1);
    }
}
