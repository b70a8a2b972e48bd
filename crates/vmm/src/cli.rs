//! The command line of `nacre-vmm`: the clap parser, which produces the
//! contract's [`VmmArgs`] (the runtime writes the same type with
//! [`VmmArgs::to_args`]), and what the binary does with them: the jail it
//! asks for, the VM to boot or restore, the [`Features`] it reports.

use std::path::PathBuf;

use clap::{CommandFactory, Parser};
use nacre_vmm_api::args;
use nacre_vmm_api::{CacheMode, Features, Request, SeccompMode, SharedDirValue, VmmArgs};

use crate::devices::virtio::net::{NetBackend, NetConfig};
use crate::jail::{BindKind, JailError, JailSpec};
use crate::{RestoreConfig, VmConfig, VsockConfig};

pub const EXIT_CODES: &str = "\
Exit codes:
  0    the guest shut down or reset (e.g. reboot), or `shutdown` on the API
  64   bad configuration (vcpus or memory out of range, malformed arguments,
       a --net MAC that is malformed, a --net fd that is not an open tap,
       --restore: --net devices that differ in count or MTU from the template's)
  65   --restore: the template is corrupt, incomplete, of another format or
       VMM version, or was made from another kernel or initrd than given
  66   kernel or initrd missing, unreadable or not a valid ELF, or a
       shared directory missing or not a directory
  69   /dev/kvm unavailable (missing or no permission)
  70   VMM or guest failure (KVM internal error, guest kernel panic, device failure)
  71   --jail: the jail could not be set up (namespaces, mounts, pivot_root,
       rlimits, credentials)
  75   the owner's end of --owner-fd was closed (the process that started the VM died)
  128+N  stopped by signal N (SIGINT 130, SIGTERM 143)

API socket: one JSON request per line, one JSON response per line:
  {\"op\":\"status\"} {\"op\":\"pause\"} {\"op\":\"resume\"} {\"op\":\"shutdown\"}
  {\"op\":\"snapshot\",\"dir\":\"PATH\"} (pauses; writes a template for --restore)";

/// Boots an uncompressed Linux vmlinux with an initrd on KVM.
#[derive(Debug, Parser)]
#[command(name = "nacre-vmm", version, after_help = EXIT_CODES)]
pub struct Cli {
    /// Uncompressed ELF kernel image (vmlinux). With --restore: the
    /// template must have been booted from this kernel.
    #[arg(long, value_name = "PATH", required_unless_present_any = ["restore", "features"])]
    pub kernel: Option<PathBuf>,
    /// Initrd (an uncompressed cpio archive boots fastest). With
    /// --restore: the template must have been booted with this initrd.
    #[arg(long, value_name = "PATH", required_unless_present_any = ["restore", "features"])]
    pub initrd: Option<PathBuf>,
    /// Restore the VM saved in this template directory (made with the
    /// `snapshot` API request) instead of booting. The VM's shape comes
    /// from the template; give the new VM's --vsock-uds, --api-socket,
    /// --serial-log, one --shared-dir per share of the template and one
    /// --net per network device of the template (in order, same MTU; the
    /// MAC may differ, the guest keeps the template's until told another).
    #[arg(long, value_name = "DIR", conflicts_with_all = ["cmdline", "vcpus", "memory_mib"])]
    pub restore: Option<PathBuf>,
    /// Extra kernel command-line arguments, appended to the VMM's own.
    #[arg(long, value_name = "ARGS", default_value = "")]
    pub cmdline: String,
    /// Number of vCPUs (1-32).
    #[arg(long, default_value_t = args::DEFAULT_VCPUS)]
    pub vcpus: u8,
    /// Guest memory in MiB.
    #[arg(long, value_name = "M", default_value_t = args::DEFAULT_MEMORY_MIB)]
    pub memory_mib: u64,
    /// Append the guest console (ttyS0) to this file.
    #[arg(long, value_name = "PATH")]
    pub serial_log: Option<PathBuf>,
    /// Also copy the guest console to stdout.
    #[arg(long)]
    pub serial_stdout: bool,
    /// Host-side Unix socket of the hybrid vsock device.
    #[arg(long, value_name = "PATH")]
    pub vsock_uds: Option<PathBuf>,
    /// Guest CID of the vsock device (needs --vsock-uds).
    #[arg(long, value_name = "CID", default_value_t = args::DEFAULT_VSOCK_CID, requires = "vsock_uds")]
    pub vsock_cid: u64,
    /// Share host directory PATH with the guest as virtio-fs tag TAG
    /// (1-36 bytes; the guest mounts it with `mount -t virtiofs TAG DIR`).
    /// `cache=` sets this share's guest data cache: auto (dropped when a
    /// file is opened again; the host may change files), always (kept
    /// across opens; only the guest changes files), never (direct I/O).
    /// Repeatable: one device each.
    #[arg(long = "shared-dir", value_name = "TAG=PATH[,cache=MODE]", value_parser = SharedDirValue::parse)]
    pub shared_dirs: Vec<SharedDirValue>,
    /// The guest data cache of a --shared-dir without `cache=`.
    #[arg(long, value_name = "MODE", default_value_t = CacheMode::Auto)]
    pub shared_dir_cache: CacheMode,
    /// A virtio-net device on a tap: `fd=N` is a tap descriptor inherited
    /// from the parent (opened with IFF_TAP|IFF_NO_PI|IFF_VNET_HDR, e.g. in
    /// a pod's network namespace), `tap=NAME` opens or creates a tap here
    /// (needs CAP_NET_ADMIN), `detached` has no host side (frames sent are
    /// dropped, none arrive: for a template's VM). `mac=` is the guest's
    /// address, `mtu=` is advertised to the guest. Repeatable (at most 4).
    #[arg(long = "net", value_name = "fd=N|tap=NAME|detached,mac=XX:XX:XX:XX:XX:XX[,mtu=M]", value_parser = NetConfig::parse)]
    pub nets: Vec<NetConfig>,
    /// Control socket (JSON lines; see below).
    #[arg(long, value_name = "PATH")]
    pub api_socket: Option<PathBuf>,
    /// Do not add the PVM host's kernel command-line workarounds.
    #[arg(long)]
    pub no_host_quirks: bool,
    /// The seccomp filter on the VMM's system calls: enforce (a call off
    /// the allow-list kills the VMM), log (the kernel logs it), off.
    #[arg(long, value_name = "MODE", env = args::SECCOMP_ENV, default_value_t = SeccompMode::Enforce)]
    pub seccomp: SeccompMode,
    /// Log level or filter (error, warn, info, debug, trace, or an
    /// env-filter directive).
    #[arg(long, value_name = "LEVEL", default_value = args::DEFAULT_LOG_LEVEL)]
    pub log_level: String,
    /// Stop writing the VMM's log (stderr) after this many bytes; the last
    /// line says so. Each call site also logs at most 10 messages a minute
    /// (the rest are counted) and each line is cut at 1 KiB.
    #[arg(long, value_name = "BYTES", default_value_t = args::DEFAULT_LOG_MAX_BYTES)]
    pub log_max_bytes: u64,
    /// The read end of a pipe whose write end the VM's owner keeps open
    /// and never writes: when the owner dies the VMM stops the VM (exit 75).
    #[arg(long, value_name = "FD")]
    pub owner_fd: Option<i32>,
    /// Run jailed, with DIR (created if missing) as the root: new mount,
    /// IPC, UTS (and network, unless `--net tap=`) namespaces; only the
    /// directories of the sockets and logs, the kernel, initrd, template
    /// and shares are reachable, at their own paths; no capabilities but
    /// the six virtio-fs needs with a share, else --jail-uid/--jail-gid.
    #[arg(long, value_name = "DIR")]
    pub jail: Option<PathBuf>,
    /// The uid of a jailed VMM without --shared-dir.
    #[arg(long, value_name = "UID", default_value_t = args::DEFAULT_JAIL_UID, requires = "jail")]
    pub jail_uid: u32,
    /// The gid of a jailed VMM without --shared-dir.
    #[arg(long, value_name = "GID", default_value_t = args::DEFAULT_JAIL_GID, requires = "jail")]
    pub jail_gid: u32,
    /// Print what this binary supports (options, `--shared-dir` keys,
    /// `--net` backends, API requests) as one JSON object, and exit.
    #[arg(long, exclusive = true)]
    pub features: bool,
}

impl From<Cli> for VmmArgs {
    fn from(cli: Cli) -> Self {
        let cache = cli.shared_dir_cache;
        Self {
            kernel: cli.kernel,
            initrd: cli.initrd,
            restore: cli.restore,
            cmdline: cli.cmdline,
            vcpus: cli.vcpus,
            memory_mib: cli.memory_mib,
            serial_log: cli.serial_log,
            serial_stdout: cli.serial_stdout,
            vsock_uds: cli.vsock_uds,
            vsock_cid: cli.vsock_cid,
            shared_dirs: cli
                .shared_dirs
                .into_iter()
                .map(|dir| dir.resolve(cache))
                .collect(),
            nets: cli.nets,
            api_socket: cli.api_socket,
            no_host_quirks: cli.no_host_quirks,
            seccomp: cli.seccomp,
            log_level: cli.log_level,
            log_max_bytes: cli.log_max_bytes,
            owner_fd: cli.owner_fd,
            jail: cli.jail,
            jail_uid: cli.jail_uid,
            jail_gid: cli.jail_gid,
        }
    }
}

/// What the command line asks for.
#[derive(Debug)]
pub enum Invocation {
    /// Boot or restore a VM.
    Run(Box<VmmArgs>),
    /// `--features`: print [`features`] and exit.
    Features,
}

/// Parses `argv` (program name first) as `nacre-vmm` does.
pub fn parse_from<I, T>(argv: I) -> Result<Invocation, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let cli = Cli::try_parse_from(argv)?;
    Ok(if cli.features {
        Invocation::Features
    } else {
        Invocation::Run(Box::new(cli.into()))
    })
}

/// What this binary supports, from its own parser.
pub fn features() -> Features {
    let command = Cli::command();
    let options = command
        .get_arguments()
        .filter_map(|a| a.get_long())
        .filter(|long| *long != "features")
        .map(str::to_string)
        .collect();
    let api_ops = [
        Request::Status,
        Request::Pause,
        Request::Resume,
        Request::Shutdown,
        Request::Snapshot {
            dir: PathBuf::new(),
        },
    ]
    .iter()
    .map(|r| r.op().to_string())
    .collect();
    Features {
        version: env!("CARGO_PKG_VERSION").to_string(),
        options,
        shared_dir_keys: vec!["cache".to_string()],
        net_backends: ["fd", "tap", "detached"].map(str::to_string).to_vec(),
        api_ops,
    }
}

/// The jail `--jail` asks for: every path the VMM is given stays valid
/// inside (made absolute in `args`, bound at the same path).
pub fn jail_spec(args: &mut VmmArgs) -> Result<Option<JailSpec>, JailError> {
    let Some(dir) = &args.jail else {
        return Ok(None);
    };
    let mut spec = JailSpec::new(std::path::absolute(dir).unwrap_or_else(|_| dir.clone()));
    spec.uid = args.jail_uid;
    spec.gid = args.jail_gid;
    for path in [
        &mut args.kernel,
        &mut args.initrd,
        &mut args.restore,
        &mut args.serial_log,
        &mut args.vsock_uds,
        &mut args.api_socket,
    ]
    .into_iter()
    .flatten()
    {
        if let Ok(abs) = std::path::absolute(&*path) {
            *path = abs;
        }
    }
    for path in [&args.kernel, &args.initrd, &args.restore]
        .into_iter()
        .flatten()
    {
        spec.bind(path, BindKind::ReadOnly)?;
    }
    // The directories the VMM creates files in (the runtime's run
    // directory; a snapshot's directory must be inside it too).
    for path in [&args.serial_log, &args.vsock_uds, &args.api_socket]
        .into_iter()
        .flatten()
    {
        if let Some(parent) = path.parent() {
            spec.bind(parent, BindKind::ReadWrite)?;
        }
    }
    for dir in &mut args.shared_dirs {
        if let Ok(abs) = std::path::absolute(&dir.path) {
            dir.path = abs;
        }
        spec.bind(&dir.path, BindKind::Share)?;
        spec.share = true;
    }
    spec.tap_by_name = args
        .nets
        .iter()
        .any(|n| matches!(n.backend, NetBackend::TapName(_)));
    Ok(Some(spec))
}

/// The restore of the template in `dir` that `args` asks for.
pub fn restore_config(args: &VmmArgs, dir: PathBuf) -> RestoreConfig {
    RestoreConfig {
        dir,
        vsock_uds: args.vsock_uds.clone(),
        api_socket: args.api_socket.clone(),
        serial_log: args.serial_log.clone(),
        serial_stdout: args.serial_stdout,
        shared_dirs: args.shared_dirs.clone(),
        kernel: args.kernel.clone(),
        initrd: args.initrd.clone(),
        nets: args.nets.clone(),
    }
}

/// The VM `args` asks to boot.
pub fn vm_config(args: VmmArgs) -> VmConfig {
    // clap requires a kernel unless --restore is given.
    let mut config = VmConfig::new(args.kernel.unwrap_or_default());
    config.initrd = args.initrd;
    config.cmdline_extra = args.cmdline;
    config.vcpus = args.vcpus;
    config.memory_mib = args.memory_mib;
    config.serial_log = args.serial_log;
    config.serial_stdout = args.serial_stdout;
    config.vsock = args.vsock_uds.map(|uds_path| VsockConfig {
        cid: args.vsock_cid,
        uds_path,
    });
    config.api_socket = args.api_socket;
    config.shared_dirs = args.shared_dirs;
    config.nets = args.nets;
    config.host_quirks = !args.no_host_quirks;
    config
}
