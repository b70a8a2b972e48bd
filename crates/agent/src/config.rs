//! The agent's settings: from the kernel command line when it runs as
//! PID 1, from its own arguments otherwise. Parsed by hand (no clap: the
//! binary's size matters).

use std::fmt;
use std::str::FromStr;

use nacre_protocol::AGENT_VSOCK_PORT;

/// Where the ttRPC server listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    /// A vsock port (`vsock://CID:PORT`; CID -1 is VMADDR_CID_ANY).
    Vsock {
        /// Context id to bind, `u32::MAX` for any.
        cid: u32,
        /// Port to bind.
        port: u32,
    },
    /// A Unix socket path (`unix:///path`), for tests on the host.
    Unix(String),
}

impl Default for ListenAddr {
    fn default() -> Self {
        ListenAddr::Vsock {
            cid: libc::VMADDR_CID_ANY,
            port: AGENT_VSOCK_PORT,
        }
    }
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenAddr::Vsock { cid, port } if *cid == libc::VMADDR_CID_ANY => {
                write!(f, "vsock://-1:{port}")
            }
            ListenAddr::Vsock { cid, port } => write!(f, "vsock://{cid}:{port}"),
            ListenAddr::Unix(path) => write!(f, "unix://{path}"),
        }
    }
}

/// A malformed setting.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// The listen address is neither `unix://PATH` nor `vsock://CID:PORT`.
    #[error("bad listen address {0:?}: expected unix:///path or vsock://CID:PORT")]
    BadAddress(String),
    /// The log level is not one of error, warn, info, debug, trace.
    #[error("bad log level {0:?}: expected error, warn, info, debug or trace")]
    BadLogLevel(String),
    /// An option needs a value.
    #[error("option {0} needs a value")]
    MissingValue(String),
    /// An argument the agent does not know.
    #[error("unknown argument {0:?} (try --help)")]
    UnknownArgument(String),
}

impl FromStr for ListenAddr {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || ConfigError::BadAddress(s.to_owned());
        if let Some(path) = s.strip_prefix("unix://") {
            if path.is_empty() {
                return Err(bad());
            }
            return Ok(ListenAddr::Unix(path.to_owned()));
        }
        let rest = s.strip_prefix("vsock://").ok_or_else(bad)?;
        let (cid, port) = rest.split_once(':').ok_or_else(bad)?;
        let cid = if cid == "-1" {
            libc::VMADDR_CID_ANY
        } else {
            cid.parse().map_err(|_| bad())?
        };
        let port = port.parse().map_err(|_| bad())?;
        Ok(ListenAddr::Vsock { cid, port })
    }
}

/// How much the agent logs (to stderr, the console as PID 1).
pub fn parse_level(s: &str) -> Result<tracing::Level, ConfigError> {
    match s.to_ascii_lowercase().as_str() {
        "error" => Ok(tracing::Level::ERROR),
        "warn" => Ok(tracing::Level::WARN),
        "info" => Ok(tracing::Level::INFO),
        "debug" => Ok(tracing::Level::DEBUG),
        "trace" => Ok(tracing::Level::TRACE),
        _ => Err(ConfigError::BadLogLevel(s.to_owned())),
    }
}

/// Everything the agent can be told at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Where to serve ttRPC.
    pub listen: ListenAddr,
    /// The most verbose level logged. Default: warn (the serial console is
    /// slow on emulated hosts).
    pub log_level: tracing::Level,
    /// Host name to set (PID 1 only).
    pub hostname: Option<String>,
    /// The cgroup v2 hierarchy containers get their cgroups in
    /// (`<root>/nacre/<id>`).
    pub cgroup_root: String,
    /// The virtio-fs tag of the directory the host shares, mounted at
    /// [`SHARED_DIR`] (PID 1 only; `nacre.shared=TAG`).
    pub shared_tag: Option<String>,
    /// Where to serve the debug console (a root shell outside every
    /// container), if anywhere: `nacre.debug_console=1` (vsock port
    /// [`nacre_protocol::DEBUG_CONSOLE_VSOCK_PORT`]) or `--debug-console
    /// ADDR`. Off by default.
    pub debug_console: Option<ListenAddr>,
    /// Make and remove one container before the ready line, for a VM
    /// template (`nacre.warm=1`: only the template's boot passes it).
    pub warm_up: bool,
}

/// The default cgroup v2 mount point.
pub const DEFAULT_CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// Where the host's shared directory is mounted in the guest.
pub const SHARED_DIR: &str = "/run/nacre/shared";

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: ListenAddr::default(),
            log_level: tracing::Level::WARN,
            hostname: None,
            cgroup_root: DEFAULT_CGROUP_ROOT.to_owned(),
            shared_tag: None,
            debug_console: None,
            warm_up: false,
        }
    }
}

