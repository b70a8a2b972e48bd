//! Containment (issue 14): what a jailed VMM can still do. Root tier:
//! skipped without root, except under CI / `NACRE_REQUIRE_VM` (then it
//! fails), like `nacre_runtime::testing::root_prereqs`.
//!
//! The first tests fork a child that sets up exactly what `nacre-vmm
//! --jail` does (jail, credentials) plus the main thread's filter, then
//! tries one escape each in a fresh fork and reports it by name. The
//! last tests run the real binary jailed on KVM and read its
//! `/proc/<pid>/status`.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use common::*;
use nacre_vmm::jail::{BindKind, JailSpec};
use nacre_vmm::seccomp::{self, SeccompMode, ThreadKind};

/// Whether this process is root; panics under CI when not.
fn require_root(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    assert!(
        !strict(),
        "root test {test} cannot run: not root (required under CI / make test)"
    );
    eprintln!("SKIPPED root test {test}: not root (set NACRE_REQUIRE_VM=1 to make this fatal)");
    false
}

/// The host side of the test: a scratch tree, a secret outside the jail,
/// a Unix socket outside it, and a host process to attack.
struct Host {
    dir: PathBuf,
    secret: PathBuf,
    socket: PathBuf,
    _listener: UnixListener,
    victim: Child,
}

impl Host {
    fn new(name: &str) -> Self {
        let dir = scratch(name);
        std::fs::create_dir_all(dir.join("run")).unwrap_or_default();
        std::fs::create_dir_all(dir.join("share")).unwrap_or_default();
        std::fs::write(dir.join("kernel"), b"kernel").unwrap_or_default();
        let secret = dir.join("secret");
        std::fs::write(&secret, b"host secret").unwrap_or_default();
        let socket =
            std::env::temp_dir().join(format!("nacre-jail-{name}-{}.sock", std::process::id()));
        let _ = std::fs::remove_file(&socket);
        let listener = UnixListener::bind(&socket).unwrap_or_else(|e| panic!("{e}"));
        let victim = Command::new("sleep")
            .arg("60")
            .spawn()
            .unwrap_or_else(|e| panic!("sleep: {e}"));
        Self {
            dir,
            secret,
            socket,
            _listener: listener,
            victim,
        }
    }

