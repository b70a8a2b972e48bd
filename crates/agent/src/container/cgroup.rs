//! cgroup v2: one cgroup per container at `<root>/nacre/<container id>`.
//!
//! The root is configurable (`--cgroup-root`): in the guest it is
//! `/sys/fs/cgroup`; a host with hybrid cgroups has its v2 hierarchy at
//! `/sys/fs/cgroup/unified`, usually without controllers. Files of a
//! controller that is not available are skipped with a warning.

use std::collections::BTreeSet;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use super::spec::Resources;

/// The directory under the root that holds the containers' cgroups.
pub const NACRE_DIR: &str = "nacre";

/// Controllers enabled only once a container sets one of their files
/// (see [`CgroupRoot::prepare`]); the others (memory, pids, io) give
/// every container its usage figures and OOM events.
const LAZY_CONTROLLERS: [&str; 5] = ["cpu", "cpuset", "hugetlb", "rdma", "misc"];

/// A cgroup operation failed.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// A file or directory operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was done.
        op: &'static str,
        /// The file or directory.
        path: String,
        /// The system error.
        #[source]
        source: io::Error,
    },
    /// A resource setting is invalid (as runc judges it).
    #[error("{field}: {reason}")]
    Invalid {
        /// The OCI field (`linux.resources.memory.swap`).
        field: &'static str,
        /// Why.
        reason: String,
    },
    /// The guest kernel lacks the file a setting needs.
    #[error("{field}: not supported by the guest kernel (no cgroup file {file})")]
    Unsupported {
        /// The OCI field.
        field: &'static str,
        /// The cgroup file that is missing.
        file: String,
    },
}

impl CgroupError {
    /// Whether the request, not the system, is at fault.
    #[must_use]
    pub fn is_invalid(&self) -> bool {
        !matches!(self, CgroupError::Io { .. })
    }
}

fn err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> CgroupError + 'a {
    move |source| CgroupError::Io {
        op,
        path: path.display().to_string(),
        source,
    }
}

/// Every cgroup v2 interface file the agent writes for a container's
/// resources ([`resource_files`]) or reads for its statistics and
/// lifecycle. A VM test checks the guest kernel offers each of them in a
/// container's cgroup, so a missing kernel option fails a test, not a pod.
pub const INTERFACE_FILES: &[&str] = &[
    "cgroup.procs",
    "cgroup.freeze",
    "cgroup.events",
    "pids.max",
    "pids.current",
    "memory.max",
    "memory.low",
    "memory.swap.max",
    "memory.current",
    "memory.events",
    "cpu.weight",
    "cpu.max",
    "cpu.stat",
    "cpuset.cpus",
    "cpuset.mems",
    "io.stat",
];

/// The OCI field of cgroup v2 files given by name.
const UNIFIED: &str = "linux.resources.unified";

/// One file [`Cgroup::apply`] writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting {
    /// The interface file (`memory.max`).
    pub file: String,
    /// What is written.
    pub value: String,
    /// The OCI field it comes from, for errors.
    pub field: &'static str,
    /// runc's rule for a kernel without the file: a swap limit of `max`
    /// or `0` (no swap allowed) means nothing there and is skipped.
    pub skip_if_missing: bool,
}

