//! VM tier: a private containerd runs tasks through `containerd-shim-nacre-v2`.
//!
//! Three VM boots: (1) `ctr run --rm` of a one-shot task (guest kernel,
//! exit code, stdin, 10 MiB of output); (2) a long-running task for exec,
//! TTY (exec and `ctr run -t`, resize), stdin and close, update, OOM,
//! pids, pause/resume, metrics, containerd restart, kill and delete (more
//! containers join its sandbox); (3) kill -9 of the VMM under a running
//! task. Bad input (annotations, runtime options, rootfs) needs no boot.
//! Sandboxes start from VM templates (`NACRE_TEMPLATES`,
//! `NACRE_TEMPLATE_DIR` are passed on): (1) runs a second task that must
//! be restored from one.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests: a failure is a test failure"
)]

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{Containerd, RUNTIME};

const IMAGE_BASE: &str = "docker.io/library/nacre-busybox";
const IMAGE: &str = "docker.io/library/nacre-busybox:latest";
const OUTPUT_BYTES: usize = 10 * 1024 * 1024;

/// One VM test at a time: each boots guests on a small, shared host.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn setup(name: &str) -> Option<(Containerd, String)> {
    setup_with(name, Vec::new())
}

/// [`setup`] with more environment for containerd (and so the shims).
fn setup_with(name: &str, extra: Vec<(String, String)>) -> Option<(Containerd, String)> {
    if !common::require_root(name) {
        return None;
    }
    let prereqs = nacre_runtime::testing::vm_prereqs(name)?;
    let env = vec![
        (
            "NACRE_KERNEL".to_string(),
            prereqs.image.kernel.display().to_string(),
        ),
        (
            "NACRE_INITRD".to_string(),
            prereqs.image.initrd.display().to_string(),
        ),
        ("NACRE_VMM".to_string(), prereqs.vmm.display().to_string()),
        ("RUST_LOG".to_string(), "debug".to_string()),
    ];
    // Templates (on by default) go where the caller keeps them.
    let mut env = env;
    for key in ["NACRE_TEMPLATES", "NACRE_TEMPLATE_DIR"] {
        if let Ok(value) = std::env::var(key) {
            env.push((key.to_string(), value));
        }
    }
    env.extend(extra);
    let ctd = Containerd::start(name, env);
    let image_dir = ctd.dir.join("image");
    std::fs::create_dir_all(&image_dir).unwrap();
    let archive = common::image::build(&image_dir);
    ctd.import(&archive, IMAGE_BASE);
    let images = ctd.ctr_ok(&["images", "ls", "-q"]);
    assert!(images.contains(IMAGE), "imported images: {images}");
    let host_release = String::from_utf8(Command::new("uname").arg("-r").output().unwrap().stdout)
        .unwrap()
        .trim()
        .to_string();
    Some((ctd, host_release))
}

/// Nothing of sandbox `id` is left on the host: no VMM, shim, mount or
/// directory.
fn assert_sandbox_gone(ctd: &Containerd, id: &str) {
    let dir = nacre_shim::layout::sandbox_dir(common::NS, id);
    ctd.wait_until(
        "the sandbox to be cleaned up",
        Duration::from_secs(60),
        || !dir.exists() && common::pids_with(&dir.display().to_string()).is_empty(),
    );
    assert!(
        nacre_runtime::container::mounts::mounts_under(&dir).is_empty(),
        "mounts left under {}",
        dir.display()
    );
    let bundle_mounts = nacre_runtime::container::mounts::mounts_under(&ctd.dir)
        .into_iter()
        .filter(|m| m.contains(id))
        .collect::<Vec<_>>();
    assert!(bundle_mounts.is_empty(), "mounts left: {bundle_mounts:?}");
}

