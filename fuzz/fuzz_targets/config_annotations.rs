//! The configuration file (`config.toml`) and the per-pod annotations:
//! `Config::parse`, then `Config::vm_shape` / `Config::container_shape`
//! with any annotations, CRI resource annotations and limits.
//!
//! Inputs are structure-aware TOML (every key the file takes, any values,
//! optionally a raw tail) plus raw text, and annotations drawn from the
//! recognised keys with any values.
//!
//! Invariants: a file that parses is within its own bounds (1 ≤ vcpus ≤
//! max_vcpus, 64 ≤ memory_mib ≤ max_memory_mib); a VM shape that comes
//! out stays within the maxima, and without `annotations_may_grow` and
//! without pod resources never exceeds the configured VM; the kernel
//! parameters a pod added are only those a pod may set (never `init=`
//! or the agent's `nacre.*`).

#![no_main]

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use nacre_runtime::config::{
    Config, ANNOTATION_KERNEL_PARAMS, ANNOTATION_MEMORY, ANNOTATION_SANDBOX_CPU_PERIOD,
    ANNOTATION_SANDBOX_CPU_QUOTA, ANNOTATION_SANDBOX_MEMORY, ANNOTATION_VCPUS,
};

#[derive(Arbitrary, Debug)]
struct Toml {
    log_level: Option<u8>,
    vcpus: Option<i64>,
    memory_mib: Option<i64>,
    max_vcpus: Option<i64>,
    max_memory_mib: Option<i64>,
    kernel_params: Option<String>,
    boot_timeout_secs: Option<i64>,
    templates: Option<bool>,
    may_grow: Option<bool>,
    model: Option<u8>,
    tail: Option<String>,
}

#[derive(Arbitrary, Debug)]
enum Text {
    Toml(Toml),
    Raw(String),
}

#[derive(Arbitrary, Debug)]
enum Key {
    Known(u8),
    Raw(String),
}

#[derive(Arbitrary, Debug)]
enum Val {
    Num(u64),
    Raw(String),
}

#[derive(Arbitrary, Debug)]
struct Input {
    text: Text,
    annotations: Vec<(Key, Val)>,
    memory_limit: Option<u64>,
    cpu_limit: Option<u32>,
}

const KEYS: [&str; 7] = [
    ANNOTATION_VCPUS,
    ANNOTATION_MEMORY,
    ANNOTATION_KERNEL_PARAMS,
    ANNOTATION_SANDBOX_MEMORY,
    ANNOTATION_SANDBOX_CPU_QUOTA,
    ANNOTATION_SANDBOX_CPU_PERIOD,
    "io.nacre.unknown",
];

fn toml(t: &Toml) -> String {
    let levels = [
        "off", "error", "warn", "info", "debug", "trace", "INFO", "loud",
    ];
    let models = ["tcfilter", "macvtap", "bridge"];
    let mut out = String::new();
    if let Some(l) = t.log_level {
        out += &format!("log_level = {:?}\n", levels[usize::from(l) % levels.len()]);
    }
    out += "[vm]\n";
    for (k, v) in [
        ("vcpus", t.vcpus),
        ("memory_mib", t.memory_mib),
        ("max_vcpus", t.max_vcpus),
        ("max_memory_mib", t.max_memory_mib),
        ("boot_timeout_secs", t.boot_timeout_secs),
    ] {
        if let Some(v) = v {
            out += &format!("{k} = {v}\n");
        }
    }
    if let Some(p) = &t.kernel_params {
        out += &format!("kernel_params = {p:?}\n");
    }
    if let Some(b) = t.templates {
        out += &format!("templates = {b}\n");
    }
    if let Some(b) = t.may_grow {
        out += &format!("annotations_may_grow = {b}\n");
    }
    if let Some(m) = t.model {
        out += &format!(
            "[network]\nmodel = {:?}\n",
            models[usize::from(m) % models.len()]
        );
    }
    if let Some(tail) = &t.tail {
        out += tail;
    }
    out
}

fuzz_target!(|input: Input| {
    let text = match &input.text {
        Text::Toml(t) => toml(t),
        Text::Raw(s) => s.clone(),
    };
    let Ok(config) = Config::parse(&text, Path::new("/etc/nacre/config.toml")) else {
        return;
    };
    let vm = &config.vm;
    assert!(vm.vcpus >= 1 && vm.vcpus <= vm.max_vcpus);
    assert!(vm.memory_mib >= 64 && vm.memory_mib <= vm.max_memory_mib);
    let _ = config.network.model();
    let annotations: HashMap<String, String> = input
        .annotations
        .iter()
        .take(8)
        .map(|(k, v)| {
            let k = match k {
                Key::Known(i) => KEYS[usize::from(*i) % KEYS.len()].to_string(),
                Key::Raw(s) => s.clone(),
            };
            let v = match v {
                Val::Num(n) => n.to_string(),
                Val::Raw(s) => s.clone(),
            };
            (k, v)
        })
        .collect();
    let pod_resources = annotations
        .keys()
        .any(|k| k.starts_with("io.kubernetes.cri."));
    if let Ok(shape) = config.vm_shape(&annotations) {
        if let Some(params) = annotations.get(ANNOTATION_KERNEL_PARAMS) {
            assert_eq!(
                nacre_runtime::config::kernel_params::refused(params),
                None,
                "{params:?}"
            );
        }
        assert!(shape.vcpus >= 1 && shape.vcpus <= vm.max_vcpus, "{shape:?}");
        assert!(
            shape.memory_mib >= 64 && shape.memory_mib <= vm.max_memory_mib,
            "{shape:?}"
        );
        if !vm.annotations_may_grow && !pod_resources {
            assert!(
                shape.vcpus <= vm.vcpus && shape.memory_mib <= vm.memory_mib,
                "{shape:?}"
            );
        }
    }
    let sorted: BTreeMap<String, String> = annotations.into_iter().collect();
    if let Ok(shape) = config.container_shape(&sorted, input.memory_limit, input.cpu_limit) {
        assert!(shape.vcpus >= 1 && shape.vcpus <= vm.max_vcpus, "{shape:?}");
        assert!(
            shape.memory_mib >= 64 && shape.memory_mib <= vm.max_memory_mib,
            "{shape:?}"
        );
    }
});
