//! The `bpf` system call, for the two commands device control needs:
//! `BPF_PROG_LOAD` of a `BPF_PROG_TYPE_CGROUP_DEVICE` program and
//! `BPF_PROG_ATTACH` of it to a cgroup directory.
//!
//! The attribute structs are the leading parts of the kernel's
//! `union bpf_attr` for each command; the kernel reads `size` bytes and
//! treats the rest as zero.

use std::fs::File;
use std::io;
use std::mem;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use super::Insn;

/// `BPF_PROG_LOAD`.
const BPF_PROG_LOAD: libc::c_int = 5;
/// `BPF_PROG_ATTACH`.
const BPF_PROG_ATTACH: libc::c_int = 8;
/// `BPF_PROG_TYPE_CGROUP_DEVICE`.
const BPF_PROG_TYPE_CGROUP_DEVICE: u32 = 15;
/// `BPF_CGROUP_DEVICE`, the attach type.
const BPF_CGROUP_DEVICE: u32 = 6;
/// `BPF_F_ALLOW_MULTI`: other programs (of this cgroup and its parents)
/// keep running; every one must allow.
const BPF_F_ALLOW_MULTI: u32 = 1 << 1;
/// `BPF_F_REPLACE`: swap the program named by `replace_bpf_fd`.
const BPF_F_REPLACE: u32 = 1 << 2;

/// The license the kernel records (no GPL-only helpers are called).
const LICENSE: &[u8] = b"Apache\0";
/// The program's name (bpftool shows it), at most 15 bytes.
const NAME: &[u8] = b"nacre_devices";
/// The verifier log's size, used only to explain a failed load.
const LOG_SIZE: usize = 16 * 1024;
/// How much of the log's end goes into an error (the verdict is last).
const LOG_TAIL: usize = 1024;

/// `union bpf_attr` for `BPF_PROG_LOAD`, up to `expected_attach_type`.
#[repr(C)]
#[derive(Debug, Default)]
struct ProgLoadAttr {
    /// `prog_type`: `BPF_PROG_TYPE_*`.
    prog_type: u32,
    /// `insn_cnt`: the number of instructions.
    insn_cnt: u32,
    /// `insns`: the address of the `struct bpf_insn` array.
    insns: u64,
    /// `license`: the address of a NUL-terminated license string.
    license: u64,
    /// `log_level`: 0 for no verifier log, 1 for the verifier's trace.
    log_level: u32,
    /// `log_size`: the log buffer's size in bytes.
    log_size: u32,
    /// `log_buf`: the address of the log buffer (the kernel writes it).
    log_buf: u64,
    /// `kern_version`: only for kprobe programs; 0.
    kern_version: u32,
    /// `prog_flags`: `BPF_F_*` load flags; none.
    prog_flags: u32,
    /// `prog_name`: a NUL-padded name.
    prog_name: [u8; 16],
    /// `prog_ifindex`: for device offload; 0.
    prog_ifindex: u32,
    /// `expected_attach_type`: `BPF_CGROUP_DEVICE`.
    expected_attach_type: u32,
}

/// `union bpf_attr` for `BPF_PROG_ATTACH`, up to `replace_bpf_fd`.
#[repr(C)]
#[derive(Debug, Default)]
struct ProgAttachAttr {
    /// `target_fd`: the cgroup directory's descriptor.
    target_fd: u32,
    /// `attach_bpf_fd`: the program's descriptor.
    attach_bpf_fd: u32,
    /// `attach_type`: `BPF_CGROUP_DEVICE`.
    attach_type: u32,
    /// `attach_flags`: `BPF_F_ALLOW_MULTI`, plus `BPF_F_REPLACE`.
    attach_flags: u32,
    /// `replace_bpf_fd`: with `BPF_F_REPLACE`, the program to replace.
    replace_bpf_fd: u32,
}

/// Device control could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// `BPF_PROG_LOAD` failed.
    #[error("loading the device cgroup program ({insns} instructions): {source}{}", hint(.source, .log))]
    Load {
        /// The program's length.
        insns: usize,
        /// The system error.
        #[source]
        source: io::Error,
        /// The end of the verifier's log (may be empty).
        log: String,
    },
    /// The cgroup directory could not be opened.
    #[error("opening the cgroup {path}: {source}")]
    Cgroup {
        /// The directory.
        path: String,
        /// The system error.
        #[source]
        source: io::Error,
    },
    /// `BPF_PROG_ATTACH` failed.
    #[error("{} the device cgroup program of {path}: {source}", if *.replace { "replacing" } else { "attaching" })]
    Attach {
        /// The cgroup directory.
        path: String,
        /// Whether an attached program was being replaced.
        replace: bool,
        /// The system error.
        #[source]
        source: io::Error,
    },
}

/// What a failed load most likely means.
fn hint(e: &io::Error, log: &str) -> String {
    if !log.is_empty() {
        return format!("; verifier: {log}");
    }
    match e.raw_os_error() {
        Some(libc::ENOSYS) => " (the kernel lacks CONFIG_BPF_SYSCALL)".into(),
        Some(libc::EINVAL) => " (the kernel may lack CONFIG_CGROUP_BPF)".into(),
        Some(libc::EPERM) => " (needs CAP_SYS_ADMIN or CAP_BPF)".into(),
        _ => String::new(),
    }
}

