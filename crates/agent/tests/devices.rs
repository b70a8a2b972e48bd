//! Root tier: the device program on the host's cgroup v2 hierarchy. A
//! forked child moves itself into a cgroup carrying the program for
//! containerd's default rules and reports what it could open and create.
//!
//! Needs root and a cgroup v2 hierarchy with cgroup BPF. Without them the
//! test fails under CI / `NACRE_REQUIRE_VM=1` and says it skipped
//! elsewhere.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

use std::ffi::CString;
use std::fs::File;
use std::io::Read;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nacre_agent::container::devices::{
    enforced_rules, DeviceFilter, DeviceType, Rule, ACC_ALL, ACC_WRITE,
};
use nacre_runtime::testing::vm_tests_required;

/// The cgroup v2 hierarchy of this host.
fn cgroup_root() -> PathBuf {
    let plain = Path::new("/sys/fs/cgroup");
    if plain.join("cgroup.controllers").exists() {
        plain.to_path_buf()
    } else {
        plain.join("unified")
    }
}

fn prereqs(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    let why = if unsafe { libc::geteuid() } != 0 {
        Some("not root".to_owned())
    } else if !cgroup_root().join("cgroup.controllers").exists() {
        Some(format!(
            "no cgroup v2 hierarchy at {}",
            cgroup_root().display()
        ))
    } else {
        None
    };
    match why {
        None => true,
        Some(why) if vm_tests_required() => {
            panic!("root test {test} cannot run: {why} (required under CI / make test)")
        }
        Some(why) => {
            eprintln!(
                "SKIPPED root test {test}: {why} (set NACRE_REQUIRE_VM=1 to make this fatal)"
            );
            false
        }
    }
}

/// A cgroup and a scratch directory, removed on drop.
struct Scratch {
    cgroup: PathBuf,
    dir: PathBuf,
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.cgroup);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// What the child tries, in order.
enum Op {
    Mknod(CString, u32, u32),
    Open(CString, libc::c_int),
}

fn c_path(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap()
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(-1)
}

/// Forks a child that joins `cgroup` and runs `ops`; the errno of each (0
/// for success), after the errno of joining the cgroup.
fn in_cgroup(cgroup: &Path, ops: &[Op]) -> Vec<i32> {
    const MAX: usize = 8;
    assert!(ops.len() < MAX);
    let procs = c_path(&cgroup.join("cgroup.procs"));
    let mut fds = [0; 2];
    // SAFETY: fds has room for the two descriptors.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: the child makes only system calls on memory prepared
    // before the fork, then _exits.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
    if pid == 0 {
        let mut out = [0i32; MAX];
        // SAFETY: plain system calls on NUL-terminated paths and local
        // buffers; nothing allocates.
        unsafe {
            let fd = libc::open(procs.as_ptr(), libc::O_WRONLY);
            out[0] = if fd < 0 || libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                errno()
            } else {
                0
            };
            for (i, op) in ops.iter().enumerate() {
                let r = match op {
                    Op::Mknod(path, major, minor) => libc::mknod(
                        path.as_ptr(),
                        libc::S_IFCHR | 0o600,
                        libc::makedev(*major, *minor),
                    ),
                    Op::Open(path, flags) => {
                        let fd =
                            libc::open(path.as_ptr(), *flags | libc::O_NOCTTY | libc::O_NONBLOCK);
                        if fd >= 0 {
                            libc::close(fd);
                        }
                        fd.min(0)
                    }
                };
                out[i + 1] = if r < 0 { errno() } else { 0 };
            }
            libc::write(fds[1], out.as_ptr().cast(), std::mem::size_of_val(&out));
            libc::_exit(0);
        }
    }
    // SAFETY: the pipe's descriptors are ours alone.
    let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    drop(write);
    let mut bytes = Vec::new();
    File::from(read).read_to_end(&mut bytes).unwrap();
    let mut status = 0;
    // SAFETY: pid is our child; status is a valid out pointer.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "child status {status:#x}"
    );
    let out: Vec<i32> = bytes
        .chunks_exact(4)
        .map(|b| i32::from_ne_bytes(b.try_into().unwrap()))
        .collect();
    assert_eq!(out.len(), MAX, "the child's report");
    assert_eq!(out[0], 0, "joining {}: errno {}", cgroup.display(), out[0]);
    out[1..=ops.len()].to_vec()
}

