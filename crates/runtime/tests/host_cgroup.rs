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
