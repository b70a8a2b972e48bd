//! Minimal OCI image archives built locally (no registry): one layer with
//! the host's static busybox and a few applet links, a config with the
//! given command, manifest and index. `ctr images import --base-name N`
//! names the image `N:latest`.

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Command;

/// What can go wrong building an image archive.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error(
        "no static busybox at /bin/busybox or /usr/bin/busybox (Debian package busybox-static)"
    )]
    NoBusybox,
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0} failed")]
    Tool(String),
}

/// busybox applets linked in `/bin` of every image.
pub const APPLETS: &[&str] = &[
    "sh", "cat", "echo", "uname", "sleep", "hostname", "ls", "mount", "ip", "ifconfig", "nc",
    "httpd", "wget", "nslookup", "ps", "true", "false", "grep", "head", "wc", "mkdir", "touch",
    "rm", "id", "env", "date", "df",
];

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> ImageError {
    let path = path.to_path_buf();
    move |source| ImageError::Io { what, path, source }
}

fn run(cmd: &mut Command) -> Result<Vec<u8>, ImageError> {
    let out = cmd
        .output()
        .map_err(|e| ImageError::Tool(format!("{cmd:?}: {e}")))?;
    if !out.status.success() {
        return Err(ImageError::Tool(format!(
            "{cmd:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(out.stdout)
}

/// Stores `file` as a blob; returns its digest (hex) and size.
fn put_blob(blobs: &Path, file: &Path) -> Result<(String, u64), ImageError> {
    let out = run(Command::new("sha256sum").arg(file))?;
    let digest = String::from_utf8_lossy(&out)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string();
    let size = std::fs::metadata(file).map_err(io("stat", file))?.len();
    std::fs::copy(file, blobs.join(&digest)).map_err(io("copy", file))?;
    Ok((digest, size))
}

fn write(path: &Path, data: &[u8]) -> Result<(), ImageError> {
    std::fs::write(path, data).map_err(io("write", path))
}

/// Builds `<dir>/image.tar`: busybox, `/bin` links, and `cmd` as the
/// image's command. `dir` must be empty or missing.
pub fn build(dir: &Path, cmd: &[&str]) -> Result<PathBuf, ImageError> {
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .ok_or(ImageError::NoBusybox)?;
    let rootfs = dir.join("rootfs");
    let oci = dir.join("oci");
    let blobs = oci.join("blobs/sha256");
    for d in ["bin", "proc", "sys", "dev", "tmp", "etc", "run", "var/www"] {
        let p = rootfs.join(d);
        std::fs::create_dir_all(&p).map_err(io("mkdir", &p))?;
    }
    std::fs::create_dir_all(&blobs).map_err(io("mkdir", &blobs))?;
    let bb = rootfs.join("bin/busybox");
    std::fs::copy(&busybox, &bb).map_err(io("copy", &busybox))?;
    for a in APPLETS {
        let link = rootfs.join("bin").join(a);
        symlink("busybox", &link).map_err(io("symlink", &link))?;
    }
    write(&rootfs.join("var/www/index.html"), b"hello from a pod\n")?;
    let layer = dir.join("layer.tar");
    run(Command::new("tar")
        .args(["--numeric-owner", "--owner=0", "--group=0", "-C"])
        .arg(&rootfs)
        .arg("-cf")
        .arg(&layer)
        .arg("."))?;
    let (layer_digest, layer_size) = put_blob(&blobs, &layer)?;
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Env": ["PATH=/bin"], "Cmd": cmd},
        "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{layer_digest}")]}
    });
    let config_file = dir.join("config.json");
    write(&config_file, config.to_string().as_bytes())?;
    let (config_digest, config_size) = put_blob(&blobs, &config_file)?;
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": format!("sha256:{config_digest}"), "size": config_size},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": format!("sha256:{layer_digest}"), "size": layer_size}]
    });
    let manifest_file = dir.join("manifest.json");
    write(&manifest_file, manifest.to_string().as_bytes())?;
    let (manifest_digest, manifest_size) = put_blob(&blobs, &manifest_file)?;
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": format!("sha256:{manifest_digest}"), "size": manifest_size,
            "platform": {"architecture": "amd64", "os": "linux"},
            "annotations": {"org.opencontainers.image.ref.name": "latest"}
        }]
    });
    write(&oci.join("index.json"), index.to_string().as_bytes())?;
    write(
        &oci.join("oci-layout"),
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    )?;
    let archive = dir.join("image.tar");
    run(Command::new("tar")
        .arg("-C")
        .arg(&oci)
        .arg("-cf")
        .arg(&archive)
        .args(["index.json", "oci-layout", "blobs"]))?;
    Ok(archive)
}
