//! Taking a snapshot of a running VM (the `snapshot` API request).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kvm_ioctls::VmFd;

use super::format::{self, FileId, Header};
use super::state::{BootShape, DevicesState, SnapshotState};
use super::{memory, MEMORY_FILE};
use crate::devices::legacy::{Cmos, SerialDevice};
use crate::devices::virtio::MmioTransport;
use crate::memory::GuestRam;
use crate::vcpu::VcpuControl;

/// How long the vCPUs may take to save their state.
const SAVE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long pause waits for the vCPUs to stop.
const PAUSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Everything a snapshot reads, held by the control socket's handler.
pub struct Snapshotter {
    pub vm: Arc<VmFd>,
    pub ram: GuestRam,
    pub control: Arc<VcpuControl>,
    pub serial: Arc<Mutex<SerialDevice>>,
    pub cmos: Arc<Mutex<Cmos>>,
    pub transports: Vec<Arc<Mutex<MmioTransport>>>,
    pub shape: BootShape,
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    /// KVM_GET_MSR_INDEX_LIST.
    pub msr_index: Vec<u32>,
    /// False when the VM was itself restored from a template (its RAM is
    /// a private mapping whose file does not hold the guest's writes).
    pub source_is_memfd: bool,
    /// Set once a snapshot quiesced the devices: the VM cannot resume.
    pub taken: AtomicBool,
}

impl std::fmt::Debug for Snapshotter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshotter")
            .field("shape", &self.shape)
            .finish_non_exhaustive()
    }
}

fn lock<T: ?Sized>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Snapshotter {
    /// Whether a snapshot stopped the devices (the VM must not resume).
    pub fn taken(&self) -> bool {
        self.taken.load(Ordering::SeqCst)
    }

    /// Pauses the VM and writes a template into `dir` (created; it must
    /// not exist, or be empty). The VM stays paused; once the devices were
    /// stopped it can only be shut down.
    pub fn take(&self, dir: &Path) -> Result<(), String> {
        let start = Instant::now();
        if !self.source_is_memfd {
            return Err(
                "this VM was restored from a template; snapshot the VM the template was taken from"
                    .into(),
            );
        }
        if self.taken() {
            return Err("a snapshot was already taken of this VM".into());
        }
        // Everything that can refuse, before anything changes.
        let devices: Vec<_> = self
            .transports
            .iter()
            .map(|t| lock(t).snapshot_check())
            .collect::<Result<_, _>>()?;
        match std::fs::create_dir(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let empty = std::fs::read_dir(dir)
                    .map(|mut d| d.next().is_none())
                    .unwrap_or(false);
                if !empty {
                    return Err(format!("{} exists and is not empty", dir.display()));
                }
            }
            Err(e) => return Err(format!("creating {}: {e}", dir.display())),
        }
        let kernel = FileId::of(&self.kernel).map_err(|e| e.to_string())?;
        let initrd = match &self.initrd {
            Some(p) => Some(FileId::of(p).map_err(|e| e.to_string())?),
            None => None,
        };

        self.control.pause(PAUSE_TIMEOUT)?;
        let vcpus = self
            .control
            .save_all(self.msr_index.clone(), SAVE_TIMEOUT)?;
        let vm = super::vm::save(&self.vm).map_err(|e| e.to_string())?;
        // From here on the devices are stopped for good.
        self.taken.store(true, Ordering::SeqCst);
        let mut virtio = Vec::new();
        for (transport, device) in self.transports.iter().zip(devices) {
            virtio.push(lock(transport).snapshot(device)?);
        }
        let devices = DevicesState {
            serial: lock(&self.serial).snapshot(),
            cmos_index: lock(&self.cmos).index(),
            virtio,
        };
        let saved = memory::save(&self.ram, &dir.join(MEMORY_FILE)).map_err(|e| e.to_string())?;
        let state = SnapshotState {
            shape: self.shape.clone(),
            vm,
            vcpus,
            devices,
        };
        format::write_state(
            dir,
            Header::new(kernel, initrd, self.ram.size, saved.sha256),
            &state,
        )
        .map_err(|e| e.to_string())?;
        tracing::info!(
            dir = %dir.display(),
            memory_written_mib = saved.written >> 20,
            took = ?start.elapsed(),
            "snapshot written"
        );
        Ok(())
    }
}
