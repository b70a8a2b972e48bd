//! pause, resume, update.

use std::io::Read;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use nacre_runtime::container::ops;
use serde_json::{json, Value};

use super::{paths, IdArg};
use crate::Global;

pub fn pause(g: &Global, a: &IdArg, pause: bool) -> Result<i32> {
    ops::set_paused(&paths(g, &a.id)?, pause)?;
    Ok(0)
}

/// `update`'s options (runc's).
#[derive(clap::Args, Debug)]
pub struct UpdateArgs {
    /// A JSON file (or - for stdin) holding an OCI linux.resources object.
    #[arg(short = 'r', long)]
    pub resources: Option<PathBuf>,
    /// Memory limit (bytes, or with k/m/g suffix).
    #[arg(short = 'm', long)]
    pub memory: Option<String>,
    /// Memory soft limit.
    #[arg(long)]
    pub memory_reservation: Option<String>,
    /// Memory plus swap limit (-1: unlimited).
    #[arg(long, allow_hyphen_values = true)]
    pub memory_swap: Option<String>,
    /// Accepted for compatibility (ignored).
    #[arg(long)]
    pub kernel_memory: Option<String>,
    /// Maximum number of processes (-1: unlimited).
    #[arg(long, allow_hyphen_values = true)]
    pub pids_limit: Option<i64>,
    /// CPU CFS quota in microseconds (-1: unlimited).
    #[arg(long, allow_hyphen_values = true)]
    pub cpu_quota: Option<i64>,
    /// CPU CFS period in microseconds.
    #[arg(long)]
    pub cpu_period: Option<u64>,
    /// CPU shares (relative weight).
    #[arg(long)]
    pub cpu_shares: Option<u64>,
    /// CPUs to run on (0-3, 0,1).
    #[arg(long)]
    pub cpuset_cpus: Option<String>,
    /// Memory nodes to use.
    #[arg(long)]
    pub cpuset_mems: Option<String>,
    /// Block IO weight (10 to 1000).
    #[arg(long)]
    pub blkio_weight: Option<u16>,
    /// The container id.
    pub id: String,
}

/// Parses `512`, `64k`, `256m`, `1g` (binary units, as runc), or `-1`.
pub fn parse_size(text: &str) -> Result<i64> {
    let t = text.trim().to_ascii_lowercase();
    if t == "-1" {
        return Ok(-1);
    }
    let t = t.strip_suffix('b').unwrap_or(&t);
    let (num, mult) = match t.chars().last() {
        Some('k') => (&t[..t.len() - 1], 1i64 << 10),
        Some('m') => (&t[..t.len() - 1], 1 << 20),
        Some('g') => (&t[..t.len() - 1], 1 << 30),
        Some('t') => (&t[..t.len() - 1], 1 << 40),
        _ => (t, 1),
    };
    let n: f64 = num
        .parse()
        .with_context(|| format!("invalid size {text:?}"))?;
    if n < 0.0 {
        bail!("invalid size {text:?}");
    }
    #[allow(clippy::cast_possible_truncation, reason = "sizes are far below 2^63")]
    Ok((n * mult as f64) as i64)
}

/// The `linux.resources` object `update` sends: the file's, with the flags
/// applied over it.
pub fn resources(a: &UpdateArgs) -> Result<Value> {
    let mut r = match &a.resources {
        Some(p) => {
            let mut text = String::new();
            if p.as_os_str() == "-" {
                std::io::stdin()
                    .read_to_string(&mut text)
                    .context("reading stdin")?;
            } else {
                text = std::fs::read_to_string(p)
                    .with_context(|| format!("reading {}", p.display()))?;
            }
            serde_json::from_str(&text).with_context(|| format!("parsing {}", p.display()))?
        }
        None => json!({}),
    };
    if !r.is_object() {
        bail!("resources must be a JSON object");
    }
    let mut set = |section: &str, key: &str, v: Value| {
        if !r[section].is_object() {
            r[section] = json!({});
        }
        r[section][key] = v;
    };
    if let Some(m) = &a.memory {
        set("memory", "limit", json!(parse_size(m)?));
    }
    if let Some(m) = &a.memory_reservation {
        set("memory", "reservation", json!(parse_size(m)?));
    }
    if let Some(m) = &a.memory_swap {
        set("memory", "swap", json!(parse_size(m)?));
    }
    if let Some(n) = a.pids_limit {
        set("pids", "limit", json!(n));
    }
    if let Some(n) = a.cpu_quota {
        set("cpu", "quota", json!(n));
    }
    if let Some(n) = a.cpu_period {
        set("cpu", "period", json!(n));
    }
    if let Some(n) = a.cpu_shares {
        set("cpu", "shares", json!(n));
    }
    if let Some(s) = &a.cpuset_cpus {
        set("cpu", "cpus", json!(s));
    }
    if let Some(s) = &a.cpuset_mems {
        set("cpu", "mems", json!(s));
    }
    if let Some(w) = a.blkio_weight {
        set("blockIO", "weight", json!(w));
    }
    Ok(r)
}

pub fn update(g: &Global, a: &UpdateArgs) -> Result<i32> {
    let r = resources(a)?;
    ops::update(&paths(g, &a.id)?, &r)?;
    Ok(0)
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        u: UpdateArgs,
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512").unwrap(), 512);
        assert_eq!(parse_size("64k").unwrap(), 65536);
        assert_eq!(parse_size("256M").unwrap(), 256 << 20);
        assert_eq!(parse_size("1g").unwrap(), 1 << 30);
        assert_eq!(parse_size("1.5k").unwrap(), 1536);
        assert_eq!(parse_size("-1").unwrap(), -1);
        assert!(parse_size("lots").is_err());
    }

    #[test]
    fn flags_become_resources() {
        let t = T::try_parse_from([
            "x",
            "--memory",
            "64m",
            "--pids-limit",
            "20",
            "--cpu-quota",
            "-1",
            "--cpu-period",
            "100000",
            "--cpuset-cpus",
            "0",
            "c1",
        ])
        .unwrap();
        let r = resources(&t.u).unwrap();
        assert_eq!(
            r,
            json!({"memory": {"limit": 64 << 20}, "pids": {"limit": 20},
                   "cpu": {"quota": -1, "period": 100000, "cpus": "0"}})
        );
        assert_eq!(t.u.id, "c1");
    }
}
