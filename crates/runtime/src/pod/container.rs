//! A container of a pod: what both frontends do once its rootfs and
//! volumes are in the share.

use crate::agent::AgentClientError;
use crate::container::paths::GuestLayout;
use crate::container::pod_ns::{self, NsHolder};
use crate::container::share::SharedDir;
use crate::container::spec::Bundle;
use crate::container::ContainerError;

use super::Pod;

/// What a new container joins of what the pod already has.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Joins {
    /// The VM's network (the pod's, configured by the agent) instead of a
    /// new network namespace: set when the spec names the pod's
    /// namespace.
    pub vm_network: bool,
    /// The sandbox container whose IPC, UTS and (when shared) PID
    /// namespaces the container joins.
    pub pod_namespaces: Option<NsHolder>,
}

/// Where a pod's containers are shared with its VM: the sandbox's
/// [`SharedDir`] (bind mounts), or a stand-in that mounts nothing in unit
/// tests.
pub trait ContainerShare: Send + Sync + std::fmt::Debug {
    /// Shares container `cid`'s rootfs and bind volumes.
    fn bind_container(&self, bundle: &Bundle, cid: &str) -> Result<(), ContainerError>;
    /// Unshares container `cid`.
    fn remove_container(&self, cid: &str) -> Result<(), ContainerError>;
}

impl ContainerShare for SharedDir {
    fn bind_container(&self, bundle: &Bundle, cid: &str) -> Result<(), ContainerError> {
        SharedDir::bind_container(self, bundle, cid)
    }

    fn remove_container(&self, cid: &str) -> Result<(), ContainerError> {
        SharedDir::remove_container(self, cid)
    }
}

/// Errors creating a container in a pod.
#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    #[error("sharing the rootfs with the VM: {0}")]
    Share(ContainerError),
    #[error("encoding the guest spec: {0}")]
    Spec(#[from] serde_json::Error),
    #[error(transparent)]
    Agent(#[from] AgentClientError),
}

impl Pod {
    /// Adds container `cid` of `bundle` to the pod: shares its rootfs and
    /// volumes through `share`, then creates it (see
    /// [`Pod::create_container`]). On failure its share is removed again.
    /// Returns its init's pid in the guest.
    pub fn add_container(
        &self,
        cid: &str,
        bundle: &Bundle,
        joins: Joins,
        share: &dyn ContainerShare,
    ) -> Result<u32, CreateError> {
        share
            .bind_container(bundle, cid)
            .map_err(CreateError::Share)?;
        let created = self.create_container(cid, bundle, joins);
        if created.is_err() {
            if let Err(e) = share.remove_container(cid) {
                tracing::warn!(cid, "removing the container's share: {e}");
            }
        }
        created
    }

    /// Has the agent create container `cid` of `bundle` (its rootfs and
    /// volumes already in the share): the spec as the guest sees it,
    /// joined to the pod as `joins` says. Returns its init's pid in the
    /// guest (never to be reported to a host client).
    pub fn create_container(
        &self,
        cid: &str,
        bundle: &Bundle,
        joins: Joins,
    ) -> Result<u32, CreateError> {
        let mut guest = bundle.guest_spec(&GuestLayout::new(cid));
        if joins.vm_network {
            crate::network::join_vm_network(&mut guest);
        }
        if let Some(holder) = joins.pod_namespaces {
            let joined = pod_ns::join_pod_namespaces(&mut guest, &bundle.spec, holder);
            tracing::debug!(cid, ?joined, "joins the sandbox's namespaces");
        }
        let spec = serde_json::to_vec(&guest)?;
        let pid = tracing::info_span!("agent.CreateContainer")
            .in_scope(|| self.agent().create_container(cid, &spec))?;
        tracing::info!(cid, guest_pid = pid, "container created in the guest");
        Ok(pid)
    }
}
