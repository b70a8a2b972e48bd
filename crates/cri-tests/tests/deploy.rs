//! The deployment files in `deploy/`: every YAML document parses and has
//! the fields a cluster needs, the containerd snippet is valid TOML with
//! the nacre handler, the ConfigMaps carry the script and snippet
//! verbatim, and the installer script patches a containerd config
//! idempotently and removes its block again (run here on temp dirs).
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use serde_yaml::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy")
}

fn read(rel: &str) -> String {
    let p = deploy_dir().join(rel);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn documents(rel: &str) -> Vec<Value> {
    let text = read(rel);
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| Value::deserialize(d).unwrap_or_else(|e| panic!("{rel}: {e}")))
        .filter(|v| !v.is_null())
        .collect()
}

use serde::Deserialize;

fn field<'a>(v: &'a Value, path: &str) -> &'a Value {
    let mut cur = v;
    for key in path.split('.') {
        cur = match key.parse::<usize>() {
            Ok(i) => cur.get(i),
            Err(_) => cur.get(key),
        }
        .unwrap_or_else(|| panic!("missing field {path} (at {key}) in {v:?}"));
    }
    cur
}

fn str_field<'a>(v: &'a Value, path: &str) -> &'a str {
    field(v, path)
        .as_str()
        .unwrap_or_else(|| panic!("{path} is not a string"))
}

/// The `nacre.io/runtime` label in a node selector.
fn node_label(selector: &Value) -> Option<&str> {
    selector.get("nacre.io/runtime").and_then(Value::as_str)
}

fn by_kind<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    docs.iter()
        .find(|d| d.get("kind").and_then(Value::as_str) == Some(kind))
        .unwrap_or_else(|| panic!("no {kind} document"))
}

/// Parses a Kubernetes quantity like `48Mi` or `100m` into bytes or
/// millicores.
fn quantity(q: &str) -> u64 {
    if let Some(n) = q.strip_suffix("Mi") {
        return n.parse::<u64>().unwrap() << 20;
    }
    if let Some(n) = q.strip_suffix('m') {
        return n.parse().unwrap();
    }
    panic!("unexpected quantity {q}");
}

#[test]
fn runtimeclass_names_the_nacre_handler_with_overhead() {
    let docs = documents("runtimeclass.yaml");
    assert_eq!(docs.len(), 1);
    let rc = by_kind(&docs, "RuntimeClass");
    assert_eq!(str_field(rc, "apiVersion"), "node.k8s.io/v1");
    assert_eq!(str_field(rc, "metadata.name"), "nacre");
    assert_eq!(str_field(rc, "handler"), "nacre");
    let mem = quantity(str_field(rc, "overhead.podFixed.memory"));
    // At least the measured PSS of an idle cold-booted pod's shim and
    // VMM (40.3 MiB), docs/kubernetes.md.
    assert!(
        mem >= 41 << 20,
        "overhead memory {mem} below the measured 40.3 MiB"
    );
    assert!(quantity(str_field(rc, "overhead.podFixed.cpu")) > 0);
    assert_eq!(
        node_label(field(rc, "scheduling.nodeSelector")),
        Some("true")
    );
}

fn snippet() -> toml::Table {
    read("containerd/nacre-runtime.toml")
        .parse::<toml::Table>()
        .expect("deploy/containerd/nacre-runtime.toml is not valid TOML")
}

#[test]
fn containerd_snippet_declares_the_nacre_runtime() {
    let t = snippet();
    let nacre = &t["plugins"]["io.containerd.grpc.v1.cri"]["containerd"]["runtimes"]["nacre"];
    assert_eq!(
        nacre["runtime_type"].as_str(),
        Some("io.containerd.nacre.v2")
    );
    assert_eq!(
        nacre["privileged_without_host_devices"].as_bool(),
        Some(true)
    );
    let annotations = nacre["pod_annotations"].as_array().unwrap();
    assert!(annotations.iter().any(|a| a.as_str() == Some("io.nacre.*")));
}

