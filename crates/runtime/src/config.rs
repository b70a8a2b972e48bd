//! nacre's configuration, read by the containerd shim and the `nacre`
//! CLI alike: `/etc/nacre/config.toml` (or the file named by
//! `NACRE_CONFIG`), built-in defaults when there is no file, and per-pod
//! (per-container for the CLI) overrides through an allow-list of
//! `io.nacre.*` annotations.
//!
//! ```toml
//! log_level = "info"          # the shim's: error, warn, info, debug, trace
//! [vm]
//! vcpus = 1
//! memory_mib = 256
//! max_memory_mib = 16384      # the largest VM (limits included)
//! max_vcpus = 16               # annotations may only shrink the VM
//! kernel = "/usr/local/share/nacre/vmlinux"
//! initrd = "/usr/local/share/nacre/initrd.cpio"
//! kernel_params = ""          # appended to the guest kernel command line
//! boot_timeout_secs = 300
//! templates = true            # restore sandboxes from VM templates
//! annotations_may_grow = false # io.nacre.vm.* may only shrink the VM
//! [debug]
//! console = false             # `nacre debug-console`: a root shell in the VM
//! [trace]
//! file = "/var/log/nacre/trace.json" # the shim's trace (as NACRE_TRACE), absolute
//! ```

pub mod kernel_params;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use crate::image::{GuestImage, ImageError};
use crate::network::NetworkModel;
use serde::Deserialize;

/// Where the configuration file is looked for.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/nacre/config.toml";
/// The environment variable naming another configuration file.
pub const CONFIG_ENV: &str = "NACRE_CONFIG";

/// Annotation: vCPUs of the sandbox's VM.
pub const ANNOTATION_VCPUS: &str = "io.nacre.vm.vcpus";
/// Annotation: memory of the sandbox's VM in MiB.
pub const ANNOTATION_MEMORY: &str = "io.nacre.vm.memory_mib";
/// Annotation: extra guest kernel command line.
pub const ANNOTATION_KERNEL_PARAMS: &str = "io.nacre.vm.kernel_params";
/// Every `io.nacre.*` annotation a pod may set.
pub const ALLOWED_ANNOTATIONS: &[&str] = &[
    ANNOTATION_VCPUS,
    ANNOTATION_MEMORY,
    ANNOTATION_KERNEL_PARAMS,
];
const NACRE_PREFIX: &str = "io.nacre.";
/// CRI annotation (containerd 1.7+): the pod's memory limit in bytes.
pub const ANNOTATION_SANDBOX_MEMORY: &str = "io.kubernetes.cri.sandbox-memory";
/// CRI annotation (containerd 1.7+): the pod's CPU quota (microseconds).
pub const ANNOTATION_SANDBOX_CPU_QUOTA: &str = "io.kubernetes.cri.sandbox-cpu-quota";
/// CRI annotation (containerd 1.7+): the pod's CPU period (microseconds).
pub const ANNOTATION_SANDBOX_CPU_PERIOD: &str = "io.kubernetes.cri.sandbox-cpu-period";

/// Errors reading the configuration or applying annotations.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("parsing {path}: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
    #[error("{path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error("annotation {key}: {reason} (allowed io.nacre.* annotations: {allowed})")]
    Annotation {
        key: String,
        reason: String,
        allowed: String,
    },
}

/// The whole configuration file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Log level of the shim (`RUST_LOG` syntax of the `log` crate).
    pub log_level: String,
    /// VM defaults.
    pub vm: VmConfig,
    /// Pod network.
    pub network: NetworkConfig,
    /// Operators' access to the guest.
    pub debug: DebugConfig,
    /// The shim's trace (see [`crate::trace`]).
    pub trace: TraceConfig,
}

/// Tracing of the containerd shim.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TraceConfig {
    /// Where shims write their trace (what `NACRE_TRACE` in containerd's
    /// environment does; the variable wins). An absolute path; unset: no
    /// trace.
    pub file: Option<PathBuf>,
}

/// Operators' access to the guest.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DebugConfig {
    /// Serve the debug console (a root shell in the VM, outside every
    /// container, opened by `nacre debug-console`) in VMs started while
    /// this is on. Off by default.
    pub console: bool,
}

