//! Kubernetes side of nacre under test.
//!
//! The deployment files in `deploy/` are checked by `tests/deploy.rs`.
