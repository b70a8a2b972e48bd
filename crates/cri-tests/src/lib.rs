//! Kubernetes side of nacre under test.
//!
//! - [`cri`]: a blocking CRI v1 client (k8s-cri + tonic over a Unix socket).
//! - [`stream`]: CRI Exec with streams (WebSocket to containerd's
//!   streaming server).
//! - [`containerd`]: a private containerd with CRI, runc + nacre handlers,
//!   bridge CNI, and locally built pause and busybox images ([`image`]).
//! - The deployment files in `deploy/` are checked by `tests/deploy.rs`.

pub mod containerd;
pub mod cri;
pub mod image;
pub mod stream;