/// The guest kernel parameter that has the agent serve the debug console.
pub const DEBUG_CONSOLE_PARAM: &str = "nacre.debug_console=1";

/// How the VM joins the pod network.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NetworkConfig {
    /// `"tcfilter"` (a tap and tc redirects, the default) or `"macvtap"`
    /// (a passthru macvtap on each CNI interface).
    pub model: String,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        Self {
            model: "tcfilter".into(),
        }
    }
}

impl NetworkConfig {
    /// The model named by `model` (checked when the file is parsed).
    pub fn model(&self) -> NetworkModel {
        self.model.parse().unwrap_or_default()
    }
}

/// Defaults of every sandbox VM.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VmConfig {
    pub vcpus: u8,
    pub memory_mib: u32,
    pub max_vcpus: u8,
    pub max_memory_mib: u32,
    /// Guest kernel; default: `NACRE_KERNEL` or the installed one.
    pub kernel: Option<PathBuf>,
    /// Guest initrd; default: `NACRE_INITRD` or the installed one.
    pub initrd: Option<PathBuf>,
    /// Appended to the guest kernel command line.
    pub kernel_params: String,
    pub boot_timeout_secs: u64,
    /// Start sandboxes from VM templates (also subject to
    /// `NACRE_TEMPLATES` and `NACRE_TEMPLATE_DIR`).
    pub templates: bool,
    /// Let `io.nacre.vm.vcpus`/`memory_mib` grow a VM past what the pod's
    /// limits and `vcpus`/`memory_mib` give (up to `max_*`). Off: they may
    /// only shrink it. For containerd 1.6, which passes no pod limits.
    pub annotations_may_grow: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            log_level: "info".into(),
            vm: VmConfig::default(),
            network: NetworkConfig::default(),
            debug: DebugConfig::default(),
            trace: TraceConfig::default(),
        }
    }
}

impl Default for VmConfig {
    fn default() -> Self {
        Self {
            vcpus: 1,
            memory_mib: 256,
            max_vcpus: 16,
            max_memory_mib: 16 * 1024,
            kernel: None,
            initrd: None,
            kernel_params: String::new(),
            boot_timeout_secs: 0,
            templates: true,
            annotations_may_grow: false,
        }
    }
}

impl VmConfig {
    /// The guest image: `kernel` and `initrd` where set, else
    /// `NACRE_KERNEL`/`NACRE_INITRD` or the installed files; both checked.
    pub fn guest_image(&self) -> Result<GuestImage, ImageError> {
        GuestImage::locate_with(self.kernel.clone(), self.initrd.clone())
    }
}

/// The shape of one sandbox VM, after annotations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmShape {
    pub vcpus: u8,
    pub memory_mib: u32,
    pub kernel_params: String,
}

impl VmShape {
    /// `kernel_params` for the guest command line, None when blank.
    pub fn extra_cmdline(&self) -> Option<String> {
        let params = self.kernel_params.trim();
        (!params.is_empty()).then(|| params.to_string())
    }
}

impl Config {
    /// The guest image of new VMs: `vm.kernel` and `vm.initrd` (see
    /// [`VmConfig::guest_image`]); with the debug console on, the initrd's
    /// `-debug` sibling (`initrd-debug.cpio` next to `initrd.cpio`), which
    /// also holds the console's shell (kept out of the default image: each
    /// MB of initrd costs seconds of emulated guest work per cold boot).
    pub fn guest_image(&self) -> Result<GuestImage, ImageError> {
        let mut image = self.vm.guest_image()?;
        if self.debug.console {
            let debug = debug_initrd(&image.initrd);
            image = GuestImage::checked(image.kernel, debug)?;
        }
        Ok(image)
    }

    /// Loads the file named by `NACRE_CONFIG`, else
    /// [`DEFAULT_CONFIG_PATH`] if it exists, else the defaults.
    pub fn load() -> Result<Self, ConfigError> {
        match std::env::var_os(CONFIG_ENV) {
            Some(p) if !p.is_empty() => Self::from_file(Path::new(&p)),
            _ if Path::new(DEFAULT_CONFIG_PATH).exists() => {
                Self::from_file(Path::new(DEFAULT_CONFIG_PATH))
            }
            _ => Ok(Self::default()),
        }
    }

