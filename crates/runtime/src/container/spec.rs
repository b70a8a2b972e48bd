//! The bundle's `config.json`: loading it, finding what the guest needs
//! from the host (the rootfs, bind mount sources), and rewriting it so the
//! guest sees only the shared directory.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

use super::paths::GuestLayout;
use super::volumes::{self, Ephemeral};
use super::ContainerError;

/// A bundle, loaded and checked.
#[derive(Debug, Clone)]
pub struct Bundle {
    /// The bundle directory (absolute).
    pub dir: PathBuf,
    /// The spec as written (unknown fields kept).
    pub spec: Value,
    /// The rootfs on the host (absolute).
    pub rootfs: PathBuf,
    /// `root.readonly`.
    pub readonly: bool,
    /// The spec's bind mounts.
    pub binds: Vec<BindMount>,
    pub oci_version: String,
    pub annotations: BTreeMap<String, String>,
    pub hostname: Option<String>,
    /// `process.terminal`.
    pub terminal: bool,
    /// `linux.resources.memory.limit` in bytes, when positive.
    pub memory_limit: Option<u64>,
    /// CPUs `linux.resources.cpu` quota/period allows, rounded up.
    pub cpu_limit: Option<u32>,
}

/// A bind mount of the spec, which the guest reaches through the shared
/// directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindMount {
    /// Index in the spec's `mounts`.
    pub index: usize,
    /// The host source (absolute).
    pub source: PathBuf,
    /// `ro` among its options.
    pub readonly: bool,
    /// `rro` among its options: every submount read-only too (`ro`
    /// alone, as with runc, makes only the top mount read-only).
    pub recursive_readonly: bool,
    /// A tmpfs the guest makes instead of sharing the source
    /// ([`volumes`]).
    pub ephemeral: Option<Ephemeral>,
}

/// The parts of the spec nacre reads; deserializing into it checks types.
#[derive(Deserialize)]
struct SpecView {
    #[serde(rename = "ociVersion")]
    oci_version: String,
    root: Option<RootView>,
    #[serde(default)]
    mounts: Vec<MountView>,
    process: Option<ProcessView>,
    hostname: Option<String>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

#[derive(Deserialize)]
struct RootView {
    path: String,
    #[serde(default)]
    readonly: bool,
}

#[derive(Deserialize)]
struct MountView {
    destination: String,
    #[serde(rename = "type")]
    kind: Option<String>,
    source: Option<String>,
    #[serde(default)]
    options: Vec<String>,
}

#[derive(Deserialize)]
struct ProcessView {
    #[serde(default)]
    terminal: bool,
}

impl MountView {
    fn is_bind(&self) -> bool {
        self.kind.as_deref() == Some("bind")
            || self.options.iter().any(|o| o == "bind" || o == "rbind")
    }
}

/// `linux.cgroupsPath` of OCI spec `spec`, when set: where runc would put
/// the container's processes on the host (nacre puts its VMM there).
pub fn cgroups_path(spec: &Value) -> Option<&str> {
    spec.pointer("/linux/cgroupsPath")
        .and_then(Value::as_str)
        .filter(|p| !p.is_empty())
}

/// `process.oomScoreAdj` of OCI spec `spec`.
pub fn oom_score_adj(spec: &Value) -> Option<i32> {
    spec.pointer("/process/oomScoreAdj")
        .and_then(Value::as_i64)
        .and_then(|v| i32::try_from(v).ok())
}

impl Bundle {
    /// See [`cgroups_path`].
    pub fn cgroups_path(&self) -> Option<&str> {
        cgroups_path(&self.spec)
    }

    /// See [`oom_score_adj`].
    pub fn oom_score_adj(&self) -> Option<i32> {
        oom_score_adj(&self.spec)
    }

