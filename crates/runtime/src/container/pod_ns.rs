//! Pod namespaces in the guest. containerd's CRI plugin makes every
//! container of a pod join the sandbox (pause) container's IPC and UTS
//! namespaces, and its PID namespace when the pod shares one
//! (`shareProcessNamespace`), by naming the sandbox task's host pid:
//! `/proc/<pid>/ns/ipc`. For nacre that pid is the pod VMM's and the
//! namespaces live in the guest, so such a path is translated to the
//! sandbox container's init in the guest; pod-level sysctls set in the
//! sandbox's IPC namespace then reach every container, as under runc.

use serde_json::{Map, Value};

/// The container whose namespaces a pod's containers join.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NsHolder {
    /// The pid containerd was given for the sandbox task (the VMM's).
    pub host_pid: u32,
    /// The sandbox container's init pid in the guest.
    pub guest_pid: u32,
}

/// OCI namespace types translated, with their `/proc/<pid>/ns/` names.
/// (The network namespace is the VM's own; mount and cgroup namespaces
/// are never shared by CRI.)
const SHARED: [(&str, &str); 3] = [("pid", "pid"), ("ipc", "ipc"), ("uts", "uts")];

/// For every namespace of `host` (the spec containerd wrote) whose path
/// is `/proc/<holder.host_pid>/ns/<name>`, makes the guest spec `guest`
/// join `/proc/<holder.guest_pid>/ns/<name>` instead. Returns the
/// namespace types translated.
pub fn join_pod_namespaces(guest: &mut Value, host: &Value, holder: NsHolder) -> Vec<&'static str> {
    let prefix = format!("/proc/{}/ns/", holder.host_pid);
    let wanted: Vec<(&'static str, &'static str)> = SHARED
        .into_iter()
        .filter(|(kind, name)| {
            host.pointer("/linux/namespaces")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .any(|ns| {
                    ns.get("type").and_then(Value::as_str) == Some(kind)
                        && ns.get("path").and_then(Value::as_str)
                            == Some(&format!("{prefix}{name}"))
                })
        })
        .collect();
    if wanted.is_empty() {
        return Vec::new();
    }
    let Some(linux) = guest.get_mut("linux").and_then(Value::as_object_mut) else {
        return Vec::new();
    };
    let nss = linux
        .entry("namespaces")
        .or_insert_with(|| Value::Array(Vec::new()));
    let Some(nss) = nss.as_array_mut() else {
        return Vec::new();
    };
    for (kind, name) in &wanted {
        nss.retain(|ns| ns.get("type").and_then(Value::as_str) != Some(kind));
        let mut ns = Map::new();
        ns.insert("type".into(), Value::String((*kind).into()));
        ns.insert(
            "path".into(),
            Value::String(format!("/proc/{}/ns/{name}", holder.guest_pid)),
        );
        nss.push(Value::Object(ns));
    }
    wanted.into_iter().map(|(kind, _)| kind).collect()
}

/// The namespaces a VM sandbox cannot give: those `spec` (the sandbox's
/// first container) shares with the host by leaving out their
/// `linux.namespaces` entry (Kubernetes' `hostNetwork`, `hostPID`,
/// `hostIPC`; `ctr run --net-host`). The guest has its own kernel, so it
/// has no host namespace to share; running such a pod anyway would give it
/// silently different networking, processes or IPC.
pub fn host_namespaces(spec: &Value) -> Vec<&'static str> {
    let entries = spec
        .pointer("/linux/namespaces")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    ["network", "pid", "ipc"]
        .into_iter()
        .filter(|kind| {
            !entries
                .iter()
                .any(|ns| ns.get("type").and_then(Value::as_str) == Some(kind))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const HOLDER: NsHolder = NsHolder {
        host_pid: 4242,
        guest_pid: 7,
    };

    fn guest_ns(guest: &Value) -> Vec<(String, Option<String>)> {
        guest["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .map(|ns| {
                (
                    ns["type"].as_str().unwrap().to_string(),
                    ns.get("path").and_then(Value::as_str).map(str::to_string),
                )
            })
            .collect()
    }

    #[test]
    fn the_sandboxs_namespaces_become_its_guest_inits() {
        // As containerd's CRI writes an app container of a pod that
        // shares its process namespace; guest_spec has already dropped
        // the host paths and the IPC entry.
        let host = json!({"linux": {"namespaces": [
            {"type": "pid", "path": "/proc/4242/ns/pid"},
            {"type": "ipc", "path": "/proc/4242/ns/ipc"},
            {"type": "uts", "path": "/proc/4242/ns/uts"},
            {"type": "mount"},
            {"type": "network", "path": "/var/run/netns/cni-1"},
        ]}});
        let mut guest = json!({"linux": {"namespaces": [
            {"type": "pid"}, {"type": "uts"}, {"type": "mount"},
        ]}});
        let joined = join_pod_namespaces(&mut guest, &host, HOLDER);
        assert_eq!(joined, ["pid", "ipc", "uts"]);
        let mut seen = guest_ns(&guest);
        seen.sort();
        assert_eq!(
            seen,
            [
                ("ipc".to_string(), Some("/proc/7/ns/ipc".to_string())),
                ("mount".to_string(), None),
                ("pid".to_string(), Some("/proc/7/ns/pid".to_string())),
                ("uts".to_string(), Some("/proc/7/ns/uts".to_string())),
            ]
        );
    }

    #[test]
    fn other_paths_and_the_sandbox_itself_are_left_alone() {
        // Another process's namespace (not the sandbox task's): the guest
        // cannot join a host namespace, guest_spec's choice stands.
        let host = json!({"linux": {"namespaces": [
            {"type": "pid", "path": "/proc/999/ns/pid"},
            {"type": "ipc", "path": "/proc/4242/ns/pid"},
            {"type": "uts"},
        ]}});
        let mut guest = json!({"linux": {"namespaces": [{"type": "pid"}, {"type": "uts"}]}});
        let before = guest.clone();
        assert!(join_pod_namespaces(&mut guest, &host, HOLDER).is_empty());
        assert_eq!(guest, before);
        // No namespaces at all.
        let mut bare = json!({"process": {}});
        assert!(join_pod_namespaces(&mut bare, &host, HOLDER).is_empty());
    }

    #[test]
    fn host_namespaces_are_the_missing_entries() {
        let all = json!({"linux": {"namespaces": [
            {"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"},
            {"type": "network", "path": "/var/run/netns/cni-1"},
        ]}});
        assert!(host_namespaces(&all).is_empty());
        let host_net = json!({"linux": {"namespaces": [{"type": "pid"}, {"type": "ipc"}]}});
        assert_eq!(host_namespaces(&host_net), ["network"]);
        assert_eq!(host_namespaces(&json!({})), ["network", "pid", "ipc"]);
    }
}
