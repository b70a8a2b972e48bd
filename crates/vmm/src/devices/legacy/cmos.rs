//! The CMOS real-time clock at ports 0x70/0x71, read-only: the time of day
//! in BCD from the host clock, the update-in-progress bit always clear so
//! the guest never spins on it. Other CMOS bytes read as zero.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::devices::BusDevice;

/// The index port; the data port follows it.
pub const CMOS_BASE: u64 = 0x70;
/// The two ports.
pub const CMOS_LEN: u64 = 2;

const REG_SECONDS: u8 = 0x00;
const REG_MINUTES: u8 = 0x02;
const REG_HOURS: u8 = 0x04;
const REG_WEEKDAY: u8 = 0x06;
const REG_DAY: u8 = 0x07;
const REG_MONTH: u8 = 0x08;
const REG_YEAR: u8 = 0x09;
const REG_STATUS_A: u8 = 0x0a;
const REG_STATUS_B: u8 = 0x0b;
const REG_STATUS_D: u8 = 0x0d;
const REG_CENTURY: u8 = 0x32;
const STATUS_B_24H: u8 = 0x02;
const STATUS_D_VALID: u8 = 0x80;

/// The RTC.
#[derive(Debug, Default)]
pub struct Cmos {
    index: u8,
}

fn bcd(v: u64) -> u8 {
    (((v / 10) % 10) << 4 | (v % 10)) as u8
}

/// Civil date (year, month, day) of a day count since 1970-01-01.
fn civil_from_days(days: i64) -> (i64, u64, u64) {
    // Howard Hinnant's algorithm, in the public domain.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u64;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u64;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

impl Cmos {
    /// The selected register (the device's only state).
    pub fn index(&self) -> u8 {
        self.index
    }

    /// A CMOS with register `index` selected (restore).
    pub fn with_index(index: u8) -> Self {
        Self { index }
    }

    fn value(&self, secs: u64) -> u8 {
        let days = (secs / 86_400) as i64;
        let (year, month, day) = civil_from_days(days);
        let year = year.max(0) as u64;
        match self.index {
            REG_SECONDS => bcd(secs % 60),
            REG_MINUTES => bcd(secs / 60 % 60),
            REG_HOURS => bcd(secs / 3600 % 24),
            // 1970-01-01 was a Thursday; the RTC counts Sunday as 1.
            REG_WEEKDAY => bcd(((days + 4).rem_euclid(7) + 1) as u64),
            REG_DAY => bcd(day),
            REG_MONTH => bcd(month),
            REG_YEAR => bcd(year % 100),
            REG_CENTURY => bcd(year / 100),
            REG_STATUS_A => 0x26, // 32.768 kHz base, 1024 Hz rate, UIP clear
            REG_STATUS_B => STATUS_B_24H,
            REG_STATUS_D => STATUS_D_VALID,
            _ => 0,
        }
    }
}

impl BusDevice for Cmos {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let secs = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let value = if offset == 1 { self.value(secs) } else { 0xff };
        data.fill(value);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset == 0 {
            if let Some(&v) = data.first() {
                // Bit 7 is the NMI mask, not part of the index.
                self.index = v & 0x7f;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_date() {
        // 2024-02-29 13:45:56 UTC, a Thursday.
        let secs = 1_709_214_356;
        let mut c = Cmos::default();
        let mut at = |i| {
            c.index = i;
            c.value(secs)
        };
        assert_eq!(at(REG_SECONDS), 0x56);
        assert_eq!(at(REG_MINUTES), 0x45);
        assert_eq!(at(REG_HOURS), 0x13);
        assert_eq!(at(REG_DAY), 0x29);
        assert_eq!(at(REG_MONTH), 0x02);
        assert_eq!(at(REG_YEAR), 0x24);
        assert_eq!(at(REG_CENTURY), 0x20);
        assert_eq!(at(REG_WEEKDAY), 0x05);
        assert_eq!(at(REG_STATUS_A) & 0x80, 0);
    }

    #[test]
    fn index_write_masks_nmi_bit() {
        let mut c = Cmos::default();
        c.write(0, &[0x80 | REG_STATUS_D]);
        let mut d = [0u8];
        c.read(1, &mut d);
        assert_eq!(d[0], STATUS_D_VALID);
    }
}
