//! Facts about the guest, for `Agent.GetGuestDetails`.

use std::io;

use nacre_protocol::agent::GetGuestDetailsResponse;
use nacre_protocol::PROTOCOL_VERSION;

use crate::sys;

/// A fact that could not be read.
#[derive(Debug, thiserror::Error)]
#[error("reading the guest's {what}: {source}")]
pub struct GuestInfoError {
    /// Which fact.
    pub what: &'static str,
    /// The system error.
    #[source]
    pub source: io::Error,
}

fn read<T>(what: &'static str, f: impl FnOnce() -> io::Result<T>) -> Result<T, GuestInfoError> {
    f().map_err(|source| GuestInfoError { what, source })
}

/// Gathers the details reported by `GetGuestDetails`.
pub fn guest_details() -> Result<GetGuestDetailsResponse, GuestInfoError> {
    let uname = read("kernel release (uname)", sys::uname)?;
    let mut details = GetGuestDetailsResponse::new();
    details.agent_version = env!("CARGO_PKG_VERSION").to_owned();
    details.protocol_version = PROTOCOL_VERSION;
    details.kernel_release = uname.release;
    details.hostname = uname.nodename;
    details.cpus = read("CPU count", sys::online_cpus)?;
    details.memory_total_bytes = read("memory size (sysinfo)", sys::memory_total_bytes)?;
    let uptime = read("uptime (CLOCK_BOOTTIME)", sys::boot_time)?;
    details.uptime_ms = u64::try_from(uptime.as_millis()).unwrap_or(u64::MAX);
    Ok(details)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_this_host() {
        let details = guest_details().unwrap();
        assert_eq!(details.agent_version, env!("CARGO_PKG_VERSION"));
        assert_eq!(details.protocol_version, PROTOCOL_VERSION);
        assert!(!details.kernel_release.is_empty());
        assert!(details.cpus >= 1);
        assert!(details.memory_total_bytes > 1 << 20);
        assert!(details.uptime_ms > 0);
    }
}
