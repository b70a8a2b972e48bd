//! The control socket: a Unix stream socket carrying one JSON request per
//! line and answering one JSON response per line (the messages are
//! [`nacre_vmm_api::api`]'s, shared with the runtime).
//!
//! ```text
//! {"op":"status"}   -> {"ok":true,"state":"running"|"paused","pid":N,"vcpus":N,"memory_mib":N,
//!                        "guest_errors":{"<kind>":N,...},"devices":[{...},...]}
//! {"op":"pause"}    -> {"ok":true,"state":"paused"}
//! {"op":"resume"}   -> {"ok":true,"state":"running"}
//! {"op":"shutdown"} -> {"ok":true}, then the VMM stops the VM and exits 0
//! {"op":"snapshot","dir":"/path"} -> {"ok":true,"state":"paused"}: a
//!                      template written to /path (see `crate::snapshot`);
//!                      the VM stays paused and can only be shut down
//! anything else     -> {"ok":false,"error":"..."}
//! ```
//!
//! Parsing and dispatch are independent of KVM: [`handle_line`] runs a
//! request against any [`VmControl`].

mod server;

/// Serves one connection synchronously: the fuzz targets' entry point
/// (`fuzz/`); not an API.
#[doc(hidden)]
pub use server::serve;
pub use server::{ApiServer, ApiServerError};

pub use nacre_vmm_api::api::{Request, Response, State};

/// What `status` reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmStatus {
    pub state: State,
    pub pid: u32,
    pub vcpus: u8,
    pub memory_mib: u64,
}

/// What the API can do to the VM.
pub trait VmControl: Send + Sync {
    fn status(&self) -> VmStatus;
    /// Each virtio device's counters (`status`'s `devices`), in slot order.
    fn devices(&self) -> Vec<nacre_vmm_api::DeviceCounters> {
        Vec::new()
    }
    fn pause(&self) -> Result<(), String>;
    fn resume(&self) -> Result<(), String>;
    /// Asks the VMM to stop the VM and exit. Returns at once.
    fn shutdown(&self);
    /// Pauses the VM and writes a template of it into `dir`.
    fn snapshot(&self, _dir: &std::path::Path) -> Result<(), String> {
        Err("snapshots are not supported".into())
    }
}

/// Parses one request line.
pub fn parse(line: &str) -> Result<Request, String> {
    Request::parse(line).map_err(|e| format!("bad request: {e}"))
}

/// Whether a request ends the connection's usefulness (the VMM exits).
pub fn is_shutdown(req: &Request) -> bool {
    matches!(req, Request::Shutdown)
}

/// Runs `req` against `ctl`. Shutdown is only acknowledged here; the
/// caller calls [`VmControl::shutdown`] once the response is written.
pub fn dispatch(req: &Request, ctl: &dyn VmControl) -> Response {
    match req {
        Request::Status => {
            let s = ctl.status();
            Response {
                state: Some(s.state),
                pid: Some(s.pid),
                vcpus: Some(s.vcpus),
                memory_mib: Some(s.memory_mib),
                guest_errors: Some(crate::devices::virtio::guest_errors::counts()),
                devices: Some(ctl.devices()),
                ..Response::ok()
            }
        }
        Request::Pause => match ctl.pause() {
            Ok(()) => Response::with_state(State::Paused),
            Err(e) => Response::error(format!("pause: {e}")),
        },
        Request::Resume => match ctl.resume() {
            Ok(()) => Response::with_state(State::Running),
            Err(e) => Response::error(format!("resume: {e}")),
        },
        Request::Shutdown => Response::ok(),
        Request::Snapshot { dir } => match ctl.snapshot(dir) {
            Ok(()) => Response::with_state(State::Paused),
            Err(e) => Response::error(format!("snapshot: {e}")),
        },
    }
}

