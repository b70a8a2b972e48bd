//! containerd's runtime options for a task (`CreateTaskRequest.options`).
//!
//! containerd passes the options of the container's runtime (CRI: the
//! runtime's `options` table in containerd's config; ctr:
//! `--runtime-config-path`) as `runtimeoptions.v1.Options`: a nacre
//! configuration file to use instead of the default one (`ConfigPath`),
//! or its TOML text (`ConfigBody`). Options of any other type (runc's,
//! say) are refused: they would be silently ignored otherwise.

use std::path::{Path, PathBuf};

use containerd_shim::protos::protobuf::rt::WireType;
use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::protos::protobuf::CodedInputStream;

use crate::config::Config;
use crate::error::ShimError;

/// The type of the options nacre understands.
pub const RUNTIME_OPTIONS_TYPE: &str = "runtimeoptions.v1.Options";

/// `runtimeoptions.v1.Options`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuntimeOptions {
    /// A configuration file (field 2, `config_path`).
    pub config_path: String,
    /// A configuration's TOML text (field 3, `config_body`).
    pub config_body: String,
}

impl RuntimeOptions {
    /// Decodes the task's options; no options (or empty ones) are `None`.
    pub fn from_any(any: Option<&Any>) -> Result<Option<Self>, ShimError> {
        let Some(any) = any.filter(|a| !a.type_url.is_empty() || !a.value.is_empty()) else {
            return Ok(None);
        };
        let type_name = any.type_url.rsplit('/').next().unwrap_or_default();
        if type_name != RUNTIME_OPTIONS_TYPE {
            return Err(ShimError::InvalidArgument(format!(
                "runtime options of type {:?}: nacre takes {RUNTIME_OPTIONS_TYPE} \
                 (ConfigPath or ConfigBody)",
                any.type_url
            )));
        }
        Self::decode(&any.value).map(Some)
    }

    fn decode(bytes: &[u8]) -> Result<Self, ShimError> {
        let bad = |e: containerd_shim::protos::protobuf::Error| {
            ShimError::InvalidArgument(format!("decoding {RUNTIME_OPTIONS_TYPE}: {e}"))
        };
        let mut options = Self::default();
        let mut input = CodedInputStream::from_bytes(bytes);
        while !input.eof().map_err(bad)? {
            let tag = input.read_raw_varint32().map_err(bad)?;
            let wire_type = WireType::new(tag & 7).ok_or_else(|| {
                ShimError::InvalidArgument(format!(
                    "decoding {RUNTIME_OPTIONS_TYPE}: wire type {} of field {}",
                    tag & 7,
                    tag >> 3
                ))
            })?;
            match (tag >> 3, wire_type) {
                (2, WireType::LengthDelimited) => {
                    options.config_path = input.read_string().map_err(bad)?;
                }
                (3, WireType::LengthDelimited) => {
                    options.config_body = input.read_string().map_err(bad)?;
                }
                // 1 is `type_url` (of the options a body holds): unused.
                _ => input.skip_field(wire_type).map_err(bad)?,
            }
        }
        Ok(options)
    }

    /// The configuration these options select, if they select one.
    pub fn config(&self) -> Result<Option<Config>, ShimError> {
        if !self.config_body.is_empty() {
            let origin = PathBuf::from(format!("{RUNTIME_OPTIONS_TYPE} ConfigBody"));
            return Ok(Some(Config::parse(&self.config_body, &origin)?));
        }
        if !self.config_path.is_empty() {
            return Ok(Some(Config::from_file(Path::new(&self.config_path))?));
        }
        Ok(None)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    fn any(type_url: &str, value: Vec<u8>) -> Any {
        Any {
            type_url: type_url.to_string(),
            value,
            ..Default::default()
        }
    }

    /// Field `number` as a length-delimited string.
    fn field(number: u8, text: &str) -> Vec<u8> {
        let mut v = vec![(number << 3) | 2, u8::try_from(text.len()).unwrap()];
        v.extend_from_slice(text.as_bytes());
        v
    }

    #[test]
    fn no_options_is_none() {
        assert_eq!(RuntimeOptions::from_any(None).unwrap(), None);
        let empty = Any::default();
        assert_eq!(RuntimeOptions::from_any(Some(&empty)).unwrap(), None);
    }

    #[test]
    fn config_path_and_body_decode() {
        let mut value = field(1, "x");
        value.extend(field(2, "/etc/nacre/other.toml"));
        value.extend(field(3, "log_level = \"debug\""));
        let o = RuntimeOptions::from_any(Some(&any("runtimeoptions.v1.Options", value)))
            .unwrap()
            .unwrap();
        assert_eq!(o.config_path, "/etc/nacre/other.toml");
        assert_eq!(o.config_body, "log_level = \"debug\"");
        // The body wins over the path.
        assert_eq!(o.config().unwrap().unwrap().log_level, "debug");
    }

    #[test]
    fn bad_options_are_refused_clearly() {
        let runc = any("containerd.runc.v1.Options", vec![]);
        let e = RuntimeOptions::from_any(Some(&runc)).unwrap_err();
        assert!(e.to_string().contains("containerd.runc.v1.Options"), "{e}");
        let truncated = any(RUNTIME_OPTIONS_TYPE, vec![0x12, 10, b'a']);
        assert!(RuntimeOptions::from_any(Some(&truncated)).is_err());
        let missing = RuntimeOptions {
            config_path: "/nonexistent/nacre.toml".into(),
            ..Default::default()
        };
        let e = missing.config().unwrap_err();
        assert!(e.to_string().contains("/nonexistent/nacre.toml"), "{e}");
        let invalid = RuntimeOptions {
            config_body: "[vm]\nvcpus = 0".into(),
            ..Default::default()
        };
        let e = invalid.config().unwrap_err();
        assert!(e.to_string().contains("vm.vcpus"), "{e}");
    }
}