    /// Reads and checks one file.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses and checks `text` (read from `path`).
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|source| ConfigError::Parse {
            path: path.to_path_buf(),
            source,
        })?;
        let invalid = |reason: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            reason,
        };
        let vm = &config.vm;
        if vm.vcpus == 0 || vm.vcpus > vm.max_vcpus {
            return Err(invalid(format!(
                "vm.vcpus = {} must be between 1 and vm.max_vcpus = {}",
                vm.vcpus, vm.max_vcpus
            )));
        }
        if vm.memory_mib < 64 || vm.memory_mib > vm.max_memory_mib {
            return Err(invalid(format!(
                "vm.memory_mib = {} must be between 64 and vm.max_memory_mib = {}",
                vm.memory_mib, vm.max_memory_mib
            )));
        }
        if let Err(reason) = config.network.model.parse::<NetworkModel>() {
            return Err(invalid(format!("network.model: {reason}")));
        }
        if let Some(file) = &config.trace.file {
            if !file.is_absolute() || file.file_name().is_none() {
                return Err(invalid(format!(
                    "trace.file = {:?} must be an absolute path to a file",
                    file.display()
                )));
            }
        }
        if !LOG_LEVELS.contains(&config.log_level.to_ascii_lowercase().as_str()) {
            return Err(invalid(format!(
                "log_level = {:?} is not one of off, error, warn, info, debug, trace",
                config.log_level
            )));
        }
        Ok(config)
    }

    /// The VM shape for a sandbox whose spec carries `annotations`.
    /// Unknown `io.nacre.*` annotations and values out of range are errors.
    ///
    /// Resource policy: the VM is the configured one grown by the pod's
    /// limits; an `io.nacre.vm.vcpus` or `io.nacre.vm.memory_mib`
    /// annotation may shrink it or match it, never grow it (a pod asks for
    /// more through its limits, which the scheduler and the host cgroup
    /// account for), and never past `vm.max_vcpus`/`vm.max_memory_mib`.
    pub fn vm_shape(&self, annotations: &HashMap<String, String>) -> Result<VmShape, ConfigError> {
        let mut shape = VmShape {
            vcpus: self.vm.vcpus,
            memory_mib: self.vm.memory_mib,
            kernel_params: self.vm.kernel_params.clone(),
        };
        if self.debug.console {
            if !shape.kernel_params.is_empty() {
                shape.kernel_params.push(' ');
            }
            shape.kernel_params.push_str(DEBUG_CONSOLE_PARAM);
        }
        self.add_pod_resources(&mut shape, annotations)?;
        let allowed = if self.vm.annotations_may_grow {
            (self.vm.max_vcpus, self.vm.max_memory_mib)
        } else {
            (shape.vcpus, shape.memory_mib)
        };
        let mut keys: Vec<&String> = annotations.keys().collect();
        keys.sort();
        for key in keys {
            if !key.starts_with(NACRE_PREFIX) {
                continue;
            }
            let value = annotations.get(key).map(String::as_str).unwrap_or("");
            let bad = |reason: String| ConfigError::Annotation {
                key: key.clone(),
                reason,
                allowed: ALLOWED_ANNOTATIONS.join(", "),
            };
            match key.as_str() {
                ANNOTATION_VCPUS => {
                    let n: u8 = value
                        .parse()
                        .map_err(|_| bad(format!("{value:?} is not a vCPU count")))?;
                    if n == 0 || n > self.vm.max_vcpus {
                        return Err(bad(format!(
                            "{n} vCPUs is outside 1..={}",
                            self.vm.max_vcpus
                        )));
                    }
                    if n > allowed.0 {
                        return Err(bad(format!(
                            "{n} vCPUs is more than the {} the pod's CPU limit and vm.vcpus = {} \
                             allow (an annotation may only shrink the VM unless \
                             vm.annotations_may_grow)",
                            allowed.0, self.vm.vcpus
                        )));
                    }
                    shape.vcpus = n;
                }
                ANNOTATION_MEMORY => {
                    let n: u32 = value
                        .parse()
                        .map_err(|_| bad(format!("{value:?} is not a size in MiB")))?;
                    if !(64..=self.vm.max_memory_mib).contains(&n) {
                        return Err(bad(format!(
                            "{n} MiB is outside 64..={} MiB (vm.max_memory_mib)",
                            self.vm.max_memory_mib
                        )));
                    }
                    if n > allowed.1 {
                        return Err(bad(format!(
                            "{n} MiB is more than the {} MiB the pod's memory limit and \
                             vm.memory_mib = {} allow (an annotation may only shrink the VM \
                             unless vm.annotations_may_grow)",
                            allowed.1, self.vm.memory_mib
                        )));
                    }
                    shape.memory_mib = n;
                }
                ANNOTATION_KERNEL_PARAMS => {
                    if let Some(reason) = kernel_params::refused(value) {
                        return Err(bad(reason));
                    }
                    if !shape.kernel_params.is_empty() {
                        shape.kernel_params.push(' ');
                    }
                    shape.kernel_params.push_str(value);
                }
                _ => return Err(bad("unknown nacre annotation".into())),
            }
        }
        Ok(shape)
    }
}

