//! The template header and the checks a restore makes before it trusts a
//! template: magic, format version, VMM version, the checksum of the
//! state, the size of the memory file, and (when the caller names them)
//! the kernel and initrd the template was booted from.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::memory::MemoryFileError;
use super::state::SnapshotState;
use super::{HEADER_FILE, STATE_FILE};

/// The first field of every header.
pub const MAGIC: &str = "nacre-vm-template";
/// The layout of `state.json` and `memory.bin`; bumped on any change.
pub const FORMAT_VERSION: u32 = 2;
/// This VMM's version, which must match the template's.
pub const VMM_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Why a template cannot be written or used.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("template {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("template {path}: malformed: {reason}")]
    Malformed { path: PathBuf, reason: String },
    #[error("template {path}: not a nacre VM template (magic {found:?})")]
    Magic { path: PathBuf, found: String },
    #[error(
        "template {path}: format version {found}, this nacre-vmm reads version {FORMAT_VERSION}"
    )]
    FormatVersion { path: PathBuf, found: u32 },
    #[error("template {path}: made by nacre-vmm {found}, this is nacre-vmm {VMM_VERSION}")]
    VmmVersion { path: PathBuf, found: String },
    #[error("template {path}: checksum mismatch (the file is corrupt)")]
    Checksum { path: PathBuf },
    #[error("template was made from {what} {saved} (sha256 {saved_sha256}), not from {given} (sha256 {given_sha256})")]
    ImageMismatch {
        what: &'static str,
        saved: PathBuf,
        saved_sha256: String,
        given: PathBuf,
        given_sha256: String,
    },
    #[error("template memory: {0}")]
    Memory(#[from] MemoryFileError),
    #[error("writing template {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Identifies a kernel or initrd file: its sha256, plus what `stat` says,
/// so an unchanged file need not be hashed again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileId {
    pub path: PathBuf,
    pub sha256: String,
    pub size: u64,
    pub dev: u64,
    pub ino: u64,
    pub mtime_ns: i64,
}

fn read_err(path: &Path) -> impl FnOnce(std::io::Error) -> TemplateError + '_ {
    move |source| TemplateError::Read {
        path: path.to_path_buf(),
        source,
    }
}

/// The sha256 of a file, in hex.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut file = File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

/// The sha256 of `bytes`, in hex.
pub fn sha256_bytes(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn stat_id(meta: &std::fs::Metadata) -> (u64, u64, u64, i64) {
    (
        meta.size(),
        meta.dev(),
        meta.ino(),
        meta.mtime() * 1_000_000_000 + meta.mtime_nsec(),
    )
}

impl FileId {
    /// Identifies the file at `path` (hashing it).
    pub fn of(path: &Path) -> Result<Self, TemplateError> {
        let meta = std::fs::metadata(path).map_err(read_err(path))?;
        let sha256 = sha256_file(path).map_err(read_err(path))?;
        let (size, dev, ino, mtime_ns) = stat_id(&meta);
        Ok(Self {
            path: std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf()),
            sha256,
            size,
            dev,
            ino,
            mtime_ns,
        })
    }

    /// Checks that `given` is the same file content; hashes it only when
    /// `stat` says it may have changed.
    pub fn check(&self, what: &'static str, given: &Path) -> Result<(), TemplateError> {
        let meta = std::fs::metadata(given).map_err(read_err(given))?;
        if stat_id(&meta) == (self.size, self.dev, self.ino, self.mtime_ns) {
            return Ok(());
        }
        let given_sha256 = sha256_file(given).map_err(read_err(given))?;
        if given_sha256 == self.sha256 {
            return Ok(());
        }
        Err(TemplateError::ImageMismatch {
            what,
            saved: self.path.clone(),
            saved_sha256: self.sha256.clone(),
            given: given.to_path_buf(),
            given_sha256,
        })
    }
}

/// `header.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    pub magic: String,
    pub format_version: u32,
    pub vmm_version: String,
    pub kernel: FileId,
    pub initrd: Option<FileId>,
    /// Size of `memory.bin` (the guest's RAM).
    pub memory_size: u64,
    /// sha256 of `state.json`.
    pub state_sha256: String,
    /// Checksum of `memory.bin` (`memory::digest`: sha256 over its
    /// non-zero pages and their offsets).
    pub memory_sha256: String,
    /// When the template was written, seconds since the Unix epoch.
    pub created_unix: u64,
}

impl Header {
    /// A header for this VMM; the state's checksum is filled in by
    /// [`write_state`].
    pub fn new(
        kernel: FileId,
        initrd: Option<FileId>,
        memory_size: u64,
        memory_sha256: String,
    ) -> Self {
        Self {
            magic: MAGIC.to_string(),
            format_version: FORMAT_VERSION,
            vmm_version: VMM_VERSION.to_string(),
            kernel,
            initrd,
            memory_size,
            state_sha256: String::new(),
            memory_sha256,
            created_unix: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
        }
    }

