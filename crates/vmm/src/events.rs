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
