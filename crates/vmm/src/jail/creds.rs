//! rlimits, process flags and the credential drop of the jail.
//!
//! With a virtio-fs share the VMM stays uid 0 (the passthrough acts as
//! the guest's caller: it switches its thread's uid/gid per request and
//! creates files owned by guest users) but keeps only [`SHARE_CAPS`]:
//! - CAP_CHOWN: set the owner of files the guest creates (`chown`, and
//!   the owner of `mknod`/`mkdir`/`create` results) to the guest user;
//! - CAP_DAC_OVERRIDE: guest root reads and writes files of any mode;
//! - CAP_FOWNER: guest root changes modes, times and xattrs of files it
//!   does not own (`chmod`, `utimensat`, `setxattr`);
//! - CAP_FSETID: keep setgid/setuid bits on `chmod`/`write` the way the
//!   guest's kernel already decided (killpriv is the guest's job);
//! - CAP_SETUID, CAP_SETGID: `setresuid`/`setresgid` to the guest caller
//!   per request (fuse-backend-rs `ScopedUid`/`ScopedGid`).
//!
//! Not CAP_MKNOD (the fs layer refuses device nodes), not
//! CAP_DAC_READ_SEARCH (no `open_by_handle_at`), not CAP_SYS_ADMIN, not
//! CAP_KILL/CAP_SYS_PTRACE/CAP_NET_*. The bounding and ambient sets are
//! emptied. Without a share it becomes an unprivileged uid/gid with no
//! capability at all (`/dev/kvm` was opened before; inherited tap
//! descriptors need none). A tap opened by name (`--net tap=NAME`, a
//! development mode; the runtime passes descriptors) keeps
//! CAP_NET_ADMIN.

use super::{check, JailError, JailSpec};

/// The uid of an unprivileged jailed VMM (`--jail-uid`): "nobody".
pub const DEFAULT_UID: libc::uid_t = nacre_vmm_api::args::DEFAULT_JAIL_UID;
/// The gid of an unprivileged jailed VMM (`--jail-gid`): "nogroup".
pub const DEFAULT_GID: libc::gid_t = nacre_vmm_api::args::DEFAULT_JAIL_GID;

/// The capabilities a VMM serving a virtio-fs share keeps.
pub const SHARE_CAPS: &[u32] = &[
    CAP_CHOWN,
    CAP_DAC_OVERRIDE,
    CAP_FOWNER,
    CAP_FSETID,
    CAP_SETGID,
    CAP_SETUID,
];

const CAP_CHOWN: u32 = 0;
const CAP_DAC_OVERRIDE: u32 = 1;
const CAP_FOWNER: u32 = 3;
const CAP_FSETID: u32 = 4;
const CAP_SETGID: u32 = 6;
const CAP_SETUID: u32 = 7;
const CAP_NET_ADMIN: u32 = 12;
/// CAP_LAST_CAP of current kernels is 40; drop a margin beyond.
const CAP_DROP_LIMIT: u32 = 64;

/// Open descriptors with a share: fuse-backend-rs keeps one per inode the
/// guest has looked up.
const NOFILE_SHARE: libc::rlim_t = 1 << 20;
/// Open descriptors without a share: KVM, eventfds, sockets, vsock
/// connections (bounded by the muxer).
const NOFILE_PLAIN: libc::rlim_t = 4096;
/// Processes of the jail uid (threads count): vCPUs (at most 32), device
/// workers, API connections, with room for other processes of the uid.
const NPROC_UNPRIVILEGED: libc::rlim_t = 4096;

/// The capabilities `spec` keeps.
pub(super) fn kept_caps(spec: &JailSpec) -> Vec<u32> {
    let mut caps = if spec.share {
        SHARE_CAPS.to_vec()
    } else {
        Vec::new()
    };
    if spec.tap_by_name {
        caps.push(CAP_NET_ADMIN);
    }
    caps
}

fn setrlimit(resource: libc::__rlimit_resource_t, value: libc::rlim_t) -> Result<(), JailError> {
    let lim = libc::rlimit {
        rlim_cur: value,
        rlim_max: value,
    };
    // SAFETY: setrlimit reads the struct passed.
    check(unsafe { libc::setrlimit(resource, &lim) }, "setrlimit")
}

