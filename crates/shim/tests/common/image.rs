//! A minimal OCI image archive built here (no registry): one layer with a
//! static busybox, its config, manifest and index.

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Command;

const APPLETS: &[&str] = &[
    "sh",
    "cat",
    "echo",
    "uname",
    "sleep",
    "head",
    "yes",
    "md5sum",
    "sha256sum",
    "tty",
    "stty",
    "true",
    "false",
    "ls",
    "wc",
    "dd",
    "hostname",
    "ps",
];

fn sha256(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

fn put_blob(blobs: &Path, file: &Path) -> (String, u64) {
    let digest = sha256(file);
    let size = std::fs::metadata(file).unwrap().len();
    std::fs::copy(file, blobs.join(&digest)).unwrap();
    (digest, size)
}

/// Builds `<dir>/image.tar`, an OCI archive whose index names the image
/// `latest` (import it with `--base-name`).
pub fn build(dir: &Path) -> PathBuf {
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .expect("busybox-static must be installed (Debian package busybox-static)");
    let rootfs = dir.join("rootfs");
    let oci = dir.join("oci");
    let blobs = oci.join("blobs/sha256");
    std::fs::create_dir_all(rootfs.join("bin")).unwrap();
    for d in ["proc", "sys", "dev", "tmp", "etc", "run"] {
        std::fs::create_dir_all(rootfs.join(d)).unwrap();
    }
    std::fs::copy(&busybox, rootfs.join("bin/busybox")).unwrap();
    for a in APPLETS {
        let _ = symlink("busybox", rootfs.join("bin").join(a));
    }
    std::fs::create_dir_all(&blobs).unwrap();
    let layer = dir.join("layer.tar");
    let st = Command::new("tar")
        .args(["--numeric-owner", "--owner=0", "--group=0", "-C"])
        .arg(&rootfs)
        .arg("-cf")
        .arg(&layer)
        .arg(".")
        .status()
        .unwrap();
    assert!(st.success());
    let (layer_digest, layer_size) = put_blob(&blobs, &layer);
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Env": ["PATH=/bin"], "Cmd": ["sh"]},
        "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{layer_digest}")]}
    });
    let config_file = dir.join("config.json");
    std::fs::write(&config_file, serde_json::to_vec(&config).unwrap()).unwrap();
    let (config_digest, config_size) = put_blob(&blobs, &config_file);
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": format!("sha256:{config_digest}"), "size": config_size},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": format!("sha256:{layer_digest}"), "size": layer_size}]
    });
    let manifest_file = dir.join("manifest.json");
    std::fs::write(&manifest_file, serde_json::to_vec(&manifest).unwrap()).unwrap();
    let (manifest_digest, manifest_size) = put_blob(&blobs, &manifest_file);
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": format!("sha256:{manifest_digest}"), "size": manifest_size,
            "platform": {"architecture": "amd64", "os": "linux"},
            "annotations": {"org.opencontainers.image.ref.name": "latest"}
        }]
    });
    std::fs::write(oci.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    std::fs::write(oci.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let archive = dir.join("image.tar");
    let st = Command::new("tar")
        .arg("-C")
        .arg(&oci)
        .arg("-cf")
        .arg(&archive)
        .args(["index.json", "oci-layout", "blobs"])
        .status()
        .unwrap();
    assert!(st.success());
    archive
}
