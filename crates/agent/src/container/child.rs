//! The code that runs in a freshly forked child, up to execve: namespaces,
//! mounts, pivot_root, the process's user and capabilities.
//!
//! The agent is multi-threaded, so the child must not take locks another
//! thread may have held at fork time: no logging here. glibc's fork keeps
//! malloc usable. Every failure becomes a message the parent reads from
//! the sync pipe.

use std::ffi::CString;
use std::fs;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::OnceLock;

use seccompiler::BpfProgram;

use super::caps;
use super::ffi;
use super::mounts::{self, READONLY_REMOUNT};
use super::spec::{Process, Spec};
use super::steps::{self as step, timed};

/// Descriptor numbers in the child after [`arrange_fds`].
pub const START_FD: RawFd = 3;
/// The sync pipe's write end in the child.
pub const SYNC_FD: RawFd = 4;

/// Byte the child writes to the sync pipe when its setup is done.
pub const READY: u8 = 0;
/// Byte that starts an error message on the sync pipe.
pub const FAILED: u8 = 1;

/// The descriptors a child starts with, as numbers in the parent.
#[derive(Debug, Clone, Copy)]
pub struct ChildFds {
    /// Becomes 0, 1, 2 (the same terminal slave for all three with a tty).
    pub stdio: [RawFd; 3],
    /// The terminal slave, made the controlling terminal.
    pub tty: bool,
    /// Read end of the start pipe (init only).
    pub start: Option<RawFd>,
    /// Write end of the sync pipe.
    pub sync: RawFd,
}

/// An error of a setup step, as sent to the parent.
type Step<T = ()> = Result<T, String>;

fn ctx(what: impl FnOnce() -> String) -> impl FnOnce(io::Error) -> String {
    move |e| format!("{}: {e}", what())
}

/// Moves the inherited descriptors to their places and closes the rest
/// (descriptors of other containers must not stay open in this one).
pub fn arrange_fds(fds: &ChildFds) -> Step {
    let high = |fd| ffi::dup_above(fd, 100).map_err(ctx(|| "duplicating stdio".into()));
    let stdio = [
        high(fds.stdio[0])?,
        high(fds.stdio[1])?,
        high(fds.stdio[2])?,
    ];
    let start = fds.start.map(high).transpose()?;
    let sync = high(fds.sync)?;
    for (target, fd) in (0..).zip(stdio) {
        ffi::dup3(fd, target, 0).map_err(ctx(|| "placing stdio".into()))?;
    }
    if let Some(start) = start {
        ffi::dup3(start, START_FD, libc::O_CLOEXEC).map_err(ctx(|| "placing start pipe".into()))?;
    }
    ffi::dup3(sync, SYNC_FD, libc::O_CLOEXEC).map_err(ctx(|| "placing sync pipe".into()))?;
    ffi::close_from(SYNC_FD + 1).map_err(ctx(|| "closing inherited descriptors".into()))?;
    if fds.tty {
        ffi::setsid().map_err(ctx(|| "setsid".into()))?;
        ffi::set_controlling_tty(0).map_err(ctx(|| "setting the controlling terminal".into()))?;
    } else {
        ffi::setsid().map_err(ctx(|| "setsid".into()))?;
    }
    Ok(())
}

/// Sends the outcome of the setup to the parent (through [`SYNC_FD`],
/// placed by [`arrange_fds`]).
pub fn report(result: &Step) {
    report_to(SYNC_FD, result);
}

/// Sends the outcome of the setup through the sync pipe at `fd`.
pub fn report_to(fd: RawFd, result: &Step) {
    // SAFETY: the caller passes the sync pipe's descriptor, open in this
    // child until execve or exit.
    let sync = unsafe { BorrowedFd::borrow_raw(fd) };
    let _ = match result {
        Ok(()) => ffi::write_all(sync, &[READY]),
        Err(msg) => {
            let mut buf = vec![FAILED];
            buf.extend_from_slice(msg.as_bytes());
            ffi::write_all(sync, &buf)
        }
    };
}

