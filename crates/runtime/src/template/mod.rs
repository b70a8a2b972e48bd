//! VM templates: one booted VM per (VMM, kernel, initrd, VM shape),
//! snapshotted once and restored for every later sandbox of that shape.
//!
//! Templates live in a root-owned directory with mode 0700
//! (`$NACRE_TEMPLATE_DIR`, default `/var/lib/nacre/templates`), one
//! sub-directory per key. A key hashes what the template depends on: the
//! VMM binary, kernel and initrd (path, size, inode, mtime; the VMM also
//! checks the kernel and initrd content at restore), vCPUs, memory and
//! the extra command line, the virtio-fs tags, and the number and MTUs of
//! the network devices. `NACRE_TEMPLATES=0` turns templates off.
//!
//! A template's network devices are detached (no host side) and have
//! placeholder MACs ([`placeholder_mac`]); a restore attaches the
//! sandbox's taps in the same order, and the agent's
//! `Network.ConfigureNetwork` gives each guest NIC its pod MAC
//! ([`mark_restored`]).
//!
//! A template is made by booting the VM cold, waiting for its agent, and
//! asking the VMM for a snapshot (`{"op":"snapshot"}`) into a temporary
//! directory that is renamed into place when complete, by one process at
//! a time (a `flock` on `.lock`: concurrent first starts of a shape wait
//! for that one template, then restore it). A template the VMM
//! refuses (corrupt, other version) is removed, and the caller boots cold.
//! Before a new template is made, stale ones are pruned: each records the
//! stat lines of its VMM, kernel and initrd (`inputs`), and one whose
//! files changed or went away can never be found again; then the least
//! recently used go while the store is full (at most
//! `NACRE_TEMPLATE_MAX`, default 16: `evict.rs`).

use std::fs;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

mod evict;
mod net;
mod start;

pub use evict::{max_from_env, DEFAULT_MAX};

pub use net::{mark_restored, placeholder_mac};
pub use start::{cold_cmdline, start_sandbox, StartKind, NET_RESTORE_PROTOCOL};

use crate::sandbox::{Sandbox, SandboxError};
use crate::vm::{VmError, VmSpec};

/// Default template directory.
pub const DEFAULT_DIR: &str = "/var/lib/nacre/templates";
/// On a template's guest command line: the agent warms up (see the
/// agent's `container::warm`).
pub const WARM_UP_PARAM: &str = "nacre.warm=1";
/// How long the template's guest gets to close the agent connection
/// before the snapshot.
const SETTLE: Duration = Duration::from_secs(3);
/// Bumped when what a key covers changes.
const KEY_VERSION: &str = "nacre-template-key-3";