#[test]
fn ctr_run_rm_prints_the_guest_kernel_and_propagates_exit_stdin_output() {
    let _serial = serial();
    // Traced as a user would: NACRE_TRACE in containerd's environment.
    let trace = Containerd::dir_of("run-rm").join("trace.json");
    let env = vec![(
        nacre_runtime::trace::TRACE_ENV.to_string(),
        trace.display().to_string(),
    )];
    let Some((ctd, host_release)) = setup_with("run-rm", env) else {
        return;
    };
    // Bad input first (no boot): an unknown nacre annotation and an
    // oversize VM are refused with a clear error, and leave nothing.
    for (annotation, expect) in [
        ("io.nacre.vm.gpus=1", "unknown nacre annotation"),
        ("io.nacre.vm.memory_mib=99999999", "99999999 MiB"),
    ] {
        let out = ctd.ctr(&[
            "run",
            "--runtime",
            RUNTIME,
            "--rm",
            "--annotation",
            annotation,
            IMAGE,
            "bad",
            "true",
        ]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{annotation} was accepted");
        assert!(err.contains(expect), "{annotation}: {err}");
        let _ = ctd.ctr(&["containers", "rm", "bad"]);
        assert_sandbox_gone(&ctd, "bad");
    }
    // Bad runtime options (a configuration file that is not there, or
    // not valid) and a missing rootfs: refused before any VM boots.
    let bad_config = ctd.dir.join("bad-config.toml");
    std::fs::write(&bad_config, "[vm]\nvcpus = 0\n").unwrap();
    let bad_config = bad_config.display().to_string();
    for (args, expect) in [
        (
            vec!["--runtime-config-path", "/nonexistent/nacre.toml", IMAGE],
            "/nonexistent/nacre.toml",
        ),
        (
            vec!["--runtime-config-path", bad_config.as_str(), IMAGE],
            "vm.vcpus = 0",
        ),
        (
            vec!["--rootfs", "/nonexistent/rootfs"],
            "rootfs /nonexistent/rootfs does not exist",
        ),
    ] {
        let mut all = vec!["run", "--runtime", RUNTIME, "--rm"];
        all.extend(&args);
        all.extend(["bad", "true"]);
        let out = ctd.ctr(&all);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} was accepted");
        assert!(err.contains(expect), "{args:?}: {err}");
        let _ = ctd.ctr(&["containers", "rm", "bad"]);
        assert_sandbox_gone(&ctd, "bad");
    }
    assert!(
        !ctd.log().contains("sandbox VM ready"),
        "a VM booted for bad input"
    );

    // 10 MiB of host data goes in through stdin and comes back out.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let input: Vec<u8> = (0..OUTPUT_BYTES)
        .map(|_| {
            // xorshift64: data that no shortcut reproduces.
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()[0]
        })
        .collect();
    let out = ctd.ctr_input(
        &[
            "run",
            "--runtime",
            RUNTIME,
            "--rm",
            IMAGE,
            "once",
            "sh",
            "-c",
            "uname -r; cat; exit 7",
        ],
        &input,
    );
    let stdout = out.stdout;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(7),
        "ctr run: {stderr}\n--- log ---\n{}",
        common::tail(&ctd.log(), 80)
    );
    let (release, rest) = stdout.split_at(
        stdout
            .iter()
            .position(|b| *b == b'\n')
            .expect("no line from uname"),
    );
    let release = String::from_utf8_lossy(release).to_string();
    assert!(release.starts_with("6.1."), "guest release {release:?}");
    assert_ne!(release, host_release, "ran on the host kernel");
    let rest = &rest[1..];
    assert_eq!(rest.len(), input.len(), "output length");
    assert!(
        rest == input.as_slice(),
        "10 MiB through stdin and stdout differ"
    );
    assert_sandbox_gone(&ctd, "once");
    assert!(ctd.task_status("once").is_none());
    assert_traced(&ctd, &trace, "once");

    // The first sandbox of this shape made the VM template (unless one
    // existed); the next one is restored from it.
    if !nacre_runtime::template::disabled_by_env() {
        const RESTORED: &str = "sandbox VM ready (restored from a template)";
        let before = ctd.log().matches(RESTORED).count();
        let out = ctd.ctr(&[
            "run",
            "--runtime",
            RUNTIME,
            "--rm",
            IMAGE,
            "again",
            "ls",
            "/",
        ]);
        let log = ctd.log();
        assert!(
            out.status.success(),
            "ctr run again: {}\n--- log ---\n{}",
            String::from_utf8_lossy(&out.stderr),
            common::tail(&log, 80)
        );
        // The container's rootfs comes over the virtio-fs share the
        // restored agent mounted.
        let listing = String::from_utf8_lossy(&out.stdout);
        assert!(listing.lines().any(|l| l == "bin"), "ls /: {listing}");
        assert!(
            log.matches(RESTORED).count() > before,
            "the second sandbox was not restored from a template:\n{}",
            common::tail(&log, 80)
        );
        assert_sandbox_gone(&ctd, "again");
    }
    // Boot and restore times, for the record.
    for line in ctd
        .log()
        .lines()
        .filter(|l| l.contains("sandbox VM ready") || l.contains("template created"))
    {
        eprintln!("{line}");
    }
}