/// Blocks until the parent writes to the start pipe; false if it closed
/// it instead (the container was removed before it started).
pub fn wait_for_start() -> bool {
    // SAFETY: START_FD was placed by `arrange_fds` and stays open.
    let start = unsafe { BorrowedFd::borrow_raw(START_FD) };
    let mut byte = [0u8; 1];
    matches!(ffi::read(start, &mut byte), Ok(1))
}

/// Writes the process's oom_score_adj (before the agent's /proc is out
/// of view).
pub fn set_oom_score_adj(p: &Process) -> Step {
    if let Some(adj) = p.oom_score_adj {
        fs::write("/proc/self/oom_score_adj", adj.to_string())
            .map_err(ctx(|| format!("setting oom_score_adj to {adj}")))?;
    }
    Ok(())
}

/// Joins `path` (a cgroup's cgroup.procs).
pub fn join_cgroup(procs: Option<&Path>) -> Step {
    if let Some(procs) = procs {
        fs::write(procs, "0").map_err(ctx(|| format!("joining cgroup {}", procs.display())))?;
    }
    Ok(())
}

/// The namespaces of a new container other than pid (created by the
/// parent's thread before fork): joined by path or created. The network
/// namespace is the VM's own unless a path is given; a mount namespace is
/// always created.
pub fn enter_namespaces(spec: &Spec) -> Step {
    let kinds = [
        ("cgroup", libc::CLONE_NEWCGROUP),
        ("ipc", libc::CLONE_NEWIPC),
        ("uts", libc::CLONE_NEWUTS),
        ("network", libc::CLONE_NEWNET),
        ("mount", libc::CLONE_NEWNS),
    ];
    let mut unshare = libc::CLONE_NEWNS;
    for (kind, flag) in kinds {
        let Some(ns) = spec.namespace(kind) else {
            continue;
        };
        match ns.path.as_deref().filter(|p| !p.is_empty()) {
            Some(path) => {
                let fd = ffi::open(Path::new(path), libc::O_RDONLY)
                    .map_err(ctx(|| format!("opening {kind} namespace {path}")))?;
                ffi::setns(std::os::fd::AsFd::as_fd(&fd), flag)
                    .map_err(ctx(|| format!("joining {kind} namespace {path}")))?;
                if flag == libc::CLONE_NEWNS {
                    unshare &= !libc::CLONE_NEWNS;
                }
            }
            None if kind == "network" => {}
            None => unshare |= flag,
        }
    }
    ffi::unshare(unshare).map_err(ctx(|| "creating namespaces (unshare)".into()))
}

/// `dest` (absolute in the container) under `rootfs`, refusing `..`.
pub fn in_rootfs(rootfs: &Path, dest: &str) -> Step<PathBuf> {
    let mut out = rootfs.to_path_buf();
    for c in Path::new(dest).components() {
        match c {
            Component::Normal(part) => out.push(part),
            Component::RootDir | Component::CurDir => {}
            Component::ParentDir | Component::Prefix(_) => {
                return Err(format!("mount destination {dest:?} leaves the rootfs"))
            }
        }
    }
    Ok(out)
}

fn create_mount_point(target: &Path, file: bool) -> Step {
    if target.exists() {
        return Ok(());
    }
    if file {
        if let Some(parent) = target.parent() {
            fs::create_dir_all(parent).map_err(ctx(|| format!("creating {}", parent.display())))?;
        }
        fs::File::create(target).map_err(ctx(|| format!("creating {}", target.display())))?;
    } else {
        fs::create_dir_all(target).map_err(ctx(|| format!("creating {}", target.display())))?;
    }
    Ok(())
}

