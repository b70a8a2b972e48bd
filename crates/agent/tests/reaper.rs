//! The reaper on real children. One test only: the reaper waits for any
//! child of the process, which would steal statuses from other tests.

#![allow(clippy::unwrap_used, reason = "test code")]

use std::process::Command;
use std::time::{Duration, Instant};

use nacre_agent::reaper::{ExitCallback, ExitStatus, Reaper};

fn spawn(reaper: &Reaper, script: &str) -> libc::pid_t {
    reaper
        .spawn(|| {
            let child = Command::new("sh").arg("-c").arg(script).spawn()?;
            let pid = libc::pid_t::try_from(child.id()).unwrap();
            // The reaper owns the status now: never `child.wait()`.
            Ok((pid, pid))
        })
        .unwrap()
}

#[test]
fn records_watched_children_and_reaps_the_rest() {
    // The harness's threads do not block SIGCHLD and may swallow it: poll.
    let reaper = Reaper::start_with_poll(Duration::from_millis(50)).unwrap();

    let exits = spawn(&reaper, "exit 7");
    let killed = spawn(&reaper, "kill -9 $$");
    assert_eq!(reaper.wait(exits), Some(ExitStatus::Exited(7)));
    assert_eq!(
        reaper.wait(killed),
        Some(ExitStatus::Signaled(libc::SIGKILL))
    );
    assert_eq!(reaper.wait(exits), None, "a status is taken once");

    // An exit callback runs on the reaper's thread when the child ends,
    // or at once for one that has already ended; the status is taken.
    let (tx, rx) = std::sync::mpsc::channel();
    let later = spawn(&reaper, "sleep 0.3; exit 3");
    let t = tx.clone();
    reaper.on_exit(later, ExitCallback(Box::new(move |s| t.send(s).unwrap())));
    assert_eq!(
        rx.recv_timeout(Duration::from_secs(10)).unwrap(),
        ExitStatus::Exited(3)
    );
    assert_eq!(reaper.wait(later), None, "taken by the callback");
    let done = spawn(&reaper, "exit 4");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::path::Path::new(&format!("/proc/{done}")).exists() {
        assert!(Instant::now() < deadline, "child not reaped");
        std::thread::sleep(Duration::from_millis(20));
    }
    reaper.on_exit(done, ExitCallback(Box::new(move |s| tx.send(s).unwrap())));
    assert_eq!(
        rx.recv_timeout(Duration::from_secs(10)).unwrap(),
        ExitStatus::Exited(4)
    );

    // A child nobody registered is reaped, not left a zombie.
    let stray = Command::new("true").spawn().unwrap();
    let proc_dir = format!("/proc/{}", stray.id());
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::path::Path::new(&proc_dir).exists() {
        assert!(Instant::now() < deadline, "unwatched child not reaped");
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(stray);
}