    /// What the VMM would be given by the runtime.
    fn spec(&self, share: bool) -> JailSpec {
        let mut spec = JailSpec::new(self.dir.join("run/jail"));
        spec.bind(&self.dir.join("run"), BindKind::ReadWrite)
            .unwrap_or_default();
        spec.bind(&self.dir.join("kernel"), BindKind::ReadOnly)
            .unwrap_or_default();
        if share {
            spec.bind(&self.dir.join("share"), BindKind::Share)
                .unwrap_or_default();
            spec.share = true;
        }
        spec
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = self.victim.kill();
        let _ = self.victim.wait();
        let _ = std::fs::remove_file(&self.socket);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// How one attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// The call went through: an escape.
    Succeeded,
    /// The call failed with an error.
    Failed,
    /// Seccomp killed the process (SIGSYS).
    Killed,
    /// The jail or filter could not be set up.
    SetupFailed(i32),
}

fn c(path: &Path) -> std::ffi::CString {
    std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap_or_default()
}

/// One escape attempt: returns whether the call succeeded.
type Attempt = fn(&Host) -> bool;

fn read_shadow(_: &Host) -> bool {
    std::fs::read("/etc/shadow").is_ok()
}
fn read_host_file(h: &Host) -> bool {
    std::fs::read(&h.secret).is_ok() || std::fs::read("/etc/passwd").is_ok()
}
fn open_proc_1_mem(_: &Host) -> bool {
    std::fs::OpenOptions::new()
        .write(true)
        .open("/proc/1/mem")
        .is_ok()
}
fn list_host_processes(_: &Host) -> bool {
    std::fs::read_dir("/proc").is_ok_and(|d| {
        d.flatten().any(|e| {
            e.file_name()
                .to_string_lossy()
                .chars()
                .all(|c| c.is_ascii_digit())
        })
    })
}
fn kill_init(_: &Host) -> bool {
    // SAFETY: signal 0 only checks permission.
    unsafe { libc::kill(1, 0) == 0 }
}
fn signal_host_process(h: &Host) -> bool {
    let pid = h.victim.id() as libc::c_long;
    // SAFETY: tgkill with integers; signal 0 only checks permission
    // (SIGCONT would pass within the test's session).
    unsafe { libc::syscall(libc::SYS_tgkill, pid, pid, 0) == 0 }
}
fn connect_host_socket(h: &Host) -> bool {
    UnixStream::connect(&h.socket).is_ok()
}
fn socket_inet(_: &Host) -> bool {
    // SAFETY: socket with integer arguments.
    unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) >= 0 }
}
fn socket_netlink(_: &Host) -> bool {
    // SAFETY: socket with integer arguments.
    unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_RAW, 0) >= 0 }
}
fn mknod_device(h: &Host) -> bool {
    let path = c(&h.dir.join("run/null"));
    // SAFETY: a NUL-terminated path and integers.
    unsafe { libc::mknod(path.as_ptr(), libc::S_IFCHR | 0o666, libc::makedev(1, 3)) == 0 }
}
fn mount_tmpfs(h: &Host) -> bool {
    let target = c(&h.dir.join("run"));
    // SAFETY: NUL-terminated strings and a null data pointer.
    unsafe {
        libc::mount(
            c"tmpfs".as_ptr(),
            target.as_ptr(),
            c"tmpfs".as_ptr(),
            0,
            std::ptr::null(),
        ) == 0
    }
}
fn init_module(_: &Host) -> bool {
    // SAFETY: an empty image; the kernel rejects it if the call is let through.
    unsafe {
        libc::syscall(
            libc::SYS_init_module,
            std::ptr::null::<u8>(),
            0,
            c"".as_ptr(),
        ) == 0
    }
}
fn finit_module(_: &Host) -> bool {
    // SAFETY: an invalid descriptor.
    unsafe { libc::syscall(libc::SYS_finit_module, -1, c"".as_ptr(), 0) == 0 }
}
fn ptrace_host_process(h: &Host) -> bool {
    // SAFETY: PTRACE_ATTACH with a pid and null pointers.
    unsafe {
        libc::ptrace(
            libc::PTRACE_ATTACH,
            h.victim.id() as libc::pid_t,
            std::ptr::null_mut::<libc::c_void>(),
            std::ptr::null_mut::<libc::c_void>(),
        ) == 0
    }
}
fn execve_shell(_: &Host) -> bool {
    let argv = [c"/bin/sh".as_ptr(), std::ptr::null()];
    let envp = [std::ptr::null()];
    // SAFETY: NUL-terminated argv/envp arrays; returns only on failure.
    unsafe { libc::execve(c"/bin/sh".as_ptr(), argv.as_ptr(), envp.as_ptr()) };
    false
}

const ATTEMPTS: &[(&str, Attempt)] = &[
    ("read /etc/shadow", read_shadow),
    ("read a host path outside the jail", read_host_file),
    ("open /proc/1/mem for writing", open_proc_1_mem),
    ("list host processes in /proc", list_host_processes),
    ("kill(1, 0)", kill_init),
    ("signal a host process (tgkill)", signal_host_process),
    ("connect to a host Unix socket in /tmp", connect_host_socket),
    ("socket(AF_INET)", socket_inet),
    ("socket(AF_NETLINK)", socket_netlink),
    ("mknod a character device", mknod_device),
    ("mount a tmpfs", mount_tmpfs),
    ("init_module", init_module),
    ("finit_module", finit_module),
    ("ptrace a host process", ptrace_host_process),
    ("execve /bin/sh", execve_shell),
];

/// Forks a child that jails itself per `spec`, installs the main
/// thread's filter in `mode` and runs `attempt`.
fn attempt_in_jail(host: &Host, spec: &JailSpec, mode: SeccompMode, attempt: Attempt) -> Outcome {
    // SAFETY: the child is single-threaded after fork; it runs the jail
    // setup (glibc's malloc is fork-safe) and leaves with _exit.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        let code = (|| {
            // Compiled before the jail (nothing needs files), installed after.
            let programs = seccomp::programs(ThreadKind::Main, mode, std::process::id()).ok()?;
            nacre_vmm::jail::enter(spec).ok()?;
            for p in &programs {
                seccompiler_apply(p)?;
            }
            Some(if attempt(host) { 0 } else { 1 })
        })()
        .unwrap_or(2);
        // SAFETY: _exit never returns.
        unsafe { libc::_exit(code) };
    }
    let mut status = 0;
    // SAFETY: waiting for our own child into a local.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    if libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGSYS {
        Outcome::Killed
    } else if libc::WIFEXITED(status) {
        match libc::WEXITSTATUS(status) {
            0 => Outcome::Succeeded,
            1 => Outcome::Failed,
            other => Outcome::SetupFailed(other),
        }
    } else {
        Outcome::SetupFailed(-libc::WTERMSIG(status))
    }
}

