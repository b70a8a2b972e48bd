//! `nacre-vmm`: boots one Linux guest on KVM. A thin shell over the
//! `nacre_vmm` library: parse arguments, set up logging, run, map the
//! result to an exit code.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use nacre_vmm::devices::virtio::fs::{CacheMode, SharedDir};
use nacre_vmm::devices::virtio::net::{NetBackend, NetConfig};
use nacre_vmm::jail::{BindKind, JailError, JailSpec};
use nacre_vmm::logging::LogLimits;
use nacre_vmm::seccomp::SeccompMode;
use nacre_vmm::{exit_code, exit_code_for, RestoreConfig, VmConfig, VsockConfig};

const EXIT_CODES: &str = "\
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
struct Cli {
    /// Uncompressed ELF kernel image (vmlinux). With --restore: the
    /// template must have been booted from this kernel.
    #[arg(long, value_name = "PATH", required_unless_present = "restore")]
    kernel: Option<PathBuf>,
    /// Initrd (an uncompressed cpio archive boots fastest). With
    /// --restore: the template must have been booted with this initrd.
    #[arg(long, value_name = "PATH", required_unless_present = "restore")]
    initrd: Option<PathBuf>,
    /// Restore the VM saved in this template directory (made with the
    /// `snapshot` API request) instead of booting. The VM's shape comes
    /// from the template; give the new VM's --vsock-uds, --api-socket,
    /// --serial-log, one --shared-dir per share of the template and one
    /// --net per network device of the template (in order, same MTU; the
    /// MAC may differ, the guest keeps the template's until told another).
    #[arg(long, value_name = "DIR", conflicts_with_all = ["cmdline", "vcpus", "memory_mib"])]
    restore: Option<PathBuf>,
    /// Extra kernel command-line arguments, appended to the VMM's own.
    #[arg(long, value_name = "ARGS", default_value = "")]
    cmdline: String,
    /// Number of vCPUs (1-32).
    #[arg(long, default_value_t = 1)]
    vcpus: u8,
    /// Guest memory in MiB.
    #[arg(long, value_name = "M", default_value_t = 256)]
    memory_mib: u64,
    /// Append the guest console (ttyS0) to this file.
    #[arg(long, value_name = "PATH")]
    serial_log: Option<PathBuf>,
    /// Also copy the guest console to stdout.
    #[arg(long)]
    serial_stdout: bool,
    /// Host-side Unix socket of the hybrid vsock device.
    #[arg(long, value_name = "PATH")]
    vsock_uds: Option<PathBuf>,
    /// Guest CID of the vsock device (needs --vsock-uds).
    #[arg(long, value_name = "CID", default_value_t = 3, requires = "vsock_uds")]
    vsock_cid: u64,
    /// Share host directory PATH with the guest as virtio-fs tag TAG
    /// (1-36 bytes; the guest mounts it with `mount -t virtiofs TAG DIR`).
    /// Repeatable: one device each.
    #[arg(long = "shared-dir", value_name = "TAG=PATH", value_parser = SharedDir::parse)]
    shared_dirs: Vec<SharedDir>,
    /// Guest data cache of the --shared-dir devices: auto (dropped when a
    /// file is opened again; the host may change files), always (kept
    /// across opens; only the guest changes files), never (direct I/O).
    #[arg(long, value_name = "MODE", default_value_t = CacheMode::Auto)]
    shared_dir_cache: CacheMode,
    /// A virtio-net device on a tap: `fd=N` is a tap descriptor inherited
    /// from the parent (opened with IFF_TAP|IFF_NO_PI|IFF_VNET_HDR, e.g. in
    /// a pod's network namespace), `tap=NAME` opens or creates a tap here
    /// (needs CAP_NET_ADMIN), `detached` has no host side (frames sent are
    /// dropped, none arrive: for a template's VM). `mac=` is the guest's
    /// address, `mtu=` is advertised to the guest. Repeatable (at most 4).
    #[arg(long = "net", value_name = "fd=N|tap=NAME|detached,mac=XX:XX:XX:XX:XX:XX[,mtu=M]", value_parser = NetConfig::parse)]
    nets: Vec<NetConfig>,
    /// Control socket (JSON lines; see below).
    #[arg(long, value_name = "PATH")]
    api_socket: Option<PathBuf>,
    /// Do not add the PVM host's kernel command-line workarounds.
    #[arg(long)]
    no_host_quirks: bool,
    /// The seccomp filter on the VMM's system calls: enforce (a call off
    /// the allow-list kills the VMM), log (the kernel logs it), off.
    #[arg(long, value_name = "MODE", env = "NACRE_VMM_SECCOMP", default_value_t = SeccompMode::Enforce)]
    seccomp: SeccompMode,
    /// Log level or filter (error, warn, info, debug, trace, or an
    /// env-filter directive).
    #[arg(long, value_name = "LEVEL", default_value = "info")]
    log_level: String,
    /// Stop writing the VMM's log (stderr) after this many bytes; the last
    /// line says so. Each call site also logs at most 10 messages a minute
    /// (the rest are counted) and each line is cut at 1 KiB.
    #[arg(long, value_name = "BYTES", default_value_t = nacre_vmm::logging::DEFAULT_MAX_BYTES)]
    log_max_bytes: u64,
    /// The read end of a pipe whose write end the VM's owner keeps open
    /// and never writes: when the owner dies the VMM stops the VM (exit 75).
    #[arg(long, value_name = "FD")]
    owner_fd: Option<i32>,
    /// Run jailed, with DIR (created if missing) as the root: new mount,
    /// IPC, UTS (and network, unless `--net tap=`) namespaces; only the
    /// directories of the sockets and logs, the kernel, initrd, template
    /// and shares are reachable, at their own paths; no capabilities but
    /// the six virtio-fs needs with a share, else --jail-uid/--jail-gid.
    #[arg(long, value_name = "DIR")]
    jail: Option<PathBuf>,
    /// The uid of a jailed VMM without --shared-dir.
    #[arg(long, value_name = "UID", default_value_t = nacre_vmm::jail::DEFAULT_UID, requires = "jail")]
    jail_uid: u32,
    /// The gid of a jailed VMM without --shared-dir.
    #[arg(long, value_name = "GID", default_value_t = nacre_vmm::jail::DEFAULT_GID, requires = "jail")]
    jail_gid: u32,
}

