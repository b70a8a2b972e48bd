//! A sandbox: one VM (a `nacre-vmm` process) and the agent inside it.
//!
//! [`Sandbox::boot`] starts the VMM and returns once the agent answers;
//! [`Sandbox::shutdown`] asks the agent to power the VM off and waits for
//! the VMM to exit. Dropping a sandbox in any state kills the VMM and
//! removes its run directory.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::agent::{
    AgentClient, AgentClientError, ClientOptions, Endpoint, RestoredIdentity, TtrpcAgentClient,
};
use crate::host::{kernel_mode, KernelMode};
use crate::image::GuestImage;
use crate::vm::{HostPlacement, VmError, VmNet, VmProcess, VmSpec};

/// How long a boot may take before the agent answers.
pub fn default_boot_timeout() -> Duration {
    match kernel_mode() {
        // Guest kernel code is interpreted: tens of seconds per boot.
        KernelMode::Emulated => Duration::from_secs(300),
        KernelMode::Hardware => Duration::from_secs(30),
    }
}

/// Bound of each non-blocking agent call of the CLI and the shim: as
/// long as a boot may take, at least two minutes (a starved guest on a
/// loaded host where kernel mode is emulated answers slowly; container
/// creation took 19 s under a 2-core host's full load).
pub fn default_call_timeout() -> Duration {
    default_boot_timeout().max(Duration::from_secs(120))
}

/// Errors booting, driving or stopping a sandbox.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error(transparent)]
    Vm(#[from] VmError),
    #[error("the VMM exited ({status}) before the agent answered\n--- VMM log ---\n{vmm_log}\n--- console (tail) ---\n{console}")]
    VmmExited {
        status: std::process::ExitStatus,
        vmm_log: String,
        console: String,
    },
    #[error(
        "the agent did not answer within {timeout:?}: {last}\n--- console (tail) ---\n{console}"
    )]
    BootTimeout {
        timeout: Duration,
        last: AgentClientError,
        console: String,
    },
    #[error(transparent)]
    Agent(#[from] AgentClientError),
    #[error("the VMM (pid {pid}) did not exit within {timeout:?} after shutdown; killed")]
    ShutdownTimeout { pid: u32, timeout: Duration },
    #[error("the VMM exited with {0} after shutdown")]
    ShutdownStatus(std::process::ExitStatus),
    #[error("the VMM refused template {template}: {reason}")]
    TemplateRefused { template: PathBuf, reason: String },
}

/// Connect rounds while a guest boots: short, so a VMM that dies is
/// noticed quickly.
const BOOT_ROUND: Duration = Duration::from_secs(2);
/// Connect rounds to a restored guest: its agent is listening already, but
/// each abandoned attempt leaves the guest a connection to set up and tear
/// down (threads, in slow emulated kernel code), so wait longer for one.
const RESTORE_ROUND: Duration = Duration::from_secs(30);

/// nacre-vmm's exit code for a template it cannot use (corrupt, other
/// format, VMM version, kernel or initrd).
pub const TEMPLATE_REFUSED: i32 = nacre_vmm_api::exit_code::TEMPLATE;

fn last_line(text: &str) -> String {
    text.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .to_owned()
}

/// A booted VM whose agent answers.
#[derive(Debug)]
pub struct Sandbox {
    vm: VmProcess,
    agent: TtrpcAgentClient,
    boot_time: Duration,
}

impl Sandbox {
    /// Starts a VM in the run directory `dir` (created here, must not
    /// exist) and waits up to `timeout` for its agent.
    pub fn boot(
        vmm: &Path,
        spec: &VmSpec,
        dir: &Path,
        timeout: Duration,
    ) -> Result<Self, SandboxError> {
        let start = Instant::now();
        let vm = VmProcess::spawn(vmm, spec, dir)?;
        Self::wait_for_agent(vm, start, timeout, BOOT_ROUND)
    }

