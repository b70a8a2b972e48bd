//! The engine's bookkeeping with a scripted launcher: no root, no fork.

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex};

use super::*;
use crate::container::ffi;

const SPEC: &str = r#"{"root":{"path":"/"},"process":{"args":["true"]},
    "linux":{"namespaces":[{"type":"pid"}]}}"#;

/// Exits are scripted by the test; pids count up from 1000.
#[derive(Debug, Default)]
struct FakeLauncher {
    state: Mutex<FakeState>,
    changed: Condvar,
}

#[derive(Debug, Default)]
struct FakeState {
    next_pid: libc::pid_t,
    exits: HashMap<libc::pid_t, i32>,
    signals: Vec<(libc::pid_t, libc::c_int)>,
    /// The child ends of stdout, closed when the process "exits".
    outputs: HashMap<libc::pid_t, OwnedFd>,
    fail_create: Option<String>,
}

#[derive(Debug)]
struct FakeGate(Result<(), String>);

impl Gate for FakeGate {
    fn release(self: Box<Self>) -> Result<(), String> {
        self.0
    }
}

impl FakeLauncher {
    fn launch(&self, gate: Option<Box<dyn Gate>>) -> Result<Launched, String> {
        let mut st = self.state.lock().unwrap();
        if let Some(msg) = st.fail_create.clone() {
            return Err(msg);
        }
        st.next_pid += 1;
        let pid = 1000 + st.next_pid;
        let (out_r, out_w) = ffi::pipe().unwrap();
        let (in_r, in_w) = ffi::pipe().unwrap();
        // The "process" echoes nothing; its stdin read end is just dropped.
        drop(in_r);
        st.outputs.insert(pid, out_w);
        Ok(Launched {
            namespaces: Vec::new(),
            pid,
            stdin: Some(in_w),
            stdout: Some(out_r),
            stderr: None,
            terminal: None,
            gate,
        })
    }

    /// The process `pid` writes `data` to its stdout.
    fn output(&self, pid: libc::pid_t, data: &[u8]) {
        let st = self.state.lock().unwrap();
        ffi::write_all(st.outputs[&pid].as_fd(), data).unwrap();
    }

    fn exit(&self, pid: libc::pid_t, status: i32) {
        let mut st = self.state.lock().unwrap();
        st.outputs.remove(&pid);
        st.exits.insert(pid, status);
        self.changed.notify_all();
    }
}

use std::os::fd::AsFd;

impl Launcher for Arc<FakeLauncher> {
    fn create(&self, _req: &CreateRequest<'_>) -> Result<Launched, String> {
        self.launch(Some(Box::new(FakeGate(Ok(())))))
    }

    fn exec(&self, _req: &ExecRequest<'_>) -> Result<Launched, String> {
        self.launch(None)
    }

    fn wait(&self, pid: libc::pid_t) -> i32 {
        let mut st = self.state.lock().unwrap();
        loop {
            if let Some(status) = st.exits.get(&pid) {
                return *status;
            }
            st = self.changed.wait(st).unwrap();
        }
    }

    fn signal(&self, pid: libc::pid_t, signal: libc::c_int) -> io::Result<()> {
        self.state.lock().unwrap().signals.push((pid, signal));
        if signal == libc::SIGKILL {
            self.exit(pid, 128 + signal);
        }
        Ok(())
    }

    fn resize(&self, _terminal: &OwnedFd, _rows: u16, _cols: u16) -> io::Result<()> {
        Ok(())
    }
}

fn engine() -> (Engine<Arc<FakeLauncher>>, Arc<FakeLauncher>) {
    let fake = Arc::new(FakeLauncher::default());
    (Engine::new(Arc::clone(&fake), None), fake)
}

fn kind<T: std::fmt::Debug>(r: Result<T, ContainerError>) -> ErrorKind {
    r.unwrap_err().kind
}