/// Sets up the rootfs: a private mount tree, the spec's mounts, /dev.
/// Each of the spec's mounts and the device nodes are timed into `steps`
/// when given.
pub fn mount_rootfs(
    spec: &Spec,
    rootfs: &Path,
    console: Option<&str>,
    steps: Option<&super::steps::ChildSteps>,
) -> Step {
    let linux = spec.linux.clone().unwrap_or_default();
    let propagation = match linux.rootfs_propagation.as_deref() {
        Some("shared") | Some("rshared") => libc::MS_SHARED | libc::MS_REC,
        Some("slave") | Some("rslave") => libc::MS_SLAVE | libc::MS_REC,
        _ => libc::MS_PRIVATE | libc::MS_REC,
    };
    ffi::mount(None, Path::new("/"), None, propagation, None)
        .map_err(ctx(|| "making / private".into()))?;
    ffi::mount(
        Some(rootfs),
        rootfs,
        None,
        libc::MS_BIND | libc::MS_REC,
        None,
    )
    .map_err(ctx(|| format!("bind-mounting rootfs {}", rootfs.display())))?;

    let has = |dest: &str| spec.mounts.iter().any(|m| m.destination == dest);
    // Device nodes can be made in /dev unless the spec mounts it nodev.
    let dev_nodes = !spec
        .mounts
        .iter()
        .any(|m| m.destination == "/dev" && m.options.iter().any(|o| o == "nodev"));
    if !has("/dev") {
        let dev = rootfs.join("dev");
        create_mount_point(&dev, false)?;
        ffi::mount(
            Some(Path::new("tmpfs")),
            &dev,
            Some("tmpfs"),
            libc::MS_NOSUID | libc::MS_STRICTATIME,
            Some("mode=755,size=65536k"),
        )
        .map_err(ctx(|| "mount tmpfs on /dev".into()))?;
    }
    for m in &spec.mounts {
        timed(steps, step::MOUNT, || mount_one(rootfs, m))?;
    }
    timed(steps, step::POPULATE_DEV, || {
        populate_dev(rootfs, console, has("/dev/pts"), has("/dev/shm"), dev_nodes)
    })
}

fn mount_one(rootfs: &Path, m: &super::spec::Mount) -> Step {
    let kind = m.kind.as_deref().unwrap_or("none");
    let opts = mounts::parse(Some(kind), &m.options);
    // proc and sysfs: the path as written (checked below, as runc does);
    // anything else: resolved inside the rootfs, as runc's securejoin.
    let target = if matches!(kind, "proc" | "sysfs") {
        in_rootfs(rootfs, &m.destination)?
    } else {
        super::securejoin::secure_join(rootfs, &m.destination)?
    };
    let what = || format!("mount {kind} on {}", m.destination);
    if opts.is_bind() {
        let source = m.source.as_deref().unwrap_or_default();
        let src = Path::new(source);
        let meta = fs::metadata(src).map_err(ctx(|| format!("{}: source {source}", what())))?;
        create_mount_point(&target, !meta.is_dir())?;
        let flags = libc::MS_BIND | (opts.flags & libc::MS_REC);
        ffi::mount(Some(src), &target, None, flags, None).map_err(ctx(what))?;
        if let Some(remount) = opts.bind_remount_flags() {
            ffi::mount(None, &target, None, remount, None)
                .map_err(ctx(|| format!("{} (remount)", what())))?;
        }
    } else {
        // runc: proc and sysfs go only on an ordinary directory (or a new
        // one), never through a symlink or onto a file the image planted.
        if matches!(kind, "proc" | "sysfs") {
            if let Ok(meta) = fs::symlink_metadata(&target) {
                if !meta.is_dir() {
                    return Err(format!(
                        "{}: filesystem {kind:?} must be mounted on ordinary directory",
                        what()
                    ));
                }
            }
        }
        // runc: a tmpfs without `mode=` keeps the mode of the directory
        // it covers (the kernel would give it 1777).
        let keep_mode = (kind == "tmpfs" && !opts.data.split(',').any(|o| o.starts_with("mode=")))
            .then(|| fs::metadata(&target).ok())
            .flatten()
            .filter(fs::Metadata::is_dir)
            .map(|m| m.permissions().mode() & 0o7777);
        create_mount_point(&target, false)?;
        let fstype = if kind == "cgroup" { "cgroup2" } else { kind };
        let source = m.source.as_deref().unwrap_or(fstype);
        let data = (fstype != "cgroup2").then_some(opts.data.as_str());
        ffi::mount(
            Some(Path::new(source)),
            &target,
            Some(fstype),
            opts.flags & !libc::MS_REMOUNT,
            data,
        )
        .map_err(ctx(what))?;
        if let Some(mode) = keep_mode {
            fs::set_permissions(&target, fs::Permissions::from_mode(mode))
                .map_err(ctx(|| format!("{}: keeping mode {mode:o}", what())))?;
        }
    }
    if opts.propagation != 0 {
        ffi::mount(None, &target, None, opts.propagation, None)
            .map_err(ctx(|| format!("{} (propagation)", what())))?;
    }
    Ok(())
}

