//! The shim's metrics socket: `<sandbox dir>/metrics.sock` (0600) answers
//! each connection with the sandbox's [`SandboxReport`] as one JSON
//! document and closes it. The node's `nacre-metrics` collects them (see
//! `nacre_runtime::metrics`). What a client writes is not read: a report
//! per connection, at most [`MAX_CLIENTS`] at once.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use nacre_runtime::metrics::SandboxReport;
use tokio::io::AsyncWriteExt;

/// Connections served at once; more are closed unanswered.
const MAX_CLIENTS: usize = 4;
/// How long one report may take (agent calls included).
const REPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// Binds `path` and serves reports made by `report` (a blocking function:
/// it may call the agent) until the process exits.
pub fn spawn(
    path: &Path,
    report: impl Fn() -> SandboxReport + Send + Sync + 'static,
) -> std::io::Result<()> {
    let _ = std::fs::remove_file(path);
    let listener = std::os::unix::net::UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    listener.set_nonblocking(true)?;
    let listener = tokio::net::UnixListener::from_std(listener)?;
    let report = Arc::new(report);
    let active = Arc::new(AtomicUsize::new(0));
    tokio::spawn(async move {
        loop {
            let Ok((mut conn, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            if active.fetch_add(1, Ordering::SeqCst) >= MAX_CLIENTS {
                active.fetch_sub(1, Ordering::SeqCst);
                continue;
            }
            let (report, active) = (report.clone(), active.clone());
            tokio::spawn(async move {
                let made = tokio::time::timeout(
                    REPORT_TIMEOUT,
                    tokio::task::spawn_blocking(move || report()),
                )
                .await;
                if let Ok(Ok(r)) = made {
                    if let Ok(json) = serde_json::to_vec(&r) {
                        let _ = conn.write_all(&json).await;
                    }
                }
                let _ = conn.shutdown().await;
                active.fetch_sub(1, Ordering::SeqCst);
            });
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[tokio::test]
    async fn each_connection_gets_one_report() {
        let dir = std::env::temp_dir().join(format!("nacre-metrics-sock-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("metrics.sock");
        spawn(&path, || SandboxReport {
            sandbox: "s1".into(),
            ..SandboxReport::default()
        })
        .unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let p = path.clone();
        let got = tokio::task::spawn_blocking(move || {
            let mut s = std::os::unix::net::UnixStream::connect(&p).unwrap();
            let mut text = String::new();
            s.read_to_string(&mut text).unwrap();
            text
        })
        .await
        .unwrap();
        let r: SandboxReport = serde_json::from_str(&got).unwrap();
        assert_eq!(r.sandbox, "s1");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
