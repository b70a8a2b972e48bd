//! The VMM's top-level error and the process exit codes.
//!
//! | code | meaning                                                         |
//! |------|-----------------------------------------------------------------|
//! | 0    | the guest shut down or reset, or `shutdown` came on the API     |
//! | 64   | bad configuration (vcpus, memory, paths, arguments)             |
//! | 65   | template unusable: corrupt, incomplete, other format or VMM     |
//! |      | version, other kernel or initrd (`--restore`)                   |
//! | 66   | kernel or initrd missing, unreadable or not a valid ELF; a      |
//! |      | shared directory missing or not a directory                     |
//! |      | (64 too: a `--net` tap descriptor not open or not a tap; `--net`|
//! |      | devices that do not match the template's at `--restore`)        |
//! | 69   | `/dev/kvm` unavailable (missing, no permission, no capability)  |
//! | 70   | VMM or guest failure (KVM internal error, guest kernel panic,   |
//! |      | device failure, ...)                                            |
//! | 128+N| stopped by signal N (SIGTERM: 143, SIGINT: 130)                 |

use crate::api::ApiServerError;
use crate::arch::x86_64::boot::BootError;
use crate::arch::x86_64::mptable::MptableError;
use crate::arch::x86_64::regs::RegsError;
use crate::config::ConfigError;
use crate::devices::virtio::fs::FsError;
use crate::devices::virtio::mmio::MmioError;
use crate::devices::virtio::net::TapError;
use crate::devices::virtio::vsock::VsockError;
use crate::devices::BusError;
use crate::events::ExitEvent;
use crate::memory::MemoryError;
use crate::snapshot::TemplateError;
use crate::vm::VmError;

/// Exit codes (sysexits.h values where one fits): defined by the
/// contract with the runtime, [`nacre_vmm_api::exit_code`].
pub use nacre_vmm_api::exit_code;

