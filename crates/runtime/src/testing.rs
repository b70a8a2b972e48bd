//! Support for the VM test tier.
//!
//! VM tests need `/dev/kvm` and a built guest image. Under `make test` or CI
//! (`NACRE_REQUIRE_VM=1` or `CI=true`) a missing prerequisite fails the
//! test loudly; elsewhere (a plain `cargo test`) the test says why it
//! skipped and returns.

use crate::host;
use crate::image::{locate_vmm, GuestImage};
use std::path::PathBuf;

/// What a VM test needs.
#[derive(Debug, Clone)]
pub struct VmPrereqs {
    pub image: GuestImage,
    pub vmm: PathBuf,
}

/// True when VM tests must run rather than skip.
pub fn vm_tests_required() -> bool {
    let set = |name: &str| {
        std::env::var(name)
            .map(|v| !v.is_empty() && v != "0" && v != "false")
            .unwrap_or(false)
    };
    set("NACRE_REQUIRE_VM") || set("CI")
}

/// Returns the VM prerequisites, or `None` (after saying why) when they are
/// missing and VM tests are not required.
///
/// # Panics
/// When a prerequisite is missing and [`vm_tests_required`] is true.
pub fn vm_prereqs(test: &str) -> Option<VmPrereqs> {
    let found = host::check_kvm()
        .map_err(|e| e.to_string())
        .and_then(|_| GuestImage::locate().map_err(|e| e.to_string()))
        .and_then(|image| {
            locate_vmm()
                .map(|vmm| VmPrereqs { image, vmm })
                .map_err(|e| e.to_string())
        });
    match found {
        Ok(p) => Some(p),
        Err(why) if vm_tests_required() => {
            panic!("VM test {test} cannot run: {why} (VM tests are required under CI / make test)")
        }
        Err(why) => {
            eprintln!("SKIPPED VM test {test}: {why} (set NACRE_REQUIRE_VM=1 to make this fatal)");
            None
        }
    }
}

/// Whether a root-tier test can run: root, and iproute2's `ip` and `tc`.
/// Prints a SKIPPED line and returns false when not and root tests are
/// not required; panics when they are (CI / NACRE_REQUIRE_VM).
///
/// # Panics
/// When a prerequisite is missing and [`vm_tests_required`] is true.
pub fn root_prereqs(test: &str) -> bool {
    root_with_tools(test, &["ip", "tc"])
}

/// Whether a root-tier test that needs only root (and the listed tools,
/// each run with `-V`) can run; skips or panics like [`root_prereqs`].
///
/// # Panics
/// When a prerequisite is missing and [`vm_tests_required`] is true.
pub fn root_with_tools(test: &str, tools: &[&str]) -> bool {
    // SAFETY: geteuid has no preconditions.
    let why = if unsafe { libc::geteuid() } != 0 {
        Some("not root".to_string())
    } else {
        tools
            .iter()
            .find(|tool| std::process::Command::new(tool).arg("-V").output().is_err())
            .map(|tool| format!("`{tool}` is missing"))
    };
    match why {
        None => true,
        Some(why) if vm_tests_required() => {
            panic!("root test {test} cannot run: {why} (required under CI / make test)")
        }
        Some(why) => {
            eprintln!(
                "SKIPPED root test {test}: {why} (set NACRE_REQUIRE_VM=1 to make this fatal)"
            );
            false
        }
    }
}
