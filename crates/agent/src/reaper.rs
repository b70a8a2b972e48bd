//! Reaping of child processes.
//!
//! As PID 1 the agent inherits every orphan of the guest and must reap it,
//! but it will also wait for the processes it starts itself (containers,
//! exec'd commands). A plain `waitpid(-1)` loop would steal those exit
//! statuses, so the reaper records the status of every *registered* pid
//! and discards the others.
//!
//! Usage: call [`Reaper::start`] on the main thread before any other
//! thread exists (it blocks SIGCHLD, and threads inherit the mask), start
//! children through [`Reaper::spawn`] (which registers the pid before the
//! reaper can see it exit), and wait for them with [`Reaper::wait`], never
//! with `std::process::Child::wait`.

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::Duration;

use crate::sys;

/// How a child ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    /// It exited with this code.
    Exited(i32),
    /// A signal killed it.
    Signaled(i32),
}

impl ExitStatus {
    /// Decodes a `waitpid` status. `None` for stop/continue reports.
    #[must_use]
    pub fn from_wait_status(status: libc::c_int) -> Option<ExitStatus> {
        if libc::WIFEXITED(status) {
            Some(ExitStatus::Exited(libc::WEXITSTATUS(status)))
        } else if libc::WIFSIGNALED(status) {
            Some(ExitStatus::Signaled(libc::WTERMSIG(status)))
        } else {
            None
        }
    }

    /// The shell's convention: the code, or 128 + the signal.
    #[must_use]
    pub fn code(self) -> i32 {
        match self {
            ExitStatus::Exited(code) => code,
            ExitStatus::Signaled(signal) => 128 + signal,
        }
    }
}

/// The statuses of watched children; `None` while one still runs.
#[derive(Debug, Default)]
pub struct ReapTable {
    watched: HashMap<libc::pid_t, Option<ExitStatus>>,
    /// Children being started whose pid is not known yet (see
    /// [`Reaper::expect`]): while there are any, the statuses of pids
    /// nobody watches are kept in `unclaimed`.
    expecting: usize,
    unclaimed: HashMap<libc::pid_t, ExitStatus>,
}

/// Statuses of unwatched pids kept while children are being started; an
/// orphan flood beyond it only costs those orphans' statuses.
const MAX_UNCLAIMED: usize = 256;

impl ReapTable {
    /// Registers `pid`, whose status will be kept until taken.
    pub fn watch(&mut self, pid: libc::pid_t) {
        self.watched.insert(pid, None);
    }

    /// Records a reaped child. Returns false for a pid nobody watches, e.g.
    /// an orphan reparented to PID 1, whose status is dropped unless a
    /// child is being started (it may be that child's).
    pub fn record(&mut self, pid: libc::pid_t, status: ExitStatus) -> bool {
        match self.watched.get_mut(&pid) {
            Some(slot) => {
                *slot = Some(status);
                true
            }
            None => {
                if self.expecting > 0 && self.unclaimed.len() < MAX_UNCLAIMED {
                    self.unclaimed.insert(pid, status);
                }
                false
            }
        }
    }

    /// Watches `pid`, a child started while [`ReapTable::expecting`] was
    /// counted, with the status it already has if it was reaped meanwhile;
    /// returns whether it had one.
    fn claim(&mut self, pid: libc::pid_t) -> bool {
        let status = self.unclaimed.remove(&pid);
        self.watched.insert(pid, status);
        status.is_some()
    }

    fn end_expecting(&mut self) {
        self.expecting = self.expecting.saturating_sub(1);
        if self.expecting == 0 {
            self.unclaimed.clear();
        }
    }

    /// Takes the status of `pid` if it has ended; it is then forgotten.
    pub fn take(&mut self, pid: libc::pid_t) -> Option<ExitStatus> {
        let status = (*self.watched.get(&pid)?)?;
        self.watched.remove(&pid);
        Some(status)
    }

    /// Whether `pid` is watched.
    #[must_use]
    pub fn is_watched(&self, pid: libc::pid_t) -> bool {
        self.watched.contains_key(&pid)
    }
}

