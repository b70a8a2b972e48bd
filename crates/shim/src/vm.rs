//! The sandbox's VM as the shim holds it: a [`Pod`] of the engine, started
//! from the sandbox container's create request, plus the sandbox
//! directory it is served from.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use nacre_runtime::agent::AgentClient;
use nacre_runtime::container::share::SharedDir;
use nacre_runtime::host_cgroup::HostLimits;
use nacre_runtime::image::locate_vmm;
pub use nacre_runtime::pod::ContainerShare;
use nacre_runtime::pod::{
    self, CacheMode, EventSink, Pod, PodCgroup, PodNetworkOptions, PodOptions, Started, Watcher,
};
use nacre_runtime::sandbox::default_boot_timeout;
use nacre_runtime::template::TemplateStore;
use nacre_runtime::trace::{self, GuestCursor};

use crate::config::{Config, VmShape};
use crate::error::ShimError;
use crate::podnet::PodSpec;

/// One booted sandbox VM.
#[derive(Debug)]
pub struct Vm {
    pod: Pod,
    dir: PathBuf,
    share: Arc<dyn ContainerShare>,
    watcher: OnceLock<Watcher>,
    /// The guest spans already in the trace.
    traced: Mutex<GuestCursor>,
}

impl Vm {
    /// Creates the sandbox directory `dir` (0700) and its shared directory
    /// (`rw` and the read-only `shared` view the VMM serves, see
    /// [`SharedDir`]) and starts the pod (see [`Pod::start`]). Blocking.
    /// On failure nothing is left behind.
    pub fn boot(
        id: &str,
        dir: &Path,
        config: &Config,
        shape: &VmShape,
        spec: &PodSpec,
    ) -> Result<Self, ShimError> {
        let image = config
            .guest_image()
            .map_err(|e| ShimError::FailedPrecondition(e.to_string()))?;
        let vmm = locate_vmm().map_err(|e| ShimError::FailedPrecondition(e.to_string()))?;
        let shared = SharedDir::create(dir).map_err(|e| {
            pod::remove_sandbox_dir(dir);
            ShimError::Internal(format!(
                "preparing the shared directory in {}: {e}",
                dir.display()
            ))
        })?;
        let options = PodOptions {
            id: id.to_string(),
            hostname: spec.hostname.clone(),
            vmm,
            image,
            vcpus: shape.vcpus,
            memory_mib: shape.memory_mib,
            kernel_params: shape.extra_cmdline(),
            vm_dir: dir.join("vm"),
            share: Some(shared.shared()),
            // Every container's rootfs and volumes share one directory:
            // volumes may change on the host, so close-to-open.
            share_cache: CacheMode::Auto,
            // The VMM runs in the sandbox's host cgroup (the pod's, under
            // kubelet): its memory and CPU are the pod's.
            cgroup: spec.cgroups_path.clone().map(|path| PodCgroup {
                path,
                limits: HostLimits::default(),
                join: false,
            }),
            oom_score_adj: spec.oom_score_adj,
            network: spec.netns.clone().map(|netns| PodNetworkOptions {
                netns,
                model: config.network.model(),
                hostname: spec.hostname.clone(),
                resolv_conf: spec.resolv_conf.clone(),
                hosts: spec.hosts.clone(),
            }),
            templates: if config.vm.templates {
                TemplateStore::from_env()
            } else {
                None
            },
            boot_timeout: match config.vm.boot_timeout_secs {
                0 => default_boot_timeout(),
                s => Duration::from_secs(s),
            },
        };
        match Pod::start(options) {
            Ok(pod) => Ok(Self::from_pod(pod, dir, Arc::new(SharedDir::open(dir)))),
            Err(e) => {
                pod::remove_sandbox_dir(dir);
                Err(match e {
                    pod::PodError::Cgroup(_) => ShimError::FailedPrecondition(e.to_string()),
                    e => ShimError::Internal(e.to_string()),
                })
            }
        }
    }

    /// The VM of `pod`, served from the sandbox directory `dir`, its
    /// containers shared through `share`.
    pub fn from_pod(pod: Pod, dir: &Path, share: Arc<dyn ContainerShare>) -> Self {
        Self {
            pod,
            dir: dir.to_path_buf(),
            share,
            watcher: OnceLock::new(),
            traced: Mutex::new(GuestCursor::default()),
        }
    }

