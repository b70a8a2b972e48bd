//! The shim binary's three roles, as containerd's shim v2 protocol calls
//! them:
//!
//! - `start`: find or start the shim of the container's sandbox and print
//!   its ttRPC address. Containers of one CRI sandbox share one shim (and
//!   one VM): the second one gets the running shim's address.
//! - `delete`: clean up after a shim that died (unmount, kill the VMM).
//! - no action: the long-running shim serving the Task API on `-socket`.
//!
//! The service is registered under both `containerd.task.v2.Task`
//! (containerd 1.x) and `containerd.task.v3.Task` (2.x): the messages are
//! the same.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::SystemTime;

use containerd_shim::asynchronous::ExitSignal;
use containerd_shim::protos::api::DeleteResponse;
use containerd_shim::protos::protobuf::Message;
use containerd_shim::protos::shim_async::create_task;
use containerd_shim::protos::ttrpc::r#async::Server;
use containerd_shim::Flags;
use nacre_runtime::container::paths::validate_id;
use nacre_runtime::container::share::SharedDir;

use crate::config::Config;
use crate::error::ShimError;
use crate::layout;
use crate::service::Service;
use nacre_runtime::container::mounts;

/// The task service names containerd calls.
const TASK_V2: &str = "containerd.task.v2.Task";
const TASK_V3: &str = "containerd.task.v3.Task";

/// Errors of the shim binary's roles.
#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    #[error("parsing the command line: {0}")]
    Args(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Shim(String),
}

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> BootstrapError {
    let what = what.into();
    move |source| BootstrapError::Io { what, source }
}

/// Runs the role the command line asks for.
pub async fn run(args: &[std::ffi::OsString]) -> Result<(), BootstrapError> {
    let flags = containerd_shim::parse(args).map_err(|e| BootstrapError::Args(e.to_string()))?;
    if flags.version {
        println!("containerd-shim-nacre-v2 {}", env!("CARGO_PKG_VERSION"));
        return Ok(());
    }
    match flags.action.as_str() {
        "start" => start(&flags),
        "delete" => delete(&flags),
        "" => serve(&flags).await,
        other => Err(BootstrapError::Args(format!("unknown action {other:?}"))),
    }
}

fn socket_path(address: &str) -> &str {
    address.strip_prefix("unix://").unwrap_or(address)
}

fn shim_answers(address: &str) -> bool {
    UnixStream::connect(socket_path(address)).is_ok()
}

/// `start`: prints the address of the sandbox's shim, starting it first
/// unless it runs.
fn start(flags: &Flags) -> Result<(), BootstrapError> {
    let bundle = std::env::current_dir().map_err(io_err("reading the bundle directory"))?;
    let annotations = layout::bundle_annotations(&bundle);
    let sandbox = layout::sandbox_id(&flags.id, &annotations);
    let address = containerd_shim::socket_address(&flags.address, &flags.namespace, &sandbox);
    if !shim_answers(&address) {
        let path = socket_path(&address);
        if Path::new(path).exists() {
            // A dead shim's socket.
            let _ = std::fs::remove_file(path);
        }
        spawn_server(flags, &sandbox, &address, &bundle)?;
    }
    std::fs::write(bundle.join("address"), &address).map_err(io_err("writing address"))?;
    let mut out = std::io::stdout();
    out.write_all(address.as_bytes())
        .and_then(|()| out.flush())
        .map_err(io_err("writing the address"))
}

/// Starts the long-running shim and waits until it listens (it closes its
/// stdout then).
fn spawn_server(
    flags: &Flags,
    sandbox: &str,
    address: &str,
    bundle: &Path,
) -> Result<(), BootstrapError> {
    let exe = std::env::current_exe().map_err(io_err("locating the shim binary"))?;
    let mut cmd = Command::new(exe);
    cmd.current_dir(bundle)
        .args(["-namespace", &flags.namespace, "-id", sandbox])
        .args(["-address", &flags.address, "-socket", address])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    if !flags.publish_binary.is_empty() {
        cmd.args(["-publish-binary", &flags.publish_binary]);
    }
    if flags.debug {
        cmd.arg("-debug");
    }
    let mut child = cmd.spawn().map_err(io_err("starting the shim server"))?;
    let mut sink = Vec::new();
    if let Some(mut out) = child.stdout.take() {
        let _ = out.read_to_end(&mut sink);
    }
    if let Ok(Some(status)) = child.try_wait() {
        return Err(BootstrapError::Shim(format!(
            "the shim server exited with {status} before serving"
        )));
    }
    if !shim_answers(address) {
        let _ = child.kill();
        let _ = child.wait();
        return Err(BootstrapError::Shim(format!(
            "the shim server does not answer on {address}"
        )));
    }
    Ok(())
}

