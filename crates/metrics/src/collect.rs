//! One scrape: every shim's report, every VMM's usage, the template store.

use std::io::Read;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nacre_runtime::container::process::pid_runs;
use nacre_runtime::image::VMM_BINARY;
use nacre_runtime::metrics::{
    render, NodeFacts, ProcessUsage, SandboxReport, METRICS_SOCKET, REPORT_MAX,
};

/// How long a shim has to report (its own limit is 10 s).
const SHIM_TIMEOUT: Duration = Duration::from_secs(12);

/// Where to look.
#[derive(Debug, Clone)]
pub struct Sources {
    /// The containerd shim's sandbox directories.
    pub shim_root: PathBuf,
    /// The VM template store, if any.
    pub template_dir: Option<PathBuf>,
}

/// The exposition of one scrape.
pub fn scrape(sources: &Sources) -> String {
    let mut node = NodeFacts::default();
    let mut sandboxes = Vec::new();
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&sources.shim_root)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    dirs.sort();
    for dir in dirs {
        let socket = dir.join(METRICS_SOCKET);
        if !socket.exists() {
            continue;
        }
        match report(&socket) {
            Ok(r) => {
                // Only a live nacre-vmm is measured (never a reused pid).
                let usage = (r.vmm_pid != 0 && pid_runs(r.vmm_pid, VMM_BINARY))
                    .then(|| ProcessUsage::of(r.vmm_pid))
                    .flatten();
                sandboxes.push((r, usage));
            }
            Err(e) => {
                tracing::warn!("reading {}: {e}", socket.display());
                node.scrape_errors += 1;
            }
        }
    }
    node.templates = sources.template_dir.as_deref().map(templates);
    render(&sandboxes, node)
}

/// Why a shim's report could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("the report is over {REPORT_MAX} bytes")]
    TooLarge,
    #[error("not a report: {0}")]
    Json(#[from] serde_json::Error),
}

/// One shim's report.
pub fn report(socket: &Path) -> Result<SandboxReport, ReportError> {
    let stream = UnixStream::connect(socket)?;
    stream.set_read_timeout(Some(SHIM_TIMEOUT))?;
    let mut body = Vec::new();
    stream.take(REPORT_MAX + 1).read_to_end(&mut body)?;
    if body.len() as u64 > REPORT_MAX {
        return Err(ReportError::TooLarge);
    }
    Ok(serde_json::from_slice(&body)?)
}

/// Templates in the store (directories holding a `header.json`) and the
/// bytes of their files.
fn templates(dir: &Path) -> (u64, u64) {
    let mut count = 0;
    let mut bytes = 0;
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = e.path();
        if !path.join("header.json").is_file() {
            continue;
        }
        count += 1;
        for f in std::fs::read_dir(&path).into_iter().flatten().flatten() {
            if let Ok(m) = f.metadata() {
                if m.is_file() {
                    // Allocated bytes: memory files are sparse.
                    bytes += std::os::unix::fs::MetadataExt::blocks(&m) * 512;
                }
            }
        }
    }
    (count, bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::net::UnixListener;

    fn shim(dir: &Path, reply: Vec<u8>) -> std::thread::JoinHandle<()> {
        std::fs::create_dir_all(dir).unwrap();
        let l = UnixListener::bind(dir.join(METRICS_SOCKET)).unwrap();
        std::thread::spawn(move || {
            if let Ok((mut s, _)) = l.accept() {
                let _ = s.write_all(&reply);
            }
        })
    }

    #[test]
    fn reports_are_collected_and_bad_ones_counted() {
        let root = std::env::temp_dir().join(format!("nacre-metrics-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let good = SandboxReport {
            sandbox: "pod-a".into(),
            namespace: "k8s.io".into(),
            vmm_pid: std::process::id(),
            ..SandboxReport::default()
        };
        let a = shim(&root.join("a"), serde_json::to_vec(&good).unwrap());
        let b = shim(&root.join("b"), b"{not json".to_vec());
        // A sandbox directory without a socket (no VM yet) is skipped.
        std::fs::create_dir_all(root.join("c")).unwrap();
        let text = scrape(&Sources {
            shim_root: root.clone(),
            template_dir: None,
        });
        a.join().unwrap();
        b.join().unwrap();
        assert!(text.contains("nacre_sandboxes 1\n"), "{text}");
        assert!(text.contains("nacre_scrape_errors 1\n"), "{text}");
        assert!(
            text.contains("nacre_sandbox_info{sandbox=\"pod-a\",namespace=\"k8s.io\""),
            "{text}"
        );
        // This test process is no nacre-vmm: it is not measured.
        assert!(!text.contains("nacre_vmm_rss_bytes{"), "{text}");
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn an_endless_report_is_cut() {
        let root = std::env::temp_dir().join(format!("nacre-metrics-big-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let t = shim(&root.join("a"), vec![b' '; (REPORT_MAX + 10) as usize]);
        let err = report(&root.join("a").join(METRICS_SOCKET)).unwrap_err();
        assert!(matches!(err, ReportError::TooLarge), "{err}");
        t.join().unwrap();
        std::fs::remove_dir_all(&root).unwrap();
    }
}