    /// Starts the pod's watcher (see [`Pod::watch`]); its events go to
    /// `sink`. Once.
    pub fn watch(&self, sink: EventSink) -> std::io::Result<()> {
        let watcher = self.pod.watch(sink)?;
        if self.watcher.set(watcher).is_err() {
            tracing::warn!("the sandbox VM was already watched");
        }
        Ok(())
    }

    /// Has the watcher report the end of process `exec_id` of container
    /// `cid`.
    pub fn watch_process(&self, cid: &str, exec_id: &str) {
        match self.watcher.get() {
            Some(w) => w.process(cid, exec_id),
            None => tracing::error!(cid, exec_id, "no watcher for the sandbox VM"),
        }
    }

    /// The engine's pod.
    pub fn pod(&self) -> &Pod {
        &self.pod
    }

    /// Whether [`Vm::shutdown`] was called.
    pub fn is_shut_down(&self) -> bool {
        self.pod.is_shut_down()
    }

    /// The agent connection.
    pub fn client(&self) -> Arc<dyn AgentClient> {
        self.pod.agent()
    }

    /// How the VM started.
    pub fn started(&self) -> &Started {
        self.pod.started()
    }

    /// The VMM's pid.
    pub fn pid(&self) -> u32 {
        self.pod.pid()
    }

    /// Where the sandbox's containers are shared with the VM.
    pub fn share(&self) -> Arc<dyn ContainerShare> {
        Arc::clone(&self.share)
    }

    /// The status tasks get when the VM went away under them (see
    /// [`pod::lost_status`]).
    pub fn exit_status(&self) -> Option<u32> {
        self.pod.exit_status().map(status_u32)
    }

    /// Polls the VMM; once it has exited, returns the status its tasks
    /// get.
    pub fn poll_exit(&self) -> Option<u32> {
        self.pod.poll_exit().map(status_u32)
    }

    /// With tracing on, adds the guest agent's spans not traced yet to
    /// this process's trace, and with `vmm_cpu` the VMM's CPU so far (once
    /// per VM, before its shutdown: the figures add up). Blocking.
    pub fn trace_guest(&self, vmm_cpu: bool) {
        if !crate::trace::enabled() || self.exit_status().is_some() {
            return;
        }
        match self.client().trace() {
            Ok(spans) => {
                let fresh = self
                    .traced
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .take_new(spans);
                trace::add_guest(&fresh, self.pid());
            }
            Err(e) => tracing::warn!("reading the guest's trace: {e}"),
        }
        if vmm_cpu {
            trace::add_vmm_cpu(self.pid());
        }
    }

    /// Takes container `cid` apart in the guest (a failure is logged: the
    /// VM's end takes it anyway). Blocking.
    pub fn remove_container(&self, cid: &str) {
        if let Err(e) = self.pod.container(cid).remove() {
            tracing::warn!(cid, "removing the container in the VM: {e}");
        }
    }

    /// Stops the VM once its last container is deleted: every process in
    /// it has exited and nothing in the guest needs flushing (the share is
    /// write-through, there is no block device), so the VMM is killed
    /// without a guest shutdown (as the CLI's monitor does); then the
    /// sandbox directory is removed. Blocking.
    pub fn stop(&self) {
        let _span = tracing::info_span!("sandbox.stop").entered();
        self.pod.kill();
        pod::remove_sandbox_dir(&self.dir);
    }

    /// Shuts the VM down (agent Shutdown, kill after a timeout), unmounts
    /// the shared directory and removes the sandbox directory. Blocking.
    pub fn shutdown(&self) {
        if let Err(e) = self.pod.shutdown(Duration::from_secs(10)) {
            tracing::warn!(pid = self.pid(), "sandbox VM shutdown: {e}");
        }
        pod::remove_sandbox_dir(&self.dir);
    }

    /// The sandbox's host cgroup directories (empty without one).
    pub fn host_cgroup_dirs(&self) -> Vec<PathBuf> {
        self.pod
            .host_cgroup()
            .map(nacre_runtime::host_cgroup::HostCgroup::dirs)
            .unwrap_or_default()
    }
}

fn status_u32(code: i32) -> u32 {
    u32::try_from(code).unwrap_or(255)
}
