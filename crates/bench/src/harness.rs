//! The private containerd the `ctr` and `pods` sections run on: the one of
//! `nacre-cri-tests` (CRI plugin, handlers `runc` and `nacre`, bridge CNI,
//! locally built pause and busybox images), with the shim's guest image,
//! VMM and a sandbox root of its own.

use std::path::{Path, PathBuf};

use nacre_cri_tests::containerd::{target_bin_dir, CriContainerd, HarnessError};
use nacre_runtime::image::GuestImage;

/// The shim binary containerd starts for `io.containerd.nacre.v2`.
pub const SHIM: &str = "containerd-shim-nacre-v2";

/// What keeps the harness from starting.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error(
        "{SHIM} is neither next to nacre-bench ({0}) nor on PATH: \
         cargo build --release -p nacre-shim"
    )]
    NoShim(String),
    #[error("private containerd: {0}")]
    Containerd(#[from] HarnessError),
}

/// A started private containerd and the shim sandbox root it uses.
#[derive(Debug)]
pub struct Harness {
    pub ctd: CriContainerd,
    /// `NACRE_SHIM_ROOT` of the shims: leftovers are looked for here.
    pub shim_root: PathBuf,
    /// Dropped after `ctd` (fields drop in order): removes the empty root.
    _root: RootDir,
}

#[derive(Debug)]
struct RootDir(PathBuf);

impl Drop for RootDir {
    fn drop(&mut self) {
        // Only an empty directory: a leftover sandbox stays for a look.
        let _ = std::fs::remove_dir(&self.0);
    }
}

fn on_path(name: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(name).is_file()))
        .unwrap_or(false)
}

impl Harness {
    /// Starts containerd (the bench's own directory leads its PATH, so the
    /// shim built next to the bench is the one containerd runs).
    pub fn start(name: &str, image: &GuestImage, vmm: &Path) -> Result<Self, SetupError> {
        Self::start_with(name, image, vmm, Vec::new())
    }

    /// [`Harness::start`] with more environment for containerd and so its
    /// shims (`NACRE_TRACE`, say).
    pub fn start_with(
        name: &str,
        image: &GuestImage,
        vmm: &Path,
        extra: Vec<(String, String)>,
    ) -> Result<Self, SetupError> {
        let bin = target_bin_dir().unwrap_or_default();
        if !bin.join(SHIM).is_file() && !on_path(SHIM) {
            return Err(SetupError::NoShim(bin.display().to_string()));
        }
        let shim_root = PathBuf::from(format!("/run/nacre-shim-bench-{}", std::process::id()));
        let mut env: Vec<(String, String)> = vec![
            ("NACRE_KERNEL".into(), image.kernel.display().to_string()),
            ("NACRE_INITRD".into(), image.initrd.display().to_string()),
            ("NACRE_VMM".into(), vmm.display().to_string()),
            ("NACRE_SHIM_ROOT".into(), shim_root.display().to_string()),
        ];
        // Templates on or off, and where they are kept, as the caller says.
        for key in ["NACRE_TEMPLATES", "NACRE_TEMPLATE_DIR", "RUST_LOG"] {
            if let Ok(value) = std::env::var(key) {
                env.push((key.into(), value));
            }
        }
        env.extend(extra);
        let ctd = CriContainerd::start_with_env(name, env)?;
        Ok(Self {
            ctd,
            _root: RootDir(shim_root.clone()),
            shim_root,
        })
    }

    /// Shim processes of this containerd and nacre-vmm processes of this
    /// shim root still alive, and sandbox directories left in the root.
    pub fn leftovers(&self) -> Vec<String> {
        let socket = self.ctd.socket().display().to_string();
        let root = self.shim_root.display().to_string();
        let mut left: Vec<String> = crate::procs::pids_of(SHIM, &socket)
            .into_iter()
            .map(|p| format!("{SHIM} pid {p}"))
            .collect();
        let shims = crate::procs::pids_of(SHIM, &socket);
        left.extend(
            crate::procs::pids_of("nacre-vmm", &root)
                .into_iter()
                .chain(
                    shims
                        .iter()
                        .flat_map(|s| crate::procs::children_named(*s, "nacre-vmm")),
                )
                .map(|p| format!("nacre-vmm pid {p}")),
        );
        if let Ok(dir) = std::fs::read_dir(&self.shim_root) {
            left.extend(
                dir.flatten()
                    .map(|e| format!("sandbox directory {}", e.path().display())),
            );
        }
        left.sort();
        left.dedup();
        left
    }
}