/// What to run once a watched child has been reaped.
pub struct ExitCallback(pub Box<dyn FnOnce(ExitStatus) + Send>);

impl std::fmt::Debug for ExitCallback {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ExitCallback")
    }
}

#[derive(Debug, Default)]
struct Shared {
    table: Mutex<ReapTable>,
    changed: Condvar,
    /// Locked after `table`, never before it.
    callbacks: Mutex<HashMap<libc::pid_t, ExitCallback>>,
}

impl Shared {
    fn callbacks(&self) -> MutexGuard<'_, HashMap<libc::pid_t, ExitCallback>> {
        self.callbacks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, ReapTable> {
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// How often the reaper polls even without a SIGCHLD. In the agent every
/// thread blocks SIGCHLD, so this is only a safety net (and each wake-up
/// costs emulated kernel time in the guest); a process whose other threads
/// do not block it (a test harness) can lose signals and wants it shorter.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(10);

/// Handle to the reaper thread; cheap to clone.
#[derive(Debug, Clone)]
pub struct Reaper {
    shared: Arc<Shared>,
}

impl Reaper {
    /// Blocks SIGCHLD in the calling thread and starts the reaper thread,
    /// which also polls every [`DEFAULT_POLL_INTERVAL`]. Call it before any
    /// other thread is created.
    pub fn start() -> io::Result<Reaper> {
        Reaper::start_with_poll(DEFAULT_POLL_INTERVAL)
    }

    /// [`Reaper::start`] with another poll interval.
    pub fn start_with_poll(poll_interval: Duration) -> io::Result<Reaper> {
        sys::block_sigchld()?;
        let shared = Arc::new(Shared::default());
        let worker = Arc::clone(&shared);
        thread::Builder::new()
            .name("reaper".into())
            .spawn(move || reap_loop(&worker, poll_interval))?;
        Ok(Reaper { shared })
    }

    /// Runs `start` (which forks a child and returns its pid) with the table
    /// locked, then watches the pid: the reaper cannot record the child's
    /// exit before it is registered.
    pub fn spawn<T>(&self, start: impl FnOnce() -> io::Result<(libc::pid_t, T)>) -> io::Result<T> {
        let mut table = self.shared.lock();
        let (pid, value) = start()?;
        table.watch(pid);
        Ok(value)
    }

    /// For a child whose pid is known only after it may have run (one
    /// started with `clone(CLONE_VFORK)` on another thread): the statuses
    /// the reaper collects meanwhile are kept until [`Expecting::claim`]
    /// or the drop of what this returns.
    pub fn expect(&self) -> Expecting {
        self.shared.lock().expecting += 1;
        Expecting {
            shared: Arc::clone(&self.shared),
        }
    }

    /// Runs `f` with the status of the watched `pid` once it ends, on the
    /// reaper's thread (at once if it already has), instead of a thread
    /// blocked in [`Reaper::wait`]: a thread costs the guest a clone, a
    /// stack and its teardown. The status is then taken (as by `wait`).
    /// `f` must be short and must not call back into the reaper.
    pub fn on_exit(&self, pid: libc::pid_t, f: ExitCallback) {
        let mut table = self.shared.lock();
        if let Some(status) = table.take(pid) {
            drop(table);
            (f.0)(status);
            return;
        }
        if table.is_watched(pid) {
            self.shared.callbacks().insert(pid, f);
        }
    }

    /// Blocks until the watched `pid` ends and returns its status; `None` if
    /// `pid` is not watched.
    pub fn wait(&self, pid: libc::pid_t) -> Option<ExitStatus> {
        let mut table = self.shared.lock();
        loop {
            if !table.is_watched(pid) {
                return None;
            }
            if let Some(status) = table.take(pid) {
                return Some(status);
            }
            table = self
                .shared
                .changed
                .wait(table)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }
}

/// See [`Reaper::expect`].
#[derive(Debug)]
pub struct Expecting {
    shared: Arc<Shared>,
}

impl Expecting {
    /// Watches `pid` (as [`Reaper::spawn`] does), with its status if it
    /// has already been reaped.
    pub fn claim(self, pid: libc::pid_t) {
        // Waiters are woken when the child has already been reaped.
        if self.shared.lock().claim(pid) {
            self.shared.changed.notify_all();
        }
    }
}

impl Drop for Expecting {
    fn drop(&mut self) {
        self.shared.lock().end_expecting();
    }
}

fn reap_loop(shared: &Shared, poll_interval: Duration) {
    loop {
        reap_all(shared);
        if let Err(err) = sys::wait_sigchld(poll_interval) {
            tracing::error!("waiting for SIGCHLD: {err}");
            thread::sleep(poll_interval);
        }
    }
}

/// Reaps every child that has ended, recording watched ones; runs the
/// callbacks of those that have one (see [`Reaper::on_exit`]).
fn reap_all(shared: &Shared) {
    let mut table = shared.lock();
    let mut any = false;
    let mut due = Vec::new();
    loop {
        match sys::reap_any() {
            Ok(Some((pid, raw))) => {
                let Some(status) = ExitStatus::from_wait_status(raw) else {
                    continue;
                };
                if table.record(pid, status) {
                    any = true;
                    tracing::debug!(pid, ?status, "child exited");
                    if let Some(f) = shared.callbacks().remove(&pid) {
                        table.take(pid);
                        due.push((f, status));
                    }
                } else {
                    tracing::debug!(pid, ?status, "reaped orphan");
                }
            }
            Ok(None) => break,
            Err(err) => {
                tracing::error!("waitpid: {err}");
                break;
            }
        }
    }
    drop(table);
    for (f, status) in due {
        (f.0)(status);
    }
    if any {
        shared.changed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_wait_status() {
        assert_eq!(
            ExitStatus::from_wait_status(3 << 8),
            Some(ExitStatus::Exited(3))
        );
        assert_eq!(
            ExitStatus::from_wait_status(libc::SIGKILL),
            Some(ExitStatus::Signaled(libc::SIGKILL))
        );
        assert_eq!(ExitStatus::Signaled(9).code(), 137);
        assert_eq!(ExitStatus::Exited(2).code(), 2);
        // Stopped (0x7f in the low byte): not an exit.
        assert_eq!(ExitStatus::from_wait_status(0x137f), None);
    }

    #[test]
    fn keeps_watched_statuses_only() {
        let mut table = ReapTable::default();
        table.watch(10);
        assert_eq!(table.take(10), None, "still running");
        assert!(!table.record(11, ExitStatus::Exited(0)), "orphan dropped");
        assert!(!table.is_watched(11));
        assert!(table.record(10, ExitStatus::Exited(5)));
        assert_eq!(table.take(10), Some(ExitStatus::Exited(5)));
        assert!(!table.is_watched(10), "taken once");
        assert_eq!(table.take(10), None);
    }

    #[test]
    fn keeps_statuses_for_children_being_started() {
        let mut table = ReapTable {
            expecting: 1,
            ..ReapTable::default()
        };
        assert!(!table.record(12, ExitStatus::Exited(3)));
        assert!(!table.record(13, ExitStatus::Exited(0)));
        assert!(table.claim(12), "reaped before it was claimed");
        assert_eq!(table.take(12), Some(ExitStatus::Exited(3)));
        table.end_expecting();
        assert!(table.unclaimed.is_empty(), "orphans forgotten");
        assert!(!table.record(14, ExitStatus::Exited(0)));
        assert!(table.unclaimed.is_empty(), "nothing kept without a start");
    }

    #[test]
    fn a_claim_of_an_exited_child_wakes_waiters() {
        let reaper = Reaper {
            shared: Arc::new(Shared::default()),
        };
        let expecting = reaper.expect();
        reaper.shared.lock().record(21, ExitStatus::Signaled(9));
        expecting.claim(21);
        assert_eq!(reaper.wait(21), Some(ExitStatus::Signaled(9)));
        assert_eq!(reaper.shared.lock().expecting, 0);
    }
}
