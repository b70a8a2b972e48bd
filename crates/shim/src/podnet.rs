//! What the sandbox's OCI spec says about the pod's network: the network
//! namespace CNI set up, and the host name, resolv.conf and hosts the
//! guest takes (containerd's CRI bind-mounts host files for the last two).

use std::path::{Path, PathBuf};

use nacre_runtime::container::spec as oci;
use nacre_runtime::network;
use serde_json::Value;

/// The pod network settings of the sandbox (first) container's spec.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodSpec {
    pub hostname: Option<String>,
    /// `linux.namespaces[type=network].path`.
    pub netns: Option<PathBuf>,
    /// The contents of the file bind-mounted at /etc/resolv.conf.
    pub resolv_conf: Option<String>,
    /// The contents of the file bind-mounted at /etc/hosts.
    pub hosts: Option<String>,
    /// `linux.cgroupsPath`: the sandbox's host cgroup (the VMM runs there).
    pub cgroups_path: Option<String>,
    /// `process.oomScoreAdj` of the sandbox container.
    pub oom_score_adj: Option<i32>,
}

impl PodSpec {
    /// Reads `<bundle>/config.json`; a missing or unreadable spec gives
    /// the defaults (the bundle load reports it later).
    pub fn load(bundle: &Path) -> Self {
        std::fs::read(bundle.join("config.json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
            .map(|spec| Self::from_spec(&spec, bundle))
            .unwrap_or_default()
    }

    /// Reads the settings of `spec`; relative mount sources are taken
    /// relative to `bundle`. Host files that cannot be read are left out
    /// (with a warning): the guest keeps its own.
    pub fn from_spec(spec: &Value, bundle: &Path) -> Self {
        Self {
            hostname: spec
                .get("hostname")
                .and_then(Value::as_str)
                .filter(|h| !h.is_empty())
                .map(str::to_string),
            netns: network::netns_path(spec),
            resolv_conf: mounted_file(spec, bundle, "/etc/resolv.conf"),
            hosts: mounted_file(spec, bundle, "/etc/hosts"),
            cgroups_path: oci::cgroups_path(spec).map(str::to_string),
            oom_score_adj: oci::oom_score_adj(spec),
        }
    }
}

/// The contents of the host file the spec bind-mounts at `destination`.
fn mounted_file(spec: &Value, bundle: &Path, destination: &str) -> Option<String> {
    let mount = spec
        .get("mounts")?
        .as_array()?
        .iter()
        .rev()
        .find(|m| m.get("destination").and_then(Value::as_str) == Some(destination))?;
    let is_bind = mount.get("type").and_then(Value::as_str) == Some("bind")
        || mount
            .get("options")
            .and_then(Value::as_array)
            .is_some_and(|o| {
                o.iter()
                    .any(|o| matches!(o.as_str(), Some("bind" | "rbind")))
            });
    if !is_bind {
        return None;
    }
    let source = bundle.join(mount.get("source")?.as_str()?);
    match std::fs::read_to_string(&source) {
        Ok(text) => Some(text),
        Err(e) => {
            tracing::warn!("reading {} for {destination}: {e}", source.display());
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_netns_hostname_and_bound_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("resolv"), "nameserver 10.0.0.2\n").unwrap();
        std::fs::write(dir.path().join("hosts"), "127.0.0.1 localhost\n").unwrap();
        let spec = json!({
            "hostname": "vm-host",
            "mounts": [
                {"destination": "/etc/resolv.conf", "type": "bind", "source": "resolv", "options": ["rbind", "ro"]},
                {"destination": "/etc/hosts", "source": dir.path().join("hosts"), "options": ["rbind"]},
                {"destination": "/proc", "type": "proc", "source": "proc"}
            ],
            "process": {"oomScoreAdj": -998},
            "linux": {"namespaces": [{"type": "network", "path": "/var/run/netns/cni-1"}],
                      "cgroupsPath": "/kubepods/pod1/sb1"}
        });
        let pod = PodSpec::from_spec(&spec, dir.path());
        assert_eq!(
            pod,
            PodSpec {
                hostname: Some("vm-host".into()),
                netns: Some("/var/run/netns/cni-1".into()),
                resolv_conf: Some("nameserver 10.0.0.2\n".into()),
                hosts: Some("127.0.0.1 localhost\n".into()),
                cgroups_path: Some("/kubepods/pod1/sb1".into()),
                oom_score_adj: Some(-998),
            }
        );
    }

    #[test]
    fn missing_or_non_bind_files_are_left_out() {
        let dir = tempfile::tempdir().unwrap();
        let spec = json!({
            "hostname": "",
            "mounts": [
                {"destination": "/etc/resolv.conf", "type": "bind", "source": "absent", "options": ["rbind"]},
                {"destination": "/etc/hosts", "type": "tmpfs", "source": "tmpfs"}
            ],
            "linux": {"namespaces": [{"type": "network"}]}
        });
        assert_eq!(PodSpec::from_spec(&spec, dir.path()), PodSpec::default());
        assert_eq!(PodSpec::load(&dir.path().join("nope")), PodSpec::default());
    }
}
