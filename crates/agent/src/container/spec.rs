//! The subset of the OCI runtime spec (config.json) the engine reads.
//!
//! Hand-written serde structs rather than the `oci-spec` crate: the agent's
//! size matters, and unknown fields are ignored anyway. Field names follow
//! the spec's JSON.

use std::collections::BTreeMap;

use serde::Deserialize;

/// config.json.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Spec {
    /// The init process.
    pub process: Option<Process>,
    /// The root file system.
    pub root: Option<Root>,
    /// The container's host name.
    pub hostname: Option<String>,
    /// Mounts, in order.
    #[serde(default)]
    pub mounts: Vec<Mount>,
    /// Linux-specific settings.
    pub linux: Option<Linux>,
}

/// `root`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Root {
    /// The rootfs directory (a guest path).
    pub path: String,
    /// Mount the rootfs read-only.
    #[serde(default)]
    pub readonly: bool,
}

/// `process` (also the body of `ExecProcess`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Process {
    /// Give the process a pseudo-terminal.
    #[serde(default)]
    pub terminal: bool,
    /// Who runs it.
    #[serde(default)]
    pub user: User,
    /// argv; `args[0]` is looked up in the PATH of `env` when it has no `/`.
    #[serde(default)]
    pub args: Vec<String>,
    /// `KEY=value` entries.
    #[serde(default)]
    pub env: Vec<String>,
    /// Working directory (absolute, inside the container).
    #[serde(default)]
    pub cwd: String,
    /// Capability sets.
    pub capabilities: Option<Capabilities>,
    /// Resource limits.
    #[serde(default)]
    pub rlimits: Vec<Rlimit>,
    /// Set `PR_SET_NO_NEW_PRIVS`.
    #[serde(default)]
    pub no_new_privileges: bool,
    /// Initial size of the terminal.
    pub console_size: Option<ConsoleSize>,
    /// Written to /proc/self/oom_score_adj.
    pub oom_score_adj: Option<i32>,
}

/// `process.consoleSize`.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
pub struct ConsoleSize {
    /// Rows.
    #[serde(default)]
    pub height: u16,
    /// Columns.
    #[serde(default)]
    pub width: u16,
}

/// `process.user`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct User {
    /// User id.
    #[serde(default)]
    pub uid: u32,
    /// Group id.
    #[serde(default)]
    pub gid: u32,
    /// File mode creation mask.
    pub umask: Option<u32>,
    /// Supplementary groups.
    #[serde(default)]
    pub additional_gids: Vec<u32>,
}

/// `process.capabilities`: capability names such as `CAP_CHOWN`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Capabilities {
    /// Bounding set.
    #[serde(default)]
    pub bounding: Vec<String>,
    /// Effective set.
    #[serde(default)]
    pub effective: Vec<String>,
    /// Inheritable set.
    #[serde(default)]
    pub inheritable: Vec<String>,
    /// Permitted set.
    #[serde(default)]
    pub permitted: Vec<String>,
    /// Ambient set.
    #[serde(default)]
    pub ambient: Vec<String>,
}

/// `process.rlimits[]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Rlimit {
    /// `RLIMIT_NOFILE` and the like.
    #[serde(rename = "type")]
    pub kind: String,
    /// Hard limit.
    pub hard: u64,
    /// Soft limit.
    pub soft: u64,
}

/// `mounts[]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Mount {
    /// Absolute path inside the container.
    pub destination: String,
    /// File system type (`proc`, `tmpfs`, `bind`...).
    #[serde(rename = "type")]
    pub kind: Option<String>,
    /// Device, directory (a guest path for binds) or a name.
    pub source: Option<String>,
    /// fstab-style options.
    #[serde(default)]
    pub options: Vec<String>,
}

/// `linux`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Linux {
    /// Namespaces to create or join.
    #[serde(default)]
    pub namespaces: Vec<Namespace>,
    /// cgroup limits.
    pub resources: Option<Resources>,
    /// Kernel parameters set in the container (`net.ipv4.ip_forward`).
    #[serde(default)]
    pub sysctl: BTreeMap<String, String>,
    /// Paths hidden from the container.
    #[serde(default)]
    pub masked_paths: Vec<String>,
    /// Paths made read-only.
    #[serde(default)]
    pub readonly_paths: Vec<String>,
    /// Propagation of the rootfs mount (`private`, `slave`, `shared`...).
    pub rootfs_propagation: Option<String>,
    /// A seccomp profile (compiled by [`super::seccomp`]).
    pub seccomp: Option<serde_json::Value>,
    /// User namespace id mappings (user namespaces are not supported).
    #[serde(default)]
    pub uid_mappings: Vec<serde_json::Value>,
}