/// The trace file holds, in Chrome's Trace Event Format, the shim's spans
/// of task `id` (create, start, wait, exit, delete and the sandbox's
/// start and shutdown) and its guest agent's; it is the shim's user's
/// alone. Most spans are written before the delete answers, the last ones
/// when the shim exits: waits a little for those.
fn assert_traced(ctd: &Containerd, trace: &Path, id: &str) {
    use std::os::unix::fs::PermissionsExt;
    let mut last = String::new();
    ctd.wait_until(
        "the shim's spans in the trace",
        Duration::from_secs(30),
        || match traced(trace, id) {
            Ok(()) => true,
            Err(e) => {
                last = e;
                false
            }
        },
    );
    traced(trace, id).unwrap_or_else(|e| panic!("{e} (before: {last})"));
    let mode = std::fs::metadata(trace).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "trace file mode {mode:o}");
}

/// What [`assert_traced`] checks in the file.
fn traced(trace: &Path, id: &str) -> Result<(), String> {
    use serde_json::Value;
    let bytes = std::fs::read(trace).map_err(|e| format!("reading {}: {e}", trace.display()))?;
    let doc: Value = serde_json::from_slice(&bytes).map_err(|e| format!("not JSON: {e}"))?;
    let events = doc["traceEvents"]
        .as_array()
        .ok_or("no traceEvents array")?;
    for e in events {
        let ph = e["ph"].as_str().ok_or(format!("no ph: {e}"))?;
        let ok = e["name"].is_string()
            && e["pid"].is_u64()
            && (ph != "X" || (e["ts"].is_u64() && e["dur"].is_u64() && e["tid"].is_u64()));
        if !ok {
            return Err(format!("not a trace event: {e}"));
        }
    }
    let shim = format!("containerd-shim-nacre-v2 {id}");
    let shim_pids: Vec<u64> = events
        .iter()
        .filter(|e| e["ph"] == "M" && e["args"]["name"] == shim.as_str())
        .filter_map(|e| e["pid"].as_u64())
        .collect();
    if shim_pids.is_empty() {
        return Err(format!("no process named {shim:?}"));
    }
    let names = |cat: &str, shim_only: bool| -> Vec<&str> {
        events
            .iter()
            .filter(|e| e["ph"] == "X" && e["cat"] == cat)
            .filter(|e| !shim_only || e["pid"].as_u64().is_some_and(|p| shim_pids.contains(&p)))
            .filter_map(|e| e["name"].as_str())
            .collect()
    };
    let host = names("host", true);
    for want in [
        "task.create",
        "sandbox.boot",
        "sandbox.start",
        "agent.CreateContainer",
        "task.start",
        "task.wait",
        "task.exit",
        "task.delete",
        "sandbox.stop",
    ] {
        if !host.contains(&want) {
            return Err(format!("no shim span {want}: {host:?}"));
        }
    }
    if !events
        .iter()
        .any(|e| e["name"] == "task.create" && e["args"]["id"] == id)
    {
        return Err(format!("no task.create of {id}"));
    }
    let guest = names("guest", false);
    for want in ["agent.CreateContainer", "agent.StartContainer"] {
        if !guest.contains(&want) {
            return Err(format!("no guest span {want}: {guest:?}"));
        }
    }
    Ok(())
}