impl Cli {
    /// The jail `--jail` asks for: every path the VMM is given stays
    /// valid inside (made absolute here, bound at the same path).
    fn jail_spec(&mut self) -> Result<Option<JailSpec>, JailError> {
        let Some(dir) = &self.jail else {
            return Ok(None);
        };
        let mut spec = JailSpec::new(std::path::absolute(dir).unwrap_or_else(|_| dir.clone()));
        spec.uid = self.jail_uid;
        spec.gid = self.jail_gid;
        for path in [
            &mut self.kernel,
            &mut self.initrd,
            &mut self.restore,
            &mut self.serial_log,
            &mut self.vsock_uds,
            &mut self.api_socket,
        ]
        .into_iter()
        .flatten()
        {
            if let Ok(abs) = std::path::absolute(&*path) {
                *path = abs;
            }
        }
        for path in [&self.kernel, &self.initrd, &self.restore]
            .into_iter()
            .flatten()
        {
            spec.bind(path, BindKind::ReadOnly)?;
        }
        // The directories the VMM creates files in (the runtime's run
        // directory; a snapshot's directory must be inside it too).
        for path in [&self.serial_log, &self.vsock_uds, &self.api_socket]
            .into_iter()
            .flatten()
        {
            if let Some(parent) = path.parent() {
                spec.bind(parent, BindKind::ReadWrite)?;
            }
        }
        for dir in &mut self.shared_dirs {
            if let Ok(abs) = std::path::absolute(&dir.path) {
                dir.path = abs;
            }
            spec.bind(&dir.path, BindKind::Share)?;
            spec.share = true;
        }
        spec.tap_by_name = self
            .nets
            .iter()
            .any(|n| matches!(n.backend, NetBackend::TapName(_)));
        Ok(Some(spec))
    }

