//! The differential harness: a runtime under test, its results, the
//! tally and the normalisations of runc's and nacre's outputs.

use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::KNOWN_DIVERGENCES;
use crate::common::*;
use nacre_runtime::container::console::recv_fd;
use serde_json::Value;

/// busybox applets the probes use.
pub const APPLETS: &[&str] = &[
    "sh", "id", "pwd", "hostname", "grep", "stat", "awk", "cat", "env", "sort", "wc", "ls",
    "touch", "sleep", "tty", "echo", "test", "true", "false", "head", "sed", "cut", "tr",
];

/// What a command did: exit code, stdout, stderr.
#[derive(Debug)]
pub struct Res {
    pub code: i32,
    pub out: String,
    pub err: String,
}

impl Res {
    /// Exit code and stdout.
    pub fn text(&self) -> String {
        format!("exit {}\n{}", self.code, self.out)
    }
    /// Exit code and whether stderr holds `gist`.
    pub fn fails_with(&self, gist: &str) -> String {
        // runc's logrus quotes the message: `msg="exec: \"x\": ..."`.
        format!(
            "exit {}, stderr says {gist:?}: {}",
            self.code,
            self.err.replace("\\\"", "\"").contains(gist)
        )
    }
}

/// One runtime under test.
pub struct Rt {
    pub name: &'static str,
    pub bin: PathBuf,
    pub root: PathBuf,
    pub bundle: PathBuf,
    pub env: Vec<(&'static str, PathBuf)>,
    pub scratch: PathBuf,
}

impl Rt {
    pub fn cmd(&self) -> Command {
        let mut c = Command::new(&self.bin);
        for (k, v) in &self.env {
            c.env(k, v);
        }
        c.arg("--root").arg(&self.root);
        c
    }

    pub fn run(&self, args: &[&str]) -> Res {
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
    pub fn create(&self, id: &str, extra: &[&str]) -> Res {
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

    pub fn state(&self, id: &str) -> Option<Value> {
        let r = self.run(&["state", id]);
        (r.code == 0).then(|| serde_json::from_str(&r.out).unwrap())
    }

    /// Polls `state` until the container reports `status`.
    pub fn wait_status(&self, id: &str, status: &str, timeout: Duration) -> bool {
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
    pub fn exec_tty(&self, id: &str, args: &[&str]) -> Res {
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
    pub fn cleanup(&self) {
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
pub struct Tally {
    pub pass: Vec<String>,
    pub known: Vec<String>,
    pub fail: Vec<String>,
}

impl Tally {
    /// Compares what runc and nacre gave for case `name`.
    pub fn cmp(&mut self, name: &str, runc: &str, nacre: &str) {
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
    pub fn each(&mut self, name: &str, rts: &[Rt; 2], mut f: impl FnMut(&Rt) -> String) {
        let r = f(&rts[0]);
        let n = f(&rts[1]);
        self.cmp(name, &r, &n);
    }
}

/// A busybox rootfs and the probe config (runc's default spec with
/// additions) in `dir`.
pub fn probe_bundle(dir: &Path, spec: &Value) -> PathBuf {
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
pub fn probe_spec(scratch: &Path, data: &Path) -> Value {
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
pub fn norm_state(rt: &Rt, s: &Value) -> BTreeMap<String, String> {
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
pub fn cmp_state(t: &mut Tally, label: &str, rts: &[Rt; 2], id: &str) {
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
pub fn sections(out: &str) -> BTreeMap<String, String> {
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

/// `list`'s table with host-specific cells replaced; and whether the
/// columns are laid out as runc's tabwriter does (minimum width 12,
/// padding 3).
pub fn norm_list_table(rt: &Rt, out: &str) -> String {
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
pub fn norm_ps(r: &Res) -> String {
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
pub fn norm_event(r: &Res) -> String {
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
