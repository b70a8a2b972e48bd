//! CRI pod start latency: RunPodSandbox, CreateContainer, StartContainer,
//! until ContainerStatus reports the container running; one pod at a time
//! and several at once, for the runtime handlers `runc` and `nacre`.

use std::collections::HashMap;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use nacre_cri_tests::containerd::TEST_IMAGE;
use nacre_cri_tests::cri::v1::{
    ContainerConfig, ContainerMetadata, ContainerState, ImageSpec, KeyValue, PodSandboxConfig,
    PodSandboxMetadata,
};
use nacre_cri_tests::cri::{CriClient, CriError};
use serde::Serialize;

use crate::harness::{Harness, SHIM};
use crate::memory::Memory;

/// The runtime handlers compared.
pub const HANDLERS: [&str; 2] = ["runc", "nacre"];

/// What can go wrong starting one pod.
#[derive(Debug, thiserror::Error)]
pub enum PodError {
    #[error("{0}")]
    Cri(#[from] CriError),
    #[error("container {id} exited before running: {reason} {message}")]
    Exited {
        id: String,
        reason: String,
        message: String,
    },
    #[error("container {id} not running after {timeout:?}")]
    NotRunning { id: String, timeout: Duration },
    #[error("the pod's thread panicked")]
    Panicked,
}

/// Timings of one pod start, in seconds from RunPodSandbox.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct PodStart {
    /// RunPodSandbox answered.
    pub sandbox_secs: f64,
    /// The container was reported running.
    pub running_secs: f64,
}

/// The figures of one handler.
#[derive(Debug, Clone, Default, Serialize)]
pub struct HandlerResult {
    pub handler: String,
    /// One pod at a time.
    pub sequential: Vec<PodStart>,
    /// Pods started together: each pod's own start, and the wall time
    /// until all of them ran.
    pub concurrent: Vec<PodStart>,
    pub concurrent_wall_secs: Option<f64>,
    pub errors: Vec<String>,
}

/// Everything the section reports.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PodResults {
    pub runs: usize,
    pub concurrent: usize,
    pub handlers: Vec<HandlerResult>,
    /// Host memory (PSS, RSS) of the shim and VMM of one running nacre pod.
    pub nacre_pod_memory: Option<Memory>,
    /// Processes and sandbox directories left after the pods were removed.
    pub leftovers: Vec<String>,
}

pub(crate) fn pod_config(h: &Harness, name: &str) -> PodSandboxConfig {
    let logs = h.ctd.dir.join("logs").join(name);
    let _ = std::fs::create_dir_all(&logs);
    PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: name.into(),
            uid: format!("uid-{name}"),
            namespace: "bench".into(),
            attempt: 0,
        }),
        hostname: name.into(),
        log_directory: logs.to_string_lossy().into_owned(),
        ..Default::default()
    }
}

fn container_config() -> ContainerConfig {
    ContainerConfig {
        metadata: Some(ContainerMetadata {
            name: "sleep".into(),
            attempt: 0,
        }),
        image: Some(ImageSpec {
            image: TEST_IMAGE.into(),
            ..Default::default()
        }),
        command: ["sleep", "3600"].map(String::from).to_vec(),
        envs: vec![KeyValue {
            key: "PATH".into(),
            value: "/bin".into(),
        }],
        log_path: "sleep.log".into(),
        ..Default::default()
    }
}