/// The files and values that apply `resources` in cgroup v2, in order,
/// following runc's conversions and checks.
pub fn resource_files(r: &Resources) -> Result<Vec<Setting>, CgroupError> {
    let mut files = Vec::new();
    let mut set = |field: &'static str, file: &str, value: String| {
        files.push(Setting {
            file: file.to_owned(),
            value,
            field,
            skip_if_missing: false,
        });
    };
    let limit = |v: i64| {
        if v < 0 {
            "max".to_owned()
        } else {
            v.to_string()
        }
    };
    if let Some(pids) = &r.pids {
        let value = if pids.limit > 0 {
            pids.limit.to_string()
        } else {
            "max".into()
        };
        set("linux.resources.pids.limit", "pids.max", value);
    }
    let mut swap = None;
    if let Some(mem) = &r.memory {
        if let Some(l) = mem.limit {
            set("linux.resources.memory.limit", "memory.max", limit(l));
        }
        if let Some(low) = mem.reservation {
            set(
                "linux.resources.memory.reservation",
                "memory.low",
                limit(low),
            );
        }
        swap = swap_max(mem.swap, mem.limit)?;
    }
    if let Some(cpu) = &r.cpu {
        if let Some(shares) = cpu.shares.filter(|s| *s > 0) {
            set(
                "linux.resources.cpu.shares",
                "cpu.weight",
                shares_to_weight(shares).to_string(),
            );
        }
        if cpu.quota.is_some() || cpu.period.is_some() {
            let quota = match cpu.quota {
                Some(q) if q > 0 => q.to_string(),
                _ => "max".into(),
            };
            let period = cpu.period.filter(|p| *p > 0).unwrap_or(100_000);
            set(
                "linux.resources.cpu.quota",
                "cpu.max",
                format!("{quota} {period}"),
            );
        }
        if let Some(cpus) = cpu.cpus.as_ref().filter(|c| !c.is_empty()) {
            set("linux.resources.cpu.cpus", "cpuset.cpus", cpus.clone());
        }
        if let Some(mems) = cpu.mems.as_ref().filter(|m| !m.is_empty()) {
            set("linux.resources.cpu.mems", "cpuset.mems", mems.clone());
        }
    }
    for (file, value) in &r.unified {
        set(UNIFIED, file, value.clone());
    }
    if let Some(value) = swap {
        let skip_if_missing = value == "max" || value == "0";
        files.push(Setting {
            file: "memory.swap.max".into(),
            value,
            field: "linux.resources.memory.swap",
            skip_if_missing,
        });
    }
    Ok(files)
}

/// runc's conversion of OCI `memory.swap` (memory + swap, v1's meaning)
/// to v2's `memory.swap.max` (swap alone): -1 is `max`, 0 or unset is
/// nothing to write, otherwise it needs a memory limit no larger than
/// itself; equal values mean no swap (`0`).
fn swap_max(swap: Option<i64>, memory: Option<i64>) -> Result<Option<String>, CgroupError> {
    let invalid = |reason: String| CgroupError::Invalid {
        field: "linux.resources.memory.swap",
        reason,
    };
    match (swap, memory) {
        (None | Some(0), _) => Ok(None),
        (Some(s), _) if s < 0 => Ok(Some("max".into())),
        (Some(_), None | Some(0)) => Err(invalid(
            "a swap limit needs a memory limit (linux.resources.memory.limit)".into(),
        )),
        // An unlimited memory with a finite memory+swap: runc refuses it.
        (Some(s), Some(m)) if m < 0 => Err(invalid(format!(
            "memory+swap limit {s} with an unlimited memory limit"
        ))),
        (Some(s), Some(m)) if s < m => Err(invalid(format!(
            "memory+swap limit {s} should be >= memory limit {m}"
        ))),
        (Some(s), Some(m)) => Ok(Some((s - m).to_string())),
    }
}

/// cgroup v1 cpu.shares (2..262144) to v2 cpu.weight (1..10000), as runc
/// converts it.
#[must_use]
pub fn shares_to_weight(shares: u64) -> u64 {
    let shares = shares.clamp(2, 262_144);
    1 + ((shares - 2) * 9999) / 262_142
}

/// The controller a cgroup file belongs to (`memory.max` → `memory`);
/// `None` for the core `cgroup.*` files.
#[must_use]
pub fn controller_of(file: &str) -> Option<&str> {
    let (prefix, _) = file.split_once('.')?;
    (prefix != "cgroup").then_some(prefix)
}

/// Usage read from a cgroup.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// cpu.stat usage_usec.
    pub cpu_usage_usec: u64,
    /// cpu.stat user_usec.
    pub cpu_user_usec: u64,
    /// cpu.stat system_usec.
    pub cpu_system_usec: u64,
    /// memory.current.
    pub memory_usage_bytes: u64,
    /// memory.max, 0 for "max".
    pub memory_limit_bytes: u64,
    /// pids.current.
    pub pids_current: u64,
    /// pids.max, 0 for "max".
    pub pids_limit: u64,
    /// Sum of io.stat rbytes.
    pub io_read_bytes: u64,
    /// Sum of io.stat wbytes.
    pub io_write_bytes: u64,
    /// memory.events oom_kill.
    pub memory_oom_kill: u64,
}

/// Parses `key value` lines (cpu.stat) into the value of `key`.
#[must_use]
pub fn flat_key(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (k, v) = line.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok())?
    })
}

/// Parses a single-value file; "max" and garbage are 0.
#[must_use]
pub fn single_value(text: &str) -> u64 {
    text.trim().parse().unwrap_or(0)
}

