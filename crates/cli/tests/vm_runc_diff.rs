//! VM tier, issue 16 (4): the command line against runc's own behaviours,
//! differential. The same bundle (the same config.json: runc's default
//! `runc spec` with a busybox rootfs, a read-only bind mount, two tmpfs
//! mounts, rlimits, a pids limit) runs under `runc --root A` and
//! `nacre --root B`; every step's observable result (exit code, stdout,
//! the gist of stderr, `state`/`list`/`ps`/`events` output with host pids,
//! times and bundle paths normalised) is reduced to a text and nacre must
//! give runc's. Few VMs boot (one long-running container serves the
//! lifecycle and all the exec probes, one `run --keep`); the bad-input
//! cases need no VM. Each case prints PASS, KNOWN (a divergence listed in
//! [`KNOWN_DIVERGENCES`] with its reason, checked to still differ) or
//! FAIL; the counts come last and any FAIL fails the test.
//!
//! Needs /dev/kvm, root, the guest image and `runc`; under CI / `make
//! test` (NACRE_REQUIRE_VM=1) a missing prerequisite fails the test.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a failure is a test failure"
)]

mod common;

use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use nacre_runtime::container::console::recv_fd;
use nacre_runtime::testing::vm_prereqs;
use serde_json::Value;

/// Divergences a VM runtime cannot (or by decision does not) remove, by
/// case name, with the reason. Each is checked to still differ: one that
/// matches again fails the suite until it is taken off the list.
const KNOWN_DIVERGENCES: &[(&str, &str)] = &[
    (
        "spec: default config.json",
        "nacre's default spec adds a cgroup namespace, so that the \
         container's /sys/fs/cgroup (cgroup v2 in the guest) is its own \
         cgroup; runc 1.1.5's default spec has none",
    ),
    (
        "exec probe (created): tmpfs and mount point modes",
        "runc 1.1.5 chmods a tmpfs to the mode of the directory it covers \
         even when the mount says mode= (mode=0750 over a 0755 directory \
         gives 755); nacre honours mode= and takes the directory's mode only \
         without one (/srv: 711 under both)",
    ),
];

/// busybox applets the probes use.
const APPLETS: &[&str] = &[
    "sh", "id", "pwd", "hostname", "grep", "stat", "awk", "cat", "env", "sort", "wc", "ls",
    "touch", "sleep", "tty", "echo", "test", "true", "false", "head", "sed", "cut", "tr",
];

/// What a command did: exit code, stdout, stderr.
#[derive(Debug)]
struct Res {
    code: i32,
    out: String,
    err: String,
}

impl Res {
    /// Exit code and stdout.
    fn text(&self) -> String {
        format!("exit {}\n{}", self.code, self.out)
    }
    /// Exit code and whether stderr holds `gist`.
    fn fails_with(&self, gist: &str) -> String {
        // runc's logrus quotes the message: `msg="exec: \"x\": ..."`.
        format!(
            "exit {}, stderr says {gist:?}: {}",
            self.code,
            self.err.replace("\\\"", "\"").contains(gist)
        )
    }
}

/// One runtime under test.
struct Rt {
    name: &'static str,
    bin: PathBuf,
    root: PathBuf,
    bundle: PathBuf,
    env: Vec<(&'static str, PathBuf)>,
    scratch: PathBuf,
}

impl Rt {
    fn cmd(&self) -> Command {
        let mut c = Command::new(&self.bin);
        for (k, v) in &self.env {
            c.env(k, v);
        }
        c.arg("--root").arg(&self.root);
        c
    }

    fn run(&self, args: &[&str]) -> Res {
        let o = self
            .cmd()
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("running {}: {e}", self.name));
        Res {
            code: o.status.code().unwrap_or(-1),
            out: stdout(&o),
            err: stderr(&o),
        }
    }

