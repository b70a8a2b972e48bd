//! state, list, ps, events.

use std::time::Duration;

use anyhow::Result;
use nacre_runtime::agent::ContainerStats;
use nacre_runtime::container::{ops, RuncState};
use serde_json::{json, Value};

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
    let widths: Vec<usize> = (0..6)
        .map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0))
        .collect();
    rows.iter()
        .map(|r| {
            let cells: Vec<String> = r
                .iter()
                .zip(&widths)
                .map(|(cell, w)| format!("{cell:<w$}"))
                .collect();
            cells.join("   ").trim_end().to_string() + "\n"
        })
        .collect()
}

pub fn list(g: &Global, a: &ListArgs) -> Result<i32> {
    let states: Vec<RuncState> = ops::list(&std::path::absolute(&g.root)?)
        .iter()
        .map(|s| s.to_runc())
        .collect();
    if a.quiet {
        for s in &states {
            println!("{}", s.id);
        }
    } else if a.format == Format::Json {
        println!("{}", serde_json::to_string(&states)?);
    } else {
        print!("{}", table(&states));
    }
    Ok(0)
}

/// `ps`'s options.
#[derive(clap::Args, Debug)]
pub struct PsArgs {
    #[arg(short = 'f', long, value_enum, default_value = "table")]
    pub format: Format,
    /// The container id.
    pub id: String,
    /// Accepted for compatibility (ps options).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub ps_args: Vec<String>,
}

pub fn ps(g: &Global, a: &PsArgs) -> Result<i32> {
    let pids = ops::processes(&paths(g, &a.id)?)?;
    match a.format {
        Format::Json => println!("{}", serde_json::to_string(&pids)?),
        Format::Table => {
            println!("PID");
            for p in pids {
                println!("{p}");
            }
        }
    }
    Ok(0)
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

/// A runc `stats` event.
pub fn stats_event(id: &str, s: &ContainerStats) -> Value {
    json!({
        "type": "stats",
        "id": id,
        "data": {
            "cpu": {"usage": {
                "total": s.cpu_usage_usec * 1000,
                "user": s.cpu_user_usec * 1000,
                "kernel": s.cpu_system_usec * 1000,
            }},
            "memory": {"usage": {"usage": s.memory_usage_bytes, "limit": s.memory_limit_bytes.unwrap_or(0)}},
            "pids": {"current": s.pids_current, "limit": s.pids_limit.unwrap_or(0)},
            "blkio": {"ioServiceBytesRecursive": [
                {"op": "Read", "value": s.io_read_bytes},
                {"op": "Write", "value": s.io_write_bytes},
            ]},
        }
    })
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
        println!("{}", stats_event(&a.id, &s));
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
        assert!(lines[0].starts_with("ID    PID   STATUS"), "{t}");
        assert!(lines[1].starts_with("abc   42    running"), "{t}");
        assert!(lines[1].ends_with("root"), "{t}");
    }

    #[test]
    fn stats_event_shape() {
        let s = ContainerStats {
            cpu_usage_usec: 2,
            pids_current: 3,
            pids_limit: Some(10),
            ..Default::default()
        };
        let e = stats_event("c", &s);
        assert_eq!(e["type"], "stats");
        assert_eq!(e["data"]["cpu"]["usage"]["total"], 2000);
        assert_eq!(e["data"]["pids"]["limit"], 10);
    }
}
