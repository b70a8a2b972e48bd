//! VM tier, issue 16 (3): a CRI conformance suite, differential. Each case
//! is what kubelet sends for one feature of the Kubernetes CRI validation
//! cases that apply to a VM runtime; it runs in a runc pod and in a nacre
//! pod on one containerd and reduces what the container shows to a text.
//! nacre must show what runc shows. Pods that ask for a host namespace
//! (hostNetwork, hostPID, hostIPC) are refused by nacre by design, with a
//! clear error; runc runs them. The case counts are printed at the end.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

mod common;

use std::path::{Path, PathBuf};

use common::vm::*;
use common::*;
use nacre_cri_tests::containerd::CriContainerd;
use nacre_cri_tests::cri::v1::{
    Capability, ContainerConfig, Int64Value, KeyValue, LinuxContainerConfig,
    LinuxContainerSecurityContext, LinuxPodSandboxConfig, LinuxSandboxSecurityContext, Mount,
    NamespaceMode, NamespaceOption, PodSandboxConfig,
};
use nacre_cri_tests::cri::CriClient;

/// One runtime's pod, as the cases see it.
struct Pod<'a> {
    cri: &'a CriClient,
    id: String,
    cfg: PodSandboxConfig,
    /// A host directory mounted by the volume cases (hostPath).
    volume: PathBuf,
    /// A long-running container (`sleep 3600` with args, env and a
    /// working dir) the read-only cases share.
    main: String,
    /// containerd's state directory (the bundles).
    state: PathBuf,
}

impl Pod<'_> {
    /// Creates and starts `cfg`, waits until it runs.
    fn run(&self, cfg: &ContainerConfig) -> String {
        run_container(self.cri, &self.id, &self.cfg, cfg)
    }

    /// Creates and starts `cfg`, waits until it exits; its status.
    fn run_to_exit(&self, cfg: &ContainerConfig) -> (String, i32, String) {
        let id = self
            .cri
            .create_container(&self.id, cfg, &self.cfg)
            .unwrap_or_else(|e| panic!("CreateContainer: {e}"));
        self.cri
            .start_container(&id)
            .unwrap_or_else(|e| panic!("StartContainer: {e}"));
        let st = wait_exited(self.cri, &id);
        (id, st.exit_code, st.reason)
    }

    fn exec(&self, id: &str, script: &str) -> String {
        exec_ok(self.cri, id, &["sh", "-c", script])
    }

    /// The `options` of the bundle's mount on `dest`, as containerd wrote
    /// them (the same for both runtimes; printed for the record).
    fn spec_mount(&self, id: &str, dest: &str) -> String {
        let spec = std::fs::read(self.state.join(id).join("config.json")).unwrap_or_default();
        let spec: serde_json::Value = serde_json::from_slice(&spec).unwrap_or_default();
        spec["mounts"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|m| m["destination"] == dest)
            .map(|m| m["options"].to_string())
            .collect()
    }

    fn remove(&self, id: &str) {
        self.cri.stop_container(id, 0).unwrap();
        self.cri.remove_container(id).unwrap();
    }
}

fn sleeper(name: &str) -> ContainerConfig {
    container_config(name, &["sleep", "3600"], vec![])
}

fn with_security(mut cfg: ContainerConfig, sc: LinuxContainerSecurityContext) -> ContainerConfig {
    cfg.linux = Some(LinuxContainerConfig {
        security_context: Some(sc),
        ..cfg.linux.unwrap_or_default()
    });
    cfg
}

/// The container's CPU quota, memory and pids limits, from cgroup v2 (the
/// guest's) or v1 (a host with the legacy hierarchy, runc's there).
const LIMITS: &str = "if [ -f /sys/fs/cgroup/cgroup.controllers ]; then \
    p=$(grep '^0::' /proc/self/cgroup); d=/sys/fs/cgroup${p#0::}; \
    q=$(cut -d' ' -f1 $d/cpu.max); m=$(cat $d/memory.max); n=$(cat $d/pids.max); \
  else q=$(cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us); \
    m=$(cat /sys/fs/cgroup/memory/memory.limit_in_bytes); n=$(cat /sys/fs/cgroup/pids/pids.max); \
  fi; echo quota=$q memory=$m pids=$n";