fn seccompiler_apply(program: &seccompiler::BpfProgram) -> Option<()> {
    seccompiler::apply_filter(program).ok()
}

/// Runs every attempt against `spec`; returns the report lines and
/// whether each was blocked.
fn contain(host: &Host, share: bool) {
    let spec = host.spec(share);
    let profile = if share {
        "share (uid 0, 6 caps)"
    } else {
        "no share (uid 65534, no caps)"
    };
    let mut escaped = Vec::new();
    for (name, attempt) in ATTEMPTS {
        let jail_only = attempt_in_jail(host, &spec, SeccompMode::Off, *attempt);
        let full = attempt_in_jail(host, &spec, SeccompMode::Enforce, *attempt);
        println!(
            "[{profile}] {name}: jail+creds alone: {jail_only:?}; with the main filter: {full:?}"
        );
        assert!(
            !matches!(full, Outcome::SetupFailed(_)),
            "{name}: the jail could not be set up: {full:?}"
        );
        if full == Outcome::Succeeded {
            escaped.push(*name);
        }
    }
    // The victim survived every attempt.
    assert!(Path::new(&format!("/proc/{}", host.victim.id())).exists());
    assert!(escaped.is_empty(), "[{profile}] not contained: {escaped:?}");
}

#[test]
fn a_jailed_vmm_with_a_share_cannot_escape() {
    if !require_root("a_jailed_vmm_with_a_share_cannot_escape") {
        return;
    }
    let host = Host::new("contain-share");
    contain(&host, true);
}

#[test]
fn an_unprivileged_jailed_vmm_cannot_escape() {
    if !require_root("an_unprivileged_jailed_vmm_cannot_escape") {
        return;
    }
    let host = Host::new("contain-plain");
    contain(&host, false);
}

/// The fields of `/proc/<pid>/status` (or a task's) by name.
fn status_of(path: &str) -> std::collections::HashMap<String, String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.to_string(), v.trim().to_string()))
        .collect()
}

fn request(stream: &mut UnixStream, reader: &mut impl BufRead, line: &str) -> serde_json::Value {
    let _ = stream.write_all(format!("{line}\n").as_bytes());
    let mut resp = String::new();
    let _ = reader.read_line(&mut resp);
    serde_json::from_str(&resp).unwrap_or_else(|e| panic!("{resp:?}: {e}"))
}

/// Checks the running jailed VMM `pid`: credentials, seccomp on every
/// thread, and a root that is not the host's.
fn check_jailed(pid: u32, uid: &str, cap_eff: &str) {
    let status = status_of(&format!("/proc/{pid}/status"));
    assert_eq!(
        status["Uid"].split_whitespace().collect::<Vec<_>>(),
        [uid; 4],
        "{status:?}"
    );
    assert_eq!(status["CapEff"], cap_eff);
    assert_eq!(status["CapPrm"], cap_eff);
    assert_eq!(status["CapBnd"], "0000000000000000");
    assert_eq!(status["CapAmb"], "0000000000000000");
    assert_eq!(status["NoNewPrivs"], "1");
    assert_eq!(status["Seccomp"], "2");
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).unwrap_or_else(|e| panic!("{e}"));
    for task in tasks.flatten() {
        let path = task.path().join("status");
        let t = status_of(&path.to_string_lossy());
        assert_eq!(t["Seccomp"], "2", "thread {} unfiltered", t["Name"]);
    }
    let ns = |p: &str| std::fs::read_link(p).unwrap_or_default();
    assert_ne!(ns(&format!("/proc/{pid}/ns/mnt")), ns("/proc/self/ns/mnt"));
    use std::os::unix::fs::MetadataExt;
    let root = std::fs::metadata(format!("/proc/{pid}/root/")).unwrap_or_else(|e| panic!("{e}"));
    let host_root = std::fs::metadata("/").unwrap_or_else(|e| panic!("{e}"));
    assert_ne!((root.dev(), root.ino()), (host_root.dev(), host_root.ino()));
    let seen: Vec<_> = std::fs::read_dir(format!("/proc/{pid}/root/"))
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(!seen.iter().any(|n| n == "etc" || n == "usr"), "{seen:?}");
}