    /// Checks the fields that say whether this VMM can read the template.
    pub fn check_compatible(&self, dir: &Path) -> Result<(), TemplateError> {
        let path = dir.join(HEADER_FILE);
        if self.magic != MAGIC {
            return Err(TemplateError::Magic {
                path,
                found: self.magic.clone(),
            });
        }
        if self.format_version != FORMAT_VERSION {
            return Err(TemplateError::FormatVersion {
                path,
                found: self.format_version,
            });
        }
        if self.vmm_version != VMM_VERSION {
            return Err(TemplateError::VmmVersion {
                path,
                found: self.vmm_version.clone(),
            });
        }
        Ok(())
    }

    /// Checks the kernel and initrd the caller expects against the ones
    /// the template was booted from.
    pub fn check_image(
        &self,
        kernel: Option<&Path>,
        initrd: Option<&Path>,
    ) -> Result<(), TemplateError> {
        if let Some(kernel) = kernel {
            self.kernel.check("kernel", kernel)?;
        }
        if let Some(given) = initrd {
            match &self.initrd {
                Some(saved) => saved.check("initrd", given)?,
                None => {
                    return Err(TemplateError::ImageMismatch {
                        what: "initrd",
                        saved: PathBuf::from("(none)"),
                        saved_sha256: String::new(),
                        given: given.to_path_buf(),
                        given_sha256: sha256_file(given).unwrap_or_default(),
                    })
                }
            }
        }
        Ok(())
    }
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<(), TemplateError> {
    let werr = |source| TemplateError::Write {
        path: path.to_path_buf(),
        source,
    };
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).map_err(werr)?;
    File::open(&tmp).and_then(|f| f.sync_all()).map_err(werr)?;
    std::fs::rename(&tmp, path).map_err(werr)
}

/// Writes `state.json`, then `header.json` with the state's checksum.
/// The header is the last file written: a template without one is
/// incomplete and never read.
pub fn write_state(
    dir: &Path,
    mut header: Header,
    state: &SnapshotState,
) -> Result<Header, TemplateError> {
    let state_path = dir.join(STATE_FILE);
    let bytes = serde_json::to_vec(state).map_err(|e| TemplateError::Write {
        path: state_path.clone(),
        source: std::io::Error::other(e),
    })?;
    write_file(&state_path, &bytes)?;
    header.state_sha256 = sha256_bytes(&bytes);
    let header_path = dir.join(HEADER_FILE);
    let text = serde_json::to_vec_pretty(&header).map_err(|e| TemplateError::Write {
        path: header_path.clone(),
        source: std::io::Error::other(e),
    })?;
    write_file(&header_path, &text)?;
    Ok(header)
}

/// Reads and checks `header.json` of the template in `dir`.
pub fn read_header(dir: &Path) -> Result<Header, TemplateError> {
    let path = dir.join(HEADER_FILE);
    let bytes = std::fs::read(&path).map_err(read_err(&path))?;
    let header: Header = serde_json::from_slice(&bytes).map_err(|e| TemplateError::Malformed {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    header.check_compatible(dir)?;
    Ok(header)
}

/// Reads `state.json` and checks it against `header`.
pub fn read_state(dir: &Path, header: &Header) -> Result<SnapshotState, TemplateError> {
    let path = dir.join(STATE_FILE);
    let bytes = std::fs::read(&path).map_err(read_err(&path))?;
    if sha256_bytes(&bytes) != header.state_sha256 {
        return Err(TemplateError::Checksum { path });
    }
    serde_json::from_slice(&bytes).map_err(|e| TemplateError::Malformed {
        path,
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("nacre-fmt-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap_or_default();
        dir
    }

    #[test]
    fn file_id_detects_changed_content() {
        let dir = tmp("fileid");
        let k = dir.join("vmlinux");
        std::fs::write(&k, b"kernel one").unwrap_or_default();
        let Ok(id) = FileId::of(&k) else {
            panic!("file id");
        };
        assert!(id.check("kernel", &k).is_ok());
        // Same bytes elsewhere: stat differs, the hash matches.
        let copy = dir.join("copy");
        std::fs::write(&copy, b"kernel one").unwrap_or_default();
        assert!(id.check("kernel", &copy).is_ok());
        std::fs::write(&copy, b"kernel two").unwrap_or_default();
        let e = id
            .check("kernel", &copy)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("template was made from kernel"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn header_checks_name_the_problem() {
        let dir = tmp("header");
        let k = dir.join("vmlinux");
        std::fs::write(&k, b"k").unwrap_or_default();
        let Ok(kernel) = FileId::of(&k) else {
            panic!("file id");
        };
        let h = Header::new(kernel, None, 1 << 20, "m".into());
        assert!(h.check_compatible(&dir).is_ok());
        let mut bad = h.clone();
        bad.vmm_version = "0.0.0-old".into();
        assert!(matches!(
            bad.check_compatible(&dir),
            Err(TemplateError::VmmVersion { .. })
        ));
        let mut bad = h.clone();
        bad.format_version = 99;
        assert!(matches!(
            bad.check_compatible(&dir),
            Err(TemplateError::FormatVersion { found: 99, .. })
        ));
        let mut bad = h;
        bad.magic = "x".into();
        assert!(matches!(
            bad.check_compatible(&dir),
            Err(TemplateError::Magic { .. })
        ));
        std::fs::write(dir.join(HEADER_FILE), b"{not json").unwrap_or_default();
        assert!(matches!(
            read_header(&dir),
            Err(TemplateError::Malformed { .. })
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
