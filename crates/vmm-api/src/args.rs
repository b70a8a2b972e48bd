//! [`VmmArgs`]: every `nacre-vmm` option as one value, and its argv.

use std::ffi::OsString;
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use crate::net::NetArg;
use crate::share::SharedDir;

/// `--vcpus` unless given.
pub const DEFAULT_VCPUS: u8 = 1;
/// `--memory-mib` unless given.
pub const DEFAULT_MEMORY_MIB: u64 = 256;
/// `--vsock-cid` unless given.
pub const DEFAULT_VSOCK_CID: u64 = 3;
/// `--log-level` unless given.
pub const DEFAULT_LOG_LEVEL: &str = "info";
/// `--log-max-bytes` unless given.
pub const DEFAULT_LOG_MAX_BYTES: u64 = 1 << 20;
/// `--jail-uid` unless given (nobody).
pub const DEFAULT_JAIL_UID: u32 = 65534;
/// `--jail-gid` unless given (nogroup).
pub const DEFAULT_JAIL_GID: u32 = 65534;
/// The environment variable `--seccomp` falls back to.
pub const SECCOMP_ENV: &str = "NACRE_VMM_SECCOMP";

/// What the seccomp filter does with a system call that is not on the list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SeccompMode {
    /// Kill the VMM (the kernel logs the call).
    #[default]
    Enforce,
    /// Allow it, and have the kernel log it.
    Log,
    /// No filter.
    Off,
}

/// A `--seccomp` value that names no mode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a seccomp mode (enforce, log, off)")]
pub struct BadSeccompMode(pub String);

impl FromStr for SeccompMode {
    type Err = BadSeccompMode;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "enforce" => Ok(Self::Enforce),
            "log" => Ok(Self::Log),
            "off" => Ok(Self::Off),
            other => Err(BadSeccompMode(other.to_string())),
        }
    }
}

impl fmt::Display for SeccompMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Enforce => "enforce",
            Self::Log => "log",
            Self::Off => "off",
        })
    }
}

/// Every option of `nacre-vmm`, typed. [`VmmArgs::default`] is what the
/// binary assumes for an option not given; [`VmmArgs::to_args`] writes
/// only the options that differ from it (so `--restore`, which refuses
/// `--vcpus`, `--memory-mib` and `--cmdline`, gets none of them, and an
/// unset `--seccomp` still lets `NACRE_VMM_SECCOMP` decide).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmmArgs {
    /// `--kernel`: an uncompressed ELF vmlinux.
    pub kernel: Option<PathBuf>,
    /// `--initrd`.
    pub initrd: Option<PathBuf>,
    /// `--restore`: a template directory (made by the `snapshot` request).
    pub restore: Option<PathBuf>,
    /// `--cmdline`: appended to the VMM's kernel command line.
    pub cmdline: String,
    /// `--vcpus` (1-32).
    pub vcpus: u8,
    /// `--memory-mib`.
    pub memory_mib: u64,
    /// `--serial-log`: the guest console is appended here.
    pub serial_log: Option<PathBuf>,
    /// `--serial-stdout`.
    pub serial_stdout: bool,
    /// `--vsock-uds`: the host side of the hybrid vsock.
    pub vsock_uds: Option<PathBuf>,
    /// `--vsock-cid` (needs `vsock_uds`).
    pub vsock_cid: u64,
    /// `--shared-dir TAG=PATH[,cache=MODE]`, one per share.
    pub shared_dirs: Vec<SharedDir>,
    /// `--net`, one per device.
    pub nets: Vec<NetArg>,
    /// `--api-socket`: the control socket.
    pub api_socket: Option<PathBuf>,
    /// `--no-host-quirks`.
    pub no_host_quirks: bool,
    /// `--seccomp`.
    pub seccomp: SeccompMode,
    /// `--log-level`.
    pub log_level: String,
    /// `--log-max-bytes`.
    pub log_max_bytes: u64,
    /// `--owner-fd`: the read end of the owner's lifeline pipe.
    pub owner_fd: Option<i32>,
    /// `--jail`: the jail's root directory.
    pub jail: Option<PathBuf>,
    /// `--jail-uid` (needs `jail`).
    pub jail_uid: u32,
    /// `--jail-gid` (needs `jail`).
    pub jail_gid: u32,
}