impl Config {
    /// Grows `shape` by the pod's resources when containerd passes them
    /// (the CRI `sandbox-memory` and `sandbox-cpu-*` annotations, from the
    /// sum of the pod's container limits): the configured VM is the base
    /// for the kernel, agent and caches, the pod's limits come on top, as
    /// Kata's static sandbox sizing does. Explicit `io.nacre.vm.*`
    /// annotations are applied afterwards and win.
    fn add_pod_resources(
        &self,
        shape: &mut VmShape,
        annotations: &HashMap<String, String>,
    ) -> Result<(), ConfigError> {
        let number = |key: &str| -> Result<Option<u64>, ConfigError> {
            let Some(value) = annotations.get(key) else {
                return Ok(None);
            };
            value
                .trim()
                .parse::<u64>()
                .map(Some)
                .map_err(|_| ConfigError::Annotation {
                    key: key.to_owned(),
                    reason: format!("{value:?} is not a non-negative integer"),
                    allowed: ALLOWED_ANNOTATIONS.join(", "),
                })
        };
        let too_big = |key: &str, reason: String| ConfigError::Annotation {
            key: key.to_owned(),
            reason,
            allowed: ALLOWED_ANNOTATIONS.join(", "),
        };
        if let Some(bytes) = number(ANNOTATION_SANDBOX_MEMORY)?.filter(|b| *b > 0) {
            let mib = u32::try_from(bytes.div_ceil(1024 * 1024)).unwrap_or(u32::MAX);
            let total = shape.memory_mib.saturating_add(mib);
            if total > self.vm.max_memory_mib {
                return Err(too_big(
                    ANNOTATION_SANDBOX_MEMORY,
                    format!(
                        "the pod's {mib} MiB on top of the VM's {} MiB exceeds vm.max_memory_mib = {}",
                        shape.memory_mib, self.vm.max_memory_mib
                    ),
                ));
            }
            shape.memory_mib = total;
        }
        let quota = number(ANNOTATION_SANDBOX_CPU_QUOTA)?.filter(|q| *q > 0);
        let period = number(ANNOTATION_SANDBOX_CPU_PERIOD)?.filter(|p| *p > 0);
        if let (Some(quota), Some(period)) = (quota, period) {
            let cpus = u8::try_from(quota.div_ceil(period)).unwrap_or(u8::MAX);
            let total = shape.vcpus.saturating_add(cpus);
            if total > self.vm.max_vcpus {
                return Err(too_big(
                    ANNOTATION_SANDBOX_CPU_QUOTA,
                    format!(
                        "the pod's {cpus} CPUs on top of the VM's {} exceed vm.max_vcpus = {}",
                        shape.vcpus, self.vm.max_vcpus
                    ),
                ));
            }
            shape.vcpus = total;
        }
        Ok(())
    }
}