/// `delete`: containerd cleans up a container whose shim died.
fn delete(flags: &Flags) -> Result<(), BootstrapError> {
    // Before the id names any host path.
    validate_id(&flags.id).map_err(|e| BootstrapError::Args(e.to_string()))?;
    let bundle = if flags.bundle.is_empty() {
        std::env::current_dir().map_err(io_err("reading the bundle directory"))?
    } else {
        PathBuf::from(&flags.bundle)
    };
    let annotations = layout::bundle_annotations(&bundle);
    let sandbox = layout::sandbox_id(&flags.id, &annotations);
    let dir = layout::sandbox_dir(&flags.namespace, &sandbox);
    if let Err(e) = SharedDir::open(&dir).remove_container(&flags.id) {
        tracing::warn!("removing the share of {}: {e}", flags.id);
    }
    mounts::unmount_all(&bundle.join("rootfs"));
    let address = containerd_shim::socket_address(&flags.address, &flags.namespace, &sandbox);
    if !shim_answers(&address) {
        // The shim is gone: nothing else will stop its VM.
        nacre_runtime::container::process::kill_vmm(&dir.join("vm"), &[]);
        nacre_runtime::pod::remove_sandbox_dir(&dir);
        // And its host cgroup (empty once the VMM is gone; a container's
        // own cgroupsPath names nothing nacre made, which is no error).
        if let Some(path) = crate::podnet::PodSpec::load(&bundle).cgroups_path {
            let removed =
                nacre_runtime::host_cgroup::HostCgroup::locate(&path).and_then(|cg| cg.remove());
            if let Err(e) = removed {
                tracing::warn!("removing the host cgroup {path}: {e}");
            }
        }
    }
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let resp = DeleteResponse {
        exit_status: 128 + 9,
        exited_at: Some(
            containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp {
                seconds: i64::try_from(now.as_secs()).unwrap_or(0),
                nanos: 0,
                ..Default::default()
            },
        )
        .into(),
        ..Default::default()
    };
    let bytes = resp
        .write_to_bytes()
        .map_err(|e| BootstrapError::Shim(format!("encoding the delete response: {e}")))?;
    std::io::stdout()
        .write_all(&bytes)
        .map_err(io_err("writing the delete response"))
}

/// The long-running shim.
async fn serve(flags: &Flags) -> Result<(), BootstrapError> {
    if flags.socket.is_empty() {
        return Err(BootstrapError::Args("-socket is required".into()));
    }
    // SAFETY: setsid(2) has no memory-safety preconditions; it detaches
    // the shim from containerd's session so it outlives containerd.
    unsafe { libc::setsid() };
    let config = Config::load().map_err(|e| e.to_string());
    let level = config.as_ref().map_or("info", |c| c.log_level.as_str());
    if let Err(e) = containerd_shim::logger::init(flags.debug, level, &flags.namespace, &flags.id) {
        eprintln!("containerd-shim-nacre-v2: no log FIFO: {e}");
    }
    if let Err(e) = &config {
        tracing::error!("configuration: {e}");
    }
    crate::trace::init(config.as_ref().ok());
    let ttrpc_address = std::env::var("TTRPC_ADDRESS")
        .map_err(|_| BootstrapError::Shim("TTRPC_ADDRESS is not set".into()))?;
    let publisher = crate::events::Publisher::connect(&ttrpc_address)
        .await
        .map_err(|e| BootstrapError::Shim(e.to_string()))?;
    let exit = Arc::new(ExitSignal::default());
    let service = Service::new(&flags.namespace, &flags.id, config, publisher, exit.clone());
    let task: Arc<dyn containerd_shim::Task + Send + Sync> = Arc::new(service);
    let mut services = create_task(task.clone());
    if let Some(v3) = create_task(task).remove(TASK_V3) {
        services.insert(TASK_V2.to_string(), v3);
    }
    let path = socket_path(&flags.socket).to_string();
    if let Some(parent) = Path::new(&path).parent() {
        std::fs::create_dir_all(parent)
            .map_err(io_err(format!("creating {}", parent.display())))?;
    }
    let mut server = Server::new()
        .bind(&format!("unix://{path}"))
        .map_err(|e| BootstrapError::Shim(format!("listening on {path}: {e}")))?
        .register_service(services);
    server
        .start()
        .await
        .map_err(|e| BootstrapError::Shim(format!("serving on {path}: {e}")))?;
    // Tell `start` we serve: close the stdout pipe it reads.
    // SAFETY: dup2 onto our own stdout; stderr is /dev/null here.
    unsafe { libc::dup2(libc::STDERR_FILENO, libc::STDOUT_FILENO) };
    tracing::info!(socket = path, "shim serving");
    exit.wait().await;
    let _ = server.shutdown().await;
    let _ = std::fs::remove_file(&path);
    crate::trace::flush(&flags.id);
    Ok(())
}

impl From<ShimError> for BootstrapError {
    fn from(e: ShimError) -> Self {
        BootstrapError::Shim(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test code")]

    use super::*;

    /// L6: `delete -id <hostile id>` is refused by name before any path is
    /// built from it (it used to `remove_dir_all(<sandbox>/shared/<id>)`):
    /// a directory where `shared/../../<x>` would land survives.
    #[test]
    fn delete_refuses_hostile_ids() {
        let root = std::env::temp_dir().join(format!("nacre-shim-del-{}", std::process::id()));
        let bundle = root.join("bundle");
        std::fs::create_dir_all(&bundle).unwrap();
        for id in ["../../etc", "a/b", "", "..", "."] {
            let flags = Flags {
                id: id.to_string(),
                namespace: "k8s.io".to_string(),
                bundle: bundle.display().to_string(),
                ..Default::default()
            };
            let e = delete(&flags).unwrap_err();
            assert!(matches!(e, BootstrapError::Args(_)), "{id:?}: {e}");
        }
        assert!(bundle.is_dir());
        std::fs::remove_dir_all(&root).unwrap();
    }
}
