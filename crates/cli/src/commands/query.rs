//! state, list, ps, events.

use std::time::Duration;

use anyhow::Result;
use nacre_runtime::agent::{ContainerStats, ProcessInfo};
use nacre_runtime::container::{ops, RuncState};
use serde_json::Value;

use super::{paths, IdArg};
use crate::Global;

/// `table` or `json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Json,
}

pub fn state(g: &Global, a: &IdArg) -> Result<i32> {
    let state = ops::load(&paths(g, &a.id)?)?;
    println!("{}", serde_json::to_string_pretty(&state.to_runc())?);
    Ok(0)
}

/// `list`'s options.
#[derive(clap::Args, Debug)]
pub struct ListArgs {
    #[arg(short = 'f', long, value_enum, default_value = "table")]
    pub format: Format,
    /// Only the ids.
    #[arg(short = 'q', long)]
    pub quiet: bool,
}

/// runc's `list` table.
pub fn table(states: &[RuncState]) -> String {
    let mut rows = vec![[
        "ID".to_string(),
        "PID".into(),
        "STATUS".into(),
        "BUNDLE".into(),
        "CREATED".into(),
        "OWNER".into(),
    ]];
    for s in states {
        rows.push([
            s.id.clone(),
            s.pid.to_string(),
            s.status.clone(),
            s.bundle.display().to_string(),
            s.created.clone(),
            if s.owner.is_empty() {
                "root".into()
            } else {
                s.owner.clone()
            },
        ]);
    }
    // Go's tabwriter as runc sets it up (minimum width 12, padding 3);
    // the last cell follows the last tab and is not padded.
    let widths: Vec<usize> = (0..6)
        .map(|c| {
            rows.iter()
                .map(|r| r[c].len() + 3)
                .max()
                .unwrap_or(0)
                .max(12)
        })
        .collect();
    rows.iter()
        .map(|r| {
            let mut line = String::new();
            for (c, (cell, w)) in r.iter().zip(&widths).enumerate() {
                if c + 1 == r.len() {
                    line.push_str(cell);
                } else {
                    line.push_str(&format!("{cell:<w$}"));
                }
            }
            line + "\n"
        })
        .collect()
}

pub fn list(g: &Global, a: &ListArgs) -> Result<i32> {
    // runc's list names the owner of each container (`state` leaves it
    // empty); nacre's containers are root's.
    let states: Vec<RuncState> = ops::list(&std::path::absolute(&g.root)?)
        .iter()
        .map(|s| {
            let mut r = s.to_runc();
            if r.owner.is_empty() {
                r.owner = "root".into();
            }
            r
        })
        .collect();
    if a.quiet {
        for s in &states {
            println!("{}", s.id);
        }
    } else if a.format == Format::Json && states.is_empty() {
        // runc marshals its empty (nil) list as `null`.
        println!("null");
    } else if a.format == Format::Json {
        println!("{}", serde_json::to_string(&states)?);
    } else {
        print!("{}", table(&states));
    }
    Ok(0)
}

/// `ps`'s options.
#[derive(clap::Args, Debug)]
#[command(long_about = "List a container's processes.\n\n\
    The processes run in the container's VM, not on this host: the table \
    is runc's (the format of `ps -ef`: UID PID PPID C STIME TTY TIME CMD) \
    filled from the guest's /proc, with guest pids; user names come from \
    this host's /etc/passwd, as the host's ps would print them. \
    `--format json` prints the guest pids as a JSON array, as runc does. \
    Other ps options cannot apply (there is no ps of this host to give \
    them to) and are refused.")]
pub struct PsArgs {
    /// table (ps -ef's columns) or json (an array of pids).
    #[arg(short = 'f', long, value_enum, default_value = "table")]
    pub format: Format,
    /// The container id.
    pub id: String,
    /// ps options: only `-ef` (the default) is understood.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub ps_args: Vec<String>,
}