fn check_daemonset(file: &str, action: &str) {
    let docs = documents(file);
    let cm = by_kind(&docs, "ConfigMap");
    assert_eq!(str_field(cm, "apiVersion"), "v1");
    assert_eq!(
        field(cm, "data").get("nacre-deploy.sh").and_then(Value::as_str).unwrap(),
        read("scripts/nacre-deploy.sh"),
        "{file}: the ConfigMap's script differs from deploy/scripts/nacre-deploy.sh (run deploy/scripts/render-configmaps.sh)"
    );
    assert_eq!(
        field(cm, "data").get("nacre-runtime.toml").and_then(Value::as_str).unwrap(),
        read("containerd/nacre-runtime.toml"),
        "{file}: the ConfigMap's snippet differs from deploy/containerd/nacre-runtime.toml (run deploy/scripts/render-configmaps.sh)"
    );
    let ds = by_kind(&docs, "DaemonSet");
    assert_eq!(str_field(ds, "apiVersion"), "apps/v1");
    assert_eq!(
        str_field(cm, "metadata.namespace"),
        str_field(ds, "metadata.namespace")
    );
    let spec = field(ds, "spec.template.spec");
    assert_eq!(field(spec, "hostPID").as_bool(), Some(true));
    assert_eq!(node_label(field(spec, "nodeSelector")), Some("true"));
    let container = field(spec, "containers.0");
    assert_eq!(
        field(container, "securityContext.privileged").as_bool(),
        Some(true)
    );
    let command: Vec<&str> = field(container, "command")
        .as_sequence()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(command.last(), Some(&action));
    // Every mount has a volume; the node paths are the ones the script uses.
    let volumes = field(spec, "volumes").as_sequence().unwrap();
    let host_path = |name: &str| {
        volumes
            .iter()
            .find(|v| str_field(v, "name") == name)
            .and_then(|v| v.get("hostPath"))
            .map(|h| str_field(h, "path").to_string())
    };
    let mut seen = Vec::new();
    for m in field(container, "volumeMounts").as_sequence().unwrap() {
        let name = str_field(m, "name");
        let mount = str_field(m, "mountPath");
        assert!(
            volumes.iter().any(|v| str_field(v, "name") == name),
            "{file}: mount {name} has no volume"
        );
        if let Some(host) = host_path(name) {
            assert_eq!(mount, format!("/host{host}"), "{file}: {name}");
            seen.push(host);
        }
    }
    seen.sort();
    assert_eq!(
        seen,
        [
            "/etc/containerd",
            "/usr/local/bin",
            "/usr/local/share/nacre",
            "/var/lib/nacre"
        ]
    );
    let cm_name = str_field(cm, "metadata.name");
    assert!(volumes
        .iter()
        .any(|v| v.get("configMap").map(|c| str_field(c, "name")) == Some(cm_name)));
}

#[test]
fn installer_daemonset_is_privileged_and_mounts_the_node_paths() {
    check_daemonset("nacre-deploy.yaml", "install");
}

#[test]
fn cleanup_daemonset_runs_the_uninstall() {
    check_daemonset("nacre-cleanup.yaml", "uninstall");
}

struct Node {
    _dir: tempfile::TempDir,
    root: PathBuf,
    restarts: PathBuf,
}

impl Node {
    fn new(config: Option<&str>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let art = root.join("artifacts");
        std::fs::create_dir_all(art.join("bin")).unwrap();
        std::fs::create_dir_all(art.join("share")).unwrap();
        for b in ["nacre-vmm", "nacre", "containerd-shim-nacre-v2"] {
            std::fs::write(art.join("bin").join(b), format!("#!/bin/sh\necho {b}\n")).unwrap();
        }
        for f in ["vmlinux", "initrd.cpio"] {
            std::fs::write(art.join("share").join(f), f).unwrap();
        }
        std::fs::create_dir_all(root.join("etc/containerd")).unwrap();
        if let Some(c) = config {
            std::fs::write(root.join("etc/containerd/config.toml"), c).unwrap();
        }
        std::fs::create_dir_all(root.join("proc/1")).unwrap();
        std::fs::write(root.join("proc/1/cmdline"), b"/sbin/init\0").unwrap();
        let restarts = root.join("restarts");
        Node {
            _dir: dir,
            root,
            restarts,
        }
    }

