//! A container's recorded state (`state.json`) and the JSON `runc state`
//! prints from it.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::process::pid_alive;
use super::ContainerError;

/// The OCI runtime spec version nacre implements.
pub const OCI_VERSION: &str = "1.0.2";

/// A container's status, as runc names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Creating,
    Created,
    Running,
    Paused,
    Stopped,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Creating => "creating",
            Status::Created => "created",
            Status::Running => "running",
            Status::Paused => "paused",
            Status::Stopped => "stopped",
        }
    }
}

/// What `state.json` holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    pub id: String,
    /// The spec's `ociVersion`.
    pub oci_version: String,
    pub status: Status,
    /// The bundle directory (absolute).
    pub bundle: PathBuf,
    /// The rootfs on the host (absolute).
    pub rootfs: PathBuf,
    /// Creation time, RFC 3339.
    pub created: String,
    pub owner: String,
    pub annotations: BTreeMap<String, String>,
    /// The monitor process: the container's pid on the host.
    pub monitor_pid: u32,
    /// The VMM process.
    pub vmm_pid: u32,
    /// The init process's exit status once it exited (128+n for signal n).
    pub exit_status: Option<i32>,
    /// Whether the spec asks for a terminal.
    #[serde(default)]
    pub terminal: bool,
}

/// `runc state` output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuncState {
    #[serde(rename = "ociVersion")]
    pub oci_version: String,
    pub id: String,
    pub pid: u32,
    pub status: String,
    pub bundle: PathBuf,
    pub rootfs: PathBuf,
    pub created: String,
    pub owner: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

impl State {
    /// The status taking the monitor into account: a container whose
    /// monitor is gone has stopped, whatever was recorded.
    pub fn effective_status(&self) -> Status {
        match self.status {
            Status::Stopped => Status::Stopped,
            other if self.monitor_pid != 0 && !pid_alive(self.monitor_pid) => {
                let _ = other;
                Status::Stopped
            }
            other => other,
        }
    }

    /// The JSON `runc state` prints.
    pub fn to_runc(&self) -> RuncState {
        let status = self.effective_status();
        RuncState {
            oci_version: self.oci_version.clone(),
            id: self.id.clone(),
            pid: if status == Status::Stopped {
                0
            } else {
                self.monitor_pid
            },
            status: status.as_str().to_string(),
            bundle: self.bundle.clone(),
            rootfs: self.rootfs.clone(),
            created: self.created.clone(),
            owner: self.owner.clone(),
            annotations: self.annotations.clone(),
        }
    }

    /// Reads `path`.
    pub fn load(path: &Path) -> Result<Self, ContainerError> {
        let bytes = fs::read(path).map_err(ContainerError::io("reading", path))?;
        serde_json::from_slice(&bytes).map_err(|source| ContainerError::BadState {
            path: path.to_path_buf(),
            source,
        })
    }

    /// Writes `path` atomically (a temporary file renamed over it).
    pub fn save(&self, path: &Path) -> Result<(), ContainerError> {
        let json = serde_json::to_vec_pretty(self).map_err(|source| ContainerError::BadState {
            path: path.to_path_buf(),
            source,
        })?;
        write_atomic(path, &json)
    }
}

/// Writes `data` to a temporary file beside `path`, syncs and renames it.
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<(), ContainerError> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    };
    write().map_err(|e| {
        let _ = fs::remove_file(&tmp);
        ContainerError::Io {
            what: "writing",
            path: path.to_path_buf(),
            source: e,
        }
    })
}

/// `time` as RFC 3339 in UTC with nanoseconds, as runc prints `created`.
pub fn rfc3339(time: SystemTime) -> String {
    let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:09}Z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60,
        since.subsec_nanos()
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian date (H. Hinnant's
/// algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    (
        y,
        u32::try_from(m).unwrap_or(1),
        u32::try_from(d).unwrap_or(1),
    )
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn sample() -> State {
        State {
            id: "c1".into(),
            oci_version: OCI_VERSION.into(),
            status: Status::Created,
            bundle: "/b".into(),
            rootfs: "/b/rootfs".into(),
            created: "2026-01-02T03:04:05.000000006Z".into(),
            owner: String::new(),
            annotations: BTreeMap::from([("k".to_string(), "v".to_string())]),
            monitor_pid: std::process::id(),
            vmm_pid: 0,
            exit_status: None,
            terminal: false,
        }
    }

    #[test]
    fn rfc3339_formats() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000000000Z");
        let t = UNIX_EPOCH + Duration::new(1_709_251_199, 5);
        assert_eq!(rfc3339(t), "2024-02-29T23:59:59.000000005Z");
        let t = UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(rfc3339(t), "2000-02-29T00:00:00.000000000Z");
    }

    #[test]
    fn runc_json_has_runc_keys() {
        let json = serde_json::to_value(sample().to_runc()).unwrap();
        assert_eq!(json["ociVersion"], OCI_VERSION);
        assert_eq!(json["id"], "c1");
        assert_eq!(json["status"], "created");
        assert_eq!(json["pid"], std::process::id());
        assert_eq!(json["bundle"], "/b");
        assert_eq!(json["rootfs"], "/b/rootfs");
        assert_eq!(json["created"], "2026-01-02T03:04:05.000000006Z");
        assert_eq!(json["owner"], "");
        assert_eq!(json["annotations"]["k"], "v");
    }

    #[test]
    fn dead_monitor_means_stopped_with_pid_zero() {
        let mut s = sample();
        s.status = Status::Running;
        s.monitor_pid = 0x3fff_fff0; // above pid_max: never alive
        let r = s.to_runc();
        assert_eq!(r.status, "stopped");
        assert_eq!(r.pid, 0);
    }

    #[test]
    fn save_and_load_round_trip() {
        let path = std::env::temp_dir().join(format!("nacre-state-{}.json", std::process::id()));
        let s = sample();
        s.save(&path).unwrap();
        assert_eq!(State::load(&path).unwrap(), s);
        fs::write(&path, b"{").unwrap();
        let err = State::load(&path).unwrap_err().to_string();
        fs::remove_file(&path).unwrap();
        assert!(err.contains("state file"), "{err}");
    }
}