pub fn ps(g: &Global, a: &PsArgs) -> Result<i32> {
    let paths = paths(g, &a.id)?;
    if a.format == Format::Json {
        // runc: the pids alone, whatever the ps options.
        let pids = ops::processes(&paths)?;
        println!("{}", serde_json::to_string(&pids)?);
        return Ok(0);
    }
    if !(a.ps_args.is_empty() || a.ps_args == ["-ef"] || a.ps_args == ["-e", "-f"]) {
        anyhow::bail!(
            "ps options {:?} are not supported: the container's processes run in its VM; \
             nacre ps prints them in ps -ef's format (or --format json)",
            a.ps_args.join(" ")
        );
    }
    let procs = ops::process_table(&paths)?;
    let users = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    print!(
        "{}",
        ps_table(&procs, &users, i64::try_from(now.as_secs()).unwrap_or(0))
    );
    Ok(0)
}

/// The user name of `uid` in `passwd` (an /etc/passwd text) if it fits
/// ps's 8 columns, else the number (as procps prints it).
fn user_name(passwd: &str, uid: u32) -> String {
    passwd
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() > 2 && f[2].parse() == Ok(uid)).then(|| f[0].to_string())
        })
        .filter(|n| !n.is_empty() && n.len() <= 8)
        .unwrap_or_else(|| uid.to_string())
}

/// Local time of `secs` (seconds since the epoch).
fn local_tm(secs: i64) -> libc::tm {
    // SAFETY: all-zero is a valid libc::tm.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    let t: libc::time_t = secs;
    // SAFETY: localtime_r writes into our tm only.
    unsafe { libc::localtime_r(&t, &mut tm) };
    tm
}

/// procps' STIME: `HH:MM` within a day, `MonDD` within the year, else
/// the year.
fn stime(start: i64, now: i64) -> String {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let tm = local_tm(start);
    if now - start < 24 * 3600 {
        format!("{:02}:{:02}", tm.tm_hour, tm.tm_min)
    } else if tm.tm_year == local_tm(now).tm_year {
        let month = usize::try_from(tm.tm_mon).unwrap_or(0).min(11);
        format!("{}{:02}", MONTHS[month], tm.tm_mday)
    } else {
        format!("{}", tm.tm_year + 1900)
    }
}

/// procps' TIME: `[DD-]HH:MM:SS` of CPU time.
fn cpu_time(ms: u64) -> String {
    let s = ms / 1000;
    let (d, h, m, s) = (s / 86400, s / 3600 % 24, s / 60 % 60, s % 60);
    if d > 0 {
        format!("{d}-{h:02}:{m:02}:{s:02}")
    } else {
        format!("{h:02}:{m:02}:{s:02}")
    }
}

/// runc's `ps` table (`ps -ef`'s columns and widths) of guest processes.
pub fn ps_table(procs: &[ProcessInfo], passwd: &str, now: i64) -> String {
    let mut out = format!(
        "{:<8} {:>5} {:>5} {:>2} {:<5} {:<8} {:>8} {}\n",
        "UID", "PID", "PPID", "C", "STIME", "TTY", "TIME", "CMD"
    );
    for p in procs {
        // C: CPU use over the process's life, in percent, at most 99.
        let c = (p.cpu_time_ms * 100)
            .checked_div(p.elapsed_ms)
            .unwrap_or(0)
            .min(99);
        let start = i64::try_from(p.start_time_ms / 1000).unwrap_or(0);
        out.push_str(&format!(
            "{:<8} {:>5} {:>5} {:>2} {:<5} {:<8} {:>8} {}\n",
            user_name(passwd, p.uid),
            p.pid,
            p.ppid,
            c,
            stime(start, now),
            if p.tty.is_empty() { "?" } else { &p.tty },
            cpu_time(p.cpu_time_ms),
            p.cmd
        ));
    }
    out
}

/// `events`' options.
#[derive(clap::Args, Debug)]
pub struct EventsArgs {
    /// Print one stats event and exit.
    #[arg(long)]
    pub stats: bool,
    /// Interval between stats events (e.g. 5s, 500ms).
    #[arg(long, default_value = "5s")]
    pub interval: String,
    /// The container id.
    pub id: String,
}

