//! The i8042 keyboard controller, only as far as Linux's `reboot=k` needs:
//! writing 0xFE (pulse the reset line) to port 0x64 resets the guest, which
//! this VMM turns into a clean exit.

use std::sync::atomic::{AtomicBool, Ordering};

use vm_superio::{I8042Device, Trigger};

use crate::devices::BusDevice;
use crate::events::{self, ExitEvent, ExitSender};

/// The base port; the device spans 0x60..=0x64.
pub const I8042_BASE: u64 = 0x60;
/// The span of ports from the base.
pub const I8042_LEN: u64 = 5;

/// Sends [`ExitEvent::GuestReset`] when the guest pulses the reset line
/// (once: Linux pulses it again and again until the reset happens).
#[derive(Debug)]
pub struct ResetTrigger {
    exit: ExitSender,
    fired: AtomicBool,
}

impl Trigger for ResetTrigger {
    type E = std::convert::Infallible;

    fn trigger(&self) -> Result<(), Self::E> {
        if !self.fired.swap(true, Ordering::SeqCst) {
            tracing::info!("guest requested a reset through the i8042");
            events::send(&self.exit, ExitEvent::GuestReset);
        }
        Ok(())
    }
}

/// The i8042 on the port bus.
pub struct I8042(I8042Device<ResetTrigger>);

impl I8042 {
    /// A controller whose reset line sends to `exit`.
    pub fn new(exit: ExitSender) -> Self {
        Self(I8042Device::new(ResetTrigger {
            exit,
            fired: AtomicBool::new(false),
        }))
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if let Some(first) = data.first_mut() {
            *first = self.0.read(offset as u8);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let Some(&value) = data.first() {
            let Ok(()) = self.0.write(offset as u8, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc::channel;

    #[test]
    fn reset_command_sends_exit() {
        let (tx, rx) = channel();
        let mut dev = I8042::new(tx);
        let mut status = [0xffu8];
        dev.read(4, &mut status);
        assert_eq!(status[0], 0, "input buffer empty");
        dev.write(0, &[0xfe]);
        assert!(rx.try_recv().is_err(), "0xFE to the data port is no reset");
        dev.write(4, &[0xfe]);
        assert_eq!(rx.try_recv().ok(), Some(ExitEvent::GuestReset));
        dev.write(4, &[0xfe]);
        assert!(rx.try_recv().is_err(), "reported once");
    }
}
