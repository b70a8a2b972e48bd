//! The shim's errors and their mapping to ttRPC status codes, in this one
//! place.

use containerd_shim::protos::ttrpc::{self, Code};
use nacre_runtime::agent::AgentClientError;

/// Why a task request failed.
#[derive(Debug, thiserror::Error)]
pub enum ShimError {
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0} already exists")]
    AlreadyExists(String),
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0} is not supported by nacre")]
    Unimplemented(String),
    #[error("configuration: {0}")]
    Config(#[from] crate::config::ConfigError),
    #[error("{what}: {source}")]
    Agent {
        what: String,
        #[source]
        source: AgentClientError,
    },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Internal(String),
}

impl ShimError {
    /// Wraps an agent error with what the shim was doing.
    pub fn agent(what: impl Into<String>) -> impl FnOnce(AgentClientError) -> Self {
        let what = what.into();
        move |source| ShimError::Agent { what, source }
    }

    /// Wraps an I/O error with what the shim was doing.
    pub fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let what = what.into();
        move |source| ShimError::Io { what, source }
    }

    fn code(&self) -> Code {
        match self {
            ShimError::NotFound(_) => Code::NOT_FOUND,
            ShimError::AlreadyExists(_) => Code::ALREADY_EXISTS,
            ShimError::InvalidArgument(_) | ShimError::Config(_) => Code::INVALID_ARGUMENT,
            ShimError::FailedPrecondition(_) => Code::FAILED_PRECONDITION,
            ShimError::Unimplemented(_) => Code::UNIMPLEMENTED,
            ShimError::Agent {
                source: AgentClientError::Status { code, .. },
                ..
            } => *code,
            ShimError::Agent { .. } | ShimError::Io { .. } | ShimError::Internal(_) => {
                Code::INTERNAL
            }
        }
    }
}

impl From<ShimError> for ttrpc::Error {
    fn from(e: ShimError) -> Self {
        let mut text = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            let s_text = s.to_string();
            if !text.contains(&s_text) {
                text.push_str(": ");
                text.push_str(&s_text);
            }
            source = s.source();
        }
        tracing::warn!("request failed: {text}");
        ttrpc::Error::RpcStatus(ttrpc::get_status(e.code(), text))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_map_once() {
        let e: ttrpc::Error = ShimError::NotFound("container x".into()).into();
        match e {
            ttrpc::Error::RpcStatus(s) => {
                assert_eq!(s.code(), Code::NOT_FOUND);
                assert_eq!(s.message(), "container x not found");
            }
            other => panic!("{other:?}"),
        }
        let e: ttrpc::Error = ShimError::Unimplemented("checkpoint".into()).into();
        match e {
            ttrpc::Error::RpcStatus(s) => assert_eq!(s.code(), Code::UNIMPLEMENTED),
            other => panic!("{other:?}"),
        }
    }
}
