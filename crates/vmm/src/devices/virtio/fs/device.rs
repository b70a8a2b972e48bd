//! The virtio-fs [`VirtioDevice`]: configuration space (tag and number of
//! request queues), feature bits, and the worker's lifetime.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use fuse_backend_rs::passthrough::{CachePolicy, Config as PassthroughConfig};
use tracing::debug;
use virtio_bindings::bindings::virtio_config::VIRTIO_F_VERSION_1;

use super::super::counters::{DeviceCounters, DeviceKind};
use super::super::{ActivateError, ActiveQueue, GuestMemory, Interrupt, VirtioDevice};
use super::config::{config_space, validate_tag, CacheMode, SharedDir, SharedDirError, CONFIG_LEN};
use super::dax::DaxWindow;
use super::worker::Worker;
use crate::devices::virtio::read_config_bytes;
use crate::devices::virtio::worker::WorkerHandle;

/// The virtio device ID of virtio-fs.
pub const FS_DEVICE_TYPE: u32 = 26;
/// Maximum size of each queue (hiprio, then the request queue).
pub const QUEUE_SIZE: u16 = 256;
/// One request queue besides the hiprio queue.
pub const NUM_REQUEST_QUEUES: u32 = 1;
const QUEUE_SIZES: [u16; 2] = [QUEUE_SIZE; 2];

/// How long the guest may cache entries and attributes.
const CACHE_TIMEOUT: Duration = Duration::from_secs(1);

/// Errors creating a virtio-fs device.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error(transparent)]
    Tag(#[from] SharedDirError),
    #[error("shared directory {path}: {source}")]
    Path {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("shared directory {path} is not a directory")]
    NotADirectory { path: PathBuf },
    #[error("shared directory {path}: the path is not valid UTF-8")]
    NotUtf8 { path: PathBuf },
}

/// The virtio-fs device: one host directory served by an in-process FUSE
/// server (fuse-backend-rs `PassthroughFs`).
#[derive(Debug)]
pub struct VirtioFs {
    tag: String,
    root: PathBuf,
    cache: CacheMode,
    config: [u8; CONFIG_LEN],
    acked_features: u64,
    worker: Option<WorkerHandle>,
    counters: Arc<DeviceCounters>,
    /// The DAX window (shared memory region 0), once the VM has one.
    window: Option<Arc<DaxWindow>>,
}

impl VirtioFs {
    /// Creates the device sharing `dir.path` (resolved now, symlinks and
    /// all, so the guest is rooted at the real directory) under `dir.tag`.
    pub fn new(dir: &SharedDir) -> Result<Self, FsError> {
        validate_tag(&dir.tag)?;
        let root = std::fs::canonicalize(&dir.path).map_err(|source| FsError::Path {
            path: dir.path.clone(),
            source,
        })?;
        let meta = std::fs::metadata(&root).map_err(|source| FsError::Path {
            path: dir.path.clone(),
            source,
        })?;
        if !meta.is_dir() {
            return Err(FsError::NotADirectory {
                path: dir.path.clone(),
            });
        }
        if root.to_str().is_none() {
            return Err(FsError::NotUtf8 {
                path: dir.path.clone(),
            });
        }
        raise_nofile_limit();
        Ok(Self {
            tag: dir.tag.clone(),
            config: config_space(&dir.tag, NUM_REQUEST_QUEUES),
            root,
            cache: dir.cache,
            acked_features: 0,
            worker: None,
            counters: Arc::new(DeviceCounters::new(DeviceKind::Fs, &dir.tag)),
            window: None,
        })
    }

    /// The tag the guest mounts.
    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// The shared directory, resolved.
    pub fn root(&self) -> &std::path::Path {
        &self.root
    }

    /// Offers `window` to the guest as the device's DAX window (the VM
    /// maps it first: a KVM memory slot at its guest address).
    pub fn set_window(&mut self, window: Arc<DaxWindow>) {
        self.window = Some(window);
    }

    fn stop_worker(&mut self) {
        if let Some(worker) = self.worker.take() {
            worker.stop();
        }
    }
}

/// The `PassthroughFs` options for a shared directory at `root`.
///
/// - `do_import`: the root inode is set up on FUSE_INIT; lookups are
///   relative to it with `O_NOFOLLOW` one component at a time, and `..` of
///   the root is the root, so the guest cannot name a host path outside.
/// - `inode_file_handles` off: inodes are held as `O_PATH` descriptors, no
///   `open_by_handle_at` (which needs CAP_DAC_READ_SEARCH and would let a
///   forged handle reach any file of the host file system).
/// - `enable_mntid`: an inode is keyed by mount as well as device and
///   inode number, so a file reached through a read-only bind mount never
///   shares a descriptor with the same file seen through a writable one.
/// - `xattr` off: nothing in the guest needs them, and they would let the
///   guest set `security.*`/`trusted.*` attributes on host files.
/// - `writeback` off, 1 s entry/attribute timeouts: the host may change
///   the files (volumes), so writes go through at once and metadata is
///   revalidated soon.
/// - cache policy from `cache` (default `Auto`: close-to-open, the guest
///   drops a file's cached data when it opens it again; `Always` keeps it,
///   for trees only the guest changes, such as a container rootfs, where
///   re-reading every binary on each exec is costly).
/// - `no_open`/`no_opendir`/`killpriv_v2` off, `seal_size` off.
/// - `dax_file_size` 0: see `dax_scope`.
pub fn passthrough_config(root: &std::path::Path, cache: CacheMode) -> PassthroughConfig {
    PassthroughConfig {
        root_dir: root.to_string_lossy().into_owned(),
        do_import: true,
        inode_file_handles: false,
        enable_mntid: true,
        xattr: false,
        writeback: false,
        cache_policy: match cache {
            CacheMode::Auto => CachePolicy::Auto,
            CacheMode::Always => CachePolicy::Always,
            CacheMode::Never => CachePolicy::Never,
        },
        entry_timeout: CACHE_TIMEOUT,
        attr_timeout: CACHE_TIMEOUT,
        no_open: false,
        no_opendir: false,
        killpriv_v2: false,
        // Every entry says the guest may map the file (FUSE_ATTR_DAX, with
        // the guest's `dax=inode`); the guard keeps that for rootfs files
        // only (`dax_scope`).
        dax_file_size: Some(0),
        ..PassthroughConfig::default()
    }
}