    /// Loads `<dir>/config.json` and checks that the rootfs and the bind
    /// mount sources exist.
    pub fn load(dir: &Path) -> Result<Self, ContainerError> {
        let dir = std::path::absolute(dir).map_err(ContainerError::io("resolving", dir))?;
        let path = dir.join("config.json");
        let bytes = std::fs::read(&path).map_err(|source| ContainerError::ReadConfig {
            path: path.clone(),
            source,
        })?;
        // The spec reaches the agent in one ttrpc message: say what runc
        // would (execve's E2BIG) before a VM boots for nothing.
        if bytes.len() > crate::agent::MAX_JSON_BYTES {
            return Err(ContainerError::BadConfig {
                path,
                reason: format!(
                    "argument list too long (E2BIG): {} bytes, more than the {} bytes \
                     the agent takes (the ttrpc message limit)",
                    bytes.len(),
                    crate::agent::MAX_JSON_BYTES
                ),
            });
        }
        let parse_err = |source| ContainerError::ParseConfig {
            path: path.clone(),
            source,
        };
        let view: SpecView = serde_json::from_slice(&bytes).map_err(parse_err)?;
        let spec: Value = serde_json::from_slice(&bytes).map_err(parse_err)?;
        let root = view.root.ok_or_else(|| ContainerError::BadConfig {
            path: path.clone(),
            reason: "no root.path".into(),
        })?;
        let rootfs = dir.join(&root.path);
        if !rootfs.is_dir() {
            return Err(ContainerError::NoRootfs(rootfs));
        }
        let mut binds = Vec::new();
        for (index, m) in view.mounts.iter().enumerate() {
            if !m.is_bind() {
                continue;
            }
            let source = m
                .source
                .as_deref()
                .ok_or_else(|| ContainerError::BadConfig {
                    path: path.clone(),
                    reason: format!("bind mount {index} has no source"),
                })?;
            let source = dir.join(source);
            if !source.exists() {
                return Err(ContainerError::NoMountSource(source));
            }
            let ephemeral = volumes::detect(&source, &m.destination);
            if let Some(e) = &ephemeral {
                tracing::info!(
                    "mount {index} ({}): a guest tmpfs {} of {} bytes instead of a share",
                    source.display(),
                    e.guest_path(),
                    e.size
                );
            }
            binds.push(BindMount {
                index,
                source,
                readonly: m.options.iter().any(|o| o == "ro" || o == "rro"),
                recursive_readonly: m.options.iter().any(|o| o == "rro"),
                ephemeral,
            });
        }
        let resources = spec.pointer("/linux/resources");
        let int = |p: &str| resources.and_then(|r| r.pointer(p)).and_then(Value::as_i64);
        let memory_limit = int("/memory/limit")
            .and_then(|l| u64::try_from(l).ok())
            .filter(|l| *l > 0);
        let cpu_limit = match (int("/cpu/quota"), int("/cpu/period")) {
            // Both positive: unsigned, so a huge quota cannot overflow
            // the rounding (found by the oci_spec fuzz target).
            (Some(q), Some(p)) if q > 0 && p > 0 => {
                u32::try_from(q.unsigned_abs().div_ceil(p.unsigned_abs())).ok()
            }
            _ => None,
        };
        Ok(Self {
            dir,
            spec,
            memory_limit,
            cpu_limit,
            rootfs,
            readonly: root.readonly,
            binds,
            oci_version: view.oci_version,
            annotations: view.annotations,
            hostname: view.hostname,
            terminal: view.process.is_some_and(|p| p.terminal),
        })
    }

