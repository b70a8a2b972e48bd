//! Prometheus' text exposition format (version 0.0.4) of the node's
//! sandboxes.

use std::fmt::Write;

use super::{ProcessUsage, SandboxReport};

mod devices;

/// What the collector knows of the node itself.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NodeFacts {
    /// Shims whose report could not be read in this scrape.
    pub scrape_errors: u64,
    /// VM templates in the store and their bytes on disk.
    pub templates: Option<(u64, u64)>,
}

/// Upper bounds of the start and create duration histograms, in seconds
/// (restores take well under a second on VT-x hosts; cold boots of an
/// emulated guest take tens of seconds).
const BUCKETS: &[f64] = &[0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0];

/// Renders every sandbox (with what the host measured of its VMM, when it
/// still runs) and the node's figures.
pub fn render(sandboxes: &[(SandboxReport, Option<ProcessUsage>)], node: NodeFacts) -> String {
    let mut out = Out::default();
    out.family("nacre_sandboxes", "gauge", "Sandboxes whose shim reported.");
    out.sample("nacre_sandboxes", &[], sandboxes.len() as f64);
    out.family(
        "nacre_scrape_errors",
        "gauge",
        "Shims whose report could not be read in this scrape.",
    );
    out.sample("nacre_scrape_errors", &[], node.scrape_errors as f64);
    if let Some((count, bytes)) = node.templates {
        out.family("nacre_templates", "gauge", "VM templates in the store.");
        out.sample("nacre_templates", &[], count as f64);
        out.family(
            "nacre_template_bytes",
            "gauge",
            "Bytes the VM template store holds on disk.",
        );
        out.sample("nacre_template_bytes", &[], bytes as f64);
    }
    let sb = sandbox_labels;

    out.family(
        "nacre_sandbox_info",
        "gauge",
        "One per sandbox: how its VM started.",
    );
    for (r, _) in sandboxes {
        let mut l = sb(r);
        l.push(("start_kind", r.start_kind.clone()));
        out.sample("nacre_sandbox_info", &l, 1.0);
    }
    // Template hits and misses among the running sandboxes: restored from
    // a template, or cold-booted (templates off or unusable).
    out.family(
        "nacre_sandbox_starts",
        "gauge",
        "Running sandboxes by how their VM started (template: a template hit; cold: a miss or templates off).",
    );
    for kind in ["template", "cold"] {
        let n = sandboxes
            .iter()
            .filter(|(r, _)| r.start_kind == kind)
            .count();
        out.sample(
            "nacre_sandbox_starts",
            &[("kind", kind.to_owned())],
            n as f64,
        );
    }
    for (name, help, get) in [
        (
            "nacre_sandbox_vcpus",
            "vCPUs of the sandbox's VM.",
            (|r: &SandboxReport| f64::from(r.vcpus)) as fn(&SandboxReport) -> f64,
        ),
        (
            "nacre_sandbox_memory_bytes",
            "Memory of the sandbox's VM.",
            |r| f64::from(r.memory_mib) * 1024.0 * 1024.0,
        ),
        (
            "nacre_sandbox_containers",
            "Containers of the sandbox (the pause container included).",
            |r| r.containers.len() as f64,
        ),
        (
            "nacre_sandbox_start_seconds",
            "Seconds from the VMM's start to its agent's first answer.",
            |r| r.start_seconds,
        ),
    ] {
        out.family(name, "gauge", help);
        for (r, _) in sandboxes {
            out.sample(name, &sb(r), get(r));
        }
    }
    out.histogram(
        "nacre_sandbox_start_duration_seconds",
        "Sandbox VM starts (cold boot or template restore) to the agent's first answer.",
        sandboxes.iter().map(|(r, _)| r.start_seconds),
    );
    out.histogram(
        "nacre_sandbox_create_duration_seconds",
        "Creation of a sandbox's first container in the guest.",
        sandboxes.iter().filter_map(|(r, _)| r.create_seconds),
    );

    out.family(
        "nacre_vmm_rss_bytes",
        "gauge",
        "Resident memory of the VMM process.",
    );
    out.family(
        "nacre_vmm_pss_bytes",
        "gauge",
        "Proportional set size of the VMM process (template pages shared between VMs count once).",
    );
    out.family(
        "nacre_vmm_cpu_seconds_total",
        "counter",
        "Host CPU time of the VMM process by thread kind: vcpu (the guest) or other (devices, I/O).",
    );
    out.family("nacre_vmm_threads", "gauge", "Threads of the VMM process.");
    for (r, usage) in sandboxes {
        let Some(u) = usage else { continue };
        out.sample("nacre_vmm_rss_bytes", &sb(r), u.rss_bytes as f64);
        if let Some(pss) = u.pss_bytes {
            out.sample("nacre_vmm_pss_bytes", &sb(r), pss as f64);
        }
        for (kind, v) in [("vcpu", u.vcpu_seconds), ("other", u.other_seconds)] {
            let mut l = sb(r);
            l.push(("kind", kind.to_owned()));
            out.sample("nacre_vmm_cpu_seconds_total", &l, v);
        }
        out.sample("nacre_vmm_threads", &sb(r), u.threads as f64);
    }
    devices::render(&mut out, sandboxes);

    out.family(
        "nacre_container_state",
        "gauge",
        "One per container, labelled with its state.",
    );
    for (r, _) in sandboxes {
        for c in &r.containers {
            let mut l = sb(r);
            l.push(("container", c.id.clone()));
            l.push(("state", c.state.clone()));
            out.sample("nacre_container_state", &l, 1.0);
        }
    }
    type Get = fn(&super::report::GuestStats) -> Option<f64>;
    let guest: [(&str, &str, &str, Get); 5] = [
        (
            "nacre_container_memory_usage_bytes",
            "gauge",
            "Memory the container's guest cgroup uses (reported by the guest).",
            |s| Some(s.memory_usage_bytes as f64),
        ),
        (
            "nacre_container_memory_limit_bytes",
            "gauge",
            "The container's memory limit in the guest (reported by the guest).",
            |s| s.memory_limit_bytes.map(|b| b as f64),
        ),
        (
            "nacre_container_cpu_seconds_total",
            "counter",
            "CPU time of the container's guest cgroup (reported by the guest).",
            |s| Some(s.cpu_usage_usec as f64 / 1e6),
        ),
        (
            "nacre_container_pids",
            "gauge",
            "Processes in the container's guest cgroup (reported by the guest).",
            |s| Some(s.pids_current as f64),
        ),
        (
            "nacre_container_oom_kills_total",
            "counter",
            "OOM kills in the container's guest cgroup (reported by the guest).",
            |s| Some(s.memory_oom_kill as f64),
        ),
    ];
    for (name, kind, help, get) in guest {
        out.family(name, kind, help);
        for (r, _) in sandboxes {
            for c in &r.containers {
                if let Some(v) = c.stats.as_ref().and_then(get) {
                    let mut l = sb(r);
                    l.push(("container", c.id.clone()));
                    out.sample(name, &l, v);
                }
            }
        }
    }
    out.text
}