    fn restore_config(&self, dir: PathBuf) -> RestoreConfig {
        let cache = self.shared_dir_cache;
        RestoreConfig {
            dir,
            vsock_uds: self.vsock_uds.clone(),
            api_socket: self.api_socket.clone(),
            serial_log: self.serial_log.clone(),
            serial_stdout: self.serial_stdout,
            shared_dirs: self
                .shared_dirs
                .iter()
                .map(|dir| SharedDir {
                    cache,
                    ..dir.clone()
                })
                .collect(),
            kernel: self.kernel.clone(),
            initrd: self.initrd.clone(),
            nets: self.nets.clone(),
        }
    }

    fn into_config(self) -> VmConfig {
        // clap requires both unless --restore is given.
        let mut config = VmConfig::new(self.kernel.unwrap_or_default());
        config.initrd = self.initrd;
        config.cmdline_extra = self.cmdline;
        config.vcpus = self.vcpus;
        config.memory_mib = self.memory_mib;
        config.serial_log = self.serial_log;
        config.serial_stdout = self.serial_stdout;
        config.vsock = self.vsock_uds.map(|uds_path| VsockConfig {
            cid: self.vsock_cid,
            uds_path,
        });
        config.api_socket = self.api_socket;
        let cache = self.shared_dir_cache;
        config.shared_dirs = self
            .shared_dirs
            .into_iter()
            .map(|dir| SharedDir { cache, ..dir })
            .collect();
        config.nets = self.nets;
        config.host_quirks = !self.no_host_quirks;
        config
    }
}

fn code(c: i32) -> ExitCode {
    ExitCode::from(u8::try_from(c).unwrap_or(u8::MAX))
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                code(exit_code::CONFIG)
            } else {
                // --help, --version
                code(exit_code::OK)
            };
        }
    };
    let limits = LogLimits {
        max_bytes: cli.log_max_bytes,
        ..LogLimits::default()
    };
    let log = match nacre_vmm::logging::init(&cli.log_level, &limits) {
        Ok(log) => log,
        Err(e) => {
            eprintln!("nacre-vmm: --log-level: {e}");
            return code(exit_code::CONFIG);
        }
    };
    let c = run(cli);
    log.flush();
    c
}

fn run(mut cli: Cli) -> ExitCode {
    // First: nothing the guest controls is read before the jail holds.
    match cli.jail_spec() {
        Ok(None) => {}
        Ok(Some(spec)) => {
            if let Err(e) = nacre_vmm::jail::enter(&spec) {
                eprintln!("nacre-vmm: {}", chain(&e));
                return code(exit_code::JAIL);
            }
        }
        Err(e) => {
            eprintln!("nacre-vmm: {}", chain(&e));
            return code(exit_code::JAIL);
        }
    }
    if let Err(e) = nacre_vmm::seccomp::install(cli.seccomp) {
        eprintln!("nacre-vmm: {e}");
        return code(exit_code::FAILURE);
    }
    if let Some(fd) = cli.owner_fd {
        if let Err(e) = nacre_vmm::owner::watch(fd) {
            eprintln!("nacre-vmm: --owner-fd {fd}: {e}");
            return code(exit_code::CONFIG);
        }
    }
    let result = match cli.restore.clone() {
        Some(dir) => nacre_vmm::restore(&cli.restore_config(dir)),
        None => nacre_vmm::run(&cli.into_config()),
    };
    match result {
        Ok(event) => {
            let c = exit_code_for(&event);
            tracing::info!(?event, exit_code = c, "nacre-vmm exiting");
            code(c)
        }
        Err(e) => {
            eprintln!("nacre-vmm: {}", error_chain(&e));
            code(e.exit_code())
        }
    }
}

/// The error with its sources, as one line.
fn error_chain(e: &nacre_vmm::VmmError) -> String {
    chain(e)
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        source = s.source();
    }
    text
}
