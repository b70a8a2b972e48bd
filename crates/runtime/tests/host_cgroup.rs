//! Root tier, issue 14 (3): a sandbox's host processes run in the host
//! cgroup its caller names, joined between fork and exec, and that
//! cgroup's memory limit stops them, not the node.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::Command;

use nacre_runtime::host_cgroup::{HostCgroup, HostLimits};
use nacre_runtime::testing::root_with_tools;

/// The cgroup line of `pid` for the hierarchy `controller` (v1) or the
/// unified one.
fn cgroup_of(pid: u32, controller: &str) -> String {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    text.lines()
        .find(|l| {
            let mut f = l.splitn(3, ':');
            let (_, ctrls) = (f.next(), f.next().unwrap_or(""));
            ctrls.split(',').any(|c| c == controller) || (ctrls.is_empty() && controller.is_empty())
        })
        .and_then(|l| l.splitn(3, ':').nth(2))
        .unwrap_or_default()
        .to_string()
}

fn v2() -> bool {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .any(|l| l.contains(" /sys/fs/cgroup ") && l.contains(" - cgroup2 "))
}

/// Attack: a guest that touches more memory than its pod may use.
/// Safe outcome: the process in the sandbox's host cgroup (here a shell
/// that doubles a string forever, standing in for a VMM whose guest
/// touches all its RAM) is killed by that cgroup's OOM killer; the test
/// process outside it is untouched; the cgroup goes away afterwards.
#[test]
fn the_host_cgroup_holds_the_process_and_its_memory_limit_stops_it() {
    if !root_with_tools("host_cgroup", &[]) {
        return;
    }
    let path = format!("/nacre-test-{}/sandbox", std::process::id());
    let cg = HostCgroup::create(
        &path,
        &HostLimits {
            memory_bytes: Some(64 << 20),
        },
    )
    .unwrap();
    let procs = cg.procs_files();
    let mut child = Command::new("sh");
    child.args([
        "-c",
        "sleep 0.5; x=0123456789abcdef; while :; do x=$x$x; done",
    ]);
    // SAFETY: join_self makes only open/write/close system calls.
    unsafe {
        child.pre_exec(move || nacre_runtime::host_cgroup::join_self(&procs));
    }
    let mut child = child.spawn().unwrap();
    let controller = if v2() { "" } else { "memory" };
    assert_eq!(
        cgroup_of(child.id(), controller),
        path,
        "the child is not in the cgroup"
    );
    assert_ne!(cgroup_of(std::process::id(), controller), path);
    let status = child.wait().unwrap();
    assert_eq!(
        status.signal(),
        Some(libc::SIGKILL),
        "the memory hog was not stopped by its cgroup: {status}"
    );
    cg.remove().unwrap();
    for dir in cg.dirs() {
        assert!(!dir.exists(), "{} left", dir.display());
        let _ = std::fs::remove_dir(dir.parent().unwrap());
    }
}

/// A guest OOM kill shown on the host cgroup, the way containerd's runc
/// shim (Docker's) watches it: on v1 an eventfd registered on
/// `memory.oom_control`, on v2 `memory.events`. The event must fire,
/// nothing of the caller may be killed, the limit must come back, and the
/// cgroup must still go away.
#[test]
fn a_guest_oom_is_raised_on_the_host_cgroup_without_killing_anything_of_ours() {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    if !root_with_tools("host_cgroup", &[]) {
        return;
    }
    let path = format!("/nacre-oom-event-{}/ctr", std::process::id());
    let cg = HostCgroup::create(
        &path,
        &HostLimits {
            memory_bytes: Some(256 << 20),
        },
    )
    .unwrap();
    // The monitor joins the cgroup (as runc's container process would be
    // there) and leaves it before raising the event.
    cg.add(std::process::id()).unwrap();
    let controller = if v2() { "" } else { "memory" };
    assert_eq!(cgroup_of(std::process::id(), controller), path);
    cg.leave().unwrap();
    assert_ne!(cgroup_of(std::process::id(), controller), path);
    let memory_dir = cg
        .dirs()
        .into_iter()
        .find(|d| v2() || d.starts_with("/sys/fs/cgroup/memory"))
        .unwrap();
    let watcher = (!v2()).then(|| {
        // SAFETY: plain eventfd creation; the fd is owned below.
        let efd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        assert!(efd >= 0);
        // SAFETY: a fresh fd we own.
        let efd = unsafe { OwnedFd::from_raw_fd(efd) };
        let control = std::fs::File::open(memory_dir.join("memory.oom_control")).unwrap();
        std::fs::write(
            memory_dir.join("cgroup.event_control"),
            format!("{} {}", efd.as_raw_fd(), control.as_raw_fd()),
        )
        .unwrap();
        (efd, control)
    });
    assert!(cg.raise_oom_event().unwrap(), "no OOM event seen");
    match &watcher {
        Some((efd, _)) => {
            let mut count = 0u64;
            // SAFETY: reads 8 bytes into a u64 from an eventfd we own.
            let n = unsafe {
                libc::read(
                    efd.as_raw_fd(),
                    std::ptr::addr_of_mut!(count).cast(),
                    std::mem::size_of::<u64>(),
                )
            };
            assert_eq!(n, 8, "the eventfd did not fire");
            assert!(count >= 1);
            let oom_control =
                std::fs::read_to_string(memory_dir.join("memory.oom_control")).unwrap();
            assert!(oom_control.contains("oom_kill_disable 0"), "{oom_control}");
            let limit = std::fs::read_to_string(memory_dir.join("memory.limit_in_bytes")).unwrap();
            assert_eq!(limit.trim(), (256u64 << 20).to_string());
        }
        None => {
            let events = std::fs::read_to_string(memory_dir.join("memory.events")).unwrap();
            assert!(events.contains("oom_kill 1"), "{events}");
        }
    }
    drop(watcher);
    cg.remove().unwrap();
    for dir in cg.dirs() {
        assert!(!dir.exists(), "{} left", dir.display());
        let _ = std::fs::remove_dir(dir.parent().unwrap());
    }
}
