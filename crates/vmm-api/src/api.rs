//! The control socket's messages: one JSON [`Request`] per line in, one
//! JSON [`Response`] per line out.
//!
//! ```text
//! {"op":"status"}   -> {"ok":true,"state":"running"|"paused","pid":N,"vcpus":N,"memory_mib":N,
//!                        "guest_errors":{"<kind>":N,...},
//!                        "devices":[{"device":"fs","name":"<tag>","notifications":N,
//!                                    "interrupts":N,"requests":{"<op>":N,...},
//!                                    "packets":{"rx":N,"tx":N},"bytes":{"<dir>":N,...}},...]}
//! {"op":"pause"}    -> {"ok":true,"state":"paused"}
//! {"op":"resume"}   -> {"ok":true,"state":"running"}
//! {"op":"shutdown"} -> {"ok":true}, then the VMM stops the VM and exits 0
//! {"op":"snapshot","dir":"/path"} -> {"ok":true,"state":"paused"}
//! anything else     -> {"ok":false,"error":"..."}
//! ```

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// One request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum Request {
    Status,
    Pause,
    Resume,
    Shutdown,
    /// Pause and write a template of the VM into `dir` (for `--restore`).
    Snapshot {
        dir: PathBuf,
    },
}

impl Request {
    /// The request's name on the wire (its `op`).
    pub fn op(&self) -> &'static str {
        match self {
            Self::Status => "status",
            Self::Pause => "pause",
            Self::Resume => "resume",
            Self::Shutdown => "shutdown",
            Self::Snapshot { .. } => "snapshot",
        }
    }

    /// The request as one JSON line, newline included.
    pub fn to_line(&self) -> Result<String, serde_json::Error> {
        let mut line = serde_json::to_string(self)?;
        line.push('\n');
        Ok(line)
    }

    /// Parses one request line.
    pub fn parse(line: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(line.trim())
    }
}

/// The run state as the API reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Running,
    Paused,
}

/// One response line.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<State>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vcpus: Option<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mib: Option<u64>,
    /// With `status`: errors the guest caused in the VMM's devices, by
    /// kind (see `nacre_vmm::devices::virtio::guest_errors`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest_errors: Option<std::collections::BTreeMap<String, u64>>,
    /// With `status`: each virtio device's request, byte, notification
    /// and interrupt counters (see [`crate::counters`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub devices: Option<Vec<crate::counters::DeviceCounters>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Response {
    /// A success without details.
    pub fn ok() -> Self {
        Self {
            ok: true,
            ..Self::default()
        }
    }

    /// A success reporting the run state.
    pub fn with_state(state: State) -> Self {
        Self {
            state: Some(state),
            ..Self::ok()
        }
    }

    /// A failure response.
    pub fn error(message: impl Into<String>) -> Self {
        Self {
            ok: false,
            error: Some(message.into()),
            ..Self::default()
        }
    }

    /// The response as one JSON line, newline included.
    pub fn to_line(&self) -> String {
        let mut line = serde_json::to_string(self)
            .unwrap_or_else(|_| r#"{"ok":false,"error":"response encoding"}"#.to_string());
        line.push('\n');
        line
    }

    /// Parses one response line.
    pub fn parse(line: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(line.trim())
    }

    /// `Ok(self)` on success, else the VMM's reason.
    pub fn into_result(self) -> Result<Self, String> {
        if self.ok {
            Ok(self)
        } else {
            Err(self.error.unwrap_or_else(|| "no reason given".to_string()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_request_round_trips() {
        let all = [
            Request::Status,
            Request::Pause,
            Request::Resume,
            Request::Shutdown,
            Request::Snapshot {
                dir: "/run/nacre/t".into(),
            },
        ];
        for req in all {
            let line = req.to_line().unwrap();
            assert!(line.ends_with('\n'));
            assert!(line.contains(&format!("\"op\":\"{}\"", req.op())), "{line}");
            assert_eq!(Request::parse(&line).unwrap(), req);
        }
        assert_eq!(
            Request::Snapshot { dir: "/t".into() }.to_line().unwrap(),
            "{\"op\":\"snapshot\",\"dir\":\"/t\"}\n"
        );
        assert!(Request::parse(r#"{"op":"reboot"}"#).is_err());
        assert!(Request::parse(r#"{"op":"snapshot"}"#).is_err());
    }

    #[test]
    fn every_response_round_trips() {
        let all = [
            Response::ok(),
            Response::with_state(State::Running),
            Response::with_state(State::Paused),
            Response::error("pause: already paused"),
            Response {
                state: Some(State::Running),
                pid: Some(42),
                vcpus: Some(2),
                memory_mib: Some(256),
                guest_errors: Some([("fs_dropped_request".to_owned(), 1)].into()),
                devices: Some(vec![crate::counters::DeviceCounters {
                    device: "vsock".into(),
                    name: "vsock".into(),
                    notifications: 7,
                    ..Default::default()
                }]),
                ..Response::ok()
            },
        ];
        for resp in all {
            let line = resp.to_line();
            assert_eq!(Response::parse(&line).unwrap(), resp, "{line}");
        }
        assert_eq!(Response::ok().to_line(), "{\"ok\":true}\n");
        assert_eq!(
            Response::error("x").into_result(),
            Err::<Response, _>("x".to_string())
        );
        assert_eq!(
            Response::parse(r#"{"ok":false}"#).unwrap().into_result(),
            Err::<Response, _>("no reason given".to_string())
        );
    }
}
