//! Which sandbox a container belongs to, and where a sandbox lives on the
//! host.
//!
//! ```text
//! /run/nacre-shim/<hash of namespace and sandbox id>/     (0700)
//!     vm/              the VMM's run directory (sockets, logs, vmm.pid)
//!     rw/              host only: where the shim binds (see SharedDir)
//!         <cid>/rootfs       bind of <bundle>/rootfs (containerd's mounts)
//!         <cid>/mounts/<n>   bind of the spec's n-th bind mount source
//!     shared/          read-only slave bind of rw, served as virtio-fs
//!                      tag `nacre`: the guest sees shared/<cid>/...
//! ```

use std::collections::HashMap;
use std::path::Path;

pub use nacre_runtime::container::paths::DEFAULT_SHIM_ROOT;
/// The CRI annotation naming a container's sandbox.
pub const CRI_SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";
/// The CRI annotation saying whether a container is the sandbox itself.
pub const CRI_CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";

/// The sandbox (shim and VM) that container `cid` with these annotations
/// belongs to: the CRI sandbox id, else the container itself.
pub fn sandbox_id(cid: &str, annotations: &HashMap<String, String>) -> String {
    match annotations.get(CRI_SANDBOX_ID) {
        Some(s) if !s.is_empty() => s.clone(),
        _ => cid.to_string(),
    }
}

/// The annotations of the bundle's `config.json` (empty when unreadable).
pub fn bundle_annotations(bundle: &Path) -> HashMap<String, String> {
    std::fs::read(bundle.join("config.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| {
            v.get("annotations")
                .and_then(|a| serde_json::from_value(a.clone()).ok())
        })
        .unwrap_or_default()
}

/// The directory of one sandbox.
pub use nacre_runtime::container::paths::pod_sandbox_dir as sandbox_dir;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grouping_follows_the_cri_annotation() {
        let mut a = HashMap::new();
        assert_eq!(sandbox_id("c1", &a), "c1");
        a.insert(CRI_SANDBOX_ID.to_string(), "pod".to_string());
        assert_eq!(sandbox_id("c1", &a), "pod");
    }

    #[test]
    fn sandbox_dirs_are_short_and_distinct() {
        let long = "a".repeat(64);
        let d = sandbox_dir("k8s.io", &long);
        assert!(d.join("vm/vsock.sock").as_os_str().len() < 100);
        assert_ne!(sandbox_dir("a", "b"), sandbox_dir("b", "a"));
    }
}