impl Default for VmmArgs {
    fn default() -> Self {
        Self {
            kernel: None,
            initrd: None,
            restore: None,
            cmdline: String::new(),
            vcpus: DEFAULT_VCPUS,
            memory_mib: DEFAULT_MEMORY_MIB,
            serial_log: None,
            serial_stdout: false,
            vsock_uds: None,
            vsock_cid: DEFAULT_VSOCK_CID,
            shared_dirs: Vec::new(),
            nets: Vec::new(),
            api_socket: None,
            no_host_quirks: false,
            seccomp: SeccompMode::default(),
            log_level: DEFAULT_LOG_LEVEL.to_string(),
            log_max_bytes: DEFAULT_LOG_MAX_BYTES,
            owner_fd: None,
            jail: None,
            jail_uid: DEFAULT_JAIL_UID,
            jail_gid: DEFAULT_JAIL_GID,
        }
    }
}

impl VmmArgs {
    /// Boots `kernel` with `initrd`, every other option at its default.
    pub fn boot(kernel: impl Into<PathBuf>, initrd: impl Into<PathBuf>) -> Self {
        Self {
            kernel: Some(kernel.into()),
            initrd: Some(initrd.into()),
            ..Self::default()
        }
    }

    /// Restores `template` (made from `kernel` and `initrd`).
    pub fn restore(
        template: impl Into<PathBuf>,
        kernel: impl Into<PathBuf>,
        initrd: impl Into<PathBuf>,
    ) -> Self {
        Self {
            restore: Some(template.into()),
            ..Self::boot(kernel, initrd)
        }
    }

    /// The argv (without the program name) that gives `nacre-vmm` these
    /// options; options at their default are left out.
    pub fn to_args(&self) -> Vec<OsString> {
        let d = Self::default();
        let mut argv = Argv::default();
        argv.path("--kernel", &self.kernel);
        argv.path("--initrd", &self.initrd);
        argv.path("--restore", &self.restore);
        if self.cmdline != d.cmdline {
            argv.pair("--cmdline", &self.cmdline);
        }
        if self.vcpus != d.vcpus {
            argv.pair("--vcpus", self.vcpus.to_string());
        }
        if self.memory_mib != d.memory_mib {
            argv.pair("--memory-mib", self.memory_mib.to_string());
        }
        argv.path("--serial-log", &self.serial_log);
        argv.flag("--serial-stdout", self.serial_stdout);
        argv.path("--vsock-uds", &self.vsock_uds);
        if self.vsock_cid != d.vsock_cid {
            argv.pair("--vsock-cid", self.vsock_cid.to_string());
        }
        for dir in &self.shared_dirs {
            argv.pair("--shared-dir", dir.to_arg());
        }
        for net in &self.nets {
            argv.pair("--net", net.to_arg());
        }
        argv.path("--api-socket", &self.api_socket);
        argv.flag("--no-host-quirks", self.no_host_quirks);
        if self.seccomp != d.seccomp {
            argv.pair("--seccomp", self.seccomp.to_string());
        }
        if self.log_level != d.log_level {
            argv.pair("--log-level", &self.log_level);
        }
        if self.log_max_bytes != d.log_max_bytes {
            argv.pair("--log-max-bytes", self.log_max_bytes.to_string());
        }
        if let Some(fd) = self.owner_fd {
            argv.pair("--owner-fd", fd.to_string());
        }
        argv.path("--jail", &self.jail);
        if self.jail_uid != d.jail_uid {
            argv.pair("--jail-uid", self.jail_uid.to_string());
        }
        if self.jail_gid != d.jail_gid {
            argv.pair("--jail-gid", self.jail_gid.to_string());
        }
        argv.0
    }
}

#[derive(Default)]
struct Argv(Vec<OsString>);

impl Argv {
    fn pair(&mut self, name: &str, value: impl Into<OsString>) {
        self.0.push(name.into());
        self.0.push(value.into());
    }

    fn path(&mut self, name: &str, value: &Option<PathBuf>) {
        if let Some(path) = value {
            self.pair(name, path);
        }
    }

    fn flag(&mut self, name: &str, on: bool) {
        if on {
            self.0.push(name.into());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_write_nothing() {
        assert!(VmmArgs::default().to_args().is_empty());
        let args = VmmArgs::restore("/t", "/k", "/i").to_args();
        assert_eq!(
            args,
            ["--kernel", "/k", "--initrd", "/i", "--restore", "/t"]
                .map(OsString::from)
                .to_vec()
        );
    }

    #[test]
    fn seccomp_modes_parse_back() {
        for m in [SeccompMode::Enforce, SeccompMode::Log, SeccompMode::Off] {
            assert_eq!(m.to_string().parse::<SeccompMode>(), Ok(m));
        }
        assert!("strict".parse::<SeccompMode>().is_err());
    }
}