impl Config {
    /// The VM shape for one container that the `nacre` CLI runs in a VM of
    /// its own: the configured VM, grown by the container's memory limit
    /// and CPU quota the way the shim grows it by a pod's (see
    /// [`Config::vm_shape`]), then its `io.nacre.*` annotations. Limits the
    /// annotations already state (a CRI pod's) are not counted twice.
    pub fn container_shape(
        &self,
        annotations: &BTreeMap<String, String>,
        memory_limit: Option<u64>,
        cpu_limit: Option<u32>,
    ) -> Result<VmShape, ConfigError> {
        let mut all: HashMap<String, String> = annotations
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if let Some(bytes) = memory_limit {
            all.entry(ANNOTATION_SANDBOX_MEMORY.into())
                .or_insert_with(|| bytes.to_string());
        }
        if let Some(cpus) = cpu_limit.filter(|c| *c > 0) {
            if !all.contains_key(ANNOTATION_SANDBOX_CPU_QUOTA) {
                all.insert(
                    ANNOTATION_SANDBOX_CPU_QUOTA.into(),
                    (u64::from(cpus) * 100_000).to_string(),
                );
                all.insert(ANNOTATION_SANDBOX_CPU_PERIOD.into(), "100000".into());
            }
        }
        self.vm_shape(&all)
    }
}

/// `<dir>/<stem>-debug.<ext>` for `<dir>/<stem>.<ext>`.
pub fn debug_initrd(initrd: &Path) -> PathBuf {
    let stem = initrd
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let name = match initrd.extension() {
        Some(ext) => format!("{stem}-debug.{}", ext.to_string_lossy()),
        None => format!("{stem}-debug"),
    };
    initrd.with_file_name(name)
}

/// The values `log_level` takes.
const LOG_LEVELS: &[&str] = &["off", "error", "warn", "info", "debug", "trace"];

#[cfg(test)]
mod tests {
    use super::*;