/// Parses and runs one line; returns the response and whether the VM
/// should shut down once it is sent.
pub fn handle_line(line: &str, ctl: &dyn VmControl) -> (Response, bool) {
    match parse(line) {
        Ok(req) => (dispatch(&req, ctl), is_shutdown(&req)),
        Err(e) => (Response::error(e), false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    #[derive(Default)]
    struct Fake {
        paused: AtomicBool,
        shutdown: AtomicBool,
    }

    impl VmControl for Fake {
        fn status(&self) -> VmStatus {
            VmStatus {
                state: if self.paused.load(Ordering::SeqCst) {
                    State::Paused
                } else {
                    State::Running
                },
                pid: 42,
                vcpus: 2,
                memory_mib: 256,
            }
        }
        fn pause(&self) -> Result<(), String> {
            if self.paused.swap(true, Ordering::SeqCst) {
                return Err("already paused".into());
            }
            Ok(())
        }
        fn resume(&self) -> Result<(), String> {
            self.paused.store(false, Ordering::SeqCst);
            Ok(())
        }
        fn shutdown(&self) {
            self.shutdown.store(true, Ordering::SeqCst);
        }
    }

    #[test]
    fn parses_ops() {
        assert_eq!(parse(r#"{"op":"status"}"#), Ok(Request::Status));
        assert_eq!(parse(" {\"op\":\"pause\"}\n"), Ok(Request::Pause));
        assert_eq!(parse(r#"{"op":"resume"}"#), Ok(Request::Resume));
        assert_eq!(parse(r#"{"op":"shutdown"}"#), Ok(Request::Shutdown));
        assert!(parse(r#"{"op":"reboot"}"#).is_err());
        assert_eq!(
            parse(r#"{"op":"snapshot","dir":"/t"}"#),
            Ok(Request::Snapshot { dir: "/t".into() })
        );
        assert!(parse(r#"{"op":"snapshot"}"#).is_err());
        let (r, _) = handle_line(r#"{"op":"snapshot","dir":"/t"}"#, &Fake::default());
        assert_eq!(
            r.to_line(),
            "{\"ok\":false,\"error\":\"snapshot: snapshots are not supported\"}\n"
        );
        assert!(parse("not json").is_err());
        assert!(parse("").is_err());
    }

    #[test]
    fn status_response_shape() {
        let f = Fake::default();
        let (resp, stop) = handle_line(r#"{"op":"status"}"#, &f);
        assert!(!stop);
        assert_eq!(
            resp.to_line(),
            "{\"ok\":true,\"state\":\"running\",\"pid\":42,\"vcpus\":2,\"memory_mib\":256,\
             \"guest_errors\":{\"activation_refused\":0,\"fs_dropped_request\":0,\
             \"used_ring_failure\":0,\"vsock_credit_violation\":0},\"devices\":[]}\n"
        );
    }

    #[test]
    fn pause_resume_cycle() {
        let f = Fake::default();
        let (r, _) = handle_line(r#"{"op":"pause"}"#, &f);
        assert_eq!(r.to_line(), "{\"ok\":true,\"state\":\"paused\"}\n");
        assert_eq!(
            handle_line(r#"{"op":"status"}"#, &f).0.state,
            Some(State::Paused)
        );
        let (r, _) = handle_line(r#"{"op":"pause"}"#, &f);
        assert_eq!(
            r.to_line(),
            "{\"ok\":false,\"error\":\"pause: already paused\"}\n"
        );
        let (r, _) = handle_line(r#"{"op":"resume"}"#, &f);
        assert_eq!(r.state, Some(State::Running));
    }

    #[test]
    fn shutdown_is_acknowledged_not_run() {
        let f = Fake::default();
        let (r, stop) = handle_line(r#"{"op":"shutdown"}"#, &f);
        assert!(stop);
        assert_eq!(r.to_line(), "{\"ok\":true}\n");
        assert!(!f.shutdown.load(Ordering::SeqCst));
    }

    #[test]
    fn errors_are_json() {
        let f = Fake::default();
        let (r, stop) = handle_line("{", &f);
        assert!(!stop);
        assert!(!r.ok);
        let v: serde_json::Value = serde_json::from_str(r.to_line().trim()).unwrap_or_default();
        assert_eq!(v["ok"], false);
        assert!(v["error"]
            .as_str()
            .is_some_and(|e| e.starts_with("bad request")));
    }

    #[test]
    fn status_carries_each_devices_counters() {
        struct WithDevices(Fake);
        impl VmControl for WithDevices {
            fn status(&self) -> VmStatus {
                self.0.status()
            }
            fn devices(&self) -> Vec<nacre_vmm_api::DeviceCounters> {
                vec![nacre_vmm_api::DeviceCounters {
                    device: "vsock".into(),
                    name: "vsock".into(),
                    notifications: 5,
                    ..Default::default()
                }]
            }
            fn pause(&self) -> Result<(), String> {
                self.0.pause()
            }
            fn resume(&self) -> Result<(), String> {
                self.0.resume()
            }
            fn shutdown(&self) {
                self.0.shutdown()
            }
        }
        let (resp, _) = handle_line(r#"{"op":"status"}"#, &WithDevices(Fake::default()));
        let line = resp.to_line();
        assert!(
            line.contains(
                r#""devices":[{"device":"vsock","name":"vsock","notifications":5,"interrupts":0}]"#
            ),
            "{line}"
        );
        let back = Response::parse(&line).unwrap();
        assert_eq!(back.devices.unwrap()[0].notifications, 5);
    }
}
