//! Where the time of one `nacre run` goes: its trace (`NACRE_TRACE`, host
//! and guest spans on one timeline, see `nacre_runtime::trace`) turned
//! into a phase table, the host CPU of each process (the CLI, the
//! monitor, the VMM's vCPU threads and its other threads) and a timeline
//! picture.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;
use serde_json::Value;

use crate::report::Section;
use crate::stats::median;

/// The host spans of a `run`, in the order they happen.
pub const HOST_PHASES: [&str; 9] = [
    "cli run",
    "cli monitor",
    "monitor.setup",
    "sandbox.start",
    "agent.SetTime",
    "agent.CreateContainer",
    "agent.StartContainer",
    "container.wait",
    "sandbox.stop",
];

/// What one traced `run` shows.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RunPhases {
    /// Wall time of the `run` as the bench timed it.
    pub wall_s: f64,
    /// Milliseconds per span, `host:<name>` or `guest:<name>` (summed when
    /// a name occurs more than once).
    pub spans_ms: BTreeMap<String, f64>,
    /// CPU seconds: `cli`, `monitor` (user + system of each), `vmm_vcpu`
    /// and `vmm_other` (the VMM's threads up to the container's exit).
    pub cpu_s: BTreeMap<String, f64>,
}

fn f(v: &Value, key: &str) -> f64 {
    v.get(key).and_then(Value::as_f64).unwrap_or(0.0)
}

/// The events of a trace document and its process names by pid. Guest
/// spans from before the host's first one are left out: a VM template's
/// (its boot and warm-up, restored with its memory by older agents).
fn events_and_names(doc: &Value) -> (Vec<Value>, BTreeMap<u64, String>) {
    let mut events = doc["traceEvents"].as_array().cloned().unwrap_or_default();
    let host_t0 = events
        .iter()
        .filter(|e| e["ph"] == "X" && e["cat"] == "host")
        .filter_map(|e| e["ts"].as_u64())
        .min()
        .unwrap_or(0);
    events.retain(|e| !(e["cat"] == "guest" && e["ts"].as_u64().unwrap_or(0) < host_t0));
    let names = events
        .iter()
        .filter(|e| e["ph"] == "M" && e["name"] == "process_name")
        .filter_map(|e| Some((e["pid"].as_u64()?, e["args"]["name"].as_str()?.to_owned())))
        .collect();
    (events, names)
}

/// Reads the trace document of one `run` that took `wall_s`.
pub fn analyse(doc: &Value, wall_s: f64) -> RunPhases {
    let (events, names) = events_and_names(doc);
    let mut out = RunPhases {
        wall_s,
        ..RunPhases::default()
    };
    for e in &events {
        let name = e["name"].as_str().unwrap_or_default();
        match (e["ph"].as_str(), name) {
            (Some("X"), _) => {
                let cat = e["cat"].as_str().unwrap_or("host");
                // Each process has a `cli` span: named by its command.
                let name = match e["args"]["command"].as_str() {
                    Some(command) if name == "cli" => format!("cli {command}"),
                    _ => name.to_owned(),
                };
                *out.spans_ms.entry(format!("{cat}:{name}")).or_default() += f(e, "dur") / 1000.0;
            }
            (Some("i"), "cpu.self") => {
                let process = e["pid"]
                    .as_u64()
                    .and_then(|p| names.get(&p))
                    .map_or("other", |n| process_kind(n));
                *out.cpu_s.entry(process.into()).or_default() +=
                    f(&e["args"], "user_s") + f(&e["args"], "sys_s");
            }
            (Some("i"), "cpu.vmm") => {
                *out.cpu_s.entry("vmm_vcpu".into()).or_default() += f(&e["args"], "vcpu_s");
                *out.cpu_s.entry("vmm_other".into()).or_default() += f(&e["args"], "other_s");
            }
            _ => {}
        }
    }
    out
}

/// Who a traced process is, for the CPU split: `monitor`, `shim` or
/// `cli` (any other `nacre` command).
fn process_kind(name: &str) -> &'static str {
    if name == "nacre monitor" {
        "monitor"
    } else if name.starts_with("containerd-shim") {
        "shim"
    } else {
        "cli"
    }
}

/// The median of what `get` finds in `runs`, if any has it.
pub fn median_of(runs: &[RunPhases], get: &dyn Fn(&RunPhases) -> Option<f64>) -> Option<f64> {
    let v: Vec<f64> = runs.iter().filter_map(get).collect();
    (!v.is_empty()).then(|| median(v))
}

