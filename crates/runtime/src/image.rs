//! Where the host finds the guest image and the VMM binary.
//!
//! Lookup order, first hit wins: an explicit value, the environment
//! (`NACRE_KERNEL`, `NACRE_INITRD`, `NACRE_VMM`), then the installed
//! locations (`/usr/local/share/nacre`, `/usr/local/bin`), then, for the
//! VMM, the directory of the running executable and `PATH`.

use std::path::{Path, PathBuf};

/// Installed location of the guest kernel.
pub const DEFAULT_KERNEL: &str = "/usr/local/share/nacre/vmlinux";
/// Installed location of the guest initrd.
pub const DEFAULT_INITRD: &str = "/usr/local/share/nacre/initrd.cpio";
/// Name of the VMM binary.
pub const VMM_BINARY: &str = "nacre-vmm";

/// A guest kernel and initrd that boot together.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct GuestImage {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
}

/// Errors locating the guest image or the VMM.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("guest {what} {path} not found (build it with `make guest`, or set {env})")]
    Missing {
        what: &'static str,
        path: PathBuf,
        env: &'static str,
    },
    #[error(
        "{VMM_BINARY} not found: set NACRE_VMM, install it in /usr/local/bin or put it on PATH"
    )]
    NoVmm,
}

impl GuestImage {
    /// Resolves the guest image from the environment or the installed paths,
    /// and checks that both files exist.
    pub fn locate() -> Result<Self, ImageError> {
        Self::locate_with(None, None)
    }

    /// Resolves each file from the explicit value when given, else the
    /// environment, else the installed path, and checks that both exist.
    pub fn locate_with(
        kernel: Option<PathBuf>,
        initrd: Option<PathBuf>,
    ) -> Result<Self, ImageError> {
        let kernel = kernel
            .or_else(|| env_path("NACRE_KERNEL"))
            .unwrap_or_else(|| DEFAULT_KERNEL.into());
        let initrd = initrd
            .or_else(|| env_path("NACRE_INITRD"))
            .unwrap_or_else(|| DEFAULT_INITRD.into());
        Self::checked(kernel, initrd)
    }

    /// Uses the given files, checking that both exist.
    pub fn checked(kernel: PathBuf, initrd: PathBuf) -> Result<Self, ImageError> {
        if !kernel.is_file() {
            return Err(ImageError::Missing {
                what: "kernel",
                path: kernel,
                env: "NACRE_KERNEL",
            });
        }
        if !initrd.is_file() {
            return Err(ImageError::Missing {
                what: "initrd",
                path: initrd,
                env: "NACRE_INITRD",
            });
        }
        Ok(Self { kernel, initrd })
    }
}

/// Finds the `nacre-vmm` binary.
pub fn locate_vmm() -> Result<PathBuf, ImageError> {
    if let Some(p) = env_path("NACRE_VMM") {
        return Ok(p);
    }
    let beside_exe = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|d| d.join(VMM_BINARY)));
    // Test binaries live in target/<profile>/deps; the VMM one level up.
    let beside_deps = std::env::current_exe().ok().and_then(|exe| {
        exe.parent()
            .and_then(Path::parent)
            .map(|d| d.join(VMM_BINARY))
    });
    let installed = Some(PathBuf::from("/usr/local/bin").join(VMM_BINARY));
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(VMM_BINARY))
            .find(|p| p.is_file())
    });
    [beside_exe, beside_deps, installed, on_path]
        .into_iter()
        .flatten()
        .find(|p| p.is_file())
        .ok_or(ImageError::NoVmm)
}

fn env_path(name: &str) -> Option<PathBuf> {
    std::env::var_os(name)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_kernel_names_path_and_env() {
        let err = GuestImage::checked("/nonexistent/vmlinux".into(), "/etc/hostname".into())
            .unwrap_err()
            .to_string();
        assert!(err.contains("/nonexistent/vmlinux"), "{err}");
        assert!(err.contains("NACRE_KERNEL"), "{err}");
    }

    #[test]
    fn missing_initrd_names_path() {
        let dir = std::env::temp_dir();
        let kernel = dir.join(format!("nacre-image-test-{}", std::process::id()));
        std::fs::write(&kernel, b"x").unwrap();
        let err = GuestImage::checked(kernel.clone(), "/nonexistent/initrd".into())
            .unwrap_err()
            .to_string();
        std::fs::remove_file(&kernel).unwrap();
        assert!(err.contains("/nonexistent/initrd"), "{err}");
    }
}
