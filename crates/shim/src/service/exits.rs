//! How the Task service learns that processes ended and that the VM died:
//! the pod's watcher sends events ([`PodEvent`]) to one task per VM,
//! which records exits and publishes TaskOOM and TaskExit.

use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};

use containerd_shim::protos::api::Status;
use containerd_shim::protos::events::task::{TaskExit, TaskOOM};
use containerd_shim::protos::topics;
use nacre_runtime::agent::AgentClientError;
use nacre_runtime::container::mounts;
use nacre_runtime::pod::{EventSink, PodEvent};
use tracing::Instrument;

use super::{blocking, timestamp, Inner, Result};
use crate::error::ShimError;
use crate::task::Exit;
use crate::vm::Vm;

/// How long a process whose wait failed waits for the VMM's exit to give
/// it a status.
const VM_EXIT_GRACE: Duration = Duration::from_secs(5);

/// How long a finished process's output may drain.
const OUTPUT_DRAIN: Duration = Duration::from_secs(10);

/// How often running containers are checked for OOM kills that did not
/// end a process the shim waits for (a child of one, say).
const OOM_POLL_INTERVAL: Duration = Duration::from_secs(5);

impl Inner {
    /// Starts the watcher of `vm` and the task that handles its events.
    pub(super) fn watch(self: &Arc<Self>, vm: &Arc<Vm>) -> Result<()> {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let sink: EventSink = Arc::new(move |e| {
            let _ = tx.send(e);
        });
        vm.watch(sink)
            .map_err(|e| ShimError::Internal(format!("watching the sandbox VM: {e}")))?;
        // The task must not keep the VM alive: it ends with the last
        // sender, once the VM and its waits are gone.
        let (inner, weak) = (Arc::clone(self), Arc::downgrade(vm));
        tokio::spawn(async move {
            while let Some(event) = rx.recv().await {
                let Some(vm) = Weak::upgrade(&weak) else {
                    return;
                };
                match event {
                    PodEvent::VmExited => inner.vm_exited(vm).await,
                    PodEvent::Exited { cid, exec_id, exit } => {
                        let inner = Arc::clone(&inner);
                        let span = tracing::info_span!(
                            "task.exit",
                            id = cid.as_str(),
                            exec_id = exec_id.as_str()
                        );
                        tokio::spawn(
                            async move {
                                inner.process_exited(vm, cid, exec_id, exit).await;
                            }
                            .instrument(span),
                        );
                    }
                }
            }
        });
        Ok(())
    }

    /// The VMM exited: unless the shim stopped it, every process exits
    /// with the status the VM's end gives.
    async fn vm_exited(&self, vm: Arc<Vm>) {
        if vm.is_shut_down() {
            return;
        }
        let v = Arc::clone(&vm);
        let status = blocking(move || Ok(v.poll_exit())).await.ok().flatten();
        if let Some(status) = status {
            if !vm.is_shut_down() {
                self.vm_died(vm, status).await;
            }
        }
    }

    /// Process `exec_id` of `cid` ended in the guest (or waiting for it
    /// failed): once its output drained, TaskOOM (if the OOM killer took
    /// it) then TaskExit.
    async fn process_exited(
        &self,
        vm: Arc<Vm>,
        cid: String,
        exec_id: String,
        exit: std::result::Result<i32, AgentClientError>,
    ) {
        // Kill and Delete know at once that it is gone, while its last
        // output drains.
        let io = match self.containers() {
            Ok(mut table) => table
                .get_mut(&cid)
                .and_then(|c| c.processes.get_mut(&exec_id))
                .and_then(|p| {
                    p.finished = true;
                    p.io.clone()
                }),
            Err(_) => None,
        };
        let c = cid.clone();
        let status = blocking(move || {
            let status = vm.pod().exit_of(&c, &exit, VM_EXIT_GRACE);
            if let Some(io) = io {
                io.close_stdin();
                io.wait_outputs(OUTPUT_DRAIN);
            }
            Ok(u32::try_from(status).unwrap_or(255))
        })
        .await
        .unwrap_or(255);
        self.check_oom(&cid).await;
        self.record_exit(&cid, &exec_id, status).await;
    }

