//! What a pod is started with: one typed description, built by each
//! frontend from its own inputs (the CLI's bundle and configuration,
//! containerd's create request).

use std::path::PathBuf;
use std::time::Duration;

use crate::agent::RestoredIdentity;
use crate::container::paths::SHARED_TAG;
use crate::host_cgroup::HostLimits;
use crate::image::GuestImage;
use crate::network::{GuestNetwork, NetworkModel, PodNetwork};
use crate::template::TemplateStore;
use crate::vm::VmSpec;
use nacre_vmm_api::{CacheMode, SharedDir};

/// Everything [`super::Pod::start`] needs.
#[derive(Debug, Clone)]
pub struct PodOptions {
    /// The sandbox id (the guest learns it as its identity).
    pub id: String,
    /// The guest's host name (kept only when it is a plain DNS name).
    pub hostname: Option<String>,
    /// The `nacre-vmm` binary.
    pub vmm: PathBuf,
    pub image: GuestImage,
    pub vcpus: u8,
    pub memory_mib: u32,
    /// Appended to the guest kernel command line.
    pub kernel_params: Option<String>,
    /// The VMM's run directory (sockets, logs).
    pub vm_dir: PathBuf,
    /// The host directory served to the guest over virtio-fs as its
    /// shared directory, if any.
    pub share: Option<PathBuf>,
    /// How the guest may cache the share's file data. A share that holds
    /// host-changed files (volumes) needs `Auto`; one only its guest
    /// changes (a rootfs alone) may take `Always`.
    pub share_cache: CacheMode,
    /// The host cgroup the VMM runs in.
    pub cgroup: Option<PodCgroup>,
    /// The spec's `process.oomScoreAdj` (the VMM's is never below 0).
    pub oom_score_adj: Option<i32>,
    /// The pod network, when the sandbox has a network namespace of its
    /// own (CNI's).
    pub network: Option<PodNetworkOptions>,
    /// Where templates come from, None to always boot cold.
    pub templates: Option<TemplateStore>,
    pub boot_timeout: Duration,
}

/// The host cgroup of a pod (`linux.cgroupsPath`).
#[derive(Debug, Clone)]
pub struct PodCgroup {
    pub path: String,
    pub limits: HostLimits,
    /// The calling process joins it too (the CLI's monitor: it is the
    /// container's process on the host for whoever holds its pid).
    pub join: bool,
}

/// The pod network: the namespace CNI set up and what the guest is told
/// besides its interfaces.
#[derive(Debug, Clone)]
pub struct PodNetworkOptions {
    pub netns: PathBuf,
    pub model: NetworkModel,
    pub hostname: Option<String>,
    /// The contents of the pod's /etc/resolv.conf.
    pub resolv_conf: Option<String>,
    /// The contents of the pod's /etc/hosts.
    pub hosts: Option<String>,
}

impl PodNetworkOptions {
    /// What the agent configures for `net`.
    pub fn guest_network(&self, net: &PodNetwork) -> GuestNetwork {
        GuestNetwork {
            hostname: self.hostname.clone(),
            resolv_conf: self.resolv_conf.clone(),
            hosts: self.hosts.clone(),
            ..net.guest_network()
        }
    }
}

impl PodOptions {
    /// The VM's shape (its network and host placement are added once
    /// they exist).
    pub(super) fn vm_spec(&self) -> VmSpec {
        VmSpec {
            vcpus: self.vcpus,
            memory_mib: self.memory_mib,
            extra_cmdline: self.kernel_params.clone(),
            shared_dirs: self
                .share
                .iter()
                .map(|dir| SharedDir {
                    tag: SHARED_TAG.to_string(),
                    path: dir.clone(),
                    cache: self.share_cache,
                })
                .collect(),
            ..VmSpec::new(self.image.clone())
        }
    }

    /// The identity a cold boot gets on its command line and a restored
    /// agent over `Agent.Restored`.
    pub(super) fn identity(&self) -> std::io::Result<RestoredIdentity> {
        guest_identity(&self.id, self.hostname.as_deref(), self.share.is_some())
    }
}

/// The guest identity of sandbox `id`: its host name when that is a plain
/// DNS name (letters, digits, `-`, `.`; else the guest keeps its own), and
/// the share's tag when it has one.
pub fn guest_identity(
    id: &str,
    hostname: Option<&str>,
    shared: bool,
) -> std::io::Result<RestoredIdentity> {
    let hostname = hostname
        .filter(|h| {
            !h.is_empty()
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        })
        .unwrap_or("");
    let mut identity = RestoredIdentity::new(hostname, id)?;
    if shared {
        identity.shared_tag = Some(SHARED_TAG.to_string());
    }
    Ok(identity)
}