/// The rows of a phase table: the bench's wall time, the host spans
/// `host_phases` in their order, then the 12 longest guest spans; median
/// milliseconds of `runs`, a span missing in every run left out.
pub fn phase_rows(runs: &[RunPhases], host_phases: &[&str]) -> Vec<Vec<String>> {
    let med = |get: &dyn Fn(&RunPhases) -> Option<f64>| median_of(runs, get);
    let mut keys: Vec<String> = host_phases.iter().map(|p| format!("host:{p}")).collect();
    let mut guest: Vec<(String, f64)> = runs
        .iter()
        .flat_map(|r| r.spans_ms.iter())
        .filter(|(k, _)| k.starts_with("guest:"))
        .fold(BTreeMap::<String, f64>::new(), |mut m, (k, v)| {
            *m.entry(k.clone()).or_default() += v;
            m
        })
        .into_iter()
        .collect();
    guest.sort_by(|a, b| b.1.total_cmp(&a.1));
    keys.extend(guest.into_iter().take(12).map(|(k, _)| k));
    let mut rows: Vec<Vec<String>> = keys
        .iter()
        .filter_map(|k| {
            let ms = med(&|r| r.spans_ms.get(k).copied())?;
            let (side, name) = k.split_once(':').unwrap_or(("host", k));
            Some(vec![side.to_owned(), name.to_owned(), format!("{ms:.0}")])
        })
        .collect();
    if let Some(w) = med(&|r| Some(r.wall_s)) {
        rows.insert(
            0,
            vec![
                "bench".into(),
                "wall time".into(),
                format!("{:.0}", w * 1000.0),
            ],
        );
    }
    rows
}

/// The report section of `runs` (one `run` of `true` each).
pub fn section(runs: &[RunPhases]) -> Section {
    let n = runs.len();
    let med = |get: &dyn Fn(&RunPhases) -> Option<f64>| median_of(runs, get);
    let rows = phase_rows(runs, &HOST_PHASES);
    let cpu = |k: &str| med(&|r| r.cpu_s.get(k).copied()).unwrap_or(f64::NAN);
    let (cli, monitor, vcpu, other) = (
        cpu("cli"),
        cpu("monitor"),
        cpu("vmm_vcpu"),
        cpu("vmm_other"),
    );
    Section {
        title: "Where a `nacre run` of `true` spends its time (trace)".into(),
        columns: ["side", "span", "median ms"].map(String::from).to_vec(),
        rows,
        notes: vec![
            format!(
                "`NACRE_TRACE=<file> nacre run` of the busybox bundle, median of {n}. Host spans \
                 nest: `cli run` is the whole command (`cli monitor` its monitor's life), `monitor.setup` holds `sandbox.start` \
                 (template restore or cold boot, to the first agent answer; a cold boot's \
                 `agent.SetTime`) and `agent.CreateContainer`; `container.wait` runs from the \
                 monitor's report to the init's exit (the CLI's `agent.StartContainer` inside \
                 it); guest spans are the agent's, timed in the guest (RPCs, the creation's steps \
                 `create.*`, the container child's setup `child.*`; the 12 longest)."
            ),
            format!(
                "Host CPU per start (median seconds, user + system): CLI {cli:.3}, monitor \
                 {monitor:.3}, VMM vCPU threads {vcpu:.3} (the guest's work, emulated in kernel \
                 mode on this host), VMM other threads {other:.3} (devices, vsock, API). The \
                 VMM's figures are read just before its shutdown. Non-vCPU host CPU per start: \
                 {:.3} s.",
                cli + monitor + other
            ),
            "The timeline of the last run is `phases-timeline.svg` next to this report (its trace `phases-trace.json`).".into(),
        ],
        data: serde_json::to_value(runs).unwrap_or_default(),
    }
}