/// Boots the spinning test kernel jailed, checks it, snapshots it into
/// the run directory, restores the snapshot jailed, shuts both down.
fn jailed_vm_round_trip(name: &str, share: bool) {
    if !require_root(name) || !require_kvm() {
        return;
    }
    let dir = scratch(name);
    let run = dir.join("run");
    let share_dir = dir.join("share");
    std::fs::create_dir_all(&run).unwrap_or_default();
    std::fs::create_dir_all(&share_dir).unwrap_or_default();
    let spin = dir.join("spin.elf");
    let initrd = dir.join("initrd.cpio");
    std::fs::write(&spin, spinning_kernel()).unwrap_or_default();
    std::fs::write(&initrd, vec![0u8; 4096]).unwrap_or_default();
    let s = |p: &Path| p.to_string_lossy().into_owned();
    let api = run.join("api.sock");
    let template = run.join("template");
    let mut args = vec![
        "--jail".to_string(),
        s(&run.join("jail")),
        "--api-socket".into(),
        s(&api),
        "--vsock-uds".into(),
        s(&run.join("vsock.sock")),
        "--serial-log".into(),
        s(&run.join("console.log")),
    ];
    if share {
        args.extend(["--shared-dir".into(), format!("s={}", s(&share_dir))]);
    }
    let (uid, caps) = if share {
        ("0", "00000000000000db")
    } else {
        ("65534", "0000000000000000")
    };
    let boot = [
        args.clone(),
        vec![
            "--kernel".into(),
            s(&spin),
            "--initrd".into(),
            s(&initrd),
            "--memory-mib".into(),
            "64".into(),
        ],
    ]
    .concat();
    let boot: Vec<&str> = boot.iter().map(String::as_str).collect();
    let mut child = spawn_vmm(&boot);
    assert!(
        wait_for_path(&api, Duration::from_secs(10)),
        "api socket never appeared"
    );
    check_jailed(child.0.id(), uid, caps);
    let mut stream = UnixStream::connect(&api).unwrap_or_else(|e| panic!("{e}"));
    let mut reader = BufReader::new(stream.try_clone().unwrap_or_else(|e| panic!("{e}")));
    let r = request(&mut stream, &mut reader, r#"{"op":"status"}"#);
    assert_eq!(r["state"], "running", "{r}");
    let r = request(
        &mut stream,
        &mut reader,
        &serde_json::json!({"op": "snapshot", "dir": template}).to_string(),
    );
    assert_eq!(r["ok"], true, "snapshot in the jail: {r}");
    let r = request(&mut stream, &mut reader, r#"{"op":"shutdown"}"#);
    assert_eq!(r["ok"], true);
    let status = wait_timeout(&mut child.0, Duration::from_secs(10));
    assert_eq!(status.and_then(|s| s.code()), Some(0));
    assert!(!api.exists(), "api socket left behind");

    // The template is moved out of the run directory, as the runtime does.
    let store = dir.join("template");
    std::fs::rename(&template, &store).unwrap_or_else(|e| panic!("{e}"));
    let restore = [
        args,
        vec![
            "--restore".into(),
            s(&store),
            "--kernel".into(),
            s(&spin),
            "--initrd".into(),
            s(&initrd),
        ],
    ]
    .concat();
    let restore: Vec<&str> = restore.iter().map(String::as_str).collect();
    let mut child = spawn_vmm(&restore);
    assert!(
        wait_for_path(&api, Duration::from_secs(10)),
        "restored VM: no api socket"
    );
    check_jailed(child.0.id(), uid, caps);
    let mut stream = UnixStream::connect(&api).unwrap_or_else(|e| panic!("{e}"));
    let mut reader = BufReader::new(stream.try_clone().unwrap_or_else(|e| panic!("{e}")));
    let r = request(&mut stream, &mut reader, r#"{"op":"status"}"#);
    assert_eq!(r["state"], "running", "{r}");
    let r = request(&mut stream, &mut reader, r#"{"op":"shutdown"}"#);
    assert_eq!(r["ok"], true);
    let status = wait_timeout(&mut child.0, Duration::from_secs(10));
    assert_eq!(status.and_then(|s| s.code()), Some(0));
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_jailed_vmm_with_a_share_runs_snapshots_and_restores() {
    jailed_vm_round_trip("jail-vm-share", true);
}

#[test]
fn an_unprivileged_jailed_vmm_runs_snapshots_and_restores() {
    jailed_vm_round_trip("jail-vm-plain", false);
}