/// The device nodes every container gets: made with mknod as runc does
/// (the device cgroup's default rules allow it), or where that fails
/// (or `/dev` is nodev) bind-mounted from the agent's /dev, which works
/// without CAP_MKNOD. Either way with the guest's own numbering.
const DEVICES: &[&str] = &["null", "zero", "full", "random", "urandom", "tty"];

/// The device numbers of [`DEVICES`] in the agent's /dev, read once (a
/// VM restored from a template has them): each stat is a path walk in
/// the guest per container otherwise.
fn device_numbers() -> &'static [Option<u64>; 6] {
    static NUMBERS: OnceLock<[Option<u64>; 6]> = OnceLock::new();
    NUMBERS.get_or_init(|| {
        let mut out = [None; 6];
        for (slot, name) in out.iter_mut().zip(DEVICES) {
            *slot = fs::metadata(Path::new("/dev").join(name))
                .ok()
                .filter(|m| m.file_type().is_char_device())
                .map(|m| m.rdev());
        }
        out
    })
}

/// Reads the device numbers now (the agent does it before a template is
/// snapshotted).
pub fn prepare_devices() {
    let _ = device_numbers();
}

fn populate_dev(
    rootfs: &Path,
    console: Option<&str>,
    has_pts: bool,
    has_shm: bool,
    nodes: bool,
) -> Step {
    let dev = rootfs.join("dev");
    // Names are made relative to /dev (no path walk each, nothing in the
    // rootfs followed), with mode 0666 whatever the umask.
    let dir = ffi::open(&dev, libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW)
        .map_err(ctx(|| format!("opening {}", dev.display())))?;
    let umask = ffi::umask(0);
    let made = make_nodes(&dir, &dev, nodes);
    ffi::umask(umask);
    made?;
    if !has_pts {
        let pts = dev.join("pts");
        create_mount_point(&pts, false)?;
        ffi::mount(
            Some(Path::new("devpts")),
            &pts,
            Some("devpts"),
            libc::MS_NOSUID | libc::MS_NOEXEC,
            Some("newinstance,ptmxmode=0666,mode=0620"),
        )
        .map_err(ctx(|| "mount devpts on /dev/pts".into()))?;
    }
    if !has_shm {
        let shm = dev.join("shm");
        create_mount_point(&shm, false)?;
        ffi::mount(
            Some(Path::new("shm")),
            &shm,
            Some("tmpfs"),
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            Some("mode=1777,size=65536k"),
        )
        .map_err(ctx(|| "mount tmpfs on /dev/shm".into()))?;
    }
    for (link, to) in [
        (c"ptmx", c"pts/ptmx"),
        (c"fd", c"/proc/self/fd"),
        (c"stdin", c"/proc/self/fd/0"),
        (c"stdout", c"/proc/self/fd/1"),
        (c"stderr", c"/proc/self/fd/2"),
    ] {
        match ffi::symlinkat(to, dir.as_fd(), link) {
            Err(e) if e.raw_os_error() != Some(libc::EEXIST) => {
                return Err(format!("creating /dev/{}: {e}", link.to_string_lossy()))
            }
            _ => {}
        }
    }
    if let Some(console) = console {
        let target = dev.join("console");
        create_mount_point(&target, true)?;
        ffi::mount(Some(Path::new(console)), &target, None, libc::MS_BIND, None)
            .map_err(ctx(|| "bind-mounting the terminal on /dev/console".into()))?;
    }
    Ok(())
}