    /// Publishes TaskOOM if the OOM kill count of container `cid`'s
    /// cgroup grew since it was last read.
    pub(super) async fn check_oom(&self, cid: &str) {
        let Ok(vm) = self.running_vm().await else {
            return;
        };
        let c = vm.pod().container(cid);
        let stats = blocking(move || {
            c.stats().map_err(ShimError::agent(format!(
                "reading the statistics of {}",
                c.id()
            )))
        })
        .await;
        let kills = match stats {
            Ok(s) => s.memory_oom_kill,
            Err(e) => {
                tracing::debug!(cid, "checking for OOM kills: {e}");
                return;
            }
        };
        let grew = match self.containers() {
            Ok(mut table) => match table.get_mut(cid) {
                Some(c) if kills > c.oom_kills => {
                    c.oom_kills = kills;
                    true
                }
                _ => false,
            },
            Err(_) => false,
        };
        if grew {
            tracing::info!(cid, kills, "OOM kill in the container");
            self.publish(
                topics::TASK_OOM_EVENT_TOPIC,
                Box::new(TaskOOM {
                    container_id: cid.to_string(),
                    ..Default::default()
                }),
            )
            .await;
        }
    }

    /// Records that a process exited (once) and publishes TaskExit.
    pub(super) async fn record_exit(&self, cid: &str, exec_id: &str, status: u32) {
        let now = SystemTime::now();
        let pid = {
            let Ok(mut table) = self.containers() else {
                return;
            };
            let Some(p) = table
                .get_mut(cid)
                .and_then(|c| c.processes.get_mut(exec_id))
            else {
                return;
            };
            if p.exited().is_some() {
                return;
            }
            p.status = Status::STOPPED;
            p.exit.send_replace(Some(Exit { status, at: now }));
            p.pid
        };
        tracing::info!(cid, exec_id, status, "process exited");
        self.publish(
            topics::TASK_EXIT_EVENT_TOPIC,
            Box::new(TaskExit {
                container_id: cid.to_string(),
                id: if exec_id.is_empty() {
                    cid.to_string()
                } else {
                    exec_id.to_string()
                },
                pid,
                exit_status: status,
                exited_at: Some(timestamp(now)).into(),
                ..Default::default()
            }),
        )
        .await;
    }

    /// The VM died: every process exits with `status`, and every host
    /// resource of the sandbox goes.
    async fn vm_died(&self, vm: Arc<Vm>, status: u32) {
        let running: Vec<(String, String)> = match self.containers() {
            Ok(table) => table
                .iter()
                .flat_map(|(cid, c)| {
                    c.processes
                        .iter()
                        .filter(|(_, p)| p.exited().is_none() && p.pending_spec.is_none())
                        .map(move |(e, _)| (cid.clone(), e.clone()))
                })
                .collect(),
            Err(_) => Vec::new(),
        };
        for (cid, exec_id) in running {
            self.record_exit(&cid, &exec_id, status).await;
        }
        let rootfs: Vec<std::path::PathBuf> = self
            .containers()
            .map(|t| {
                t.values()
                    .filter_map(|c| c.mounted_rootfs.clone())
                    .collect()
            })
            .unwrap_or_default();
        let _ = blocking(move || {
            for r in rootfs {
                mounts::unmount_all(&r);
            }
            vm.shutdown();
            Ok(())
        })
        .await;
    }
}

/// Checks the running containers for OOM kills every
/// [`OOM_POLL_INTERVAL`] (the guest's cgroup events do not reach the host
/// on their own) until the VM stops.
pub(super) fn spawn_oom_poller(inner: Arc<Inner>, vm: Arc<Vm>) {
    let weak = Arc::downgrade(&vm);
    drop(vm);
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(OOM_POLL_INTERVAL).await;
            let Some(vm) = weak.upgrade() else {
                return;
            };
            if vm.is_shut_down() || vm.exit_status().is_some() {
                return;
            }
            let running: Vec<String> = match inner.containers() {
                Ok(table) => table
                    .iter()
                    .filter(|(_, c)| c.init().is_some_and(|p| p.status == Status::RUNNING))
                    .map(|(cid, _)| cid.clone())
                    .collect(),
                Err(_) => return,
            };
            for cid in running {
                inner.check_oom(&cid).await;
            }
        }
    });
}
