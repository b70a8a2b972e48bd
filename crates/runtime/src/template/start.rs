//! Starting a sandbox: restored from its template, or booted cold.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::TemplateStore;
use crate::agent::RestoredIdentity;
use crate::sandbox::{Sandbox, SandboxError};
use crate::vm::VmSpec;

/// How a sandbox was started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartKind {
    /// Restored from the template in this directory.
    Template(PathBuf),
    /// Booted cold (templates off, or the template failed: the reason).
    Cold(Option<String>),
}

/// The kernel command line a cold boot gets for `identity`: what a
/// restored guest is told by `Agent.Restored` instead.
pub fn cold_cmdline(spec: &VmSpec, identity: &RestoredIdentity) -> VmSpec {
    let mut parts: Vec<String> = spec.extra_cmdline.iter().cloned().collect();
    if let Some(tag) = &identity.shared_tag {
        parts.push(format!("nacre.shared={tag}"));
    }
    if !identity.hostname.is_empty() {
        parts.push(format!("nacre.hostname={}", identity.hostname));
    }
    VmSpec {
        extra_cmdline: (!parts.is_empty()).then(|| parts.join(" ")),
        ..spec.clone()
    }
}

/// The first agent protocol whose `Network.ConfigureNetwork` gives a NIC
/// another MAC (`Interface.current_mac`); an older agent ignores the
/// field and would not find the pod's NIC.
pub const NET_RESTORE_PROTOCOL: u32 = 3;

/// Whether the agent of `sandbox`, restored with `spec`'s network
/// devices, can give its NICs the pods' MACs. Else the reason, and the
/// caller boots cold (the template stays: it is not broken, and the same
/// initrd would make the same one again).
fn takes_pod_macs(sandbox: &Sandbox, spec: &VmSpec) -> Result<(), String> {
    if spec.nets.is_empty() {
        return Ok(());
    }
    let details = sandbox
        .agent()
        .guest_details()
        .map_err(|e| format!("asking the restored agent for its protocol version: {e}"))?;
    if details.protocol_version < NET_RESTORE_PROTOCOL {
        return Err(format!(
            "the template's agent speaks protocol {}, it cannot take the pod's MAC (needs {NET_RESTORE_PROTOCOL})",
            details.protocol_version
        ));
    }
    Ok(())
}

/// Starts a sandbox of `spec` in `dir`: restored from its template (made
/// on first use) when `store` is given, else, or when anything about the
/// template fails, booted cold. A template the VMM refuses is removed, so
/// the next start makes a new one. With network devices, the restored
/// agent must speak protocol [`NET_RESTORE_PROTOCOL`] or later. `spec.extra_cmdline` must not carry the
/// identity: a restored agent gets `identity` over `Agent.Restored`, a
/// cold boot gets it on the command line ([`cold_cmdline`]).
pub fn start_sandbox(
    store: Option<&TemplateStore>,
    vmm: &Path,
    spec: &VmSpec,
    dir: &Path,
    identity: &RestoredIdentity,
    timeout: Duration,
) -> Result<(Sandbox, StartKind), SandboxError> {
    let cold = cold_cmdline(spec, identity);
    let Some(store) = store else {
        return Sandbox::boot(vmm, &cold, dir, timeout).map(|s| (s, StartKind::Cold(None)));
    };
    let reason = match store.get_or_create(vmm, spec, timeout) {
        Ok(template) => {
            match Sandbox::restore(
                vmm,
                &template,
                &spec.image,
                &spec.shared_dirs,
                &spec.nets,
                dir,
                &spec.host,
                identity,
                timeout,
            ) {
                Ok(sandbox) => match takes_pod_macs(&sandbox, spec) {
                    // Dropping the sandbox kills the VMM and removes `dir`.
                    Err(reason) => reason,
                    Ok(()) => return Ok((sandbox, StartKind::Template(template))),
                },
                Err(e) => {
                    if matches!(e, SandboxError::TemplateRefused { .. }) {
                        store.discard(&template);
                    }
                    e.to_string()
                }
            }
        }
        Err(e) => e.to_string(),
    };
    tracing::warn!("template not used, booting cold: {reason}");
    Sandbox::boot(vmm, &cold, dir, timeout).map(|s| (s, StartKind::Cold(Some(reason))))
}

#[cfg(test)]
mod tests {
    use super::super::tests::spec;
    use super::*;

    #[test]
    fn cold_boots_get_the_identity_on_the_command_line() {
        let dir = std::env::temp_dir();
        let mut s = spec(&dir);
        let mut id = RestoredIdentity::new("pod-1", "c1").unwrap_or_else(|e| panic!("{e}"));
        id.shared_tag = Some("nacre".into());
        assert_eq!(
            cold_cmdline(&s, &id).extra_cmdline.as_deref(),
            Some("nacre.shared=nacre nacre.hostname=pod-1")
        );
        s.extra_cmdline = Some("nacre.log=info".into());
        id.hostname.clear();
        id.shared_tag = None;
        assert_eq!(
            cold_cmdline(&s, &id).extra_cmdline.as_deref(),
            Some("nacre.log=info")
        );
    }
}
