//! The exit codes of `nacre-vmm` (sysexits.h values where one fits).
//!
//! | code | meaning                                                         |
//! |------|-----------------------------------------------------------------|
//! | 0    | the guest shut down or reset, or `shutdown` came on the API     |
//! | 64   | bad configuration (vcpus, memory, paths, arguments)             |
//! | 65   | template unusable: corrupt, incomplete, other format or VMM     |
//! |      | version, other kernel or initrd (`--restore`)                   |
//! | 66   | kernel or initrd missing, unreadable or not a valid ELF; a      |
//! |      | shared directory missing or not a directory                     |
//! | 69   | `/dev/kvm` unavailable (missing, no permission, no capability)  |
//! | 70   | VMM or guest failure                                            |
//! | 71   | `--jail` could not be set up                                    |
//! | 75   | the owner's end of `--owner-fd` was closed                      |
//! | 128+N| stopped by signal N (SIGTERM: 143, SIGINT: 130)                 |

/// The guest stopped cleanly.
pub const OK: i32 = 0;
/// EX_USAGE: bad configuration.
pub const CONFIG: i32 = 64;
/// EX_DATAERR: a template that is corrupt, incomplete, of another
/// format or VMM version, or made from another kernel or initrd.
pub const TEMPLATE: i32 = 65;
/// EX_NOINPUT: kernel or initrd unusable.
pub const NO_INPUT: i32 = 66;
/// EX_UNAVAILABLE: /dev/kvm unavailable.
pub const KVM_UNAVAILABLE: i32 = 69;
/// EX_SOFTWARE: VMM or guest failure.
pub const FAILURE: i32 = 70;
/// EX_OSERR: the jail (`--jail`) could not be set up: namespaces,
/// mounts, pivot_root, rlimits or the credential drop failed.
pub const JAIL: i32 = 71;
/// EX_TEMPFAIL: the process that owns the VM (`--owner-fd`) is gone.
pub const OWNER_GONE: i32 = 75;
/// Added to the signal number for exits on SIGTERM/SIGINT.
pub const SIGNAL_BASE: i32 = 128;
