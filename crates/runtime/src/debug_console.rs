//! The host side of the guest's debug console (`nacre debug-console`): a
//! shell in the VM outside every container, for the node's operators.
//! Off unless the configuration file says `[debug] console = true` when
//! the VM starts (the agent then listens on vsock port
//! [`nacre_protocol::DEBUG_CONSOLE_VSOCK_PORT`]); reached through the
//! VMM's hybrid vsock socket, which only root can open.

use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::agent::{hybrid_vsock_handshake, HandshakeError};
use crate::container::console::{is_tty, make_raw, restore};
use crate::container::paths::{pod_sandbox_dir_in, shim_root};
use crate::container::ContainerPaths;

/// How long the VMM and the guest have to answer the connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// Why the debug console could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum DebugConsoleError {
    /// The configuration does not enable it.
    #[error(
        "the debug console is disabled: set `[debug] console = true` in {config} and start \
         the sandbox again (it opens a root shell in the VM; off by default)"
    )]
    Disabled { config: String },
    /// Neither a container of the CLI nor a pod sandbox of this id runs.
    #[error("no container {id} under {root} and no pod sandbox {id} in namespace {namespace}")]
    NotFound {
        id: String,
        root: PathBuf,
        namespace: String,
    },
    /// The VM runs but its agent serves no console.
    #[error(
        "the VM of {id} serves no debug console: it was started while `[debug] console` was \
         off (start it again with the console enabled)"
    )]
    NotServed { id: String },
    /// Connecting to the VMM's vsock socket failed.
    #[error("connecting to the VM's vsock socket {path}: {source}")]
    Connect {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The handshake went wrong otherwise.
    #[error("opening the debug console through {path}: {source}")]
    Handshake {
        path: PathBuf,
        #[source]
        source: HandshakeError,
    },
    /// Relaying the terminal failed.
    #[error("relaying the debug console: {0}")]
    Relay(#[source] io::Error),
}

/// The VMM vsock socket of `id`: a container of the CLI under `root`, or
/// a pod sandbox of the containerd shim in `namespace`.
pub fn vsock_socket(root: &Path, id: &str, namespace: &str) -> Result<PathBuf, DebugConsoleError> {
    vsock_socket_in(root, &shim_root(), id, namespace)
}

/// [`vsock_socket`] with the shim's root given.
fn vsock_socket_in(
    root: &Path,
    shim_root: &Path,
    id: &str,
    namespace: &str,
) -> Result<PathBuf, DebugConsoleError> {
    let not_found = || DebugConsoleError::NotFound {
        id: id.to_owned(),
        root: root.to_path_buf(),
        namespace: namespace.to_owned(),
    };
    let paths = ContainerPaths::new(root, id).map_err(|_| not_found())?;
    if paths.dir().is_dir() {
        return Ok(paths.vsock_socket());
    }
    let pod = pod_sandbox_dir_in(shim_root, namespace, id)
        .join("vm")
        .join("vsock.sock");
    if pod.exists() {
        return Ok(pod);
    }
    Err(not_found())
}

/// Opens the console of the VM behind `socket` (`id` names it in errors).
pub fn connect(socket: &Path, id: &str) -> Result<UnixStream, DebugConsoleError> {
    let mut stream = UnixStream::connect(socket).map_err(|source| DebugConsoleError::Connect {
        path: socket.to_path_buf(),
        source,
    })?;
    match hybrid_vsock_handshake(
        &mut stream,
        nacre_protocol::DEBUG_CONSOLE_VSOCK_PORT,
        CONNECT_TIMEOUT,
    ) {
        Ok(_) => Ok(stream),
        // The VMM resets a connection to a port nobody listens on.
        Err(HandshakeError::Closed) => Err(DebugConsoleError::NotServed { id: id.to_owned() }),
        Err(source) => Err(DebugConsoleError::Handshake {
            path: socket.to_path_buf(),
            source,
        }),
    }
}

/// Relays this process's stdin and stdout to `stream` until the guest's
/// shell ends; stdin is put in raw mode while it is a terminal (so that
/// keys such as Ctrl-C reach the guest's shell).
pub fn relay(stream: UnixStream) -> Result<(), DebugConsoleError> {
    let stdin = io::stdin();
    let fd = stdin.as_raw_fd();
    let saved = if is_tty(fd) { make_raw(fd).ok() } else { None };
    let mut to_guest = stream.try_clone().map_err(DebugConsoleError::Relay)?;
    // Detached: it ends with stdin or when the process exits.
    std::thread::spawn(move || {
        let mut stdin = io::stdin().lock();
        let mut buf = [0u8; 4096];
        loop {
            match stdin.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if to_guest.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
        // End of input: the terminal's end-of-file character, so the
        // guest's shell exits once it has run what came before. (Closing
        // the connection would hang the shell up at once.)
        let _ = to_guest.write_all(b"\x04");
    });
    let result = copy_out(stream);
    if let Some(saved) = saved {
        restore(fd, &saved);
    }
    result.map_err(DebugConsoleError::Relay)
}

fn copy_out(mut stream: UnixStream) -> io::Result<()> {
    let mut out = io::stdout().lock();
    let mut buf = [0u8; 4096];
    loop {
        let n = match stream.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return Ok(()),
            Err(e) => return Err(e),
        };
        out.write_all(&buf[..n])?;
        out.flush()?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A CLI container by its state directory, a pod sandbox by the shim's
    /// directory of (namespace, id), else a clear error.
    #[test]
    fn containers_and_pods_are_found() {
        let base = std::env::temp_dir().join(format!("nacre-dbg-{}", std::process::id()));
        let (root, shim) = (base.join("root"), base.join("shim"));
        std::fs::create_dir_all(root.join("c1")).unwrap();
        let pod_vm = pod_sandbox_dir_in(&shim, "k8s.io", "pod1").join("vm");
        std::fs::create_dir_all(&pod_vm).unwrap();
        std::fs::write(pod_vm.join("vsock.sock"), "").unwrap();
        let c = vsock_socket_in(&root, &shim, "c1", "k8s.io").unwrap();
        assert_eq!(c, root.join("c1/vm/vsock.sock"));
        let p = vsock_socket_in(&root, &shim, "pod1", "k8s.io").unwrap();
        assert_eq!(p, pod_vm.join("vsock.sock"));
        let err = vsock_socket_in(&root, &shim, "pod1", "default")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("no pod sandbox pod1 in namespace default"),
            "{err}"
        );
        std::fs::remove_dir_all(&base).unwrap();
    }
}