/// An SVG picture of the spans of `doc`: one lane per process and thread,
/// time left to right.
pub fn timeline_svg(doc: &Value) -> String {
    let (events, names) = events_and_names(doc);
    let spans: Vec<&Value> = events.iter().filter(|e| e["ph"] == "X").collect();
    let t0 = spans
        .iter()
        .filter_map(|e| e["ts"].as_u64())
        .min()
        .unwrap_or(0);
    let t1 = spans
        .iter()
        .filter_map(|e| Some(e["ts"].as_u64()? + e["dur"].as_u64()?))
        .max()
        .unwrap_or(t0 + 1);
    let span_us = (t1.saturating_sub(t0)).max(1) as f64;
    let mut lanes: Vec<(u64, u64)> = spans
        .iter()
        .filter_map(|e| Some((e["pid"].as_u64()?, e["tid"].as_u64()?)))
        .collect();
    lanes.sort_unstable();
    lanes.dedup();
    let (width, left, lane_h) = (1200.0, 220.0, 44.0);
    let height = 40.0 + lane_h * lanes.len() as f64;
    let x = |ts: u64| left + (ts.saturating_sub(t0)) as f64 / span_us * (width - left - 10.0);
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="monospace" font-size="10">"#
    );
    let _ = write!(
        svg,
        r#"<text x="4" y="14">nacre run of true: {:.0} ms from the first span to the last</text>"#,
        span_us / 1000.0
    );
    for (i, (pid, tid)) in lanes.iter().enumerate() {
        let y = 24.0 + lane_h * i as f64;
        let label = names.get(pid).map_or("?", String::as_str);
        let _ = write!(
            svg,
            r#"<text x="4" y="{:.0}">{} / {tid}</text>"#,
            y + 14.0,
            xml(label)
        );
        // Longer spans first, so nested ones stay visible on top.
        let mut lane: Vec<&&Value> = spans
            .iter()
            .filter(|e| e["pid"].as_u64() == Some(*pid) && e["tid"].as_u64() == Some(*tid))
            .collect();
        lane.sort_by_key(|e| std::cmp::Reverse(e["dur"].as_u64().unwrap_or(0)));
        for (depth, e) in lane.iter().enumerate() {
            let ts = e["ts"].as_u64().unwrap_or(t0);
            let dur = e["dur"].as_u64().unwrap_or(0);
            let (x0, x1) = (x(ts), x(ts + dur));
            let inset = (depth % 3) as f64 * 4.0;
            let fill = if e["cat"] == "guest" {
                "#e8a33d"
            } else {
                "#4c8bd6"
            };
            let name = e["name"].as_str().unwrap_or("");
            let _ = write!(
                svg,
                r##"<rect x="{x0:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="{fill}" stroke="#333" stroke-width="0.3"><title>{} {:.1} ms</title></rect>"##,
                y + inset,
                (x1 - x0).max(0.5),
                lane_h - 6.0 - 2.0 * inset,
                xml(name),
                dur as f64 / 1000.0
            );
            if x1 - x0 > 7.0 * name.len() as f64 {
                let _ = write!(
                    svg,
                    r#"<text x="{:.1}" y="{:.1}">{}</text>"#,
                    x0 + 2.0,
                    y + inset + 11.0,
                    xml(name)
                );
            }
        }
    }
    svg.push_str("</svg>\n");
    svg
}

fn xml(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn doc() -> Value {
        json!({"traceEvents": [
            {"name": "process_name", "ph": "M", "pid": 1, "args": {"name": "nacre run"}},
            {"name": "process_name", "ph": "M", "pid": 2, "args": {"name": "nacre monitor"}},
            {"name": "cli", "cat": "host", "ph": "X", "ts": 1000, "dur": 4000, "pid": 1, "tid": 1, "args": {"command": "run"}},
            {"name": "sandbox.start", "cat": "host", "ph": "X", "ts": 1200, "dur": 900, "pid": 2, "tid": 2},
            {"name": "agent.CreateContainer", "cat": "guest", "ph": "X", "ts": 2200, "dur": 1500, "pid": 99, "tid": 1},
            {"name": "agent.engine.warm_up", "cat": "guest", "ph": "X", "ts": 10, "dur": 900, "pid": 99, "tid": 1},
            {"name": "cpu.self", "ph": "i", "pid": 1, "args": {"user_s": 0.01, "sys_s": 0.02}},
            {"name": "cpu.self", "ph": "i", "pid": 2, "args": {"user_s": 0.05, "sys_s": 0.05}},
            {"name": "cpu.vmm", "ph": "i", "pid": 2, "args": {"vcpu_s": 3.5, "other_s": 0.2}},
        ]})
    }

    #[test]
    fn a_trace_becomes_phases_and_cpu_per_process() {
        let r = analyse(&doc(), 4.2);
        assert_eq!(r.spans_ms["host:cli run"], 4.0);
        assert_eq!(r.spans_ms["guest:agent.CreateContainer"], 1.5);
        assert!(
            !r.spans_ms.contains_key("guest:agent.engine.warm_up"),
            "the template's"
        );
        assert!((r.cpu_s["cli"] - 0.03).abs() < 1e-9);
        assert!((r.cpu_s["monitor"] - 0.1).abs() < 1e-9);
        assert_eq!(r.cpu_s["vmm_vcpu"], 3.5);
        let s = section(&[r]);
        assert_eq!(s.rows[0][1], "wall time");
        assert!(s
            .rows
            .iter()
            .any(|r| r[1] == "sandbox.start" && r[2] == "1"));
        assert!(s.rows.iter().any(|r| r[0] == "guest"));
        assert!(s.notes[1].contains("VMM vCPU threads 3.500"));
    }

    #[test]
    fn the_timeline_is_one_svg_with_a_lane_per_thread() {
        let svg = timeline_svg(&doc());
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>\n"));
        assert_eq!(svg.matches("<rect").count(), 3);
        assert!(svg.contains("nacre monitor / 2"));
        assert!(svg.contains("4 ms from the first span"));
    }
}