/// A runc event as `runc events` prints it: `type`, `id`, `data`, in
/// that order (runc's `Event` struct).
#[derive(serde::Serialize)]
pub struct Event<'a> {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub id: &'a str,
    pub data: Stats,
}

/// runc's `types.Stats`, the parts a guest cgroup (v2) can fill; the
/// fields in runc's order, with runc's `omitempty`s.
#[derive(serde::Serialize)]
pub struct Stats {
    pub cpu: Cpu,
    pub cpuset: CpuSet,
    pub memory: Memory,
    pub pids: Pids,
    pub blkio: Blkio,
    pub hugetlb: serde_json::Map<String, Value>,
    pub intel_rdt: serde_json::Map<String, Value>,
    pub network_interfaces: Option<Vec<Value>>,
}

#[derive(serde::Serialize)]
pub struct Cpu {
    pub usage: CpuUsage,
    pub throttling: serde_json::Map<String, Value>,
}

#[derive(serde::Serialize)]
pub struct CpuUsage {
    #[serde(skip_serializing_if = "is_zero")]
    pub total: u64,
    pub kernel: u64,
    pub user: u64,
}

/// runc fills it from cgroup v1's cpuset controller only: zeros on v2.
#[derive(serde::Serialize, Default)]
pub struct CpuSet {
    pub cpu_exclusive: u64,
    pub mem_hardwall: u64,
    pub mem_exclusive: u64,
    pub memory_migrate: u64,
    pub memory_spread_page: u64,
    pub memory_spread_slab: u64,
    pub memory_pressure: u64,
    pub sched_load_balance: u64,
    pub sched_relax_domain_level: i64,
}

#[derive(serde::Serialize)]
pub struct Memory {
    pub usage: MemoryEntry,
}

#[derive(serde::Serialize)]
pub struct MemoryEntry {
    pub limit: u64,
    #[serde(skip_serializing_if = "is_zero")]
    pub usage: u64,
    pub failcnt: u64,
}

#[derive(serde::Serialize)]
pub struct Pids {
    #[serde(skip_serializing_if = "is_zero")]
    pub current: u64,
    #[serde(skip_serializing_if = "is_zero")]
    pub limit: u64,
}

#[derive(serde::Serialize)]
pub struct Blkio {
    #[serde(
        rename = "ioServiceBytesRecursive",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub io_service_bytes_recursive: Vec<BlkioEntry>,
}

#[derive(serde::Serialize)]
pub struct BlkioEntry {
    pub op: &'static str,
    pub value: u64,
}

#[allow(
    clippy::trivially_copy_pass_by_ref,
    reason = "serde's skip_serializing_if passes a reference"
)]
fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// A runc `stats` event (`{"type":"stats","id":...,"data":{...}}`).
/// A limit that is not set is `u64::MAX` for memory (runc on cgroup v2)
/// and left out for pids, as runc does.
pub fn stats_event<'a>(id: &'a str, s: &ContainerStats) -> Event<'a> {
    let io: Vec<BlkioEntry> = if s.io_read_bytes == 0 && s.io_write_bytes == 0 {
        Vec::new()
    } else {
        vec![
            BlkioEntry {
                op: "Read",
                value: s.io_read_bytes,
            },
            BlkioEntry {
                op: "Write",
                value: s.io_write_bytes,
            },
        ]
    };
    Event {
        kind: "stats",
        id,
        data: Stats {
            cpu: Cpu {
                usage: CpuUsage {
                    total: s.cpu_usage_usec * 1000,
                    kernel: s.cpu_system_usec * 1000,
                    user: s.cpu_user_usec * 1000,
                },
                throttling: serde_json::Map::new(),
            },
            cpuset: CpuSet::default(),
            memory: Memory {
                usage: MemoryEntry {
                    limit: s.memory_limit_bytes.unwrap_or(u64::MAX),
                    usage: s.memory_usage_bytes,
                    failcnt: 0,
                },
            },
            pids: Pids {
                current: s.pids_current,
                limit: s.pids_limit.unwrap_or(0),
            },
            blkio: Blkio {
                io_service_bytes_recursive: io,
            },
            hugetlb: serde_json::Map::new(),
            intel_rdt: serde_json::Map::new(),
            network_interfaces: None,
        },
    }
}