/// The nodes of [`DEVICES`] in `dir` (`dev`), with the umask cleared.
fn make_nodes(dir: &OwnedFd, dev: &Path, nodes: bool) -> Step {
    for (name, rdev) in DEVICES.iter().zip(device_numbers()) {
        let Some(rdev) = *rdev else {
            continue;
        };
        let c_name = ffi::cstr(name).map_err(|e| format!("/dev/{name}: {e}"))?;
        if nodes {
            match ffi::mknodat_char(dir.as_fd(), &c_name, 0o666, rdev) {
                Ok(()) => continue,
                // runc leaves what the image has.
                Err(e) if e.raw_os_error() == Some(libc::EEXIST) => continue,
                Err(_) => {}
            }
        }
        // A bind mount makes a new mount per device: in an emulated guest
        // kernel that is most of a container's /dev (tens of ms each).
        let target = dev.join(name);
        create_mount_point(&target, true)?;
        let source = Path::new("/dev").join(name);
        ffi::mount(Some(&source), &target, None, libc::MS_BIND, None)
            .map_err(ctx(|| format!("bind-mounting /dev/{name}")))?;
    }
    Ok(())
}

/// Makes `rootfs` the root: pivot_root, or on an initramfs root (where
/// pivot_root is refused with EINVAL) MS_MOVE + chroot.
pub fn switch_root(rootfs: &Path) -> Step {
    std::env::set_current_dir(rootfs).map_err(ctx(|| format!("chdir {}", rootfs.display())))?;
    match ffi::pivot_root(Path::new("."), Path::new(".")) {
        Ok(()) => {
            // The old root is now stacked on "."; detach it.
            ffi::mount(
                None,
                Path::new("."),
                None,
                libc::MS_SLAVE | libc::MS_REC,
                None,
            )
            .map_err(ctx(|| "making the old root a slave".into()))?;
            ffi::umount(Path::new("."), libc::MNT_DETACH)
                .map_err(ctx(|| "detaching the old root".into()))?;
        }
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            ffi::mount(Some(rootfs), Path::new("/"), None, libc::MS_MOVE, None)
                .map_err(ctx(|| "moving the rootfs to / (no pivot_root)".into()))?;
            ffi::chroot(Path::new(".")).map_err(ctx(|| "chroot".into()))?;
        }
        Err(e) => return Err(format!("pivot_root {}: {e}", rootfs.display())),
    }
    std::env::set_current_dir("/").map_err(ctx(|| "chdir /".into()))
}

/// After the switch: sysctls, masked and read-only paths, a read-only
/// rootfs, the host name.
pub fn finish_rootfs(spec: &Spec) -> Step {
    let linux = spec.linux.clone().unwrap_or_default();
    if let Some(name) = spec.hostname.as_deref().filter(|n| !n.is_empty()) {
        if spec.namespace("uts").is_some() {
            ffi::set_hostname(name).map_err(ctx(|| format!("sethostname {name:?}")))?;
        }
    }
    for (key, value) in &linux.sysctl {
        let path = Path::new("/proc/sys").join(key.replace('.', "/"));
        fs::write(&path, value).map_err(ctx(|| format!("sysctl {key}={value}")))?;
    }
    for path in &linux.masked_paths {
        let p = Path::new(path);
        let Ok(meta) = fs::metadata(p) else {
            continue;
        };
        let result = if meta.is_dir() {
            ffi::mount(
                Some(Path::new("tmpfs")),
                p,
                Some("tmpfs"),
                libc::MS_RDONLY,
                None,
            )
        } else {
            ffi::mount(Some(Path::new("/dev/null")), p, None, libc::MS_BIND, None)
        };
        result.map_err(ctx(|| format!("masking {path}")))?;
    }
    for path in &linux.readonly_paths {
        let p = Path::new(path);
        if !p.exists() {
            continue;
        }
        ffi::mount(Some(p), p, None, libc::MS_BIND | libc::MS_REC, None)
            .map_err(ctx(|| format!("bind-mounting read-only path {path}")))?;
        ffi::mount(None, p, None, READONLY_REMOUNT, None)
            .map_err(ctx(|| format!("making {path} read-only")))?;
    }
    if spec.root.as_ref().is_some_and(|r| r.readonly) {
        ffi::mount(
            None,
            Path::new("/"),
            None,
            libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY,
            None,
        )
        .map_err(ctx(|| "remounting the rootfs read-only".into()))?;
    }
    Ok(())
}

