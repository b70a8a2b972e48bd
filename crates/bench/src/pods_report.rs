//! The report table of the `pods` section.

use crate::pods::{summarize_errors, PodResults};
use crate::report::Section;
use crate::stats::{median, ratio, secs};

/// Medians per handler, ratios to runc, memory and leftovers as notes.
pub fn section(r: &PodResults) -> Section {
    let alone = |h: &str| {
        r.handlers
            .iter()
            .find(|x| x.handler == h)
            .map_or(f64::NAN, |x| {
                median(x.sequential.iter().map(|p| p.running_secs).collect())
            })
    };
    let wall = |h: &str| {
        r.handlers
            .iter()
            .find(|x| x.handler == h)
            .and_then(|x| x.concurrent_wall_secs)
            .unwrap_or(f64::NAN)
    };
    let (runc_alone, runc_wall) = (alone("runc"), wall("runc"));
    let rows = r
        .handlers
        .iter()
        .map(|x| {
            let sandbox = median(x.sequential.iter().map(|p| p.sandbox_secs).collect());
            let per_pod = median(x.concurrent.iter().map(|p| p.running_secs).collect());
            vec![
                x.handler.clone(),
                secs(sandbox, 2),
                secs(alone(&x.handler), 2),
                ratio(alone(&x.handler), runc_alone),
                secs(wall(&x.handler), 2),
                ratio(wall(&x.handler), runc_wall),
                secs(per_pod, 2),
            ]
        })
        .collect();
    let n = r.concurrent;
    let mut notes = vec![format!(
        "CRI v1 on a private containerd (bridge CNI, locally built pause and busybox images): \
         RunPodSandbox with the handler, CreateContainer (`sleep 3600`), StartContainer, \
         then ContainerStatus polled every 20 ms until the container runs; timed from \
         RunPodSandbox. \"alone\": one pod at a time, median of {} (each stopped and removed \
         before the next). \"{n} together\": {n} pods started at once from {n} threads, wall \
         time until all ran, and the median of the pods' own times. nacre's sandbox VMs are \
         restored from a VM template when the shim uses templates, booted cold otherwise.",
        r.runs
    )];
    if let Some(m) = r.nacre_pod_memory {
        notes.push(format!(
            "Host memory of one running nacre pod (its shim + nacre-vmm, idle `sleep`): \
             PSS {:.1} MiB, RSS {:.1} MiB.",
            m.pss_kib as f64 / 1024.0,
            m.rss_kib as f64 / 1024.0
        ));
    }
    notes.push(if r.leftovers.is_empty() {
        "After the pods were stopped and removed: no shim, nacre-vmm or sandbox directory left."
            .into()
    } else {
        format!(
            "LEFT after the pods were removed: {}.",
            r.leftovers.join(", ")
        )
    });
    for x in &r.handlers {
        for (e, count) in summarize_errors(&x.errors) {
            notes.push(format!("{} failed ({count}x): {e}", x.handler));
        }
    }
    Section {
        title: format!("CRI pod start: runc vs. nacre handler (alone and {n} together)"),
        columns: vec![
            "handler".into(),
            "alone: RunPodSandbox (s)".into(),
            "alone: container running (s)".into(),
            "ratio to runc".into(),
            format!("{n} together: all running (s)"),
            "ratio to runc".into(),
            format!("{n} together: per-pod median (s)"),
        ],
        rows,
        notes,
        data: serde_json::to_value(r).unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::Memory;
    use crate::pods::{HandlerResult, PodStart};

    fn start(sandbox_secs: f64, running_secs: f64) -> PodStart {
        PodStart {
            sandbox_secs,
            running_secs,
        }
    }

    #[test]
    fn medians_ratios_and_notes() {
        let r = PodResults {
            runs: 3,
            concurrent: 2,
            handlers: vec![
                HandlerResult {
                    handler: "runc".into(),
                    sequential: vec![start(0.1, 0.5), start(0.2, 0.4), start(0.3, 0.6)],
                    concurrent: vec![start(0.2, 0.8), start(0.2, 1.0)],
                    concurrent_wall_secs: Some(1.0),
                    errors: vec![],
                },
                HandlerResult {
                    handler: "nacre".into(),
                    sequential: vec![start(1.0, 1.5)],
                    concurrent: vec![start(2.0, 3.0)],
                    concurrent_wall_secs: None,
                    errors: vec!["pod together: x".into(), "pod together: x".into()],
                },
            ],
            nacre_pod_memory: Some(Memory {
                rss_kib: 2048,
                pss_kib: 1024,
            }),
            leftovers: vec!["nacre-vmm pid 9".into()],
        };
        let s = section(&r);
        assert_eq!(
            s.rows[0],
            ["runc", "0.20", "0.50", "1.0", "1.00", "1.0", "1.00"]
        );
        assert_eq!(
            s.rows[1],
            ["nacre", "1.00", "1.50", "3.0", "failed", "-", "3.00"]
        );
        assert!(s
            .notes
            .iter()
            .any(|n| n.contains("PSS 1.0 MiB, RSS 2.0 MiB")));
        assert!(s
            .notes
            .iter()
            .any(|n| n.contains("LEFT") && n.contains("pid 9")));
        assert!(s
            .notes
            .iter()
            .any(|n| n.contains("nacre failed (2x): pod together: x")));
    }
}