/// Errors managing templates.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("template directory {path}: {source}")]
    Dir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("template directory {path} is not safe: {reason}")]
    Unsafe { path: PathBuf, reason: String },
    #[error("{what} {path}: {source}")]
    Input {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("booting the template VM: {0}")]
    Boot(#[source] Box<SandboxError>),
    #[error("snapshot of the template VM: {0}")]
    Snapshot(String),
    #[error("snapshot request: {0}")]
    Api(#[from] VmError),
    #[error("waited {timeout:?} for another process making a template (lock {path})")]
    LockTimeout { path: PathBuf, timeout: Duration },
}

/// Where templates are kept.
#[derive(Debug, Clone)]
pub struct TemplateStore {
    root: PathBuf,
    /// Most templates kept (see `evict.rs`).
    max: usize,
}

/// Whether `NACRE_TEMPLATES` turns templates off ("0", "off", "false", "no").
pub fn disabled_by_env() -> bool {
    std::env::var("NACRE_TEMPLATES")
        .map(|v| {
            matches!(
                v.trim().to_ascii_lowercase().as_str(),
                "0" | "off" | "false" | "no"
            )
        })
        .unwrap_or(false)
}

fn stat_line(what: &'static str, path: &Path) -> Result<String, TemplateError> {
    let meta = fs::metadata(path).map_err(|source| TemplateError::Input {
        what,
        path: path.to_path_buf(),
        source,
    })?;
    Ok(format!(
        "{what}={}:{}:{}:{}:{}.{}",
        path.display(),
        meta.size(),
        meta.dev(),
        meta.ino(),
        meta.mtime(),
        meta.mtime_nsec()
    ))
}

impl TemplateStore {
    /// The store configured by the environment, or None when templates
    /// are turned off.
    pub fn from_env() -> Option<Self> {
        if disabled_by_env() {
            return None;
        }
        let root = std::env::var_os("NACRE_TEMPLATE_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DIR));
        Some(Self {
            max: max_from_env(),
            ..Self::new(root)
        })
    }

    /// A store at `root` (created on first use).
    pub fn new(root: PathBuf) -> Self {
        Self {
            root,
            max: DEFAULT_MAX,
        }
    }

    /// The most templates the store keeps.
    pub fn max(&self) -> usize {
        self.max
    }

    /// The store's directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The key of the template for `spec` under the VMM at `vmm`.
    pub fn key(vmm: &Path, spec: &VmSpec) -> Result<String, TemplateError> {
        let text = Self::inputs(vmm, spec)?;
        let digest = Sha256::digest(text.join("\n").as_bytes());
        Ok(digest.iter().take(16).map(|b| format!("{b:02x}")).collect())
    }

    /// What a template's key hashes, one line each; kept in the template
    /// (`inputs`) so [`TemplateStore::prune`] can tell a stale one.
    fn inputs(vmm: &Path, spec: &VmSpec) -> Result<Vec<String>, TemplateError> {
        let mut text = vec![
            KEY_VERSION.to_owned(),
            stat_line("vmm", vmm)?,
            stat_line("kernel", &spec.image.kernel)?,
            stat_line("initrd", &spec.image.initrd)?,
            format!("vcpus={}", spec.vcpus),
            format!("memory_mib={}", spec.memory_mib),
            format!("cmdline={}", spec.extra_cmdline.as_deref().unwrap_or("")),
        ];
        for share in &spec.shared_dirs {
            text.push(format!("share={}", share.tag));
        }
        for net in &spec.nets {
            text.push(format!("net=mtu:{}", net.mtu.unwrap_or(0)));
        }
        Ok(text)
    }

    /// Removes templates no key can reach any more: those whose VMM,
    /// kernel or initrd changed or went away since they were made (their
    /// `inputs` no longer match the files), those made before `inputs`
    /// were recorded, and work directories of processes that died while
    /// making one. Running sandboxes restored from a removed template keep
    /// their private mapping of its memory.
    pub fn prune(&self) -> Vec<PathBuf> {
        let Ok(entries) = fs::read_dir(&self.root) else {
            return Vec::new();
        };
        let mut removed = Vec::new();
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            let stale = match name.strip_prefix('.') {
                Some(work) => work_dir_orphaned(work),
                None => template_stale(&path),
            };
            if stale {
                // A VMM of an orphaned work directory dies with its owner
                // (--owner-fd); one that somehow outlived it is killed.
                crate::container::process::kill_vmm(&path.join("vm"), &[]);
                match fs::remove_dir_all(&path) {
                    Ok(()) => {
                        tracing::info!(template = %path.display(), "removed a stale template");
                        removed.push(path);
                    }
                    Err(e) => tracing::warn!("removing stale template {}: {e}", path.display()),
                }
            }
        }
        removed
    }

    /// Creates the store's directory (0700) or checks an existing one is
    /// a directory owned by us and closed to others.
    fn ensure_root(&self) -> Result<(), TemplateError> {
        let dir_err = |source| TemplateError::Dir {
            path: self.root.clone(),
            source,
        };
        fs::create_dir_all(&self.root).map_err(dir_err)?;
        let meta = fs::symlink_metadata(&self.root).map_err(dir_err)?;
        // SAFETY: geteuid has no preconditions and cannot fail.
        let euid = unsafe { libc::geteuid() };
        if !meta.is_dir() {
            return Err(TemplateError::Unsafe {
                path: self.root.clone(),
                reason: "not a directory".into(),
            });
        }
        if meta.uid() != euid {
            return Err(TemplateError::Unsafe {
                path: self.root.clone(),
                reason: format!("owned by uid {}, not {euid}", meta.uid()),
            });
        }
        if meta.mode() & 0o077 != 0 {
            fs::set_permissions(&self.root, fs::Permissions::from_mode(0o700)).map_err(dir_err)?;
        }
        Ok(())
    }

    /// The directory of the template for `spec`, if it exists and is
    /// complete (its header was written last).
    pub fn find(&self, vmm: &Path, spec: &VmSpec) -> Result<Option<PathBuf>, TemplateError> {
        let dir = self.root.join(Self::key(vmm, spec)?);
        if !dir.join("header.json").is_file() {
            return Ok(None);
        }
        evict::mark_used(&dir);
        Ok(Some(dir))
    }

    /// Removes the template in `dir` (after the VMM refused it).
    pub fn discard(&self, dir: &Path) {
        if dir.starts_with(&self.root) {
            if let Err(e) = fs::remove_dir_all(dir) {
                tracing::warn!("removing template {}: {e}", dir.display());
            }
        }
    }

    /// The template for `spec`, made now (a cold boot and a snapshot) if
    /// there is none yet. The template VM boots with `spec`'s shares
    /// served from an empty directory: the guest must not mount them
    /// before the snapshot (no `nacre.shared=` on its command line); its
    /// network devices are detached, with [`placeholder_mac`]s.
    pub fn get_or_create(
        &self,
        vmm: &Path,
        spec: &VmSpec,
        timeout: Duration,
    ) -> Result<PathBuf, TemplateError> {
        self.ensure_root()?;
        if let Some(dir) = self.find(vmm, spec)? {
            return Ok(dir);
        }
        let _lock = self.lock(timeout)?;
        // Made by the process we waited for?
        if let Some(dir) = self.find(vmm, spec)? {
            return Ok(dir);
        }
        self.prune();
        self.evict(self.max.saturating_sub(1));
        let key = Self::key(vmm, spec)?;
        let final_dir = self.root.join(&key);
        let work = self.root.join(format!(".{key}.{}", std::process::id()));
        let _ = fs::remove_dir_all(&work);
        let result = self.create_in(vmm, spec, &work, &final_dir, timeout);
        let _ = fs::remove_dir_all(&work);
        result.map(|()| final_dir)
    }

    /// Takes the store's creation lock (`flock` on [`LOCK`], released
    /// when the returned file is dropped), waiting at most `timeout`.
    /// Concurrent first starts of a shape then wait for one template
    /// instead of booting a template VM each.
    fn lock(&self, timeout: Duration) -> Result<fs::File, TemplateError> {
        let path = self.root.join(LOCK);
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&path)
            .map_err(|source| TemplateError::Dir {
                path: path.clone(),
                source,
            })?;
        let deadline = Instant::now() + timeout;
        loop {
            // SAFETY: flock on a descriptor this function owns; no memory
            // is passed to the kernel.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
                return Ok(file);
            }
            let source = std::io::Error::last_os_error();
            if source.raw_os_error() != Some(libc::EWOULDBLOCK) {
                return Err(TemplateError::Dir { path, source });
            }
            if Instant::now() >= deadline {
                return Err(TemplateError::LockTimeout { path, timeout });
            }
            std::thread::sleep(LOCK_POLL);
        }
    }

    fn create_in(
        &self,
        vmm: &Path,
        spec: &VmSpec,
        work: &Path,
        final_dir: &Path,
        timeout: Duration,
    ) -> Result<(), TemplateError> {
        let start = Instant::now();
        let dir_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| TemplateError::Dir { path, source }
        };
        fs::create_dir(work).map_err(dir_err(work))?;
        let empty = work.join("empty-share");
        fs::create_dir(&empty).map_err(dir_err(&empty))?;
        let mut template_spec = spec.clone();
        for share in &mut template_spec.shared_dirs {
            share.path = empty.clone();
        }
        template_spec.nets = net::template_nets(&spec.nets);
        // The agent makes and removes one container before it is ready
        // (the kernel's first-use work of a container, done once here
        // instead of in every restored VM).
        template_spec.extra_cmdline = Some(
            template_spec
                .extra_cmdline
                .iter()
                .map(String::as_str)
                .chain(std::iter::once(WARM_UP_PARAM))
                .collect::<Vec<_>>()
                .join(" "),
        );
        // The template is shared by every pod: its VM is charged to no
        // pod's cgroup.
        template_spec.host = crate::vm::HostPlacement::default();
        let sandbox = Sandbox::boot(vmm, &template_spec, &work.join("vm"), timeout)
            .map_err(|e| TemplateError::Boot(Box::new(e)))?;
        // The agent's side of our connection (a reader and worker threads)
        // would otherwise be saved, and torn down by every restored guest.
        let vm = sandbox.into_vm();
        std::thread::sleep(SETTLE);
        // Written in the run directory (the only place a jailed VMM can
        // write), moved out before the VM and its directory go.
        let in_vm = vm.dir().join("template");
        vm.api(&nacre_vmm_api::Request::Snapshot { dir: in_vm.clone() })?
            .into_result()
            .map_err(TemplateError::Snapshot)?;
        let snapshot = work.join("template");
        fs::rename(&in_vm, &snapshot).map_err(dir_err(&snapshot))?;
        // The template VM is paused for good: dropping it kills it.
        drop(vm);
        let inputs = snapshot.join(INPUTS);
        let mut text = Self::inputs(vmm, spec)?.join("\n");
        text.push('\n');
        fs::write(&inputs, text).map_err(dir_err(&inputs))?;
        match fs::rename(&snapshot, final_dir) {
            Ok(()) => {}
            // Another process made the same template meanwhile.
            Err(_) if final_dir.join("header.json").is_file() => {}
            Err(source) => {
                return Err(TemplateError::Dir {
                    path: final_dir.to_path_buf(),
                    source,
                })
            }
        }
        tracing::info!(template = %final_dir.display(), took = ?start.elapsed(), "template created");
        Ok(())
    }
}

