//! What a `nacre-vmm` binary supports, as `nacre-vmm --features` prints it
//! (one JSON object): the runtime asks instead of parsing `--help`.

use serde::{Deserialize, Serialize};

/// The features of a `nacre-vmm` binary. Every field defaults when
/// missing, so an older or newer binary's answer still parses.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Features {
    /// The binary's version (`nacre-vmm --version`).
    pub version: String,
    /// The long options it accepts, without `--` (e.g. `owner-fd`).
    pub options: Vec<String>,
    /// The keys a `--shared-dir TAG=PATH` value may add (`cache`: the
    /// cache mode per share).
    pub shared_dir_keys: Vec<String>,
    /// The `--net` backends (`fd`, `tap`, `detached`).
    pub net_backends: Vec<String>,
    /// The control socket's requests (`op`s).
    pub api_ops: Vec<String>,
}

impl Features {
    /// The options the runtime passes (`VmProcess` in nacre-runtime).
    pub const RUNTIME_NEEDS: &'static [&'static str] = &[
        "kernel",
        "initrd",
        "restore",
        "cmdline",
        "vcpus",
        "memory-mib",
        "serial-log",
        "vsock-uds",
        "shared-dir",
        "net",
        "api-socket",
        "owner-fd",
        "jail",
    ];

    /// Whether the binary accepts `--<option>`.
    pub fn supports(&self, option: &str) -> bool {
        self.options.iter().any(|o| o == option)
    }

    /// Whether each `--shared-dir` may name its own cache mode.
    pub fn per_share_cache(&self) -> bool {
        self.shared_dir_keys.iter().any(|k| k == "cache")
    }

    /// The options of [`Self::RUNTIME_NEEDS`] the binary lacks.
    pub fn missing_for_runtime(&self) -> Vec<&'static str> {
        Self::RUNTIME_NEEDS
            .iter()
            .copied()
            .filter(|o| !self.supports(o))
            .collect()
    }

    /// Parses the output of `nacre-vmm --features`.
    pub fn parse(json: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(json.trim())
    }

    /// The JSON `--features` prints.
    pub fn to_json(&self) -> Result<String, serde_json::Error> {
        serde_json::to_string(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_tolerates_unknown_fields() {
        let f = Features {
            version: "0.1.0".into(),
            options: vec!["kernel".into(), "owner-fd".into()],
            shared_dir_keys: vec!["cache".into()],
            net_backends: vec!["fd".into()],
            api_ops: vec!["status".into()],
        };
        let json = f.to_json().unwrap();
        assert_eq!(Features::parse(&json).unwrap(), f);
        assert!(f.supports("owner-fd") && !f.supports("jail"));
        assert!(f.per_share_cache());
        assert!(f.missing_for_runtime().contains(&"jail"));
        let old = Features::parse(r#"{"version":"0.0.9","later":true}"#).unwrap();
        assert!(old.options.is_empty() && !old.per_share_cache());
    }
}
