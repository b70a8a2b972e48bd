//! The configuration of one VM, validated before anything is created.

use std::path::PathBuf;

use crate::arch::x86_64::mptable::MAX_VCPUS;
use crate::devices::virtio::fs::{self, SharedDir, SharedDirError};
use crate::devices::virtio::net::{self, NetConfig, NetConfigError};

/// The smallest guest that can hold a kernel at 16 MiB and an initrd.
pub const MIN_MEMORY_MIB: u64 = 32;
/// The lowest CID a guest may have (0-2 are the hypervisor and the host).
pub const MIN_GUEST_CID: u64 = 3;
/// At most this many shared directories (one virtio-mmio slot each).
pub const MAX_SHARED_DIRS: usize = 8;
/// At most this many network devices.
pub const MAX_NETS: usize = 4;

/// The hybrid vsock device: guest CID and the host-side Unix socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VsockConfig {
    pub cid: u64,
    pub uds_path: PathBuf,
}

/// Everything that describes one VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmConfig {
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    /// Extra kernel arguments, appended after the VMM's own.
    pub cmdline_extra: String,
    pub vcpus: u8,
    pub memory_mib: u64,
    pub serial_log: Option<PathBuf>,
    pub serial_stdout: bool,
    pub vsock: Option<VsockConfig>,
    pub api_socket: Option<PathBuf>,
    /// Host directories shared with the guest, one virtio-fs device each,
    /// after the vsock device.
    pub shared_dirs: Vec<SharedDir>,
    /// virtio-net devices on taps, after the virtio-fs devices.
    pub nets: Vec<NetConfig>,
    /// Add the PVM command-line quirks when the host is a PVM host.
    pub host_quirks: bool,
}

impl VmConfig {
    /// A configuration with defaults: 1 vCPU, 256 MiB, no devices but the
    /// console, host quirks on.
    pub fn new(kernel: PathBuf) -> Self {
        Self {
            kernel,
            initrd: None,
            cmdline_extra: String::new(),
            vcpus: 1,
            memory_mib: 256,
            serial_log: None,
            serial_stdout: false,
            vsock: None,
            api_socket: None,
            shared_dirs: Vec::new(),
            nets: Vec::new(),
            host_quirks: true,
        }
    }

    /// The guest memory size in bytes.
    pub fn memory_bytes(&self) -> u64 {
        self.memory_mib << 20
    }

    /// Checks the values, and the memory size against the host's
    /// `host_memory_bytes` when known.
    pub fn validate(&self, host_memory_bytes: Option<u64>) -> Result<(), ConfigError> {
        if self.vcpus == 0 || self.vcpus > MAX_VCPUS {
            return Err(ConfigError::Vcpus(self.vcpus));
        }
        if self.memory_mib < MIN_MEMORY_MIB {
            return Err(ConfigError::MemoryTooSmall(self.memory_mib));
        }
        // 1 TiB is far beyond anything sensible and keeps shifts in range.
        if self.memory_mib > (1 << 20) {
            return Err(ConfigError::MemoryTooLarge {
                mib: self.memory_mib,
                host_mib: host_memory_bytes.map(|b| b >> 20),
            });
        }
        if let Some(host) = host_memory_bytes {
            if self.memory_bytes() > host {
                return Err(ConfigError::MemoryTooLarge {
                    mib: self.memory_mib,
                    host_mib: Some(host >> 20),
                });
            }
        }
        if let Some(vsock) = &self.vsock {
            if vsock.cid < MIN_GUEST_CID || vsock.cid >= u64::from(u32::MAX) {
                return Err(ConfigError::VsockCid(vsock.cid));
            }
            if vsock.uds_path.as_os_str().is_empty() {
                return Err(ConfigError::EmptyPath("vsock UDS"));
            }
        }
        if self
            .api_socket
            .as_ref()
            .is_some_and(|p| p.as_os_str().is_empty())
        {
            return Err(ConfigError::EmptyPath("api socket"));
        }
        if self.vsock.is_some()
            && self.vsock.as_ref().map(|v| &v.uds_path) == self.api_socket.as_ref()
        {
            return Err(ConfigError::SamePath);
        }
        if self.shared_dirs.len() > MAX_SHARED_DIRS {
            return Err(ConfigError::TooManySharedDirs(self.shared_dirs.len()));
        }
        fs::validate_all(&self.shared_dirs)?;
        if self.nets.len() > MAX_NETS {
            return Err(ConfigError::TooManyNets(self.nets.len()));
        }
        net::validate_all(&self.nets)?;
        Ok(())
    }
}

