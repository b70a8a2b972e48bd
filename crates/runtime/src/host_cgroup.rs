//! A sandbox's host cgroup (Kata's `sandbox_cgroup_only`): the VMM (and,
//! for the shim, the shim itself) runs in the cgroup the caller gave the
//! sandbox (`linux.cgroupsPath`: the pod's under kubelet, the container's
//! under Docker or podman), so its memory and CPU are charged to the pod,
//! the pod's limits (kubelet sets them on the parent) bound the VM, and
//! the host's OOM killer finds the VM inside the pod, not the node's
//! daemons. runc puts a container's processes there; nacre's "container
//! process" on the host is its VMM.
//!
//! Works on cgroup v2 (`/sys/fs/cgroup` is cgroup2) and on v1/hybrid
//! hosts (the v1 `memory`, `cpu`, `cpuacct`, `pids` and `blkio`
//! hierarchies; cpuset is left alone: a new v1 cpuset is empty until
//! configured).

use std::ffi::CString;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

mod oom;

/// Errors placing a sandbox in its host cgroup.
#[derive(Debug, thiserror::Error)]
pub enum HostCgroupError {
    /// The cgroups path is not one nacre accepts.
    #[error("linux.cgroupsPath {path:?}: {reason}")]
    BadPath {
        /// The path as given.
        path: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// No cgroup hierarchy with a controller nacre uses is mounted.
    #[error("no cgroup hierarchy (memory, cpu, pids) is mounted under /sys/fs/cgroup")]
    NoHierarchy,
    /// A cgroup file or directory operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was done.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The system error.
        #[source]
        source: io::Error,
    },
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> HostCgroupError + 'a {
    move |source| HostCgroupError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// What the host allows a VMM beyond its guest's memory (its own heap,
/// device buffers, page tables): the RuntimeClass overhead is 48 MiB
/// (deploy/), measured at 33 MiB RSS at ready; with room.
pub const VMM_OVERHEAD_MIB: u64 = 64;

/// Limits the host cgroup itself gets (beyond its parent's).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HostLimits {
    /// The most the sandbox's host processes may use: the VM's memory
    /// plus the VMM's overhead.
    pub memory_bytes: Option<u64>,
}

/// One hierarchy: its mount point and whether it is cgroup v2.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Hierarchy {
    mount: PathBuf,
    v2: bool,
    memory: bool,
}

/// The controllers nacre places a sandbox under on v1 hosts.
const V1_CONTROLLERS: &[&str] = &["memory", "cpu", "cpuacct", "pids", "blkio"];

/// The hierarchies of `mountinfo` (the text of /proc/self/mountinfo) to
/// use: the cgroup2 mount at `/sys/fs/cgroup` on a v2 host, else each v1
/// mount carrying one of [`V1_CONTROLLERS`].
fn hierarchies(mountinfo: &str) -> Vec<Hierarchy> {
    let mut v1 = Vec::new();
    for line in mountinfo.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let Some(mount) = left.split(' ').nth(4) else {
            continue;
        };
        let mut r = right.split(' ');
        let (fstype, _source, options) = (r.next(), r.next(), r.next().unwrap_or(""));
        match fstype {
            Some("cgroup2") if mount == "/sys/fs/cgroup" => {
                return vec![Hierarchy {
                    mount: PathBuf::from(mount),
                    v2: true,
                    memory: true,
                }];
            }
            Some("cgroup") => {
                let opts: Vec<&str> = options.split(',').collect();
                if V1_CONTROLLERS.iter().any(|c| opts.contains(c)) {
                    v1.push(Hierarchy {
                        mount: PathBuf::from(mount),
                        v2: false,
                        memory: opts.contains(&"memory"),
                    });
                }
            }
            _ => {}
        }
    }
    v1
}

/// The relative directory of OCI `linux.cgroupsPath` `path`: a plain
/// path (`/kubepods/pod1/abc`, taken from the hierarchy's root), or
/// systemd's `slice:prefix:name` (`kubepods-pod1.slice:cri-containerd:abc`
/// is `kubepods.slice/kubepods-pod1.slice/cri-containerd-abc.scope`).
pub fn relative_dir(path: &str) -> Result<PathBuf, HostCgroupError> {
    let bad = |reason| HostCgroupError::BadPath {
        path: path.to_string(),
        reason,
    };
    let rel = match path.split(':').collect::<Vec<_>>().as_slice() {
        [plain] => PathBuf::from(plain.trim_start_matches('/')),
        [slice, prefix, name] => {
            if name.is_empty() || prefix.contains('/') || name.contains('/') {
                return Err(bad("a systemd unit name with '/' or none"));
            }
            let mut dir = expand_slice(slice).ok_or_else(|| bad("not a systemd slice"))?;
            dir.push(if prefix.is_empty() {
                format!("{name}.scope")
            } else {
                format!("{prefix}-{name}.scope")
            });
            dir
        }
        _ => return Err(bad("neither a path nor slice:prefix:name")),
    };
    if rel.as_os_str().is_empty() {
        return Err(bad("the root cgroup"));
    }
    if !rel.components().all(|c| matches!(c, Component::Normal(_))) {
        return Err(bad("'..', '.' or an absolute component"));
    }
    Ok(rel)
}