/// Parses `5s`, `500ms`, `1m` or a bare number of seconds.
pub fn parse_interval(text: &str) -> Result<Duration> {
    let t = text.trim();
    let (num, unit) = t
        .find(|c: char| c.is_ascii_alphabetic())
        .map_or((t, "s"), |i| t.split_at(i));
    let n: f64 = num
        .parse()
        .map_err(|_| anyhow::anyhow!("invalid interval {text:?}"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => anyhow::bail!("invalid interval {text:?}"),
    };
    if !(secs > 0.0 && secs.is_finite()) {
        anyhow::bail!("invalid interval {text:?}");
    }
    Ok(Duration::from_secs_f64(secs))
}

pub fn events(g: &Global, a: &EventsArgs) -> Result<i32> {
    let paths = paths(g, &a.id)?;
    let interval = parse_interval(&a.interval)?;
    loop {
        let s = ops::stats(&paths)?;
        println!("{}", serde_json::to_string(&stats_event(&a.id, &s))?);
        if a.stats {
            return Ok(0);
        }
        std::thread::sleep(interval);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals() {
        assert_eq!(parse_interval("5s").unwrap(), Duration::from_secs(5));
        assert_eq!(parse_interval("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_interval("2").unwrap(), Duration::from_secs(2));
        assert!(parse_interval("0s").is_err());
        assert!(parse_interval("5x").is_err());
    }

    #[test]
    fn list_table_is_aligned() {
        let s = RuncState {
            oci_version: "1.0.2".into(),
            id: "abc".into(),
            pid: 42,
            status: "running".into(),
            bundle: "/b".into(),
            rootfs: "/b/rootfs".into(),
            created: "2026-01-01T00:00:00Z".into(),
            owner: String::new(),
            annotations: Default::default(),
        };
        let t = table(&[s]);
        let lines: Vec<&str> = t.lines().collect();
        assert!(
            lines[0].starts_with("ID          PID         STATUS      BUNDLE"),
            "{t}"
        );
        assert!(
            lines[1].starts_with("abc         42          running     /b"),
            "{t}"
        );
        assert!(lines[1].ends_with("root"), "{t}");
    }

    #[test]
    fn ps_table_is_ps_ef() {
        let p = ProcessInfo {
            pid: 42,
            ppid: 1,
            uid: 0,
            start_time_ms: 1_000_000,
            cpu_time_ms: 3_725_000,
            elapsed_ms: 10_000_000,
            tty: String::new(),
            cmd: "sleep 100000".into(),
        };
        let t = ps_table(&[p], "root:x:0:0::/root:/bin/sh\n", 1_000);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(
            lines[0],
            "UID        PID  PPID  C STIME TTY          TIME CMD"
        );
        assert!(lines[1].starts_with("root        42     1 37 "), "{t}");
        assert!(lines[1].ends_with(" ?        01:02:05 sleep 100000"), "{t}");
        assert_eq!(user_name("", 1000), "1000");
        assert_eq!(user_name("averylongname:x:7:7::/:/bin/sh", 7), "7");
        assert_eq!(cpu_time(90_061_000), "1-01:01:01");
    }

    #[test]
    fn stats_event_shape() {
        let s = ContainerStats {
            cpu_usage_usec: 2,
            pids_current: 3,
            pids_limit: Some(10),
            ..Default::default()
        };
        let text = serde_json::to_string(&stats_event("c", &s)).unwrap();
        assert!(
            text.starts_with(r#"{"type":"stats","id":"c","data":{"cpu":{"usage":{"total":2000,"#),
            "{text}"
        );
        let e: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(e["data"]["cpu"]["usage"]["total"], 2000);
        assert_eq!(e["data"]["pids"]["limit"], 10);
    }
}
