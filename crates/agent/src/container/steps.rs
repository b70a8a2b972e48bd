//! Timings of an init child's setup steps, for `Agent.GetTrace`: the
//! child writes each step's start and duration into one shared anonymous
//! page mapped before it is made, and the parent turns them into spans
//! once the child reported. The child only reads the clock and stores
//! atomics: no lock, no allocation. (The page is shared, so this works
//! for a forked child as well as for one sharing the agent's memory,
//! `vfork`.)

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// The steps a child times, by index.
pub const NAMES: [&str; 10] = [
    "child.prepare",
    "child.cgroup",
    "child.namespaces",
    "child.mounts",
    "child.pivot_root",
    "child.finish_rootfs",
    "child.process",
    "child.other",
    "child.mount",
    "child.populate_dev",
];

/// Indexes in [`NAMES`] of the steps an init child times.
pub const PREPARE: usize = 0;
pub const CGROUP: usize = 1;
pub const NAMESPACES: usize = 2;
pub const MOUNTS: usize = 3;
pub const PIVOT_ROOT: usize = 4;
pub const FINISH_ROOTFS: usize = 5;
pub const PROCESS: usize = 6;
/// One mount of the spec (inside `child.mounts`).
pub const MOUNT: usize = 8;
/// The device nodes (inside `child.mounts`).
pub const POPULATE_DEV: usize = 9;

/// Runs `f` as step `step`, timed into `steps` when there is a page.
pub fn timed<T>(steps: Option<&ChildSteps>, step: usize, f: impl FnOnce() -> T) -> T {
    match steps {
        Some(s) => s.time(step, f),
        None => f(),
    }
}

const SLOTS: usize = 64;

#[repr(C)]
struct Page {
    count: AtomicU32,
    steps: [[AtomicU64; 3]; SLOTS],
}

/// The shared page (see the module documentation).
pub struct ChildSteps {
    page: *mut Page,
}

// SAFETY: the page is only accessed through atomics.
unsafe impl Send for ChildSteps {}
// SAFETY: as above.
unsafe impl Sync for ChildSteps {}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

impl ChildSteps {
    /// Maps the page; None if it cannot be (the steps go untimed).
    pub fn new() -> Option<Self> {
        // SAFETY: a fresh anonymous shared mapping of one Page, zeroed by
        // the kernel (zero is a valid value of every atomic in it).
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                std::mem::size_of::<Page>(),
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        (ptr != libc::MAP_FAILED).then(|| Self { page: ptr.cast() })
    }

    fn page(&self) -> &Page {
        // SAFETY: `page` points to a live mapping of a Page until drop.
        unsafe { &*self.page }
    }

    /// Runs step `step` (an index into [`NAMES`]) and records its timing.
    pub fn time<T>(&self, step: usize, f: impl FnOnce() -> T) -> T {
        let start = now_us();
        let out = f();
        let dur = now_us().saturating_sub(start);
        let page = self.page();
        let i = page.count.fetch_add(1, Ordering::SeqCst) as usize;
        if let Some(slot) = page.steps.get(i) {
            slot[0].store(step as u64, Ordering::SeqCst);
            slot[1].store(start, Ordering::SeqCst);
            slot[2].store(dur, Ordering::SeqCst);
        }
        out
    }

    /// The steps recorded so far: (name, start µs since the epoch,
    /// duration µs).
    pub fn recorded(&self) -> Vec<(&'static str, u64, u64)> {
        let page = self.page();
        let n = (page.count.load(Ordering::SeqCst) as usize).min(SLOTS);
        page.steps[..n]
            .iter()
            .map(|s| {
                let step = usize::try_from(s[0].load(Ordering::SeqCst)).unwrap_or(usize::MAX);
                (
                    NAMES.get(step).copied().unwrap_or("child.other"),
                    s[1].load(Ordering::SeqCst),
                    s[2].load(Ordering::SeqCst),
                )
            })
            .collect()
    }
}

impl Drop for ChildSteps {
    fn drop(&mut self) {
        // SAFETY: unmaps the mapping made in `new`, once.
        unsafe { libc::munmap(self.page.cast(), std::mem::size_of::<Page>()) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_forked_child_s_steps_reach_the_parent() {
        let steps = ChildSteps::new().unwrap();
        // SAFETY: the child only times two steps (atomics, clock reads)
        // and exits without unwinding.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            steps.time(NAMESPACES, || {
                std::thread::sleep(std::time::Duration::from_millis(5))
            });
            steps.time(MOUNTS, || ());
            // SAFETY: leaves the forked child at once.
            unsafe { libc::_exit(0) };
        }
        let mut status = 0;
        // SAFETY: waits for the child just forked.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        let got = steps.recorded();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].0, "child.namespaces");
        assert!(got[0].2 >= 5_000, "{got:?}");
        assert_eq!(got[1].0, "child.mounts");
    }
}
