//! The OCI spec → guest spec translation: a bundle's `config.json` loaded
//! by the runtime (`Bundle::load`) and rewritten for the guest
//! (`guest_spec`), plus the readers of `linux.cgroupsPath` and
//! `process.oomScoreAdj`.
//!
//! Inputs are structure-aware specs (root, mounts with bind/rbind/ro/rro
//! options and sources, namespaces with host paths, resources with any
//! 64-bit values, hooks) serialized to JSON, and raw bytes.
//!
//! Invariants: loading never panics; the guest spec has no hooks, its
//! rootfs and every bind source are guest paths, no namespace keeps a
//! host path, the cgroup path is nacre's own, and the bundle's host
//! directory appears nowhere in it; resource limits are positive.

#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use nacre_runtime::container::paths::GuestLayout;
use nacre_runtime::container::spec::{cgroups_path, oom_score_adj, Bundle};
use serde_json::{json, Map, Value};

#[derive(Arbitrary, Debug)]
enum RootPath {
    Rootfs,
    Dot,
    Missing,
    Raw(String),
}

#[derive(Arbitrary, Debug)]
enum Dest {
    Data,
    DevShm,
    Raw(String),
}

#[derive(Arbitrary, Debug)]
enum Kind {
    Bind,
    Proc,
    Tmpfs,
    Raw(String),
}

#[derive(Arbitrary, Debug)]
enum Src {
    Data,
    Rootfs,
    EtcHostname,
    Missing,
    Raw(String),
}

#[derive(Arbitrary, Debug)]
enum Opt {
    Bind,
    Rbind,
    Ro,
    Rro,
    Size(u64),
    Mode(u32),
    Raw(String),
}

#[derive(Arbitrary, Debug)]
struct Mount {
    destination: Dest,
    kind: Option<Kind>,
    source: Option<Src>,
    options: Vec<Opt>,
}

#[derive(Arbitrary, Debug)]
struct Linux {
    cgroups_path: Option<String>,
    namespaces: Vec<(u8, Option<String>)>,
    memory_limit: Option<i64>,
    cpu_quota: Option<i64>,
    cpu_period: Option<i64>,
}

#[derive(Arbitrary, Debug)]
struct Spec {
    oci_version: Option<String>,
    root: Option<(RootPath, bool)>,
    mounts: Vec<Mount>,
    terminal: Option<bool>,
    oom_score_adj: Option<i64>,
    hostname: Option<String>,
    annotations: Vec<(String, String)>,
    linux: Option<Linux>,
    hooks: bool,
}

#[derive(Arbitrary, Debug)]
enum Input {
    Spec(Spec),
    Raw(Vec<u8>),
}

fn s(v: impl Into<String>) -> Value {
    Value::String(v.into())
}

