//! A guest OOM kill made visible to whoever watches the container's host
//! cgroup.
//!
//! A container's OOM kill happens in the guest kernel, under the guest's
//! cgroup limit; the host cgroup of the container (where the VMM and the
//! monitor run) never runs out of memory. Clients that learn of OOM kills
//! from the host cgroup, as containerd's runc shim does for Docker Engine
//! (`memory.oom_control`'s eventfd on cgroup v1, `memory.events` on v2),
//! would never report `OOMKilled`. After the container's exit, the monitor
//! raises the same event on the host cgroup with a stand-in process of
//! its own: a forked child that only touches anonymous memory under a
//! limit just above what the cgroup holds.
//!
//! - v1: the OOM must happen in the watched cgroup itself (the kernel
//!   notifies the cgroup under OOM and its descendants). The cgroup's OOM
//!   killer is switched off first, so the stand-in is not killed by the
//!   kernel but parked in the OOM wait (the event fires), and nacre kills
//!   it. No other process of nacre is in the cgroup then: the VMM has
//!   exited and the monitor has left ([`HostCgroup::leave`]).
//! - v2: `memory.events` counts hierarchically, so the stand-in runs in a
//!   child cgroup with a small `memory.max` and is OOM-killed there; the
//!   container's cgroup's `oom` and `oom_kill` counters grow.

use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::{Duration, Instant};

use super::{io_err, join_self, HostCgroup, HostCgroupError};

/// How much the stand-in touches at most (the cgroup's reclaimable page
/// cache goes first; the limit stops it long before this).
const STAND_IN_BYTES: usize = 256 << 20;
/// The room it gets above what the cgroup already holds.
const ROOM_BYTES: u64 = 4 << 20;
/// How long the event may take.
const EVENT_WAIT: Duration = Duration::from_secs(5);
/// The v2 child cgroup the stand-in runs in.
const V2_CHILD: &str = "nacre-oom";

impl HostCgroup {
    /// Moves this process out of the cgroup, to each hierarchy's root
    /// (which always takes processes), so the cgroup can empty.
    pub fn leave(&self) -> Result<(), HostCgroupError> {
        let me = std::process::id().to_string();
        for (h, _) in &self.dirs {
            let file = h.mount.join("cgroup.procs");
            fs::write(&file, &me).map_err(io_err("writing", &file))?;
        }
        Ok(())
    }

    /// Raises an out-of-memory event on the cgroup's memory controller
    /// (see the module documentation). Call it when no process of
    /// nacre's is left inside. Returns whether the event was seen.
    pub fn raise_oom_event(&self) -> Result<bool, HostCgroupError> {
        let Some((h, dir)) = self.dirs.iter().find(|(h, _)| h.memory) else {
            return Ok(false);
        };
        if h.v2 {
            raise_v2(dir)
        } else {
            raise_v1(dir)
        }
    }
}

fn read(dir: &Path, name: &str) -> Result<String, HostCgroupError> {
    let file = dir.join(name);
    fs::read_to_string(&file).map_err(io_err("reading", &file))
}

fn write(dir: &Path, name: &str, value: &str) -> Result<(), HostCgroupError> {
    let file = dir.join(name);
    fs::write(&file, value).map_err(io_err("writing", &file))
}