/// The labels naming a sandbox.
fn sandbox_labels(r: &SandboxReport) -> Vec<(&'static str, String)> {
    vec![
        ("sandbox", r.sandbox.clone()),
        ("namespace", r.namespace.clone()),
    ]
}

#[derive(Default)]
struct Out {
    text: String,
}

impl Out {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.text, "# HELP {name} {help}");
        let _ = writeln!(self.text, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, String)], value: f64) {
        self.text.push_str(name);
        if !labels.is_empty() {
            self.text.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.text.push(',');
                }
                let _ = write!(self.text, "{k}=\"{}\"", escape(v));
            }
            self.text.push('}');
        }
        let _ = writeln!(self.text, " {}", number(value));
    }

    fn histogram(&mut self, name: &str, help: &str, values: impl Iterator<Item = f64>) {
        let values: Vec<f64> = values.filter(|v| v.is_finite() && *v >= 0.0).collect();
        self.family(name, "histogram", help);
        for le in BUCKETS {
            let n = values.iter().filter(|v| **v <= *le).count();
            self.sample(&format!("{name}_bucket"), &[("le", number(*le))], n as f64);
        }
        self.sample(
            &format!("{name}_bucket"),
            &[("le", "+Inf".to_owned())],
            values.len() as f64,
        );
        self.sample(&format!("{name}_sum"), &[], values.iter().sum());
        self.sample(&format!("{name}_count"), &[], values.len() as f64);
    }
}