/// Sends the shim of task `id` an `Update` with OCI `LinuxResources`
/// JSON, as containerd forwards `ctr task update` / CRI's.
fn update_task(ctd: &Containerd, id: &str, resources_json: &str) {
    use containerd_shim::protos::api::UpdateTaskRequest;
    use containerd_shim::protos::protobuf::well_known_types::any::Any;
    use containerd_shim::protos::ttrpc::context::Context;

    let address = ctd
        .dir
        .join("state/io.containerd.runtime.v2.task")
        .join(common::NS)
        .join(id)
        .join("address");
    let address = std::fs::read_to_string(&address).unwrap();
    let client = containerd_shim::protos::Client::connect(address.trim()).unwrap();
    let tasks = containerd_shim::protos::TaskClient::new(client);
    let req = UpdateTaskRequest {
        id: id.to_string(),
        resources: Some(Any {
            type_url: "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources".into(),
            value: resources_json.as_bytes().to_vec(),
            ..Default::default()
        })
        .into(),
        ..Default::default()
    };
    tasks
        .update(Context::default(), &req)
        .unwrap_or_else(|e| panic!("update of {id}: {e}"));
}

/// Runs shell `cmd` with a terminal of its own (script(1)); its exit
/// code and output.
fn in_a_terminal(cmd: &str) -> (Option<i32>, String) {
    let out = Command::new("script")
        .args(["-qec", cmd, "/dev/null"])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    (out.status.code(), text)
}

