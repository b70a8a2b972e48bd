//! What `ps -ef` shows of a guest process, read from `/proc`: the rows of
//! `nacre ps` (`Agent.ListProcesses`).

use std::time::{SystemTime, UNIX_EPOCH};

/// One process as `ps -ef` describes it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProcInfo {
    pub pid: u32,
    pub ppid: u32,
    /// Effective uid.
    pub uid: u32,
    /// Start, milliseconds since the Unix epoch.
    pub start_time_ms: u64,
    /// User + system CPU time, milliseconds.
    pub cpu_time_ms: u64,
    /// Milliseconds since it started.
    pub elapsed_ms: u64,
    /// `pts/N`, `ttyN`, `ttySN`, or empty.
    pub tty: String,
    /// The command line, or `[comm]`.
    pub cmd: String,
}

/// Reads process `pid`; None once it is gone.
#[must_use]
pub fn read(pid: u32) -> Option<ProcInfo> {
    let dir = format!("/proc/{pid}");
    let stat = std::fs::read_to_string(format!("{dir}/stat")).ok()?;
    let status = std::fs::read_to_string(format!("{dir}/status")).ok()?;
    let cmdline = std::fs::read(format!("{dir}/cmdline")).unwrap_or_default();
    let uptime = std::fs::read_to_string("/proc/uptime").ok()?;
    let uptime_s: f64 = uptime.split_whitespace().next()?.parse().ok()?;
    // SAFETY: sysconf has no memory effects.
    let hz = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) })
        .ok()
        .filter(|&h| h > 0)
        .unwrap_or(100);
    let now_ms = u64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis(),
    )
    .unwrap_or(u64::MAX);
    parse(pid, &stat, &status, &cmdline, hz, uptime_s, now_ms)
}

/// [`read`] on the file contents: `stat`, `status` and `cmdline` of the
/// process, the clock tick rate, the uptime and the time now.
#[must_use]
pub fn parse(
    pid: u32,
    stat: &str,
    status: &str,
    cmdline: &[u8],
    hz: u64,
    uptime_s: f64,
    now_ms: u64,
) -> Option<ProcInfo> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat.get(open + 1..close)?;
    // After "pid (comm) ": state ppid pgrp session tty_nr tpgid flags
    // minflt cminflt majflt cmajflt utime stime cutime cstime priority
    // nice num_threads itrealvalue starttime ...
    let f: Vec<&str> = stat.get(close + 1..)?.split_whitespace().collect();
    let num = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok());
    let ppid = u32::try_from(num(1)?).ok()?;
    let tty_nr = num(4)?;
    let ticks = num(11)? + num(12)?;
    let start_ticks = num(19)?;
    let uid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())?;
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        reason = "uptime is positive and far below u64::MAX ms"
    )]
    let uptime_ms = (uptime_s * 1000.0) as u64;
    let started_ms = start_ticks * 1000 / hz;
    let elapsed_ms = uptime_ms.saturating_sub(started_ms);
    let args: Vec<String> = cmdline
        .split(|&b| b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    let cmd = if args.is_empty() {
        format!("[{comm}]")
    } else {
        args.join(" ")
    };
    Some(ProcInfo {
        pid,
        ppid,
        uid,
        start_time_ms: now_ms.saturating_sub(elapsed_ms),
        cpu_time_ms: ticks * 1000 / hz,
        elapsed_ms,
        tty: tty_name(tty_nr),
        cmd,
    })
}

/// The name ps gives a `tty_nr` (major/minor as the kernel encodes them).
#[must_use]
pub fn tty_name(tty_nr: u64) -> String {
    let major = (tty_nr >> 8) & 0xfff;
    let minor = (tty_nr & 0xff) | ((tty_nr >> 12) & 0xf_ff00);
    match major {
        0 => String::new(),
        136..=143 => format!("pts/{}", (major - 136) * 256 + minor),
        4 if minor < 64 => format!("tty{minor}"),
        4 => format!("ttyS{}", minor - 64),
        5 if minor == 1 => "console".into(),
        _ => format!("{major}:{minor}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_status_and_cmdline() {
        let stat =
            "42 (sleep (x)) S 7 42 42 34816 42 4194304 90 0 0 0 150 50 0 0 20 0 1 0 1000 1 2";
        let status = "Name:\tsleep\nUid:\t1000\t0\t0\t0\n";
        let p = parse(42, stat, status, b"sleep\x00100\x00", 100, 30.0, 1_000_000).unwrap();
        assert_eq!(p.ppid, 7);
        assert_eq!(p.uid, 0, "the effective uid");
        assert_eq!(p.tty, "pts/0");
        assert_eq!(p.cpu_time_ms, 2000);
        assert_eq!(p.elapsed_ms, 20_000);
        assert_eq!(p.start_time_ms, 980_000);
        assert_eq!(p.cmd, "sleep 100");
        let zombie = parse(42, stat, status, b"", 100, 30.0, 1_000_000).unwrap();
        assert_eq!(zombie.cmd, "[sleep (x)]");
        assert!(parse(42, "42 (x) S", status, b"", 100, 1.0, 0).is_none());
    }

    #[test]
    fn tty_names() {
        assert_eq!(tty_name(0), "");
        assert_eq!(tty_name(136 << 8 | 3), "pts/3");
        assert_eq!(tty_name(4 << 8 | 1), "tty1");
        assert_eq!(tty_name(4 << 8 | 64), "ttyS0");
    }
}
