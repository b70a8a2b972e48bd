//! VM tier: a guest on a pod network. A scratch namespace wired like
//! CNI's bridge plugin (veth, address, default route via the host end),
//! the runtime's tap + tc plumbing, one VM restored from a template (made
//! here: one cold boot with a detached network device and a placeholder
//! MAC) with `--net fd=N`, the agent giving the guest NIC the pod's MAC
//! and configuring the guest from the runtime's description
//! (`NACRE_TEMPLATES=0`: the VM boots cold with the tap instead). Then
//! traffic both ways (the host pings the guest; a container in the guest
//! reaches a TCP server on the host; the host reaches a TCP server in the
//! guest), the guest's hostname, resolv.conf and hosts; after shutdown and
//! teardown no tap, no tc rule and no VMM are left. Then the same with
//! the macvtap model (a second sandbox from the same template): the host
//! pings the guest, and the macvtap is deleted at teardown. Last, a
//! second interface in the namespace: a VM with two NICs, both reachable.
//!
//! Needs root, /dev/kvm, the guest image (`make guest`) and busybox.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{sh, sh_ok, PodNetns};
use nacre_runtime::agent::{
    AgentClient, ClientOptions, Endpoint, RestoredIdentity, TtrpcAgentClient,
};
use nacre_runtime::network::{self, GuestNetwork, PodNetwork};
use nacre_runtime::sandbox::{default_boot_timeout, Sandbox};
use nacre_runtime::template::{self, start_sandbox, StartKind, TemplateStore};
use nacre_runtime::testing::{root_prereqs, vm_prereqs, VmPrereqs};
use nacre_runtime::vm::VmSpec;
use serde_json::json;

const GUEST_ROOTFS: &str = "/containers/busybox/rootfs";
const RESOLV: &str = "nameserver 10.213.3.53\nsearch pods.example.test\n";
const HOSTS: &str = "127.0.0.1\tlocalhost\n10.213.3.2\tpod-net\n";

/// A newc cpio with a busybox rootfs at [`GUEST_ROOTFS`].
fn rootfs_cpio(dir: &Path) -> std::path::PathBuf {
    let stage = dir.join("stage");
    let root = stage.join(GUEST_ROOTFS.trim_start_matches('/'));
    let bin = root.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::copy("/bin/busybox", bin.join("busybox")).unwrap();
    for applet in ["sh", "cat", "hostname", "nc", "echo", "ping"] {
        std::os::unix::fs::symlink("busybox", bin.join(applet)).unwrap();
    }
    for d in ["proc", "sys", "dev", "tmp", "etc"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    for f in ["etc/resolv.conf", "etc/hosts"] {
        std::fs::write(root.join(f), "").unwrap();
    }
    let out = dir.join("rootfs.cpio");
    sh(&format!(
        "cd {} && find . -mindepth 1 | LC_ALL=C sort | cpio --quiet -o -H newc -R 0:0 > {}",
        stage.display(),
        out.display()
    ));
    out
}

/// A container in the guest's network and UTS namespaces, with the
/// guest's resolv.conf and hosts bound in.
fn spec(args: &[&str]) -> Vec<u8> {
    let bind = |f: &str| json!({"destination": f, "type": "bind", "source": f, "options": ["rbind", "ro"]});
    serde_json::to_vec(&json!({
        "ociVersion": "1.0.2",
        "root": {"path": GUEST_ROOTFS},
        "process": {"args": args, "env": ["PATH=/bin"], "cwd": "/"},
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["ro"]},
            bind("/etc/resolv.conf"),
            bind("/etc/hosts")
        ],
        "linux": {"namespaces": [{"type": "pid"}, {"type": "ipc"}, {"type": "mount"}]}
    }))
    .unwrap()
}

fn drain(agent: &dyn AgentClient, id: &str, stderr: bool) -> String {
    let mut out = Vec::new();
    loop {
        let chunk = if stderr {
            agent.read_stderr(id, "", 0).unwrap()
        } else {
            agent.read_stdout(id, "", 0).unwrap()
        };
        if chunk.is_empty() {
            return String::from_utf8_lossy(&out).into_owned();
        }
        out.extend(chunk);
    }
}

