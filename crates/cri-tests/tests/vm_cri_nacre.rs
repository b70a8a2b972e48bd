//! VM tier, issue 5's acceptance through CRI: a nacre pod (one VM) next to
//! a runc pod on one containerd. One VM boot for the pod tests; the
//! connectivity test boots a second one. With templates on (default;
//! `NACRE_TEMPLATES`, `NACRE_TEMPLATE_DIR` are passed on) each pod's VM is
//! restored from a template with its network device: the first one of
//! the run makes the template (one extra cold boot).
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

mod common;

use std::time::Duration;

use common::vm::*;
use common::*;
use nacre_cri_tests::containerd::CriContainerd;
use nacre_cri_tests::cri::v1::{LinuxPodSandboxConfig, Mount, PodSandboxConfig};
use nacre_cri_tests::cri::CriClient;

/// One VM test at a time: each boots guests on a small, shared host.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The container's /proc/mounts line of `dest`.
fn mount_line(cri: &CriClient, c: &str, dest: &str) -> String {
    let mounts = exec_ok(cri, c, &["cat", "/proc/mounts"]);
    mounts
        .lines()
        .rfind(|l| l.split(' ').nth(1) == Some(dest))
        .unwrap_or_else(|| panic!("no mount on {dest}:\n{mounts}"))
        .to_string()
}

/// A 16 MiB tmpfs like the one kubelet mounts for a memory-backed
/// emptyDir; unmounted when dropped.
struct TmpfsMount(std::path::PathBuf);

impl TmpfsMount {
    fn new(dir: &std::path::Path) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=16m,mode=0777", "tmpfs"])
            .arg(dir)
            .status()
            .unwrap();
        assert!(status.success(), "mounting a tmpfs on {}", dir.display());
        Self(dir.to_path_buf())
    }
}

impl Drop for TmpfsMount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

fn boot_id(cri: &CriClient, c: &str) -> String {
    exec_ok(cri, c, &["cat", "/proc/sys/kernel/random/boot_id"])
        .trim()
        .to_string()
}