/// `a-b-c.slice` → `a.slice/a-b.slice/a-b-c.slice`; `-.slice` or empty →
/// the root.
fn expand_slice(slice: &str) -> Option<PathBuf> {
    if slice.is_empty() || slice == "-.slice" {
        return Some(PathBuf::new());
    }
    let name = slice.strip_suffix(".slice")?;
    if name.is_empty() || name.contains('/') || name.starts_with('-') || name.ends_with('-') {
        return None;
    }
    let mut dir = PathBuf::new();
    let mut prefix = String::new();
    for part in name.split('-') {
        if part.is_empty() {
            return None;
        }
        if !prefix.is_empty() {
            prefix.push('-');
        }
        prefix.push_str(part);
        dir.push(format!("{prefix}.slice"));
    }
    Some(dir)
}

/// The sandbox's cgroup in every hierarchy nacre uses.
#[derive(Debug)]
pub struct HostCgroup {
    dirs: Vec<(Hierarchy, PathBuf)>,
}

impl HostCgroup {
    /// Creates (or reuses) `cgroups_path` in each hierarchy of this host
    /// and sets `limits` on it.
    pub fn create(cgroups_path: &str, limits: &HostLimits) -> Result<Self, HostCgroupError> {
        let mountinfo = fs::read_to_string("/proc/self/mountinfo")
            .map_err(io_err("reading", Path::new("/proc/self/mountinfo")))?;
        Self::create_in(&hierarchies(&mountinfo), cgroups_path, limits)
    }

    /// The existing cgroup `cgroups_path` (nothing is created), to remove
    /// it after its owner died.
    pub fn locate(cgroups_path: &str) -> Result<Self, HostCgroupError> {
        let mountinfo = fs::read_to_string("/proc/self/mountinfo")
            .map_err(io_err("reading", Path::new("/proc/self/mountinfo")))?;
        let rel = relative_dir(cgroups_path)?;
        Ok(HostCgroup {
            dirs: hierarchies(&mountinfo)
                .into_iter()
                .map(|h| {
                    let dir = h.mount.join(&rel);
                    (h, dir)
                })
                .collect(),
        })
    }

    fn create_in(
        hierarchies: &[Hierarchy],
        cgroups_path: &str,
        limits: &HostLimits,
    ) -> Result<Self, HostCgroupError> {
        let rel = relative_dir(cgroups_path)?;
        if hierarchies.is_empty() {
            return Err(HostCgroupError::NoHierarchy);
        }
        let mut dirs = Vec::new();
        for h in hierarchies {
            let dir = h.mount.join(&rel);
            if h.v2 {
                enable_v2_controllers(&h.mount, &rel);
            }
            fs::create_dir_all(&dir).map_err(io_err("creating", &dir))?;
            dirs.push((h.clone(), dir));
        }
        let cg = HostCgroup { dirs };
        if let Some(bytes) = limits.memory_bytes {
            for (h, dir) in cg.dirs.iter().filter(|(h, _)| h.memory) {
                let file = dir.join(if h.v2 {
                    "memory.max"
                } else {
                    "memory.limit_in_bytes"
                });
                fs::write(&file, bytes.to_string()).map_err(io_err("writing", &file))?;
            }
        }
        Ok(cg)
    }

    /// The cgroup's directories, one per hierarchy.
    pub fn dirs(&self) -> Vec<PathBuf> {
        self.dirs.iter().map(|(_, d)| d.clone()).collect()
    }

    /// The `cgroup.procs` files a process writes `0` into to join (see
    /// [`join_self`]; done by the VMM's child between fork and exec, so
    /// its memory is charged here from its first page).
    pub fn procs_files(&self) -> Vec<CString> {
        self.dirs
            .iter()
            .filter_map(|(_, d)| CString::new(d.join("cgroup.procs").as_os_str().as_bytes()).ok())
            .collect()
    }

    /// Moves process `pid` into the cgroup.
    pub fn add(&self, pid: u32) -> Result<(), HostCgroupError> {
        for (_, dir) in &self.dirs {
            let file = dir.join("cgroup.procs");
            fs::write(&file, pid.to_string()).map_err(io_err("writing", &file))?;
        }
        Ok(())
    }

    /// Removes the cgroup's directories (the leaf only; parents belong
    /// to whoever made them). Fails while a process is still inside.
    /// A process that just died counts until it is reaped (EBUSY):
    /// retried for up to a second; every hierarchy is tried, the first
    /// error is returned.
    pub fn remove(&self) -> Result<(), HostCgroupError> {
        self.remove_within(std::time::Duration::from_secs(1))
    }

