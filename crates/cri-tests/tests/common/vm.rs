//! The VM tier's private containerd: the shim built next to the tests,
//! the guest image, templates as the caller keeps them.

use std::time::Duration;

use nacre_cri_tests::containerd::{target_bin_dir, CriContainerd};
use nacre_cri_tests::cri::CriClient;

pub const SHIM: &str = "containerd-shim-nacre-v2";

/// The shims' sandbox directories of this test process: leftovers are
/// checked there, not among other users' sandboxes under /run/nacre-shim.
pub fn shim_root() -> std::path::PathBuf {
    std::path::PathBuf::from(format!("/run/nacre-shim-cri-{}", std::process::id()))
}

/// The private containerd with the guest image for the shim, or `None`
/// (skipped outside CI) when a prerequisite lacks.
pub fn setup(test: &str) -> Option<CriContainerd> {
    setup_with(test, Vec::new())
}

/// [`setup`] with `extra` in containerd's environment (and so its shims').
pub fn setup_with(test: &str, extra: Vec<(String, String)>) -> Option<CriContainerd> {
    if !nacre_runtime::testing::root_prereqs(test) {
        return None;
    }
    let prereqs = nacre_runtime::testing::vm_prereqs(test)?;
    let shim = target_bin_dir().map(|d| d.join(SHIM));
    if !shim.as_ref().is_some_and(|s| s.exists()) {
        let why = format!("{SHIM} is not built next to the tests ({shim:?}); build the workspace");
        assert!(
            !nacre_runtime::testing::vm_tests_required(),
            "{test}: {why}"
        );
        eprintln!("SKIPPED VM test {test}: {why}");
        return None;
    }
    let env = vec![
        (
            "NACRE_KERNEL".into(),
            prereqs.image.kernel.display().to_string(),
        ),
        (
            "NACRE_INITRD".into(),
            prereqs.image.initrd.display().to_string(),
        ),
        ("NACRE_VMM".into(), prereqs.vmm.display().to_string()),
        ("NACRE_SHIM_ROOT".into(), shim_root().display().to_string()),
    ];
    // Pods start from VM templates (on by default) kept where the caller
    // keeps them.
    let mut env = env;
    for key in ["NACRE_TEMPLATES", "NACRE_TEMPLATE_DIR"] {
        if let Ok(value) = std::env::var(key) {
            env.push((key.into(), value));
        }
    }
    env.extend(extra);
    Some(CriContainerd::start_with_env(test, env).unwrap_or_else(|e| panic!("{e}")))
}

pub fn client(ctd: &CriContainerd) -> CriClient {
    let mut cri = ctd.client().unwrap();
    // A guest boot takes 30-200 s on a loaded host with emulated kernel mode.
    cri.timeout = Duration::from_secs(600);
    cri
}

/// With templates on, the nacre pod's VM was restored from one (made by
/// this start if it did not exist), network device included.
pub fn assert_restored_from_a_template(ctd: &CriContainerd) {
    let log = ctd.log_tail(usize::MAX);
    // Boot and restore times, for the record.
    for line in log
        .lines()
        .filter(|l| l.contains("sandbox VM ready") || l.contains("template created"))
    {
        eprintln!("{line}");
    }
    if nacre_runtime::template::disabled_by_env() {
        return;
    }
    assert!(
        log.contains("sandbox VM ready (restored from a template)"),
        "the pod's VM was not restored from a template:\n{}",
        ctd.log_tail(60)
    );
}