/// `linux.namespaces[]`.
#[derive(Debug, Clone, Deserialize)]
pub struct Namespace {
    /// `pid`, `network`, `mount`, `ipc`, `uts`, `user`, `cgroup`, `time`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Join this namespace file instead of creating one.
    pub path: Option<String>,
}

/// `linux.resources` (the parts cgroup v2 gets).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Resources {
    /// Memory.
    pub memory: Option<Memory>,
    /// CPU.
    pub cpu: Option<Cpu>,
    /// Processes.
    pub pids: Option<Pids>,
    /// cgroup v2 files written as given (`"memory.high": "1G"`).
    #[serde(default)]
    pub unified: BTreeMap<String, String>,
}

/// `linux.resources.memory`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Memory {
    /// Limit in bytes; -1 for none.
    pub limit: Option<i64>,
    /// Soft limit (memory.low) in bytes.
    pub reservation: Option<i64>,
    /// Memory + swap limit in bytes; -1 for none.
    pub swap: Option<i64>,
}

/// `linux.resources.cpu`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Cpu {
    /// cgroup v1 shares (2..262144), converted to cpu.weight.
    pub shares: Option<u64>,
    /// Quota in microseconds per period; -1 for none.
    pub quota: Option<i64>,
    /// Period in microseconds.
    pub period: Option<u64>,
    /// CPUs allowed (cpuset.cpus).
    pub cpus: Option<String>,
    /// Memory nodes allowed (cpuset.mems).
    pub mems: Option<String>,
}

/// `linux.resources.pids`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
pub struct Pids {
    /// Maximum number of tasks; 0 or -1 for none.
    pub limit: i64,
}

/// A spec the engine cannot run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    /// Not valid JSON for the schema.
    #[error("malformed {what} JSON: {message}")]
    Json {
        /// `spec`, `process` or `resources`.
        what: &'static str,
        /// serde's message.
        message: String,
    },
    /// A required field is missing or empty.
    #[error("{0} is missing")]
    Missing(&'static str),
    /// A field's value is not acceptable.
    #[error("{field}: {message}")]
    Invalid {
        /// The field, e.g. `process.cwd`.
        field: &'static str,
        /// Why.
        message: String,
    },
}

fn json<T: for<'de> Deserialize<'de>>(what: &'static str, bytes: &[u8]) -> Result<T, SpecError> {
    serde_json::from_slice(bytes).map_err(|e| SpecError::Json {
        what,
        message: e.to_string(),
    })
}

impl Spec {
    /// Parses and validates config.json.
    pub fn parse(bytes: &[u8]) -> Result<Spec, SpecError> {
        let spec: Spec = json("spec", bytes)?;
        spec.validate()?;
        Ok(spec)
    }

    fn validate(&self) -> Result<(), SpecError> {
        let root = self.root.as_ref().ok_or(SpecError::Missing("root"))?;
        if root.path.is_empty() {
            return Err(SpecError::Missing("root.path"));
        }
        self.process
            .as_ref()
            .ok_or(SpecError::Missing("process"))?
            .validate()?;
        for m in &self.mounts {
            if !m.destination.starts_with('/') {
                return Err(SpecError::Invalid {
                    field: "mounts[].destination",
                    message: format!("{:?} is not absolute", m.destination),
                });
            }
        }
        if let Some(linux) = &self.linux {
            for ns in &linux.namespaces {
                match ns.kind.as_str() {
                    "pid" | "network" | "mount" | "ipc" | "uts" | "cgroup" => {}
                    "user" => {
                        return Err(SpecError::Invalid {
                            field: "linux.namespaces",
                            message: "user namespaces are not supported".into(),
                        })
                    }
                    other => {
                        return Err(SpecError::Invalid {
                            field: "linux.namespaces",
                            message: format!("unknown namespace type {other:?}"),
                        })
                    }
                }
            }
        }
        Ok(())
    }

    /// The init process (present after [`Spec::parse`]).
    #[must_use]
    pub fn process(&self) -> Process {
        self.process.clone().unwrap_or_default()
    }