/// Everything that can stop the VMM from starting or running the VM.
#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    #[error("configuration: {0}")]
    Config(#[from] ConfigError),
    #[error("serial log {path}: {source}")]
    SerialLog {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Boot(#[from] BootError),
    #[error(transparent)]
    Vm(#[from] VmError),
    #[error(transparent)]
    Memory(#[from] MemoryError),
    #[error(transparent)]
    Mptable(#[from] MptableError),
    #[error("vCPU {id}: {source}")]
    Regs {
        id: u8,
        #[source]
        source: RegsError,
    },
    #[error("vCPU {id}: {what}: {source}")]
    Vcpu {
        id: u8,
        what: &'static str,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("{what}: {source}")]
    Kvm {
        what: &'static str,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("vsock device: {0}")]
    Vsock(#[from] VsockError),
    #[error("virtio-fs device {tag:?}: {source}")]
    Fs {
        tag: String,
        #[source]
        source: FsError,
    },
    #[error("--net device {index}: {source}")]
    Net {
        index: usize,
        #[source]
        source: TapError,
    },
    #[error("virtio-mmio transport: {0}")]
    Mmio(#[from] MmioError),
    #[error("device bus: {0}")]
    Bus(#[from] BusError),
    #[error(transparent)]
    Api(#[from] ApiServerError),
    #[error(transparent)]
    Template(#[from] TemplateError),
    #[error("restoring the template: {0}")]
    Restore(String),
    /// The restore's arguments do not fit the template (e.g. `--net`).
    #[error("restoring the template: {0}")]
    RestoreArgs(String),
    #[error("{what}: {source}")]
    Io {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
}

impl VmmError {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> i32 {
        use exit_code::*;
        match self {
            Self::Config(_) | Self::SerialLog { .. } | Self::Vsock(_) | Self::RestoreArgs(_) => {
                CONFIG
            }
            Self::Template(_) => TEMPLATE,
            Self::Fs { source, .. } => match source {
                FsError::Tag(_) | FsError::NotUtf8 { .. } => CONFIG,
                FsError::Path { .. } | FsError::NotADirectory { .. } => NO_INPUT,
            },
            Self::Net { source, .. } => match source {
                TapError::Setup { .. } => FAILURE,
                _ => CONFIG,
            },
            Self::Boot(e) => match e {
                BootError::KernelOpen { .. }
                | BootError::KernelElf { .. }
                | BootError::NotElf { .. }
                | BootError::InitrdOpen { .. } => NO_INPUT,
                BootError::InitrdTooBig { .. }
                | BootError::CmdlineTooLong { .. }
                | BootError::TooManyE820(_) => CONFIG,
                BootError::Memory(_) => FAILURE,
            },
            Self::Vm(VmError::KvmUnavailable(_) | VmError::MissingCap(_)) => KVM_UNAVAILABLE,
            Self::Mptable(MptableError::TooManyCpus(_)) => CONFIG,
            Self::Api(
                ApiServerError::Bind { .. }
                | ApiServerError::InUse(_)
                | ApiServerError::NotASocket(_),
            ) => CONFIG,
            _ => FAILURE,
        }
    }
}

/// The exit code for the way the VM stopped.
pub fn exit_code_for(event: &ExitEvent) -> i32 {
    match event {
        ExitEvent::GuestReset | ExitEvent::GuestShutdown | ExitEvent::ApiShutdown => exit_code::OK,
        ExitEvent::Signal(sig) => exit_code::SIGNAL_BASE + sig,
        ExitEvent::GuestPanic | ExitEvent::VcpuFailure { .. } | ExitEvent::DeviceFailure(_) => {
            exit_code::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn io(kind: std::io::ErrorKind) -> std::io::Error {
        std::io::Error::from(kind)
    }

    #[test]
    fn errors_map_to_documented_codes() {
        let cases: Vec<(VmmError, i32)> = vec![
            (ConfigError::Vcpus(0).into(), 64),
            (ConfigError::MemoryTooSmall(0).into(), 64),
            (
                BootError::KernelOpen {
                    path: PathBuf::from("/x/vmlinux"),
                    source: io(std::io::ErrorKind::NotFound),
                }
                .into(),
                66,
            ),
            (
                BootError::NotElf {
                    path: PathBuf::from("/x/vmlinux"),
                }
                .into(),
                66,
            ),
            (
                BootError::InitrdOpen {
                    path: PathBuf::from("/x/initrd"),
                    source: io(std::io::ErrorKind::PermissionDenied),
                }
                .into(),
                66,
            ),
            (
                BootError::CmdlineTooLong {
                    len: 3000,
                    max: 2047,
                }
                .into(),
                64,
            ),
            (
                VmmError::Fs {
                    tag: "nacre".into(),
                    source: FsError::NotADirectory {
                        path: PathBuf::from("/x/file"),
                    },
                },
                66,
            ),
            (
                VmError::KvmUnavailable(kvm_ioctls::Error::new(libc::ENOENT)).into(),
                69,
            ),
            (
                VmError::Kvm {
                    what: "KVM_CREATE_VM",
                    source: kvm_ioctls::Error::new(libc::ENOMEM),
                }
                .into(),
                70,
            ),
            (ApiServerError::InUse(PathBuf::from("/a")).into(), 64),
            (
                VmmError::Io {
                    what: "spawning a vCPU thread",
                    source: io(std::io::ErrorKind::Other),
                },
                70,
            ),
        ];
        for (err, code) in cases {
            assert_eq!(err.exit_code(), code, "{err}");
        }
    }

    #[test]
    fn messages_name_the_problem() {
        let e: VmmError = BootError::KernelOpen {
            path: PathBuf::from("/x/vmlinux"),
            source: std::io::Error::from_raw_os_error(libc::ENOENT),
        }
        .into();
        assert_eq!(
            e.to_string(),
            "kernel image /x/vmlinux: No such file or directory (os error 2)"
        );
        let e: VmmError = VmError::KvmUnavailable(kvm_ioctls::Error::new(libc::EACCES)).into();
        assert!(e.to_string().contains("/dev/kvm"));
    }

    #[test]
    fn exit_events_map_to_codes() {
        assert_eq!(exit_code_for(&ExitEvent::GuestReset), 0);
        assert_eq!(exit_code_for(&ExitEvent::ApiShutdown), 0);
        assert_eq!(exit_code_for(&ExitEvent::GuestPanic), 70);
        assert_eq!(exit_code_for(&ExitEvent::Signal(libc::SIGTERM)), 143);
        assert_eq!(
            exit_code_for(&ExitEvent::VcpuFailure {
                vcpu: 0,
                reason: String::new()
            }),
            70
        );
    }
}