/// kubelet's default masked and read-only paths (`DefaultProcMount`).
const MASKED: [&str; 10] = [
    "/proc/asound",
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
];
const READONLY: [&str; 5] = [
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// Cases where nacre still differs from runc, with why; each must still
/// differ (a fixed one leaves this list).
const KNOWN_DIVERGENCES: &[(&str, &str)] = &[];

/// A case: a name and what the container shows.
type Case = (&'static str, fn(&Pod) -> String);

const CASES: &[Case] = &[
    ("command, args, env and a working dir to create", |pod| {
        pod.exec(
            &pod.main,
            "tr '\\0' ' ' </proc/1/cmdline; echo; tr '\\0' '\\n' </proc/1/environ | \
             grep -E '^(FOO|PATH|HOSTNAME)=' | sort; readlink /proc/1/cwd; pwd",
        )
    }),
    ("user, group and supplemental groups", |pod| {
        let cfg = with_security(
            sleeper("user"),
            LinuxContainerSecurityContext {
                run_as_user: Some(Int64Value { value: 1000 }),
                run_as_group: Some(Int64Value { value: 2000 }),
                supplemental_groups: vec![3000],
                ..Default::default()
            },
        );
        let c = pod.run(&cfg);
        let seen = pod.exec(&c, "id; stat -c '%u:%g' /proc/1");
        pod.remove(&c);
        seen
    }),
    ("read-only rootfs", |pod| {
        let cfg = with_security(
            sleeper("rofs"),
            LinuxContainerSecurityContext {
                readonly_rootfs: true,
                ..Default::default()
            },
        );
        let c = pod.run(&cfg);
        let seen = pod.exec(
            &c,
            "touch /x 2>/dev/null; echo root=$?; touch /etc/hosts 2>/dev/null; echo hosts=$?; \
             touch /dev/shm/x; echo shm=$?",
        );
        pod.remove(&c);
        seen
    }),
    ("capabilities added and dropped", |pod| {
        let cfg = with_security(
            sleeper("caps"),
            LinuxContainerSecurityContext {
                capabilities: Some(Capability {
                    add_capabilities: vec!["NET_ADMIN".into(), "SYS_TIME".into()],
                    drop_capabilities: vec!["CHOWN".into(), "KILL".into()],
                    ..Default::default()
                }),
                ..Default::default()
            },
        );
        let c = pod.run(&cfg);
        let seen = pod.exec(&c, "grep -E '^Cap(Inh|Prm|Eff|Bnd|Amb)' /proc/1/status");
        pod.remove(&c);
        seen
    }),
    ("privileged", |pod| {
        let cfg = with_security(
            sleeper("priv"),
            LinuxContainerSecurityContext {
                privileged: true,
                ..Default::default()
            },
        );
        let c = pod.run(&cfg);
        eprintln!(
            "{}: the spec's /sys: {}",
            pod.cfg.metadata.as_ref().map_or("", |m| m.name.as_str()),
            pod.spec_mount(&c, "/sys")
        );
        let seen = pod.exec(
            &c,
            "grep -E '^Cap(Prm|Eff|Bnd)' /proc/1/status; \
             grep -E ' /sys | /proc/sys ' /proc/mounts | cut -d' ' -f2,4 | cut -d, -f1",
        );
        pod.remove(&c);
        seen
    }),
    ("masked and read-only paths, as kubelet sends them", |pod| {
        let cfg = with_security(
            sleeper("masked"),
            LinuxContainerSecurityContext {
                masked_paths: MASKED.iter().map(|p| p.to_string()).collect(),
                readonly_paths: READONLY.iter().map(|p| p.to_string()).collect(),
                ..Default::default()
            },
        );
        let c = pod.run(&cfg);
        // Only paths both kernels have (the guest's is minimal: no
        // /proc/keys, /proc/acpi, ...): masked ones read empty or list
        // nothing, read-only ones refuse writes.
        let seen = pod.exec(
            &c,
            "for p in /proc/timer_list /sys/firmware; do \
               if [ -d $p ]; then echo \"$p dir $(ls -A $p | wc -l)\"; \
               else echo \"$p file $(head -c 64 $p 2>/dev/null | wc -c)\"; fi; done; \
             for p in /proc/sys/kernel/domainname /proc/sysrq-trigger \
               /proc/irq/default_smp_affinity; do \
               (echo 1 >$p) 2>/dev/null; echo \"$p written=$?\"; done",
        );
        pod.remove(&c);
        seen
    }),
    ("hostPath volumes, read-write and read-only", |pod| {
        std::fs::write(pod.volume.join("seed"), "from the host\n").unwrap();
        let mount = |container_path: &str, readonly| Mount {
            container_path: container_path.into(),
            host_path: pod.volume.to_string_lossy().into_owned(),
            readonly,
            ..Default::default()
        };
        let cfg = container_config(
            "volumes",
            &["sleep", "3600"],
            vec![mount("/data", false), mount("/ro", true)],
        );
        let c = pod.run(&cfg);
        let mut seen = pod.exec(
            &c,
            "cat /ro/seed; echo hi >/data/written; echo rw=$?; touch /ro/x 2>/dev/null; \
             echo ro=$?; cat /ro/written",
        );
        pod.remove(&c);
        seen += &std::fs::read_to_string(pod.volume.join("written")).unwrap_or_default();
        std::fs::remove_file(pod.volume.join("written")).unwrap();
        seen
    }),
    ("hostname, hosts and DNS", |pod| {
        pod.exec(&pod.main, "hostname; cat /etc/resolv.conf /etc/hosts")
    }),
    ("ExecSync exit code and streams", |pod| {
        let r = pod
            .cri
            .exec_sync(
                &pod.main,
                &["sh", "-c", "echo out; echo err >&2; exit 7"],
                60,
            )
            .unwrap();
        let bad = pod.cri.exec_sync(&pod.main, &["/no/such/binary"], 60);
        format!(
            "{} {:?} {:?}; missing binary: {}",
            r.exit_code,
            String::from_utf8_lossy(&r.stdout),
            String::from_utf8_lossy(&r.stderr),
            bad.map(|r| r.exit_code != 0).unwrap_or(true),
        )
    }),
    ("exit codes and reasons", |pod| {
        let (a, code_a, reason_a) =
            pod.run_to_exit(&container_config("fails", &["sh", "-c", "exit 3"], vec![]));
        let (b, code_b, reason_b) = pod.run_to_exit(&container_config("done", &["true"], vec![]));
        pod.remove(&a);
        pod.remove(&b);
        format!("{code_a} {reason_a}; {code_b} {reason_b}")
    }),
    ("logs in CRI format, partial lines", |pod| {
        let cfg = container_config(
            "logs",
            &["sh", "-c", "echo out; echo err >&2; printf partial"],
            vec![],
        );
        let (c, _, _) = pod.run_to_exit(&cfg);
        let log = Path::new(&pod.cfg.log_directory).join(&cfg.log_path);
        let text = std::fs::read_to_string(&log).unwrap();
        pod.remove(&c);
        // "<RFC 3339 time> <stream> <P|F> <text>": the time is dropped and
        // the streams, whose order is not fixed, sorted.
        let mut lines: Vec<String> = text
            .lines()
            .map(|l| l.split_once(' ').map_or(l, |(_, rest)| rest).to_string())
            .collect();
        lines.sort();
        lines.join("\n")
    }),
    ("a stop timeout kills what ignores SIGTERM", |pod| {
        let c = pod.run(&container_config(
            "stubborn",
            &[
                "sh",
                "-c",
                "trap '' TERM; touch /tmp/trapped; while :; do sleep 1; done",
            ],
            vec![],
        ));
        // Once the trap is set (the container may run before its shell
        // got that far: a slow guest would show a different race).
        pod.exec(
            &c,
            "for i in $(seq 600); do [ -e /tmp/trapped ] && exit; sleep 0.1; done; exit 1",
        );
        pod.cri.stop_container(&c, 2).unwrap();
        let st = pod.cri.container_status(&c).unwrap();
        pod.cri.remove_container(&c).unwrap();
        format!("{} {}", st.exit_code, st.reason)
    }),
    ("resources and UpdateContainerResources", |pod| {
        let mib = 1 << 20;
        let c = pod.run(&with_limits(sleeper("resources"), limits(50_000, 64 * mib)));
        let before = pod.exec(&c, LIMITS);
        pod.cri
            .update_container_resources(&c, &limits(20_000, 96 * mib))
            .unwrap();
        let after = pod.exec(&c, LIMITS);
        pod.remove(&c);
        format!("{before}{after}")
    }),
    ("OOMKilled past the memory limit", |pod| {
        let cfg = with_limits(
            container_config(
                "hog",
                &["sh", "-c", "x=0123456789abcdef; while :; do x=$x$x; done"],
                vec![],
            ),
            limits(0, 16 << 20),
        );
        let (c, code, reason) = pod.run_to_exit(&cfg);
        pod.remove(&c);
        format!("{code} {reason}")
    }),
    ("stats, list filter and pod status", |pod| {
        let stats = pod.cri.container_stats(&pod.main).unwrap();
        let memory = stats
            .memory
            .and_then(|m| m.working_set_bytes)
            .is_some_and(|v| v.value > 0);
        let listed = pod.cri.list_containers(&pod.id).unwrap();
        let ip = pod.cri.pod_ip(&pod.id).unwrap();
        format!(
            "memory working set: {memory}; listed: {}; pod IP: {}",
            listed.iter().filter(|id| **id == pod.main).count(),
            ip.parse::<std::net::Ipv4Addr>().is_ok()
        )
    }),
];

/// The pod of `handler`, every case's text, the pod removed after.
fn run_cases(ctd: &CriContainerd, cri: &CriClient, handler: &str) -> Vec<String> {
    let volume = ctd.dir.join(format!("volume-{handler}"));
    std::fs::create_dir_all(&volume).unwrap();
    // Same host name for both pods: the cases compare it.
    let mut cfg = pod_config(ctd, &format!("conf-{handler}"), "conf-host");
    // A privileged container needs a privileged pod.
    cfg.linux = Some(LinuxPodSandboxConfig {
        security_context: Some(LinuxSandboxSecurityContext {
            privileged: true,
            ..Default::default()
        }),
        ..Default::default()
    });
    let id = cri
        .run_pod_sandbox(&cfg, handler)
        .unwrap_or_else(|e| panic!("RunPodSandbox({handler}): {e}\n{}", ctd.log_tail(40)));
    let mut main = container_config("main", &["sleep"], vec![]);
    main.args = vec!["3600".into()];
    main.working_dir = "/work/dir".into();
    main.envs.push(KeyValue {
        key: "FOO".into(),
        value: "bar baz".into(),
    });
    let main = run_container(cri, &id, &cfg, &main);
    let pod = Pod {
        cri,
        id,
        cfg,
        volume,
        main,
        state: ctd.dir.join("state/io.containerd.runtime.v2.task/k8s.io"),
    };
    let seen = CASES
        .iter()
        .map(|(name, case)| {
            eprintln!("{handler}: {name}");
            case(&pod)
        })
        .collect();
    cri.stop_pod_sandbox(&pod.id).unwrap();
    cri.remove_pod_sandbox(&pod.id).unwrap();
    seen
}

/// A pod asking for one host namespace.
fn host_ns_pod(ctd: &CriContainerd, name: &str, ns: NamespaceOption) -> PodSandboxConfig {
    let mut cfg = pod_config(ctd, name, name);
    // kubelet sends no host name for a pod in the host's namespaces.
    cfg.hostname = String::new();
    cfg.linux = Some(LinuxPodSandboxConfig {
        security_context: Some(LinuxSandboxSecurityContext {
            namespace_options: Some(ns),
            ..Default::default()
        }),
        ..Default::default()
    });
    cfg
}

#[test]
fn cri_cases_match_runc() {
    let test = "vm_cri_conf::cases";
    let Some(ctd) = setup(test) else { return };
    let cri = client(&ctd);
    // The runc pod's cases run beside the nacre pod's (each its own
    // client): the nacre half is what takes the time.
    let (runc, nacre) = std::thread::scope(|s| {
        let runc = s.spawn(|| run_cases(&ctd, &client(&ctd), "runc"));
        let nacre = run_cases(&ctd, &cri, "nacre");
        (
            runc.join().unwrap_or_else(|e| std::panic::resume_unwind(e)),
            nacre,
        )
    });
    let (mut failed, mut known) = (Vec::new(), Vec::new());
    for (((name, _), r), n) in CASES.iter().zip(&runc).zip(&nacre) {
        let why = KNOWN_DIVERGENCES.iter().find(|(k, _)| k == name);
        match (r == n, why) {
            (true, None) => eprintln!("PASS {name}"),
            (false, Some((_, why))) => {
                eprintln!("KNOWN DIVERGENCE {name}: {why}\n  runc:  {r:?}\n  nacre: {n:?}");
                known.push(*name);
            }
            (true, Some(_)) => {
                eprintln!("FIXED {name}: remove it from KNOWN_DIVERGENCES");
                failed.push(*name);
            }
            (false, None) => {
                eprintln!("FAIL {name}\n  runc:  {r:?}\n  nacre: {n:?}");
                failed.push(*name);
            }
        }
    }

    // Refused by design: a VM has no host namespace to share.
    let node = NamespaceMode::Node as i32;
    let refused = [
        (
            "hostNetwork",
            "network",
            NamespaceOption {
                network: node,
                ..Default::default()
            },
        ),
        (
            "hostPID",
            "pid",
            NamespaceOption {
                pid: node,
                ..Default::default()
            },
        ),
        (
            "hostIPC",
            "ipc",
            NamespaceOption {
                ipc: node,
                ..Default::default()
            },
        ),
    ];
    for (what, ns, option) in &refused {
        let name = format!("host-{ns}");
        let runc_pod = cri
            .run_pod_sandbox(
                &host_ns_pod(&ctd, &format!("{name}-runc"), option.clone()),
                "runc",
            )
            .unwrap_or_else(|e| panic!("runc {what}: {e}"));
        cri.stop_pod_sandbox(&runc_pod).unwrap();
        cri.remove_pod_sandbox(&runc_pod).unwrap();
        let err = cri
            .run_pod_sandbox(&host_ns_pod(&ctd, &name, option.clone()), "nacre")
            .expect_err(what)
            .to_string();
        assert!(
            err.contains(&format!("host's {ns} namespace")) && err.contains("use runc"),
            "{what}: {err}"
        );
        eprintln!("REFUSED BY DESIGN {what}: {err}");
    }
    eprintln!(
        "CRI conformance: {} cases, {} passed, {} failed, {} known divergences, {} refused by design",
        CASES.len(),
        CASES.len() - failed.len() - known.len(),
        failed.len(),
        known.len(),
        refused.len()
    );
    assert!(failed.is_empty(), "nacre differs from runc in {failed:?}");
    let mounts_left = nacre_runtime::container::mounts::mounts_under(&shim_root());
    assert!(mounts_left.is_empty(), "mounts left: {mounts_left:?}");
    assert!(
        cri.list_pod_sandboxes().unwrap().is_empty(),
        "pods left after refusals"
    );
}
