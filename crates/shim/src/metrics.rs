//! Container statistics in containerd's format: the cgroup v2 `Metrics`
//! message (the guest runs cgroup v2) wrapped in an `Any`.

use containerd_shim::protos::cgroups_v2::metrics::{
    CPUStat, MemoryEvents, MemoryStat, Metrics, PidsStat,
};
use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::protos::protobuf::Message;
use nacre_runtime::agent::ContainerStats;

use crate::error::ShimError;

/// The type URL containerd registers for cgroup v2 metrics.
pub const METRICS_V2_TYPE_URL: &str = "io.containerd.cgroups.v2.Metrics";

/// Converts the agent's statistics.
pub fn to_metrics(s: &ContainerStats) -> Metrics {
    Metrics {
        pids: Some(PidsStat {
            current: s.pids_current,
            limit: s.pids_limit.unwrap_or(0),
            ..Default::default()
        })
        .into(),
        cpu: Some(CPUStat {
            usage_usec: s.cpu_usage_usec,
            user_usec: s.cpu_user_usec,
            system_usec: s.cpu_system_usec,
            ..Default::default()
        })
        .into(),
        memory: Some(MemoryStat {
            usage: s.memory_usage_bytes,
            usage_limit: s.memory_limit_bytes.unwrap_or(u64::MAX),
            ..Default::default()
        })
        .into(),
        memory_events: Some(MemoryEvents {
            oom_kill: s.memory_oom_kill,
            ..Default::default()
        })
        .into(),
        ..Default::default()
    }
}

/// The statistics as containerd's `StatsResponse.stats`.
pub fn to_any(s: &ContainerStats) -> Result<Any, ShimError> {
    let value = to_metrics(s)
        .write_to_bytes()
        .map_err(|e| ShimError::Internal(format!("encoding metrics: {e}")))?;
    Ok(Any {
        type_url: METRICS_V2_TYPE_URL.to_string(),
        value,
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_round_trip() {
        let s = ContainerStats {
            cpu_usage_usec: 10,
            memory_usage_bytes: 4096,
            pids_current: 2,
            memory_oom_kill: 3,
            ..Default::default()
        };
        let any = to_any(&s).unwrap();
        assert_eq!(any.type_url, METRICS_V2_TYPE_URL);
        let m = Metrics::parse_from_bytes(&any.value).unwrap();
        assert_eq!(m.cpu.usage_usec, 10);
        assert_eq!(m.memory.usage, 4096);
        assert_eq!(m.pids.current, 2);
        assert_eq!(m.memory_events.oom_kill, 3);
    }
}