/// Runs a container to its end: (status, stdout, stderr).
fn run(agent: &dyn AgentClient, id: &str, args: &[&str]) -> (i32, String, String) {
    agent.create_container(id, &spec(args)).unwrap();
    agent.start_container(id).unwrap();
    let out = drain(agent, id, false);
    let err = drain(agent, id, true);
    let status = agent.wait_process(id, "").unwrap().status;
    agent.remove_container(id).unwrap();
    (status, out, err)
}

/// A ttRPC client of `sandbox`'s agent with a long call timeout: a loaded
/// 2-core host with emulated guest kernel mode can take more than the
/// default 30 s for a container step.
fn agent_client(sandbox: &Sandbox) -> TtrpcAgentClient {
    TtrpcAgentClient::connect(
        Endpoint::agent_vsock(sandbox.vm().vsock_socket()),
        ClientOptions {
            call_timeout: Duration::from_secs(300),
            ..ClientOptions::default()
        },
    )
    .unwrap()
}

/// Starts a sandbox named `name` on the pod network `pod` (restored from
/// `store` when given, else booted cold) and connects to its agent.
fn start_on(
    p: &VmPrereqs,
    store: Option<&TemplateStore>,
    pod: &PodNetwork,
    dir: &Path,
    name: &str,
) -> (Sandbox, StartKind, TtrpcAgentClient) {
    let vm_spec = VmSpec {
        nets: pod.vm_nets(),
        ..VmSpec::new(p.image.clone())
    };
    let identity = RestoredIdentity::new(name, name).unwrap();
    let (sandbox, kind) = start_sandbox(
        store,
        &p.vmm,
        &vm_spec,
        &dir.join(name),
        &identity,
        default_boot_timeout(),
    )
    .unwrap_or_else(|e| panic!("starting {name}: {e}"));
    let client = agent_client(&sandbox);
    (sandbox, kind, client)
}

