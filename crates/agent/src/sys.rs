//! Thin, safe wrappers over the few system calls the agent makes.
//!
//! Each returns `io::Result` and holds the only `unsafe` of its call.

use std::ffi::CString;
use std::io;
use std::mem::MaybeUninit;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::Duration;

fn cstring(bytes: &[u8]) -> io::Result<CString> {
    CString::new(bytes).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

fn path_cstring(path: &Path) -> io::Result<CString> {
    cstring(path.as_os_str().as_bytes())
}

/// Turns a `-1` return of a libc call into the `errno` error.
fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// mount(2).
pub fn mount(
    source: &str,
    target: &Path,
    fstype: &str,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> io::Result<()> {
    let source = cstring(source.as_bytes())?;
    let target = path_cstring(target)?;
    let fstype = cstring(fstype.as_bytes())?;
    let data = data.map(|d| cstring(d.as_bytes())).transpose()?;
    let data_ptr = data
        .as_ref()
        .map_or(std::ptr::null(), |d| d.as_ptr().cast::<libc::c_void>());
    // SAFETY: every pointer is a NUL-terminated string (or null for data)
    // that outlives the call; the kernel does not keep them.
    check(unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            flags,
            data_ptr,
        )
    })
    .map(drop)
}

/// sethostname(2).
pub fn set_hostname(name: &str) -> io::Result<()> {
    // SAFETY: the pointer and length describe `name`'s bytes, read only.
    check(unsafe { libc::sethostname(name.as_ptr().cast::<libc::c_char>(), name.len()) }).map(drop)
}

/// The fields of uname(2) the agent reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uname {
    /// The kernel release (`uname -r`).
    pub release: String,
    /// The host name (`uname -n`).
    pub nodename: String,
}

fn field_to_string(field: &[libc::c_char]) -> String {
    let bytes: Vec<u8> = field
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c.to_ne_bytes()[0])
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// uname(2).
pub fn uname() -> io::Result<Uname> {
    let mut buf = MaybeUninit::<libc::utsname>::zeroed();
    // SAFETY: uname writes a `utsname` into the buffer we own.
    check(unsafe { libc::uname(buf.as_mut_ptr()) })?;
    // SAFETY: uname succeeded, so the buffer is initialised (it was zeroed
    // anyway, and utsname is plain bytes).
    let buf = unsafe { buf.assume_init() };
    Ok(Uname {
        release: field_to_string(&buf.release),
        nodename: field_to_string(&buf.nodename),
    })
}

/// The number of online CPUs.
pub fn online_cpus() -> io::Result<u32> {
    // SAFETY: sysconf has no memory effects.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    u32::try_from(n).map_err(io::Error::other)
}

/// Total usable memory (MemTotal) in bytes, from sysinfo(2).
pub fn memory_total_bytes() -> io::Result<u64> {
    let mut info = MaybeUninit::<libc::sysinfo>::zeroed();
    // SAFETY: sysinfo writes a `sysinfo` struct into the buffer we own.
    check(unsafe { libc::sysinfo(info.as_mut_ptr()) })?;
    // SAFETY: sysinfo succeeded and the struct is plain integers.
    let info = unsafe { info.assume_init() };
    Ok(info.totalram.saturating_mul(u64::from(info.mem_unit)))
}

fn clock_gettime(clock: libc::clockid_t) -> io::Result<Duration> {
    let mut ts = MaybeUninit::<libc::timespec>::zeroed();
    // SAFETY: clock_gettime writes a timespec into the buffer we own.
    check(unsafe { libc::clock_gettime(clock, ts.as_mut_ptr()) })?;
    // SAFETY: the call succeeded and timespec is plain integers.
    let ts = unsafe { ts.assume_init() };
    let secs = u64::try_from(ts.tv_sec).map_err(io::Error::other)?;
    let nanos = u32::try_from(ts.tv_nsec).map_err(io::Error::other)?;
    Ok(Duration::new(secs, nanos))
}

/// Time since boot, suspend included (CLOCK_BOOTTIME).
pub fn boot_time() -> io::Result<Duration> {
    clock_gettime(libc::CLOCK_BOOTTIME)
}

/// Sets the wall clock (CLOCK_REALTIME).
pub fn set_realtime(unix_seconds: i64, nanos: u32) -> io::Result<()> {
    let ts = libc::timespec {
        tv_sec: unix_seconds,
        tv_nsec: libc::c_long::from(nanos),
    };
    // SAFETY: `ts` is a valid timespec read by the kernel during the call.
    check(unsafe { libc::clock_settime(libc::CLOCK_REALTIME, &ts) }).map(drop)
}