    fn run(&self, action: &str) -> std::process::Output {
        Command::new("sh")
            .arg(deploy_dir().join("scripts/nacre-deploy.sh"))
            .arg(action)
            .env("NACRE_ARTIFACTS", self.root.join("artifacts"))
            .env("NACRE_HOST_BIN", self.root.join("usr/local/bin"))
            .env("NACRE_HOST_SHARE", self.root.join("usr/local/share/nacre"))
            .env("NACRE_HOST_CONTAINERD", self.root.join("etc/containerd"))
            .env(
                "NACRE_HOST_TEMPLATES",
                self.root.join("var/lib/nacre/templates"),
            )
            .env(
                "NACRE_SNIPPET",
                deploy_dir().join("containerd/nacre-runtime.toml"),
            )
            .env(
                "NACRE_RESTART_CMD",
                format!("echo restart >> {}", self.restarts.display()),
            )
            .env("NACRE_STAY", "0")
            .env("NACRE_PROC", self.root.join("proc"))
            .output()
            .unwrap()
    }

    fn run_ok(&self, action: &str) {
        let out = self.run(action);
        assert!(
            out.status.success(),
            "nacre-deploy.sh {action}: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn config(&self) -> String {
        std::fs::read_to_string(self.root.join("etc/containerd/config.toml")).unwrap()
    }

    fn restart_count(&self) -> usize {
        std::fs::read_to_string(&self.restarts)
            .map(|s| s.lines().count())
            .unwrap_or(0)
    }
}

const EXISTING: &str = r#"version = 2
[plugins."io.containerd.grpc.v1.cri".containerd]
  default_runtime_name = "runc"
[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"
"#;

#[test]
fn install_patches_containerd_once_and_uninstall_restores_it() {
    let node = Node::new(Some(EXISTING));
    node.run_ok("install");
    for b in ["nacre-vmm", "nacre", "containerd-shim-nacre-v2"] {
        let p = node.root.join("usr/local/bin").join(b);
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o755
        );
    }
    assert!(node.root.join("usr/local/share/nacre/vmlinux").exists());
    let patched = node.config();
    let t: toml::Table = patched.parse().expect("patched config is not valid TOML");
    let runtimes = &t["plugins"]["io.containerd.grpc.v1.cri"]["containerd"]["runtimes"];
    assert_eq!(
        runtimes["nacre"]["runtime_type"].as_str(),
        Some("io.containerd.nacre.v2")
    );
    assert_eq!(
        runtimes["runc"]["runtime_type"].as_str(),
        Some("io.containerd.runc.v2")
    );
    assert_eq!(node.restart_count(), 1);

    // Idempotent: same file, no second restart. Templates of the
    // replaced files (the shim's, keyed by them) are dropped.
    let templates = node.root.join("var/lib/nacre/templates");
    std::fs::create_dir_all(templates.join("0123abcd")).unwrap();
    std::fs::write(templates.join("0123abcd/memory.bin"), b"old").unwrap();
    node.run_ok("install");
    assert_eq!(node.config(), patched);
    assert_eq!(node.restart_count(), 1);
    assert!(!templates.exists(), "stale templates kept");
    std::fs::create_dir_all(templates.join("4567cdef")).unwrap();

    // Refused while a nacre sandbox runs on the node.
    let shim = node.root.join("proc/42");
    std::fs::create_dir_all(&shim).unwrap();
    std::fs::write(
        shim.join("cmdline"),
        b"/usr/local/bin/containerd-shim-nacre-v2\0-namespace\0k8s.io\0",
    )
    .unwrap();
    let out = node.run("uninstall");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("1 nacre sandbox shim(s) still run"));
    assert_eq!(node.config(), patched);
    std::fs::remove_dir_all(&shim).unwrap();

