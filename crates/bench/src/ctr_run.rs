//! `ctr run --rm <image> <id> true` under containerd's runc shim and
//! nacre's shim, on one private containerd and the same busybox image.

use std::time::Instant;

use nacre_cri_tests::containerd::TEST_IMAGE;
use serde::Serialize;

use crate::harness::Harness;
use crate::report::Section;
use crate::stats::{median, ratio, secs};

/// The runtimes compared: (short name, containerd runtime type).
pub const RUNTIMES: [(&str, &str); 2] = [
    ("runc", "io.containerd.runc.v2"),
    ("nacre", "io.containerd.nacre.v2"),
];

/// The wall times of one runtime, and why it stopped early if it did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CtrTimes {
    pub runtime: String,
    pub runtime_type: String,
    pub secs: Vec<f64>,
    pub error: Option<String>,
}

/// `ctr run --rm <image> <id> true` under `runtime_type`: its wall
/// seconds, spawn to exit. A failed run's container (which `--rm` can
/// leave) is removed.
pub fn run_true(h: &Harness, runtime_type: &str, id: &str) -> Result<f64, String> {
    let start = Instant::now();
    let r = h.ctd.ctr(&[
        "run",
        "--rm",
        "--runtime",
        runtime_type,
        TEST_IMAGE,
        id,
        "true",
    ]);
    let elapsed = start.elapsed().as_secs_f64();
    match r {
        Ok(_) => Ok(elapsed),
        Err(e) => {
            let _ = h.ctd.ctr(&["containers", "rm", id]);
            Err(e.to_string())
        }
    }
}

/// Runs `true` `runs` times under each runtime; a failed run ends that
/// runtime's series (recorded in its `error`).
pub fn measure(h: &Harness, runs: usize) -> Vec<CtrTimes> {
    RUNTIMES
        .iter()
        .map(|(name, runtime_type)| {
            let mut t = CtrTimes {
                runtime: (*name).into(),
                runtime_type: (*runtime_type).into(),
                ..Default::default()
            };
            for i in 0..runs {
                eprintln!("[ctr {name}] run {}/{runs} of `true`...", i + 1);
                match run_true(h, runtime_type, &format!("bench-ctr-{name}-{i}")) {
                    Ok(elapsed) => {
                        eprintln!("    {elapsed:.3} s");
                        t.secs.push(elapsed);
                    }
                    Err(e) => {
                        eprintln!("    failed: {e}");
                        t.error = Some(e);
                        break;
                    }
                }
            }
            t
        })
        .collect()
}

/// The report table: median per runtime and its ratio to runc.
pub fn section(times: &[CtrTimes], runs: usize) -> Section {
    let runc = times
        .iter()
        .find(|t| t.runtime == "runc")
        .map_or(f64::NAN, |t| median(t.secs.clone()));
    let rows = times
        .iter()
        .map(|t| {
            let m = median(t.secs.clone());
            vec![
                format!("{} (`{}`)", t.runtime, t.runtime_type),
                secs(m, 3),
                ratio(m, runc),
                t.secs.len().to_string(),
            ]
        })
        .collect();
    let mut notes = vec![format!(
        "Wall time of `ctr run --rm --runtime <type> {TEST_IMAGE} <id> true` on a private \
         containerd (same locally built busybox image, overlayfs snapshotter), spawn to exit, \
         median of {runs}. nacre's time includes starting the shim, the sandbox VM \
         (restored from a VM template when the shim uses templates, a cold boot otherwise) \
         and shutting it down."
    )];
    notes.extend(times.iter().filter_map(|t| {
        t.error
            .as_ref()
            .map(|e| format!("{} failed: {e}", t.runtime))
    }));
    Section {
        title: "containerd: `ctr run --rm` of `true`, runc shim vs. nacre shim".into(),
        columns: ["runtime", "median wall time (s)", "ratio to runc", "runs"]
            .map(String::from)
            .to_vec(),
        rows,
        notes,
        data: serde_json::to_value(times).unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn section_has_ratio_to_runc_and_failures() {
        let times = vec![
            CtrTimes {
                runtime: "runc".into(),
                runtime_type: RUNTIMES[0].1.into(),
                secs: vec![0.2, 0.1, 0.3],
                error: None,
            },
            CtrTimes {
                runtime: "nacre".into(),
                runtime_type: RUNTIMES[1].1.into(),
                secs: vec![2.0],
                error: Some("boom".into()),
            },
        ];
        let s = section(&times, 3);
        assert_eq!(s.rows[0][1], "0.200");
        assert_eq!(s.rows[0][2], "1.0");
        assert_eq!(s.rows[1][2], "10.0");
        assert_eq!(s.rows[1][3], "1");
        assert!(s.notes.iter().any(|n| n.contains("nacre failed: boom")));
    }
}