/// The file of a template that lists its key's inputs.
const INPUTS: &str = "inputs";
/// The store's creation lock file (a dot name that [`prune`] keeps:
/// `lock` is no pid).
///
/// [`prune`]: TemplateStore::prune
const LOCK: &str = ".lock";
/// How often a start waiting for the creation lock tries again.
const LOCK_POLL: Duration = Duration::from_millis(100);

/// A template directory is stale when it has no `inputs`, or one of the
/// files its `inputs` name (`vmm=`, `kernel=`, `initrd=` stat lines) is
/// gone or changed.
fn template_stale(dir: &Path) -> bool {
    let Ok(text) = fs::read_to_string(dir.join(INPUTS)) else {
        return dir.is_dir();
    };
    text.lines().any(|line| {
        let Some((what, rest)) = line.split_once('=') else {
            return false;
        };
        let what: &'static str = match what {
            "vmm" => "vmm",
            "kernel" => "kernel",
            "initrd" => "initrd",
            _ => return false,
        };
        // The path is everything before the five stat fields.
        let mut fields = rest.rsplitn(5, ':');
        let path = fields.nth(4).map(Path::new);
        path.is_none_or(|p| stat_line(what, p).map_or(true, |now| now != line))
    })
}

/// `<key>.<pid>`: the work directory of a template being made by `pid`,
/// orphaned when that process is gone.
fn work_dir_orphaned(name: &str) -> bool {
    let Some(pid) = name
        .rsplit_once('.')
        .and_then(|(_, pid)| pid.parse::<u32>().ok())
    else {
        return false;
    };
    // A zombie (killed, not yet reaped) is gone too.
    !crate::container::process::pid_alive(pid)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::GuestImage;

    pub(super) fn spec(dir: &Path) -> VmSpec {
        let kernel = dir.join("vmlinux");
        let initrd = dir.join("initrd");
        fs::write(&kernel, b"k").unwrap_or_default();
        fs::write(&initrd, b"i").unwrap_or_default();
        VmSpec::new(GuestImage { kernel, initrd })
    }

    #[test]
    fn one_process_at_a_time_makes_templates() {
        let dir = std::env::temp_dir().join(format!("nacre-tpllock-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let store = TemplateStore::new(dir.clone());
        store.ensure_root().unwrap_or_else(|e| panic!("{e}"));
        let held = store
            .lock(Duration::from_secs(1))
            .unwrap_or_else(|e| panic!("{e}"));
        // flock locks belong to the open file: a second open waits.
        let err = store.lock(Duration::from_millis(250)).err();
        assert!(
            matches!(err, Some(TemplateError::LockTimeout { .. })),
            "{err:?}"
        );
        let text = err.map(|e| e.to_string()).unwrap_or_default();
        assert!(text.contains("another process"), "{text}");
        drop(held);
        assert!(store.lock(Duration::from_millis(250)).is_ok());
        // The lock file survives a prune.
        assert!(store.prune().is_empty());
        assert!(dir.join(LOCK).is_file());
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn prune_removes_stale_and_orphaned_templates_only() {
        let dir = std::env::temp_dir().join(format!("nacre-tplprune-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let inputs_dir = dir.join("inputs");
        fs::create_dir_all(&inputs_dir).unwrap_or_default();
        let vmm = inputs_dir.join("nacre-vmm");
        fs::write(&vmm, b"v").unwrap_or_default();
        let s = spec(&inputs_dir);
        let store = TemplateStore::new(dir.join("store"));
        let make = |name: &str, inputs: Option<String>| {
            let t = store.root().join(name);
            fs::create_dir_all(&t).unwrap_or_default();
            fs::write(t.join("header.json"), b"{}").unwrap_or_default();
            if let Some(text) = inputs {
                fs::write(t.join(INPUTS), text).unwrap_or_default();
            }
            t
        };
        let text = TemplateStore::inputs(&vmm, &s)
            .map(|l| l.join("\n"))
            .unwrap_or_default();
        let current = make("current", Some(text.clone()));
        let legacy = make("legacy", None);
        let gone = make(
            "gone",
            Some(text.replace(&s.image.initrd.display().to_string(), "/nonexistent/initrd")),
        );
        let live_work = make(&format!(".k.{}", std::process::id()), None);
        let dead_work = make(".k.4294967295", None);
        assert!(store.prune().len() == 3);
        assert!(current.exists() && live_work.exists());
        assert!(!legacy.exists() && !gone.exists() && !dead_work.exists());
        // The kernel is rebuilt: the template made from the old one goes.
        std::thread::sleep(Duration::from_millis(20));
        fs::write(&s.image.kernel, b"new kernel").unwrap_or_default();
        assert_eq!(store.prune(), vec![current.clone()]);
        assert!(!current.exists());
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn key_covers_shape_and_inputs() {
        let dir = std::env::temp_dir().join(format!("nacre-tplkey-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap_or_default();
        let vmm = dir.join("nacre-vmm");
        fs::write(&vmm, b"v").unwrap_or_default();
        let s = spec(&dir);
        let k1 = TemplateStore::key(&vmm, &s).unwrap_or_default();
        assert_eq!(k1.len(), 32);
        assert_eq!(TemplateStore::key(&vmm, &s).unwrap_or_default(), k1);
        let mut bigger = s.clone();
        bigger.memory_mib = 512;
        assert_ne!(TemplateStore::key(&vmm, &bigger).unwrap_or_default(), k1);
        let mut shared = s.clone();
        shared
            .shared_dirs
            .push(nacre_vmm_api::SharedDir::new("nacre", dir.clone()));
        assert_ne!(TemplateStore::key(&vmm, &shared).unwrap_or_default(), k1);
        // Network devices count by number and MTU, not by tap or MAC.
        let net = |fd, mac: &str, mtu| crate::vm::VmNet {
            fd: Some(fd),
            mac: mac.into(),
            mtu: Some(mtu),
        };
        let mut pod = s.clone();
        pod.nets.push(net(5, "0a:58:0a:58:00:05", 1500));
        let k_pod = TemplateStore::key(&vmm, &pod).unwrap_or_default();
        assert_ne!(k_pod, k1);
        let mut other_pod = s.clone();
        other_pod.nets.push(net(9, "0a:58:0a:58:00:09", 1500));
        assert_eq!(
            TemplateStore::key(&vmm, &other_pod).unwrap_or_default(),
            k_pod
        );
        other_pod.nets[0].mtu = Some(9000);
        assert_ne!(
            TemplateStore::key(&vmm, &other_pod).unwrap_or_default(),
            k_pod
        );
        other_pod.nets[0].mtu = Some(1500);
        other_pod.nets.push(net(10, "0a:58:0a:58:00:0a", 1500));
        assert_ne!(
            TemplateStore::key(&vmm, &other_pod).unwrap_or_default(),
            k_pod
        );
        let e = TemplateStore::key(&dir.join("missing"), &s)
            .err()
            .map(|e| e.to_string());
        assert!(e.is_some_and(|e| e.contains("vmm") && e.contains("missing")));
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn store_dir_is_made_private_and_checked() {
        let root = std::env::temp_dir().join(format!("nacre-tplroot-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        let store = TemplateStore::new(root.clone());
        assert!(store.ensure_root().is_ok());
        let mode = fs::metadata(&root).map(|m| m.mode() & 0o777).unwrap_or(0);
        // create_dir_all honours the umask; ensure_root tightens it.
        assert_eq!(mode & 0o077, 0, "mode {mode:o}");
        let _ = fs::remove_dir_all(&root);
        fs::write(&root, b"file").unwrap_or_default();
        assert!(store.ensure_root().is_err());
        let _ = fs::remove_file(&root);
    }
}