/// Calls `bpf(cmd, attr, sizeof *attr)`.
///
/// # Safety
/// `attr` must be the attribute struct of `cmd`, and every address in it
/// must point to memory valid for the access the kernel makes (reads of
/// the instructions and license, writes of the log buffer) for the call.
unsafe fn sys_bpf<T>(cmd: libc::c_int, attr: &T) -> io::Result<libc::c_long> {
    let size = libc::c_uint::try_from(mem::size_of::<T>())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: the caller vouches for the struct and its addresses; the
    // kernel reads `size` bytes of `attr`, which is that large.
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, std::ptr::from_ref(attr), size) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// One `BPF_PROG_LOAD`, with the verifier's log in `log` if given.
fn prog_load(insns: &[Insn], log: Option<&mut [u8]>) -> io::Result<OwnedFd> {
    let mut attr = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_CGROUP_DEVICE,
        insn_cnt: u32::try_from(insns.len())
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?,
        insns: insns.as_ptr() as u64,
        license: LICENSE.as_ptr() as u64,
        expected_attach_type: BPF_CGROUP_DEVICE,
        ..ProgLoadAttr::default()
    };
    attr.prog_name[..NAME.len()].copy_from_slice(NAME);
    if let Some(buf) = log {
        attr.log_level = 1;
        attr.log_size = u32::try_from(buf.len()).unwrap_or(u32::MAX);
        attr.log_buf = buf.as_mut_ptr() as u64;
    }
    // SAFETY: a BPF_PROG_LOAD attribute; `insns` (Insn is laid out as
    // struct bpf_insn), the NUL-terminated license and the log buffer
    // (`log_size` bytes, borrowed mutably) all outlive the call.
    let fd = unsafe { sys_bpf(BPF_PROG_LOAD, &attr) }?;
    let fd = RawFd::try_from(fd).map_err(|_| io::Error::from(io::ErrorKind::InvalidData))?;
    // SAFETY: the kernel returned a new descriptor (close-on-exec) that
    // nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The end of a verifier log, as text.
fn log_text(buf: &[u8]) -> String {
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    let text = String::from_utf8_lossy(&buf[..end]);
    let text = text.trim();
    let mut start = text.len().saturating_sub(LOG_TAIL);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    text[start..].replace('\n', " | ")
}

/// Loads a device program. A failure is retried once with the verifier's
/// log (which costs time and memory, hence not the first time), and the
/// log's end goes into the error.
pub fn load(insns: &[Insn]) -> Result<OwnedFd, DeviceError> {
    let first = match prog_load(insns, None) {
        Ok(fd) => return Ok(fd),
        Err(e) => e,
    };
    let mut log = vec![0u8; LOG_SIZE];
    // The retry's own error is the same or ENOSPC (a log too small).
    let _ = prog_load(insns, Some(&mut log));
    Err(DeviceError::Load {
        insns: insns.len(),
        source: first,
        log: log_text(&log),
    })
}

/// Attaches `prog` to the cgroup directory `cgroup` (allowing other
/// programs), replacing `old` if given.
pub fn attach(cgroup: &Path, prog: &OwnedFd, old: Option<&OwnedFd>) -> Result<(), DeviceError> {
    let path = || cgroup.display().to_string();
    let dir = File::options()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
        .open(cgroup)
        .map_err(|source| DeviceError::Cgroup {
            path: path(),
            source,
        })?;
    let fd = |f: RawFd| u32::try_from(f).unwrap_or(u32::MAX);
    let mut attr = ProgAttachAttr {
        target_fd: fd(dir.as_raw_fd()),
        attach_bpf_fd: fd(prog.as_raw_fd()),
        attach_type: BPF_CGROUP_DEVICE,
        attach_flags: BPF_F_ALLOW_MULTI,
        replace_bpf_fd: 0,
    };
    if let Some(old) = old {
        attr.attach_flags |= BPF_F_REPLACE;
        attr.replace_bpf_fd = fd(old.as_raw_fd());
    }
    // SAFETY: a BPF_PROG_ATTACH attribute without addresses; the
    // descriptors in it stay open for the call.
    unsafe { sys_bpf(BPF_PROG_ATTACH, &attr) }.map_err(|source| DeviceError::Attach {
        path: path(),
        replace: old.is_some(),
        source,
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attribute_layouts_match_the_kernel() {
        assert_eq!(mem::size_of::<ProgLoadAttr>(), 72);
        assert_eq!(mem::offset_of!(ProgLoadAttr, log_buf), 32);
        assert_eq!(mem::offset_of!(ProgLoadAttr, prog_name), 48);
        assert_eq!(mem::offset_of!(ProgLoadAttr, expected_attach_type), 68);
        assert_eq!(mem::size_of::<ProgAttachAttr>(), 20);
        assert_eq!(mem::size_of::<Insn>(), 8);
        assert!(NAME.len() < 16);
    }

    #[test]
    fn keeps_the_end_of_the_log() {
        let mut buf = vec![b'x'; 3000];
        buf.extend(b"\nR0 !read_ok\n\0garbage");
        let text = log_text(&buf);
        assert!(text.ends_with("| R0 !read_ok"), "{text}");
        assert!(text.len() <= LOG_TAIL + 4);
    }
}
