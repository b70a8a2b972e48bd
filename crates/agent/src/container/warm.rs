//! A throwaway container made and removed before a VM template is
//! snapshotted (`nacre.warm=1`, which only the template's boot passes):
//! the guest kernel's first-use work of a container (slab caches of a pid
//! namespace level, file system types' first mounts, per-namespace
//! tables) is then done in the template, not in every restored VM.

use std::path::Path;

use super::engine::{Engine, Launcher};

/// Where the warm-up container's rootfs is made (guest RAM).
const ROOT: &str = "/run/nacre/warm";
/// Its id.
const ID: &str = "nacre-warm-up";

/// The spec: what runc, crun and containerd's CRI write by default (every
/// namespace but the user's, the usual mounts, masked and read-only
/// paths, deny-all devices). Its process is never started.
const SPEC: &str = r#"{"ociVersion":"1.0.2",
 "process":{"terminal":false,"user":{"uid":0,"gid":0},"args":["/nacre-warm-up"],
  "env":["PATH=/usr/bin:/bin"],"cwd":"/","noNewPrivileges":true,
  "capabilities":{"bounding":["CAP_KILL"],"effective":["CAP_KILL"],"permitted":["CAP_KILL"]},
  "rlimits":[{"type":"RLIMIT_NOFILE","hard":1024,"soft":1024}]},
 "root":{"path":"/run/nacre/warm","readonly":true},
 "hostname":"warm",
 "mounts":[
  {"destination":"/proc","type":"proc","source":"proc"},
  {"destination":"/dev","type":"tmpfs","source":"tmpfs","options":["nosuid","strictatime","mode=755","size=65536k"]},
  {"destination":"/dev/pts","type":"devpts","source":"devpts","options":["nosuid","noexec","newinstance","ptmxmode=0666","mode=0620","gid=5"]},
  {"destination":"/dev/shm","type":"tmpfs","source":"shm","options":["nosuid","noexec","nodev","mode=1777","size=65536k"]},
  {"destination":"/dev/mqueue","type":"mqueue","source":"mqueue","options":["nosuid","noexec","nodev"]},
  {"destination":"/sys","type":"sysfs","source":"sysfs","options":["nosuid","noexec","nodev","ro"]},
  {"destination":"/sys/fs/cgroup","type":"cgroup","source":"cgroup","options":["nosuid","noexec","nodev","relatime","ro"]}],
 "linux":{"resources":{"devices":[{"allow":false,"access":"rwm"}]},
  "namespaces":[{"type":"pid"},{"type":"network"},{"type":"ipc"},{"type":"uts"},{"type":"mount"},{"type":"cgroup"}],
  "maskedPaths":["/proc/kcore","/proc/keys","/proc/timer_list","/sys/firmware"],
  "readonlyPaths":["/proc/bus","/proc/fs","/proc/irq","/proc/sys","/proc/sysrq-trigger"]}}"#;

impl<L: Launcher> Engine<L> {
    /// Creates and removes one container (see the module documentation).
    /// Failures are logged: a VM without the warm-up only starts its
    /// first container slower.
    pub fn warm_up(&self) {
        let _span = crate::trace::span("engine.warm_up");
        for dir in ["proc", "dev", "sys"] {
            if let Err(e) = std::fs::create_dir_all(Path::new(ROOT).join(dir)) {
                tracing::warn!("warm-up rootfs {ROOT}: {e}");
                return;
            }
        }
        match self.create(ID, SPEC.as_bytes()) {
            Ok(_) => {
                if let Err(e) = self.remove(ID) {
                    tracing::warn!("removing the warm-up container: {e}");
                }
            }
            Err(e) => tracing::warn!("warm-up container: {e}"),
        }
        if let Err(e) = std::fs::remove_dir_all(ROOT) {
            tracing::debug!("removing {ROOT}: {e}");
        }
    }
}
