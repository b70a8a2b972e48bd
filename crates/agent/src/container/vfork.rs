//! Starting a container process without copying the agent:
//! `clone(CLONE_VM | CLONE_VFORK)`, as glibc's posix_spawn does.
//!
//! A fork copies the agent's address space (its mappings, page tables,
//! copy-on-write faults in the child) and the child's execve tears the
//! copy down again; where guest kernel mode is emulated that was a few
//! hundred milliseconds of every container start. Here the child runs in
//! the agent's memory, on a stack of its own, while the thread that made
//! it is suspended until the child execs or exits (so the child may use
//! that thread's thread-local state: errno, malloc's cache).
//!
//! What the child may do follows from that: it must not wait for the
//! suspended thread, and what it leaves allocated when it execs stays
//! allocated in the agent. So the child's data is owned by the suspended
//! thread's job and dropped when it resumes (see [`Keep`]), and what must
//! live through execve is put there (`ffi::ExecArgs`). Credentials are
//! changed with raw system calls (glibc's setuid would signal the agent's
//! threads). The child gets a copy of the descriptor table, the file
//! system context and the signal handlers, as with fork.

use std::io;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

/// A child's stack (the lowest page a guard).
struct Stack {
    base: *mut libc::c_void,
}

// SAFETY: a mapping only ever used by one child at a time (taken from and
// returned to the free list under its lock).
unsafe impl Send for Stack {}

const STACK_SIZE: usize = 1 << 20;
const GUARD: usize = 4096;

/// Stacks of children that have exec'd or exited, reused: their pages are
/// already there (a VM restored from a template finds the warm-up's).
static STACKS: Mutex<Vec<Stack>> = Mutex::new(Vec::new());
const MAX_FREE_STACKS: usize = 4;

impl Stack {
    fn take() -> io::Result<Stack> {
        if let Some(s) = STACKS.lock().unwrap_or_else(PoisonError::into_inner).pop() {
            return Ok(s);
        }
        // SAFETY: a new private anonymous mapping; nothing else uses it.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                STACK_SIZE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let stack = Stack { base };
        // SAFETY: the lowest page of the mapping just made.
        if unsafe { libc::mprotect(base, GUARD, libc::PROT_NONE) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(stack)
    }

    fn top(&self) -> *mut libc::c_void {
        // SAFETY: one past the end of the mapping; x86-64 stacks grow down
        // from a 16-byte aligned top, which a page-aligned end is.
        unsafe { self.base.cast::<u8>().add(STACK_SIZE).cast() }
    }

    fn give_back(self) {
        let mut free = STACKS.lock().unwrap_or_else(PoisonError::into_inner);
        if free.len() < MAX_FREE_STACKS {
            free.push(self);
        }
        // Else dropped: unmapped.
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `take`, no longer used by any child.
        unsafe { libc::munmap(self.base, STACK_SIZE) };
    }
}

/// What a child needs, owned by the job that started it and dropped when
/// the child has exec'd or exited.
pub trait Keep: Send + 'static {}
impl<T: Send + 'static> Keep for T {}

/// A child being started (see [`start`]).
#[derive(Debug)]
pub struct Started {
    tid: Arc<AtomicI32>,
    failed: Arc<OnceLock<String>>,
}

impl Started {
    /// The child's pid in the agent's pid namespace, once the child has
    /// reported through a pipe (or the pipe reached EOF: the child exited
    /// or was never made). The error if it was never made.
    pub fn pid(&self) -> Result<libc::pid_t, String> {
        if let Some(e) = self.failed.get() {
            return Err(e.clone());
        }
        match self.tid.load(Ordering::SeqCst) {
            pid if pid > 0 => Ok(pid),
            _ => Err("the child process was not started".into()),
        }
    }
}

type Body<K> = fn(&K) -> !;

struct Call<'a, K> {
    body: Body<K>,
    keep: &'a K,
}

extern "C" fn entry<K>(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the `Call` on the stack of `run`, whose thread is
    // suspended (CLONE_VFORK) until this child execs or exits.
    let call = unsafe { &*arg.cast::<Call<'_, K>>() };
    let (body, keep) = (call.body, call.keep);
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| body(keep)));
    // SAFETY: ends the child without unwinding further.
    unsafe { libc::_exit(127) }
}

