//! What the host offers a VM: KVM, and whether guest kernel mode runs in
//! hardware or is emulated (the PVM module without VT-x/AMD-V, where a boot
//! takes tens of seconds instead of well under one).

use std::fs::OpenOptions;
use std::os::fd::AsRawFd;
use std::path::Path;

/// The KVM API version every supported host reports.
pub const KVM_API_VERSION: i32 = 12;
/// `KVM_GET_API_VERSION` ioctl number (`_IO(0xAE, 0x00)`).
const KVM_GET_API_VERSION: libc::c_ulong = 0xAE00;

/// How guest kernel code runs on this host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelMode {
    /// Hardware virtualization (VT-x / AMD-V).
    Hardware,
    /// Guest kernel mode interpreted by the host (the `kvm_pvm` module).
    Emulated,
}

/// Errors probing KVM.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("/dev/kvm: {0}")]
    Open(#[source] std::io::Error),
    #[error("/dev/kvm: KVM_GET_API_VERSION: {0}")]
    Ioctl(#[source] std::io::Error),
    #[error("/dev/kvm: API version {0}, nacre needs {KVM_API_VERSION}")]
    Version(i32),
}

/// Opens `/dev/kvm` read-write and checks its API version.
pub fn check_kvm() -> Result<i32, HostError> {
    let kvm = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .map_err(HostError::Open)?;
    // SAFETY: KVM_GET_API_VERSION takes no argument and only returns an int;
    // the descriptor is a valid open /dev/kvm for the duration of the call.
    let version = unsafe { libc::ioctl(kvm.as_raw_fd(), KVM_GET_API_VERSION, 0) };
    if version < 0 {
        return Err(HostError::Ioctl(std::io::Error::last_os_error()));
    }
    if version != KVM_API_VERSION {
        return Err(HostError::Version(version));
    }
    Ok(version)
}

/// How this host runs guest kernel code.
pub fn kernel_mode() -> KernelMode {
    kernel_mode_from(Path::new("/sys/module"))
}

fn kernel_mode_from(sys_module: &Path) -> KernelMode {
    if sys_module.join("kvm_pvm").exists() {
        KernelMode::Emulated
    } else {
        KernelMode::Hardware
    }
}

/// The host's kernel release (`uname -r`).
pub fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pvm_module_means_emulated() {
        let dir = std::env::temp_dir().join(format!("nacre-host-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("kvm")).unwrap();
        assert_eq!(kernel_mode_from(&dir), KernelMode::Hardware);
        std::fs::create_dir_all(dir.join("kvm_pvm")).unwrap();
        assert_eq!(kernel_mode_from(&dir), KernelMode::Emulated);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn host_release_is_known() {
        assert_ne!(kernel_release(), "unknown");
    }
}
