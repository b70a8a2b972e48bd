//! The containerd Task service: every RPC, on top of the sandbox VM's
//! agent. Agent calls block, so they run on tokio's blocking pool.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use containerd_shim::asynchronous::ExitSignal;
use containerd_shim::protos::api::{
    CloseIORequest, ConnectRequest, ConnectResponse, CreateTaskRequest, CreateTaskResponse,
    DeleteRequest, DeleteResponse, ExecProcessRequest, KillRequest, PauseRequest, PidsRequest,
    PidsResponse, ProcessInfo, ResizePtyRequest, ResumeRequest, ShutdownRequest, StartRequest,
    StartResponse, StateRequest, StateResponse, StatsRequest, StatsResponse, Status,
    UpdateTaskRequest, WaitRequest, WaitResponse,
};
use containerd_shim::protos::events::task::{
    TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskIO, TaskPaused, TaskResumed,
    TaskStart,
};
use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim::protos::protobuf::MessageDyn;
use containerd_shim::protos::topics;
use containerd_shim::protos::ttrpc::r#async::TtrpcContext;
use containerd_shim::protos::ttrpc::Result as TtrpcResult;
use containerd_shim::protos::types::empty::Empty;
use nacre_runtime::container::paths::validate_id;
use nacre_runtime::container::pod_ns::{self, NsHolder};
use nacre_runtime::container::share::SharedDir;
use nacre_runtime::container::spec::Bundle;
use nacre_runtime::pod::{ContainerHandle, CreateError, Joins};
use tracing::{info_span, Instrument};

use crate::config::Config;
use crate::error::ShimError;
use crate::events::Publisher;
use crate::layout;
use crate::metrics;
use crate::options::RuntimeOptions;
use crate::stdio::{self, StdioPaths};
use crate::task::{Container, Exit, Process};
use crate::vm::Vm;
use nacre_runtime::container::mounts;

/// The Task service of one shim (one sandbox).
#[derive(Clone)]
pub struct Service {
    inner: Arc<Inner>,
}

struct Inner {
    namespace: String,
    /// The sandbox (pause) container's id: the shim's first container,
    /// whose namespaces the pod's other containers join.
    sandbox_id: String,
    sandbox_dir: PathBuf,
    config: std::result::Result<Config, String>,
    publisher: Publisher,
    exit: Arc<ExitSignal>,
    vm: tokio::sync::Mutex<Option<Arc<Vm>>>,
    containers: Mutex<HashMap<String, Container>>,
    boot: Boot,
    /// Seconds the VM's first container took to share and create.
    first_create: std::sync::OnceLock<f64>,
}

/// How the sandbox's VM is started on its first container's create:
/// [`Vm::boot`], or a fake in unit tests.
pub type Boot = Arc<
    dyn Fn(&str, &Path, &Config, &crate::config::VmShape, &crate::podnet::PodSpec) -> Result<Vm>
        + Send
        + Sync,
>;

type Result<T> = std::result::Result<T, ShimError>;

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ShimError::Internal(format!("blocking task failed: {e}")))?
}

fn timestamp(t: SystemTime) -> Timestamp {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    Timestamp {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
        ..Default::default()
    }
}

impl Service {
    /// A service for the sandbox `sandbox_id` in `namespace`.
    pub fn new(
        namespace: &str,
        sandbox_id: &str,
        config: std::result::Result<Config, String>,
        publisher: Publisher,
        exit: Arc<ExitSignal>,
    ) -> Self {
        let boot: Boot = Arc::new(Vm::boot);
        Self::with_boot(
            namespace,
            sandbox_id,
            layout::sandbox_dir(namespace, sandbox_id),
            config,
            publisher,
            exit,
            boot,
        )
    }

    /// [`Service::new`] with the sandbox directory and the VM start
    /// given: what the unit tests drive with a fake agent.
    pub fn with_boot(
        namespace: &str,
        sandbox_id: &str,
        sandbox_dir: PathBuf,
        config: std::result::Result<Config, String>,
        publisher: Publisher,
        exit: Arc<ExitSignal>,
        boot: Boot,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                namespace: namespace.to_string(),
                sandbox_id: sandbox_id.to_string(),
                sandbox_dir,
                config,
                publisher,
                exit,
                vm: tokio::sync::Mutex::new(None),
                containers: Mutex::new(HashMap::new()),
                boot,
                first_create: std::sync::OnceLock::new(),
            }),
        }
    }
}