    /// The spec as the guest gets it: rootfs and bind sources moved into
    /// the shared directory, host-only parts (hooks, namespace paths, the
    /// host's cgroup path) removed.
    pub fn guest_spec(&self, layout: &GuestLayout) -> Value {
        guest_spec(&self.spec, &self.binds, layout)
    }
}

fn guest_spec(spec: &Value, binds: &[BindMount], layout: &GuestLayout) -> Value {
    let mut spec = spec.clone();
    if let Some(root) = spec.get_mut("root").and_then(Value::as_object_mut) {
        root.insert("path".into(), Value::String(layout.rootfs()));
    }
    if let Some(mounts) = spec.get_mut("mounts").and_then(Value::as_array_mut) {
        for b in binds {
            let Some(m) = mounts.get_mut(b.index).and_then(Value::as_object_mut) else {
                continue;
            };
            let Some(e) = &b.ephemeral else {
                m.insert("source".into(), Value::String(layout.mount(b.index)));
                continue;
            };
            m.insert("source".into(), Value::String(e.guest_path()));
            // The agent reads size= and mode= to make the tmpfs; the bind
            // itself ignores them.
            let mut options: Vec<Value> = m
                .get("options")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            options.retain(|o| {
                o.as_str()
                    .is_none_or(|o| !o.starts_with("size=") && !o.starts_with("mode="))
            });
            options.extend(e.options().into_iter().map(Value::String));
            m.insert("options".into(), Value::Array(options));
        }
    }
    if let Some(obj) = spec.as_object_mut() {
        // Hooks are host programs; they have no meaning in the guest.
        obj.remove("hooks");
    }
    if let Some(linux) = spec.get_mut("linux").and_then(Value::as_object_mut) {
        linux.insert(
            "cgroupsPath".into(),
            Value::String(format!("/nacre/{}", layout.id())),
        );
        if let Some(nss) = linux.get_mut("namespaces").and_then(Value::as_array_mut) {
            // A container joining another's IPC namespace (CRI: the
            // sandbox's) joins the VM's, which the pod's containers share.
            nss.retain(|ns| {
                ns.get("type").and_then(Value::as_str) != Some("ipc") || ns.get("path").is_none()
            });
            for ns in nss.iter_mut().filter_map(Value::as_object_mut) {
                // A path names a host namespace the guest cannot join.
                ns.remove("path");
            }
        }
    }
    spec
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::container::ContainerPaths;

    fn bundle_dir(config: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "nacre-spec-{}-{:x}",
            std::process::id(),
            config.len() * 31 + config.bytes().map(usize::from).sum::<usize>()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("rootfs")).unwrap();
        std::fs::create_dir_all(dir.join("data")).unwrap();
        std::fs::write(dir.join("config.json"), config).unwrap();
        dir
    }

