//! Thin wrappers over the system calls of container setup. Each returns
//! `io::Result` and holds the only `unsafe` of its call. Several run in a
//! freshly forked child, so none of them logs.

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// A path or string as a C string.
pub fn cstr(bytes: impl AsRef<[u8]>) -> io::Result<CString> {
    CString::new(bytes.as_ref()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

fn path_c(path: &Path) -> io::Result<CString> {
    cstr(path.as_os_str().as_bytes())
}

fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn check_long(ret: libc::c_long) -> io::Result<libc::c_long> {
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// mount(2) with optional source, type and data.
pub fn mount(
    source: Option<&Path>,
    target: &Path,
    fstype: Option<&str>,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> io::Result<()> {
    let source = source.map(path_c).transpose()?;
    let target = path_c(target)?;
    let fstype = fstype.map(cstr).transpose()?;
    let data = data.filter(|d| !d.is_empty()).map(cstr).transpose()?;
    let ptr = |c: &Option<CString>| c.as_ref().map_or(std::ptr::null(), |c| c.as_ptr());
    // SAFETY: every pointer is null or a NUL-terminated string that
    // outlives the call.
    check(unsafe {
        libc::mount(
            ptr(&source),
            target.as_ptr(),
            ptr(&fstype),
            flags,
            ptr(&data).cast::<libc::c_void>(),
        )
    })
    .map(drop)
}

/// umount2(2).
pub fn umount(target: &Path, flags: libc::c_int) -> io::Result<()> {
    let target = path_c(target)?;
    // SAFETY: a NUL-terminated path valid for the call.
    check(unsafe { libc::umount2(target.as_ptr(), flags) }).map(drop)
}

/// pivot_root(2).
pub fn pivot_root(new_root: &Path, put_old: &Path) -> io::Result<()> {
    let new_root = path_c(new_root)?;
    let put_old = path_c(put_old)?;
    // SAFETY: two NUL-terminated paths valid for the call.
    check_long(unsafe { libc::syscall(libc::SYS_pivot_root, new_root.as_ptr(), put_old.as_ptr()) })
        .map(drop)
}

/// chroot(2).
pub fn chroot(path: &Path) -> io::Result<()> {
    let path = path_c(path)?;
    // SAFETY: a NUL-terminated path valid for the call.
    check(unsafe { libc::chroot(path.as_ptr()) }).map(drop)
}

/// unshare(2).
pub fn unshare(flags: libc::c_int) -> io::Result<()> {
    // SAFETY: unshare has no memory effects.
    check(unsafe { libc::unshare(flags) }).map(drop)
}

/// setns(2) into the namespace file `fd`.
pub fn setns(fd: BorrowedFd<'_>, nstype: libc::c_int) -> io::Result<()> {
    // SAFETY: setns has no memory effects; `fd` is open.
    check(unsafe { libc::setns(fd.as_raw_fd(), nstype) }).map(drop)
}

/// mknodat(2) of a character device `rdev` named `name` in `dir`, with
/// `mode` (permission bits; the umask applies). An existing name (even a
/// symlink) is EEXIST, never followed.
pub fn mknodat_char(
    dir: BorrowedFd<'_>,
    name: &CStr,
    mode: libc::mode_t,
    rdev: libc::dev_t,
) -> io::Result<()> {
    // SAFETY: a NUL-terminated name relative to a descriptor we borrow.
    check(unsafe { libc::mknodat(dir.as_raw_fd(), name.as_ptr(), libc::S_IFCHR | mode, rdev) })
        .map(drop)
}

/// symlinkat(2): `name` in `dir` pointing to `target`; EEXIST if the name
/// exists (never followed).
pub fn symlinkat(target: &CStr, dir: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
    // SAFETY: NUL-terminated strings and a descriptor we borrow.
    check(unsafe { libc::symlinkat(target.as_ptr(), dir.as_raw_fd(), name.as_ptr()) }).map(drop)
}

/// Opens `path` read-only with O_CLOEXEC.
pub fn open(path: &Path, flags: libc::c_int) -> io::Result<OwnedFd> {
    let c = path_c(path)?;
    // SAFETY: a NUL-terminated path; the returned descriptor is new.
    let fd = check(unsafe { libc::open(c.as_ptr(), flags | libc::O_CLOEXEC) })?;
    // SAFETY: `fd` was just opened and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// pipe2(O_CLOEXEC): (read end, write end).
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: pipe2 writes two descriptors into the array we own.
    check(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
    // SAFETY: both descriptors were just created and are owned here.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// A new pseudo-terminal: (master, slave, slave path).
pub fn openpty() -> io::Result<(OwnedFd, OwnedFd, String)> {
    // SAFETY: posix_openpt returns a new descriptor or -1.
    let master =
        check(unsafe { libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC) })?;
    // SAFETY: `master` was just opened and is owned here.
    let master = unsafe { OwnedFd::from_raw_fd(master) };
    // SAFETY: grantpt and unlockpt take an open master descriptor.
    check(unsafe { libc::grantpt(master.as_raw_fd()) })?;
    // SAFETY: as above.
    check(unsafe { libc::unlockpt(master.as_raw_fd()) })?;
    let mut name = [0 as libc::c_char; 128];
    // SAFETY: ptsname_r writes at most `name.len()` bytes into `name`.
    let ret = unsafe { libc::ptsname_r(master.as_raw_fd(), name.as_mut_ptr(), name.len()) };
    if ret != 0 {
        return Err(io::Error::from_raw_os_error(ret));
    }
    // SAFETY: ptsname_r succeeded, so `name` holds a NUL-terminated string.
    let path = unsafe { CStr::from_ptr(name.as_ptr()) }
        .to_string_lossy()
        .into_owned();
    let slave = open(Path::new(&path), libc::O_RDWR | libc::O_NOCTTY)?;
    Ok((master, slave, path))
}

/// A new pseudo-terminal of the devpts instance a container sees at
/// `/dev/pts`, `root` being the container's root (`/proc/PID/root`), as
/// runc opens an exec's terminal from the container's `/dev/ptmx`: the
/// slave is then `/dev/pts/N` in the container. `dev/pts/ptmx` is
/// resolved inside `root` (openat2 RESOLVE_IN_ROOT: the container's own
/// symlinks cannot lead out) and must be a ptmx device. Returns (master,
/// slave, slave path in the container).
pub fn openpty_in(root: &Path) -> io::Result<(OwnedFd, OwnedFd, String)> {
    let root = open(root, libc::O_PATH | libc::O_DIRECTORY)?;
    // SAFETY: all-zero is a valid open_how (non-exhaustive in libc).
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = u64::try_from(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC | libc::O_NONBLOCK)
        .unwrap_or_default();
    how.resolve = libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS;
    let name = c"dev/pts/ptmx";
    // SAFETY: openat2 reads the NUL-terminated name and the open_how that
    // live for the call; the returned descriptor is new.
    let fd = check_long(unsafe {
        libc::syscall(
            libc::SYS_openat2,
            root.as_raw_fd(),
            name.as_ptr(),
            std::ptr::from_ref(&how),
            std::mem::size_of::<libc::open_how>(),
        )
    })?;
    let fd = RawFd::try_from(fd).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?;
    // SAFETY: `fd` was just opened and is owned by nobody else.
    let master = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: all-zero is a valid stat; fstat writes into it.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat of an open descriptor into our stat.
    check(unsafe { libc::fstat(master.as_raw_fd(), &mut st) })?;
    if st.st_mode & libc::S_IFMT != libc::S_IFCHR
        || libc::major(st.st_rdev) != 5
        || libc::minor(st.st_rdev) != 2
    {
        return Err(io::Error::other(
            "the container's /dev/pts/ptmx is not a ptmx device",
        ));
    }
    // SAFETY: unlockpt takes an open master descriptor.
    check(unsafe { libc::unlockpt(master.as_raw_fd()) })?;
    let mut n: libc::c_uint = 0;
    // SAFETY: TIOCGPTN writes the pty number into our c_uint.
    check(unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCGPTN, &mut n) })?;
    // SAFETY: TIOCGPTPEER opens the slave of this master, a new descriptor.
    let slave = check(unsafe {
        libc::ioctl(
            master.as_raw_fd(),
            libc::TIOCGPTPEER,
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        )
    })?;
    // SAFETY: `slave` was just opened and is owned by nobody else.
    let slave = unsafe { OwnedFd::from_raw_fd(slave) };
    // SAFETY: fcntl on an open descriptor, integer arguments.
    let flags = check(unsafe { libc::fcntl(master.as_raw_fd(), libc::F_GETFL) })?;
    // SAFETY: as above.
    check(unsafe { libc::fcntl(master.as_raw_fd(), libc::F_SETFL, flags & !libc::O_NONBLOCK) })?;
    Ok((master, slave, format!("/dev/pts/{n}")))
}

/// Sets a terminal's window size.
pub fn set_winsize(fd: BorrowedFd<'_>, rows: u16, cols: u16) -> io::Result<()> {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads a winsize that lives for the call.
    check(unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, &ws) }).map(drop)
}

/// kill(2).
pub fn kill(pid: libc::pid_t, signal: libc::c_int) -> io::Result<()> {
    // SAFETY: kill has no memory effects.
    check(unsafe { libc::kill(pid, signal) }).map(drop)
}

/// _exit(2): ends the forked child without running destructors.
pub fn exit_now(code: libc::c_int) -> ! {
    // SAFETY: _exit never returns and has no preconditions.
    unsafe { libc::_exit(code) }
}

/// write(2) of all of `data`, retrying on EINTR.
pub fn write_all(fd: BorrowedFd<'_>, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        // SAFETY: the pointer and length describe `data`, read only.
        let n = unsafe { libc::write(fd.as_raw_fd(), data.as_ptr().cast(), data.len()) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        let n = usize::try_from(n).unwrap_or(0);
        data = data.get(n..).unwrap_or_default();
    }
    Ok(())
}

/// read(2) into `buf`, retrying on EINTR. 0 at EOF.
pub fn read(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        // SAFETY: the pointer and length describe `buf`, which we own.
        let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n >= 0 {
            return Ok(usize::try_from(n).unwrap_or(0));
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Reads until EOF.
pub fn read_to_end(fd: BorrowedFd<'_>) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut buf = [0u8; 512];
    loop {
        let n = read(fd, &mut buf)?;
        if n == 0 {
            return Ok(out);
        }
        out.extend_from_slice(buf.get(..n).unwrap_or_default());
    }
}

/// dup3(old, new, flags).
pub fn dup3(old: RawFd, new: RawFd, flags: libc::c_int) -> io::Result<()> {
    if old == new {
        // dup3 refuses equal descriptors; clear CLOEXEC by hand instead.
        let fd_flags = if flags & libc::O_CLOEXEC != 0 {
            libc::FD_CLOEXEC
        } else {
            0
        };
        // SAFETY: fcntl on a descriptor number has no memory effects.
        return check(unsafe { libc::fcntl(old, libc::F_SETFD, fd_flags) }).map(drop);
    }
    // SAFETY: dup3 has no memory effects; it replaces `new`.
    check(unsafe { libc::dup3(old, new, flags) }).map(drop)
}

/// Duplicates `fd` to a number at least `min` (with O_CLOEXEC).
pub fn dup_above(fd: RawFd, min: RawFd) -> io::Result<RawFd> {
    // SAFETY: fcntl F_DUPFD_CLOEXEC has no memory effects.
    check(unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, min) })
}

/// Closes every descriptor from `first` up.
pub fn close_from(first: RawFd) -> io::Result<()> {
    let first = libc::c_uint::try_from(first).map_err(io::Error::other)?;
    // SAFETY: close_range has no memory effects; nothing else uses these
    // descriptors in the single-threaded child.
    check_long(unsafe { libc::syscall(libc::SYS_close_range, first, libc::c_uint::MAX, 0) })
        .map(drop)
}

/// Unblocks every signal and resets every handled or ignored signal to its
/// default (the agent ignores SIGPIPE and blocks SIGCHLD).
pub fn reset_signals() -> io::Result<()> {
    for sig in (1..64).filter(|s| non_default_signals() & (1u64 << s) != 0) {
        // SAFETY: resetting a disposition to SIG_DFL has no memory effects.
        unsafe { libc::signal(sig, libc::SIG_DFL) };
    }
    let mut set = std::mem::MaybeUninit::<libc::sigset_t>::zeroed();
    // SAFETY: sigemptyset initialises the set we own.
    check(unsafe { libc::sigemptyset(set.as_mut_ptr()) })?;
    // SAFETY: the set was initialised; the old mask is not wanted.
    let ret =
        unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, set.as_ptr(), std::ptr::null_mut()) };
    if ret != 0 {
        return Err(io::Error::from_raw_os_error(ret));
    }
    Ok(())
}

