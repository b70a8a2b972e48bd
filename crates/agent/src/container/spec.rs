//! The subset of the OCI runtime spec (config.json) the engine reads.
//!
//! Hand-written serde structs rather than the `oci-spec` crate: the agent's
//! size matters, and unknown fields are ignored anyway. Field names follow
//! the spec's JSON.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::devices::{DeviceType, Rule, ACC_MKNOD, ACC_READ, ACC_WRITE};

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
    /// Device nodes for the container: only their device rules are
    /// honoured (see [`Spec::device_node_rules`]).
    #[serde(default)]
    pub devices: Vec<LinuxDevice>,
}

/// `linux.devices[]`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct LinuxDevice {
    /// The path in the container.
    #[serde(default)]
    pub path: String,
    /// `c`, `b`, `u` (unbuffered character) or `p` (FIFO).
    #[serde(rename = "type", default)]
    pub kind: String,
    /// The major number.
    #[serde(default)]
    pub major: i64,
    /// The minor number.
    #[serde(default)]
    pub minor: i64,
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
    /// Device rules, in order (see [`Resources::device_rules`]).
    #[serde(default)]
    pub devices: Vec<DeviceCgroup>,
}

/// `linux.resources.devices[]`: one device cgroup rule as written.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
pub struct DeviceCgroup {
    /// Allow (true) or deny; required.
    pub allow: Option<bool>,
    /// `a` (every device, the default), `c` or `b`.
    #[serde(rename = "type")]
    pub kind: Option<String>,
    /// The major number; absent or -1 for any.
    pub major: Option<i64>,
    /// The minor number; absent or -1 for any.
    pub minor: Option<i64>,
    /// Some of `r`, `w`, `m`; absent for none.
    pub access: Option<String>,
}

impl DeviceCgroup {
    /// The validated rule, or why not.
    fn rule(&self) -> Result<Rule, String> {
        let allow = self.allow.ok_or("\"allow\" is missing")?;
        let kind = match self.kind.as_deref().unwrap_or("a") {
            "a" => DeviceType::All,
            "c" => DeviceType::Char,
            "b" => DeviceType::Block,
            other => return Err(format!("type {other:?} is not a, c or b")),
        };
        let number = |what: &str, v: Option<i64>| match v {
            None | Some(-1) => Ok(None),
            Some(n) => u32::try_from(n)
                .map(Some)
                .map_err(|_| format!("{what} {n} is not a device number or -1")),
        };
        let mut access = 0;
        for c in self.access.as_deref().unwrap_or_default().chars() {
            access |= match c {
                'r' => ACC_READ,
                'w' => ACC_WRITE,
                'm' => ACC_MKNOD,
                _ => return Err(format!("access {:?}: {c:?} is not r, w or m", self.access)),
            };
        }
        Ok(Rule {
            allow,
            kind,
            major: number("major", self.major)?,
            minor: number("minor", self.minor)?,
            access,
        })
    }
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
        self.resources().device_rules()?;
        self.device_node_rules()?;
        Ok(())
    }

    /// An allow-`rwm` rule for each `linux.devices` node (none for a
    /// FIFO), as runc adds them.
    pub fn device_node_rules(&self) -> Result<Vec<Rule>, SpecError> {
        let mut rules = Vec::new();
        let devices = self
            .linux
            .as_ref()
            .map(|l| &l.devices[..])
            .unwrap_or_default();
        for (i, d) in devices.iter().enumerate() {
            let invalid = |why: String| SpecError::Invalid {
                field: "linux.devices",
                message: format!("device {i} ({:?}): {why}", d.path),
            };
            let kind = match d.kind.as_str() {
                "c" | "u" => DeviceType::Char,
                "b" => DeviceType::Block,
                "p" => continue,
                other => return Err(invalid(format!("type {other:?} is not c, b, u or p"))),
            };
            let number = |what: &str, n: i64| {
                u32::try_from(n).map_err(|_| invalid(format!("{what} {n} is not a device number")))
            };
            rules.push(Rule::allow(
                kind,
                Some(number("major", d.major)?),
                Some(number("minor", d.minor)?),
                super::devices::ACC_ALL,
            ));
        }
        Ok(rules)
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
        let resources: Resources = json("resources", bytes)?;
        resources.device_rules()?;
        Ok(resources)
    }

    /// `devices`, validated, in order.
    pub fn device_rules(&self) -> Result<Vec<Rule>, SpecError> {
        self.devices
            .iter()
            .enumerate()
            .map(|(i, d)| {
                d.rule().map_err(|why| SpecError::Invalid {
                    field: "linux.resources.devices",
                    message: format!("rule {i}: {why}"),
                })
            })
            .collect()
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

    #[test]
    fn parses_device_rules() {
        use crate::container::devices::{DeviceType, Rule, ACC_ALL, ACC_MKNOD, ACC_READ};
        let r = Resources::parse(
            br#"{"devices":[{"allow":false,"access":"rwm"},
                {"allow":true,"type":"c","major":1,"minor":-1,"access":"rm"},
                {"allow":true,"type":"b","major":8,"minor":0}]}"#,
        )
        .unwrap();
        assert_eq!(
            r.device_rules().unwrap(),
            vec![
                Rule {
                    allow: false,
                    ..Rule::allow(DeviceType::All, None, None, ACC_ALL)
                },
                Rule::allow(DeviceType::Char, Some(1), None, ACC_READ | ACC_MKNOD),
                Rule::allow(DeviceType::Block, Some(8), Some(0), 0),
            ]
        );
        let spec = Spec::parse(
            br#"{"root":{"path":"/r"},"process":{"args":["sh"]},"linux":{"devices":[
                {"path":"/dev/fuse","type":"c","major":10,"minor":229},
                {"path":"/dev/p","type":"p"}]}}"#,
        )
        .unwrap();
        assert_eq!(
            spec.device_node_rules().unwrap(),
            vec![Rule::allow(DeviceType::Char, Some(10), Some(229), ACC_ALL)]
        );
    }

    #[test]
    fn names_a_bad_device_rule() {
        let bad = |rule: &str| {
            let body = format!(r#"{{"devices":[{{"allow":true}},{rule}]}}"#);
            let e = Resources::parse(body.as_bytes()).unwrap_err().to_string();
            assert!(e.starts_with("linux.resources.devices: rule 1: "), "{e}");
            e
        };
        assert!(bad(r#"{"allow":true,"access":"rwx"}"#).contains("'x' is not r, w or m"));
        assert!(bad(r#"{"allow":true,"type":"u"}"#).contains("type \"u\""));
        assert!(bad(r#"{"allow":true,"major":-2}"#).contains("major -2"));
        assert!(bad(r#"{"allow":true,"minor":4294967296}"#).contains("minor 4294967296"));
        assert!(bad(r#"{"access":"r"}"#).contains("\"allow\" is missing"));
        let e = Spec::parse(
            br#"{"root":{"path":"/r"},"process":{"args":["sh"]},
                "linux":{"resources":{"devices":[{"allow":true,"type":"x"}]}}}"#,
        )
        .unwrap_err();
        assert!(e.to_string().contains("rule 0: type \"x\""), "{e}");
        let e = Spec::parse(
            br#"{"root":{"path":"/r"},"process":{"args":["sh"]},
                "linux":{"devices":[{"path":"/dev/x","type":"c","major":-1,"minor":0}]}}"#,
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .contains(r#"linux.devices: device 0 ("/dev/x"): major -1"#),
            "{e}"
        );
    }
}
