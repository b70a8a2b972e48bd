//! `--shared-dir TAG=PATH[,cache=MODE]`: a host directory served to the
//! guest over virtio-fs under a tag, and how the guest may cache it.

use std::ffi::OsString;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Bytes of the tag field in the virtio-fs configuration space (virtio
/// 1.2, 5.11.4): the longest tag.
pub const TAG_LEN: usize = 36;

/// The key that sets a share's cache mode inside `--shared-dir`.
const CACHE_KEY: &str = ",cache=";

/// A directory shared with the guest under a tag.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SharedDir {
    pub tag: String,
    pub path: PathBuf,
    pub cache: CacheMode,
}

/// How the guest may cache file data of a share.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
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

impl CacheMode {
    /// Every mode, in the order `--help` lists them.
    pub const ALL: [CacheMode; 3] = [Self::Auto, Self::Always, Self::Never];

    /// The mode's name on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Always => "always",
            Self::Never => "never",
        }
    }
}

impl std::fmt::Display for CacheMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for CacheMode {
    type Err = SharedDirError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|m| m.as_str() == s)
            .ok_or_else(|| SharedDirError::BadCache(s.to_string()))
    }
}

/// A malformed `--shared-dir` value or an unusable tag.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SharedDirError {
    #[error("{0:?}: expected TAG=PATH[,cache=auto|always|never]")]
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
    #[error("{0:?} is not a cache mode (auto, always, never)")]
    BadCache(String),
}

/// One `--shared-dir` value as given: the cache mode only if it names one
/// (a share without `cache=` gets the process default,
/// `--shared-dir-cache`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedDirValue {
    pub tag: String,
    pub path: PathBuf,
    pub cache: Option<CacheMode>,
}

impl SharedDirValue {
    /// Parses `TAG=PATH[,cache=MODE]`: split at the first `=` (the path
    /// may hold more); a trailing `,cache=MODE` with a known mode sets the
    /// cache mode, anything else belongs to the path.
    pub fn parse(value: &str) -> Result<Self, SharedDirError> {
        let Some((tag, rest)) = value.split_once('=') else {
            return Err(SharedDirError::MissingEquals(value.to_string()));
        };
        if tag.is_empty() {
            return Err(SharedDirError::EmptyTag(value.to_string()));
        }
        validate_tag(tag)?;
        let (path, cache) = match rest.rsplit_once(CACHE_KEY) {
            Some((path, mode)) => (path, Some(mode.parse::<CacheMode>()?)),
            None => (rest, None),
        };
        if path.is_empty() {
            return Err(SharedDirError::EmptyPath(value.to_string()));
        }
        Ok(Self {
            tag: tag.to_string(),
            path: PathBuf::from(path),
            cache,
        })
    }

    /// The share, with `default` as its cache mode unless it names one.
    pub fn resolve(self, default: CacheMode) -> SharedDir {
        SharedDir {
            tag: self.tag,
            path: self.path,
            cache: self.cache.unwrap_or(default),
        }
    }
}

impl std::str::FromStr for SharedDirValue {
    type Err = SharedDirError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl SharedDir {
    /// A share with the default cache mode ([`CacheMode::Auto`]).
    pub fn new(tag: impl Into<String>, path: impl Into<PathBuf>) -> Self {
        Self {
            tag: tag.into(),
            path: path.into(),
            cache: CacheMode::default(),
        }
    }

    /// Parses `TAG=PATH[,cache=MODE]` (without `cache=`: auto).
    pub fn parse(value: &str) -> Result<Self, SharedDirError> {
        Ok(SharedDirValue::parse(value)?.resolve(CacheMode::default()))
    }

    /// The `--shared-dir` value. `cache=` is written when the mode is not
    /// the default, or when the path itself ends like a `cache=` key (so
    /// the parser does not take it for one).
    pub fn to_arg(&self) -> OsString {
        let mut arg = OsString::from(format!("{}=", self.tag));
        arg.push(&self.path);
        let ambiguous = self.path.to_string_lossy().contains(CACHE_KEY);
        if self.cache != CacheMode::default() || ambiguous {
            arg.push(format!("{CACHE_KEY}{}", self.cache));
        }
        arg
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
    fn cache_key_per_share() {
        let v = SharedDirValue::parse("root=/run/x,cache=always").unwrap();
        assert_eq!(v.cache, Some(CacheMode::Always));
        assert_eq!(v.path, PathBuf::from("/run/x"));
        let v = SharedDirValue::parse("root=/run/x,y").unwrap();
        assert_eq!((v.cache, v.path), (None, PathBuf::from("/run/x,y")));
        assert_eq!(
            SharedDirValue::parse("root=/run/x")
                .unwrap()
                .resolve(CacheMode::Never)
                .cache,
            CacheMode::Never
        );
        assert_eq!(
            SharedDirValue::parse("root=/x,cache=sometimes"),
            Err(SharedDirError::BadCache("sometimes".into()))
        );
        assert!(matches!(
            SharedDirValue::parse("root=,cache=auto"),
            Err(SharedDirError::EmptyPath(_))
        ));
    }

    #[test]
    fn to_arg_round_trips() {
        for dir in [
            SharedDir::new("nacre", "/tmp/a=b"),
            SharedDir {
                cache: CacheMode::Always,
                ..SharedDir::new("root", "/r")
            },
            SharedDir::new("odd", "/x,cache=never"),
        ] {
            let arg = dir.to_arg();
            assert_eq!(SharedDir::parse(&arg.to_string_lossy()), Ok(dir), "{arg:?}");
        }
        assert_eq!(SharedDir::new("a", "/b").to_arg(), OsString::from("a=/b"));
    }
}