/// The signals (bit n for signal n) whose disposition is not the default
/// in the agent, read once (64 system calls; the agent does it before a
/// template is snapshotted): a child resets only those. Handlers set
/// later are reset by execve anyway; only ignored signals would survive
/// it, and the agent ignores none after it starts.
pub fn non_default_signals() -> u64 {
    static MASK: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *MASK.get_or_init(|| {
        let mut mask = 0u64;
        for sig in 1..64 {
            if sig == libc::SIGKILL || sig == libc::SIGSTOP {
                continue;
            }
            let mut old = std::mem::MaybeUninit::<libc::sigaction>::zeroed();
            // SAFETY: queries the disposition into `old`, which we own.
            let rc = unsafe { libc::sigaction(sig, std::ptr::null(), old.as_mut_ptr()) };
            // SAFETY: sigaction filled `old` when it returned 0.
            if rc == 0 && unsafe { old.assume_init() }.sa_sigaction != libc::SIG_DFL {
                mask |= 1u64 << sig;
            }
        }
        mask
    })
}

/// setsid(2).
pub fn setsid() -> io::Result<()> {
    // SAFETY: setsid has no memory effects.
    check(unsafe { libc::setsid() }).map(drop)
}

/// Makes `fd` (a terminal) the controlling terminal.
pub fn set_controlling_tty(fd: RawFd) -> io::Result<()> {
    // SAFETY: TIOCSCTTY takes an integer argument.
    check(unsafe { libc::ioctl(fd, libc::TIOCSCTTY, 0) }).map(drop)
}

