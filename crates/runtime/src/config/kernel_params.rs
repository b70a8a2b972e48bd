//! Which guest kernel parameters a pod may add through the
//! `io.nacre.vm.kernel_params` annotation. The node's configuration
//! (`vm.kernel_params`) may set any; a tenant only tunes its own guest:
//! the agent's `nacre.*` settings, what the kernel runs as init, the
//! console, panic and reboot behaviour are the node's.

/// The most bytes the annotation may hold.
pub const MAX_LEN: usize = 1024;

/// Parameters a pod may set, by name (the part before `=`).
const ALLOWED: &[&str] = &[
    "quiet",
    "debug",
    "loglevel",
    "ignore_loglevel",
    "printk.devkmsg",
    "printk.time",
    "panic_on_warn",
    "transparent_hugepage",
    "mitigations",
    "nosmt",
];

/// Why a pod's kernel parameters are refused, or None when every one may
/// be set: `sysctl.*` (the kernel applies them at boot) and [`ALLOWED`],
/// printable ASCII without quotes, at most [`MAX_LEN`] bytes.
pub fn refused(params: &str) -> Option<String> {
    if params.len() > MAX_LEN {
        return Some(format!("{} bytes is over {MAX_LEN}", params.len()));
    }
    if let Some(c) = params
        .chars()
        .find(|c| !(c.is_ascii_graphic() || *c == ' ') || *c == '"')
    {
        return Some(format!("{c:?} may not appear in kernel parameters"));
    }
    params
        .split_ascii_whitespace()
        .find(|token| !allowed(token))
        .map(|token| {
            format!(
                "{token:?} is the node's to set; a pod may set sysctl.* and {}",
                ALLOWED.join(", ")
            )
        })
}

fn allowed(token: &str) -> bool {
    let name = token.split_once('=').map_or(token, |(name, _)| name);
    let sysctl = name
        .strip_prefix("sysctl.")
        .is_some_and(|rest| !rest.is_empty());
    sysctl || ALLOWED.contains(&name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tuning_is_allowed() {
        for p in [
            "",
            "quiet",
            "loglevel=7 debug",
            "sysctl.vm.overcommit_memory=1 sysctl.kernel.msgmax=4096",
            "transparent_hugepage=never mitigations=auto",
        ] {
            assert_eq!(refused(p), None, "{p}");
        }
    }

    /// What a tenant could use to take the guest's boot from the node:
    /// another init (no agent, or its own), the agent's settings, the
    /// console, quoting tricks, a huge line.
    #[test]
    fn the_nodes_parameters_are_refused() {
        for p in [
            "init=/bin/sh",
            "rdinit=/bin/busybox",
            "quiet nacre.debug_console=1",
            "nacre.log=trace",
            "console=ttyS1",
            "panic=0",
            "reboot=t",
            "sysctl.",
            "quiet \"init=/x\"",
            "quiet\ninit=/x",
            "root=/dev/vda",
        ] {
            let why = refused(p).unwrap_or_else(|| panic!("{p:?} was allowed"));
            assert!(!why.is_empty());
        }
        let why = refused(&"quiet ".repeat(300)).unwrap();
        assert!(why.contains("over 1024"), "{why}");
        let why = refused("init=/bin/sh").unwrap();
        assert!(why.contains("\"init=/bin/sh\" is the node's"), "{why}");
    }
}
