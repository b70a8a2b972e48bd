//! The agent's threads: one pool that runs every job the agent would
//! otherwise start a thread for (a ttRPC connection's reader, each call,
//! a process's output reader).
//!
//! Threads are made when the agent starts ([`Pool::prestart`]) and kept
//! when their job ends, so a VM restored from a template finds them made:
//! where guest kernel mode is emulated, each new thread (its stack
//! mapping, guard page, clone and first faults) costs tens of
//! milliseconds, and a connection plus a container used to make about ten.
//! A job that finds no idle thread gets a new one, as `thread::spawn`
//! would (jobs may block for a container's lifetime: a queue could
//! starve); at most [`Pool::keep`] idle threads stay.

use std::collections::VecDeque;
use std::io;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, PoisonError};

type Job = Box<dyn FnOnce() + Send + 'static>;

#[derive(Default)]
struct State {
    /// Queued jobs, each with its number (see `Pool::spawn`).
    jobs: VecDeque<(u64, Job)>,
    next: u64,
    /// Threads waiting for a job.
    idle: usize,
    /// Threads alive.
    threads: usize,
}

struct Shared {
    state: Mutex<State>,
    ready: Condvar,
    keep: usize,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A pool of threads (see the module documentation).
#[derive(Clone)]
pub struct Pool {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.shared.lock();
        f.debug_struct("Pool")
            .field("threads", &s.threads)
            .field("idle", &s.idle)
            .field("queued", &s.jobs.len())
            .finish()
    }
}

impl Pool {
    /// A pool that keeps up to `keep` idle threads.
    #[must_use]
    pub fn new(keep: usize) -> Pool {
        Pool {
            shared: Arc::new(Shared {
                state: Mutex::new(State::default()),
                ready: Condvar::new(),
                keep,
            }),
        }
    }

    /// Makes threads until `n` are alive (new ones wait for jobs).
    pub fn prestart(&self, n: usize) -> io::Result<()> {
        loop {
            {
                let mut s = self.shared.lock();
                if s.threads >= n {
                    return Ok(());
                }
                s.threads += 1;
            }
            if let Err(e) = self.start_thread() {
                self.shared.lock().threads -= 1;
                return Err(e);
            }
        }
    }

    /// Runs `job` on an idle thread, or on a new one when none is idle.
    pub fn spawn(&self, job: impl FnOnce() + Send + 'static) -> io::Result<()> {
        let (number, grow) = {
            let mut s = self.shared.lock();
            let number = s.next;
            s.next = s.next.wrapping_add(1);
            s.jobs.push_back((number, Box::new(job)));
            // Each queued job needs an idle thread of its own.
            let grow = s.jobs.len() > s.idle;
            if grow {
                s.threads += 1;
            }
            (number, grow)
        };
        if !grow {
            self.shared.ready.notify_one();
            return Ok(());
        }
        match self.start_thread() {
            Ok(()) => Ok(()),
            Err(e) => {
                let mut s = self.shared.lock();
                s.threads -= 1;
                // Nobody may run it: take it back, unless a thread that
                // became idle meanwhile took it (then it runs).
                match s.jobs.iter().position(|(n, _)| *n == number) {
                    Some(i) => {
                        s.jobs.remove(i);
                        Err(e)
                    }
                    None => Ok(()),
                }
            }
        }
    }

    fn start_thread(&self) -> io::Result<()> {
        let shared = Arc::clone(&self.shared);
        std::thread::Builder::new()
            .name("agent-pool".into())
            .spawn(move || work(&shared))
            .map(|_| ())
    }

    /// Threads alive and idle (for tests and logs).
    #[must_use]
    pub fn counts(&self) -> (usize, usize) {
        let s = self.shared.lock();
        (s.threads, s.idle)
    }
}

fn work(shared: &Shared) {
    let mut s = shared.lock();
    loop {
        if let Some((_, job)) = s.jobs.pop_front() {
            drop(s);
            // A panicking job costs its own work, not the thread count.
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
            s = shared.lock();
            continue;
        }
        if s.idle >= shared.keep {
            s.threads -= 1;
            return;
        }
        s.idle += 1;
        s = shared.ready.wait(s).unwrap_or_else(PoisonError::into_inner);
        s.idle -= 1;
    }
}

static GLOBAL: OnceLock<Pool> = OnceLock::new();

/// Idle threads the agent's pool keeps: a connection's reader, the calls
/// that block (WaitProcess, ReadStdout, ReadStderr) and a process's two
/// output readers, with room for a second container.
pub const KEEP: usize = 16;

/// The agent's pool.
pub fn global() -> &'static Pool {
    GLOBAL.get_or_init(|| Pool::new(KEEP))
}

/// Runs `job` on the agent's pool.
pub fn spawn(job: impl FnOnce() + Send + 'static) -> io::Result<()> {
    global().spawn(job)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;

    fn settle(pool: &Pool, want: (usize, usize)) {
        for _ in 0..500 {
            if pool.counts() == want {
                return;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        assert_eq!(pool.counts(), want);
    }

    #[test]
    fn prestarted_threads_run_jobs_without_new_ones() {
        let pool = Pool::new(4);
        pool.prestart(3).unwrap();
        settle(&pool, (3, 3));
        let (tx, rx) = mpsc::channel();
        for i in 0..3 {
            let tx = tx.clone();
            pool.spawn(move || tx.send(i).unwrap()).unwrap();
        }
        let mut got: Vec<i32> = (0..3).map(|_| rx.recv().unwrap()).collect();
        got.sort_unstable();
        assert_eq!(got, [0, 1, 2]);
        settle(&pool, (3, 3));
    }

    #[test]
    fn blocked_jobs_get_threads_of_their_own() {
        // Jobs that block until the last one runs: a pool that queued
        // instead of growing would never finish.
        let pool = Pool::new(2);
        let n = 6;
        let barrier = Arc::new(std::sync::Barrier::new(n));
        let (tx, rx) = mpsc::channel();
        for _ in 0..n {
            let (b, tx) = (Arc::clone(&barrier), tx.clone());
            pool.spawn(move || {
                b.wait();
                tx.send(()).unwrap();
            })
            .unwrap();
        }
        for _ in 0..n {
            rx.recv_timeout(Duration::from_secs(10)).unwrap();
        }
        // Idle threads beyond `keep` exit.
        settle(&pool, (2, 2));
    }

    #[test]
    fn a_panicking_job_keeps_its_thread() {
        let pool = Pool::new(1);
        pool.prestart(1).unwrap();
        pool.spawn(|| panic!("job panics")).unwrap();
        let (tx, rx) = mpsc::channel();
        pool.spawn(move || tx.send(7).unwrap()).unwrap();
        assert_eq!(rx.recv_timeout(Duration::from_secs(10)).unwrap(), 7);
        settle(&pool, (1, 1));
    }
}