/// The value of `key` in a flat-keyed cgroup file (`key value` lines).
fn field(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

fn wait_for(mut seen: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + EVENT_WAIT;
    while Instant::now() < deadline {
        if seen() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    seen()
}

fn raise_v1(dir: &Path) -> Result<bool, HostCgroupError> {
    // With no task inside, this drops what the cgroup still holds (the
    // VMM's page cache), so the stand-in meets the limit, not reclaim.
    let _ = write(dir, "memory.force_empty", "0");
    let usage: u64 = read(dir, "memory.usage_in_bytes")?
        .trim()
        .parse()
        .unwrap_or(0);
    let limit = read(dir, "memory.limit_in_bytes")?;
    // Anonymous memory is not swapped out of this cgroup: the stand-in
    // reaches the limit instead of the swap device (best effort: a
    // host without swap has no such file to matter).
    let _ = write(dir, "memory.swappiness", "0");
    write(dir, "memory.oom_control", "1")?;
    write(
        dir,
        "memory.limit_in_bytes",
        &(usage + ROOM_BYTES).to_string(),
    )?;
    let result = StandIn::start(dir).map(|stand_in| {
        let seen = wait_for(|| {
            read(dir, "memory.oom_control")
                .ok()
                .and_then(|t| field(&t, "under_oom"))
                == Some(1)
        });
        stand_in.kill();
        seen
    });
    // Restored whatever happened (the cgroup may outlive this call).
    let _ = write(dir, "memory.limit_in_bytes", limit.trim());
    let _ = write(dir, "memory.oom_control", "0");
    result
}

fn raise_v2(dir: &Path) -> Result<bool, HostCgroupError> {
    let before = field(&read(dir, "memory.events")?, "oom_kill").unwrap_or(0);
    write(dir, "cgroup.subtree_control", "+memory")?;
    let child = dir.join(V2_CHILD);
    match fs::create_dir(&child) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(io_err("creating", &child)(e)),
    }
    let _ = write(&child, "memory.swap.max", "0");
    let result = write(&child, "memory.max", &ROOM_BYTES.to_string())
        .and_then(|()| StandIn::start(&child))
        .map(|stand_in| {
            let seen = wait_for(|| {
                read(dir, "memory.events")
                    .ok()
                    .and_then(|t| field(&t, "oom_kill"))
                    .is_some_and(|n| n > before)
            });
            stand_in.kill();
            seen
        });
    let _ = fs::remove_dir(&child);
    result
}

/// The forked child that touches memory in a cgroup.
struct StandIn {
    pid: libc::pid_t,
}

impl StandIn {
    fn start(dir: &Path) -> Result<StandIn, HostCgroupError> {
        let procs_path = dir.join("cgroup.procs");
        let procs = [
            CString::new(procs_path.as_os_str().as_bytes()).map_err(|_| {
                HostCgroupError::BadPath {
                    path: procs_path.display().to_string(),
                    reason: "a NUL byte in the path",
                }
            })?,
        ];
        // SAFETY: the child makes only async-signal-safe system calls
        // (open/write/close in join_self, mmap, _exit) and touches only
        // its own fresh mapping; nothing in it allocates or takes a lock
        // another thread of the parent might hold.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(io_err("forking a stand-in for", dir)(
                std::io::Error::last_os_error(),
            ));
        }
        if pid == 0 {
            // SAFETY: see above; the child never returns into Rust code.
            unsafe { stand_in_child(&procs) }
        }
        Ok(StandIn { pid })
    }

    fn kill(self) {
        // SAFETY: our own child, not yet reaped: the pid is still ours.
        unsafe {
            libc::kill(self.pid, libc::SIGKILL);
            let mut status = 0;
            libc::waitpid(self.pid, &mut status, 0);
        }
    }
}

/// The child's whole life: join the cgroup, touch memory page by page,
/// park (the kernel parks or kills it first).
///
/// # Safety
/// Only in a freshly forked child.
unsafe fn stand_in_child(procs: &[CString]) -> ! {
    if join_self(procs).is_err() {
        // SAFETY: _exit is async-signal-safe.
        unsafe { libc::_exit(1) }
    }
    // SAFETY: an anonymous private mapping of our own; the writes stay
    // within it.
    unsafe {
        let p = libc::mmap(
            std::ptr::null_mut(),
            STAND_IN_BYTES,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        );
        if p == libc::MAP_FAILED {
            libc::_exit(1);
        }
        let base = p.cast::<u8>();
        let mut off = 0;
        while off < STAND_IN_BYTES {
            std::ptr::write_volatile(base.add(off), 1);
            off += 4096;
        }
        loop {
            libc::pause();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::field;

    #[test]
    fn reads_flat_keyed_files() {
        let v1 = "oom_kill_disable 1\nunder_oom 1\noom_kill 0\n";
        assert_eq!(field(v1, "under_oom"), Some(1));
        assert_eq!(field(v1, "oom_kill"), Some(0));
        assert_eq!(field(v1, "oom"), None);
        let v2 = "low 0\nhigh 0\nmax 3\noom 2\noom_kill 2\noom_group_kill 0\n";
        assert_eq!(field(v2, "oom_kill"), Some(2));
    }
}