/// Sums `rbytes=` and `wbytes=` over the devices of io.stat.
#[must_use]
pub fn io_bytes(text: &str) -> (u64, u64) {
    let (mut read, mut written) = (0u64, 0u64);
    for field in text.split_whitespace() {
        if let Some(v) = field.strip_prefix("rbytes=") {
            read = read.saturating_add(v.parse().unwrap_or(0));
        } else if let Some(v) = field.strip_prefix("wbytes=") {
            written = written.saturating_add(v.parse().unwrap_or(0));
        }
    }
    (read, written)
}

/// The cgroup v2 hierarchy the agent puts containers in.
#[derive(Debug, Clone)]
pub struct CgroupRoot {
    root: PathBuf,
    /// `<root>/nacre` exists with every controller enabled (see
    /// [`CgroupRoot::prepare`]).
    prepared: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl CgroupRoot {
    /// A hierarchy mounted at `root`.
    #[must_use]
    pub fn new(root: impl Into<PathBuf>) -> CgroupRoot {
        CgroupRoot {
            root: root.into(),
            prepared: std::sync::Arc::default(),
        }
    }

    /// Creates `<root>/nacre` with every available controller enabled,
    /// once: later creations skip it (the agent does it before a VM
    /// template is snapshotted, so restored VMs start with it done).
    pub fn prepare(&self) -> Result<(), CgroupError> {
        use std::sync::atomic::Ordering;
        if self.prepared.load(Ordering::SeqCst) {
            return Ok(());
        }
        let parent = self.parent();
        fs::create_dir_all(&parent).map_err(err("creating", &parent))?;
        let mut available = read_controllers(&self.root);
        // Enabled on first need (see `Cgroup::apply`): a cgroup is cheaper
        // to make without them, and without `cpu` a container's tasks are
        // scheduled without a group level of their own (no load tracking
        // per level at every context switch).
        for c in LAZY_CONTROLLERS {
            available.remove(c);
        }
        enable_controllers(&self.root, &available);
        enable_controllers(&parent, &available);
        self.prepared.store(true, Ordering::SeqCst);
        Ok(())
    }

    /// The parent of the containers' cgroups.
    #[must_use]
    pub fn parent(&self) -> PathBuf {
        self.root.join(NACRE_DIR)
    }

    /// Whether the hierarchy is there (a cgroup2 mount with
    /// `cgroup.controllers`).
    #[must_use]
    pub fn available(&self) -> bool {
        self.root.join("cgroup.controllers").exists()
    }

    /// Creates `<root>/nacre` with every available controller enabled,
    /// then the container's cgroup `<root>/nacre/<id>`.
    pub fn create(&self, id: &str) -> Result<Cgroup, CgroupError> {
        self.prepare()?;
        let path = self.parent().join(id);
        match fs::create_dir(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(err("creating", &path)(e)),
        }
        Ok(Cgroup::open(path))
    }
}

/// Writes `value` to an existing cgroup file: never `O_CREAT`, so a file
/// the kernel lacks is `NotFound` (cgroupfs answers a create with EACCES).
fn write_existing(path: &Path, value: &str) -> io::Result<()> {
    use std::io::Write;
    fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)?
        .write_all(value.as_bytes())
}