    /// `create` with the container's stdio away from our pipes (its init
    /// or monitor keeps them).
    fn create(&self, id: &str, extra: &[&str]) -> Res {
        let err = self.scratch.join(format!("{}-{id}.create.err", self.name));
        let status = self
            .cmd()
            .args(["create", "--bundle"])
            .arg(&self.bundle)
            .args(extra)
            .arg(id)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&err).unwrap())
            .status()
            .unwrap();
        Res {
            code: status.code().unwrap_or(-1),
            out: String::new(),
            err: std::fs::read_to_string(&err).unwrap_or_default(),
        }
    }

    fn state(&self, id: &str) -> Option<Value> {
        let r = self.run(&["state", id]);
        (r.code == 0).then(|| serde_json::from_str(&r.out).unwrap())
    }

    /// Polls `state` until the container reports `status`.
    fn wait_status(&self, id: &str, status: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.state(id).is_some_and(|s| s["status"] == status) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        false
    }

    /// `exec -d -t --console-socket` of `args`: what the terminal showed.
    fn exec_tty(&self, id: &str, args: &[&str]) -> Res {
        let sock = self.scratch.join(format!("{}-console.sock", self.name));
        let _ = std::fs::remove_file(&sock);
        let listener = UnixListener::bind(&sock).unwrap();
        let reader = std::thread::spawn(move || {
            let (stream, _) = listener.accept().ok()?;
            let (_, master) = recv_fd(&stream).ok()?;
            let mut master = std::fs::File::from(master);
            let mut all = Vec::new();
            let mut buf = [0u8; 4096];
            // EIO once the process (the last holder of the slave) exits.
            while let Ok(n) = master.read(&mut buf) {
                if n == 0 {
                    break;
                }
                all.extend_from_slice(&buf[..n]);
            }
            Some(String::from_utf8_lossy(&all).replace("\r\n", "\n"))
        });
        let mut a = vec![
            "exec",
            "-d",
            "-t",
            "--console-socket",
            sock.to_str().unwrap(),
            id,
        ];
        a.extend_from_slice(args);
        let mut r = self.run(&a);
        if r.code == 0 || r.out.is_empty() {
            // The listener thread ends once the master reports EIO.
            let start = Instant::now();
            while !reader.is_finished() && start.elapsed() < Duration::from_secs(30) {
                std::thread::sleep(Duration::from_millis(50));
            }
            if reader.is_finished() {
                r.out = reader.join().unwrap().unwrap_or_default();
            } else {
                r.out = "<terminal still open>".into();
            }
        }
        r
    }

    /// Force-deletes whatever is left under the root.
    fn cleanup(&self) {
        if let Ok(entries) = std::fs::read_dir(&self.root) {
            for e in entries.flatten() {
                if e.path().is_dir() {
                    let _ = self
                        .cmd()
                        .arg("delete")
                        .arg("-f")
                        .arg(e.file_name())
                        .stdin(Stdio::null())
                        .stdout(Stdio::null())
                        .stderr(Stdio::null())
                        .status();
                }
            }
        }
    }
}

/// The case results.
#[derive(Default)]
struct Tally {
    pass: Vec<String>,
    known: Vec<String>,
    fail: Vec<String>,
}

impl Tally {
    /// Compares what runc and nacre gave for case `name`.
    fn cmp(&mut self, name: &str, runc: &str, nacre: &str) {
        let why = KNOWN_DIVERGENCES.iter().find(|(k, _)| *k == name);
        match (runc == nacre, why) {
            (true, None) => {
                eprintln!("PASS {name}");
                self.pass.push(name.into());
            }
            (false, Some((_, why))) => {
                eprintln!("KNOWN {name}: {why}\n  runc:  {runc:?}\n  nacre: {nacre:?}");
                self.known.push(name.into());
            }
            (true, Some(_)) => {
                eprintln!("FAIL {name}: matches now, take it off KNOWN_DIVERGENCES");
                self.fail.push(name.into());
            }
            (false, None) => {
                eprintln!("FAIL {name}\n  runc:  {runc:?}\n  nacre: {nacre:?}");
                self.fail.push(name.into());
            }
        }
    }

    /// Runs `f` on each runtime and compares.
    fn each(&mut self, name: &str, rts: &[Rt; 2], mut f: impl FnMut(&Rt) -> String) {
        let r = f(&rts[0]);
        let n = f(&rts[1]);
        self.cmp(name, &r, &n);
    }
}