/// The host pings `ip` twice with busybox `ping` or `ping6`.
fn host_pings(ping: &str, ip: &str, what: &str) {
    let out = Command::new("busybox")
        .args([ping, "-c", "2", "-W", "120", ip])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The tc counters, neighbours and logs, for a failure message.
fn diagnostics(ns: &PodNetns, tap: &str, sandbox: &Sandbox) -> String {
    let tc = |dev: &str| {
        let out = Command::new("ip")
            .args([
                "netns", "exec", &ns.name, "tc", "-s", "filter", "show", "dev", dev, "ingress",
            ])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        format!("--- tc -s filter show dev {dev} ingress ---\n{out}")
    };
    let neigh = Command::new("ip")
        .args(["neigh", "show", "dev", &ns.host_if])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let console = sandbox.vm().console();
    let tail: Vec<&str> = console.lines().rev().take(30).collect();
    format!(
        "{}{}--- host neighbours ---\n{neigh}--- VMM log ---\n{}--- console (tail) ---\n{}",
        tc("eth0"),
        tc(tap),
        sandbox.vm().vmm_log(),
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    )
}

/// Removes the test's scratch directory on every exit, panics included.
struct ScratchDir(std::path::PathBuf);

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn guest_on_a_pod_network() {
    let Some(mut p) = vm_prereqs("guest_on_a_pod_network") else {
        return;
    };
    if !root_prereqs("guest_on_a_pod_network") {
        return;
    }
    let dir = std::env::temp_dir().join(format!("nacre-vm-net-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let _scratch = ScratchDir(dir.clone());
    let mut initrd = std::fs::read(&p.image.initrd).unwrap();
    initrd.extend(std::fs::read(rootfs_cpio(&dir)).unwrap());
    let combined = dir.join("initrd.cpio");
    std::fs::write(&combined, initrd).unwrap();
    p.image.initrd = combined;

    let start = Instant::now();
    let step = |what: &str| eprintln!("[{:6.1} s] {what}", start.elapsed().as_secs_f64());
    let ns = PodNetns::create("vm", 3);
    let pod = network::attach(&ns.path()).unwrap();
    let tap_name = pod.endpoints()[0].tap_name.clone();

    // A TCP echo server on the host end of the veth.
    let listener = TcpListener::bind((ns.gateway.as_str(), 0)).unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        let (mut conn, peer) = listener.accept().unwrap();
        let mut line = String::new();
        BufReader::new(conn.try_clone().unwrap())
            .read_line(&mut line)
            .unwrap();
        conn.write_all(format!("echo:{line}").as_bytes()).unwrap();
        peer.ip().to_string()
    });

    let store = (!template::disabled_by_env()).then(|| TemplateStore::new(dir.join("templates")));
    let (sandbox, kind, client) = start_on(&p, store.as_ref(), &pod, &dir, "pod-net");
    if store.is_some() {
        assert!(
            matches!(kind, StartKind::Template(_)),
            "not restored from the template: {kind:?}"
        );
    }
    let agent: &dyn AgentClient = &client;
    step(&format!("started: {kind:?} in {:?}", sandbox.boot_time()));
    let mut net = GuestNetwork {
        hostname: Some("pod-net".into()),
        resolv_conf: Some(RESOLV.into()),
        hosts: Some(HOSTS.into()),
        ..pod.guest_network()
    };
    if matches!(kind, StartKind::Template(_)) {
        // The guest NIC still has the template's placeholder MAC.
        template::mark_restored(&mut net);
    }
    let names = agent.configure_network(&net).unwrap();
    assert_eq!(names.len(), 1, "{names:?}");
    let nic = names[0].clone();
    assert_eq!(agent.guest_details().unwrap().hostname, "pod-net");
    step("network configured");

    // Host -> guest: ICMP.
    host_pings("ping", &ns.pod_ip, "host ping of the guest");

    step("host pinged the guest");
    // Host -> guest: ICMPv6 (the CNI gave an IPv6 address too).
    host_pings("ping6", &ns.pod_ip6, "host ping6 of the guest");

    step("host pinged the guest over IPv6");
    // Guest -> host: ICMP and TCP from a container, plus the guest's
    // identity. Generous timeouts: on a loaded host with emulated guest
    // kernel mode the guest was seen starved for 20 s at a time (RCU stall
    // warnings on its console).
    let script = format!(
        "cat /sys/class/net/{nic}/address; hostname; cat /etc/resolv.conf; cat /etc/hosts; \
         ping -c 1 -W 300 {gw} >&2 && echo from-guest | nc -w 300 {gw} {port}",
        gw = ns.gateway
    );
    let (status, out, err) = run(agent, "client", &["sh", "-c", &script]);
    step("the guest reached the host");
    assert_eq!(
        status,
        0,
        "stdout: {out}\nstderr: {err}\n{}",
        diagnostics(&ns, &tap_name, &sandbox)
    );
    assert_eq!(
        out,
        format!("{}\npod-net\n{RESOLV}{HOSTS}echo:from-guest\n", ns.mac),
        "stderr: {err}"
    );
    assert_eq!(
        server.join().unwrap(),
        ns.pod_ip,
        "the guest's source address"
    );

    // Host -> guest: TCP to a server in a container.
    agent
        .create_container("server", &spec(&["nc", "-l", "-p", "7000", "-e", "cat"]))
        .unwrap();
    agent.start_container("server").unwrap();
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut conn = loop {
        match TcpStream::connect_timeout(
            &format!("{}:7000", ns.pod_ip).parse().unwrap(),
            Duration::from_secs(10),
        ) {
            Ok(c) => break c,
            Err(e) if Instant::now() < deadline => {
                eprintln!("connecting to the guest server: {e}; retrying");
                std::thread::sleep(Duration::from_secs(1));
            }
            Err(e) => panic!("connecting to the guest server: {e}"),
        }
    };
    conn.set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    conn.write_all(b"from-host\n").unwrap();
    let mut back = [0u8; 10];
    conn.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"from-host\n");
    drop(conn);
    assert_eq!(agent.wait_process("server", "").unwrap().status, 0);
    agent.remove_container("server").unwrap();
    step("the host reached the guest");

    let vmm_pid = sandbox.vm().pid();
    let leftovers = sandbox.shutdown(Duration::from_secs(120)).unwrap();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    assert!(
        !Path::new(&format!("/proc/{vmm_pid}")).exists(),
        "the VMM is still running"
    );
    pod.teardown().unwrap();
    assert!(
        !sh_ok(&format!(
            "ip netns exec {} ip link show {tap_name}",
            ns.name
        )),
        "the tap is still there"
    );
    let qdiscs = ns.exec("tc qdisc show dev eth0");
    assert!(!qdiscs.contains("ingress"), "{qdiscs}");
    step("tc model torn down");

    // The macvtap model on the same namespace: another sandbox (from the
    // same template: same NIC count and MTU), the host pings the guest,
    // and teardown deletes the macvtap.
    let pod = network::attach_with(&ns.path(), network::NetworkModel::Macvtap).unwrap();
    let mvtap = pod.endpoints()[0].tap_name.clone();
    let (sandbox, kind, client) = start_on(&p, store.as_ref(), &pod, &dir, "pod-mvt");
    let mut net = GuestNetwork {
        hostname: Some("pod-mvt".into()),
        ..pod.guest_network()
    };
    if matches!(kind, StartKind::Template(_)) {
        template::mark_restored(&mut net);
    }
    let agent: &dyn AgentClient = &client;
    agent.configure_network(&net).unwrap();
    step(&format!(
        "macvtap sandbox started ({kind:?}) and configured"
    ));
    host_pings("ping", &ns.pod_ip, "host ping of the guest on a macvtap");
    step("host pinged the guest on a macvtap");
    drop(client);
    let leftovers = sandbox.shutdown(Duration::from_secs(120)).unwrap();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    pod.teardown().unwrap();
    assert!(
        !sh_ok(&format!("ip netns exec {} ip link show {mvtap}", ns.name)),
        "the macvtap is still there"
    );

    step("macvtap model torn down");

    two_interfaces(&p, &ns, &dir, &step);
    let ns_name = ns.name.clone();
    drop(ns);
    assert!(!sh("ip netns list").contains(&ns_name));
}