/// sync(2).
pub fn sync() {
    // SAFETY: sync takes no arguments and cannot fail.
    unsafe { libc::sync() }
}

/// reboot(RB_AUTOBOOT): resets the machine; returns only on error.
pub fn reboot() -> io::Error {
    // SAFETY: reboot has no memory effects; on success it does not return.
    let ret = unsafe { libc::reboot(libc::RB_AUTOBOOT) };
    if ret == -1 {
        io::Error::last_os_error()
    } else {
        io::Error::other("reboot returned")
    }
}

/// getpid(2).
pub fn getpid() -> libc::pid_t {
    // SAFETY: getpid has no memory effects and cannot fail.
    unsafe { libc::getpid() }
}

/// Blocks SIGCHLD in the calling thread; threads created afterwards
/// inherit the mask, so only the reaper's `sigtimedwait` consumes it.
pub fn block_sigchld() -> io::Result<()> {
    let set = sigchld_set()?;
    // SAFETY: `set` is an initialised sigset; the old mask is not wanted.
    let ret = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if ret != 0 {
        return Err(io::Error::from_raw_os_error(ret));
    }
    Ok(())
}

fn sigchld_set() -> io::Result<libc::sigset_t> {
    let mut set = MaybeUninit::<libc::sigset_t>::zeroed();
    // SAFETY: sigemptyset initialises the set we own.
    check(unsafe { libc::sigemptyset(set.as_mut_ptr()) })?;
    // SAFETY: the set was initialised by sigemptyset.
    check(unsafe { libc::sigaddset(set.as_mut_ptr(), libc::SIGCHLD) })?;
    // SAFETY: initialised by the two calls above.
    Ok(unsafe { set.assume_init() })
}

/// Waits up to `timeout` for a SIGCHLD (which must be blocked). Returns
/// whether one arrived.
pub fn wait_sigchld(timeout: Duration) -> io::Result<bool> {
    let set = sigchld_set()?;
    let ts = libc::timespec {
        tv_sec: libc::time_t::try_from(timeout.as_secs()).unwrap_or(libc::time_t::MAX),
        tv_nsec: libc::c_long::from(timeout.subsec_nanos()),
    };
    // SAFETY: `set` and `ts` are valid for the call; no siginfo is wanted.
    let ret = unsafe { libc::sigtimedwait(&set, std::ptr::null_mut(), &ts) };
    if ret == -1 {
        let err = io::Error::last_os_error();
        return match err.raw_os_error() {
            Some(libc::EAGAIN | libc::EINTR) => Ok(false),
            _ => Err(err),
        };
    }
    Ok(true)
}

/// One child that changed state, from `waitpid(-1, WNOHANG)`.
pub fn reap_any() -> io::Result<Option<(libc::pid_t, libc::c_int)>> {
    let mut status: libc::c_int = 0;
    // SAFETY: waitpid writes the status into the integer we own.
    let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
    match pid {
        -1 => {
            let err = io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::ECHILD) {
                Ok(None)
            } else {
                Err(err)
            }
        }
        0 => Ok(None),
        pid => Ok(Some((pid, status))),
    }
}

/// Makes this process the reaper of its orphaned descendants.
pub fn set_child_subreaper() {
    // SAFETY: PR_SET_CHILD_SUBREAPER takes an integer argument.
    let ret = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1 as libc::c_ulong) };
    if ret == -1 {
        tracing::warn!("PR_SET_CHILD_SUBREAPER: {}", io::Error::last_os_error());
    }
}

/// Makes the agent's memory unreadable through /proc and ptrace to
/// processes without CAP_SYS_PTRACE (PR_SET_DUMPABLE 0). A container's
/// process runs in the agent's memory until its execve (see the
/// container launcher's `vfork`) and is visible in the container's pid
/// namespace meanwhile: without this, another process of the container
/// could read the agent's memory (`/proc/PID/environ`, `mem`) or write it.
/// runc does the same for its init (CVE-2016-9962). execve makes the
/// container's program dumpable again as usual.
pub fn set_non_dumpable() -> std::io::Result<()> {
    // SAFETY: prctl(PR_SET_DUMPABLE) takes integers only.
    if unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