/// Applies the process's limits, user, capabilities and working
/// directory (in this order: rlimits and the bounding set need the
/// privileges the user switch drops).
///
/// The seccomp filters go last, right before execve, when the process has
/// no_new_privileges; otherwise before the user switch, while the process
/// still has CAP_SYS_ADMIN (which installing a filter then needs).
pub fn apply_process(p: &Process, seccomp: &[BpfProgram]) -> Step {
    for r in &p.rlimits {
        let resource =
            caps::rlimit_resource(&r.kind).ok_or_else(|| format!("rlimit {}", r.kind))?;
        ffi::setrlimit(resource, r.soft, r.hard)
            .map_err(ctx(|| format!("setrlimit {}", r.kind)))?;
    }
    if let Some(c) = &p.capabilities {
        let bounding = caps::mask(&c.bounding);
        for cap in 0..=caps::LAST_CAP {
            if bounding & (1 << cap) == 0 {
                match ffi::prctl(libc::PR_CAPBSET_DROP, libc::c_ulong::from(cap), 0) {
                    Ok(()) => {}
                    // A capability this kernel does not have.
                    Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {}
                    Err(e) => {
                        return Err(format!(
                            "dropping capability {cap} from the bounding set: {e}"
                        ))
                    }
                }
            }
        }
        ffi::prctl(libc::PR_SET_KEEPCAPS, 1, 0).map_err(ctx(|| "PR_SET_KEEPCAPS".into()))?;
    }
    if !p.no_new_privileges {
        super::seccomp::install(seccomp)?;
    }
    // As runc: chdir while the process still has its privileges (a user
    // may not be able to enter the directory with its capabilities
    // dropped); if root may not enter it (EACCES on a root-squashed
    // share), try again as the user.
    let cwd = process_cwd(p);
    let chdir_later = match chdir(cwd) {
        Ok(()) => false,
        Err(e) if matches!(e.raw_os_error(), Some(libc::EACCES | libc::EPERM)) => true,
        Err(e) => return Err(chdir_error(cwd, &e)),
    };
    let u = &p.user;
    ffi::set_ids(u.uid, u.gid, &u.additional_gids)
        .map_err(ctx(|| format!("switching to uid {} gid {}", u.uid, u.gid)))?;
    if let Some(c) = &p.capabilities {
        ffi::capset(
            caps::mask(&c.effective),
            caps::mask(&c.permitted),
            caps::mask(&c.inheritable),
        )
        .map_err(ctx(|| "capset".into()))?;
        let clear = libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong;
        ffi::prctl(libc::PR_CAP_AMBIENT, clear, 0)
            .map_err(ctx(|| "clearing ambient capabilities".into()))?;
        // The kernel raises an ambient capability only if it is both
        // permitted and inheritable; specs often list ambient capabilities
        // without inheritable ones (`runc spec`, `crun spec`), and runc
        // skips those rather than failing, so do we.
        let raisable = caps::mask(&c.permitted) & caps::mask(&c.inheritable);
        for name in &c.ambient {
            if let Some(cap) = caps::cap_number(name).filter(|&n| raisable & (1u64 << n) != 0) {
                let raise = libc::PR_CAP_AMBIENT_RAISE as libc::c_ulong;
                ffi::prctl(libc::PR_CAP_AMBIENT, raise, libc::c_ulong::from(cap))
                    .map_err(ctx(|| format!("raising ambient {name}")))?;
            }
        }
    }
    if p.no_new_privileges {
        ffi::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0)
            .map_err(ctx(|| "PR_SET_NO_NEW_PRIVS".into()))?;
    }
    ffi::umask(u.umask.unwrap_or(0o022));
    if chdir_later {
        chdir(cwd).map_err(|e| chdir_error(cwd, &e))?;
    }
    if p.no_new_privileges {
        super::seccomp::install(seccomp)?;
    }
    Ok(())
}

/// The process's working directory (`/` when the spec gives none).
fn process_cwd(p: &Process) -> &str {
    if p.cwd.is_empty() {
        "/"
    } else {
        p.cwd.as_str()
    }
}

