//! Where the time of a start through containerd goes: `ctr run --rm` of
//! `true` and a CRI pod (RunPodSandbox, CreateContainer, StartContainer
//! of `sleep`, then its removal) on a private containerd whose shims trace
//! (`NACRE_TRACE` in containerd's environment, see `nacre_shim::trace`).
//! Each start's trace is read once its shim has exited (its last flush),
//! then removed, and turned into a phase table as `phases` does for
//! `nacre run`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::{Harness, SHIM};
use crate::phases::{analyse, median_of, phase_rows, RunPhases};
use crate::report::Section;

/// The host spans of a shim's start, in the order they happen (those of
/// the pod's two containers are summed).
pub const SHIM_PHASES: [&str; 18] = [
    "task.create",
    "task.mount_rootfs",
    "sandbox.boot",
    "network.attach",
    "sandbox.start",
    "agent.SetTime",
    "agent.ConfigureNetwork",
    "agent.CreateContainer",
    "task.stdio",
    "task.start",
    "agent.StartContainer",
    "task.wait",
    "task.exit",
    "task.kill",
    "task.delete",
    "agent.RemoveContainer",
    "task.cleanup",
    "sandbox.stop",
];

/// The traced starts of one kind, and why they stopped early if they did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Traced {
    pub runs: Vec<RunPhases>,
    pub error: Option<String>,
}

/// The trace file of the harness's shims (pass it as `NACRE_TRACE`).
pub fn trace_file(dir: &Path) -> PathBuf {
    dir.join("shim-trace.json")
}

/// `ctr run --rm` of `true` under the nacre shim, `runs` times.
pub fn measure_ctr(h: &Harness, trace: &Path, runs: usize) -> Traced {
    let mut out = Traced::default();
    for i in 0..runs {
        eprintln!("[ctr nacre] traced run {}/{runs} of `true`...", i + 1);
        let id = format!("bench-ctr-traced-{i}");
        let wall = match crate::ctr_run::run_true(h, "io.containerd.nacre.v2", &id) {
            Ok(wall) => wall,
            Err(e) => {
                out.error = Some(e);
                break;
            }
        };
        if !record(&mut out, h, trace, wall) {
            break;
        }
    }
    out
}

/// A CRI pod of handler `nacre` with one `sleep` container, started
/// until the container runs, then stopped and removed; `runs` times.
pub fn measure_pod(h: &Harness, trace: &Path, runs: usize, timeout: Duration) -> Traced {
    let mut out = Traced::default();
    let cri = match nacre_cri_tests::cri::CriClient::connect(&h.ctd.socket()) {
        Ok(mut c) => {
            c.timeout = timeout;
            c
        }
        Err(e) => {
            out.error = Some(format!("CRI client: {e}"));
            return out;
        }
    };
    for i in 0..runs {
        eprintln!("[pods nacre] traced pod {}/{runs}...", i + 1);
        let cfg = crate::pods::pod_config(h, &format!("bench-traced-{i}"));
        let started = crate::pods::start_pod(&cri, &cfg, "nacre", timeout);
        let removed = h.ctd.remove_all_pods();
        let wall = match (started, removed) {
            (Ok(p), Ok(())) => p.running_secs,
            (Err(e), _) => {
                out.error = Some(e.to_string());
                break;
            }
            (_, Err(e)) => {
                out.error = Some(format!("removing the pod: {e}"));
                break;
            }
        };
        if !record(&mut out, h, trace, wall) {
            break;
        }
    }
    out
}

/// Adds the trace of the start just timed (`wall` seconds); false, with
/// the error kept, when it cannot be read.
fn record(out: &mut Traced, h: &Harness, trace: &Path, wall: f64) -> bool {
    match take_trace(h, trace) {
        Ok(doc) => {
            out.runs.push(analyse(&doc, wall));
            true
        }
        Err(e) => {
            out.error = Some(e);
            false
        }
    }
}

