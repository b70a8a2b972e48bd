//! The 8250 UART at 0x3f8 (IRQ 4): the guest console. Output goes to a log
//! file and/or stdout (bounded, see [`super::console`]); there is no input. vm-superio flushes after every
//! byte, so output is effectively unbuffered: a write per byte costs far
//! less than the guest's own trip through the emulated 8250 driver.

use std::io::{self, Write};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use vm_superio::serial::NoEvents;
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use crate::devices::BusDevice;

pub use super::console::{SerialOutput, PANIC_MARKER};

/// The COM1 base port.
pub const COM1_BASE: u64 = 0x3f8;
/// The COM1 IRQ.
pub const COM1_IRQ: u32 = 4;
/// The number of UART registers.
pub const SERIAL_LEN: u64 = 8;

/// Raises the UART's IRQ through an eventfd registered as a KVM irqfd.
#[derive(Debug)]
pub struct IrqTrigger(pub EventFd);

impl Trigger for IrqTrigger {
    type E = io::Error;

    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

/// The UART on the port bus.
pub struct SerialDevice(Serial<IrqTrigger, NoEvents, SerialOutput>);

impl SerialDevice {
    /// A UART raising `irq` and writing to `out`.
    pub fn new(irq: EventFd, out: SerialOutput) -> Self {
        Self(Serial::new(IrqTrigger(irq), out))
    }

    /// Set once the guest printed a kernel panic.
    pub fn panic_flag(&self) -> Arc<AtomicBool> {
        self.0.writer().panic_flag()
    }

    /// Writes out any partial line (e.g. at exit).
    pub fn flush(&mut self) {
        let _ = self.0.writer_mut().flush();
    }

    /// The UART's registers, for a snapshot.
    pub fn snapshot(&self) -> crate::snapshot::state::SerialSnapshot {
        let s = self.0.state();
        crate::snapshot::state::SerialSnapshot {
            baud_divisor_low: s.baud_divisor_low,
            baud_divisor_high: s.baud_divisor_high,
            interrupt_enable: s.interrupt_enable,
            interrupt_identification: s.interrupt_identification,
            line_control: s.line_control,
            line_status: s.line_status,
            modem_control: s.modem_control,
            modem_status: s.modem_status,
            scratch: s.scratch,
            in_buffer: s.in_buffer,
        }
    }

    /// A UART with saved registers, raising `irq` and writing to `out`.
    pub fn from_snapshot(
        s: &crate::snapshot::state::SerialSnapshot,
        irq: EventFd,
        out: SerialOutput,
    ) -> Result<Self, String> {
        let state = vm_superio::serial::SerialState {
            baud_divisor_low: s.baud_divisor_low,
            baud_divisor_high: s.baud_divisor_high,
            interrupt_enable: s.interrupt_enable,
            interrupt_identification: s.interrupt_identification,
            line_control: s.line_control,
            line_status: s.line_status,
            modem_control: s.modem_control,
            modem_status: s.modem_status,
            scratch: s.scratch,
            in_buffer: s.in_buffer.clone(),
        };
        Serial::from_state(&state, IrqTrigger(irq), NoEvents, out)
            .map(Self)
            .map_err(|e| format!("serial state: {e:?}"))
    }
}

impl BusDevice for SerialDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if let Some(first) = data.first_mut() {
            *first = self.0.read(offset as u8);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let Some(&value) = data.first() {
            if let Err(e) = self.0.write(offset as u8, value) {
                tracing::debug!("serial write: {e:?}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::File;
    use std::io::Read;

    #[test]
    fn output_reaches_the_log() {
        let path = std::env::temp_dir().join(format!("nacre-serial-test-{}", std::process::id()));
        let file = File::create(&path).ok();
        assert!(file.is_some());
        let irq = EventFd::new(libc::EFD_NONBLOCK).ok();
        let Some(irq) = irq else {
            panic!("eventfd");
        };
        let mut dev = SerialDevice::new(irq, SerialOutput::new(file, false));
        for b in b"hello\nwor" {
            dev.write(0, &[*b]);
        }
        dev.flush();
        let mut s = String::new();
        let _ = File::open(&path).and_then(|mut f| f.read_to_string(&mut s));
        assert_eq!(s, "hello\nwor");
        let _ = std::fs::remove_file(&path);
    }
}