#[test]
fn nacre_pod_next_to_a_runc_pod() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let test = "vm_cri_nacre::nacre_pod_next_to_a_runc_pod";
    let netns_before = cni_netns();
    // Traced as an operator would: NACRE_TRACE in containerd's
    // environment, which its shims inherit.
    let trace = std::env::temp_dir().join(format!("nacre-cri-trace-{}.json", std::process::id()));
    let _ = std::fs::remove_file(&trace);
    let traced = vec![(
        nacre_runtime::trace::TRACE_ENV.to_string(),
        trace.display().to_string(),
    )];
    let Some(ctd) = setup_with(test, traced) else {
        return;
    };
    let cri = client(&ctd);
    let host_boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap();

    // runc pod.
    let runc_cfg = pod_config(&ctd, "runc-pod", "runc-host");
    let runc_pod = cri.run_pod_sandbox(&runc_cfg, "runc").unwrap();
    let runc_c = run_container(
        &cri,
        &runc_pod,
        &runc_cfg,
        &container_config(
            "web",
            &["httpd", "-f", "-p", "8080", "-h", "/var/www"],
            vec![],
        ),
    );
    let runc_ip = cri.pod_ip(&runc_pod).unwrap();

    // nacre pod: two containers, a disk and a memory emptyDir both mount,
    // a read-only hostPath, a read-only "configmap" directory and a
    // subPath-style single-file bind.
    let empty_dir = ctd.dir.join("volumes/empty");
    let host_path = ctd.dir.join("volumes/config");
    std::fs::create_dir_all(&empty_dir).unwrap();
    std::fs::create_dir_all(&host_path).unwrap();
    std::fs::write(host_path.join("setting"), "from the host\n").unwrap();
    let memory_dir = TmpfsMount::new(
        &ctd.dir
            .join("pods/p1/volumes/kubernetes.io~empty-dir/cache"),
    );
    let config_map = ctd.dir.join("volumes/configmap");
    std::fs::create_dir_all(&config_map).unwrap();
    std::fs::write(config_map.join("key"), "value\n").unwrap();
    let app_conf = ctd.dir.join("volumes/app.conf");
    std::fs::write(&app_conf, "port=8081\n").unwrap();
    let bind = |container: &str, host: &std::path::Path, readonly: bool| Mount {
        container_path: container.into(),
        host_path: host.to_string_lossy().into_owned(),
        readonly,
        ..Default::default()
    };
    let mounts = |web: bool| {
        let mut m = vec![
            bind("/data", &empty_dir, false),
            bind("/cache", &memory_dir.0, false),
        ];
        if web {
            m.push(bind("/config", &host_path, true));
            m.push(bind("/etc/config", &config_map, true));
        } else {
            m.push(bind("/etc/app.conf", &app_conf, true));
        }
        m
    };
    let vm_cfg = pod_config(&ctd, "vm-pod", "vm-host");
    let vm_pod = cri
        .run_pod_sandbox(&vm_cfg, "nacre")
        .unwrap_or_else(|e| panic!("RunPodSandbox(nacre): {e}\n{}", ctd.log_tail(40)));
    let vm_ip = cri.pod_ip(&vm_pod).unwrap();
    assert_ne!(vm_ip, runc_ip);
    let shims = pids_of(SHIM, &ctd.socket().to_string_lossy());
    assert_eq!(shims.len(), 1, "one shim per nacre pod: {shims:?}");
    let vmms: Vec<u32> = shims
        .iter()
        .flat_map(|s| children_named(*s, "nacre-vmm"))
        .collect();
    assert_eq!(vmms.len(), 1, "one VM per nacre pod: {vmms:?}");
    assert_restored_from_a_template(&ctd);

    let web = run_container(
        &cri,
        &vm_pod,
        &vm_cfg,
        &container_config(
            "web",
            &["httpd", "-f", "-p", "8081", "-h", "/var/www"],
            mounts(true),
        ),
    );
    let side = run_container(
        &cri,
        &vm_pod,
        &vm_cfg,
        &container_config("side", &["sleep", "3600"], mounts(false)),
    );
    // Still one VM: the pod's containers joined it.
    let vmms_now: Vec<u32> = shims
        .iter()
        .flat_map(|s| children_named(*s, "nacre-vmm"))
        .collect();
    assert_eq!(vmms_now, vmms, "a container of the pod got a VM of its own");
    let guest_boot = boot_id(&cri, &web);
    assert_eq!(
        boot_id(&cri, &side),
        guest_boot,
        "containers of one pod in different VMs"
    );
    assert_ne!(guest_boot, host_boot.trim());

    let guest_release = exec_ok(&cri, &web, &["uname", "-r"]).trim().to_string();
    assert_ne!(
        guest_release,
        host_release(),
        "nacre pod runs on the host kernel"
    );
    assert_eq!(
        exec_ok(&cri, &runc_c, &["uname", "-r"]).trim(),
        host_release()
    );

    // Exec through containerd's streaming server into the VM: stdio,
    // exit code, stdin, a terminal and its size.
    check_exec_stream(&cri, &side);

    // Hostname and DNS from the CRI request.
    assert_eq!(exec_ok(&cri, &web, &["hostname"]).trim(), "vm-host");
    let resolv = exec_ok(&cri, &side, &["cat", "/etc/resolv.conf"]);
    assert!(resolv.contains("nameserver 10.96.0.10"), "{resolv}");
    assert!(resolv.contains("search test.svc.cluster.local"), "{resolv}");

    // emptyDir shared by the two containers (and the host directory).
    exec_ok(&cri, &web, &["sh", "-c", "echo shared > /data/note"]);
    assert_eq!(exec_ok(&cri, &side, &["cat", "/data/note"]), "shared\n");
    assert_eq!(
        std::fs::read_to_string(empty_dir.join("note")).unwrap(),
        "shared\n"
    );

    // Read-only hostPath.
    assert_eq!(
        exec_ok(&cri, &web, &["cat", "/config/setting"]),
        "from the host\n"
    );
    let denied = cri.exec_sync(&web, &["touch", "/config/new"], 60).unwrap();
    assert_ne!(denied.exit_code, 0, "wrote into a read-only hostPath");
    assert!(!host_path.join("new").exists());

    // Memory-backed emptyDir: one guest tmpfs (16 MiB like the host's)
    // for both containers; nothing reaches the host's tmpfs.
    exec_ok(&cri, &web, &["sh", "-c", "echo in memory > /cache/note"]);
    assert_eq!(exec_ok(&cri, &side, &["cat", "/cache/note"]), "in memory\n");
    assert!(!memory_dir.0.join("note").exists());
    let line = mount_line(&cri, &side, "/cache");
    assert!(line.starts_with("tmpfs /cache tmpfs "), "{line}");
    assert!(line.contains("size=16384k"), "{line}");
    // /dev/shm: one 64 MiB tmpfs for the pod, and one IPC namespace.
    let line = mount_line(&cri, &web, "/dev/shm");
    assert!(line.starts_with("tmpfs /dev/shm tmpfs "), "{line}");
    assert!(line.contains("size=65536k"), "{line}");
    exec_ok(&cri, &web, &["sh", "-c", "echo posix > /dev/shm/seg"]);
    assert_eq!(exec_ok(&cri, &side, &["cat", "/dev/shm/seg"]), "posix\n");
    let ipc = |c: &str| exec_ok(&cri, c, &["busybox", "readlink", "/proc/self/ns/ipc"]);
    assert_eq!(
        ipc(&web),
        ipc(&side),
        "the pod's containers in different IPC namespaces"
    );
    // A read-only configmap directory.
    assert_eq!(exec_ok(&cri, &web, &["cat", "/etc/config/key"]), "value\n");
    for cmd in ["echo x > /etc/config/key", "touch /etc/config/new"] {
        let denied = cri.exec_sync(&web, &["sh", "-c", cmd], 60).unwrap();
        assert_ne!(
            denied.exit_code, 0,
            "{cmd}: wrote into a read-only configmap"
        );
    }
    assert_eq!(
        std::fs::read_to_string(config_map.join("key")).unwrap(),
        "value\n"
    );
    // A subPath-style bind of one file.
    assert_eq!(
        exec_ok(&cri, &side, &["cat", "/etc/app.conf"]),
        "port=8081\n"
    );
    let denied = cri
        .exec_sync(&side, &["sh", "-c", "echo x >> /etc/app.conf"], 60)
        .unwrap();
    assert_ne!(denied.exit_code, 0, "wrote into a read-only file bind");

    // The execs' guest spans reached the trace when each exec was deleted,
    // while their containers still run.
    let events = trace_events(&trace);
    assert!(
        events
            .iter()
            .any(|e| e["cat"] == "guest" && e["name"] == "agent.ExecProcess"),
        "no guest exec span in the trace before the containers' deletes"
    );

    // Status, stats, listing.
    let mut listed = cri.list_containers(&vm_pod).unwrap();
    listed.sort();
    let mut want = vec![web.clone(), side.clone()];
    want.sort();
    assert_eq!(listed, want);
    let stats = cri.container_stats(&web).unwrap();
    assert!(stats.memory.is_some(), "no memory stats: {stats:?}");

    // Teardown leaves nothing: VM, shim, netns, mounts.
    for c in [&web, &side] {
        cri.stop_container(c, 10).unwrap();
        cri.remove_container(c).unwrap();
    }
    cri.stop_pod_sandbox(&vm_pod).unwrap();
    cri.remove_pod_sandbox(&vm_pod).unwrap();
    cri.stop_pod_sandbox(&runc_pod).unwrap();
    cri.remove_pod_sandbox(&runc_pod).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while vmms.iter().chain(&shims).any(|p| alive(*p)) {
        assert!(
            std::time::Instant::now() < deadline,
            "VM or shim outlived its pod"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    assert_eq!(
        cni_netns(),
        netns_before,
        "CNI network namespace left behind"
    );
    let mounts_left = nacre_runtime::container::mounts::mounts_under(&shim_root());
    assert!(mounts_left.is_empty(), "mounts left: {mounts_left:?}");
    // The memory emptyDir's host tmpfs got nothing and unmounts.
    assert_eq!(std::fs::read_dir(&memory_dir.0).unwrap().count(), 0);
    drop(memory_dir);
    // Empty once every sandbox is gone (remove_dir refuses otherwise).
    std::fs::remove_dir(shim_root()).unwrap();
    // Issue 17: the nacre pod's shim wrote its spans and its guest's.
    assert_cri_traced(&trace);
    let _ = std::fs::remove_file(&trace);
}

/// The events of a trace file.
fn trace_events(trace: &std::path::Path) -> Vec<serde_json::Value> {
    let doc: serde_json::Value = serde_json::from_slice(&std::fs::read(trace).unwrap())
        .unwrap_or_else(|e| panic!("{} is not JSON: {e}", trace.display()));
    doc["traceEvents"].as_array().expect("traceEvents").clone()
}

/// The trace file of a CRI pod's life (Chrome's Trace Event Format, the
/// operator's alone): the nacre shim's spans of the sandbox's start, its
/// network, each container's creation, start and delete, the VM's stop,
/// and the guest agent's own spans of the creations.
fn assert_cri_traced(trace: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(trace).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "trace file mode {mode:o}");
    let events = trace_events(trace);
    let shims: Vec<u64> = events
        .iter()
        .filter(|e| {
            e["ph"] == "M"
                && e["args"]["name"]
                    .as_str()
                    .is_some_and(|n| n.starts_with("containerd-shim-nacre-v2 "))
        })
        .filter_map(|e| e["pid"].as_u64())
        .collect();
    assert!(!shims.is_empty(), "no nacre shim in {events:?}");
    let spans = |cat: &str| -> Vec<&str> {
        events
            .iter()
            .filter(|e| e["ph"] == "X" && e["cat"] == cat)
            .filter(|e| cat == "guest" || e["pid"].as_u64().is_some_and(|p| shims.contains(&p)))
            .filter_map(|e| e["name"].as_str())
            .collect()
    };
    let host = spans("host");
    for want in [
        "task.create",
        "sandbox.boot",
        "sandbox.start",
        "network.attach",
        "agent.ConfigureNetwork",
        "agent.CreateContainer",
        "task.start",
        "task.delete",
        "sandbox.stop",
    ] {
        assert!(host.contains(&want), "no shim span {want}: {host:?}");
    }
    let guest = spans("guest");
    for want in [
        "agent.CreateContainer",
        "agent.create.launch",
        "agent.StartContainer",
    ] {
        assert!(guest.contains(&want), "no guest span {want}: {guest:?}");
    }
}

