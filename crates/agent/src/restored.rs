//! `Agent.Restored`: what the agent of a VM restored from a template does
//! to stop being a copy of the template's guest.
//!
//! Every VM restored from one template resumes with the same kernel RNG
//! state, the clock of the moment the template was taken, the template's
//! host name and no virtio-fs share mounted. The host sends fresh entropy,
//! the time, the new host name and the share's tag.

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::os::fd::AsRawFd;

use crate::sys;

/// Least entropy accepted from the host, in bytes.
pub const MIN_ENTROPY: usize = 32;
/// Most entropy accepted in one request, in bytes.
pub const MAX_ENTROPY: usize = 4096;

/// `_IOW('R', 0x03, int[2])`: add entropy to the input pool, credited.
const RNDADDENTROPY: libc::c_ulong = 0x4008_5203;
/// `_IO('R', 0x07)`: reseed the kernel's CRNG from the input pool now.
const RNDRESEEDCRNG: libc::c_ulong = 0x5207;

/// What the host asked for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Identity {
    pub hostname: String,
    pub sandbox_id: String,
    pub entropy: Vec<u8>,
    pub unix_seconds: i64,
    pub nanos: u32,
    pub shared_tag: String,
}

/// Why `Restored` failed.
#[derive(Debug, thiserror::Error)]
pub enum RestoredError {
    #[error("entropy must be {MIN_ENTROPY} to {MAX_ENTROPY} bytes, got {0}")]
    Entropy(usize),
    #[error("nanos {0} is not below 10^9")]
    Nanos(u32),
    #[error("reseeding the kernel RNG: {0}")]
    Rng(#[source] io::Error),
    #[error("setting the clock: {0}")]
    Clock(#[source] io::Error),
    #[error("setting the host name to {name:?}: {source}")]
    Hostname {
        name: String,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Mount(#[from] crate::init::MountError),
}

impl Identity {
    /// Checks the request before anything changes.
    pub fn validate(&self) -> Result<(), RestoredError> {
        if !(MIN_ENTROPY..=MAX_ENTROPY).contains(&self.entropy.len()) {
            return Err(RestoredError::Entropy(self.entropy.len()));
        }
        if self.nanos >= 1_000_000_000 {
            return Err(RestoredError::Nanos(self.nanos));
        }
        Ok(())
    }

    /// Applies the identity to this guest (PID 1 in a VM).
    pub fn apply(&self) -> Result<(), RestoredError> {
        self.validate()?;
        reseed(&self.entropy).map_err(RestoredError::Rng)?;
        sys::set_realtime(self.unix_seconds, self.nanos).map_err(RestoredError::Clock)?;
        if !self.hostname.is_empty() {
            sys::set_hostname(&self.hostname).map_err(|source| RestoredError::Hostname {
                name: self.hostname.clone(),
                source,
            })?;
        }
        if !self.shared_tag.is_empty() {
            crate::init::mount_shared(&self.shared_tag)?;
        }
        tracing::info!(
            sandbox = %self.sandbox_id,
            hostname = %self.hostname,
            share = %self.shared_tag,
            "restored from a template: new identity"
        );
        Ok(())
    }
}

/// Mixes `entropy` into the kernel's input pool and reseeds the CRNG, so
/// that the next random bytes differ from every other copy of this guest.
/// Without CAP_SYS_ADMIN (not PID 1) the bytes are only written to
/// /dev/urandom, which mixes them in without a reseed.
fn reseed(entropy: &[u8]) -> io::Result<()> {
    let mut urandom = OpenOptions::new().write(true).open("/dev/urandom")?;
    // struct rand_pool_info { int entropy_count; int buf_size; __u32 buf[]; }
    let mut info = Vec::with_capacity(8 + entropy.len());
    let bits = i32::try_from(entropy.len() * 8).unwrap_or(i32::MAX);
    let len = i32::try_from(entropy.len()).unwrap_or(i32::MAX);
    info.extend_from_slice(&bits.to_ne_bytes());
    info.extend_from_slice(&len.to_ne_bytes());
    info.extend_from_slice(entropy);
    // Keep the buffer a whole number of u32 words, as the kernel reads it.
    info.resize(info.len().div_ceil(4) * 4, 0);
    // SAFETY: `info` is a valid rand_pool_info of `entropy.len()` bytes of
    // payload that outlives the call; the kernel only reads it.
    let added = unsafe { libc::ioctl(urandom.as_raw_fd(), RNDADDENTROPY, info.as_ptr()) };
    if added != 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EPERM) {
            return Err(e);
        }
        return urandom.write_all(entropy);
    }
    // SAFETY: RNDRESEEDCRNG takes no argument.
    if unsafe { libc::ioctl(urandom.as_raw_fd(), RNDRESEEDCRNG) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_names_the_problem() {
        let mut id = Identity {
            entropy: vec![1; 8],
            ..Identity::default()
        };
        assert_eq!(
            id.validate().err().map(|e| e.to_string()),
            Some("entropy must be 32 to 4096 bytes, got 8".into())
        );
        id.entropy = vec![1; 32];
        assert!(id.validate().is_ok());
        id.nanos = 1_000_000_000;
        assert!(matches!(id.validate(), Err(RestoredError::Nanos(_))));
    }

    #[test]
    fn reseed_works_or_falls_back() {
        // As root the ioctls run; otherwise the bytes are written.
        assert!(reseed(&[7u8; 32]).is_ok());
    }
}