#[test]
fn lifecycle_states() {
    let (engine, fake) = engine();
    let pid = engine.create("c1", SPEC.as_bytes()).unwrap();
    assert_eq!(engine.state("c1").unwrap().status, Status::Created);
    // runc runs processes in a created container too.
    engine.exec("c1", "e1", br#"{"args":["x"]}"#).unwrap();
    assert_eq!(engine.state("c1").unwrap().status, Status::Created);
    engine.start("c1").unwrap();
    assert_eq!(engine.state("c1").unwrap().status, Status::Running);
    assert_eq!(kind(engine.start("c1")), ErrorKind::FailedPrecondition);
    fake.output(pid, b"hi");
    assert_eq!(engine.read("c1", "", false, 0).unwrap(), b"hi");
    fake.exit(pid, 3);
    assert_eq!(engine.wait("c1", "").unwrap().0, 3);
    assert!(engine.read("c1", "", false, 0).unwrap().is_empty(), "EOF");
    assert!(
        engine.read("c1", "", true, 0).unwrap().is_empty(),
        "no stderr"
    );
    let state = engine.state("c1").unwrap();
    assert_eq!(state.status, Status::Stopped);
    assert_eq!(state.exit_status, Some(3));
    // A finished process: NotFound, as containerd's shims answer.
    assert_eq!(
        kind(engine.signal("c1", "", 15, false)),
        ErrorKind::NotFound
    );
    engine.remove("c1").unwrap();
    assert_eq!(kind(engine.state("c1")), ErrorKind::NotFound);
}

#[test]
fn ids_are_checked() {
    let (engine, _fake) = engine();
    for bad in ["", "..", "a/b", "x y", &"a".repeat(200)] {
        assert_eq!(
            kind(engine.create(bad, SPEC.as_bytes())),
            ErrorKind::InvalidArgument,
            "{bad:?}"
        );
    }
    engine.create("ok-1.2_3", SPEC.as_bytes()).unwrap();
    assert_eq!(
        kind(engine.create("ok-1.2_3", SPEC.as_bytes())),
        ErrorKind::AlreadyExists
    );
    assert_eq!(kind(engine.start("missing")), ErrorKind::NotFound);
    assert_eq!(kind(engine.wait("ok-1.2_3", "nope")), ErrorKind::NotFound);
}

#[test]
fn spec_errors_are_invalid_arguments() {
    let (engine, fake) = engine();
    assert_eq!(kind(engine.create("c", b"{")), ErrorKind::InvalidArgument);
    let relative = r#"{"root":{"path":"rootfs"},"process":{"args":["sh"]}}"#;
    let err = engine.create("c", relative.as_bytes()).unwrap_err();
    assert_eq!(err.kind, ErrorKind::InvalidArgument);
    assert_eq!(
        err.to_string(),
        "container c: root.path \"rootfs\" is not absolute"
    );
    let missing = r#"{"root":{"path":"/nonexistent/x"},"process":{"args":["sh"]}}"#;
    let err = engine.create("c", missing.as_bytes()).unwrap_err();
    assert!(err.message.contains("/nonexistent/x"), "{err}");
    fake.state.lock().unwrap().fail_create = Some("mount proc on /proc: EPERM".into());
    let err = engine.create("c", SPEC.as_bytes()).unwrap_err();
    assert_eq!(err.kind, ErrorKind::Internal);
    assert_eq!(err.to_string(), "container c: mount proc on /proc: EPERM");
    // A failed create frees the id.
    fake.state.lock().unwrap().fail_create = None;
    engine.create("c", SPEC.as_bytes()).unwrap();
}

#[test]
fn exec_processes_and_signals() {
    let (engine, fake) = engine();
    let init = engine.create("c", SPEC.as_bytes()).unwrap();
    engine.start("c").unwrap();
    assert_eq!(
        kind(engine.exec("c", "", br#"{"args":["x"]}"#)),
        ErrorKind::InvalidArgument
    );
    assert_eq!(
        kind(engine.exec("c", "e", b"[]")),
        ErrorKind::InvalidArgument
    );
    let pid = engine.exec("c", "e", br#"{"args":["x"]}"#).unwrap();
    assert_ne!(pid, init);
    assert_eq!(
        kind(engine.exec("c", "e", br#"{"args":["x"]}"#)),
        ErrorKind::AlreadyExists
    );
    assert_eq!(
        engine.write_stdin("c", "e", b"abc").unwrap(),
        0,
        "reader gone: closed"
    );
    // Signal 0 probes that the process is alive (runc accepts it).
    engine.signal("c", "e", 0, false).unwrap();
    engine.signal("c", "", 0, true).unwrap();
    assert_eq!(
        kind(engine.signal("c", "e", 65, false)),
        ErrorKind::InvalidArgument
    );
    engine.signal("c", "e", 9, false).unwrap();
    assert_eq!(engine.wait("c", "e").unwrap().0, 137);
    let mut list = engine.list("c").unwrap();
    list.sort_unstable();
    assert_eq!(list, vec![u32::try_from(init).unwrap()]);
    engine.signal("c", "", 15, true).unwrap();
    assert!(fake.state.lock().unwrap().signals.contains(&(init, 15)));
    assert_eq!(
        kind(engine.resize("c", "", 10, 10)),
        ErrorKind::FailedPrecondition
    );
    // No cgroup in this engine: pause and update say so.
    assert_eq!(
        kind(engine.set_paused("c", true)),
        ErrorKind::FailedPrecondition
    );
    assert_eq!(
        kind(engine.update("c", b"{}")),
        ErrorKind::FailedPrecondition
    );
    assert_eq!(engine.stats("c").unwrap(), Stats::default());
    engine.remove("c").unwrap();
    assert!(fake
        .state
        .lock()
        .unwrap()
        .signals
        .contains(&(init, libc::SIGKILL)));
}

#[test]
fn remove_of_a_created_container_kills_its_init() {
    let (engine, fake) = engine();
    let init = engine.create("c", SPEC.as_bytes()).unwrap();
    engine.remove("c").unwrap();
    assert!(fake
        .state
        .lock()
        .unwrap()
        .signals
        .contains(&(init, libc::SIGKILL)));
    engine.create("c", SPEC.as_bytes()).unwrap();
}

#[test]
fn the_first_sysfs_mount_of_a_pod_decides_for_later_ones() {
    let spec = |opts: &str| {
        Spec::parse(
            format!(
                r#"{{"process":{{"args":["x"]}},"root":{{"path":"/r"}},"mounts":[{{"destination":"/sys","type":"sysfs","source":"sysfs","options":[{opts}]}}]}}"#
            )
            .as_bytes(),
        )
        .unwrap()
    };
    let ro = |s: &Spec| {
        super::super::mounts::parse(Some("sysfs"), &s.mounts[0].options).flags & libc::MS_RDONLY
            != 0
    };
    // The pause container's read-only sysfs makes a privileged
    // container's read-write one read-only, as the kernel does on a host.
    let mut first = None;
    let mut pause = spec(r#""nosuid","ro""#);
    pod_sysfs(&mut first, &mut pause);
    assert_eq!(first, Some(true));
    let mut privileged = spec(r#""nosuid","rw""#);
    pod_sysfs(&mut first, &mut privileged);
    assert!(ro(&privileged), "{:?}", privileged.mounts[0].options);
    // A privileged pod's read-write first mount leaves later ones alone.
    let mut first = None;
    let mut pause = spec(r#""rw""#);
    pod_sysfs(&mut first, &mut pause);
    assert_eq!(first, Some(false));
    let mut app = spec(r#""ro""#);
    pod_sysfs(&mut first, &mut app);
    assert!(ro(&app));
    let mut privileged = spec(r#""rw""#);
    pod_sysfs(&mut first, &mut privileged);
    assert!(!ro(&privileged));
}