#[test]
fn the_device_program_confines_a_cgroup() {
    if !prereqs("the_device_program_confines_a_cgroup") {
        return;
    }
    let pid = std::process::id();
    let scratch = Scratch {
        cgroup: cgroup_root().join(format!("nacre-devices-test-{pid}")),
        dir: std::env::temp_dir().join(format!("nacre-devices-test-{pid}")),
    };
    std::fs::create_dir(&scratch.cgroup).unwrap();
    std::fs::create_dir(&scratch.dir).unwrap();

    // containerd's default: deny everything, then runc's defaults.
    let deny_all = Rule {
        allow: false,
        ..Rule::allow(DeviceType::All, None, None, ACC_ALL)
    };
    let mut filter = DeviceFilter::attach(&scratch.cgroup, &[deny_all], Vec::new())
        .unwrap_or_else(|e| panic!("{e}"));
    eprintln!("default rule set: {} instructions", filter.len());
    assert_eq!(filter.len(), enforced_len());

    let tty = c_path(&scratch.dir.join("ttyS0"));
    // Major 42 is for "demo/sample use": no driver, so a node of it that
    // the program lets through fails to open with ENXIO instead.
    let demo = c_path(&scratch.dir.join("demo"));
    let got = in_cgroup(
        &scratch.cgroup,
        &[
            Op::Open(c"/dev/null".into(), libc::O_RDWR),
            Op::Mknod(tty.clone(), 4, 64),
            Op::Open(tty.clone(), libc::O_WRONLY),
            Op::Open(tty.clone(), libc::O_RDONLY),
            Op::Mknod(demo.clone(), 42, 0),
            Op::Open(demo.clone(), libc::O_RDONLY),
        ],
    );
    eprintln!("default rules: errnos {got:?}");
    assert_eq!(
        got,
        [0, 0, libc::EPERM, libc::EPERM, 0, libc::EPERM],
        "open /dev/null rw, mknod 4:64, open it w, r, mknod 42:0, open it r"
    );

    // UpdateContainer with a privileged rule set that denies writing to
    // major 42 (a deny block in the kernel's verifier): the program is
    // replaced.
    let deny_write = Rule {
        allow: false,
        ..Rule::allow(DeviceType::Char, Some(42), None, ACC_WRITE)
    };
    filter
        .replace(
            &scratch.cgroup,
            &[
                Rule::allow(DeviceType::All, None, None, ACC_ALL),
                deny_write,
            ],
        )
        .unwrap_or_else(|e| panic!("{e}"));
    let got = in_cgroup(
        &scratch.cgroup,
        &[
            Op::Open(demo.clone(), libc::O_RDONLY),
            Op::Open(demo, libc::O_RDWR),
            Op::Open(c"/dev/null".into(), libc::O_RDWR),
        ],
    );
    assert_eq!(
        got,
        [libc::ENXIO, libc::EPERM, 0],
        "after the update: open 42:0 r (no driver), rw, /dev/null rw"
    );
    drop(filter);
}

/// The program's length for containerd's default rules.
fn enforced_len() -> usize {
    let deny_all = Rule {
        allow: false,
        ..Rule::allow(DeviceType::All, None, None, ACC_ALL)
    };
    nacre_agent::container::devices::compile(&enforced_rules(&[deny_all], &[])).len()
}

#[test]
fn one_loaded_program_confines_every_cgroup_with_the_same_rules() {
    if !prereqs("one_loaded_program_confines_every_cgroup_with_the_same_rules") {
        return;
    }
    let pid = std::process::id();
    let scratch: Vec<Scratch> = (0..2)
        .map(|i| Scratch {
            cgroup: cgroup_root().join(format!("nacre-devices-shared-{pid}-{i}")),
            dir: std::env::temp_dir().join(format!("nacre-devices-shared-{pid}-{i}")),
        })
        .collect();
    for s in &scratch {
        std::fs::create_dir(&s.cgroup).unwrap();
        std::fs::create_dir(&s.dir).unwrap();
    }
    // The agent loads this program before a template is snapshotted.
    let deny_all = Rule {
        allow: false,
        ..Rule::allow(DeviceType::All, None, None, ACC_ALL)
    };
    nacre_agent::container::devices::preload(&[deny_all], &[]).unwrap_or_else(|e| panic!("{e}"));
    let loaded = nacre_agent::container::devices::loaded_programs();
    let filters: Vec<DeviceFilter> = scratch
        .iter()
        .map(|s| {
            DeviceFilter::attach(&s.cgroup, &[deny_all], Vec::new())
                .unwrap_or_else(|e| panic!("{e}"))
        })
        .collect();
    assert_eq!(
        nacre_agent::container::devices::loaded_programs(),
        loaded,
        "the same rules load no second program"
    );
    // Each cgroup is confined by the shared program.
    for s in &scratch {
        let tty = c_path(&s.dir.join("ttyS0"));
        let got = in_cgroup(
            &s.cgroup,
            &[
                Op::Open(c"/dev/null".into(), libc::O_RDWR),
                Op::Mknod(tty.clone(), 4, 64),
                Op::Open(tty, libc::O_RDONLY),
            ],
        );
        assert_eq!(got, [0, 0, libc::EPERM], "in {}", s.cgroup.display());
    }
    drop(filters);
}