fn prctl(option: libc::c_int, arg: libc::c_ulong, what: &'static str) -> Result<(), JailError> {
    // SAFETY: prctl with integer arguments only.
    check(unsafe { libc::prctl(option, arg, 0, 0, 0) }, what)
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// Sets the effective and permitted sets to `caps`, inheritable to none.
fn capset(caps: &[u32]) -> Result<(), JailError> {
    let mut data = [CapData::default(); 2];
    for &cap in caps {
        let word = &mut data[(cap / 32) as usize];
        word.effective |= 1 << (cap % 32);
        word.permitted |= 1 << (cap % 32);
    }
    let mut header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    // SAFETY: capset reads a version-3 header and two data words.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_capset,
            &mut header as *mut CapHeader,
            data.as_ptr(),
        )
    };
    check(i32::try_from(rc).unwrap_or(-1), "capset")
}

/// Makes the directories the VMM writes (the run directory) the jail
/// uid's, so it can bind its sockets and create its logs there. A
/// world-writable directory (`/tmp`) is left as it is.
fn give_writable_dirs(spec: &JailSpec) -> Result<(), JailError> {
    use std::os::unix::fs::MetadataExt;
    for b in spec
        .binds
        .iter()
        .filter(|b| b.kind == super::BindKind::ReadWrite)
    {
        let path_err = |source| JailError::Path {
            path: b.path.clone(),
            source,
        };
        let meta = std::fs::metadata(&b.path).map_err(path_err)?;
        if meta.mode() & 0o002 != 0 {
            continue;
        }
        std::os::unix::fs::chown(&b.path, Some(spec.uid), Some(spec.gid)).map_err(path_err)?;
    }
    Ok(())
}

/// rlimits, the uid/gid switch (no share), the capability sets, then
/// `PR_SET_NO_NEW_PRIVS` and `PR_SET_DUMPABLE 0` (a uid change resets
/// dumpable, so it comes last).
pub(super) fn drop_privileges(spec: &JailSpec) -> Result<(), JailError> {
    setrlimit(libc::RLIMIT_CORE, 0)?;
    if spec.share {
        // Above fs.nr_open this fails: then the hard limit stays.
        if let Err(e) = setrlimit(libc::RLIMIT_NOFILE, NOFILE_SHARE) {
            tracing::info!("jail: RLIMIT_NOFILE stays below {NOFILE_SHARE}: {e}");
        }
    } else {
        setrlimit(libc::RLIMIT_NOFILE, NOFILE_PLAIN)?;
    }
    // RLIMIT_NPROC counts every process of the real uid on the host:
    // uid 0 owns hundreds, so it is set only for the unprivileged uid.
    if !spec.stays_root() {
        setrlimit(libc::RLIMIT_NPROC, NPROC_UNPRIVILEGED)?;
    }
    // The bounding set is only consulted by execve (which seccomp
    // forbids); emptied anyway, while CAP_SETPCAP is still held.
    for cap in 0..CAP_DROP_LIMIT {
        // SAFETY: prctl with integer arguments; EINVAL past the last cap.
        let rc = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, libc::c_ulong::from(cap), 0, 0, 0) };
        if rc < 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINVAL) {
            return Err(super::sys("PR_CAPBSET_DROP")(
                std::io::Error::last_os_error(),
            ));
        }
    }
    let keep = kept_caps(spec);
    if !spec.stays_root() {
        give_writable_dirs(spec)?;
        // SAFETY: setgroups with an empty list reads nothing.
        check(unsafe { libc::setgroups(0, std::ptr::null()) }, "setgroups")?;
        // SAFETY: integer arguments only.
        let rc = unsafe { libc::setresgid(spec.gid, spec.gid, spec.gid) };
        check(rc, "setresgid")?;
        if !keep.is_empty() {
            prctl(libc::PR_SET_KEEPCAPS, 1, "PR_SET_KEEPCAPS")?;
        }
        // SAFETY: integer arguments only.
        let rc = unsafe { libc::setresuid(spec.uid, spec.uid, spec.uid) };
        check(rc, "setresuid")?;
    }
    capset(&keep)?;
    prctl(
        libc::PR_CAP_AMBIENT,
        libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
        "PR_CAP_AMBIENT_CLEAR_ALL",
    )?;
    prctl(libc::PR_SET_NO_NEW_PRIVS, 1, "PR_SET_NO_NEW_PRIVS")?;
    prctl(libc::PR_SET_DUMPABLE, 0, "PR_SET_DUMPABLE")
}