/// Every inode the guest looks up holds an `O_PATH` descriptor: lift the
/// soft descriptor limit to the hard one.
fn raise_nofile_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the valid struct passed.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return;
    }
    if lim.rlim_cur < lim.rlim_max {
        lim.rlim_cur = lim.rlim_max;
        // SAFETY: setrlimit reads the valid struct passed.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
            debug!(
                "virtio-fs: raising RLIMIT_NOFILE: {}",
                std::io::Error::last_os_error()
            );
        }
    }
}

impl VirtioDevice for VirtioFs {
    fn device_type(&self) -> u32 {
        FS_DEVICE_TYPE
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn avail_features(&self) -> u64 {
        1 << VIRTIO_F_VERSION_1
    }

    fn set_acked_features(&mut self, acked: u64) {
        self.acked_features = acked & self.avail_features();
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn counters(&self) -> Option<Arc<DeviceCounters>> {
        Some(self.counters.clone())
    }

    /// Region 0 (VIRTIO_FS_SHMCAP_ID_CACHE) is the DAX window.
    fn shared_memory(&self, id: u32) -> Option<(u64, u64)> {
        let w = self.window.as_ref().filter(|_| id == 0)?;
        Some((w.guest_addr(), w.size()))
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        debug!(
            offset,
            len = data.len(),
            "virtio-fs: ignoring a config write"
        );
    }

    fn activate(
        &mut self,
        mem: GuestMemory,
        interrupt: Arc<Interrupt>,
        queues: Vec<ActiveQueue>,
    ) -> Result<(), ActivateError> {
        let got = queues.len();
        let queues: [ActiveQueue; 2] = queues
            .try_into()
            .map_err(|_| ActivateError::QueueCount { expected: 2, got })?;
        self.stop_worker();
        let worker = Worker::new(
            mem,
            interrupt,
            queues,
            self.counters.clone(),
            self.window.clone(),
        )
        .map_err(ActivateError::Worker)?;
        let handle = worker
            .spawn(&self.tag, passthrough_config(&self.root, self.cache))
            .map_err(ActivateError::Worker)?;
        self.worker = Some(handle);
        debug!(tag = %self.tag, root = %self.root.display(), "virtio-fs: activated");
        Ok(())
    }

    fn reset(&mut self) -> bool {
        self.stop_worker();
        self.acked_features = 0;
        true
    }

    /// Only the device is saved, never a FUSE session: the transport
    /// refuses a snapshot once the guest used the queues (mounted).
    fn snapshot_state(&self) -> Result<crate::snapshot::DeviceState, String> {
        Ok(crate::snapshot::DeviceState::Fs {
            tag: self.tag().to_string(),
        })
    }

    fn quiesce(&mut self) {
        self.stop_worker();
    }
}

impl Drop for VirtioFs {
    fn drop(&mut self) {
        if self.worker.is_some() {
            self.stop_worker();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_checks_the_path() {
        let missing = SharedDir::parse("t=/nonexistent/nacre-fs-test").unwrap();
        assert!(matches!(VirtioFs::new(&missing), Err(FsError::Path { .. })));
        let file = SharedDir::parse("t=/proc/self/status").unwrap();
        let err = VirtioFs::new(&file).unwrap_err();
        assert!(matches!(err, FsError::NotADirectory { .. }));
        assert!(err.to_string().contains("/proc/self/status"));
        let bad_tag = SharedDir {
            tag: String::new(),
            path: "/tmp".into(),
            cache: CacheMode::Auto,
        };
        assert!(matches!(VirtioFs::new(&bad_tag), Err(FsError::Tag(_))));
    }

    #[test]
    fn config_space_reads() {
        let dev = VirtioFs::new(&SharedDir::parse("nacre=/tmp").unwrap()).unwrap();
        assert_eq!(dev.device_type(), 26);
        assert_eq!(dev.queue_max_sizes().len(), 2);
        let mut tag = [0xffu8; 8];
        dev.read_config(0, &mut tag);
        assert_eq!(&tag, b"nacre\0\0\0");
        let mut nrq = [0u8; 4];
        dev.read_config(36, &mut nrq);
        assert_eq!(u32::from_le_bytes(nrq), 1);
        let mut past = [0xffu8; 4];
        dev.read_config(38, &mut past);
        assert_eq!(past, [0, 0, 0, 0]);
        dev.read_config(u64::MAX, &mut past);
        assert_eq!(past, [0, 0, 0, 0]);
    }
}