fn chdir(dir: &str) -> io::Result<()> {
    std::env::set_current_dir(dir)
}

/// runc's words.
fn chdir_error(cwd: &str, e: &io::Error) -> String {
    format!("chdir to cwd ({cwd:?}) set in config.json failed: {e}")
}

/// Creates the init process's working directory when it is missing, as
/// runc does (as root, mode 0755; an exec's cwd is not created). Runs
/// after the switch to the container's root, before it is made read-only.
pub fn create_cwd(p: &Process) -> Step {
    let cwd = process_cwd(p);
    if Path::new(cwd).is_dir() {
        return Ok(());
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(cwd)
        .map_err(ctx(|| format!("creating cwd {cwd:?}")))
}

/// The environment the process gets: its own, with `HOME` from the
/// container's /etc/passwd when missing or empty (runc). Call it in the
/// container's root, before the user switch.
pub fn process_env(p: &Process) -> Vec<String> {
    let passwd = fs::read_to_string("/etc/passwd").ok();
    super::home::with_home(&p.env, passwd.as_deref(), p.user.uid)
}

/// The default PATH for looking up a command when the process has none.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// `args[0]` looked up in the PATH of `env` (as execvp would).
pub fn find_executable(command: &str, env: &[String]) -> Step<PathBuf> {
    if command.contains('/') {
        return Ok(PathBuf::from(command));
    }
    let path = env
        .iter()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or(DEFAULT_PATH);
    for dir in path.split(':').filter(|d| !d.is_empty()) {
        let candidate = Path::new(dir).join(command);
        if let Ok(meta) = fs::metadata(&candidate) {
            if meta.is_file() && meta.permissions().mode() & 0o111 != 0 {
                return Ok(candidate);
            }
        }
    }
    // runc's (Go's exec.LookPath's) words.
    Err(format!(
        "exec: {command:?}: executable file not found in $PATH"
    ))
}

/// execve of the process with `env` (see [`process_env`]); returns the
/// error message on failure. What execve needs is built into `slot`
/// first: in a child sharing the agent's memory the agent frees it.
pub fn exec(p: &Process, env: &[String], slot: &OnceLock<ffi::ExecArgs>) -> String {
    let Some(command) = p.args.first() else {
        return "no command (process.args is empty)".into();
    };
    let path = match find_executable(command, env) {
        Ok(path) => path,
        Err(e) => return e,
    };
    let to_c = |v: &[String]| -> Result<Vec<CString>, String> {
        v.iter()
            .map(|s| ffi::cstr(s).map_err(|_| format!("NUL byte in {s:?}")))
            .collect()
    };
    let (args, env, c_path) = match (
        to_c(&p.args),
        to_c(env),
        ffi::cstr(path.as_os_str().as_encoded_bytes()),
    ) {
        (Ok(a), Ok(e), Ok(c)) => (a, e, c),
        (Err(e), _, _) | (_, Err(e), _) => return e,
        (_, _, Err(e)) => return format!("exec path: {e}"),
    };
    drop(path);
    let exec = slot.get_or_init(|| ffi::ExecArgs::new(c_path, args, env));
    let err = exec.execve();
    format!("exec: {:?}: {err}", exec.path().to_string_lossy())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destinations_stay_in_the_rootfs() {
        let root = Path::new("/r");
        assert_eq!(in_rootfs(root, "/proc").unwrap(), Path::new("/r/proc"));
        assert_eq!(in_rootfs(root, "/a/./b/").unwrap(), Path::new("/r/a/b"));
        assert!(in_rootfs(root, "/../etc").unwrap_err().contains("leaves"));
    }

    #[test]
    fn finds_executables_in_path() {
        let env = vec!["PATH=/nonexistent:/bin:/usr/bin".to_owned()];
        let sh = find_executable("sh", &env).unwrap();
        assert!(sh.ends_with("sh"));
        assert_eq!(
            find_executable("/x/y", &env).unwrap(),
            PathBuf::from("/x/y")
        );
        assert!(find_executable("no-such-command-here", &env)
            .unwrap_err()
            .contains("executable file not found in $PATH"));
    }
}
