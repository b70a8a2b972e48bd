//! VM tier, issue 16: what a pod's containers share, as kubelet asks for it
//! and as runc gives it. One pod per runtime on one containerd, with
//! pod-level sysctls (IPC and network ones, as `securityContext.sysctls`
//! sends them) and a shared process namespace (`shareProcessNamespace`);
//! nacre must show its app container what runc shows.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

mod common;

use std::collections::HashMap;

use common::vm::*;
use common::*;
use nacre_cri_tests::containerd::CriContainerd;
use nacre_cri_tests::cri::v1::{
    LinuxContainerConfig, LinuxContainerSecurityContext, LinuxPodSandboxConfig,
    LinuxSandboxSecurityContext, NamespaceMode, NamespaceOption,
};
use nacre_cri_tests::cri::CriClient;

/// Pod sysctls: two in the IPC namespace, one in the network namespace;
/// none is the kernel's default.
const SYSCTLS: [(&str, &str); 3] = [
    ("kernel.shm_rmid_forced", "1"),
    ("kernel.msgmax", "4096"),
    ("net.ipv4.ip_unprivileged_port_start", "0"),
];

fn shared_pid() -> NamespaceOption {
    NamespaceOption {
        pid: NamespaceMode::Pod as i32,
        ..Default::default()
    }
}

/// What the pod's app container sees, for `handler`'s pod: the sysctls,
/// its pid 1's command line, its host name; the pod is removed after.
fn what_the_app_sees(ctd: &CriContainerd, cri: &CriClient, handler: &str) -> Vec<String> {
    let name = format!("ns-{handler}");
    let mut pod_cfg = pod_config(ctd, &name, &format!("{name}-host"));
    pod_cfg.linux = Some(LinuxPodSandboxConfig {
        sysctls: SYSCTLS
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<HashMap<_, _>>(),
        security_context: Some(LinuxSandboxSecurityContext {
            namespace_options: Some(shared_pid()),
            ..Default::default()
        }),
        ..Default::default()
    });
    let pod = cri
        .run_pod_sandbox(&pod_cfg, handler)
        .unwrap_or_else(|e| panic!("RunPodSandbox({handler}): {e}\n{}", ctd.log_tail(40)));
    let mut cfg = container_config("app", &["sleep", "3600"], vec![]);
    cfg.linux = Some(LinuxContainerConfig {
        security_context: Some(LinuxContainerSecurityContext {
            namespace_options: Some(shared_pid()),
            ..Default::default()
        }),
        ..Default::default()
    });
    let app = run_container(cri, &pod, &pod_cfg, &cfg);
    let mut seen: Vec<String> = SYSCTLS
        .iter()
        .map(|(key, _)| {
            let file = format!("/proc/sys/{}", key.replace('.', "/"));
            format!("{key}={}", exec_ok(cri, &app, &["cat", &file]).trim())
        })
        .collect();
    // The pod's pid 1 is its sandbox (pause) process: the test's pause
    // image runs `sh -c "trap 'exit 0' TERM INT; while ..."`.
    let init = exec_ok(cri, &app, &["cat", "/proc/1/cmdline"]).replace('\0', " ");
    seen.push(format!("pid 1 is the pause: {}", init.contains("trap")));
    // The app's own `sleep` is visible too, not as pid 1.
    let pids = exec_ok(cri, &app, &["sh", "-c", "pidof sleep | wc -w"]);
    seen.push(format!("sleeps visible: {}", pids.trim() != "0"));
    seen.push(format!(
        "hostname={}",
        exec_ok(cri, &app, &["hostname"]).trim()
    ));
    cri.stop_pod_sandbox(&pod).unwrap();
    cri.remove_pod_sandbox(&pod).unwrap();
    seen
}

#[test]
fn pod_sysctls_and_a_shared_pid_namespace_as_under_runc() {
    let test = "vm_cri_pod_ns::sysctls_pid";
    let Some(ctd) = setup(test) else { return };
    let cri = client(&ctd);
    let runc = what_the_app_sees(&ctd, &cri, "runc");
    let expected: Vec<String> = SYSCTLS
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .chain([
            "pid 1 is the pause: true".to_string(),
            "sleeps visible: true".to_string(),
            "hostname=ns-runc-host".to_string(),
        ])
        .collect();
    assert_eq!(runc, expected, "runc (the reference)");
    let nacre = what_the_app_sees(&ctd, &cri, "nacre");
    let expected: Vec<String> = expected
        .into_iter()
        .map(|l| l.replace("ns-runc-host", "ns-nacre-host"))
        .collect();
    assert_eq!(nacre, expected, "nacre, next to runc\n{}", ctd.log_tail(30));
    let mounts_left = nacre_runtime::container::mounts::mounts_under(&shim_root());
    assert!(mounts_left.is_empty(), "mounts left: {mounts_left:?}");
}