/// Waits until the harness's shims are gone (each writes its last events
/// when it exits), then reads the trace file and removes it.
fn take_trace(h: &Harness, trace: &Path) -> Result<Value, String> {
    let socket = h.ctd.socket().display().to_string();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !crate::procs::pids_of(SHIM, &socket).is_empty() {
        if Instant::now() > deadline {
            return Err("the shim did not exit within 60 s".into());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let bytes = std::fs::read(trace).map_err(|e| format!("reading {}: {e}", trace.display()))?;
    let _ = std::fs::remove_file(trace);
    serde_json::from_slice(&bytes).map_err(|e| format!("parsing {}: {e}", trace.display()))
}

/// The phase table of `traced` starts, `what` they are (`ctr run --rm`
/// of `true`, a CRI pod).
pub fn section(what: &str, wall: &str, traced: &Traced) -> Section {
    let runs = &traced.runs;
    let cpu = |k: &str| median_of(runs, &|r| r.cpu_s.get(k).copied()).unwrap_or(f64::NAN);
    let (shim, vcpu, other) = (cpu("shim"), cpu("vmm_vcpu"), cpu("vmm_other"));
    let mut notes = vec![
        format!(
            "{what} on a private containerd with `NACRE_TRACE` in its environment, median of \
             {} traced starts (not the untraced ones timed above; tracing adds a little). \
             `wall time` is {wall}. Host spans are the shim's: `task.*` are containerd's Task \
             RPCs (`task.wait` lasts until the exit, `task.exit` drains the output and \
             records it), `sandbox.boot` the VM's start on the first create (`network.attach` \
             the pod's taps, `sandbox.start` the template restore or cold boot to the first \
             agent answer, `agent.ConfigureNetwork` the guest's interfaces), \
             `agent.CreateContainer` the rootfs share and the guest's creation, \
             `task.cleanup` the share's removal, `sandbox.stop` the VM's stop (the VMM killed once the last container is deleted; the guest is not asked to remove that container). A pod's \
             two containers (pause and `sleep`) are summed. Guest spans are the agent's, \
             timed in the guest (the 12 longest). No span marks a first output: these \
             starts print nothing.",
            runs.len()
        ),
        format!(
            "Host CPU per start (median seconds, user + system): shim {shim:.3}, VMM vCPU \
             threads {vcpu:.3}, VMM other threads {other:.3} (read before the VM's \
             shutdown). Non-vCPU host CPU per start: {:.3} s.",
            shim + other
        ),
    ];
    if let Some(e) = &traced.error {
        notes.push(format!("stopped early: {e}"));
    }
    Section {
        title: format!("Where {what} spends its time (shim trace)"),
        columns: ["side", "span", "median ms"].map(String::from).to_vec(),
        rows: phase_rows(runs, &SHIM_PHASES),
        notes,
        data: serde_json::to_value(traced).unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_shim_trace_becomes_a_phase_table_with_the_shim_cpu() {
        let doc = json!({"traceEvents": [
            {"name": "process_name", "ph": "M", "pid": 5, "args": {"name": "containerd-shim-nacre-v2 p"}},
            {"name": "task.create", "cat": "host", "ph": "X", "ts": 1000, "dur": 3000, "pid": 5, "tid": 1, "args": {"id": "pause"}},
            {"name": "task.create", "cat": "host", "ph": "X", "ts": 5000, "dur": 1000, "pid": 5, "tid": 1, "args": {"id": "app"}},
            {"name": "sandbox.start", "cat": "host", "ph": "X", "ts": 1100, "dur": 2000, "pid": 5, "tid": 2},
            {"name": "agent.CreateContainer", "cat": "guest", "ph": "X", "ts": 3200, "dur": 500, "pid": 99, "tid": 1},
            {"name": "cpu.self", "ph": "i", "pid": 5, "args": {"user_s": 0.02, "sys_s": 0.03}},
            {"name": "cpu.vmm", "ph": "i", "pid": 5, "args": {"vcpu_s": 2.0, "other_s": 0.1}},
        ]});
        let r = analyse(&doc, 6.0);
        assert_eq!(r.spans_ms["host:task.create"], 4.0, "both containers");
        assert!((r.cpu_s["shim"] - 0.05).abs() < 1e-9);
        let traced = Traced {
            runs: vec![r],
            error: Some("boom".into()),
        };
        let s = section("a CRI pod", "RunPodSandbox to running", &traced);
        let spans: Vec<&str> = s.rows.iter().map(|r| r[1].as_str()).collect();
        assert_eq!(
            spans,
            [
                "wall time",
                "task.create",
                "sandbox.start",
                "agent.CreateContainer"
            ]
        );
        assert_eq!(s.rows[1][2], "4");
        assert!(s.notes[1].contains("shim 0.050") && s.notes[1].contains("0.150 s"));
        assert!(s.notes.iter().any(|n| n.contains("boom")));
    }
}
