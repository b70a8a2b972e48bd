//! Root tier: a runc pod through CRI on the private containerd (proves the
//! harness): pod IP from the bridge CNI, a container that runs, ExecSync,
//! Exec through the streaming server (stdio, exit code, stdin, terminal),
//! status, stats, listing, an HTTP server reachable from the host, DNS
//! and hostname from the request, and teardown that leaves no netns.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

mod common;

use common::*;
use nacre_cri_tests::containerd::CriContainerd;
use nacre_cri_tests::cri::v1::ContainerState;

#[test]
fn runc_pod_through_cri() {
    if !nacre_runtime::testing::root_prereqs("cri_runc::runc_pod_through_cri") {
        return;
    }
    let netns_before = cni_netns();
    let ctd = CriContainerd::start("runc").unwrap_or_else(|e| panic!("{e}"));
    let cri = ctd.client().unwrap();
    let (name, version) = cri.version().unwrap();
    eprintln!("CRI runtime: {name} {version}");

    let pod_cfg = pod_config(&ctd, "runc-pod", "runc-host");
    let pod = cri
        .run_pod_sandbox(&pod_cfg, "runc")
        .unwrap_or_else(|e| panic!("RunPodSandbox: {e}\n{}", ctd.log_tail(30)));
    let ip = cri.pod_ip(&pod).unwrap();
    let prefix = ctd.gateway.rsplit_once('.').unwrap().0;
    assert!(
        ip.starts_with(&format!("{prefix}.")),
        "pod IP {ip} not in {}",
        ctd.subnet
    );

    let web = container_config(
        "web",
        &["httpd", "-f", "-p", "8080", "-h", "/var/www"],
        vec![],
    );
    let c = run_container(&cri, &pod, &pod_cfg, &web);

    assert_eq!(exec_ok(&cri, &c, &["uname", "-r"]).trim(), host_release());
    assert_eq!(exec_ok(&cri, &c, &["hostname"]).trim(), "runc-host");
    let resolv = exec_ok(&cri, &c, &["cat", "/etc/resolv.conf"]);
    assert!(resolv.contains("nameserver 10.96.0.10"), "{resolv}");
    assert!(resolv.contains("search test.svc.cluster.local"), "{resolv}");
    let failed = cri.exec_sync(&c, &["sh", "-c", "exit 3"], 60).unwrap();
    assert_eq!(failed.exit_code, 3);
    check_exec_stream(&cri, &c);

    let body = http_get(&ip, 8080);
    assert!(body.contains("hello from a pod"), "{body}");

    let stats = cri.container_stats(&c).unwrap();
    assert_eq!(
        stats.attributes.as_ref().map(|a| a.id.as_str()),
        Some(c.as_str())
    );
    assert!(stats.memory.is_some(), "no memory stats: {stats:?}");
    assert_eq!(cri.list_containers(&pod).unwrap(), vec![c.clone()]);

    cri.stop_container(&c, 10).unwrap();
    let st = cri.container_status(&c).unwrap();
    assert_eq!(st.state, ContainerState::ContainerExited as i32);
    cri.remove_container(&c).unwrap();
    assert!(cri.list_containers(&pod).unwrap().is_empty());

    cri.stop_pod_sandbox(&pod).unwrap();
    cri.remove_pod_sandbox(&pod).unwrap();
    assert!(cri.pod_sandbox_status(&pod).is_err(), "sandbox still known");
    assert_eq!(
        cni_netns(),
        netns_before,
        "CNI network namespace left behind"
    );
    drop(cri);
    let bridge = ctd.bridge.clone();
    drop(ctd);
    let out = std::process::Command::new("ip")
        .args(["link", "show", &bridge])
        .output()
        .unwrap();
    assert!(!out.status.success(), "bridge {bridge} left behind");
}