impl Inner {
    fn containers(&self) -> Result<std::sync::MutexGuard<'_, HashMap<String, Container>>> {
        self.containers
            .lock()
            .map_err(|_| ShimError::Internal("container table poisoned".into()))
    }

    /// The sandbox's metrics report (blocking: asks the agent for the
    /// guest figures of each running or paused container).
    fn report(&self, vm: &Vm) -> nacre_runtime::metrics::SandboxReport {
        use nacre_runtime::metrics::{ContainerReport, GuestStats, SandboxReport};
        let mut listed: Vec<(String, Status)> = self
            .containers()
            .map(|t| {
                t.iter()
                    .map(|(id, c)| (id.clone(), c.init().map_or(Status::UNKNOWN, |p| p.status)))
                    .collect()
            })
            .unwrap_or_default();
        listed.sort_by(|a, b| a.0.cmp(&b.0));
        let containers = listed
            .into_iter()
            .map(|(id, status)| {
                let live = matches!(status, Status::RUNNING | Status::PAUSED);
                let stats = live
                    .then(|| vm.pod().container(&id).stats().ok())
                    .flatten()
                    .map(|s| GuestStats::from(&s));
                let state = match status {
                    Status::CREATED => "created",
                    Status::RUNNING => "running",
                    Status::PAUSED | Status::PAUSING => "paused",
                    Status::STOPPED => "stopped",
                    _ => "unknown",
                };
                ContainerReport {
                    id,
                    state: state.to_owned(),
                    stats,
                }
            })
            .collect();
        let started = vm.started();
        let vmm = vm.pod().vmm_counters().unwrap_or_default();
        SandboxReport {
            sandbox: self.sandbox_id.clone(),
            namespace: self.namespace.clone(),
            vmm_pid: vm.pid(),
            vcpus: started.vcpus,
            memory_mib: started.memory_mib,
            start_kind: started.kind.to_owned(),
            start_seconds: started.seconds,
            create_seconds: self.first_create.get().copied(),
            guest_errors: vmm.guest_errors,
            devices: vmm.devices,
            containers,
        }
    }

    /// Runs `f` on process `exec_id` of container `cid`.
    fn with_process<T>(
        &self,
        cid: &str,
        exec_id: &str,
        f: impl FnOnce(&mut Process) -> Result<T>,
    ) -> Result<T> {
        let mut table = self.containers()?;
        let c = table
            .get_mut(cid)
            .ok_or_else(|| ShimError::NotFound(format!("container {cid}")))?;
        let p = c.processes.get_mut(exec_id).ok_or_else(|| {
            ShimError::NotFound(format!("process {exec_id:?} of container {cid}"))
        })?;
        f(p)
    }

    /// The host pid reported to containerd for every task and exec: the
    /// sandbox VMM's (Kata reports the hypervisor's), or the shim's own
    /// when no VM runs. Never a pid the guest chose.
    async fn host_pid(&self) -> u32 {
        self.vm
            .lock()
            .await
            .as_ref()
            .map_or_else(std::process::id, |vm| vm.pid())
    }

    /// The sandbox container whose namespaces container `cid` may join
    /// (none for the sandbox itself, or when it is gone).
    fn ns_holder(&self, cid: &str, vm: &Vm) -> Result<Option<NsHolder>> {
        if cid == self.sandbox_id {
            return Ok(None);
        }
        Ok(self
            .containers()?
            .get(&self.sandbox_id)
            .map(|sandbox| NsHolder {
                host_pid: vm.pid(),
                guest_pid: sandbox.guest_pid,
            }))
    }

    /// The sandbox's VM, if it runs.
    async fn running_vm(&self) -> Result<Arc<Vm>> {
        self.vm
            .lock()
            .await
            .clone()
            .ok_or_else(|| ShimError::FailedPrecondition("the sandbox VM is not running".into()))
    }

    async fn publish(&self, topic: &str, event: Box<dyn MessageDyn>) {
        self.publisher.publish(topic, &self.namespace, event).await;
    }

    async fn create(self: &Arc<Self>, req: CreateTaskRequest) -> Result<CreateTaskResponse> {
        let cid = req.id.clone();
        if cid.is_empty() {
            return Err(ShimError::InvalidArgument("empty container id".into()));
        }
        if !req.checkpoint.is_empty() {
            return Err(ShimError::Unimplemented(
                "restoring from a checkpoint".into(),
            ));
        }
        if self.containers()?.contains_key(&cid) {
            return Err(ShimError::AlreadyExists(format!("container {cid}")));
        }
        let config = match RuntimeOptions::from_any(req.options.as_ref())? {
            Some(options) => match options.config()? {
                Some(config) => config,
                None => self.config.clone().map_err(ShimError::Internal)?,
            },
            None => self.config.clone().map_err(ShimError::Internal)?,
        };
        let bundle = PathBuf::from(&req.bundle);
        let annotations = layout::bundle_annotations(&bundle);
        let shape = config.vm_shape(&annotations)?;
        let rootfs = bundle.join("rootfs");
        let mounted_rootfs = if req.rootfs.is_empty() {
            None
        } else {
            let list: Vec<_> = req
                .rootfs
                .iter()
                .map(|m| (m.type_.clone(), m.source.clone(), m.options.clone()))
                .collect();
            let target = rootfs.clone();
            blocking(move || {
                let _span = info_span!("task.mount_rootfs").entered();
                mount_rootfs(&list, &target)
            })
            .await?;
            Some(rootfs.clone())
        };
        // The bundle is checked (rootfs, bind sources, spec) before a VM
        // boots for it.
        let dir = bundle.clone();
        let loaded = blocking(move || {
            Bundle::load(&dir).map_err(|e| ShimError::InvalidArgument(format!("bundle: {e}")))
        })
        .await;
        let created = match loaded {
            Ok(b) => {
                self.create_in_vm(&cid, &bundle, b, &config, &shape, &req)
                    .await
            }
            Err(e) => Err(e),
        };
        let (guest_pid, io) = match created {
            Ok(v) => v,
            Err(e) => {
                if let Some(r) = &mounted_rootfs {
                    mounts::unmount_all(r);
                }
                return Err(e);
            }
        };
        let pid = self.host_pid().await;
        tracing::info!(cid, guest_pid, pid, "container created");
        let share = self.sandbox_dir.join("shared").join(&cid);
        let mut init = Process::new(StdioPaths {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        });
        init.pid = pid;
        init.io = Some(Arc::new(io));
        let mut processes = HashMap::new();
        processes.insert(String::new(), init);
        self.containers()?.insert(
            cid.clone(),
            Container {
                bundle: bundle.clone(),
                mounted_rootfs,
                share,
                guest_pid,
                processes,
                oom_kills: 0,
            },
        );
        self.publish(
            topics::TASK_CREATE_EVENT_TOPIC,
            Box::new(TaskCreate {
                container_id: cid,
                bundle: req.bundle.clone(),
                rootfs: req.rootfs.clone(),
                io: Some(TaskIO {
                    stdin: req.stdin.clone(),
                    stdout: req.stdout.clone(),
                    stderr: req.stderr.clone(),
                    terminal: req.terminal,
                    ..Default::default()
                })
                .into(),
                pid,
                ..Default::default()
            }),
        )
        .await;
        Ok(CreateTaskResponse {
            pid,
            ..Default::default()
        })
    }

    /// Boots the VM if this is the sandbox's first container, shares the
    /// rootfs and volumes, has the agent create the container and starts
    /// its stdio. Undoes its own steps on failure.
    async fn create_in_vm(
        self: &Arc<Self>,
        cid: &str,
        bundle: &Path,
        b: Bundle,
        config: &Config,
        shape: &crate::config::VmShape,
        req: &CreateTaskRequest,
    ) -> Result<(u32, stdio::IoHandle)> {
        // Before the id names any host path.
        validate_id(cid).map_err(|e| ShimError::InvalidArgument(e.to_string()))?;
        let mut guard = self.vm.lock().await;
        let booted_here = guard.is_none();
        let vm = match guard.as_ref() {
            Some(vm) if vm.exit_status().is_none() => vm.clone(),
            Some(_) => {
                return Err(ShimError::FailedPrecondition(
                    "the sandbox VM has exited".into(),
                ))
            }
            None => {
                let shared = pod_ns::host_namespaces(&b.spec);
                if !shared.is_empty() {
                    return Err(ShimError::InvalidArgument(format!(
                        "the spec shares the host's {} namespace{} (hostNetwork, hostPID, \
                         hostIPC or --net-host): a nacre sandbox is a VM with its own kernel \
                         and cannot; use runc for such pods",
                        shared.join(", "),
                        if shared.len() > 1 { "s" } else { "" }
                    )));
                }
                let (dir, config, shape) =
                    (self.sandbox_dir.clone(), config.clone(), shape.clone());
                let pod = crate::podnet::PodSpec::load(bundle);
                let id = cid.to_string();
                let boot = self.boot.clone();
                let vm = Arc::new(
                    blocking(move || {
                        let _span = info_span!("sandbox.boot", id = id.as_str()).entered();
                        boot(&id, &dir, &config, &shape, &pod)
                    })
                    .await?,
                );
                if let Err(e) = self.watch(&vm) {
                    let v = vm.clone();
                    let _ = blocking(move || {
                        v.shutdown();
                        Ok(())
                    })
                    .await;
                    return Err(e);
                }
                *guard = Some(vm.clone());
                exits::spawn_oom_poller(self.clone(), vm.clone());
                let (inner, v) = (self.clone(), vm.clone());
                let socket = self
                    .sandbox_dir
                    .join(nacre_runtime::metrics::METRICS_SOCKET);
                if let Err(e) = crate::metrics_socket::spawn(&socket, move || inner.report(&v)) {
                    tracing::warn!("serving metrics on {}: {e}", socket.display());
                }
                vm
            }
        };
        let share = vm.share();
        let id = cid.to_string();
        let holder = self.ns_holder(cid, &vm)?;
        let (vm2, share2) = (vm.clone(), share.clone());
        let creating = std::time::Instant::now();
        let result = blocking(move || {
            let joins = Joins {
                // A container in the pod's network namespace shares the
                // VM's (the pod's, configured by the agent).
                vm_network: nacre_runtime::network::netns_path(&b.spec).is_some(),
                pod_namespaces: holder,
            };
            vm2.pod()
                .add_container(&id, &b, joins, share2.as_ref())
                .map_err(|e| match e {
                    CreateError::Agent(e) => {
                        ShimError::agent(format!("creating container {id} in the VM"))(e)
                    }
                    e => ShimError::Internal(e.to_string()),
                })
        })
        .await;
        if result.is_ok() && booted_here {
            let _ = self.first_create.set(creating.elapsed().as_secs_f64());
        }
        let started = match result {
            Ok(pid) => {
                let paths = StdioPaths {
                    stdin: req.stdin.clone(),
                    stdout: req.stdout.clone(),
                    stderr: req.stderr.clone(),
                    terminal: req.terminal,
                };
                let io = info_span!("task.stdio")
                    .in_scope(|| stdio::start(&vm.client(), cid, "", &paths, &self.namespace));
                match io {
                    Ok(io) => Ok((pid, io)),
                    Err(e) => {
                        let (c, id) = (vm.pod().container(cid), cid.to_string());
                        let _ = blocking(move || {
                            let _ = c.remove();
                            if let Err(e) = share.remove_container(&id) {
                                tracing::warn!(cid = id, "removing the container's share: {e}");
                            }
                            Ok(())
                        })
                        .await;
                        Err(e)
                    }
                }
            }
            // `add_container` removed the share.
            Err(e) => Err(e),
        };
        if started.is_err() && booted_here && self.containers()?.is_empty() {
            let vm2 = vm.clone();
            let _ = blocking(move || {
                vm2.shutdown();
                Ok(())
            })
            .await;
            *guard = None;
        }
        started
    }

    async fn start(self: &Arc<Self>, req: StartRequest) -> Result<StartResponse> {
        let (cid, exec_id) = (req.id.clone(), req.exec_id.clone());
        // An unknown task is NotFound whether or not a VM runs.
        self.with_process(&cid, &exec_id, |_| Ok(()))?;
        let vm = self.running_vm().await?;
        if exec_id.is_empty() {
            let pid = self.with_process(&cid, "", |p| match p.status {
                Status::CREATED => Ok(p.pid),
                s => Err(ShimError::FailedPrecondition(format!(
                    "container {cid} is {s:?}, not created"
                ))),
            })?;
            let c = vm.pod().container(&cid);
            blocking(move || {
                c.start()
                    .map_err(ShimError::agent(format!("starting container {}", c.id())))
            })
            .await?;
            self.with_process(&cid, "", |p| {
                p.status = Status::RUNNING;
                Ok(())
            })?;
            vm.watch_process(&cid, "");
            self.publish(
                topics::TASK_START_EVENT_TOPIC,
                Box::new(TaskStart {
                    container_id: cid,
                    pid,
                    ..Default::default()
                }),
            )
            .await;
            return Ok(StartResponse {
                pid,
                ..Default::default()
            });
        }
        let (spec, stdio_paths) = self.with_process(&cid, &exec_id, |p| {
            let spec = p.pending_spec.take().ok_or_else(|| {
                ShimError::FailedPrecondition(format!("exec {exec_id} was already started"))
            })?;
            Ok((spec, p.stdio.clone()))
        })?;
        let (c, id, e, ns) = (
            vm.client(),
            cid.clone(),
            exec_id.clone(),
            self.namespace.clone(),
        );
        let handle = vm.pod().container(&cid);
        let started = blocking(move || {
            let pid = handle
                .exec(&e, &spec)
                .map_err(ShimError::agent(format!("exec {e} in container {id}")))?;
            let io = stdio::start(&c, &id, &e, &stdio_paths, &ns)?;
            Ok((pid, io))
        })
        .await;
        // Reported to containerd: the VMM's host pid, never the number
        // the guest chose (containerd and host tools act on task pids).
        let pid = vm.pid();
        let (guest_pid, io) = match started {
            Ok(v) => v,
            Err(e) => {
                let _ = self.with_process(&cid, &exec_id, |p| {
                    p.status = Status::STOPPED;
                    p.exit.send_replace(Some(Exit {
                        status: 255,
                        at: SystemTime::now(),
                    }));
                    Ok(())
                });
                return Err(e);
            }
        };
        let io = Arc::new(io);
        tracing::info!(cid, exec_id, guest_pid, pid, "exec started");
        self.with_process(&cid, &exec_id, |p| {
            p.pid = pid;
            p.status = Status::RUNNING;
            p.io = Some(io.clone());
            Ok(())
        })?;
        vm.watch_process(&cid, &exec_id);
        self.publish(
            topics::TASK_EXEC_STARTED_EVENT_TOPIC,
            Box::new(TaskExecStarted {
                container_id: cid,
                exec_id,
                pid,
                ..Default::default()
            }),
        )
        .await;
        Ok(StartResponse {
            pid,
            ..Default::default()
        })
    }

    async fn exec(&self, req: ExecProcessRequest) -> Result<()> {
        if req.exec_id.is_empty() {
            return Err(ShimError::InvalidArgument("empty exec id".into()));
        }
        let spec = req
            .spec
            .as_ref()
            .map(|a| a.value.clone())
            .filter(|v| !v.is_empty())
            .ok_or_else(|| ShimError::InvalidArgument("exec without a process spec".into()))?;
        serde_json::from_slice::<serde_json::Value>(&spec)
            .map_err(|e| ShimError::InvalidArgument(format!("exec process spec: {e}")))?;
        {
            let mut table = self.containers()?;
            let c = table
                .get_mut(&req.id)
                .ok_or_else(|| ShimError::NotFound(format!("container {}", req.id)))?;
            if c.init().and_then(Process::exited).is_some() {
                return Err(ShimError::FailedPrecondition(format!(
                    "container {} has stopped",
                    req.id
                )));
            }
            if c.processes.contains_key(&req.exec_id) {
                return Err(ShimError::AlreadyExists(format!("exec {}", req.exec_id)));
            }
            let mut p = Process::new(StdioPaths {
                stdin: req.stdin.clone(),
                stdout: req.stdout.clone(),
                stderr: req.stderr.clone(),
                terminal: req.terminal,
            });
            p.pending_spec = Some(spec);
            c.processes.insert(req.exec_id.clone(), p);
        }
        self.publish(
            topics::TASK_EXEC_ADDED_EVENT_TOPIC,
            Box::new(TaskExecAdded {
                container_id: req.id,
                exec_id: req.exec_id,
                ..Default::default()
            }),
        )
        .await;
        Ok(())
    }

    async fn kill(&self, req: KillRequest) -> Result<()> {
        let exited = self.with_process(&req.id, &req.exec_id, |p| Ok(p.finished_or_unstarted()))?;
        if exited && !req.all {
            // What containerd's shims answer, and what its CRI takes for
            // "already stopped".
            return Err(ShimError::NotFound(format!(
                "process {:?} of container {} (already finished or not started)",
                req.exec_id, req.id
            )));
        }
        let vm = self.running_vm().await?;
        let c = vm.pod().container(&req.id);
        blocking(move || {
            c.signal(&req.exec_id, req.signal, req.all)
                .map_err(ShimError::agent(format!("signalling {}", req.id)))
        })
        .await
    }

    async fn delete(&self, req: DeleteRequest) -> Result<DeleteResponse> {
        let (cid, exec_id) = (req.id.clone(), req.exec_id.clone());
        if !exec_id.is_empty() {
            let deleted = self.delete_exec(&cid, &exec_id).await;
            self.trace_guest().await;
            return deleted;
        }
        // The init exited but its exit is not recorded yet (its output
        // drains): wait for the record.
        let pending = self.with_process(&cid, "", |p| {
            Ok((p.finished && p.exited().is_none()).then(|| p.exit.subscribe()))
        })?;
        if let Some(mut rx) = pending {
            let _ = tokio::time::timeout(EXIT_RECORD_WAIT, rx.wait_for(Option::is_some)).await;
        }
        let (pid, exit) = self.with_process(&cid, "", |p| match (p.status, p.exited()) {
            (_, Some(e)) => Ok((p.pid, e)),
            (Status::CREATED, None) => Ok((
                p.pid,
                Exit {
                    status: 137,
                    at: SystemTime::now(),
                },
            )),
            (s, None) => Err(ShimError::FailedPrecondition(format!(
                "container {cid} is {s:?}; kill it before deleting"
            ))),
        })?;
        let vm = self.vm.lock().await.clone();
        let (share, rootfs) = {
            let table = self.containers()?;
            let c = table
                .get(&cid)
                .ok_or_else(|| ShimError::NotFound(format!("container {cid}")))?;
            (c.share.clone(), c.mounted_rootfs.clone())
        };
        // The last container: the VM is stopped right after, so the guest
        // is not asked to take the container apart first.
        let last = {
            let table = self.containers()?;
            table.len() == 1 && table.contains_key(&cid)
        };
        let id = cid.clone();
        let vm2 = vm.clone();
        blocking(move || {
            match vm2 {
                Some(vm) if vm.exit_status().is_none() => {
                    if !last {
                        vm.remove_container(&id);
                    }
                    // This container's spans in the guest, while it
                    // answers.
                    vm.trace_guest(false);
                    let _span = info_span!("task.cleanup").entered();
                    if let Err(e) = vm.share().remove_container(&id) {
                        tracing::warn!(cid = id, "removing the container's share: {e}");
                    }
                }
                // The VM is gone: its sandbox directory is being removed.
                _ => remove_share(&share),
            }
            if let Some(r) = rootfs {
                mounts::unmount_all(&r);
            }
            Ok(())
        })
        .await?;
        let empty = {
            let mut table = self.containers()?;
            table.remove(&cid);
            table.is_empty()
        };
        if empty {
            let mut guard = self.vm.lock().await;
            if let Some(vm) = guard.take() {
                let _ = blocking(move || {
                    vm.trace_guest(true);
                    vm.stop();
                    Ok(())
                })
                .await;
            }
        } else if let (true, Some(vm)) = (last, vm) {
            // A container was created meanwhile: the VM stays, so this one
            // is taken apart in the guest after all.
            let id = cid.clone();
            let _ = blocking(move || {
                vm.remove_container(&id);
                Ok(())
            })
            .await;
        }
        self.publish(
            topics::TASK_DELETE_EVENT_TOPIC,
            Box::new(TaskDelete {
                container_id: cid.clone(),
                id: cid,
                pid,
                exit_status: exit.status,
                exited_at: Some(timestamp(exit.at)).into(),
                ..Default::default()
            }),
        )
        .await;
        Ok(delete_response(pid, exit))
    }

    /// Deletes exec `exec_id` of container `cid` once it has exited.
    async fn delete_exec(&self, cid: &str, exec_id: &str) -> Result<DeleteResponse> {
        let finished = 'finished: {
            let mut table = self.containers()?;
            let c = table
                .get_mut(cid)
                .ok_or_else(|| ShimError::NotFound(format!("container {cid}")))?;
            let p = c
                .processes
                .get(exec_id)
                .ok_or_else(|| ShimError::NotFound(format!("exec {exec_id}")))?;
            let exit = match (p.exited(), &p.pending_spec, p.finished) {
                (Some(e), _, _) => e,
                (None, Some(_), _) => Exit {
                    status: 0,
                    at: SystemTime::now(),
                },
                (None, None, true) => break 'finished p.exit.subscribe(),
                (None, None, false) => {
                    return Err(ShimError::FailedPrecondition(format!(
                        "exec {exec_id} is still running"
                    )))
                }
            };
            let pid = p.pid;
            c.processes.remove(exec_id);
            return Ok(delete_response(pid, exit));
        };
        self.delete_finished(cid, exec_id, finished).await
    }

    /// With tracing on, adds the guest's spans not traced yet (an exec's,
    /// whose container may live on for long) to this shim's trace.
    async fn trace_guest(&self) {
        if !crate::trace::enabled() {
            return;
        }
        if let Some(vm) = self.vm.lock().await.clone() {
            let _ = blocking(move || {
                vm.trace_guest(false);
                Ok(())
            })
            .await;
        }
    }

    /// Deletes exec `exec_id` of `cid` that exited in the guest once its
    /// exit is recorded (bounded wait).
    async fn delete_finished(
        &self,
        cid: &str,
        exec_id: &str,
        mut rx: tokio::sync::watch::Receiver<Option<Exit>>,
    ) -> Result<DeleteResponse> {
        let _ = tokio::time::timeout(EXIT_RECORD_WAIT, rx.wait_for(Option::is_some)).await;
        let mut table = self.containers()?;
        let c = table
            .get_mut(cid)
            .ok_or_else(|| ShimError::NotFound(format!("container {cid}")))?;
        let p = c
            .processes
            .remove(exec_id)
            .ok_or_else(|| ShimError::NotFound(format!("exec {exec_id}")))?;
        let exit = p.exited().unwrap_or(Exit {
            status: 255,
            at: SystemTime::now(),
        });
        Ok(delete_response(p.pid, exit))
    }

    async fn state(&self, req: StateRequest) -> Result<StateResponse> {
        let table = self.containers()?;
        let c = table
            .get(&req.id)
            .ok_or_else(|| ShimError::NotFound(format!("container {}", req.id)))?;
        let p = c
            .processes
            .get(&req.exec_id)
            .ok_or_else(|| ShimError::NotFound(format!("exec {}", req.exec_id)))?;
        let exit = p.exited();
        Ok(StateResponse {
            id: req.id.clone(),
            bundle: c.bundle.to_string_lossy().into_owned(),
            pid: p.pid,
            status: p.status.into(),
            stdin: p.stdio.stdin.clone(),
            stdout: p.stdio.stdout.clone(),
            stderr: p.stdio.stderr.clone(),
            terminal: p.stdio.terminal,
            exit_status: exit.map_or(0, |e| e.status),
            exited_at: exit.map(|e| timestamp(e.at)).into(),
            exec_id: req.exec_id,
            ..Default::default()
        })
    }

    async fn pause_resume(&self, cid: String, pause: bool) -> Result<()> {
        let vm = self.running_vm().await?;
        let c = vm.pod().container(&cid);
        blocking(move || {
            if pause { c.pause() } else { c.resume() }.map_err(ShimError::agent(format!(
                "{} container {}",
                if pause { "pausing" } else { "resuming" },
                c.id()
            )))
        })
        .await?;
        self.with_process(&cid, "", |p| {
            p.status = if pause {
                Status::PAUSED
            } else {
                Status::RUNNING
            };
            Ok(())
        })?;
        if pause {
            self.publish(
                topics::TASK_PAUSED_EVENT_TOPIC,
                Box::new(TaskPaused {
                    container_id: cid,
                    ..Default::default()
                }),
            )
            .await;
        } else {
            self.publish(
                topics::TASK_RESUMED_EVENT_TOPIC,
                Box::new(TaskResumed {
                    container_id: cid,
                    ..Default::default()
                }),
            )
            .await;
        }
        Ok(())
    }

    async fn agent_call<T: Send + 'static>(
        &self,
        cid: &str,
        what: &str,
        f: impl FnOnce(
                &ContainerHandle,
            ) -> std::result::Result<T, nacre_runtime::agent::AgentClientError>
            + Send
            + 'static,
    ) -> Result<T> {
        if !self.containers()?.contains_key(cid) {
            return Err(ShimError::NotFound(format!("container {cid}")));
        }
        let vm = self.running_vm().await?;
        let (c, what) = (
            vm.pod().container(cid),
            format!("{what} of container {cid}"),
        );
        blocking(move || f(&c).map_err(ShimError::agent(what))).await
    }
}