/// Pod-to-pod traffic across runtimes, and localhost between the two
/// containers of a nacre pod. Needs the shim to wire the pod network
/// (`nacre_runtime::network`) into the VM.
/// Container `from` fetches the pods' test page from `ip:port` (wget).
fn assert_serves_the_page(cri: &CriClient, from: &str, ip: &str, port: u16) {
    let page = exec_ok(
        cri,
        from,
        &["wget", "-qO-", &format!("http://{ip}:{port}/")],
    );
    assert_eq!(page, "hello from a pod\n", "{from} fetching {ip}:{port}");
}

#[test]
fn nacre_and_runc_pods_reach_each_other() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let test = "vm_cri_nacre::nacre_and_runc_pods_reach_each_other";
    let Some(ctd) = setup(test) else { return };
    let cri = client(&ctd);
    let runc_cfg = pod_config(&ctd, "runc-pod", "runc-host");
    let runc_pod = cri.run_pod_sandbox(&runc_cfg, "runc").unwrap();
    let runc_c = run_container(
        &cri,
        &runc_pod,
        &runc_cfg,
        &container_config(
            "web",
            &["httpd", "-f", "-p", "8080", "-h", "/var/www"],
            vec![],
        ),
    );
    let runc_ip = cri.pod_ip(&runc_pod).unwrap();
    let vm_cfg = pod_config(&ctd, "vm-pod", "vm-host");
    let vm_pod = cri.run_pod_sandbox(&vm_cfg, "nacre").unwrap();
    let vm_ip = cri.pod_ip(&vm_pod).unwrap();
    assert_restored_from_a_template(&ctd);
    let web = run_container(
        &cri,
        &vm_pod,
        &vm_cfg,
        &container_config(
            "web",
            &["httpd", "-f", "-p", "8081", "-h", "/var/www"],
            vec![],
        ),
    );
    let side = run_container(
        &cri,
        &vm_pod,
        &vm_cfg,
        &container_config("side", &["sleep", "3600"], vec![]),
    );
    // The guest has the pod IP.
    let addrs = exec_ok(&cri, &web, &["ip", "-4", "addr"]);
    assert!(addrs.contains(&format!("inet {vm_ip}/")), "{addrs}");
    // localhost between the containers of the nacre pod.
    assert_serves_the_page(&cri, &side, "127.0.0.1", 8081);
    // nacre -> runc and runc -> nacre.
    assert_serves_the_page(&cri, &web, &runc_ip, 8080);
    assert_serves_the_page(&cri, &runc_c, &vm_ip, 8081);
    // The host reaches the nacre pod.
    assert!(http_get(&vm_ip, 8081).contains("hello from a pod"));
    // The node endpoint counts that traffic on the pod's virtio-net
    // device, both ways, frames and bytes.
    let samples = scrape_node_metrics();
    for metric in [
        "nacre_vmm_device_packets_total",
        "nacre_vmm_device_bytes_total",
    ] {
        for direction in ["rx", "tx"] {
            let v: f64 = samples
                .iter()
                .filter(|s| {
                    s.metric == metric
                        && s.labels.get("sandbox") == Some(vm_pod.as_str())
                        && s.labels.get("device") == Some("net")
                        && s.labels.get("direction") == Some(direction)
                })
                .map(|s| match s.value {
                    prometheus_parse::Value::Counter(v) => v,
                    _ => f64::NAN,
                })
                .sum();
            assert!(v > 0.0, "{metric} net {direction} = {v}: {samples:?}");
        }
    }

    // A nacre pod on the macvtap network model (handler nacre-macvtap:
    // the shim's configuration comes in the runtime options) reaches and
    // is reached by the runc pod too.
    let mvt_cfg = pod_config(&ctd, "mvt-pod", "mvt-host");
    let mvt_pod = cri.run_pod_sandbox(&mvt_cfg, "nacre-macvtap").unwrap();
    let mvt_ip = cri.pod_ip(&mvt_pod).unwrap();
    let mvt_web = run_container(
        &cri,
        &mvt_pod,
        &mvt_cfg,
        &container_config(
            "web",
            &["httpd", "-f", "-p", "8082", "-h", "/var/www"],
            vec![],
        ),
    );
    // The pod's namespace (CNI's, under /var/run/netns) holds a
    // passthru macvtap on eth0, not a tap.
    let links = std::process::Command::new("ip")
        .args([
            "-all", "netns", "exec", "ip", "-d", "-o", "link", "show", "type", "macvtap",
        ])
        .output()
        .unwrap();
    let links = String::from_utf8_lossy(&links.stdout);
    assert!(
        links.contains("nacre_tap0@eth0") && links.contains("passthru"),
        "no macvtap in the pod's namespace: {links}"
    );
    assert_serves_the_page(&cri, &mvt_web, &runc_ip, 8080);
    assert_serves_the_page(&cri, &runc_c, &mvt_ip, 8082);
}

