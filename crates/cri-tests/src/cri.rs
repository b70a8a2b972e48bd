//! A small blocking CRI v1 client over containerd's Unix socket (k8s-cri's
//! generated types and tonic clients), for tests: each call runs on a
//! private current-thread tokio runtime and gives up after a deadline.

use std::path::{Path, PathBuf};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::{
    ContainerConfig, ContainerFilter, ContainerStats, ContainerStatsRequest, ContainerStatus,
    ContainerStatusRequest, CreateContainerRequest, ExecRequest, ExecSyncRequest, ExecSyncResponse,
    ImageSpec, ImageStatusRequest, LinuxContainerResources, ListContainersRequest,
    ListPodSandboxRequest, PodSandboxConfig, PodSandboxStatus, PodSandboxStatusRequest,
    RemoveContainerRequest, RemovePodSandboxRequest, RunPodSandboxRequest, StartContainerRequest,
    StopContainerRequest, StopPodSandboxRequest, UpdateContainerResourcesRequest, VersionRequest,
};
use tonic::transport::{Channel, Endpoint, Uri};

pub use k8s_cri::v1;

/// What went wrong talking CRI.
#[derive(Debug, thiserror::Error)]
pub enum CriError {
    #[error("starting the client's tokio runtime: {0}")]
    Runtime(#[source] std::io::Error),
    #[error("connecting to the CRI socket {path}: {source}")]
    Connect {
        path: PathBuf,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("CRI {call}: {status}")]
    Rpc {
        call: &'static str,
        #[source]
        status: Box<tonic::Status>,
    },
    #[error("CRI {call}: no answer within {0:?}", .timeout)]
    Timeout {
        call: &'static str,
        timeout: Duration,
    },
    #[error("CRI {call}: the answer lacks {what}")]
    Missing {
        call: &'static str,
        what: &'static str,
    },
}

/// A connected CRI client (runtime and image services).
pub struct CriClient {
    rt: tokio::runtime::Runtime,
    runtime: RuntimeServiceClient<Channel>,
    images: ImageServiceClient<Channel>,
    /// Deadline of each call.
    pub timeout: Duration,
}

impl std::fmt::Debug for CriClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CriClient")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl CriClient {
    /// Connects to the CRI server listening on the Unix socket `socket`.
    pub fn connect(socket: &Path) -> Result<Self, CriError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(CriError::Runtime)?;
        let path = socket.to_path_buf();
        let connector = tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move {
                Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(path).await?))
            }
        });
        // The URI is a placeholder: the connector ignores it.
        let channel = rt
            .block_on(Endpoint::from_static("http://localhost").connect_with_connector(connector))
            .map_err(|source| CriError::Connect {
                path: socket.to_path_buf(),
                source,
            })?;
        Ok(Self {
            rt,
            runtime: RuntimeServiceClient::new(channel.clone()),
            images: ImageServiceClient::new(channel),
            timeout: Duration::from_secs(600),
        })
    }

    /// Runs `fut` on the client's runtime (the streaming module's sessions).
    pub(crate) fn block_on<F: std::future::Future>(&self, fut: F) -> F::Output {
        self.rt.block_on(fut)
    }

    fn call<T, F>(&self, call: &'static str, fut: F) -> Result<T, CriError>
    where
        F: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let timeout = self.timeout;
        match self
            .rt
            .block_on(async move { tokio::time::timeout(timeout, fut).await })
        {
            Ok(Ok(r)) => Ok(r.into_inner()),
            Ok(Err(status)) => Err(CriError::Rpc {
                call,
                status: Box::new(status),
            }),
            Err(_) => Err(CriError::Timeout { call, timeout }),
        }
    }

    /// The runtime's name and version (`containerd`, `v1.6.20...`).
    pub fn version(&self) -> Result<(String, String), CriError> {
        let mut c = self.runtime.clone();
        let r = self.call("Version", c.version(VersionRequest::default()))?;
        Ok((r.runtime_name, r.runtime_version))
    }

    /// Whether the image `name` is in containerd's CRI image store.
    pub fn image_present(&self, name: &str) -> Result<bool, CriError> {
        let mut c = self.images.clone();
        let r = self.call(
            "ImageStatus",
            c.image_status(ImageStatusRequest {
                image: Some(ImageSpec {
                    image: name.to_string(),
                    ..Default::default()
                }),
                verbose: false,
            }),
        )?;
        Ok(r.image.is_some())
    }

    /// RunPodSandbox with `handler` (`runc`, `nacre`); returns the sandbox id.
    pub fn run_pod_sandbox(
        &self,
        config: &PodSandboxConfig,
        handler: &str,
    ) -> Result<String, CriError> {
        let mut c = self.runtime.clone();
        let r = self.call(
            "RunPodSandbox",
            c.run_pod_sandbox(RunPodSandboxRequest {
                config: Some(config.clone()),
                runtime_handler: handler.to_string(),
            }),
        )?;
        Ok(r.pod_sandbox_id)
    }

    pub fn pod_sandbox_status(&self, id: &str) -> Result<PodSandboxStatus, CriError> {
        let mut c = self.runtime.clone();
        let r = self.call(
            "PodSandboxStatus",
            c.pod_sandbox_status(PodSandboxStatusRequest {
                pod_sandbox_id: id.to_string(),
                verbose: false,
            }),
        )?;
        r.status.ok_or(CriError::Missing {
            call: "PodSandboxStatus",
            what: "status",
        })
    }

    /// The pod's IP from PodSandboxStatus.
    pub fn pod_ip(&self, id: &str) -> Result<String, CriError> {
        self.pod_sandbox_status(id)?
            .network
            .map(|n| n.ip)
            .filter(|ip| !ip.is_empty())
            .ok_or(CriError::Missing {
                call: "PodSandboxStatus",
                what: "network.ip",
            })
    }

    /// Ids of every pod sandbox.
    pub fn list_pod_sandboxes(&self) -> Result<Vec<String>, CriError> {
        let mut c = self.runtime.clone();
        let r = self.call(
            "ListPodSandbox",
            c.list_pod_sandbox(ListPodSandboxRequest { filter: None }),
        )?;
        Ok(r.items.into_iter().map(|p| p.id).collect())
    }

    pub fn stop_pod_sandbox(&self, id: &str) -> Result<(), CriError> {
        let mut c = self.runtime.clone();
        self.call(
            "StopPodSandbox",
            c.stop_pod_sandbox(StopPodSandboxRequest {
                pod_sandbox_id: id.to_string(),
            }),
        )
        .map(drop)
    }

    pub fn remove_pod_sandbox(&self, id: &str) -> Result<(), CriError> {
        let mut c = self.runtime.clone();
        self.call(
            "RemovePodSandbox",
            c.remove_pod_sandbox(RemovePodSandboxRequest {
                pod_sandbox_id: id.to_string(),
            }),
        )
        .map(drop)
    }

    /// CreateContainer in sandbox `pod` (created with `pod_config`).
    pub fn create_container(
        &self,
        pod: &str,
        config: &ContainerConfig,
        pod_config: &PodSandboxConfig,
    ) -> Result<String, CriError> {
        let mut c = self.runtime.clone();
        let r = self.call(
            "CreateContainer",
            c.create_container(CreateContainerRequest {
                pod_sandbox_id: pod.to_string(),
                config: Some(config.clone()),
                sandbox_config: Some(pod_config.clone()),
            }),
        )?;
        Ok(r.container_id)
    }

    pub fn start_container(&self, id: &str) -> Result<(), CriError> {
        let mut c = self.runtime.clone();
        self.call(
            "StartContainer",
            c.start_container(StartContainerRequest {
                container_id: id.to_string(),
            }),
        )
        .map(drop)
    }

    /// ExecSync `cmd` in container `id`, `timeout_s` seconds at most.
    pub fn exec_sync(
        &self,
        id: &str,
        cmd: &[&str],
        timeout_s: i64,
    ) -> Result<ExecSyncResponse, CriError> {
        let mut c = self.runtime.clone();
        self.call(
            "ExecSync",
            c.exec_sync(ExecSyncRequest {
                container_id: id.to_string(),
                cmd: cmd.iter().map(|s| s.to_string()).collect(),
                timeout: timeout_s,
            }),
        )
    }

    /// CRI Exec: the URL of the exec's stream on the runtime's streaming
    /// server; [`CriClient::exec_stream`] runs the whole exec.
    pub fn exec(&self, request: &ExecRequest) -> Result<String, CriError> {
        let mut c = self.runtime.clone();
        let r = self.call("Exec", c.exec(request.clone()))?;
        if r.url.is_empty() {
            return Err(CriError::Missing {
                call: "Exec",
                what: "url",
            });
        }
        Ok(r.url)
    }

    pub fn container_status(&self, id: &str) -> Result<ContainerStatus, CriError> {
        let mut c = self.runtime.clone();
        let r = self.call(
            "ContainerStatus",
            c.container_status(ContainerStatusRequest {
                container_id: id.to_string(),
                verbose: false,
            }),
        )?;
        r.status.ok_or(CriError::Missing {
            call: "ContainerStatus",
            what: "status",
        })
    }

    pub fn container_stats(&self, id: &str) -> Result<ContainerStats, CriError> {
        let mut c = self.runtime.clone();
        let r = self.call(
            "ContainerStats",
            c.container_stats(ContainerStatsRequest {
                container_id: id.to_string(),
            }),
        )?;
        r.stats.ok_or(CriError::Missing {
            call: "ContainerStats",
            what: "stats",
        })
    }

    /// Ids of the containers of sandbox `pod` (all sandboxes when empty).
    pub fn list_containers(&self, pod: &str) -> Result<Vec<String>, CriError> {
        let mut c = self.runtime.clone();
        let r = self.call(
            "ListContainers",
            c.list_containers(ListContainersRequest {
                filter: Some(ContainerFilter {
                    pod_sandbox_id: pod.to_string(),
                    ..Default::default()
                }),
            }),
        )?;
        Ok(r.containers.into_iter().map(|c| c.id).collect())
    }

    pub fn stop_container(&self, id: &str, timeout_s: i64) -> Result<(), CriError> {
        let mut c = self.runtime.clone();
        self.call(
            "StopContainer",
            c.stop_container(StopContainerRequest {
                container_id: id.to_string(),
                timeout: timeout_s,
            }),
        )
        .map(drop)
    }

    pub fn remove_container(&self, id: &str) -> Result<(), CriError> {
        let mut c = self.runtime.clone();
        self.call(
            "RemoveContainer",
            c.remove_container(RemoveContainerRequest {
                container_id: id.to_string(),
            }),
        )
        .map(drop)
    }

    /// UpdateContainerResources with new Linux resources, as kubelet
    /// sends for an in-place resize.
    pub fn update_container_resources(
        &self,
        id: &str,
        linux: &LinuxContainerResources,
    ) -> Result<(), CriError> {
        let mut c = self.runtime.clone();
        self.call(
            "UpdateContainerResources",
            c.update_container_resources(UpdateContainerResourcesRequest {
                container_id: id.to_string(),
                linux: Some(linux.clone()),
                ..Default::default()
            }),
        )
        .map(drop)
    }
}