/// A label value with `\`, `"` and newlines escaped.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn number(v: f64) -> String {
    if v.is_finite() {
        format!("{v}")
    } else {
        "NaN".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::super::report::{ContainerReport, GuestStats};
    use super::*;

    pub(super) fn report() -> SandboxReport {
        SandboxReport {
            sandbox: "pod\"1\n".into(),
            namespace: "k8s.io".into(),
            vmm_pid: 7,
            vcpus: 2,
            memory_mib: 320,
            start_kind: "template".into(),
            start_seconds: 0.4,
            create_seconds: Some(2.0),
            guest_errors: [("fs_dropped_request".to_owned(), 3)].into(),
            devices: vec![],
            containers: vec![
                ContainerReport {
                    id: "pause".into(),
                    state: "running".into(),
                    stats: None,
                },
                ContainerReport {
                    id: "app".into(),
                    state: "running".into(),
                    stats: Some(GuestStats {
                        memory_usage_bytes: 1000,
                        memory_limit_bytes: Some(67_108_864),
                        cpu_usage_usec: 1_500_000,
                        pids_current: 2,
                        memory_oom_kill: 0,
                    }),
                },
            ],
        }
    }

    #[test]
    fn families_samples_and_escaping() {
        let usage = ProcessUsage {
            rss_bytes: 4096,
            pss_bytes: Some(2048),
            vcpu_seconds: 1.5,
            other_seconds: 0.25,
            threads: 9,
        };
        let text = render(&[(report(), Some(usage))], NodeFacts::default());
        let l = "sandbox=\"pod\\\"1\\n\",namespace=\"k8s.io\"";
        for want in [
            "nacre_sandboxes 1".to_owned(),
            format!("nacre_sandbox_containers{{{l}}} 2"),
            format!("nacre_container_memory_limit_bytes{{{l},container=\"app\"}} 67108864"),
            format!("nacre_container_state{{{l},container=\"app\",state=\"running\"}} 1"),
            format!("nacre_vmm_cpu_seconds_total{{{l},kind=\"vcpu\"}} 1.5"),
            "nacre_sandbox_start_duration_seconds_bucket{le=\"0.5\"} 1".to_owned(),
            "nacre_sandbox_start_duration_seconds_bucket{le=\"0.25\"} 0".to_owned(),
            "nacre_sandbox_start_duration_seconds_count 1".to_owned(),
            "nacre_sandbox_create_duration_seconds_bucket{le=\"2.5\"} 1".to_owned(),
            "nacre_sandbox_starts{kind=\"template\"} 1".to_owned(),
            "nacre_sandbox_starts{kind=\"cold\"} 0".to_owned(),
            format!("nacre_vmm_guest_errors_total{{{l},kind=\"fs_dropped_request\"}} 3"),
        ] {
            assert!(text.contains(&want), "{want} missing in\n{text}");
        }
        // Each family announced once.
        assert_eq!(text.matches("# TYPE nacre_container_state ").count(), 1);
        // No raw newline inside a label.
        for line in text.lines() {
            assert!(
                line.starts_with('#') || line.starts_with("nacre_"),
                "{line}"
            );
        }
    }
}
