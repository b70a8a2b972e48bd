//! What one virtio-fs device shares: a tag the guest mounts by and a host
//! directory; the `TAG=PATH` syntax of `--shared-dir`; the device's
//! configuration space.

use std::path::PathBuf;

/// Bytes of the tag field in the configuration space (virtio 1.2, 5.11.4).
pub const TAG_LEN: usize = 36;
/// The configuration space: tag, then `num_request_queues` (u32 LE).
pub const CONFIG_LEN: usize = TAG_LEN + 4;

/// A directory shared with the guest under a tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedDir {
    pub tag: String,
    pub path: PathBuf,
    pub cache: CacheMode,
}

/// How the guest may cache file data of a share.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum CacheMode {
    /// Close-to-open: cached data is dropped whenever a file is opened
    /// again. Right when the host may change the files.
    #[default]
    Auto,
    /// Data stays cached across opens. Right when only this guest changes
    /// the files (a container rootfs): no re-reads on every exec.
    Always,
    /// No data cache at all (direct I/O).
    Never,
}

impl std::fmt::Display for CacheMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Auto => "auto",
            Self::Always => "always",
            Self::Never => "never",
        })
    }
}

/// A malformed `--shared-dir` value or an unusable tag.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SharedDirError {
    #[error("{0:?}: expected TAG=PATH")]
    MissingEquals(String),
    #[error("{0:?}: the tag is empty")]
    EmptyTag(String),
    #[error("tag {tag:?} is {len} bytes long, at most {TAG_LEN} fit")]
    TagTooLong { tag: String, len: usize },
    #[error("tag {0:?} contains a NUL byte")]
    TagNul(String),
    #[error("{0:?}: the path is empty")]
    EmptyPath(String),
    #[error("tag {0:?} is used twice")]
    DuplicateTag(String),
}

impl SharedDir {
    /// Parses `TAG=PATH` (split at the first `=`; the path may hold more).
    pub fn parse(value: &str) -> Result<Self, SharedDirError> {
        let Some((tag, path)) = value.split_once('=') else {
            return Err(SharedDirError::MissingEquals(value.to_string()));
        };
        if tag.is_empty() {
            return Err(SharedDirError::EmptyTag(value.to_string()));
        }
        validate_tag(tag)?;
        if path.is_empty() {
            return Err(SharedDirError::EmptyPath(value.to_string()));
        }
        Ok(Self {
            tag: tag.to_string(),
            path: PathBuf::from(path),
            cache: CacheMode::Auto,
        })
    }
}

impl std::str::FromStr for SharedDir {
    type Err = SharedDirError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// Checks that `tag` fits the configuration space: 1 to 36 bytes of UTF-8
/// without NUL (the guest reads it up to the first NUL).
pub fn validate_tag(tag: &str) -> Result<(), SharedDirError> {
    if tag.is_empty() {
        return Err(SharedDirError::EmptyTag(format!("{tag}=")));
    }
    if tag.len() > TAG_LEN {
        return Err(SharedDirError::TagTooLong {
            tag: tag.to_string(),
            len: tag.len(),
        });
    }
    if tag.contains('\0') {
        return Err(SharedDirError::TagNul(tag.to_string()));
    }
    Ok(())
}

/// Checks every tag and that no tag appears twice.
pub fn validate_all(dirs: &[SharedDir]) -> Result<(), SharedDirError> {
    for (i, dir) in dirs.iter().enumerate() {
        validate_tag(&dir.tag)?;
        if dir.path.as_os_str().is_empty() {
            return Err(SharedDirError::EmptyPath(format!("{}=", dir.tag)));
        }
        if dirs[..i].iter().any(|d| d.tag == dir.tag) {
            return Err(SharedDirError::DuplicateTag(dir.tag.clone()));
        }
    }
    Ok(())
}

/// The configuration space bytes for `tag` and `num_request_queues`.
pub fn config_space(tag: &str, num_request_queues: u32) -> [u8; CONFIG_LEN] {
    let mut space = [0u8; CONFIG_LEN];
    let bytes = tag.as_bytes();
    let n = bytes.len().min(TAG_LEN);
    space[..n].copy_from_slice(&bytes[..n]);
    space[TAG_LEN..].copy_from_slice(&num_request_queues.to_le_bytes());
    space
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_tag_and_path() {
        assert_eq!(
            SharedDir::parse("nacre=/tmp/a=b"),
            Ok(SharedDir {
                tag: "nacre".into(),
                path: "/tmp/a=b".into(),
                cache: CacheMode::Auto,
            })
        );
    }

    #[test]
    fn rejects_bad_values() {
        assert_eq!(
            SharedDir::parse("/tmp/x"),
            Err(SharedDirError::MissingEquals("/tmp/x".into()))
        );
        assert!(matches!(
            SharedDir::parse("=/tmp/x"),
            Err(SharedDirError::EmptyTag(_))
        ));
        assert!(matches!(
            SharedDir::parse("t="),
            Err(SharedDirError::EmptyPath(_))
        ));
        let long = "x".repeat(TAG_LEN + 1);
        let err = SharedDir::parse(&format!("{long}=/tmp")).unwrap_err();
        assert_eq!(
            err,
            SharedDirError::TagTooLong {
                tag: long.clone(),
                len: 37
            }
        );
        assert!(err.to_string().contains(&long));
        assert!(SharedDir::parse(&format!("{}=/tmp", "x".repeat(TAG_LEN))).is_ok());
        assert!(matches!(
            SharedDir::parse("a\0b=/tmp"),
            Err(SharedDirError::TagNul(_))
        ));
    }

    #[test]
    fn duplicate_tags_rejected() {
        let a = SharedDir::parse("a=/x").unwrap();
        let b = SharedDir::parse("b=/x").unwrap();
        assert_eq!(validate_all(&[a.clone(), b.clone()]), Ok(()));
        assert_eq!(
            validate_all(&[a.clone(), b, a]),
            Err(SharedDirError::DuplicateTag("a".into()))
        );
    }

    #[test]
    fn config_space_layout() {
        let space = config_space("nacre", 1);
        assert_eq!(space.len(), 40);
        assert_eq!(&space[..5], b"nacre");
        assert!(space[5..TAG_LEN].iter().all(|&b| b == 0));
        assert_eq!(&space[TAG_LEN..], &[1, 0, 0, 0]);
        let full = "y".repeat(TAG_LEN);
        let space = config_space(&full, 2);
        assert_eq!(&space[..TAG_LEN], full.as_bytes());
        assert_eq!(&space[TAG_LEN..], &[2, 0, 0, 0]);
    }
}