fn delete_response(pid: u32, exit: Exit) -> DeleteResponse {
    DeleteResponse {
        pid,
        exit_status: exit.status,
        exited_at: Some(timestamp(exit.at)).into(),
        ..Default::default()
    }
}

/// Unmounts a container's binds and removes its directory from the
/// sandbox's share; `share` is the container's `<sandbox>/shared/<cid>`
/// (the view the guest sees): the work is done in `<sandbox>/rw` by
/// [`SharedDir::remove_container`], which checks the id.
fn remove_share(share: &Path) {
    let (Some(dir), Some(cid)) = (
        share.parent().and_then(Path::parent),
        share.file_name().and_then(|n| n.to_str()),
    ) else {
        tracing::warn!("not a container share: {}", share.display());
        return;
    };
    if let Err(e) = SharedDir::open(dir).remove_container(cid) {
        tracing::warn!(cid, "removing the container's share: {e}");
    }
}

/// Mounts containerd's rootfs mounts, in order, on `target`; on failure
/// unmounts what was mounted.
fn mount_rootfs(list: &[(String, String, Vec<String>)], target: &Path) -> Result<()> {
    for (kind, source, options) in list {
        let kind = Some(kind.as_str()).filter(|s| !s.is_empty());
        let source = Some(source.as_str()).filter(|s| !s.is_empty());
        if let Err(e) = containerd_shim::mount::mount_rootfs(kind, source, options, target) {
            mounts::unmount_all(target);
            return Err(ShimError::InvalidArgument(format!(
                "mounting the rootfs ({} {}) on {}: {e}",
                kind.unwrap_or("-"),
                source.unwrap_or("-"),
                target.display()
            )));
        }
    }
    Ok(())
}