fn to_json(spec: &Spec) -> Value {
    let mut o = Map::new();
    if let Some(v) = &spec.oci_version {
        o.insert("ociVersion".into(), s(v.clone()));
    } else {
        o.insert("ociVersion".into(), s("1.0.2"));
    }
    if let Some((path, ro)) = &spec.root {
        let path = match path {
            RootPath::Rootfs => "rootfs".into(),
            RootPath::Dot => ".".into(),
            RootPath::Missing => "missing".into(),
            RootPath::Raw(p) => p.clone(),
        };
        o.insert("root".into(), json!({"path": path, "readonly": ro}));
    }
    let mounts: Vec<Value> = spec
        .mounts
        .iter()
        .take(8)
        .map(|m| {
            let mut v = Map::new();
            let dest = match &m.destination {
                Dest::Data => "/data".into(),
                Dest::DevShm => "/dev/shm".into(),
                Dest::Raw(d) => d.clone(),
            };
            v.insert("destination".into(), s(dest));
            if let Some(k) = &m.kind {
                let k = match k {
                    Kind::Bind => "bind".into(),
                    Kind::Proc => "proc".into(),
                    Kind::Tmpfs => "tmpfs".into(),
                    Kind::Raw(k) => k.clone(),
                };
                v.insert("type".into(), s(k));
            }
            if let Some(src) = &m.source {
                let src = match src {
                    Src::Data => "data".into(),
                    Src::Rootfs => "rootfs".into(),
                    Src::EtcHostname => "/etc/hostname".into(),
                    Src::Missing => "nothing-here".into(),
                    Src::Raw(r) => r.clone(),
                };
                v.insert("source".into(), s(src));
            }
            let opts: Vec<Value> = m
                .options
                .iter()
                .map(|o| match o {
                    Opt::Bind => s("bind"),
                    Opt::Rbind => s("rbind"),
                    Opt::Ro => s("ro"),
                    Opt::Rro => s("rro"),
                    Opt::Size(n) => s(format!("size={n}")),
                    Opt::Mode(n) => s(format!("mode={n:o}")),
                    Opt::Raw(r) => s(r.clone()),
                })
                .collect();
            v.insert("options".into(), Value::Array(opts));
            Value::Object(v)
        })
        .collect();
    o.insert("mounts".into(), Value::Array(mounts));
    let mut process = Map::new();
    if let Some(t) = spec.terminal {
        process.insert("terminal".into(), Value::Bool(t));
    }
    if let Some(n) = spec.oom_score_adj {
        process.insert("oomScoreAdj".into(), json!(n));
    }
    o.insert("process".into(), Value::Object(process));
    if let Some(h) = &spec.hostname {
        o.insert("hostname".into(), s(h.clone()));
    }
    let ann: Map<String, Value> = spec
        .annotations
        .iter()
        .map(|(k, v)| (k.clone(), s(v.clone())))
        .collect();
    o.insert("annotations".into(), Value::Object(ann));
    if spec.hooks {
        o.insert("hooks".into(), json!({"prestart": [{"path": "/bin/true"}]}));
    }
    if let Some(l) = &spec.linux {
        let types = ["pid", "network", "ipc", "uts", "mount", "user", "cgroup"];
        let nss: Vec<Value> = l
            .namespaces
            .iter()
            .map(|(t, p)| {
                let mut n = json!({"type": types[usize::from(*t) % types.len()]});
                if let Some(p) = p {
                    n["path"] = s(p.clone());
                }
                n
            })
            .collect();
        let mut linux = json!({"namespaces": nss, "resources": {"memory": {}, "cpu": {}}});
        if let Some(c) = &l.cgroups_path {
            linux["cgroupsPath"] = s(c.clone());
        }
        if let Some(m) = l.memory_limit {
            linux["resources"]["memory"]["limit"] = json!(m);
        }
        if let Some(q) = l.cpu_quota {
            linux["resources"]["cpu"]["quota"] = json!(q);
        }
        if let Some(p) = l.cpu_period {
            linux["resources"]["cpu"]["period"] = json!(p);
        }
        o.insert("linux".into(), linux);
    }
    Value::Object(o)
}

fn bundle() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = nacre_fuzz::scratch::dir("oci-spec");
        std::fs::create_dir_all(dir.join("rootfs")).unwrap();
        std::fs::create_dir_all(dir.join("data")).unwrap();
        dir
    })
}

fuzz_target!(|input: Input| {
    let dir = bundle();
    let bytes = match &input {
        Input::Spec(spec) => serde_json::to_vec(&to_json(spec)).unwrap(),
        Input::Raw(b) => b.clone(),
    };
    std::fs::write(dir.join("config.json"), &bytes).unwrap();
    if let Ok(v) = serde_json::from_slice::<Value>(&bytes) {
        let _ = cgroups_path(&v);
        let _ = oom_score_adj(&v);
    }
    let Ok(b) = Bundle::load(dir) else {
        return;
    };
    assert!(b.memory_limit.is_none_or(|l| l > 0));
    assert!(b.cpu_limit.is_none_or(|c| c > 0));
    let layout = GuestLayout::new("c1");
    let guest = b.guest_spec(&layout);
    assert!(guest.get("hooks").is_none(), "hooks reached the guest");
    if let Some(root) = guest.get("root").and_then(Value::as_object) {
        assert_eq!(root.get("path"), Some(&s(layout.rootfs())));
    }
    let mounts = guest.get("mounts").and_then(Value::as_array);
    for bind in &b.binds {
        let Some(m) = mounts.and_then(|m| m.get(bind.index)) else {
            continue;
        };
        let want = match &bind.ephemeral {
            Some(e) => e.guest_path(),
            None => layout.mount(bind.index),
        };
        assert_eq!(
            m.get("source"),
            Some(&s(want)),
            "a bind source is not a guest path"
        );
    }
    if let Some(linux) = guest.get("linux").and_then(Value::as_object) {
        assert_eq!(linux.get("cgroupsPath"), Some(&s("/nacre/c1")));
        if let Some(nss) = linux.get("namespaces").and_then(Value::as_array) {
            assert!(
                nss.iter().all(|n| n.get("path").is_none()),
                "a host namespace path"
            );
        }
    }
    let text = serde_json::to_vec(&guest).unwrap();
    let host = dir.as_os_str().as_encoded_bytes();
    if !nacre_fuzz::contains(&bytes, host) {
        assert!(
            !nacre_fuzz::contains(&text, host),
            "the bundle's host path reached the guest spec"
        );
    }
});
