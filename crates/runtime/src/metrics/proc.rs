//! What the host measures of a VMM process itself.

use std::path::Path;

/// A process's memory and CPU, from `/proc`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ProcessUsage {
    pub rss_bytes: u64,
    /// Proportional set size (`smaps_rollup`); None where it cannot be
    /// read (another user's process without CAP_SYS_PTRACE).
    pub pss_bytes: Option<u64>,
    /// CPU seconds of the vCPU threads (named `vcpu<N>`): the guest's own
    /// work, with its emulation on hosts without VT-x/AMD-V.
    pub vcpu_seconds: f64,
    /// CPU seconds of every other thread (devices, I/O, API).
    pub other_seconds: f64,
    pub threads: u64,
}

impl ProcessUsage {
    /// The usage of `pid`, or None once it is gone.
    pub fn of(pid: u32) -> Option<Self> {
        Self::read(&Path::new("/proc").join(pid.to_string()))
    }

    fn read(dir: &Path) -> Option<Self> {
        let status = std::fs::read_to_string(dir.join("status")).ok()?;
        let rss_kib = field_kib(&status, "VmRSS:").unwrap_or(0);
        let pss_bytes = std::fs::read_to_string(dir.join("smaps_rollup"))
            .ok()
            .and_then(|s| field_kib(&s, "Pss:"))
            .map(|k| k * 1024);
        let tick = ticks_per_second();
        let mut usage = ProcessUsage {
            rss_bytes: rss_kib * 1024,
            pss_bytes,
            ..Self::default()
        };
        for task in std::fs::read_dir(dir.join("task")).ok()?.flatten() {
            let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
                continue;
            };
            let Some((name, ticks)) = thread_cpu(&stat) else {
                continue;
            };
            usage.threads += 1;
            let seconds = ticks as f64 / tick;
            if is_vcpu(name) {
                usage.vcpu_seconds += seconds;
            } else {
                usage.other_seconds += seconds;
            }
        }
        Some(usage)
    }
}

fn is_vcpu(name: &str) -> bool {
    name.strip_prefix("vcpu")
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// `<field> <n> kB` of a `/proc` file, in KiB.
fn field_kib(text: &str, field: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

/// The thread's name and utime + stime (clock ticks) from its `stat`:
/// "tid (comm) state ... utime(14) stime(15) ...".
fn thread_cpu(stat: &str) -> Option<(&str, u64)> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let name = stat.get(open + 1..close)?;
    let rest: Vec<&str> = stat.get(close + 1..)?.split_whitespace().collect();
    // Fields after the name start at field 3 (state): utime is field 14.
    let utime: u64 = rest.get(11)?.parse().ok()?;
    let stime: u64 = rest.get(12)?.parse().ok()?;
    Some((name, utime + stime))
}

fn ticks_per_second() -> f64 {
    // SAFETY: sysconf only reads a configuration value.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thread_names_and_times() {
        let stat = "42 (vcpu0) R 1 42 42 0 -1 4194560 0 0 0 0 250 50 0 0 20 0 3 0 1 0 0";
        assert_eq!(thread_cpu(stat), Some(("vcpu0", 300)));
        // A name with spaces and parentheses.
        let stat = "7 (a (b) c) S 1 7 7 0 -1 0 0 0 0 0 3 4 0 0 20 0 1 0 1 0 0";
        assert_eq!(thread_cpu(stat), Some(("a (b) c", 7)));
        assert!(is_vcpu("vcpu12") && !is_vcpu("vcpu") && !is_vcpu("vsock"));
    }

    #[test]
    fn this_process_is_measured() {
        let me = ProcessUsage::of(std::process::id()).unwrap();
        assert!(me.rss_bytes > 0 && me.threads >= 1, "{me:?}");
        assert_eq!(me.vcpu_seconds, 0.0);
        assert!(ProcessUsage::of(0x3fff_fff0).is_none());
    }
}
