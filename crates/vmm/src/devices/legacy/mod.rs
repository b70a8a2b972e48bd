//! The legacy PC devices Linux expects: the 8250 UART, the i8042 (only for
//! its CPU reset line) and the CMOS real-time clock.

pub mod cmos;
pub mod console;
pub mod i8042;
pub mod serial;

pub use cmos::Cmos;
pub use i8042::I8042;
pub use serial::{SerialDevice, SerialOutput};
