//! Why the VMM stops: events the vCPU, device, API and signal threads send
//! to the thread that waits in [`crate::Vmm::run`].

use std::sync::mpsc::Sender;

/// One reason to stop the VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitEvent {
    /// The guest reset itself: i8042 reset, triple fault or a KVM reset
    /// system event. With `reboot=k` this is how the guest powers off.
    GuestReset,
    /// The guest asked KVM to power off (KVM system event).
    GuestShutdown,
    /// The guest kernel panicked (seen on its console) and then reset.
    GuestPanic,
    /// `{"op":"shutdown"}` on the control socket.
    ApiShutdown,
    /// SIGTERM or SIGINT.
    Signal(i32),
    /// A vCPU hit something it cannot go on from.
    VcpuFailure { vcpu: u8, reason: String },
    /// A device failed.
    DeviceFailure(String),
}

/// Where exit events go.
pub type ExitSender = Sender<ExitEvent>;

/// Sends `event`, ignoring a receiver already gone (the VMM is exiting).
pub fn send(sender: &ExitSender, event: ExitEvent) {
    let _ = sender.send(event);
}

/// Starts a thread named `name` running `f`. A panic in it becomes an
/// [`ExitEvent::DeviceFailure`], so the VMM exits (with cleanup) instead of
/// running on with a dead thread.
pub fn spawn_guarded<F>(
    kind: crate::seccomp::ThreadKind,
    name: String,
    exit: ExitSender,
    f: F,
) -> std::io::Result<std::thread::JoinHandle<()>>
where
    F: FnOnce() + Send + 'static,
{
    crate::seccomp::spawn(kind, name.clone(), move || {
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
        if let Err(panic) = result {
            let what = panic
                .downcast_ref::<&str>()
                .map(ToString::to_string)
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            send(
                &exit,
                ExitEvent::DeviceFailure(format!("thread {name} panicked: {what}")),
            );
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[allow(clippy::panic, reason = "the test is about a panicking thread")]
    fn panicking_thread_reports_failure() {
        let (tx, rx) = std::sync::mpsc::channel();
        let h = spawn_guarded(crate::seccomp::ThreadKind::Main, "boom".into(), tx, || {
            panic!("on purpose")
        });
        assert!(h.is_ok());
        let event = rx.recv_timeout(std::time::Duration::from_secs(5)).ok();
        assert_eq!(
            event,
            Some(ExitEvent::DeviceFailure(
                "thread boom panicked: on purpose".into()
            ))
        );
    }
}