fn exec_out(ctd: &Containerd, args: &[&str]) -> (Option<i32>, String) {
    let out = ctd.ctr(args);
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[test]
fn long_running_task_exec_tty_pause_metrics_restart_kill_delete() {
    let _serial = serial();
    let Some((mut ctd, _)) = setup("long") else {
        return;
    };
    let id = "long";
    let events_log = ctd.dir.join("events.log");
    let events = common::EventLog::start(&ctd, &events_log);
    // With limits as `ctr run` sets them (memory, CFS quota), and the
    // guest's cgroupfs mounted to read them back.
    ctd.ctr_ok(&[
        "run",
        "-d",
        "--runtime",
        RUNTIME,
        "--memory-limit",
        "268435456",
        "--cpu-quota",
        "50000",
        "--cpu-period",
        "100000",
        "--mount",
        "type=cgroup,src=cgroup,dst=/sys/fs/cgroup,options=ro",
        IMAGE,
        id,
        "sleep",
        "100000",
    ]);
    assert_eq!(ctd.task_status(id).as_deref(), Some("RUNNING"));
    let cgroup = |exec_id: &str, files: &str| {
        exec_out(
            &ctd,
            &[
                "task",
                "exec",
                "--exec-id",
                exec_id,
                id,
                "sh",
                "-c",
                &format!("p=$(cat /proc/self/cgroup); cd /sys/fs/cgroup${{p#0::}} && cat {files}"),
            ],
        )
    };
    let (code, out) = cgroup("cg1", "cpu.max memory.max");
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        ["50000 100000", "268435456"],
        "{out}"
    );

    let (code, out) = exec_out(
        &ctd,
        &[
            "task",
            "exec",
            "--exec-id",
            "e1",
            id,
            "sh",
            "-c",
            "echo exec-ok; uname -r; exit 3",
        ],
    );
    assert_eq!(code, Some(3), "{out}");
    assert!(out.contains("exec-ok") && out.contains("6.1."), "{out}");

    // A TTY: ctr -t needs a terminal of its own; script(1) gives it one.
    // (ttyname fails in the container: the agent's pty lives in the
    // guest's devpts, not the container's; isatty is what matters.)
    let tty_cmd = format!(
        "ctr -a {} -n {} task exec -t --exec-id t1 {id} sh -c '[ -t 0 ] && [ -t 1 ] && echo tty-ok'",
        ctd.socket().display(),
        common::NS
    );
    let (_, text) = in_a_terminal(&tty_cmd);
    assert!(text.contains("tty-ok"), "tty exec: {text}");

    // A TTY as a task's init (`ctr run -t`, in this sandbox): ctr sets the
    // window size of its terminal on the task (resize_pty); the exit
    // code comes back through ctr and script.
    let inner = "i=0; while [ $i -lt 100 ]; do s=$(stty size); \
                 [ \"$s\" = \"40 100\" ] && break; sleep 0.2; i=$((i+1)); done; \
                 echo size=$s; [ -t 0 ] && [ -t 1 ] && echo run-tty-ok; exit 5";
    let run_cmd = format!(
        "stty rows 40 cols 100; ctr -a {} -n {} run -t --rm --runtime {RUNTIME} \
         --annotation io.kubernetes.cri.sandbox-id={id} {IMAGE} long-tty sh -c '{inner}'",
        ctd.socket().display(),
        common::NS
    );
    let (code, text) = in_a_terminal(&run_cmd);
    assert!(
        text.contains("size=40 100") && text.contains("run-tty-ok"),
        "ctr run -t: {text}\n--- log ---\n{}",
        common::tail(&ctd.log(), 60)
    );
    assert_eq!(code, Some(5), "ctr run -t: {text}");
    assert!(ctd.task_status("long-tty").is_none());

    // Piped stdin reaches an exec and its end reaches the process.
    let out = ctd.ctr_input(
        &[
            "task",
            "exec",
            "--exec-id",
            "in1",
            id,
            "sh",
            "-c",
            "cat; echo cat-eof",
        ],
        b"piped-in\n",
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        text,
        "piped-in\ncat-eof\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // update (ctr 1.6 has no `task update`: the request containerd would
    // forward goes to the shim directly): a new memory limit lands in the
    // container's guest cgroup (memory.max).
    update_task(
        &ctd,
        id,
        r#"{"memory":{"limit":67108864},"cpu":{"quota":20000,"period":100000}}"#,
    );
    let (code, out) = cgroup("cg2", "cpu.max memory.max");
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        ["20000 100000", "67108864"],
        "after update: {out}"
    );
    // (ctr's default spec mounts no cgroupfs in the container; the
    // metrics are read from the container's guest cgroup.)
    let metrics = ctd.ctr_ok(&["task", "metrics", id]);
    assert!(
        metrics.contains("67108864"),
        "memory.max after update: {metrics}"
    );

    // OOM: a container over its memory limit is killed (137) and
    // containerd gets /tasks/oom for it.
    let out = ctd.ctr(&[
        "run",
        "--rm",
        "--runtime",
        RUNTIME,
        "--annotation",
        "io.kubernetes.cri.sandbox-id=long",
        "--memory-limit",
        "33554432",
        IMAGE,
        "long-oom",
        "sh",
        "-c",
        "x=0123456789abcdef; while :; do x=$x$x; done",
    ]);
    assert_eq!(
        out.status.code(),
        Some(137),
        "OOM: {}\n--- log ---\n{}",
        String::from_utf8_lossy(&out.stderr),
        common::tail(&ctd.log(), 60)
    );
    ctd.wait_until("the OOM event", Duration::from_secs(30), || {
        events
            .text()
            .lines()
            .any(|l| l.contains("/tasks/oom") && l.contains("long-oom"))
    });
    let seen = events.text();
    let oom_at = seen.find("/tasks/oom").unwrap();
    let exit_at = seen
        .lines()
        .filter(|l| l.contains("/tasks/exit") && l.contains("long-oom"))
        .map(|l| seen.find(l).unwrap())
        .next();
    assert!(
        exit_at.is_some_and(|e| e > oom_at),
        "TaskOOM before TaskExit:\n{seen}"
    );

    // Over 10 MiB of exec output (the image's busybox binary, six times)
    // arrive intact.
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .iter()
        .find_map(|p| std::fs::read(p).ok())
        .unwrap();
    let copies = OUTPUT_BYTES / busybox.len() + 1;
    let script = format!("cat{}", " /bin/busybox".repeat(copies));
    let started = std::time::Instant::now();
    let out = Command::new("timeout")
        .args(["-k", "5", "300", "ctr", "-a"])
        .arg(ctd.socket())
        .args(["-n", common::NS, "task", "exec", "--exec-id", "big", id])
        .args(["sh", "-c", &script])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}\n--- log ---\n{}",
        String::from_utf8_lossy(&out.stderr),
        common::tail(&ctd.log(), 60)
    );
    assert_eq!(
        out.stdout.len(),
        busybox.len() * copies,
        "exec output length"
    );
    assert!(
        out.stdout
            .chunks(busybox.len())
            .all(|c| c == busybox.as_slice()),
        "exec output differs from {copies} copies of busybox"
    );
    eprintln!(
        "{} bytes of exec output in {:?}",
        out.stdout.len(),
        started.elapsed()
    );

    let pids = ctd.ctr_ok(&["task", "ps", id]);
    assert!(pids.lines().count() >= 2, "ctr task ps: {pids}");

    ctd.ctr_ok(&["task", "pause", id]);
    assert_eq!(ctd.task_status(id).as_deref(), Some("PAUSED"));
    ctd.ctr_ok(&["task", "resume", id]);
    assert_eq!(ctd.task_status(id).as_deref(), Some("RUNNING"));

    let metrics = ctd.ctr_ok(&["task", "metrics", id]);
    let lower = metrics.to_lowercase();
    assert!(lower.contains("memory"), "metrics: {metrics}");
    assert!(lower.contains("cpu"), "metrics: {metrics}");

    let out = ctd.ctr(&["task", "checkpoint", id]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("not supported"),
        "{err}"
    );

    // A second container of the same sandbox (the CRI annotation) joins
    // the running shim and VM; its output goes to a file:// log.
    let log = ctd.dir.join("c2.log");
    let log_uri = format!("file://{}", log.display());
    ctd.ctr_ok(&[
        "run",
        "-d",
        "--runtime",
        RUNTIME,
        "--annotation",
        "io.kubernetes.cri.sandbox-id=long",
        "--log-uri",
        &log_uri,
        IMAGE,
        "long-c2",
        "sh",
        "-c",
        "echo to-the-log; uname -r; sleep 100000",
    ]);
    let sandbox = nacre_shim::layout::sandbox_dir(common::NS, id);
    let vmms: Vec<u32> = common::pids_with(&sandbox.display().to_string())
        .into_iter()
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/comm"))
                .unwrap_or_default()
                .trim()
                == "nacre-vmm"
        })
        .collect();
    assert_eq!(vmms.len(), 1, "one VM for the sandbox: {vmms:?}");
    ctd.wait_until("the file:// log", Duration::from_secs(60), || {
        std::fs::read_to_string(&log).is_ok_and(|l| l.contains("to-the-log") && l.contains("6.1."))
    });
    ctd.ctr_ok(&["task", "kill", "-s", "SIGKILL", "long-c2"]);
    ctd.wait_until("long-c2 to stop", Duration::from_secs(60), || {
        ctd.task_status("long-c2").as_deref() == Some("STOPPED")
    });
    ctd.ctr_ok(&["task", "delete", "long-c2"]);
    ctd.ctr_ok(&["containers", "rm", "long-c2"]);
    // The sandbox's VM stays for its other container.
    assert!(Path::new(&format!("/proc/{}", vmms[0])).exists());

    // containerd restarts; the shim and the task survive.
    drop(events);
    ctd.restart();
    let events = common::EventLog::start(&ctd, &events_log);
    assert_eq!(ctd.task_status(id).as_deref(), Some("RUNNING"));
    let (code, out) = exec_out(
        &ctd,
        &[
            "task",
            "exec",
            "--exec-id",
            "e2",
            id,
            "echo",
            "after-restart",
        ],
    );
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("after-restart"), "{out}");

    ctd.ctr_ok(&["task", "kill", "-s", "SIGKILL", id]);
    ctd.wait_until("the task to stop", Duration::from_secs(60), || {
        ctd.task_status(id).as_deref() == Some("STOPPED")
    });
    ctd.ctr_ok(&["task", "delete", id]);
    assert!(ctd.task_status(id).is_none());
    ctd.ctr_ok(&["containers", "rm", id]);
    assert_sandbox_gone(&ctd, id);

    // Every task event reached containerd (the ones after its restart
    // too).
    ctd.wait_until("the delete event", Duration::from_secs(30), || {
        events
            .text()
            .lines()
            .any(|l| l.contains("/tasks/delete") && l.contains(r#""container_id":"long""#))
    });
    let seen = events.text();
    for topic in [
        "/tasks/create",
        "/tasks/start",
        "/tasks/exec-added",
        "/tasks/exec-started",
        "/tasks/paused",
        "/tasks/resumed",
        "/tasks/oom",
        "/tasks/exit",
        "/tasks/delete",
    ] {
        assert!(
            seen.lines()
                .any(|l| l.split_whitespace().any(|w| w == topic)),
            "no {topic} event:\n{seen}"
        );
    }
}

#[test]
fn vm_death_ends_the_task_and_frees_everything() {
    let _serial = serial();
    let Some((ctd, _)) = setup("vmdeath") else {
        return;
    };
    let id = "vmdeath";
    ctd.ctr_ok(&[
        "run",
        "-d",
        "--runtime",
        RUNTIME,
        IMAGE,
        id,
        "sleep",
        "100000",
    ]);
    let dir = nacre_shim::layout::sandbox_dir(common::NS, id);
    let pid_file = dir.join("vm").join("vmm.pid");
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(Path::new(&format!("/proc/{pid}")).exists());
    // The task's pid containerd knows is a host pid nacre owns (the
    // VMM's), not a number the guest chose.
    let tasks = ctd.ctr_ok(&["task", "ls"]);
    let task_pid = tasks
        .lines()
        .find_map(|l| {
            let mut f = l.split_whitespace();
            (f.next() == Some(id)).then(|| f.next().unwrap_or_default().to_string())
        })
        .unwrap_or_else(|| panic!("no task {id}: {tasks}"));
    assert_eq!(task_pid, pid.to_string(), "ctr task ls: {tasks}");
    // SAFETY: kill(2) of the VMM this test started through containerd.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    ctd.wait_until("the task to stop", Duration::from_secs(60), || {
        ctd.task_status(id).as_deref() == Some("STOPPED")
    });
    let out = ctd.ctr_ok(&["task", "delete", id]);
    assert!(out.contains("137") || out.is_empty(), "{out}");
    ctd.ctr_ok(&["containers", "rm", id]);
    assert_sandbox_gone(&ctd, id);
}