/// A busybox rootfs and the probe config (runc's default spec with
/// additions) in `dir`.
fn probe_bundle(dir: &Path, spec: &Value) -> PathBuf {
    let b = dir.to_path_buf();
    let rootfs = b.join("rootfs");
    for d in [
        "bin", "proc", "sys", "dev", "tmp", "etc", "root", "data", "srv", "mnt/t", "home/app",
    ] {
        std::fs::create_dir_all(rootfs.join(d)).unwrap();
    }
    std::fs::set_permissions(rootfs.join("srv"), std::fs::Permissions::from_mode(0o711)).unwrap();
    std::fs::set_permissions(rootfs.join("tmp"), std::fs::Permissions::from_mode(0o1777)).unwrap();
    std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).unwrap();
    for a in APPLETS {
        symlink("busybox", rootfs.join("bin").join(a)).unwrap();
    }
    std::fs::write(
        rootfs.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n",
    )
    .unwrap();
    std::fs::write(
        rootfs.join("etc/group"),
        "root:x:0:\nwheel:x:10:\napp:x:1000:\n",
    )
    .unwrap();
    std::fs::write(b.join("config.json"), spec.to_string()).unwrap();
    b
}

/// runc's default spec (`runc spec`), made the probe: a long-running
/// init, rlimits, a hostname, a read-only bind of `data`, a tmpfs with
/// `mode=` and one without over a 0711 directory, a pids limit.
fn probe_spec(scratch: &Path, data: &Path) -> Value {
    let dir = scratch.join("spec");
    std::fs::create_dir_all(&dir).unwrap();
    let o = Command::new("runc")
        .args(["spec", "--bundle"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(o.status.success(), "runc spec: {}", stderr(&o));
    let mut spec: Value =
        serde_json::from_slice(&std::fs::read(dir.join("config.json")).unwrap()).unwrap();
    spec["process"]["terminal"] = false.into();
    spec["process"]["args"] = serde_json::json!(["sleep", "100000"]);
    spec["process"]["rlimits"] =
        serde_json::json!([{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1000}]);
    spec["hostname"] = "probe".into();
    let mounts = spec["mounts"].as_array_mut().unwrap();
    // The host's cgroup hierarchy (v1 here) is not the guest's (v2): the
    // cgroup reads below find the file either way.
    mounts.extend([
        serde_json::json!({"destination": "/data", "type": "bind",
            "source": data, "options": ["rbind", "ro"]}),
        serde_json::json!({"destination": "/mnt/t", "type": "tmpfs",
            "source": "tmpfs", "options": ["mode=0750"]}),
        serde_json::json!({"destination": "/srv", "type": "tmpfs",
            "source": "tmpfs", "options": ["nosuid"]}),
    ]);
    spec["linux"]["resources"]["pids"] = serde_json::json!({"limit": 100});
    spec
}

/// `state` JSON with what cannot match (pids, times, paths) reduced to
/// whether it is what it should be.
fn norm_state(rt: &Rt, s: &Value) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    let Some(obj) = s.as_object() else {
        m.insert("not an object".into(), s.to_string());
        return m;
    };
    for (k, v) in obj {
        let v = match k.as_str() {
            "pid" => format!("pid>0: {}", v.as_u64().unwrap_or(0) > 0),
            "created" => format!(
                "RFC 3339 UTC: {}",
                v.as_str()
                    .is_some_and(|t| t.len() >= 20 && t.ends_with('Z') && &t[10..11] == "T")
            ),
            "bundle" => format!("the bundle: {}", v.as_str() == rt.bundle.to_str()),
            "rootfs" => format!(
                "bundle/rootfs: {}",
                v.as_str() == rt.bundle.join("rootfs").to_str()
            ),
            _ => v.to_string(),
        };
        m.insert(k.clone(), v);
    }
    m
}

/// Compares the normalised state of `id` field by field (one case each,
/// so one divergence does not hide the others).
fn cmp_state(t: &mut Tally, label: &str, rts: &[Rt; 2], id: &str) {
    let states: Vec<BTreeMap<String, String>> = rts
        .iter()
        .map(|rt| rt.state(id).map(|s| norm_state(rt, &s)).unwrap_or_default())
        .collect();
    let keys: std::collections::BTreeSet<&String> =
        states[0].keys().chain(states[1].keys()).collect();
    for k in keys {
        let get = |i: usize| {
            states[i]
                .get(k)
                .cloned()
                .unwrap_or_else(|| "<absent>".into())
        };
        t.cmp(&format!("state {label}: {k}"), &get(0), &get(1));
    }
}

/// The sections (`== name` lines) of a probe's output.
fn sections(out: &str) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    let mut name = String::from("(start)");
    for line in out.lines() {
        if let Some(n) = line.strip_prefix("== ") {
            name = n.to_string();
            m.entry(name.clone()).or_insert_with(String::new);
            continue;
        }
        let s = m.entry(name.clone()).or_insert_with(String::new);
        s.push_str(line);
        s.push('\n');
    }
    m
}

