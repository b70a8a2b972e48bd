//! The runc-compatible commands, each a thin layer over
//! `nacre_runtime::container`. Every command returns the process exit
//! code on success.

pub mod debug;
pub mod exec;
mod forward;
pub mod lifecycle;
pub mod manage;
pub mod query;
pub mod spec;

use anyhow::Result;
use nacre_runtime::container::ContainerPaths;

use crate::Global;

/// A command that takes only the container id.
#[derive(clap::Args, Debug)]
pub struct IdArg {
    /// The container id.
    pub id: String,
}

/// The paths of container `id` under `--root`.
pub fn paths(g: &Global, id: &str) -> Result<ContainerPaths> {
    let root = std::path::absolute(&g.root)?;
    Ok(ContainerPaths::new(&root, id)?)
}

/// An exit status as a process exit code.
pub fn exit_code(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(255)
}