impl Service {
    /// Wait: until process `exec_id` of `id` has exited.
    async fn wait_exit(&self, req: WaitRequest) -> TtrpcResult<WaitResponse> {
        let mut rx = self
            .inner
            .with_process(&req.id, &req.exec_id, |p| Ok(p.exit.subscribe()))?;
        let exit = rx
            .wait_for(Option::is_some)
            .await
            .map_err(|_| ShimError::Internal("the process record went away".into()))?
            .ok_or_else(|| ShimError::Internal("no exit recorded".into()))?;
        Ok(WaitResponse {
            exit_status: exit.status,
            exited_at: Some(timestamp(exit.at)).into(),
            ..Default::default()
        })
    }
}

/// How long a Delete waits for the exit record of a process that already
/// exited in the guest (its output drains for at most 10 s first).
const EXIT_RECORD_WAIT: Duration = Duration::from_secs(15);

#[async_trait::async_trait]
impl containerd_shim::Task for Service {
    async fn state(&self, _ctx: &TtrpcContext, req: StateRequest) -> TtrpcResult<StateResponse> {
        Ok(self.inner.state(req).await?)
    }

    async fn create(
        &self,
        _ctx: &TtrpcContext,
        req: CreateTaskRequest,
    ) -> TtrpcResult<CreateTaskResponse> {
        tracing::info!(id = req.id, bundle = req.bundle, "create");
        let span = info_span!("task.create", id = req.id.as_str());
        Ok(self.inner.create(req).instrument(span).await?)
    }

