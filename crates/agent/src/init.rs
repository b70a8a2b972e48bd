//! The duties of PID 1: the file systems every guest needs, PATH, the host
//! name. Only run when the agent is the guest's init.

use std::io;
use std::path::Path;

use crate::sys;

/// One file system to mount.
#[derive(Debug, Clone, Copy)]
pub struct Mount {
    /// The mount source (informational for virtual file systems).
    pub source: &'static str,
    /// Where to mount it; created if missing.
    pub target: &'static str,
    /// File system type.
    pub fstype: &'static str,
    /// MS_* flags.
    pub flags: libc::c_ulong,
    /// File-system-specific options.
    pub data: Option<&'static str>,
    /// Whether the agent cannot work without it (otherwise a failure is
    /// logged, e.g. a kernel built without cgroups).
    pub required: bool,
}

const NOSUID_NODEV_NOEXEC: libc::c_ulong = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;

/// The guest's base file systems, in mount order (parents first).
pub const MOUNTS: &[Mount] = &[
    Mount {
        source: "proc",
        target: "/proc",
        fstype: "proc",
        flags: NOSUID_NODEV_NOEXEC,
        data: None,
        required: true,
    },
    Mount {
        source: "sysfs",
        target: "/sys",
        fstype: "sysfs",
        flags: NOSUID_NODEV_NOEXEC,
        data: None,
        required: true,
    },
    Mount {
        source: "devtmpfs",
        target: "/dev",
        fstype: "devtmpfs",
        flags: libc::MS_NOSUID,
        data: Some("mode=0755"),
        required: true,
    },
    Mount {
        source: "devpts",
        target: "/dev/pts",
        fstype: "devpts",
        flags: libc::MS_NOSUID | libc::MS_NOEXEC,
        data: Some("newinstance,ptmxmode=0666,mode=0620"),
        required: false,
    },
    Mount {
        source: "shm",
        target: "/dev/shm",
        fstype: "tmpfs",
        flags: NOSUID_NODEV_NOEXEC,
        data: Some("mode=1777"),
        required: false,
    },
    Mount {
        source: "tmpfs",
        target: "/run",
        fstype: "tmpfs",
        flags: libc::MS_NOSUID | libc::MS_NODEV,
        data: Some("mode=0755"),
        required: true,
    },
    Mount {
        source: "cgroup2",
        target: "/sys/fs/cgroup",
        fstype: "cgroup2",
        flags: NOSUID_NODEV_NOEXEC,
        data: None,
        required: false,
    },
    Mount {
        source: "tmpfs",
        target: "/tmp",
        fstype: "tmpfs",
        flags: libc::MS_NOSUID | libc::MS_NODEV,
        data: Some("mode=1777"),
        required: false,
    },
];

/// The PATH the agent and the processes it starts get.
pub const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// A mount that failed.
#[derive(Debug, thiserror::Error)]
#[error("mounting {fstype} on {target}: {source}")]
pub struct MountError {
    /// File system type.
    pub fstype: &'static str,
    /// Mount point.
    pub target: &'static str,
    /// The system error.
    #[source]
    pub source: io::Error,
}

/// Mounts one file system. Already mounted (EBUSY) counts as success.
pub fn mount(m: &Mount) -> Result<(), MountError> {
    let err = |source| MountError {
        fstype: m.fstype,
        target: m.target,
        source,
    };
    let target = Path::new(m.target);
    if !target.exists() {
        std::fs::create_dir_all(target).map_err(err)?;
    }
    match sys::mount(m.source, target, m.fstype, m.flags, m.data) {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => Ok(()),
        Err(e) => Err(err(e)),
    }
}

/// Mounts [`MOUNTS`]; fails on the first required one that fails.
pub fn mount_all() -> Result<(), MountError> {
    for m in MOUNTS {
        match mount(m) {
            Ok(()) => tracing::debug!("mounted {} on {}", m.fstype, m.target),
            Err(e) if m.required => return Err(e),
            Err(e) => tracing::warn!("{e}"),
        }
    }
    Ok(())
}

/// Sets PATH for the agent and its children. Call it before the agent
/// starts other threads (the environment is not thread-safe).
pub fn set_path() {
    std::env::set_var("PATH", PATH);
}

/// Mounts the host's shared directory (virtio-fs `tag`) at
/// [`crate::config::SHARED_DIR`], with the files the host allows (a
/// container's rootfs, not its volumes) mapped from the host's page cache
/// through the device's DAX window (`dax=inode`); the others, or all where
/// the device has no window, read into the guest's own page cache.
pub fn mount_shared(tag: &str) -> Result<(), MountError> {
    let target = Path::new(crate::config::SHARED_DIR);
    let err = |source| MountError {
        fstype: "virtiofs",
        target: crate::config::SHARED_DIR,
        source,
    };
    std::fs::create_dir_all(target).map_err(err)?;
    match sys::mount(tag, target, "virtiofs", 0, Some("dax=inode")) {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            tracing::info!("virtio-fs {tag}: no DAX window ({e}), mounting without");
            sys::mount(tag, target, "virtiofs", 0, None).map_err(err)
        }
        Err(e) => Err(err(e)),
    }
}

/// The PID 1 duties that follow reading the settings: PATH, host name,
/// the shared directory (fatal only when the command line asks for it).
/// (Mounting comes first: the settings are read from /proc/cmdline.)
pub fn setup(hostname: Option<&str>, shared_tag: Option<&str>) -> Result<(), InitError> {
    set_path();
    if let Some(tag) = shared_tag {
        mount_shared(tag)?;
        tracing::info!("mounted virtio-fs {tag} on {}", crate::config::SHARED_DIR);
    }
    if let Some(name) = hostname {
        sys::set_hostname(name).map_err(|source| InitError::Hostname {
            name: name.to_owned(),
            source,
        })?;
    }
    Ok(())
}

/// A PID 1 setup step failed.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    /// A required file system could not be mounted.
    #[error(transparent)]
    Mount(#[from] MountError),
    /// sethostname failed.
    #[error("setting the host name to {name:?}: {source}")]
    Hostname {
        /// The requested name.
        name: String,
        /// The system error.
        #[source]
        source: io::Error,
    },
}