/// A configuration that cannot work.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("vcpus must be between 1 and {MAX_VCPUS}, got {0}")]
    Vcpus(u8),
    #[error("memory must be at least {MIN_MEMORY_MIB} MiB, got {0} MiB")]
    MemoryTooSmall(u64),
    #[error("memory of {mib} MiB is more than the host has{}", host_mib.map(|h| format!(" ({h} MiB)")).unwrap_or_default())]
    MemoryTooLarge { mib: u64, host_mib: Option<u64> },
    #[error("vsock CID {0} is reserved or out of range (3..4294967295)")]
    VsockCid(u64),
    #[error("{0} path is empty")]
    EmptyPath(&'static str),
    #[error("the api socket and the vsock UDS must be different paths")]
    SamePath,
    #[error("--shared-dir {0}")]
    SharedDir(#[from] SharedDirError),
    #[error("at most {MAX_SHARED_DIRS} shared directories, got {0}")]
    TooManySharedDirs(usize),
    #[error("--net {0}")]
    Net(#[from] NetConfigError),
    #[error("at most {MAX_NETS} network devices, got {0}")]
    TooManyNets(usize),
}

/// The host's total memory, from /proc/meminfo.
/// Read once (the jail hides /proc; [`crate::jail::enter`] asks first).
pub fn host_memory_bytes() -> Option<u64> {
    static TOTAL: std::sync::OnceLock<Option<u64>> = std::sync::OnceLock::new();
    *TOTAL.get_or_init(|| {
        let text = std::fs::read_to_string("/proc/meminfo").ok()?;
        parse_mem_total(&text)
    })
}

fn parse_mem_total(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> VmConfig {
        VmConfig::new(PathBuf::from("/k"))
    }

    #[test]
    fn defaults_are_valid() {
        assert_eq!(cfg().validate(Some(1 << 34)), Ok(()));
        assert_eq!(cfg().memory_bytes(), 256 << 20);
    }

    #[test]
    fn bad_values_rejected() {
        let mut c = cfg();
        c.vcpus = 0;
        assert_eq!(c.validate(None), Err(ConfigError::Vcpus(0)));
        c.vcpus = MAX_VCPUS + 1;
        assert!(c.validate(None).is_err());
        let mut c = cfg();
        c.memory_mib = 0;
        assert_eq!(c.validate(None), Err(ConfigError::MemoryTooSmall(0)));
        c.memory_mib = 4096;
        assert!(matches!(
            c.validate(Some(1 << 30)),
            Err(ConfigError::MemoryTooLarge {
                mib: 4096,
                host_mib: Some(1024)
            })
        ));
        let mut c = cfg();
        c.vsock = Some(VsockConfig {
            cid: 2,
            uds_path: "/v".into(),
        });
        assert_eq!(c.validate(None), Err(ConfigError::VsockCid(2)));
        let mut c = cfg();
        c.vsock = Some(VsockConfig {
            cid: 3,
            uds_path: "/s".into(),
        });
        c.api_socket = Some("/s".into());
        assert_eq!(c.validate(None), Err(ConfigError::SamePath));
    }

    #[test]
    fn shared_dirs_checked() {
        let dir = |t: &str| SharedDir {
            tag: t.into(),
            path: "/tmp".into(),
            cache: fs::CacheMode::Auto,
        };
        let mut c = cfg();
        c.shared_dirs = vec![dir("a"), dir("b")];
        assert_eq!(c.validate(None), Ok(()));
        c.shared_dirs.push(dir("a"));
        assert_eq!(
            c.validate(None),
            Err(ConfigError::SharedDir(SharedDirError::DuplicateTag(
                "a".into()
            )))
        );
        c.shared_dirs = vec![dir("")];
        assert!(matches!(
            c.validate(None),
            Err(ConfigError::SharedDir(SharedDirError::EmptyTag(_)))
        ));
        c.shared_dirs = (0..=MAX_SHARED_DIRS).map(|i| dir(&i.to_string())).collect();
        assert_eq!(
            c.validate(None),
            Err(ConfigError::TooManySharedDirs(MAX_SHARED_DIRS + 1))
        );
    }

    #[test]
    fn meminfo_parsing() {
        let text = "MemTotal:       24596112 kB\nMemFree:         1234 kB\n";
        assert_eq!(parse_mem_total(text), Some(24_596_112 * 1024));
        assert_eq!(parse_mem_total("nothing"), None);
    }
}