/// Linux resources as kubelet sends them for a container with CPU and
/// memory limits while the node has no swap: the swap limit equals the
/// memory limit ("no swap").
/// Issue 11: a pod whose containers have CPU and memory limits (with
/// kubelet's swap limit) runs, sees its limits in the guest, follows an
/// UpdateContainerResources, is OOMKilled past its memory limit, and
/// containers that exit are stopped and removed at once, 20 times, with
/// no error (the exit race: containerd must never see
/// "process is not running").
#[test]
fn nacre_pod_with_limits_oom_and_exit_races() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let test = "vm_cri_nacre::nacre_pod_with_limits_oom_and_exit_races";
    let Some(ctd) = setup(test) else { return };
    let cri = client(&ctd);
    // Issue 14 (4): a pod may not ask by annotation for a VM larger than
    // its limits and the configuration give; refused before any boot.
    let mut greedy = pod_config(&ctd, "greedy-pod", "greedy-host");
    greedy
        .annotations
        .insert("io.nacre.vm.memory_mib".into(), "8192".into());
    let err = cri
        .run_pod_sandbox(&greedy, "nacre")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("io.nacre.vm.memory_mib") && err.contains("only shrink"),
        "{err}"
    );
    // Issue 14 (3): the pod's VMM runs in the pod's host cgroup (kubelet's
    // cgroup parent, containerd's cgroupfs driver: <parent>/<sandbox id>).
    let parent = format!("/nacre-cri-{}", std::process::id());
    let (pod_cfg, pod) = run_pod_under(&ctd, &cri, "limits-pod", &parent);
    let vmms: Vec<u32> = pids_of(SHIM, &ctd.socket().to_string_lossy())
        .iter()
        .flat_map(|s| children_named(*s, "nacre-vmm"))
        .collect();
    assert_eq!(vmms.len(), 1, "{vmms:?}");
    let cgroups = std::fs::read_to_string(format!("/proc/{}/cgroup", vmms[0])).unwrap();
    let memory = cgroups
        .lines()
        .find(|l| {
            l.split(':')
                .nth(1)
                .is_some_and(|c| c.split(',').any(|c| c == "memory") || c.is_empty())
        })
        .unwrap_or_default();
    assert!(
        memory.ends_with(&format!("{parent}/{pod}")),
        "the VMM is not in the pod's cgroup: {cgroups}"
    );
    let adj: i32 = std::fs::read_to_string(format!("/proc/{}/oom_score_adj", vmms[0]))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(adj >= 0, "the VMM's oom_score_adj is {adj}");

    let mib = 1 << 20;
    let app = run_container(
        &cri,
        &pod,
        &pod_cfg,
        &with_limits(
            container_config("app", &["sleep", "3600"], vec![]),
            limits(50_000, 64 * mib),
        ),
    );
    let seen = cgroup_files(&cri, &app, "cpu.max memory.max memory.swap.max cpu.weight");
    assert_eq!(
        seen.lines().collect::<Vec<_>>(),
        ["50000 100000", "67108864", "0", "20"],
        "the container's guest cgroup: {seen}"
    );
    cri.update_container_resources(&app, &limits(20_000, 96 * mib))
        .unwrap_or_else(|e| panic!("UpdateContainerResources: {e}"));
    let seen = cgroup_files(&cri, &app, "cpu.max memory.max");
    assert_eq!(
        seen.lines().collect::<Vec<_>>(),
        ["20000 100000", "100663296"],
        "after UpdateContainerResources: {seen}"
    );

    // Issue 17 (1): the node's metrics endpoint, scraped over HTTP and
    // read by a Prometheus text parser, tells what this test knows.
    let samples = scrape_node_metrics();
    let value = |metric: &str, want: &[(&str, &str)]| -> Option<f64> {
        samples
            .iter()
            .find(|s| s.metric == metric && want.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .map(|s| match s.value {
                prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Untyped(v) => v,
                _ => f64::NAN,
            })
    };
    let sb = [("sandbox", pod.as_str()), ("namespace", "k8s.io")];
    assert_eq!(
        value("nacre_sandbox_containers", &sb),
        Some(2.0),
        "{samples:?}"
    );
    assert_eq!(
        value(
            "nacre_container_state",
            &[
                ("sandbox", pod.as_str()),
                ("container", app.as_str()),
                ("state", "running")
            ]
        ),
        Some(1.0),
        "{samples:?}"
    );
    assert_eq!(
        value(
            "nacre_container_memory_limit_bytes",
            &[("sandbox", pod.as_str()), ("container", app.as_str())]
        ),
        Some(100_663_296.0),
        "{samples:?}"
    );
    assert!(
        value("nacre_vmm_rss_bytes", &sb).is_some_and(|v| v > 0.0),
        "{samples:?}"
    );
    // Template hits and misses: this pod's VM is counted under the kind
    // its info line names.
    let kind = samples
        .iter()
        .find(|s| s.metric == "nacre_sandbox_info" && s.labels.get("sandbox") == Some(pod.as_str()))
        .and_then(|s| s.labels.get("start_kind").map(str::to_owned))
        .unwrap_or_else(|| panic!("no nacre_sandbox_info for {pod}: {samples:?}"));
    assert!(
        value("nacre_sandbox_starts", &[("kind", kind.as_str())]).is_some_and(|v| v >= 1.0),
        "{samples:?}"
    );
    // The VMM's guest error counters, all zero for a guest that behaves.
    assert_eq!(
        value(
            "nacre_vmm_guest_errors_total",
            &[("sandbox", pod.as_str()), ("kind", "fs_dropped_request")]
        ),
        Some(0.0),
        "{samples:?}"
    );
    // The VMM's device counters: the guest looked the containers' files
    // up in the share and mapped their binaries through its DAX window,
    // spoke to its agent over vsock, each device kicked and interrupted.
    let total = |metric: &str, want: &[(&str, &str)]| -> f64 {
        samples
            .iter()
            .filter(|s| {
                s.metric == metric
                    && s.labels.get("sandbox") == Some(pod.as_str())
                    && want.iter().all(|(k, v)| s.labels.get(k) == Some(*v))
            })
            .map(|s| match s.value {
                prometheus_parse::Value::Counter(v) => v,
                _ => f64::NAN,
            })
            .sum()
    };
    for (metric, want) in [
        (
            "nacre_vmm_device_requests_total",
            &[("device", "fs"), ("op", "lookup")][..],
        ),
        (
            "nacre_vmm_device_requests_total",
            &[("device", "fs"), ("op", "map")],
        ),
        (
            "nacre_vmm_device_packets_total",
            &[("device", "vsock"), ("direction", "rx")],
        ),
        (
            "nacre_vmm_device_packets_total",
            &[("device", "vsock"), ("direction", "tx")],
        ),
        (
            "nacre_vmm_device_bytes_total",
            &[("device", "vsock"), ("direction", "rx")],
        ),
        (
            "nacre_vmm_device_bytes_total",
            &[("device", "vsock"), ("direction", "tx")],
        ),
        ("nacre_vmm_device_notifications_total", &[("device", "fs")]),
        (
            "nacre_vmm_device_notifications_total",
            &[("device", "vsock")],
        ),
        ("nacre_vmm_device_interrupts_total", &[("device", "fs")]),
        ("nacre_vmm_device_interrupts_total", &[("device", "vsock")]),
    ] {
        let v = total(metric, want);
        assert!(v > 0.0, "{metric}{want:?} = {v}: {samples:?}");
    }
    // The sandbox's first container creation was timed.
    let created = samples
        .iter()
        .find(|s| s.metric == "nacre_sandbox_create_duration_seconds")
        .map(|s| match &s.value {
            prometheus_parse::Value::Histogram(h) => h
                .iter()
                .find(|b| b.less_than.is_infinite())
                .map_or(0.0, |b| b.count),
            _ => 0.0,
        });
    assert!(created.is_some_and(|n| n >= 1.0), "{samples:?}");
    assert!(
        value(
            "nacre_vmm_cpu_seconds_total",
            &[("sandbox", pod.as_str()), ("kind", "vcpu")]
        )
        .is_some_and(|v| v > 0.0),
        "{samples:?}"
    );

    // Past its memory limit: killed by the guest's OOM killer, and CRI
    // says so.
    let hog = run_container(
        &cri,
        &pod,
        &pod_cfg,
        &with_limits(
            container_config(
                "hog",
                &["sh", "-c", "x=0123456789abcdef; while :; do x=$x$x; done"],
                vec![],
            ),
            limits(0, 16 * mib),
        ),
    );
    let st = wait_exited(&cri, &hog);
    assert_eq!(
        (st.exit_code, st.reason.as_str()),
        (137, "OOMKilled"),
        "{st:?}"
    );
    cri.stop_container(&hog, 10).unwrap();
    cri.remove_container(&hog).unwrap();

    // Exit races: a container that exits on its own, then StopContainer
    // and RemoveContainer at once (every other round without waiting for
    // CRI to see the exit).
    for round in 0..20 {
        let cfg = with_limits(
            container_config(&format!("quick-{round}"), &["sh", "-c", "exit 3"], vec![]),
            limits(50_000, 32 * mib),
        );
        let id = cri
            .create_container(&pod, &cfg, &pod_cfg)
            .unwrap_or_else(|e| panic!("round {round}: CreateContainer: {e}"));
        cri.start_container(&id)
            .unwrap_or_else(|e| panic!("round {round}: StartContainer: {e}"));
        if round % 2 == 0 {
            assert_eq!(wait_exited(&cri, &id).exit_code, 3, "round {round}");
        }
        cri.stop_container(&id, 10)
            .unwrap_or_else(|e| panic!("round {round}: StopContainer: {e}\n{}", ctd.log_tail(30)));
        cri.remove_container(&id).unwrap_or_else(|e| {
            panic!("round {round}: RemoveContainer: {e}\n{}", ctd.log_tail(30))
        });
    }

    // The pod itself stops and goes while its app still runs.
    cri.stop_pod_sandbox(&pod).unwrap();
    cri.remove_pod_sandbox(&pod).unwrap();
    let mounts_left = nacre_runtime::container::mounts::mounts_under(&shim_root());
    assert!(mounts_left.is_empty(), "mounts left: {mounts_left:?}");
    assert_host_cgroup_gone(&parent, &pod);
}

