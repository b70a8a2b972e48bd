//! VM tier: boot a real guest with nacre-vmm, talk to its agent over the
//! hybrid vsock, shut it down, and check nothing is left behind.

use std::path::Path;
use std::time::Duration;

use nacre_runtime::agent::HealthStatus;
use nacre_runtime::host;
use nacre_runtime::sandbox::{default_boot_timeout, Sandbox};
use nacre_runtime::testing::vm_prereqs;
use nacre_runtime::vm::VmSpec;

#[test]
fn boot_health_details_shutdown_leaves_nothing() {
    let Some(p) = vm_prereqs("boot_health_details_shutdown_leaves_nothing") else {
        return;
    };
    let dir = std::env::temp_dir().join(format!("nacre-vm-boot-{}", std::process::id()));
    let spec = VmSpec {
        memory_mib: 256,
        ..VmSpec::new(p.image.clone())
    };
    let sandbox = Sandbox::boot(&p.vmm, &spec, &dir, default_boot_timeout())
        .unwrap_or_else(|e| panic!("boot: {e}"));
    let pid = sandbox.vm().pid();
    eprintln!(
        "agent answered {:.1} s after the VMM started",
        sandbox.boot_time().as_secs_f64()
    );

    assert_eq!(sandbox.agent().health().unwrap(), HealthStatus::Serving);
    let details = sandbox.agent().guest_details().unwrap();
    eprintln!("guest details: {details:?}");
    assert!(
        details.kernel_release.starts_with("6.1."),
        "guest kernel {} is not 6.1.x",
        details.kernel_release
    );
    assert_ne!(details.kernel_release, host::kernel_release());
    assert_eq!(details.cpus, 1);
    assert!(sandbox.vm().console().contains("nacre-agent: ready"));

    let status = sandbox.vm().api(&nacre_vmm_api::Request::Status).unwrap();
    assert!(status.ok, "{status:?}");
    assert_eq!(
        status.state,
        Some(nacre_vmm_api::State::Running),
        "{status:?}"
    );

    // The VMM runs under its seccomp filter (unless turned off here).
    if std::env::var("NACRE_VMM_SECCOMP").as_deref() != Ok("off") {
        let proc_status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        assert!(
            proc_status.contains("Seccomp:\t2") && proc_status.contains("NoNewPrivs:\t1"),
            "nacre-vmm has no seccomp filter:\n{proc_status}"
        );
    }

    // Issue 14: the real VMM runs jailed. Without a share: uid 65534 and
    // no capability, in a mount namespace and root of its own.
    if std::env::var("NACRE_VMM_JAIL").as_deref() != Ok("0") {
        let proc_status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let field = |name: &str| {
            proc_status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .unwrap_or_default()
                .trim()
                .to_string()
        };
        assert_eq!(field("Uid:"), "65534\t65534\t65534\t65534", "{proc_status}");
        assert_eq!(field("CapEff:"), "0000000000000000", "{proc_status}");
        assert_eq!(field("CapBnd:"), "0000000000000000", "{proc_status}");
        let ns = |p: &str| std::fs::read_link(p).unwrap();
        assert_ne!(ns(&format!("/proc/{pid}/ns/mnt")), ns("/proc/self/ns/mnt"));
        let root: Vec<_> = std::fs::read_dir(format!("/proc/{pid}/root"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(
            !root.iter().any(|n| n == "etc" || n == "usr"),
            "the VMM sees the host's root: {root:?}"
        );
    }

    let leftovers = sandbox
        .shutdown(Duration::from_secs(120))
        .unwrap_or_else(|e| panic!("shutdown: {e}"));

    assert!(leftovers.is_empty(), "the VMM left {leftovers:?} behind");
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "VMM still running"
    );
    assert!(!dir.exists(), "run directory left behind");
}