    /// [`HostCgroup::remove`], waiting up to `wait` for a dead VMM whose
    /// owner died too to be reaped by whoever inherited it.
    pub fn remove_within(&self, wait: std::time::Duration) -> Result<(), HostCgroupError> {
        let deadline = std::time::Instant::now() + wait;
        let mut first = None;
        for (_, dir) in &self.dirs {
            loop {
                match fs::remove_dir(dir) {
                    Ok(()) => break,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                    Err(e)
                        if e.raw_os_error() == Some(libc::EBUSY)
                            && std::time::Instant::now() < deadline =>
                    {
                        std::thread::sleep(std::time::Duration::from_millis(50));
                    }
                    Err(e) => {
                        first.get_or_insert(io_err("removing", dir)(e));
                        break;
                    }
                }
            }
        }
        first.map_or(Ok(()), Err)
    }
}

/// On cgroup v2, enables memory, cpu and pids in every ancestor's
/// `cgroup.subtree_control` below the root, so the leaf has them
/// (best effort: an ancestor may already have processes of its own).
fn enable_v2_controllers(root: &Path, rel: &Path) {
    let mut dir = root.to_path_buf();
    for part in rel.parent().into_iter().flat_map(Path::components) {
        let control = dir.join("cgroup.subtree_control");
        for c in ["+memory", "+cpu", "+pids"] {
            let _ = fs::write(&control, c);
        }
        dir.push(part);
        let _ = fs::create_dir(&dir);
    }
    let control = dir.join("cgroup.subtree_control");
    for c in ["+memory", "+cpu", "+pids"] {
        let _ = fs::write(&control, c);
    }
}

/// Writes `0` (this process) into each of `procs` with raw system calls
/// only: safe between fork and exec.
pub fn join_self(procs: &[CString]) -> io::Result<()> {
    for file in procs {
        // SAFETY: a NUL-terminated path; open/write/close are
        // async-signal-safe and allocate nothing.
        unsafe {
            let fd = libc::open(file.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            let n = libc::write(fd, b"0".as_ptr().cast(), 1);
            let err = io::Error::last_os_error();
            libc::close(fd);
            if n != 1 {
                return Err(err);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]

    use super::*;

    #[test]
    fn paths_and_slices() {
        assert_eq!(
            relative_dir("/kubepods/besteffort/pod1/abc").unwrap(),
            PathBuf::from("kubepods/besteffort/pod1/abc")
        );
        assert_eq!(
            relative_dir("kubepods-besteffort-pod1.slice:cri-containerd:abc").unwrap(),
            PathBuf::from(
                "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1.slice/cri-containerd-abc.scope"
            )
        );
        assert_eq!(
            relative_dir("system.slice:docker:abc").unwrap(),
            PathBuf::from("system.slice/docker-abc.scope")
        );
        for bad in [
            "",
            "/",
            "/a/../../etc",
            "a:b",
            "x.slice:p:../n",
            "bad:p:n",
            "a--b.slice:p:n",
        ] {
            assert!(relative_dir(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn picks_v2_or_the_v1_controllers() {
        let hybrid = "\
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";
        let h = hierarchies(hybrid);
        let mounts: Vec<_> = h.iter().map(|h| h.mount.display().to_string()).collect();
        assert_eq!(
            mounts,
            ["/sys/fs/cgroup/memory", "/sys/fs/cgroup/cpu,cpuacct"]
        );
        assert!(h[0].memory && !h[1].memory && !h[0].v2);
        let v2 = "30 23 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw,nsdelegate\n";
        let h = hierarchies(v2);
        assert_eq!(h.len(), 1);
        assert!(h[0].v2 && h[0].memory);
    }

    #[test]
    fn creates_limits_and_removes_in_plain_directories() {
        let root = std::env::temp_dir().join(format!("nacre-hostcg-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        let hs = vec![
            Hierarchy {
                mount: root.join("memory"),
                v2: false,
                memory: true,
            },
            Hierarchy {
                mount: root.join("pids"),
                v2: false,
                memory: false,
            },
        ];
        let cg = HostCgroup::create_in(
            &hs,
            "/pod1/sandbox",
            &HostLimits {
                memory_bytes: Some(1 << 28),
            },
        )
        .unwrap();
        assert_eq!(
            fs::read_to_string(root.join("memory/pod1/sandbox/memory.limit_in_bytes")).unwrap(),
            "268435456"
        );
        assert!(!root
            .join("pids/pod1/sandbox/memory.limit_in_bytes")
            .exists());
        assert_eq!(cg.procs_files().len(), 2);
        fs::remove_file(root.join("memory/pod1/sandbox/memory.limit_in_bytes")).unwrap();
        cg.remove().unwrap();
        assert!(!root.join("memory/pod1/sandbox").exists());
        assert!(root.join("memory/pod1").exists(), "a parent was removed");
        fs::remove_dir_all(&root).unwrap();
    }
}