/// The big probe, run as an exec: everything the process sees of its
/// setup, one section each.
const PROBE: &str = r#"
echo "== id"; id
echo "== HOME and cwd"; echo "HOME=$HOME"; pwd
echo "== hostname"; hostname
echo "== umask"; umask
echo "== capabilities and no_new_privs"
grep -E '^(CapInh|CapPrm|CapEff|CapBnd|CapAmb|NoNewPrivs):' /proc/self/status
echo "== rlimit nofile"; grep 'Max open files' /proc/self/limits
echo "== tmpfs and mount point modes"; stat -c '%n %a' /mnt/t /srv /data /tmp
echo "== mounts ro/rw"
awk '$5 ~ /^\/(data|mnt\/t|srv|sys|proc\/sys|proc\/bus|proc\/fs|proc\/irq|dev\/pts|dev\/shm|dev\/mqueue|dev|proc)$/ {split($6,o,","); print $5, o[1]}' /proc/self/mountinfo | sort
echo "== masked paths"
# Absent (a kernel without it: the guest has no ACPI, no keys) or empty.
for p in /proc/timer_list /proc/keys /proc/acpi /proc/scsi /sys/firmware /proc/kcore; do
  if [ -d $p ]; then n=$(ls -A $p | wc -l);
  elif [ -e $p ]; then n=$(cat $p 2>/dev/null | wc -c); else n=0; fi
  [ "$n" = 0 ] && echo "$p masked" || echo "$p visible"
done
echo "== read-only paths"
for p in /proc/sys/kernel/domainname /proc/sysrq-trigger; do
  if (echo x > $p) 2>/dev/null; then echo "$p writable"; else echo "$p not writable"; fi
done
echo "== writes"
touch /data/x 2>/dev/null && echo data-rw || echo data-ro
touch /x 2>/dev/null && echo rootfs-rw || echo rootfs-ro
touch /tmp/x 2>/dev/null && echo tmp-rw || echo tmp-ro
echo "== bind content"; cat /data/hello
echo "== env"; env | grep -v '^HOSTNAME=' | sort
echo "== devices"; ls /dev | sort | tr '\n' ' '; echo
"#;

#[test]
fn cli_matches_runc() {
    let test = "vm_runc_diff";
    let Some(p) = vm_prereqs(test) else { return };
    if !require_root(test) {
        return;
    }
    let runc_ok = Command::new("runc")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !runc_ok {
        assert!(
            !required(),
            "test {test} needs runc (the reference); it must run under CI / make test"
        );
        eprintln!("SKIPPED {test}: no runc");
        return;
    }
    let t0 = Instant::now();
    let scratch = Scratch::new("runc-diff");
    let data = scratch.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("hello"), "hello from the host\n").unwrap();
    let spec = probe_spec(scratch.path(), &data);
    let mk = |name: &'static str, bin: PathBuf, env: Vec<(&'static str, PathBuf)>| {
        let dir = scratch.path().join(name);
        Rt {
            name,
            bin,
            root: dir.join("root"),
            bundle: probe_bundle(&dir.join("bundle"), &spec),
            env,
            scratch: dir,
        }
    };
    let rts = [
        mk("runc", PathBuf::from("runc"), Vec::new()),
        mk(
            "nacre",
            PathBuf::from(env!("CARGO_BIN_EXE_nacre")),
            vec![
                ("NACRE_VMM", p.vmm.clone()),
                ("NACRE_KERNEL", p.image.kernel.clone()),
                ("NACRE_INITRD", p.image.initrd.clone()),
            ],
        ),
    ];
    let mut t = Tally::default();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        no_vm_cases(&mut t, &rts);
        lifecycle_cases(&mut t, &rts);
        run_cases(&mut t, &rts, &spec);
    }));
    for rt in &rts {
        rt.cleanup();
    }
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
    eprintln!(
        "runc differential: {} cases, {} passed, {} failed, {} known divergences ({:.0} s)",
        t.pass.len() + t.fail.len() + t.known.len(),
        t.pass.len(),
        t.fail.len(),
        t.known.len(),
        t0.elapsed().as_secs_f64()
    );
    assert!(
        t.fail.is_empty(),
        "cases that differ from runc: {:?}",
        t.fail
    );
}

