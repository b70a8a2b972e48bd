//! The files the VMM leaves in the host's file system, removed on every
//! exit path: the control socket, the hybrid vsock socket and the
//! `<uds>_<port>` sockets next to it.

use std::ffi::OsString;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

/// Paths to remove when the VMM exits. Removal also happens on drop.
#[derive(Debug, Default)]
pub struct Cleanup {
    sockets: Vec<PathBuf>,
    vsock_uds: Option<PathBuf>,
}

impl Cleanup {
    /// Removes `path` at exit.
    pub fn add_socket(&mut self, path: &Path) {
        self.sockets.push(path.to_path_buf());
    }

    /// Removes the hybrid vsock socket and its per-port sockets at exit.
    pub fn add_vsock_uds(&mut self, path: &Path) {
        self.vsock_uds = Some(path.to_path_buf());
    }

    /// Removes everything registered; safe to call more than once.
    pub fn run(&mut self) {
        let mut paths = std::mem::take(&mut self.sockets);
        if let Some(uds) = self.vsock_uds.take() {
            paths.extend(port_sockets(&uds));
            paths.push(uds);
        }
        for path in paths {
            match std::fs::remove_file(&path) {
                Ok(()) => tracing::debug!(path = %path.display(), "removed"),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => tracing::warn!(path = %path.display(), "removing: {e}"),
            }
        }
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        self.run();
    }
}

/// The `<uds>_<port>` sockets next to `uds`.
fn port_sockets(uds: &Path) -> Vec<PathBuf> {
    let (Some(dir), Some(name)) = (uds.parent(), uds.file_name()) else {
        return Vec::new();
    };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let mut prefix = OsString::from(name);
    prefix.push("_");
    let prefix = prefix.to_string_lossy().into_owned();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let is_port = name
                .strip_prefix(&prefix)
                .is_some_and(|port| !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()));
            is_port && e.file_type().is_ok_and(|t| t.is_socket())
        })
        .map(|e| e.path())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    #[test]
    fn removes_sockets_and_port_listeners_only() {
        let dir = std::env::temp_dir().join(format!("nacre-cleanup-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let uds = dir.join("vsock.sock");
        let api = dir.join("api.sock");
        let _l1 = UnixListener::bind(&uds);
        let _l2 = UnixListener::bind(dir.join("vsock.sock_1024"));
        let _l3 = UnixListener::bind(&api);
        let _ = std::fs::write(dir.join("vsock.sock_99"), b"regular file");
        let _l4 = UnixListener::bind(dir.join("vsock.sock_x"));
        {
            let mut c = Cleanup::default();
            c.add_socket(&api);
            c.add_vsock_uds(&uds);
        }
        assert!(!uds.exists());
        assert!(!api.exists());
        assert!(!dir.join("vsock.sock_1024").exists());
        assert!(dir.join("vsock.sock_99").exists());
        assert!(dir.join("vsock.sock_x").exists());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