/// What the command line asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Run the agent.
    Run(Config),
    /// Print the usage and exit.
    Help,
    /// Print the version and exit.
    Version,
}

/// The `--help` text.
pub const USAGE: &str = "\
usage: nacre-agent [--listen ADDR] [--log LEVEL] [--cgroup-root DIR]
                   [--debug-console ADDR]
       nacre-agent --help | --version

nacre's guest agent. As PID 1 it sets up the guest and reads its settings
from the kernel command line (nacre.hostname=NAME nacre.log=LEVEL
nacre.listen=ADDR nacre.shared=VIRTIOFS_TAG nacre.debug_console=1);
otherwise it only serves ttRPC (for host tests).

  --listen ADDR   unix:///path/to/sock or vsock://CID:PORT
                  (default vsock://-1:1024, -1 = any CID)
  --log LEVEL     error, warn (default), info, debug, trace
  --cgroup-root DIR
                  cgroup v2 hierarchy for container cgroups
                  (default /sys/fs/cgroup; /sys/fs/cgroup/unified on
                  hybrid hosts)
  --debug-console ADDR
                  serve a shell outside every container there (off by
                  default; as PID 1: nacre.debug_console=1, vsock port 1025)
";

impl Config {
    /// Parses the agent's arguments (without the program name), when it is
    /// not PID 1.
    pub fn from_args<I: IntoIterator<Item = String>>(args: I) -> Result<Command, ConfigError> {
        let mut config = Config::default();
        let mut args = args.into_iter();
        while let Some(arg) = args.next() {
            let (name, inline) = match arg.split_once('=') {
                Some((name, value)) if name.starts_with("--") => {
                    (name.to_owned(), Some(value.to_owned()))
                }
                _ => (arg.clone(), None),
            };
            let mut value = || {
                inline
                    .clone()
                    .or_else(|| args.next())
                    .ok_or_else(|| ConfigError::MissingValue(name.clone()))
            };
            match name.as_str() {
                "-h" | "--help" => return Ok(Command::Help),
                "-V" | "--version" => return Ok(Command::Version),
                "--listen" => config.listen = value()?.parse()?,
                "--log" => config.log_level = parse_level(&value()?)?,
                "--cgroup-root" => config.cgroup_root = value()?,
                "--debug-console" => config.debug_console = Some(value()?.parse()?),
                _ => return Err(ConfigError::UnknownArgument(arg)),
            }
        }
        Ok(Command::Run(config))
    }

    /// Reads the `nacre.*` parameters of a kernel command line
    /// (`/proc/cmdline`). Other parameters are ignored; a malformed `nacre.`
    /// value is an error, so that a typo does not go unnoticed.
    pub fn from_kernel_cmdline(cmdline: &str) -> Result<Config, ConfigError> {
        let mut config = Config::default();
        for param in split_cmdline(cmdline) {
            let (key, value) = param.split_once('=').unwrap_or((param.as_str(), ""));
            match key {
                "nacre.hostname" if !value.is_empty() => config.hostname = Some(value.to_owned()),
                "nacre.log" => config.log_level = parse_level(value)?,
                "nacre.listen" => config.listen = value.parse()?,
                "nacre.shared" if !value.is_empty() => config.shared_tag = Some(value.to_owned()),
                "nacre.warm" => config.warm_up = value == "1",
                "nacre.debug_console" if value == "1" => {
                    config.debug_console = Some(ListenAddr::Vsock {
                        cid: libc::VMADDR_CID_ANY,
                        port: nacre_protocol::DEBUG_CONSOLE_VSOCK_PORT,
                    });
                }
                _ => {}
            }
        }
        Ok(config)
    }
}

/// Splits a kernel command line into parameters the way the kernel does:
/// on spaces, except inside double quotes, which are removed.
pub fn split_cmdline(cmdline: &str) -> Vec<String> {
    let mut params = Vec::new();
    let mut current = String::new();
    let mut in_quotes = false;
    let mut started = false;
    for c in cmdline.chars() {
        match c {
            '"' => {
                in_quotes = !in_quotes;
                started = true;
            }
            c if c.is_whitespace() && !in_quotes => {
                if started {
                    params.push(std::mem::take(&mut current));
                    started = false;
                }
            }
            c => {
                current.push(c);
                started = true;
            }
        }
    }
    if started {
        params.push(current);
    }
    params
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Result<Command, ConfigError> {
        Config::from_args(list.iter().map(|s| (*s).to_owned()))
    }

    #[test]
    fn default_listens_on_vsock_any_1024() {
        let Command::Run(config) = args(&[]).unwrap() else {
            panic!("not run");
        };
        assert_eq!(
            config.listen,
            ListenAddr::Vsock {
                cid: libc::VMADDR_CID_ANY,
                port: 1024
            }
        );
        assert_eq!(config.listen.to_string(), "vsock://-1:1024");
        assert_eq!(config.log_level, tracing::Level::WARN);
    }

    #[test]
    fn parses_listen_and_log() {
        let expected = Config {
            listen: ListenAddr::Unix("/tmp/a.sock".into()),
            log_level: tracing::Level::DEBUG,
            ..Config::default()
        };
        assert_eq!(
            args(&["--listen", "unix:///tmp/a.sock", "--log", "debug"]).unwrap(),
            Command::Run(expected.clone())
        );
        assert_eq!(
            args(&["--listen=unix:///tmp/a.sock", "--log=DEBUG"]).unwrap(),
            Command::Run(expected)
        );
        let Command::Run(config) = args(&["--listen", "vsock://3:5000"]).unwrap() else {
            panic!("not run");
        };
        assert_eq!(config.listen, ListenAddr::Vsock { cid: 3, port: 5000 });
        let Command::Run(config) = args(&["--cgroup-root", "/sys/fs/cgroup/unified"]).unwrap()
        else {
            panic!("not run");
        };
        assert_eq!(config.cgroup_root, "/sys/fs/cgroup/unified");
        assert_eq!(Config::default().cgroup_root, DEFAULT_CGROUP_ROOT);
    }

    #[test]
    fn rejects_bad_arguments() {
        assert_eq!(
            args(&["--listen"]),
            Err(ConfigError::MissingValue("--listen".into()))
        );
        assert_eq!(
            args(&["--listen", "tcp://1.2.3.4:5"]),
            Err(ConfigError::BadAddress("tcp://1.2.3.4:5".into()))
        );
        assert_eq!(
            args(&["--listen", "vsock://x:1"]),
            Err(ConfigError::BadAddress("vsock://x:1".into()))
        );
        assert_eq!(
            args(&["--listen", "unix://"]),
            Err(ConfigError::BadAddress("unix://".into()))
        );
        assert_eq!(
            args(&["--log", "loud"]),
            Err(ConfigError::BadLogLevel("loud".into()))
        );
        assert_eq!(
            args(&["--frobnicate"]),
            Err(ConfigError::UnknownArgument("--frobnicate".into()))
        );
        assert_eq!(args(&["--help", "--bogus"]), Ok(Command::Help));
        assert_eq!(args(&["-V"]), Ok(Command::Version));
    }

    #[test]
    fn splits_cmdline_with_quotes() {
        assert_eq!(
            split_cmdline("  console=ttyS0 a=\"b c\"  \"d e\"=f reboot=k\n"),
            vec!["console=ttyS0", "a=b c", "d e=f", "reboot=k"]
        );
        assert_eq!(split_cmdline(""), Vec::<String>::new());
        assert_eq!(split_cmdline("x=\"\""), vec!["x="]);
    }

    #[test]
    fn reads_nacre_params_from_cmdline() {
        let config = Config::from_kernel_cmdline(
            "console=ttyS0 reboot=k nacre.hostname=pod-1 nacre.log=info quiet\n",
        )
        .unwrap();
        assert_eq!(config.hostname.as_deref(), Some("pod-1"));
        assert_eq!(config.log_level, tracing::Level::INFO);
        assert_eq!(config.listen, ListenAddr::default());

        let config = Config::from_kernel_cmdline("nacre.shared=nacre quiet").unwrap();
        assert_eq!(config.shared_tag.as_deref(), Some("nacre"));
        let config = Config::from_kernel_cmdline("nacre.listen=vsock://-1:2000").unwrap();
        assert_eq!(
            config.listen,
            ListenAddr::Vsock {
                cid: libc::VMADDR_CID_ANY,
                port: 2000
            }
        );
        assert_eq!(
            Config::from_kernel_cmdline("nacre.hostname= quiet").unwrap(),
            Config::default()
        );
    }

    #[test]
    fn bad_nacre_param_is_an_error() {
        assert_eq!(
            Config::from_kernel_cmdline("nacre.log=shout"),
            Err(ConfigError::BadLogLevel("shout".into()))
        );
        assert!(Config::from_kernel_cmdline("nacre.unknown=1 other.log=x").is_ok());
        // Only a template's boot warms up.
        assert!(!Config::from_kernel_cmdline("quiet").unwrap().warm_up);
        assert!(Config::from_kernel_cmdline("nacre.warm=1").unwrap().warm_up);
        assert!(!Config::from_kernel_cmdline("nacre.warm=0").unwrap().warm_up);
        assert_eq!(
            Config::from_kernel_cmdline("quiet").unwrap().debug_console,
            None
        );
        assert_eq!(
            Config::from_kernel_cmdline("nacre.debug_console=1")
                .unwrap()
                .debug_console,
            Some(ListenAddr::Vsock {
                cid: libc::VMADDR_CID_ANY,
                port: 1025
            })
        );
        assert_eq!(
            Config::from_kernel_cmdline("nacre.debug_console=0")
                .unwrap()
                .debug_console,
            None
        );
    }
}