/// Bad input and the commands that need no container.
fn no_vm_cases(t: &mut Tally, rts: &[Rt; 2]) {
    for (name, args, gist) in [
        ("state", &["state", "ghost"][..], "does not exist"),
        ("start", &["start", "ghost"], "does not exist"),
        ("kill", &["kill", "ghost", "KILL"], "does not exist"),
        ("kill 0", &["kill", "ghost", "0"], "does not exist"),
        ("delete", &["delete", "ghost"], "does not exist"),
        ("pause", &["pause", "ghost"], "does not exist"),
        ("resume", &["resume", "ghost"], "does not exist"),
        ("exec", &["exec", "ghost", "true"], "does not exist"),
        ("ps", &["ps", "ghost"], "does not exist"),
        (
            "update",
            &["update", "--pids-limit", "5", "ghost"],
            "does not exist",
        ),
        ("events", &["events", "--stats", "ghost"], "does not exist"),
    ] {
        t.each(&format!("unknown container: {name}"), rts, |rt| {
            rt.run(args).fails_with(gist)
        });
    }
    t.each("unknown container: delete --force", rts, |rt| {
        rt.run(&["delete", "--force", "ghost"]).text()
    });
    t.each("invalid id", rts, |rt| {
        rt.run(&["state", "../etc"]).fails_with("invalid container")
    });
    t.each("missing bundle", rts, |rt| {
        let r = rt.run(&["create", "--bundle", "/nonexistent/bundle", "nob"]);
        format!(
            "{}; then state: exit {}",
            r.fails_with("/nonexistent/bundle"),
            rt.run(&["state", "nob"]).code
        )
    });
    t.each("list empty: table", rts, |rt| rt.run(&["list"]).text());
    t.each("list empty: json", rts, |rt| {
        rt.run(&["list", "-f", "json"]).text()
    });
    t.each("list empty: quiet", rts, |rt| {
        rt.run(&["list", "-q"]).text()
    });
    t.each("help of an unknown command", rts, |rt| {
        let r = rt.run(&["help", "frobnicate"]);
        r.fails_with("No help topic for 'frobnicate'")
    });
    t.each("--version: line prefixes", rts, |rt| {
        let r = rt.run(&["--version"]);
        let prefixes: Vec<String> = r
            .out
            .lines()
            .map(|l| l.split(':').next().unwrap_or_default().to_string())
            .map(|l| l.replace(rt.name, "NAME"))
            .map(|l| {
                if l.starts_with("NAME version") {
                    "NAME version".into()
                } else {
                    l
                }
            })
            .collect();
        format!(
            "exit {}: {}",
            r.code,
            prefixes[..2.min(prefixes.len())].join(", ")
        )
    });
    t.each("spec: default config.json", rts, |rt| {
        let dir = rt.scratch.join("spec-out");
        std::fs::create_dir_all(&dir).unwrap();
        let r = rt.run(&["spec", "--bundle", dir.to_str().unwrap()]);
        let spec: Value = std::fs::read(dir.join("config.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        let again = rt.run(&["spec", "--bundle", dir.to_str().unwrap()]);
        let mut spec = spec;
        // Each writes its own spec version and its name as the hostname.
        spec["ociVersion"] = "VERSION".into();
        if spec["hostname"] == rt.name {
            spec["hostname"] = "NAME".into();
        }
        format!(
            "exit {}, second time exit {} ({}): {spec}",
            r.code,
            again.code,
            again.err.contains("exists")
        )
    });
}

/// One container per runtime: create, probes by exec (created and
/// running), state, list, ps, events, update, pause, kill, delete.
fn lifecycle_cases(t: &mut Tally, rts: &[Rt; 2]) {
    let id = "probe";
    let t1 = Instant::now();
    t.each("create", rts, |rt| rt.create(id, &[]).fails_with("error"));
    eprintln!("(create took {:.1} s in all)", t1.elapsed().as_secs_f64());
    cmp_state(t, "created", rts, id);
    t.each("create: duplicate id", rts, |rt| {
        rt.create(id, &[]).fails_with("already exists")
    });

    // Exec into the created container: the probe.
    let probes: Vec<BTreeMap<String, String>> = rts
        .iter()
        .map(|rt| {
            let r = rt.run(&["exec", id, "sh", "-c", PROBE]);
            let mut s = sections(&r.out);
            s.insert(
                "exit and stderr".into(),
                format!("exit {}: {}", r.code, r.err),
            );
            s
        })
        .collect();
    for (k, v) in &probes[0] {
        let n = probes[1]
            .get(k)
            .cloned()
            .unwrap_or_else(|| "<absent>".into());
        t.cmp(&format!("exec probe (created): {k}"), v, &n);
    }
    t.each("state after exec into created", rts, |rt| {
        rt.state(id)
            .map(|s| s["status"].to_string())
            .unwrap_or_default()
    });

    t.each("start", rts, |rt| rt.run(&["start", id]).text());
    cmp_state(t, "running", rts, id);
    t.each("start twice", rts, |rt| {
        let r = rt.run(&["start", id]);
        format!("exit {}", r.code)
    });
    t.each("list: json", rts, |rt| {
        let r = rt.run(&["list", "-f", "json"]);
        let v: Value = serde_json::from_str(&r.out).unwrap_or_default();
        let rows: Vec<String> = v
            .as_array()
            .into_iter()
            .flatten()
            .map(|s| format!("{:?}", norm_state(rt, s)))
            .collect();
        format!("exit {}: {rows:?}", r.code)
    });
    t.each("list: table", rts, |rt| {
        let r = rt.run(&["list"]);
        norm_list_table(rt, &r.out)
    });
    t.each("list: quiet", rts, |rt| rt.run(&["list", "-q"]).text());

    // Exec options.
    t.each("exec --user --cwd --env --additional-gids, exit code", rts, |rt| {
        rt.run(&[
            "exec",
            "--user",
            "1000:1000",
            "--cwd",
            "/tmp",
            "--env",
            "FOO=bar",
            "--additional-gids",
            "10",
            id,
            "sh",
            "-c",
            "id; pwd; echo $FOO $HOME; grep -E '^Cap(Inh|Prm|Eff|Bnd|Amb)' /proc/self/status; exit 3",
        ])
        .text()
    });
    t.each("exec --user uid alone keeps the process's gid", rts, |rt| {
        rt.run(&["exec", "--user", "1000", id, "id"]).text()
    });
    t.each("exec --cap", rts, |rt| {
        rt.run(&[
            "exec",
            "--cap",
            "CAP_SYS_ADMIN",
            id,
            "grep",
            "-E",
            "^Cap(Inh|Prm|Eff|Bnd|Amb)",
            "/proc/self/status",
        ])
        .text()
    });
    t.each("exec: missing binary", rts, |rt| {
        rt.run(&["exec", id, "nope"])
            .fails_with(r#"exec: "nope": executable file not found in $PATH"#)
    });
    t.each("exec -t with a console socket, not detached", rts, |rt| {
        let sock = rt.scratch.join("unused.sock");
        rt.run(&[
            "exec",
            "-t",
            "--console-socket",
            sock.to_str().unwrap(),
            id,
            "true",
        ])
        .fails_with("cannot use console socket if")
    });
    t.each("exec -d -t without a console socket", rts, |rt| {
        rt.run(&["exec", "-d", "-t", id, "true"])
            .fails_with("cannot allocate tty if")
    });
    t.each("exec -d -t with a console socket", rts, |rt| {
        rt.exec_tty(id, &["sh", "-c", "tty; test -t 0 && echo stdin-is-a-tty"])
            .text()
    });
    t.each("ps: table", rts, |rt| norm_ps(&rt.run(&["ps", id])));
    t.each("ps: json", rts, |rt| {
        let r = rt.run(&["ps", "--format", "json", id]);
        let v: Value = serde_json::from_str(&r.out).unwrap_or_default();
        format!(
            "exit {}: {} pids, all numbers: {}",
            r.code,
            v.as_array().map_or(0, Vec::len),
            v.as_array()
                .is_some_and(|a| a.iter().all(|p| p.as_u64().is_some_and(|n| n > 0)))
        )
    });
    t.each("events --stats: shape", rts, |rt| {
        let r = rt.run(&["events", "--stats", id]);
        norm_event(&r)
    });
    t.each("events --interval: one sample", rts, |rt| {
        // `events` streams until killed: take the first line.
        let mut child = rt
            .cmd()
            .args(["events", "--stats", "--interval", "1s", id])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut out = String::new();
        let mut stdout = child.stdout.take().unwrap();
        let mut buf = [0u8; 1];
        while stdout.read(&mut buf).unwrap_or(0) == 1 && buf[0] != b'\n' {
            out.push(char::from(buf[0]));
        }
        let _ = child.kill();
        let _ = child.wait();
        norm_event(&Res {
            code: 0,
            out,
            err: String::new(),
        })
    });

    t.each("update --pids-limit, read in the container", rts, |rt| {
        let u = rt.run(&["update", "--pids-limit", "50", id]);
        let r = rt.run(&[
            "exec",
            id,
            "sh",
            "-c",
            // cgroup v1 (runc on this host) or v2 (the guest).
            "cat /sys/fs/cgroup/pids/pids.max 2>/dev/null || \
             { p=$(cat /proc/self/cgroup); cat /sys/fs/cgroup${p#0::}/pids.max; }",
        ]);
        format!("update exit {}; {}", u.code, r.text())
    });
    t.each("pause", rts, |rt| {
        let r = rt.run(&["pause", id]);
        let s = rt.state(id).map(|s| s["status"].to_string());
        format!("exit {}: {s:?}", r.code)
    });
    t.each("delete of a paused container", rts, |rt| {
        format!("exit {}", rt.run(&["delete", id]).code)
    });
    t.each("resume", rts, |rt| {
        let r = rt.run(&["resume", id]);
        let s = rt.state(id).map(|s| s["status"].to_string());
        format!("exit {}: {s:?}", r.code)
    });
    t.each("kill 0", rts, |rt| rt.run(&["kill", id, "0"]).text());
    t.each("kill --all 0", rts, |rt| {
        rt.run(&["kill", "--all", id, "0"]).text()
    });
    t.each("kill: bad signal", rts, |rt| {
        rt.run(&["kill", id, "FOO"]).fails_with("FOO")
    });
    t.each("kill KILL: stopped", rts, |rt| {
        let r = rt.run(&["kill", id, "KILL"]);
        format!(
            "exit {}, stopped: {}",
            r.code,
            rt.wait_status(id, "stopped", Duration::from_secs(120))
        )
    });
    cmp_state(t, "stopped", rts, id);
    t.each("kill of a stopped container", rts, |rt| {
        rt.run(&["kill", id, "KILL"])
            .fails_with("container not running")
    });
    t.each("exec into a stopped container", rts, |rt| {
        rt.run(&["exec", id, "true"]).fails_with("stopped")
    });
    t.each("start of a stopped container", rts, |rt| {
        format!("exit {}", rt.run(&["start", id]).code)
    });
    t.each("delete", rts, |rt| {
        let r = rt.run(&["delete", id]);
        format!(
            "{}; then state: {}",
            r.text(),
            rt.run(&["state", id]).fails_with("does not exist")
        )
    });
}

/// `run` in the foreground: exit code, streams, `--keep`.
fn run_cases(t: &mut Tally, rts: &[Rt; 2], spec: &Value) {
    let mut spec = spec.clone();
    spec["process"]["args"] =
        serde_json::json!(["sh", "-c", "echo out; echo err >&2; id -u; exit 7"]);
    for rt in rts {
        std::fs::write(rt.bundle.join("config.json"), spec.to_string()).unwrap();
    }
    t.each("run --keep: exit code and streams", rts, |rt| {
        let r = rt.run(&[
            "run",
            "--keep",
            "--bundle",
            rt.bundle.to_str().unwrap(),
            "r1",
        ]);
        format!("{} stderr: {:?}", r.text(), r.err.trim())
    });
    t.each("run --keep: kept, stopped", rts, |rt| {
        rt.state("r1")
            .map(|s| s["status"].to_string())
            .unwrap_or_default()
    });
    t.each("run --keep: delete", rts, |rt| {
        rt.run(&["delete", "r1"]).text()
    });
}

/// `list`'s table with host-specific cells replaced; and whether the
/// columns are laid out as runc's tabwriter does (minimum width 12,
/// padding 3).
fn norm_list_table(rt: &Rt, out: &str) -> String {
    let mut rows: Vec<Vec<String>> = Vec::new();
    for line in out.lines() {
        let cells: Vec<String> = line.split_whitespace().map(String::from).collect();
        rows.push(cells);
    }
    let widths: Vec<usize> = (0..6)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(String::len)
                .max()
                .unwrap_or(0)
        })
        .collect();
    let tabwriter: String = rows
        .iter()
        .map(|r| {
            let mut line = String::new();
            for (i, cell) in r.iter().enumerate() {
                if i + 1 == r.len() {
                    line.push_str(cell);
                } else {
                    let w = (widths[i] + 3).max(12);
                    line.push_str(&format!("{cell:<w$}"));
                }
            }
            line + "\n"
        })
        .collect();
    let laid_out = tabwriter == out;
    let norm: Vec<String> = rows
        .iter()
        .skip(1)
        .map(|r| {
            r.iter()
                .enumerate()
                .map(|(i, c)| match i {
                    1 => "PID".to_string(),
                    3 if c == rt.bundle.to_str().unwrap() => "BUNDLE".to_string(),
                    4 => "CREATED".to_string(),
                    _ => c.clone(),
                })
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect();
    format!(
        "header {:?}, rows {norm:?}, tabwriter layout: {laid_out}",
        rows.first()
    )
}

/// `ps`'s table: the header as printed, each row's columns with pids,
/// start time and CPU time generalised, sorted.
fn norm_ps(r: &Res) -> String {
    let mut lines = r.out.lines();
    let header = lines.next().unwrap_or_default().to_string();
    let mut rows: Vec<String> = lines
        .map(|l| {
            let c: Vec<&str> = l.split_whitespace().collect();
            if c.len() < 8 {
                return format!("short row {l:?}");
            }
            let num = |s: &str| s.parse::<u64>().is_ok();
            let stime = c[4].len() == 5 && c[4].as_bytes()[2] == b':';
            let time = c[6].len() >= 8 && c[6].matches(':').count() == 2;
            format!(
                "{} pid:{} ppid:{} c:{} stime:{} {} time:{} {}",
                c[0],
                num(c[1]),
                num(c[2]),
                num(c[3]),
                stime,
                c[5],
                time,
                c[7..].join(" ")
            )
        })
        .collect();
    rows.sort();
    format!("exit {}: {header:?} {rows:?}", r.code)
}

/// A `stats` event: the key order at the top, the keys of `data` and of
/// the parts every client reads.
fn norm_event(r: &Res) -> String {
    // The raw key order (serde_json's Value would sort it).
    let top: Vec<&str> = ["\"type\"", "\"id\"", "\"data\""]
        .into_iter()
        .filter(|k| r.out.contains(*k))
        .collect();
    let mut top_order = top.clone();
    top_order.sort_by_key(|k| r.out.find(k));
    let v: Value = serde_json::from_str(r.out.trim()).unwrap_or_default();
    let keys = |v: &Value| -> Vec<String> {
        v.as_object()
            .map(|o| o.keys().cloned().collect())
            .unwrap_or_default()
    };
    format!(
        "exit {}; order {top_order:?}; type {}; id {}; data {:?}; cpu.usage {:?}; memory.usage {:?}; pids {:?}",
        r.code,
        v["type"],
        v["id"],
        keys(&v["data"]),
        keys(&v["data"]["cpu"]["usage"])
            .into_iter()
            .filter(|k| ["total", "kernel", "user"].contains(&k.as_str()))
            .collect::<Vec<_>>(),
        // `max` is cgroup v1's max_usage_in_bytes (runc on this host);
        // runc on cgroup v2, as in the guest, has none.
        keys(&v["data"]["memory"]["usage"])
            .into_iter()
            .filter(|k| k != "max")
            .collect::<Vec<_>>(),
        keys(&v["data"]["pids"]),
    )
}
