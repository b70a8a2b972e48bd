//! The cases: without a VM, the lifecycle, and `run`.

use std::collections::BTreeMap;
use std::io::Read;
use std::process::Stdio;
use std::time::{Duration, Instant};

use super::harness::*;
use super::PROBE;
use serde_json::Value;

/// Bad input and the commands that need no container.
pub fn no_vm_cases(t: &mut Tally, rts: &[Rt; 2]) {
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
pub fn lifecycle_cases(t: &mut Tally, rts: &[Rt; 2]) {
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
        // runc 1.1.5 gives an exec its rlimits with prlimit(2) from runc
        // once the process runs, so a process that reads them at once may
        // still show the defaults (seen once in a clean run: soft 1024 under
        // runc, the spec's 1000 under nacre; equal in every other run).
        // Here the spec's values (harness.rs: soft 1000, hard 1024) are what
        // runc shows when it is not raced.
        let v = if k == "rlimit nofile" {
            "Max open files            1000                 1024                 files     \n"
                .to_string()
        } else {
            v.clone()
        };
        t.cmp(&format!("exec probe (created): {k}"), &v, &n);
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
pub fn run_cases(t: &mut Tally, rts: &[Rt; 2], spec: &Value) {
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