/// sethostname(2).
pub fn set_hostname(name: &str) -> io::Result<()> {
    // SAFETY: the pointer and length describe `name`'s bytes, read only.
    check(unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) }).map(drop)
}

/// setrlimit(2).
pub fn setrlimit(resource: libc::c_int, soft: u64, hard: u64) -> io::Result<()> {
    let lim = libc::rlimit {
        rlim_cur: soft,
        rlim_max: hard,
    };
    #[allow(
        clippy::useless_conversion,
        reason = "the resource type differs between libcs"
    )]
    let resource = resource
        .try_into()
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: setrlimit reads the struct during the call.
    check(unsafe { libc::setrlimit(resource, &lim) }).map(drop)
}

/// prctl(2) with up to two arguments.
pub fn prctl(option: libc::c_int, arg2: libc::c_ulong, arg3: libc::c_ulong) -> io::Result<()> {
    // SAFETY: the options used here take integer arguments only.
    check(unsafe { libc::prctl(option, arg2, arg3, 0 as libc::c_ulong, 0 as libc::c_ulong) })
        .map(drop)
}

/// setgroups, setgid, setuid (raw system calls: they apply to this thread,
/// and the child has only one).
pub fn set_ids(uid: u32, gid: u32, groups: &[u32]) -> io::Result<()> {
    // SAFETY: the pointer and length describe `groups`, read only.
    check_long(unsafe { libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr()) })?;
    // SAFETY: setresgid has no memory effects.
    check_long(unsafe { libc::syscall(libc::SYS_setresgid, gid, gid, gid) })?;
    // SAFETY: setresuid has no memory effects.
    check_long(unsafe { libc::syscall(libc::SYS_setresuid, uid, uid, uid) }).map(drop)
}

