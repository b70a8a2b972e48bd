//! Errors of the container layer, each naming what failed.

use std::path::PathBuf;

use crate::agent::AgentClientError;
use crate::sandbox::SandboxError;
use crate::vm::VmError;

/// Why a container operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    /// The id is empty, too long, or holds characters a path cannot.
    #[error("invalid container id {0:?}: use letters, digits, '_', '-', '.' (not only dots)")]
    InvalidId(String),
    /// No state directory for this id.
    #[error("container {0} does not exist")]
    NotFound(String),
    /// A state directory for this id already exists.
    #[error("container {0} already exists")]
    Exists(String),
    /// The VMM run directory this container would use belongs to a
    /// running VMM.
    #[error("the VM run directory {path} is in use by nacre-vmm pid {pid}")]
    RunDirInUse { path: PathBuf, pid: u32 },
    /// The bundle's config.json could not be read.
    #[error("reading {path}: {source}")]
    ReadConfig {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The bundle's config.json is not a valid OCI runtime spec.
    #[error("parsing {path}: {source}")]
    ParseConfig {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    /// The spec is valid JSON but unusable.
    #[error("{path}: {reason}")]
    BadConfig { path: PathBuf, reason: String },
    /// The rootfs named by the spec is missing.
    #[error("rootfs {0} does not exist or is not a directory")]
    NoRootfs(PathBuf),
    /// A bind mount source named by the spec is missing.
    #[error("mount source {0} does not exist")]
    NoMountSource(PathBuf),
    /// A file system operation on the host failed.
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A state file is not what this version wrote.
    #[error("state file {path}: {source}")]
    BadState {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    /// The signal name or number is not known.
    #[error("unknown signal {0}")]
    UnknownSignal(String),
    /// The operation does not fit the container's status.
    #[error("container {id} is {status}: {reason}")]
    WrongStatus {
        id: String,
        status: &'static str,
        reason: &'static str,
    },
    /// The resources given to `update` are not valid.
    #[error("resources: {0}")]
    BadResources(String),
    /// The guest refused or failed a container operation.
    #[error(transparent)]
    Agent(#[from] AgentClientError),
    /// Booting or stopping the VM failed.
    #[error(transparent)]
    Sandbox(#[from] Box<SandboxError>),
    /// The VMM process failed.
    #[error(transparent)]
    Vm(#[from] VmError),
    /// Starting a helper process (the monitor) failed, or it reported an
    /// error.
    #[error("{0}")]
    Monitor(String),
}

impl ContainerError {
    pub(crate) fn io(
        what: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| ContainerError::Io { what, path, source }
    }
}

impl From<SandboxError> for ContainerError {
    fn from(e: SandboxError) -> Self {
        ContainerError::Sandbox(Box::new(e))
    }
}
