//! `nacre debug-console`: a shell in a sandbox's VM, outside every
//! container (see `nacre_runtime::debug_console`).

use anyhow::Result;
use nacre_runtime::config::{Config, CONFIG_ENV, DEFAULT_CONFIG_PATH};
use nacre_runtime::debug_console::{self, DebugConsoleError};

use crate::Global;

/// `nacre debug-console [--namespace NS] ID`.
#[derive(clap::Args, Debug)]
pub struct DebugConsoleArgs {
    /// The containerd namespace of a pod sandbox (when ID is not a
    /// container of `--root`).
    #[arg(long, default_value = "k8s.io")]
    pub namespace: String,
    /// A container of `--root`, or a pod sandbox id.
    pub id: String,
}

/// Opens the console and relays this terminal to it until the guest's
/// shell exits.
pub fn debug_console(g: &Global, args: &DebugConsoleArgs) -> Result<i32> {
    if !Config::load()?.debug.console {
        let config = std::env::var(CONFIG_ENV)
            .ok()
            .filter(|c| !c.is_empty())
            .unwrap_or_else(|| DEFAULT_CONFIG_PATH.to_owned());
        return Err(DebugConsoleError::Disabled { config }.into());
    }
    let root = std::path::absolute(&g.root)?;
    let socket = debug_console::vsock_socket(&root, &args.id, &args.namespace)?;
    let stream = debug_console::connect(&socket, &args.id)?;
    debug_console::relay(stream)?;
    Ok(0)
}
