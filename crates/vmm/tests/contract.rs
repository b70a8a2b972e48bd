//! The runtime↔VMM contract (`nacre-vmm-api`) against the VMM's real
//! parser: what the runtime writes is what the VMM reads. No KVM needed.

#![allow(clippy::unwrap_used, reason = "tests")]

mod common;

use std::ffi::OsString;
use std::process::Command;

use nacre_vmm::cli::{self, Invocation};
use nacre_vmm_api::args::SECCOMP_ENV;
use nacre_vmm_api::{
    CacheMode, Features, MacAddr, NetArg, NetBackend, SeccompMode, SharedDir, VmmArgs,
};

/// `args` as the VMM's parser reads them from `args.to_args()`.
fn reparsed(args: &VmmArgs) -> VmmArgs {
    let argv: Vec<OsString> = std::iter::once(OsString::from("nacre-vmm"))
        .chain(args.to_args())
        .collect();
    match cli::parse_from(&argv) {
        Ok(Invocation::Run(parsed)) => *parsed,
        Ok(Invocation::Features) => panic!("{argv:?} parsed as --features"),
        Err(e) => panic!("{argv:?}: {e}"),
    }
}

/// What an unset `--seccomp` becomes in this environment.
fn ambient_seccomp() -> SeccompMode {
    std::env::var(SECCOMP_ENV)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_default()
}

fn every_option() -> VmmArgs {
    VmmArgs {
        kernel: Some("/k/vmlinux".into()),
        initrd: Some("/k/initrd".into()),
        restore: None,
        cmdline: "quiet nacre.hostname=pod1".into(),
        vcpus: 4,
        memory_mib: 3072,
        serial_log: Some("/run/vm/console.log".into()),
        serial_stdout: true,
        vsock_uds: Some("/run/vm/vsock.sock".into()),
        vsock_cid: 42,
        shared_dirs: vec![
            SharedDir::new("nacre", "/run/vm/shared"),
            SharedDir {
                cache: CacheMode::Always,
                ..SharedDir::new("rootfs", "/run/vm/root=fs")
            },
            SharedDir {
                cache: CacheMode::Never,
                ..SharedDir::new("odd", "/run/vm/a,cache=auto")
            },
        ],
        nets: vec![
            NetArg {
                backend: NetBackend::Fd(7),
                mac: MacAddr([0x0a, 0x58, 0x0a, 0x58, 0, 5]),
                mtu: Some(1450),
            },
            NetArg {
                backend: NetBackend::TapName("tap1".into()),
                mac: MacAddr([2, 0, 0, 0, 0, 2]),
                mtu: None,
            },
            NetArg {
                backend: NetBackend::Detached,
                mac: MacAddr([2, 0x6e, 0x61, 0x63, 0, 0]),
                mtu: Some(9000),
            },
        ],
        api_socket: Some("/run/vm/api.sock".into()),
        no_host_quirks: true,
        seccomp: SeccompMode::Log,
        log_level: "debug".into(),
        log_max_bytes: 4096,
        owner_fd: Some(9),
        jail: Some("/run/vm/jail".into()),
        jail_uid: 1000,
        jail_gid: 1001,
    }
}

#[test]
fn every_option_round_trips_through_the_vmm_parser() {
    let args = every_option();
    assert_eq!(reparsed(&args), args);
    // Restore takes the paths, shares and nets, not the shape.
    let restore = VmmArgs {
        restore: Some("/var/lib/nacre/templates/t".into()),
        cmdline: String::new(),
        vcpus: VmmArgs::default().vcpus,
        memory_mib: VmmArgs::default().memory_mib,
        ..every_option()
    };
    assert_eq!(reparsed(&restore), restore);
}

#[test]
fn the_minimum_round_trips() {
    let args = VmmArgs {
        seccomp: ambient_seccomp(),
        ..VmmArgs::boot("/k/vmlinux", "/k/initrd")
    };
    assert_eq!(reparsed(&args), args);
    let restore = VmmArgs {
        seccomp: ambient_seccomp(),
        ..VmmArgs::restore("/t", "/k/vmlinux", "/k/initrd")
    };
    assert_eq!(reparsed(&restore), restore);
}

#[test]
fn the_global_cache_flag_is_the_default_per_share() {
    let argv = [
        "nacre-vmm",
        "--kernel",
        "/k",
        "--initrd",
        "/i",
        "--shared-dir-cache",
        "never",
        "--shared-dir",
        "a=/a",
        "--shared-dir",
        "b=/b,cache=always",
    ];
    let Ok(Invocation::Run(args)) = cli::parse_from(argv) else {
        panic!("{argv:?} did not parse");
    };
    let caches: Vec<_> = args.shared_dirs.iter().map(|d| d.cache).collect();
    assert_eq!(caches, [CacheMode::Never, CacheMode::Always]);
}

#[test]
fn features_name_what_the_runtime_needs() {
    let out = Command::new(common::vmm_bin())
        .arg("--features")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let json = String::from_utf8_lossy(&out.stdout);
    let features = Features::parse(&json).unwrap();
    assert_eq!(features, cli::features());
    assert_eq!(features.version, env!("CARGO_PKG_VERSION"));
    assert!(
        features.missing_for_runtime().is_empty(),
        "{:?}",
        features.missing_for_runtime()
    );
    assert!(features.per_share_cache());
    for option in &features.options {
        assert!(!option.is_empty() && !option.starts_with('-'), "{option:?}");
    }
    for op in ["status", "pause", "resume", "shutdown", "snapshot"] {
        assert!(features.api_ops.iter().any(|o| o == op), "{op}");
    }
}