    /// Starts a VM in the run directory `dir` (created here, must not
    /// exist) restored from the template in `template`, which must have
    /// been made from `image`; waits up to `timeout` for its agent and
    /// gives the agent `identity`. `shared_dirs` serves the template's
    /// virtio-fs shares (mounted when `identity.shared_tag` names one),
    /// `nets` its network devices (in order; the guest NICs keep the
    /// template's MACs until the agent is told otherwise).
    #[allow(clippy::too_many_arguments)]
    pub fn restore(
        vmm: &Path,
        template: &Path,
        image: &GuestImage,
        shared_dirs: &[nacre_vmm_api::SharedDir],
        nets: &[VmNet],
        dir: &Path,
        host: &HostPlacement,
        identity: &RestoredIdentity,
        timeout: Duration,
    ) -> Result<Self, SandboxError> {
        let start = Instant::now();
        let mut vm = VmProcess::spawn_restore(vmm, template, image, shared_dirs, nets, dir, host)?;
        // The VMM checks the template before it binds its sockets: wait for
        // one or the other, so a refusal is seen at once.
        while !vm.api_socket().exists() && vm.try_wait()?.is_none() && start.elapsed() < timeout {
            std::thread::sleep(Duration::from_millis(5));
        }
        let mut sandbox = match Self::wait_for_agent(vm, start, timeout, RESTORE_ROUND) {
            Err(SandboxError::VmmExited {
                status, vmm_log, ..
            }) if status.code() == Some(TEMPLATE_REFUSED) => {
                return Err(SandboxError::TemplateRefused {
                    template: template.to_path_buf(),
                    reason: last_line(&vmm_log),
                })
            }
            other => other?,
        };
        // The guest's clock is set from the time of this call (the
        // identity was made before the VMM started), so no SetTime need
        // follow.
        let now = RestoredIdentity {
            time: std::time::SystemTime::now(),
            ..identity.clone()
        };
        sandbox.agent.restored(&now)?;
        sandbox.boot_time = start.elapsed();
        tracing::info!(pid = sandbox.vm.pid(), boot_time = ?sandbox.boot_time, "sandbox restored");
        Ok(sandbox)
    }

    fn wait_for_agent(
        mut vm: VmProcess,
        start: Instant,
        timeout: Duration,
        round: Duration,
    ) -> Result<Self, SandboxError> {
        let deadline = start + timeout;
        let endpoint = Endpoint::agent_vsock(vm.vsock_socket());
        let round = ClientOptions {
            connect_timeout: round,
            ..ClientOptions::default()
        };
        loop {
            let last = match TtrpcAgentClient::connect(endpoint.clone(), round) {
                Ok(agent) => {
                    let boot_time = start.elapsed();
                    tracing::info!(pid = vm.pid(), ?boot_time, "sandbox agent answers");
                    return Ok(Self {
                        vm,
                        agent,
                        boot_time,
                    });
                }
                Err(e) => e,
            };
            if let Some(status) = vm.try_wait()? {
                return Err(SandboxError::VmmExited {
                    status,
                    vmm_log: vm.vmm_log(),
                    console: tail(&vm.console(), 40),
                });
            }
            if Instant::now() >= deadline {
                return Err(SandboxError::BootTimeout {
                    timeout,
                    last,
                    console: tail(&vm.console(), 40),
                });
            }
        }
    }

    /// The agent of this sandbox.
    pub fn agent(&self) -> &dyn AgentClient {
        &self.agent
    }

    /// A handle on this sandbox's agent connection that can move to other
    /// threads (calls on clones share the connection).
    pub fn client(&self) -> TtrpcAgentClient {
        self.agent.clone()
    }

    /// The VMM process.
    pub fn vm(&self) -> &VmProcess {
        &self.vm
    }

    /// The VMM process, to poll or wait for it.
    pub fn vm_mut(&mut self) -> &mut VmProcess {
        &mut self.vm
    }

    /// Closes the connection to the agent and returns the VM alone (e.g.
    /// to snapshot it without a connection the restored guest would have
    /// to tear down).
    pub fn into_vm(self) -> VmProcess {
        self.vm
    }

    /// Time from spawning the VMM to the agent's first answer.
    pub fn boot_time(&self) -> Duration {
        self.boot_time
    }

    /// Asks the agent to power the VM off and waits up to `timeout` for the
    /// VMM to exit; kills it if it does not. The run directory is removed
    /// in every case. Returns the sockets the VMM failed to remove itself
    /// (none when it exits properly), which are removed with the directory.
    pub fn shutdown(mut self, timeout: Duration) -> Result<Vec<PathBuf>, SandboxError> {
        let asked = self.agent.shutdown();
        let status = match self.vm.wait_timeout(timeout)? {
            Some(status) => status,
            None => {
                let pid = self.vm.pid();
                self.vm.kill()?;
                asked?;
                return Err(SandboxError::ShutdownTimeout { pid, timeout });
            }
        };
        asked?;
        if !status.success() {
            return Err(SandboxError::ShutdownStatus(status));
        }
        let leftovers: Vec<PathBuf> = [self.vm.vsock_socket(), self.vm.api_socket()]
            .into_iter()
            .filter(|p| p.exists())
            .collect();
        if !leftovers.is_empty() {
            tracing::warn!(?leftovers, "the VMM left sockets behind");
        }
        Ok(leftovers)
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_keeps_last_lines() {
        assert_eq!(tail("a\nb\nc\n", 2), "b\nc");
        assert_eq!(tail("a", 5), "a");
        assert_eq!(tail("", 5), "");
    }
}