/// A second interface in the pod namespace (as Multus adds): a cold boot
/// (a template is per NIC count; one is not worth making for one start)
/// with two virtio-net devices; the agent names and configures both; the
/// host pings the guest on each; teardown removes both taps.
fn two_interfaces(p: &VmPrereqs, ns: &PodNetns, dir: &Path, step: &dyn Fn(&str)) {
    let (host_end, _) = ns.add_net1(3, 1500);
    let pod = network::attach(&ns.path()).unwrap();
    assert_eq!(pod.endpoints().len(), 2);
    let taps: Vec<String> = pod.endpoints().iter().map(|e| e.tap_name.clone()).collect();
    let (sandbox, _, client) = start_on(p, None, &pod, dir, "pod-two");
    let agent: &dyn AgentClient = &client;
    let names = agent.configure_network(&pod.guest_network()).unwrap();
    assert_eq!(names.len(), 2, "{names:?}");
    step("two-NIC sandbox booted and configured");
    host_pings("ping", &ns.pod_ip, "host ping of the guest's first NIC");
    host_pings("ping", "10.214.3.2", "host ping of the guest's second NIC");
    step("host pinged the guest on both NICs");
    drop(client);
    let leftovers = sandbox.shutdown(Duration::from_secs(120)).unwrap();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    pod.teardown().unwrap();
    for tap in &taps {
        assert!(
            !sh_ok(&format!("ip netns exec {} ip link show {tap}", ns.name)),
            "tap {tap} is still there"
        );
    }
    let _ = Command::new("ip").args(["link", "del", &host_end]).status();
}
