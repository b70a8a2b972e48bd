//! Traffic control through iproute2's `tc` (run in the namespace's
//! thread, so it acts there): an ingress qdisc on each side and a u32
//! match-all filter whose mirred action redirects every frame to the
//! other side's egress. `cls_matchall` is not always built; u32 is.

use std::process::Command;

/// A `tc` invocation that failed.
#[derive(Debug, thiserror::Error)]
pub enum TcError {
    #[error("running `tc {args}` (is iproute2 installed?): {source}")]
    Spawn {
        args: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`tc {args}` failed ({status}): {stderr}")]
    Failed {
        args: String,
        status: std::process::ExitStatus,
        stderr: String,
    },
}

impl TcError {
    /// Whether `tc` said the device or qdisc does not exist.
    pub fn is_missing(&self) -> bool {
        match self {
            Self::Failed { stderr, .. } => {
                stderr.contains("Cannot find device")
                    || stderr.contains("No such file or directory")
                    || stderr.contains("Invalid handle")
                    || stderr.contains("Cannot delete qdisc with handle of zero")
            }
            Self::Spawn { .. } => false,
        }
    }
}

/// iproute2's `tc`: where Debian installs it (the PATH of a shim started
/// by containerd may lack the sbin directories), else from PATH.
fn tc_binary() -> &'static str {
    ["/usr/sbin/tc", "/sbin/tc"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .unwrap_or("tc")
}

fn tc(args: &[&str]) -> Result<(), TcError> {
    let shown = args.join(" ");
    let out = Command::new(tc_binary())
        .args(args)
        .output()
        .map_err(|source| TcError::Spawn {
            args: shown.clone(),
            source,
        })?;
    if !out.status.success() {
        return Err(TcError::Failed {
            args: shown,
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    tracing::debug!(args = %shown, "tc");
    Ok(())
}

/// Redirects everything arriving on `from` to the egress of `to`.
pub fn redirect(from: &str, to: &str) -> Result<(), TcError> {
    tc(&["qdisc", "add", "dev", from, "ingress"])?;
    tc(&[
        "filter", "add", "dev", from, "parent", "ffff:", "protocol", "all", "u32", "match", "u8",
        "0", "0", "action", "mirred", "egress", "redirect", "dev", to,
    ])
    .inspect_err(|_| {
        let _ = remove_ingress(from);
    })
}

/// Removes the ingress qdisc of `dev` and its filters. A device or qdisc
/// that is gone already counts as removed.
pub fn remove_ingress(dev: &str) -> Result<(), TcError> {
    match tc(&["qdisc", "del", "dev", dev, "ingress"]) {
        Err(e) if e.is_missing() => Ok(()),
        other => other,
    }
}
