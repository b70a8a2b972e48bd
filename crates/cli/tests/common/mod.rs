//! Shared helpers of the CLI's integration tests.
#![allow(dead_code, reason = "each test file uses a different subset")]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test helpers: a failure is a test failure"
)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The `nacre` binary under test.
pub fn nacre() -> Command {
    Command::new(env!("CARGO_BIN_EXE_nacre"))
}

/// Whether a missing prerequisite must fail the test (CI, `make test`).
pub fn required() -> bool {
    nacre_runtime::testing::vm_tests_required()
}

/// True when running as root; otherwise skips (or, under CI, fails).
pub fn require_root(test: &str) -> bool {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    assert!(
        !required(),
        "test {test} needs root (mounts, /run); it must run as root under CI / make test"
    );
    eprintln!("SKIPPED {test}: needs root");
    false
}

/// A scratch directory removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("nacre-cli-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if nacre_runtime::container::mounts::mounts_under(&self.0).is_empty() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// Writes a bundle with an empty rootfs dir and `config` as config.json.
pub fn bundle(dir: &Path, config: &str) -> PathBuf {
    let b = dir.join("bundle");
    std::fs::create_dir_all(b.join("rootfs")).unwrap();
    std::fs::write(b.join("config.json"), config).unwrap();
    b
}

/// A minimal valid config running `args`.
pub fn config(args: &[&str], extra_mounts: &str) -> String {
    let args = serde_json::to_string(args).unwrap();
    format!(
        r#"{{"ociVersion": "1.0.2",
  "process": {{"terminal": false, "user": {{"uid": 0, "gid": 0}}, "args": {args},
    "env": ["PATH=/bin:/sbin:/usr/bin"], "cwd": "/"}},
  "root": {{"path": "rootfs"}},
  "hostname": "nacre-test",
  "mounts": [{{"destination": "/proc", "type": "proc", "source": "proc"}}{extra_mounts}],
  "linux": {{"namespaces": [{{"type": "pid"}}, {{"type": "mount"}}, {{"type": "uts"}}, {{"type": "ipc"}}]}}
}}"#
    )
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Asserts nothing of the container is left: no state dir, no mount under
/// `root`, no VMM whose command line names `root`.
pub fn assert_nothing_left(root: &Path, id: &str) {
    assert!(
        !root.join(id).exists(),
        "state dir {} left behind",
        root.join(id).display()
    );
    let mounts = nacre_runtime::container::mounts::mounts_under(root);
    assert!(
        mounts.is_empty(),
        "mounts left under {}: {mounts:?}",
        root.display()
    );
    let root_s = root.to_string_lossy().into_owned();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(&root_s)
            && (cmdline.contains("nacre-vmm") || cmdline.contains(" monitor "))
        {
            panic!("process left behind: {cmdline}");
        }
    }
}