/// Starts one pod with one `sleep` container and times it.
pub(crate) fn start_pod(
    cri: &CriClient,
    cfg: &PodSandboxConfig,
    handler: &str,
    timeout: Duration,
) -> Result<PodStart, PodError> {
    let start = Instant::now();
    let pod = cri.run_pod_sandbox(cfg, handler)?;
    let sandbox_secs = start.elapsed().as_secs_f64();
    let id = cri.create_container(&pod, &container_config(), cfg)?;
    cri.start_container(&id)?;
    let deadline = start + timeout;
    loop {
        let st = cri.container_status(&id)?;
        if st.state == ContainerState::ContainerRunning as i32 {
            return Ok(PodStart {
                sandbox_secs,
                running_secs: start.elapsed().as_secs_f64(),
            });
        }
        if st.state == ContainerState::ContainerExited as i32 {
            return Err(PodError::Exited {
                id,
                reason: st.reason,
                message: st.message,
            });
        }
        if Instant::now() > deadline {
            return Err(PodError::NotRunning { id, timeout });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Host memory of the shims of this containerd and their VMMs.
fn shim_memory(h: &Harness) -> Option<Memory> {
    let socket = h.ctd.socket().display().to_string();
    let shims = crate::procs::pids_of(SHIM, &socket);
    if shims.is_empty() {
        return None;
    }
    let vmms = shims
        .iter()
        .flat_map(|s| crate::procs::children_named(*s, "nacre-vmm"));
    Some(
        shims
            .iter()
            .copied()
            .chain(vmms)
            .filter_map(crate::memory::of_pid)
            .fold(Memory::default(), |a, b| a + b),
    )
}

fn remove_pods(h: &Harness, r: &mut HandlerResult) {
    if let Err(e) = h.ctd.remove_all_pods() {
        eprintln!("    removing pods: {e}");
        r.errors.push(format!("removing pods: {e}"));
    }
}

fn connect(h: &Harness, timeout: Duration) -> Result<CriClient, PodError> {
    let mut cri = CriClient::connect(&h.ctd.socket())?;
    cri.timeout = timeout;
    Ok(cri)
}

/// Starts `n` pods of `handler` together; returns each pod's start and
/// the wall time until all ran.
fn concurrent(
    h: &Harness,
    handler: &str,
    n: usize,
    timeout: Duration,
) -> (Vec<Result<PodStart, PodError>>, f64) {
    let barrier = Barrier::new(n + 1);
    std::thread::scope(|s| {
        let threads: Vec<_> = (0..n)
            .map(|i| {
                let barrier = &barrier;
                let cfg = pod_config(h, &format!("bench-{handler}-together-{i}"));
                s.spawn(move || {
                    let cri = connect(h, timeout);
                    barrier.wait();
                    start_pod(&cri?, &cfg, handler, timeout)
                })
            })
            .collect();
        barrier.wait();
        let t0 = Instant::now();
        let results = threads
            .into_iter()
            .map(|t| t.join().unwrap_or(Err(PodError::Panicked)))
            .collect();
        (results, t0.elapsed().as_secs_f64())
    })
}

/// Waits until the shims and VMMs of removed pods are gone; returns what
/// is still there after `timeout`.
fn wait_leftovers(h: &Harness, timeout: Duration) -> Vec<String> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = h.leftovers();
        if left.is_empty() || Instant::now() > deadline {
            return left;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Measures both handlers: `runs` pods one at a time, then `together`
/// pods at once; every pod is stopped and removed after its phase.
pub fn measure(h: &Harness, runs: usize, together: usize, timeout: Duration) -> PodResults {
    let mut out = PodResults {
        runs,
        concurrent: together,
        ..Default::default()
    };
    for handler in HANDLERS {
        let mut r = HandlerResult {
            handler: handler.into(),
            ..Default::default()
        };
        match connect(h, timeout) {
            Ok(cri) => {
                for i in 0..runs {
                    eprintln!("[pods {handler}] pod {}/{runs} alone...", i + 1);
                    let cfg = pod_config(h, &format!("bench-{handler}-alone-{i}"));
                    match start_pod(&cri, &cfg, handler, timeout) {
                        Ok(p) => {
                            eprintln!(
                                "    sandbox {:.2} s, container running {:.2} s",
                                p.sandbox_secs, p.running_secs
                            );
                            r.sequential.push(p);
                            if handler == "nacre" && i + 1 == runs {
                                out.nacre_pod_memory = shim_memory(h);
                            }
                        }
                        Err(e) => {
                            eprintln!("    failed: {e}");
                            r.errors.push(format!("pod alone: {e}"));
                        }
                    }
                    remove_pods(h, &mut r);
                }
            }
            Err(e) => r.errors.push(format!("CRI client: {e}")),
        }
        if together > 0 {
            eprintln!("[pods {handler}] {together} pods together...");
            let (results, wall) = concurrent(h, handler, together, timeout);
            for p in results {
                match p {
                    Ok(p) => r.concurrent.push(p),
                    Err(e) => r.errors.push(format!("pod together: {e}")),
                }
            }
            if r.concurrent.len() == together {
                r.concurrent_wall_secs = Some(wall);
            }
            eprintln!(
                "    {}/{together} running, all after {wall:.2} s",
                r.concurrent.len()
            );
            remove_pods(h, &mut r);
        }
        out.handlers.push(r);
    }
    out.leftovers = wait_leftovers(h, Duration::from_secs(60));
    out
}

/// Error counts per message, for short notes.
pub fn summarize_errors(errors: &[String]) -> Vec<(String, usize)> {
    let mut counts: HashMap<&str, usize> = HashMap::new();
    let mut order = Vec::new();
    for e in errors {
        let c = counts.entry(e.as_str()).or_insert(0);
        if *c == 0 {
            order.push(e.clone());
        }
        *c += 1;
    }
    order
        .into_iter()
        .map(|e| {
            let n = counts.get(e.as_str()).copied().unwrap_or(0);
            (e, n)
        })
        .collect()
}