/// Makes the child on the calling thread: returns once it exec'd or
/// exited, having stored its pid in `tid` before it ran.
fn run<K>(body: Body<K>, keep: &K, tid: &AtomicI32) -> io::Result<()> {
    let stack = Stack::take()?;
    let call = Call { body, keep };
    let flags = libc::CLONE_VM | libc::CLONE_VFORK | libc::CLONE_PARENT_SETTID | libc::SIGCHLD;
    // SAFETY: `entry` runs on `stack` (alive until we resume: the child
    // has then exec'd or exited) with a pointer to `call` (on this frame,
    // alive as long); CLONE_PARENT_SETTID writes the pid into `tid`.
    let pid = unsafe {
        libc::clone(
            entry::<K>,
            stack.top(),
            flags,
            std::ptr::from_ref(&call).cast_mut().cast(),
            tid.as_ptr(),
        )
    };
    let result = if pid < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    };
    stack.give_back();
    result
}

/// Starts `body(&keep)` in a new child process on a pool thread (or, with
/// `fresh_thread`, on a new thread: its namespace for children is changed
/// for good). `prepare` runs first on that thread (e.g. to set its pid
/// namespace for children) and `finish` after the child exec'd or exited;
/// `keep` is dropped then. An error of `prepare` or of the clone is
/// reported by [`Started::pid`]; the caller learns that the child is gone
/// through its pipes (whose child ends `keep` holds).
pub fn start<K: Keep>(
    body: Body<K>,
    keep: K,
    prepare: impl FnOnce() -> Result<(), String> + Send + 'static,
    finish: impl FnOnce() + Send + 'static,
    fresh_thread: bool,
) -> Result<Started, String> {
    let tid = Arc::new(AtomicI32::new(0));
    let failed = Arc::new(OnceLock::new());
    let started = Started {
        tid: Arc::clone(&tid),
        failed: Arc::clone(&failed),
    };
    let job = move || {
        match prepare().and_then(|()| run(body, &keep, &tid).map_err(|e| format!("clone: {e}"))) {
            Ok(()) => {}
            Err(e) => {
                let _ = failed.set(e);
            }
        }
        finish();
        drop(keep);
    };
    if fresh_thread {
        std::thread::Builder::new()
            .name("agent-spawn".into())
            .spawn(job)
            .map(drop)
    } else {
        crate::pool::spawn(job)
    }
    .map_err(|e| format!("starting the process's thread: {e}"))?;
    Ok(started)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::{AsFd, AsRawFd, OwnedFd};

    struct Plan {
        w: OwnedFd,
        word: &'static [u8],
    }

    fn child(plan: &Plan) -> ! {
        let _ = super::super::ffi::write_all(plan.w.as_fd(), plan.word);
        super::super::ffi::exit_now(3)
    }

    #[test]
    fn the_child_runs_with_its_data_and_is_reaped() {
        let (r, w) = super::super::ffi::pipe().unwrap();
        let started = start(child, Plan { w, word: b"hi" }, || Ok(()), || (), true).unwrap();
        // EOF comes after the child exited and the job dropped its end.
        let got = super::super::ffi::read_to_end(r.as_fd()).unwrap();
        assert_eq!(got, b"hi");
        let pid = started.pid().unwrap();
        let mut status = 0;
        // SAFETY: waits for our own child.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert_eq!(libc::WEXITSTATUS(status), 3);
        let _ = r.as_raw_fd();
    }

    #[test]
    fn a_failed_prepare_is_reported() {
        let (r, w) = super::super::ffi::pipe().unwrap();
        let started = start(
            child,
            Plan { w, word: b"x" },
            || Err("no namespace".into()),
            || (),
            true,
        )
        .unwrap();
        assert!(super::super::ffi::read_to_end(r.as_fd())
            .unwrap()
            .is_empty());
        assert_eq!(started.pid().unwrap_err(), "no namespace");
    }
}