/// Issue 14 (3), the acceptance's attack: a guest that touches more RAM
/// than its pod may use. The pod's cgroup parent (kubelet's, here the
/// test's) is limited to 160 MiB while the VM has 256 MiB; a container
/// with no limit of its own fills the guest's memory. Safe outcome: the
/// host cgroup holds the VMM at its limit (the limit is hit, usage never
/// passes it: KVM's faults on guest memory wait for reclaim rather than
/// invoke the OOM killer, so the guest stalls), nothing outside the pod
/// is touched, and the pod is still stopped and removed cleanly.
#[test]
fn a_guest_filling_its_ram_is_stopped_by_the_pods_host_cgroup() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    // (Short: containerd's socket path is made from it.)
    let test = "vm_cri_nacre::host_cgroup_oom";
    let Some(ctd) = setup(test) else { return };
    let cri = client(&ctd);
    let parent = format!("/nacre-oom-{}", std::process::id());
    let limit: u64 = 160 << 20;
    let memory_root = if std::path::Path::new("/sys/fs/cgroup/memory").is_dir() {
        std::path::PathBuf::from("/sys/fs/cgroup/memory")
    } else {
        std::path::PathBuf::from("/sys/fs/cgroup")
    };
    let parent_dir = memory_root.join(parent.trim_start_matches('/'));
    std::fs::create_dir_all(&parent_dir).unwrap();
    let v1 = parent_dir.join("memory.limit_in_bytes").exists();
    let limit_file = if v1 {
        "memory.limit_in_bytes"
    } else {
        "memory.max"
    };
    std::fs::write(parent_dir.join(limit_file), limit.to_string()).unwrap();
    let (pod_cfg, pod) = run_pod_under(&ctd, &cri, "oom-pod", &parent);
    let hog = run_container(
        &cri,
        &pod,
        &pod_cfg,
        &container_config(
            "hog",
            &["sh", "-c", "x=0123456789abcdef; while :; do x=$x$x; done"],
            vec![],
        ),
    );
    let read = |file: &str| -> u64 {
        std::fs::read_to_string(parent_dir.join(file))
            .map(|t| t.trim().parse().unwrap_or(0))
            .unwrap_or(0)
    };
    let (usage_file, failcnt_file) = if v1 {
        ("memory.usage_in_bytes", "memory.failcnt")
    } else {
        ("memory.current", "memory.events")
    };
    let limit_hit = || {
        if v1 {
            read(failcnt_file) > 0
        } else {
            std::fs::read_to_string(parent_dir.join(failcnt_file))
                .unwrap_or_default()
                .lines()
                .any(|l| l.starts_with("max ") && l != "max 0")
        }
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(600);
    while !limit_hit() {
        assert!(
            std::time::Instant::now() < deadline,
            "the guest never reached its pod's host limit (usage {})",
            read(usage_file)
        );
        std::thread::sleep(Duration::from_secs(1));
    }
    // Held there while the guest keeps asking.
    for _ in 0..10 {
        let usage = read(usage_file);
        assert!(
            usage <= limit,
            "usage {usage} above the pod's limit {limit}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    eprintln!(
        "pod cgroup: usage {} of {limit}, limit hit",
        read(usage_file)
    );
    // Lift the pod's limit: the stalled guest goes on and the hog is
    // killed through the agent (waiting for the guest's own OOM killer
    // took over 5 minutes of emulated guest kernel work on an AMD host),
    // then the pod goes as usual.
    std::fs::write(parent_dir.join(limit_file), if v1 { "-1" } else { "max" }).unwrap();
    cri.stop_container(&hog, 0)
        .unwrap_or_else(|e| panic!("StopContainer after the limit was lifted: {e}"));
    let st = wait_exited(&cri, &hog);
    assert_eq!(st.exit_code, 137, "{st:?}");
    cri.remove_container(&hog).unwrap();
    cri.stop_pod_sandbox(&pod).unwrap();
    cri.remove_pod_sandbox(&pod).unwrap();
    assert_host_cgroup_gone(&parent, &pod);
    let _ = std::fs::remove_dir(&parent_dir);
}

/// RunPodSandbox (handler nacre) of pod `name` under kubelet-style cgroup
/// parent `parent`; its config and id.
/// Starts `nacre-metrics` on a free local port for this test's shims,
/// scrapes `/metrics` once over HTTP and parses it with a Prometheus
/// text-format parser.
fn scrape_node_metrics() -> Vec<prometheus_parse::Sample> {
    use std::io::{BufRead, BufReader, Read, Write};
    let bin = nacre_cri_tests::containerd::target_bin_dir()
        .unwrap()
        .join("nacre-metrics");
    let mut child = std::process::Command::new(&bin)
        .args(["--listen", "127.0.0.1:0", "--shim-root"])
        .arg(shim_root())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{}: {e}", bin.display()));
    let mut line = String::new();
    BufReader::new(child.stderr.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .rsplit(' ')
        .next()
        .unwrap_or_default()
        .to_owned();
    let mut s = std::net::TcpStream::connect(&addr).unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let _ = child.kill();
    let _ = child.wait();
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or(("", ""));
    assert!(head.starts_with("HTTP/1.0 200"), "{out}");
    let lines = body.lines().map(|l| Ok(l.to_owned()));
    prometheus_parse::Scrape::parse(lines)
        .unwrap_or_else(|e| panic!("not Prometheus text: {e}\n{body}"))
        .samples
}

fn run_pod_under(
    ctd: &CriContainerd,
    cri: &CriClient,
    name: &str,
    parent: &str,
) -> (PodSandboxConfig, String) {
    let mut pod_cfg = pod_config(ctd, name, &format!("{name}-host"));
    pod_cfg.linux = Some(LinuxPodSandboxConfig {
        cgroup_parent: parent.to_string(),
        ..Default::default()
    });
    let pod = cri
        .run_pod_sandbox(&pod_cfg, "nacre")
        .unwrap_or_else(|e| panic!("RunPodSandbox(nacre): {e}\n{}", ctd.log_tail(40)));
    (pod_cfg, pod)
}

/// The removed pod's host cgroup (`<parent>/<pod>`) is gone; the parent
/// is kubelet's (here the test's) to remove, and is.
fn assert_host_cgroup_gone(parent: &str, pod: &str) {
    let leaf = nacre_runtime::host_cgroup::HostCgroup::locate(&format!("{parent}/{pod}")).unwrap();
    for dir in leaf.dirs() {
        assert!(!dir.exists(), "host cgroup {} left", dir.display());
        let _ = std::fs::remove_dir(dir.parent().unwrap());
    }
}