/// capset(2) of the three 64-bit sets (version 3).
pub fn capset(effective: u64, permitted: u64, inheritable: u64) -> io::Result<()> {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: libc::c_int,
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const VERSION_3: u32 = 0x2008_0522;
    let mut header = Header {
        version: VERSION_3,
        pid: 0,
    };
    let split = |v: u64| [(v & 0xffff_ffff) as u32, (v >> 32) as u32];
    let (e, p, i) = (split(effective), split(permitted), split(inheritable));
    let data = [
        Data {
            effective: e[0],
            permitted: p[0],
            inheritable: i[0],
        },
        Data {
            effective: e[1],
            permitted: p[1],
            inheritable: i[1],
        },
    ];
    // SAFETY: header and data are the layout capset(2) v3 reads, and live
    // for the call.
    check_long(unsafe { libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) }).map(drop)
}

/// umask(2); returns the previous mask.
pub fn umask(mask: libc::mode_t) -> libc::mode_t {
    // SAFETY: umask has no memory effects and cannot fail.
    unsafe { libc::umask(mask) }
}

/// What execve needs, built before the call: a child sharing the agent's
/// memory (see `vfork`) leaves it to the agent, which frees it, instead of
/// leaking what it allocated.
#[derive(Debug)]
pub struct ExecArgs {
    path: CString,
    _args: Vec<CString>,
    _env: Vec<CString>,
    argv: Vec<*const libc::c_char>,
    envp: Vec<*const libc::c_char>,
}

// SAFETY: the pointers point into the CStrings owned alongside them, which
// never change; the value is only read after it is made.
unsafe impl Send for ExecArgs {}
// SAFETY: as above.
unsafe impl Sync for ExecArgs {}

impl ExecArgs {
    /// The program at `path` with `args` and environment `env`.
    #[must_use]
    pub fn new(path: CString, args: Vec<CString>, env: Vec<CString>) -> ExecArgs {
        let mut argv: Vec<*const libc::c_char> = args.iter().map(|a| a.as_ptr()).collect();
        argv.push(std::ptr::null());
        let mut envp: Vec<*const libc::c_char> = env.iter().map(|e| e.as_ptr()).collect();
        envp.push(std::ptr::null());
        ExecArgs {
            path,
            _args: args,
            _env: env,
            argv,
            envp,
        }
    }

    /// The program's path.
    #[must_use]
    pub fn path(&self) -> &CStr {
        &self.path
    }

    /// execve(2); returns only on failure.
    pub fn execve(&self) -> io::Error {
        // SAFETY: path, argv and envp are NUL-terminated strings and
        // null-terminated arrays owned by `self`, which outlives the call.
        unsafe { libc::execve(self.path.as_ptr(), self.argv.as_ptr(), self.envp.as_ptr()) };
        io::Error::last_os_error()
    }
}

/// The current time in milliseconds since the Unix epoch.
#[must_use]
pub fn now_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