/// Issue 12 (6): the shim killed with SIGKILL while it makes a VM
/// template (a fresh template store) and while it cold boots (templates
/// off in its configuration): the VMM dies with it (--owner-fd), and once
/// containerd has cleaned up (`shim delete`) nothing of the sandbox is
/// left: no VMM, directory, socket, mount or template work directory.
#[test]
fn shim_killed_while_making_a_template_or_booting_leaves_nothing() {
    let _serial = serial();
    let store = std::env::temp_dir().join(format!("nacre-shim-killed-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&store);
    // A fresh template store: the first start makes the template.
    let Some((ctd, _)) = setup_with(
        "shim-killed",
        vec![
            ("NACRE_TEMPLATES".to_string(), "1".to_string()),
            (
                "NACRE_TEMPLATE_DIR".to_string(),
                store.display().to_string(),
            ),
        ],
    ) else {
        return;
    };
    let cold = ctd.dir.join("cold.toml");
    std::fs::write(&cold, "[vm]\ntemplates = false\n").unwrap();
    let cold = cold.display().to_string();
    let cases: [(&str, &str, Vec<&str>); 2] = [
        ("making a template", "killed-t", vec![]),
        (
            "a cold boot",
            "killed-c",
            vec!["--runtime-config-path", &cold],
        ),
    ];
    for (what, id, extra) in cases {
        let sandbox = nacre_shim::layout::sandbox_dir(common::NS, id);
        let needle = if extra.is_empty() {
            store.display().to_string()
        } else {
            sandbox.display().to_string()
        };
        let mut args = vec!["run", "-d", "--runtime", RUNTIME];
        args.extend(&extra);
        args.extend([IMAGE, id, "sleep", "1000"]);
        let mut run = Command::new("ctr")
            .arg("-a")
            .arg(ctd.socket())
            .args(["-n", common::NS])
            .args(&args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let vmms = || -> Vec<u32> {
            common::pids_with(&needle)
                .into_iter()
                .filter(|p| {
                    std::fs::read_to_string(format!("/proc/{p}/comm"))
                        .is_ok_and(|c| c.trim() == "nacre-vmm")
                })
                .collect()
        };
        ctd.wait_until(&format!("{what}: a VMM"), Duration::from_secs(120), || {
            !vmms().is_empty()
        });
        let shims: Vec<u32> = common::pids_with(&format!("-id {id}"))
            .into_iter()
            .filter(|p| {
                std::fs::read_to_string(format!("/proc/{p}/comm"))
                    .is_ok_and(|c| c.trim().starts_with("containerd-shim"))
            })
            .collect();
        assert_eq!(shims.len(), 1, "{what}: shims {shims:?}");
        // SAFETY: kill(2) of the shim this test started through containerd.
        unsafe { libc::kill(i32::try_from(shims[0]).unwrap(), libc::SIGKILL) };
        ctd.wait_until(
            &format!("{what}: the VMM to die with its shim"),
            Duration::from_secs(10),
            || vmms().is_empty(),
        );
        let status = run.wait().unwrap();
        assert!(!status.success(), "{what}: ctr run succeeded");
        let _ = ctd.ctr(&["task", "delete", "-f", id]);
        let _ = ctd.ctr(&["containers", "rm", id]);
        assert_sandbox_gone(&ctd, id);
        // The sandbox's host cgroup (ctr's default: /<namespace>/<id>) too.
        let cg = nacre_runtime::host_cgroup::HostCgroup::locate(&format!("/{}/{id}", common::NS))
            .unwrap();
        ctd.wait_until(
            &format!("{what}: the host cgroup to go"),
            Duration::from_secs(30),
            || cg.dirs().iter().all(|d| !d.exists()),
        );
    }
    let left: Vec<_> = std::fs::read_dir(&store)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    // The next template user prunes work directories whose owner died.
    nacre_runtime::template::TemplateStore::new(store.clone()).prune();
    let after: Vec<_> = std::fs::read_dir(&store)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(
        after
            .iter()
            .all(|n| n == ".lock" || !n.to_string_lossy().starts_with('.')),
        "template work left after prune: {after:?} (before: {left:?})"
    );
    let _ = std::fs::remove_dir_all(&store);
}
