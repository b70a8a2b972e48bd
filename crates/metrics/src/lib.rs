//! `nacre-metrics`: one Prometheus endpoint for every nacre sandbox of a
//! node. Each scrape asks every containerd shim under the shim root for
//! its report (`<sandbox>/metrics.sock`), measures each VMM on the host
//! and renders them (see `nacre_runtime::metrics`).

pub mod collect;
pub mod http;
