//! Host processes of a container (monitor, VMM) by pid: liveness, identity
//! and killing, with a check against pid reuse.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::image::VMM_BINARY as VMM_EXE;

/// Whether `pid` names a live process (a zombie counts as dead).
pub fn pid_alive(pid: u32) -> bool {
    let Ok(raw) = libc::pid_t::try_from(pid) else {
        return false;
    };
    if raw <= 0 {
        return false;
    }
    // SAFETY: signal 0 only checks for existence and permission.
    let rc = unsafe { libc::kill(raw, 0) };
    if rc != 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EPERM) {
        return false;
    }
    // `/proc/<pid>/stat` is "pid (comm) S ...": the state follows the last ')'.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next())
            .is_some_and(|state| state != 'Z' && state != 'X'),
        Err(_) => false,
    }
}

/// Whether `pid` is alive and runs the executable named `name` (guards
/// against killing an unrelated process that got a recycled pid).
pub fn pid_runs(pid: u32, name: &str) -> bool {
    if !pid_alive(pid) {
        return false;
    }
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok();
    let by_exe = exe
        .as_deref()
        .and_then(Path::file_name)
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.trim_end_matches(" (deleted)") == name);
    let by_cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))
        .ok()
        .and_then(|c| {
            c.split(|b| *b == 0)
                .next()
                .map(|arg0| String::from_utf8_lossy(arg0).into_owned())
        })
        .is_some_and(|arg0| Path::new(&arg0).file_name().and_then(|n| n.to_str()) == Some(name));
    by_exe || by_cmdline
}

/// Sends `signal` to `pid`; false if it could not be delivered.
pub fn send_signal(pid: u32, signal: i32) -> bool {
    let Ok(raw) = libc::pid_t::try_from(pid) else {
        return false;
    };
    if raw <= 0 {
        return false;
    }
    // SAFETY: kill(2) with a positive pid has no memory effects.
    unsafe { libc::kill(raw, signal) == 0 }
}

/// Waits up to `timeout` for `pid` to die; true if it did.
pub fn wait_dead(pid: u32, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if !pid_alive(pid) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Kills `pid` with SIGKILL if it still runs `name`, and waits for it.
pub fn kill_if_runs(pid: u32, name: &str) {
    if pid_runs(pid, name) {
        tracing::debug!(pid, name, "killing leftover process");
        send_signal(pid, libc::SIGKILL);
        wait_dead(pid, Duration::from_secs(5));
    }
}

/// Kills the `nacre-vmm` of run directory `run_dir`: the pid recorded in
/// `run_dir/vmm.pid` and any `pids` given, each only if it still runs
/// `nacre-vmm` with `run_dir` on its command line (its sockets and logs
/// live there), so a recycled pid is never hit. The one way nacre kills a
/// VMM it lost track of (CLI delete, shim delete, template prune).
/// Returns whether one was killed.
pub fn kill_vmm(run_dir: &Path, pids: &[u32]) -> bool {
    let mut killed = false;
    while let Some(pid) = vmm_in(run_dir, pids) {
        tracing::info!(pid, run_dir = %run_dir.display(), "killing a leftover VMM");
        send_signal(pid, libc::SIGKILL);
        if !wait_dead(pid, Duration::from_secs(5)) {
            break;
        }
        killed = true;
    }
    killed
}

/// A live `nacre-vmm` of run directory `run_dir`, among the pid recorded
/// in `run_dir/vmm.pid` and `pids`: one that runs `nacre-vmm` with
/// `run_dir` on its command line.
pub fn vmm_in(run_dir: &Path, pids: &[u32]) -> Option<u32> {
    let recorded = std::fs::read_to_string(run_dir.join("vmm.pid"))
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok());
    let needle = run_dir.as_os_str().as_encoded_bytes();
    pids.iter().copied().chain(recorded).find(|&pid| {
        pid_runs(pid, VMM_EXE)
            && std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| !needle.is_empty() && c.windows(needle.len()).any(|w| w == needle))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_is_alive_and_impossible_pid_is_not() {
        assert!(pid_alive(std::process::id()));
        assert!(!pid_alive(0));
        assert!(!pid_alive(0x3fff_fff0));
    }

    #[test]
    fn identity_and_kill() {
        let mut child = std::process::Command::new("sleep")
            .arg("100")
            .spawn()
            .unwrap();
        let pid = child.id();
        assert!(pid_runs(pid, "sleep"));
        assert!(!pid_runs(pid, "nacre-vmm"));
        kill_if_runs(pid, "nacre-vmm");
        assert!(pid_alive(pid));
        kill_if_runs(pid, "sleep");
        // A zombie until reaped, which counts as dead.
        assert!(!pid_alive(pid));
        child.wait().unwrap();
    }

    /// The guard: a process that is not a nacre-vmm of that run
    /// directory is never killed, even with the pid file naming it.
    #[test]
    fn kill_vmm_needs_the_name_and_the_run_directory() {
        let dir = std::env::temp_dir().join(format!("nacre-killvmm-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // A process with the run directory on its command line ($0 of
        // sh -c) that is not a nacre-vmm.
        let mut child = std::process::Command::new("sh")
            .args(["-c", "sleep 100"])
            .arg(&dir)
            .spawn()
            .unwrap();
        std::fs::write(dir.join("vmm.pid"), child.id().to_string()).unwrap();
        assert!(!kill_vmm(&dir, &[child.id()]));
        assert!(pid_alive(child.id()));
        child.kill().unwrap();
        child.wait().unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A run directory in use by a live VMM (one named `nacre-vmm` with
    /// the directory on its command line) is found, and killed by
    /// `kill_vmm`; once it is dead, nothing is found.
    #[test]
    fn a_live_vmm_of_a_run_directory_is_found() {
        use std::os::unix::process::CommandExt;
        let dir = std::env::temp_dir().join(format!("nacre-vmmin-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut child = std::process::Command::new("sh")
            .arg0("nacre-vmm")
            .args(["-c", "sleep 100; :"])
            .arg(&dir)
            .spawn()
            .unwrap();
        std::fs::write(dir.join("vmm.pid"), child.id().to_string()).unwrap();
        // Once the child has exec'd (its command line is its own).
        let deadline = Instant::now() + Duration::from_secs(10);
        while vmm_in(&dir, &[]).is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(vmm_in(&dir, &[]), Some(child.id()));
        assert_eq!(vmm_in(&dir.join("other"), &[child.id()]), None);
        assert!(kill_vmm(&dir, &[]));
        child.wait().unwrap();
        assert_eq!(vmm_in(&dir, &[]), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