    node.run_ok("uninstall");
    assert_eq!(node.config(), EXISTING);
    assert_eq!(node.restart_count(), 2);
    assert!(!node.root.join("usr/local/bin/nacre-vmm").exists());
    assert!(!node.root.join("usr/local/share/nacre").exists());
    assert!(!node.root.join("var/lib/nacre").exists(), "templates left");
    node.run_ok("uninstall");
    assert_eq!(node.restart_count(), 2);
    let left: Vec<_> = std::fs::read_dir(node.root.join("etc/containerd"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, ["config.toml"], "scratch files left behind");
}

#[test]
fn install_on_a_node_without_config_writes_a_version_2_one() {
    let node = Node::new(None);
    node.run_ok("install");
    let t: toml::Table = node.config().parse().unwrap();
    assert_eq!(t["version"].as_integer(), Some(2));
    assert!(
        t["plugins"]["io.containerd.grpc.v1.cri"]["containerd"]["runtimes"]
            .get("nacre")
            .is_some()
    );
}

#[test]
fn install_refuses_a_version_1_config_and_a_hand_made_nacre_runtime() {
    let node = Node::new(Some("[plugins.cri]\n"));
    let out = node.run("install");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a version 2 containerd config"));
    assert_eq!(
        node.config(),
        "[plugins.cri]\n",
        "config changed on failure"
    );
    assert_eq!(node.restart_count(), 0);

    let hand = format!(
        "{EXISTING}[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.nacre]\n  runtime_type = \"x\"\n"
    );
    let node = Node::new(Some(&hand));
    let out = node.run("install");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("outside the nacre-deploy block"));
    assert_eq!(node.config(), hand);
    assert_eq!(node.restart_count(), 0);
}

#[test]
fn install_names_a_missing_artifact() {
    let node = Node::new(Some(EXISTING));
    std::fs::remove_file(node.root.join("artifacts/share/initrd.cpio")).unwrap();
    let out = node.run("install");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("initrd.cpio is missing"), "{err}");
    assert_eq!(node.config(), EXISTING);
}

/// The metrics DaemonSet (issue 17): the node's /proc (hostPID), the shim
/// root read-only, the endpoint's port, only the capabilities it needs.
#[test]
fn metrics_daemonset_reads_the_shims_and_serves_8090() {
    let docs = documents("nacre-metrics.yaml");
    let ds = by_kind(&docs, "DaemonSet");
    let pod = field(ds, "spec.template.spec");
    assert_eq!(field(pod, "hostPID").as_bool(), Some(true));
    assert_eq!(node_label(field(pod, "nodeSelector")), Some("true"));
    let c = field(pod, "containers.0");
    assert!(str_field(c, "command.0").ends_with("/nacre-metrics"));
    assert_eq!(field(c, "ports.0.containerPort").as_u64(), Some(8090));
    let args: Vec<&str> = field(c, "args")
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        args.contains(&"0.0.0.0:8090") && args.contains(&"/run/nacre-shim"),
        "{args:?}"
    );
    let mounts = field(c, "volumeMounts").as_sequence().unwrap();
    assert!(mounts
        .iter()
        .all(|m| m.get("readOnly").and_then(Value::as_bool) == Some(true)));
    assert_eq!(str_field(c, "securityContext.capabilities.drop.0"), "ALL");
    assert_eq!(
        field(c, "securityContext.allowPrivilegeEscalation").as_bool(),
        Some(false)
    );
    let unit = read("systemd/nacre-metrics.service");
    assert!(
        unit.contains("ExecStart=/usr/local/bin/nacre-metrics"),
        "{unit}"
    );
}