    fn ann(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_without_a_file() {
        let c = Config::parse("", Path::new("x.toml")).unwrap();
        assert_eq!(c, Config::default());
        let shape = c.vm_shape(&HashMap::new()).unwrap();
        assert_eq!((shape.vcpus, shape.memory_mib), (1, 256));
        assert_eq!(shape.extra_cmdline(), None);
    }

    #[test]
    fn file_values_and_annotations_apply() {
        let c = Config::parse(
            "log_level = \"debug\"\n[vm]\nvcpus = 2\nmemory_mib = 512\nkernel_params = \"quiet\"\n",
            Path::new("x.toml"),
        )
        .unwrap();
        let shape = c
            .vm_shape(&ann(&[
                (ANNOTATION_MEMORY, "384"),
                (ANNOTATION_KERNEL_PARAMS, "debug"),
                ("io.kubernetes.cri.sandbox-id", "abc"),
            ]))
            .unwrap();
        assert_eq!(shape.vcpus, 2);
        assert_eq!(shape.memory_mib, 384);
        assert_eq!(shape.kernel_params, "quiet debug");
        assert_eq!(shape.extra_cmdline().as_deref(), Some("quiet debug"));
        assert!(c.vm.templates);
        let off = Config::parse("[vm]\ntemplates = false\n", Path::new("x.toml")).unwrap();
        assert!(!off.vm.templates);
        assert_eq!(c.network.model(), NetworkModel::TcFilter);
        let mvt = Config::parse("[network]\nmodel = \"macvtap\"\n", Path::new("x")).unwrap();
        assert_eq!(mvt.network.model(), NetworkModel::Macvtap);
    }

    #[test]
    fn bad_files_name_the_problem() {
        let err = Config::parse("[vm]\nvcpu = 2\n", Path::new("/etc/x.toml")).unwrap_err();
        assert!(err.to_string().contains("/etc/x.toml"), "{err}");
        assert!(err.to_string().contains("vcpu"), "{err}");
        let err = Config::parse("[vm]\nmemory_mib = 1\n", Path::new("x")).unwrap_err();
        assert!(err.to_string().contains("memory_mib = 1"), "{err}");
        let err = Config::parse("[network]\nmodel = \"ipvtap\"\n", Path::new("x")).unwrap_err();
        assert!(
            err.to_string().contains("network.model") && err.to_string().contains("ipvtap"),
            "{err}"
        );
        let err = Config::parse("log_level = \"loud\"\n", Path::new("x")).unwrap_err();
        assert!(err.to_string().contains("loud"), "{err}");
    }

    #[test]
    fn pod_resources_grow_the_vm_and_nacre_annotations_win() {
        let c = Config::default();
        let pod = [
            (ANNOTATION_SANDBOX_MEMORY, "536870912"),
            (ANNOTATION_SANDBOX_CPU_QUOTA, "150000"),
            (ANNOTATION_SANDBOX_CPU_PERIOD, "100000"),
        ];
        let shape = c.vm_shape(&ann(&pod)).unwrap();
        assert_eq!((shape.vcpus, shape.memory_mib), (3, 256 + 512));
        // No limits (0) leave the defaults.
        let shape = c
            .vm_shape(&ann(&[
                (ANNOTATION_SANDBOX_MEMORY, "0"),
                (ANNOTATION_SANDBOX_CPU_QUOTA, "0"),
                (ANNOTATION_SANDBOX_CPU_PERIOD, "100000"),
            ]))
            .unwrap();
        assert_eq!((shape.vcpus, shape.memory_mib), (1, 256));
        let mut explicit = ann(&pod);
        explicit.insert(ANNOTATION_MEMORY.into(), "300".into());
        assert_eq!(c.vm_shape(&explicit).unwrap().memory_mib, 300);
        let err = c
            .vm_shape(&ann(&[(ANNOTATION_SANDBOX_MEMORY, "99999999999999")]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("sandbox-memory") && err.contains("max_memory_mib"),
            "{err}"
        );
        let err = c
            .vm_shape(&ann(&[(ANNOTATION_SANDBOX_MEMORY, "lots")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("\"lots\""), "{err}");
    }

    #[test]
    fn a_cli_container_grows_the_vm_by_its_limits() {
        let c = Config::parse("[vm]\nmemory_mib = 128\n", Path::new("x")).unwrap();
        let none = BTreeMap::new();
        let shape = c.container_shape(&none, None, None).unwrap();
        assert_eq!((shape.vcpus, shape.memory_mib), (1, 128));
        let shape = c.container_shape(&none, Some(512 << 20), Some(2)).unwrap();
        assert_eq!((shape.vcpus, shape.memory_mib), (3, 128 + 512));
        // A CRI pod's own annotation is not counted twice; io.nacre.* wins.
        let mut pod = BTreeMap::new();
        pod.insert(ANNOTATION_SANDBOX_MEMORY.to_string(), "0".to_string());
        let shape = c.container_shape(&pod, Some(512 << 20), None).unwrap();
        assert_eq!(shape.memory_mib, 128);
        pod.insert(ANNOTATION_MEMORY.to_string(), "100".to_string());
        assert_eq!(c.container_shape(&pod, None, None).unwrap().memory_mib, 100);
        pod.insert("io.nacre.vm.disks".to_string(), "2".to_string());
        let err = c.container_shape(&pod, None, None).unwrap_err().to_string();
        assert!(err.contains("io.nacre.vm.disks"), "{err}");
        let err = c
            .container_shape(&none, Some(64 << 30), None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("max_memory_mib"), "{err}");
    }

    /// Issue 14 (4): a pod asking by annotation for more than its limits
    /// and the configuration give is refused, naming the annotation and
    /// the limit; shrinking or matching is allowed.
    #[test]
    fn annotations_may_only_shrink_the_vm() {
        let c = Config::default();
        let pod = [
            (ANNOTATION_SANDBOX_MEMORY, "268435456"),
            (ANNOTATION_SANDBOX_CPU_QUOTA, "100000"),
            (ANNOTATION_SANDBOX_CPU_PERIOD, "100000"),
        ];
        let with = |extra: &[(&str, &str)]| {
            let mut all = ann(&pod);
            for (k, v) in extra {
                all.insert((*k).to_string(), (*v).to_string());
            }
            c.vm_shape(&all)
        };
        assert_eq!(with(&[(ANNOTATION_MEMORY, "512")]).unwrap().memory_mib, 512);
        assert_eq!(with(&[(ANNOTATION_MEMORY, "300")]).unwrap().memory_mib, 300);
        assert_eq!(with(&[(ANNOTATION_VCPUS, "1")]).unwrap().vcpus, 1);
        let err = with(&[(ANNOTATION_MEMORY, "16384")])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(ANNOTATION_MEMORY) && err.contains("more than the 512 MiB"),
            "{err}"
        );
        let err = with(&[(ANNOTATION_VCPUS, "16")]).unwrap_err().to_string();
        assert!(
            err.contains(ANNOTATION_VCPUS) && err.contains("more than the 2"),
            "{err}"
        );
        // No limits: the configured VM is the most an annotation gets.
        let err = c
            .vm_shape(&ann(&[(ANNOTATION_MEMORY, "1024")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("vm.memory_mib = 256"), "{err}");
        // The operator's switch for containerd 1.6 (no pod limits passed).
        let grow = Config::parse("[vm]\nannotations_may_grow = true\n", Path::new("x")).unwrap();
        let shape = grow.vm_shape(&ann(&[(ANNOTATION_MEMORY, "1024")])).unwrap();
        assert_eq!(shape.memory_mib, 1024);
    }

    #[test]
    fn unknown_or_oversize_annotations_are_refused() {
        let c = Config::default();
        let err = c
            .vm_shape(&ann(&[("io.nacre.vm.gpus", "1")]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("io.nacre.vm.gpus") && err.contains("unknown"),
            "{err}"
        );
        assert!(err.contains(ANNOTATION_MEMORY), "{err}");
        let err = c
            .vm_shape(&ann(&[(ANNOTATION_MEMORY, "99999999")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("99999999 MiB"), "{err}");
        let err = c
            .vm_shape(&ann(&[(ANNOTATION_VCPUS, "many")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("\"many\""), "{err}");
    }

    #[test]
    fn the_debug_console_is_off_unless_configured() {
        let off = Config::default();
        assert!(!off.debug.console);
        let shape = off.vm_shape(&HashMap::new()).unwrap();
        assert!(!shape.kernel_params.contains("debug_console"));
        let on = Config::parse(
            "[vm]\nkernel_params = \"quiet\"\n[debug]\nconsole = true\n",
            Path::new("c.toml"),
        )
        .unwrap();
        let shape = on.vm_shape(&HashMap::new()).unwrap();
        assert_eq!(shape.kernel_params, "quiet nacre.debug_console=1");
        assert_eq!(
            debug_initrd(Path::new("/usr/share/nacre/initrd.cpio")),
            Path::new("/usr/share/nacre/initrd-debug.cpio")
        );
    }

    #[test]
    fn the_trace_file_is_off_unless_configured_and_absolute() {
        assert_eq!(Config::default().trace.file, None);
        let on =
            Config::parse("[trace]\nfile = \"/var/log/t.json\"\n", Path::new("c.toml")).unwrap();
        assert_eq!(on.trace.file.as_deref(), Some(Path::new("/var/log/t.json")));
        for bad in ["t.json", "/"] {
            let err = Config::parse(&format!("[trace]\nfile = {bad:?}\n"), Path::new("c.toml"))
                .unwrap_err()
                .to_string();
            assert!(err.contains("trace.file"), "{bad}: {err}");
        }
    }

    /// A pod may tune its guest kernel, not take its boot from the node.
    #[test]
    fn pod_kernel_params_are_limited() {
        let c = Config::default();
        let shape = c
            .vm_shape(&ann(&[(
                ANNOTATION_KERNEL_PARAMS,
                "sysctl.vm.swappiness=10",
            )]))
            .unwrap();
        assert_eq!(shape.kernel_params, "sysctl.vm.swappiness=10");
        let err = c
            .vm_shape(&ann(&[(ANNOTATION_KERNEL_PARAMS, "quiet init=/bin/sh")]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(ANNOTATION_KERNEL_PARAMS)
                && err.contains("\"init=/bin/sh\" is the node's"),
            "{err}"
        );
    }
}