    /// The namespace entry of `kind`, if the spec has one.
    #[must_use]
    pub fn namespace(&self, kind: &str) -> Option<&Namespace> {
        self.linux
            .as_ref()?
            .namespaces
            .iter()
            .find(|ns| ns.kind == kind)
    }

    /// `linux.resources`, or none.
    #[must_use]
    pub fn resources(&self) -> Resources {
        self.linux
            .as_ref()
            .and_then(|l| l.resources.clone())
            .unwrap_or_default()
    }
}

impl Process {
    /// Parses and validates an `ExecProcess` body.
    pub fn parse(bytes: &[u8]) -> Result<Process, SpecError> {
        let process: Process = json("process", bytes)?;
        process.validate()?;
        Ok(process)
    }

    fn validate(&self) -> Result<(), SpecError> {
        if self.args.first().is_none_or(String::is_empty) {
            return Err(SpecError::Missing("process.args"));
        }
        if !self.cwd.is_empty() && !self.cwd.starts_with('/') {
            return Err(SpecError::Invalid {
                field: "process.cwd",
                message: format!("{:?} is not absolute", self.cwd),
            });
        }
        for r in &self.rlimits {
            if crate::container::caps::rlimit_resource(&r.kind).is_none() {
                return Err(SpecError::Invalid {
                    field: "process.rlimits",
                    message: format!("unknown rlimit {:?}", r.kind),
                });
            }
        }
        if let Some(caps) = &self.capabilities {
            for name in caps
                .bounding
                .iter()
                .chain(&caps.effective)
                .chain(&caps.inheritable)
                .chain(&caps.permitted)
                .chain(&caps.ambient)
            {
                if crate::container::caps::cap_number(name).is_none() {
                    return Err(SpecError::Invalid {
                        field: "process.capabilities",
                        message: format!("unknown capability {name:?}"),
                    });
                }
            }
        }
        Ok(())
    }
}

impl Resources {
    /// Parses an `UpdateContainer` body.
    pub fn parse(bytes: &[u8]) -> Result<Resources, SpecError> {
        json("resources", bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"{"ociVersion":"1.0.2","root":{"path":"/r"},
        "process":{"args":["sh"],"cwd":"/"}}"#;

    #[test]
    fn parses_a_minimal_spec() {
        let spec = Spec::parse(MINIMAL.as_bytes()).unwrap();
        assert_eq!(spec.root.unwrap().path, "/r");
        assert_eq!(spec.process.unwrap().args, vec!["sh"]);
    }

    #[test]
    fn reports_what_is_wrong() {
        let err = Spec::parse(b"{not json").unwrap_err();
        assert!(matches!(err, SpecError::Json { what: "spec", .. }), "{err}");
        assert_eq!(
            Spec::parse(br#"{"process":{"args":["sh"]}}"#).unwrap_err(),
            SpecError::Missing("root")
        );
        assert_eq!(
            Spec::parse(br#"{"root":{"path":"/r"},"process":{"args":[]}}"#).unwrap_err(),
            SpecError::Missing("process.args")
        );
        let err = Spec::parse(br#"{"root":{"path":"/r"},"process":{"args":["sh"],"cwd":"tmp"}}"#)
            .unwrap_err();
        assert!(err.to_string().contains("process.cwd"), "{err}");
        let err = Spec::parse(
            br#"{"root":{"path":"/r"},"process":{"args":["sh"]},
                "linux":{"namespaces":[{"type":"user"}]}}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("user namespaces"), "{err}");
        let err = Process::parse(br#"{"args":["sh"],"capabilities":{"bounding":["CAP_FLY"]}}"#)
            .unwrap_err();
        assert!(err.to_string().contains("CAP_FLY"), "{err}");
        let err =
            Process::parse(br#"{"args":["sh"],"rlimits":[{"type":"RLIMIT_X","hard":1,"soft":1}]}"#)
                .unwrap_err();
        assert!(err.to_string().contains("RLIMIT_X"), "{err}");
    }

    #[test]
    fn parses_resources() {
        let r = Resources::parse(
            br#"{"memory":{"limit":1048576},"cpu":{"quota":50000,"period":100000,"shares":1024},
                "pids":{"limit":4}}"#,
        )
        .unwrap();
        assert_eq!(r.pids, Some(Pids { limit: 4 }));
        assert_eq!(r.memory.unwrap().limit, Some(1_048_576));
        assert_eq!(r.cpu.unwrap().quota, Some(50_000));
    }
}