fn read_controllers(dir: &Path) -> BTreeSet<String> {
    fs::read_to_string(dir.join("cgroup.controllers"))
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

fn enable_controllers(dir: &Path, controllers: &BTreeSet<String>) {
    let file = dir.join("cgroup.subtree_control");
    let enabled: BTreeSet<String> = fs::read_to_string(&file)
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    for c in controllers.difference(&enabled) {
        if let Err(e) = fs::write(&file, format!("+{c}")) {
            tracing::warn!("enabling cgroup controller {c} in {}: {e}", file.display());
        }
    }
}

/// One container's cgroup.
#[derive(Debug, Clone)]
pub struct Cgroup {
    path: PathBuf,
    controllers: BTreeSet<String>,
}

impl Cgroup {
    /// The cgroup at `path`, with the controllers enabled for it.
    #[must_use]
    pub fn open(path: PathBuf) -> Cgroup {
        let controllers = read_controllers(&path);
        Cgroup { path, controllers }
    }

    /// Its directory.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes the files of `resources`. Files of controllers the
    /// hierarchy does not offer are skipped with a warning (the agent on
    /// a host without them, in tests); a missing file of an available
    /// controller is an error naming the setting, except where runc
    /// tolerates it (a swap limit of `max` or `0` without swap support).
    pub fn apply(&self, resources: &Resources) -> Result<(), CgroupError> {
        let files = resource_files(resources)?;
        let mut controllers = self.controllers.clone();
        let wanted: BTreeSet<String> = files
            .iter()
            .filter_map(|s| controller_of(&s.file))
            .filter(|c| LAZY_CONTROLLERS.contains(c) && !controllers.contains(*c))
            .map(str::to_owned)
            .collect();
        if !wanted.is_empty() {
            controllers = self.enable_lazy(&wanted);
        }
        for s in files {
            if let Some(c) = controller_of(&s.file) {
                // runc refuses a unified key of a missing controller.
                if !controllers.contains(c) && s.field == UNIFIED {
                    return Err(CgroupError::Unsupported {
                        field: s.field,
                        file: s.file,
                    });
                }
                if !controllers.contains(c) {
                    tracing::warn!(
                        "cgroup controller {c} not available in {}: {} not set",
                        self.path.display(),
                        s.file
                    );
                    continue;
                }
            }
            let path = self.path.join(&s.file);
            match write_existing(&path, &s.value) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound && s.skip_if_missing => {
                    tracing::debug!("{} absent: {} = {} skipped", s.file, s.field, s.value);
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    return Err(CgroupError::Unsupported {
                        field: s.field,
                        file: s.file,
                    });
                }
                Err(e) => {
                    return Err(CgroupError::Io {
                        op: "writing",
                        path: format!("{} ({} = {})", path.display(), s.field, s.value),
                        source: e,
                    })
                }
            }
        }
        Ok(())
    }

    /// Enables the `wanted` [`LAZY_CONTROLLERS`] that the hierarchy
    /// offers down to this cgroup; returns the controllers it has then.
    fn enable_lazy(&self, wanted: &BTreeSet<String>) -> BTreeSet<String> {
        let parent = self.path.parent();
        if let (Some(parent), Some(root)) = (parent, parent.and_then(Path::parent)) {
            let offered: BTreeSet<String> = read_controllers(root)
                .intersection(wanted)
                .cloned()
                .collect();
            enable_controllers(root, &offered);
            enable_controllers(parent, &offered);
        }
        read_controllers(&self.path)
    }

    /// Moves `pid` into the cgroup (0: the caller).
    pub fn add(&self, pid: libc::pid_t) -> Result<(), CgroupError> {
        let path = self.path.join("cgroup.procs");
        fs::write(&path, pid.to_string()).map_err(err("writing", &path))
    }

    /// The pids in the cgroup.
    pub fn procs(&self) -> Result<Vec<u32>, CgroupError> {
        let path = self.path.join("cgroup.procs");
        let text = fs::read_to_string(&path).map_err(err("reading", &path))?;
        Ok(text.lines().filter_map(|l| l.trim().parse().ok()).collect())
    }

    /// Freezes or thaws the cgroup and waits until the kernel reports it.
    pub fn freeze(&self, frozen: bool) -> Result<(), CgroupError> {
        let path = self.path.join("cgroup.freeze");
        fs::write(&path, if frozen { "1" } else { "0" }).map_err(err("writing", &path))?;
        let events = self.path.join("cgroup.events");
        let want = if frozen { "frozen 1" } else { "frozen 0" };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let text = fs::read_to_string(&events).map_err(err("reading", &events))?;
            if text.lines().any(|l| l.trim() == want) || Instant::now() > deadline {
                return Ok(());
            }
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// Whether the cgroup is frozen.
    #[must_use]
    pub fn frozen(&self) -> bool {
        fs::read_to_string(self.path.join("cgroup.freeze")).is_ok_and(|s| s.trim() == "1")
    }

    /// Sends `signal` to every process in the cgroup.
    pub fn signal_all(&self, signal: libc::c_int) -> Result<(), CgroupError> {
        for pid in self.procs()? {
            let Ok(pid) = libc::pid_t::try_from(pid) else {
                continue;
            };
            // SAFETY: kill has no memory effects; a vanished pid is ESRCH.
            unsafe { libc::kill(pid, signal) };
        }
        Ok(())
    }

    /// Reads the usage counters; missing files count as 0.
    #[must_use]
    pub fn stats(&self) -> Stats {
        let read = |file: &str| fs::read_to_string(self.path.join(file)).unwrap_or_default();
        let cpu = read("cpu.stat");
        let (io_read_bytes, io_write_bytes) = io_bytes(&read("io.stat"));
        Stats {
            cpu_usage_usec: flat_key(&cpu, "usage_usec").unwrap_or(0),
            cpu_user_usec: flat_key(&cpu, "user_usec").unwrap_or(0),
            cpu_system_usec: flat_key(&cpu, "system_usec").unwrap_or(0),
            memory_usage_bytes: single_value(&read("memory.current")),
            memory_limit_bytes: single_value(&read("memory.max")),
            pids_current: single_value(&read("pids.current")),
            pids_limit: single_value(&read("pids.max")),
            io_read_bytes,
            io_write_bytes,
            memory_oom_kill: flat_key(&read("memory.events"), "oom_kill").unwrap_or(0),
        }
    }

    /// Kills what is left and removes the directory (retrying while the
    /// kernel still counts exiting processes).
    pub fn destroy(&self) -> Result<(), CgroupError> {
        if !self.path.exists() {
            return Ok(());
        }
        // A frozen cgroup's processes cannot die.
        if self.frozen() {
            let _ = self.freeze(false);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let _ = self.signal_all(libc::SIGKILL);
            match fs::remove_dir(&self.path) {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
                Err(e) if Instant::now() < deadline => {
                    tracing::debug!("removing {}: {e}; retrying", self.path.display());
                    thread::sleep(Duration::from_millis(20));
                }
                Err(e) => return Err(err("removing", &self.path)(e)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::spec::{Cpu, Memory, Pids};
    use super::*;

    #[test]
    fn resources_to_files() {
        let r = Resources {
            memory: Some(Memory {
                limit: Some(64 << 20),
                reservation: None,
                swap: Some(128 << 20),
            }),
            cpu: Some(Cpu {
                shares: Some(1024),
                quota: Some(50_000),
                period: Some(100_000),
                cpus: Some("0".into()),
                mems: None,
            }),
            pids: Some(Pids { limit: 4 }),
            unified: [("memory.high".to_owned(), "32M".to_owned())].into(),
            ..Resources::default()
        };
        let files = resource_files(&r).unwrap();
        let get = |f: &str| files.iter().find(|s| s.file == f).map(|s| s.value.as_str());
        assert_eq!(get("pids.max"), Some("4"));
        assert_eq!(get("memory.max"), Some("67108864"));
        assert_eq!(get("memory.swap.max"), Some("67108864"));
        assert_eq!(get("cpu.weight"), Some("39"));
        assert_eq!(get("cpu.max"), Some("50000 100000"));
        assert_eq!(get("cpuset.cpus"), Some("0"));
        assert_eq!(get("memory.high"), Some("32M"));
    }

    #[test]
    fn unlimited_values() {
        let r = Resources {
            memory: Some(Memory {
                limit: Some(-1),
                reservation: None,
                swap: Some(-1),
            }),
            cpu: Some(Cpu {
                quota: Some(-1),
                ..Cpu::default()
            }),
            pids: Some(Pids { limit: 0 }),
            ..Resources::default()
        };
        let files: Vec<(String, String)> = resource_files(&r)
            .unwrap()
            .into_iter()
            .map(|s| (s.file, s.value))
            .collect();
        assert!(files.contains(&("pids.max".into(), "max".into())));
        assert!(files.contains(&("memory.max".into(), "max".into())));
        assert!(files.contains(&("memory.swap.max".into(), "max".into())));
        assert!(files.contains(&("cpu.max".into(), "max 100000".into())));
        assert!(resource_files(&Resources::default()).unwrap().is_empty());
    }

    fn memory(limit: Option<i64>, swap: Option<i64>) -> Resources {
        Resources {
            memory: Some(Memory {
                limit,
                reservation: None,
                swap,
            }),
            ..Resources::default()
        }
    }

    fn swap_setting(limit: Option<i64>, swap: Option<i64>) -> Option<Setting> {
        resource_files(&memory(limit, swap))
            .unwrap()
            .into_iter()
            .find(|s| s.file == "memory.swap.max")
    }

    /// runc's swap rules: kubelet and Docker send memory+swap; equal
    /// values mean "no swap" (0), which a kernel without swap files may
    /// skip, as it may skip "max"; a real swap allowance may not.
    #[test]
    fn swap_follows_runc() {
        let m = 128 << 20;
        let none = swap_setting(Some(m), Some(m)).unwrap();
        assert_eq!((none.value.as_str(), none.skip_if_missing), ("0", true));
        let max = swap_setting(Some(m), Some(-1)).unwrap();
        assert_eq!((max.value.as_str(), max.skip_if_missing), ("max", true));
        let some = swap_setting(Some(m), Some(2 * m)).unwrap();
        assert_eq!(
            (some.value.as_str(), some.skip_if_missing),
            ("134217728", false)
        );
        assert_eq!(swap_setting(Some(m), Some(0)), None);
        assert_eq!(swap_setting(Some(m), None), None);
        for (limit, swap, why) in [
            (None, Some(m), "needs a memory limit"),
            (Some(m), Some(m / 2), "should be >= memory limit"),
            (Some(-1), Some(m), "unlimited memory limit"),
        ] {
            let e = resource_files(&memory(limit, swap)).unwrap_err();
            assert!(e.is_invalid(), "{e}");
            let text = e.to_string();
            assert!(
                text.starts_with("linux.resources.memory.swap: ") && text.contains(why),
                "{text}"
            );
        }
    }

    /// In a hierarchy where the memory controller is on but a file is
    /// missing: "no swap" is skipped, a swap allowance and any other
    /// missing file is an error naming the setting and the file.
    #[test]
    fn missing_files_follow_runc() {
        let dir = std::env::temp_dir().join(format!("nacre-cg-missing-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("cgroup.controllers"), "memory cpu\n").unwrap();
        fs::write(dir.join("memory.max"), "max\n").unwrap();
        let cg = Cgroup::open(dir.clone());
        let m = 64 << 20;
        cg.apply(&memory(Some(m), Some(m))).unwrap();
        assert_eq!(
            fs::read_to_string(dir.join("memory.max")).unwrap(),
            "67108864"
        );
        assert!(
            !dir.join("memory.swap.max").exists(),
            "created a cgroup file"
        );
        let e = cg.apply(&memory(Some(m), Some(2 * m))).unwrap_err();
        assert_eq!(
            e.to_string(),
            "linux.resources.memory.swap: not supported by the guest kernel (no cgroup file memory.swap.max)"
        );
        let quota = Resources {
            cpu: Some(Cpu {
                quota: Some(50_000),
                ..Cpu::default()
            }),
            ..Resources::default()
        };
        let e = cg.apply(&quota).unwrap_err();
        assert!(
            e.to_string().starts_with("linux.resources.cpu.quota: "),
            "{e}"
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn converts_shares() {
        assert_eq!(shares_to_weight(2), 1);
        assert_eq!(shares_to_weight(262_144), 10_000);
        assert_eq!(shares_to_weight(1), 1);
    }

    #[test]
    fn parses_stat_files() {
        assert_eq!(controller_of("memory.max"), Some("memory"));
        assert_eq!(controller_of("cgroup.procs"), None);
        let cpu = "usage_usec 1500\nuser_usec 1000\nsystem_usec 500\n";
        assert_eq!(flat_key(cpu, "user_usec"), Some(1000));
        assert_eq!(flat_key(cpu, "nope"), None);
        assert_eq!(single_value("max\n"), 0);
        assert_eq!(single_value("4096\n"), 4096);
        let io = "8:0 rbytes=100 wbytes=20 rios=1 wios=1\n8:16 rbytes=1 wbytes=2\n";
        assert_eq!(io_bytes(io), (101, 22));
    }

    #[test]
    fn creates_and_destroys_in_a_plain_directory() {
        // Without a cgroup2 mount the directory logic still works.
        let dir = std::env::temp_dir().join(format!("nacre-cg-test-{}", std::process::id()));
        let root = CgroupRoot::new(&dir);
        assert!(!root.available());
        let cg = root.create("c1").unwrap();
        assert_eq!(cg.path(), dir.join("nacre/c1"));
        // No controllers: every limit is skipped.
        cg.apply(&Resources {
            pids: Some(Pids { limit: 3 }),
            ..Resources::default()
        })
        .unwrap();
        assert!(!cg.path().join("pids.max").exists());
        assert_eq!(cg.stats(), Stats::default());
        fs::write(
            cg.path().join("memory.events"),
            "low 0\nhigh 0\nmax 4\noom 2\noom_kill 1\noom_group_kill 0\n",
        )
        .unwrap();
        assert_eq!(cg.stats().memory_oom_kill, 1);
        fs::remove_file(cg.path().join("memory.events")).unwrap();
        cg.destroy().unwrap();
        assert!(!cg.path().exists());
        fs::remove_dir_all(&dir).unwrap();
    }
}
