//! The engine's error: a kind (mapped to a ttRPC code by the service, in
//! one place) and a message naming the container.

use std::fmt;

/// What kind of failure, for the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Unknown container or exec id.
    NotFound,
    /// Duplicate container or exec id.
    AlreadyExists,
    /// Malformed spec, process, resources or signal.
    InvalidArgument,
    /// The container is in the wrong state.
    FailedPrecondition,
    /// Anything else (a system call failed).
    Internal,
}

/// A container operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ContainerError {
    /// The kind.
    pub kind: ErrorKind,
    /// The container id.
    pub id: String,
    /// What failed.
    pub message: String,
}

impl ContainerError {
    /// An error of `kind` about container `id`.
    pub fn new(kind: ErrorKind, id: &str, message: impl Into<String>) -> ContainerError {
        ContainerError {
            kind,
            id: id.to_owned(),
            message: message.into(),
        }
    }
}

impl fmt::Display for ContainerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "container {}: {}", self.id, self.message)
    }
}