    async fn start(&self, _ctx: &TtrpcContext, req: StartRequest) -> TtrpcResult<StartResponse> {
        let span = info_span!(
            "task.start",
            id = req.id.as_str(),
            exec_id = req.exec_id.as_str()
        );
        Ok(self.inner.start(req).instrument(span).await?)
    }

    async fn delete(&self, _ctx: &TtrpcContext, req: DeleteRequest) -> TtrpcResult<DeleteResponse> {
        let span = info_span!(
            "task.delete",
            id = req.id.as_str(),
            exec_id = req.exec_id.as_str()
        );
        let deleted = self.inner.delete(req).instrument(span).await;
        // Each task's spans reach the file once it is gone (a shim may
        // serve its sandbox for long).
        crate::trace::flush_async(&self.inner.sandbox_id).await;
        Ok(deleted?)
    }

    async fn pids(&self, _ctx: &TtrpcContext, req: PidsRequest) -> TtrpcResult<PidsResponse> {
        let pids = self
            .inner
            .agent_call(&req.id, "listing the processes", |c| c.pids())
            .await?;
        Ok(PidsResponse {
            processes: pids
                .into_iter()
                .map(|pid| ProcessInfo {
                    pid,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })
    }

    async fn pause(&self, _ctx: &TtrpcContext, req: PauseRequest) -> TtrpcResult<Empty> {
        self.inner.pause_resume(req.id, true).await?;
        Ok(Empty::new())
    }

    async fn resume(&self, _ctx: &TtrpcContext, req: ResumeRequest) -> TtrpcResult<Empty> {
        self.inner.pause_resume(req.id, false).await?;
        Ok(Empty::new())
    }

    async fn checkpoint(
        &self,
        _ctx: &TtrpcContext,
        _req: containerd_shim::protos::api::CheckpointTaskRequest,
    ) -> TtrpcResult<Empty> {
        Err(ShimError::Unimplemented("checkpoint of a VM sandbox's task".into()).into())
    }

    async fn kill(&self, _ctx: &TtrpcContext, req: KillRequest) -> TtrpcResult<Empty> {
        let span = info_span!(
            "task.kill",
            id = req.id.as_str(),
            exec_id = req.exec_id.as_str(),
            signal = req.signal
        );
        self.inner.kill(req).instrument(span).await?;
        Ok(Empty::new())
    }

    async fn exec(&self, _ctx: &TtrpcContext, req: ExecProcessRequest) -> TtrpcResult<Empty> {
        let span = info_span!(
            "task.exec",
            id = req.id.as_str(),
            exec_id = req.exec_id.as_str()
        );
        self.inner.exec(req).instrument(span).await?;
        Ok(Empty::new())
    }

    async fn resize_pty(&self, _ctx: &TtrpcContext, req: ResizePtyRequest) -> TtrpcResult<Empty> {
        let exec_id = req.exec_id.clone();
        self.inner
            .agent_call(&req.id, "resizing the terminal", move |c| {
                c.resize(&exec_id, req.height, req.width)
            })
            .await?;
        Ok(Empty::new())
    }

    async fn close_io(&self, _ctx: &TtrpcContext, req: CloseIORequest) -> TtrpcResult<Empty> {
        tracing::debug!(id = req.id, exec_id = req.exec_id, "close_io");
        if req.stdin {
            // The stdin copy then reaches EOF (after what containerd's
            // side wrote) and closes the process's stdin in the guest.
            let io = self
                .inner
                .with_process(&req.id, &req.exec_id, |p| Ok(p.io.clone()))?;
            if let Some(io) = io {
                io.close_stdin();
            }
        }
        Ok(Empty::new())
    }

    async fn update(&self, _ctx: &TtrpcContext, req: UpdateTaskRequest) -> TtrpcResult<Empty> {
        let resources = req
            .resources
            .as_ref()
            .map(|a| a.value.clone())
            .filter(|v| !v.is_empty())
            .ok_or_else(|| ShimError::InvalidArgument("update without resources".into()))?;
        self.inner
            .agent_call(&req.id, "updating the resources", move |c| {
                c.update(&resources)
            })
            .await?;
        Ok(Empty::new())
    }

    async fn wait(&self, _ctx: &TtrpcContext, req: WaitRequest) -> TtrpcResult<WaitResponse> {
        let span = info_span!(
            "task.wait",
            id = req.id.as_str(),
            exec_id = req.exec_id.as_str()
        );
        self.wait_exit(req).instrument(span).await
    }

    async fn stats(&self, _ctx: &TtrpcContext, req: StatsRequest) -> TtrpcResult<StatsResponse> {
        let stats = self
            .inner
            .agent_call(&req.id, "reading the statistics", |c| c.stats())
            .await?;
        Ok(StatsResponse {
            stats: Some(metrics::to_any(&stats)?).into(),
            ..Default::default()
        })
    }

    async fn connect(
        &self,
        _ctx: &TtrpcContext,
        req: ConnectRequest,
    ) -> TtrpcResult<ConnectResponse> {
        let task_pid = self
            .inner
            .with_process(&req.id, "", |p| Ok(p.pid))
            .unwrap_or(0);
        Ok(ConnectResponse {
            shim_pid: std::process::id(),
            task_pid,
            version: env!("CARGO_PKG_VERSION").to_string(),
            ..Default::default()
        })
    }

    async fn shutdown(&self, _ctx: &TtrpcContext, _req: ShutdownRequest) -> TtrpcResult<Empty> {
        if !self.inner.containers()?.is_empty() {
            return Ok(Empty::new());
        }
        let vm = self.inner.vm.lock().await.take();
        if let Some(vm) = vm {
            let _ = blocking(move || {
                vm.shutdown();
                Ok(())
            })
            .await;
        }
        tracing::info!("last container gone; shim exits");
        self.inner.exit.signal();
        Ok(Empty::new())
    }
}

mod exits;
#[cfg(test)]
mod tests;