    const CONFIG: &str = r#"{
        "ociVersion": "1.0.2",
        "process": {"terminal": true, "args": ["sh"], "cwd": "/"},
        "root": {"path": "rootfs", "readonly": true},
        "hostname": "box",
        "annotations": {"a": "b"},
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/data", "type": "bind", "source": "data", "options": ["rbind", "ro"]},
            {"destination": "/etc/hostname", "source": "/etc/hostname", "options": ["bind"]}
        ],
        "hooks": {"prestart": [{"path": "/bin/true"}]},
        "linux": {
            "cgroupsPath": "system.slice:libpod:x",
            "namespaces": [{"type": "pid"}, {"type": "network", "path": "/run/netns/x"},
                {"type": "ipc", "path": "/proc/7/ns/ipc"}],
            "unknownField": 1
        }
    }"#;

    #[test]
    fn loads_and_rewrites_for_the_guest() {
        let dir = bundle_dir(CONFIG);
        let b = Bundle::load(&dir).unwrap();
        assert_eq!(b.rootfs, dir.join("rootfs"));
        assert!(b.readonly && b.terminal);
        assert_eq!(b.hostname.as_deref(), Some("box"));
        assert_eq!(b.annotations["a"], "b");
        assert_eq!(
            b.binds,
            vec![
                BindMount {
                    index: 1,
                    source: dir.join("data"),
                    readonly: true,
                    recursive_readonly: false,
                    ephemeral: None,
                },
                BindMount {
                    index: 2,
                    source: "/etc/hostname".into(),
                    readonly: false,
                    recursive_readonly: false,
                    ephemeral: None,
                },
            ]
        );
        let paths = ContainerPaths::new(Path::new("/run/nacre"), "c1").unwrap();
        let g = b.guest_spec(&paths.guest());
        assert_eq!(
            g["root"],
            json!({"path": "/run/nacre/shared/c1/rootfs", "readonly": true})
        );
        assert_eq!(g["mounts"][0]["source"], "proc");
        assert_eq!(g["mounts"][1]["source"], "/run/nacre/shared/c1/mounts/1");
        assert_eq!(g["mounts"][1]["options"], json!(["rbind", "ro"]));
        assert_eq!(g["mounts"][2]["source"], "/run/nacre/shared/c1/mounts/2");
        assert!(g.get("hooks").is_none());
        assert_eq!(g["linux"]["cgroupsPath"], "/nacre/c1");
        assert_eq!(
            g["linux"]["namespaces"],
            json!([{"type": "pid"}, {"type": "network"}])
        );
        assert_eq!(g["linux"]["unknownField"], 1);
        assert_eq!(g["process"]["args"], json!(["sh"]));
        assert_eq!((b.memory_limit, b.cpu_limit), (None, None));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn ephemeral_binds_name_a_guest_tmpfs() {
        let dir = bundle_dir(
            r#"{"ociVersion": "1.0.2", "root": {"path": "rootfs"}, "mounts": [
                {"destination": "/dev/shm", "type": "bind", "source": "data",
                 "options": ["rbind", "ro", "size=1"]},
                {"destination": "/data", "type": "bind", "source": "data"}]}"#,
        );
        let mut b = Bundle::load(&dir).unwrap();
        // Detection needs a real tmpfs (see volumes); set what it finds.
        b.binds[0].ephemeral = Some(Ephemeral {
            key: "shm".into(),
            size: 65536 * 1024,
            mode: 0o1777,
        });
        let paths = ContainerPaths::new(Path::new("/run/nacre"), "c1").unwrap();
        let g = b.guest_spec(&paths.guest());
        assert_eq!(g["mounts"][0]["source"], "/run/nacre/ephemeral/shm");
        assert_eq!(
            g["mounts"][0]["options"],
            json!(["rbind", "ro", "size=67108864", "mode=1777"])
        );
        assert_eq!(g["mounts"][1]["source"], "/run/nacre/shared/c1/mounts/1");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn resources_are_read() {
        let dir = bundle_dir(
            r#"{"ociVersion": "1.0.2", "root": {"path": "rootfs"}, "linux": {"resources":
                {"memory": {"limit": 536870912}, "cpu": {"quota": 150000, "period": 100000}}}}"#,
        );
        let b = Bundle::load(&dir).unwrap();
        assert_eq!(b.memory_limit, Some(512 << 20));
        assert_eq!(b.cpu_limit, Some(2));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn malformed_config_names_file_and_error() {
        let dir = bundle_dir(r#"{"ociVersion": "1.0.2", "root": {"path": 5}}"#);
        let err = Bundle::load(&dir).unwrap_err().to_string();
        assert!(
            err.contains(&*dir.join("config.json").to_string_lossy()),
            "{err}"
        );
        assert!(err.contains("invalid type"), "{err}");
        std::fs::write(dir.join("config.json"), "{not json").unwrap();
        let err = Bundle::load(&dir).unwrap_err().to_string();
        assert!(err.contains("line 1"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn missing_rootfs_and_sources_are_named() {
        let dir = bundle_dir(r#"{"ociVersion": "1.0.2", "root": {"path": "nope"}}"#);
        let err = Bundle::load(&dir).unwrap_err().to_string();
        assert!(err.contains(&*dir.join("nope").to_string_lossy()), "{err}");
        std::fs::write(
            dir.join("config.json"),
            r#"{"ociVersion": "1.0.2", "root": {"path": "rootfs"},
                "mounts": [{"destination": "/x", "type": "bind", "source": "/nonexistent/src"}]}"#,
        )
        .unwrap();
        let err = Bundle::load(&dir).unwrap_err().to_string();
        assert!(err.contains("/nonexistent/src"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
        let err = Bundle::load(&dir).unwrap_err().to_string();
        assert!(err.contains("config.json"), "{err}");
    }

    /// Found by the `oci_spec` fuzz target: a CPU quota near `i64::MAX`
    /// overflowed the rounding up of quota / period.
    #[test]
    fn huge_cpu_quota_does_not_overflow() {
        let config = |quota: i64, period: i64| {
            format!(
                r#"{{"ociVersion": "1.0.2", "root": {{"path": "rootfs"}},
                    "linux": {{"resources": {{"cpu": {{"quota": {quota}, "period": {period}}}}}}}}}"#
            )
        };
        let dir = bundle_dir(&config(i64::MAX, 2));
        assert_eq!(Bundle::load(&dir).unwrap().cpu_limit, None);
        std::fs::write(dir.join("config.json"), config(i64::MAX, i64::MAX)).unwrap();
        assert_eq!(Bundle::load(&dir).unwrap().cpu_limit, Some(1));
        std::fs::write(dir.join("config.json"), config(150_000, 100_000)).unwrap();
        assert_eq!(Bundle::load(&dir).unwrap().cpu_limit, Some(2));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
