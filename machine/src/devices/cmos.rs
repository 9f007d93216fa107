// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! A CMOS RTC (MC146818) at ports 0x70-0x71, the one Linux's rtc-cmos and its boot-time
//! clock read: the time registers answer the host clock in BCD (or binary, as register B
//! says), register A never shows an update in progress (Linux waits up to a second per
//! read on one), register D says the time is valid, and the other bytes of its 128-byte
//! RAM keep what is written.

use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use super::PortDevice;

/// The CMOS index of the century, which the FADT names so Linux reads it.
pub const CMOS_CENTURY: u8 = 0x32;

const SECONDS: u8 = 0x00;
const MINUTES: u8 = 0x02;
const HOURS: u8 = 0x04;
const WEEKDAY: u8 = 0x06;
const DAY: u8 = 0x07;
const MONTH: u8 = 0x08;
const YEAR: u8 = 0x09;
const REG_A: u8 = 0x0a;
const REG_B: u8 = 0x0b;
const REG_C: u8 = 0x0c;
const REG_D: u8 = 0x0d;

/// Register A: 32.768 kHz time base, rate 6, update-in-progress clear.
const REG_A_DEFAULT: u8 = 0x26;
/// Register A's update-in-progress bit, never set.
const REG_A_UIP: u8 = 0x80;
/// Register B: 24-hour mode, BCD. rtc-cmos refuses a clock without 24-hour mode.
const REG_B_DEFAULT: u8 = 0x02;
const REG_B_24H: u8 = 0x02;
const REG_B_BINARY: u8 = 0x04;
/// Register D: valid RAM and time.
const REG_D_VALID: u8 = 0x80;

/// Where the time comes from: seconds since the Unix epoch.
pub type HostClock = fn() -> u64;

fn host_clock() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// `value` (0-99) in BCD.
pub const fn bcd(value: u8) -> u8 {
    ((value / 10) << 4) | (value % 10)
}

/// A point in time as the RTC shows it (UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CivilTime {
    /// The full year.
    pub year: u32,
    /// 1-12.
    pub month: u8,
    /// 1-31.
    pub day: u8,
    /// 1 (Sunday) to 7.
    pub weekday: u8,
    /// 0-23.
    pub hour: u8,
    /// 0-59.
    pub minute: u8,
    /// 0-59.
    pub second: u8,
}

/// The UTC date and time `secs` seconds after the Unix epoch (Howard Hinnant's
/// days-to-civil algorithm, in the proleptic Gregorian calendar).
pub fn civil_time(secs: u64) -> CivilTime {
    let days = secs / 86_400;
    let rem = secs % 86_400;
    // 1970-01-01 was a Thursday (weekday 5 counting Sunday as 1).
    let weekday = ((days + 4) % 7) as u8 + 1;
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u8;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
    let year = (yoe + era * 400 + u64::from(month <= 2)) as u32;
    CivilTime {
        year,
        month,
        day,
        weekday,
        hour: (rem / 3600) as u8,
        minute: (rem / 60 % 60) as u8,
        second: (rem % 60) as u8,
    }
}

struct State {
    index: u8,
    ram: [u8; 128],
}

/// The CMOS RTC.
pub struct Cmos {
    state: Mutex<State>,
    clock: HostClock,
}

impl Default for Cmos {
    fn default() -> Self {
        Cmos::with_clock(host_clock)
    }
}

impl Cmos {
    /// An RTC that shows the host's time.
    pub fn new() -> Self {
        Cmos::default()
    }

    /// An RTC that shows the time `clock` gives.
    pub fn with_clock(clock: HostClock) -> Self {
        let mut ram = [0u8; 128];
        ram[usize::from(REG_A)] = REG_A_DEFAULT;
        ram[usize::from(REG_B)] = REG_B_DEFAULT;
        Cmos {
            state: Mutex::new(State { index: 0, ram }),
            clock,
        }
    }

    fn register(&self, s: &State, index: u8) -> u8 {
        let b = s.ram[usize::from(REG_B)];
        let encode = |v: u8| if b & REG_B_BINARY != 0 { v } else { bcd(v) };
        let time = || civil_time((self.clock)());
        match index {
            SECONDS => encode(time().second),
            MINUTES => encode(time().minute),
            HOURS => {
                let h = time().hour;
                if b & REG_B_24H != 0 {
                    encode(h)
                } else {
                    // 12-hour mode: 12, 1-11, with bit 7 for PM.
                    let pm = if h >= 12 { 0x80 } else { 0 };
                    encode(match h % 12 {
                        0 => 12,
                        h => h,
                    }) | pm
                }
            }
            WEEKDAY => encode(time().weekday),
            DAY => encode(time().day),
            MONTH => encode(time().month),
            YEAR => encode((time().year % 100) as u8),
            CMOS_CENTURY => encode((time().year / 100) as u8),
            REG_A => s.ram[usize::from(REG_A)] & !REG_A_UIP,
            REG_C => 0,
            REG_D => REG_D_VALID,
            i => s.ram[usize::from(i)],
        }
    }
}

impl PortDevice for Cmos {
    fn name(&self) -> &'static str {
        "cmos-rtc"
    }

    fn read(&self, offset: u16, data: &mut [u8]) {
        let s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        for b in data {
            *b = match offset {
                0 => s.index,
                _ => self.register(&s, s.index),
            };
        }
    }

    fn write(&self, offset: u16, data: &[u8]) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        for &v in data {
            match offset {
                // Bit 7 of the index port masks NMIs; it is not part of the index.
                0 => s.index = v & 0x7f,
                _ => match s.index {
                    // The time comes from the host and the status registers are fixed;
                    // register A keeps its rate bits, never the update-in-progress bit.
                    SECONDS | MINUTES | HOURS | WEEKDAY | DAY | MONTH | YEAR | CMOS_CENTURY
                    | REG_C | REG_D => {}
                    REG_A => s.ram[usize::from(REG_A)] = v & !REG_A_UIP,
                    i => s.ram[usize::from(i)] = v,
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-03-01 23:59:58 UTC, a Sunday.
    fn clock() -> u64 {
        1_772_409_598
    }

    fn read(c: &Cmos, index: u8) -> u8 {
        c.write(0, &[index]);
        let mut d = [0];
        c.read(1, &mut d);
        d[0]
    }

    #[test]
    fn bcd_conversion() {
        assert_eq!(bcd(0), 0x00);
        assert_eq!(bcd(9), 0x09);
        assert_eq!(bcd(10), 0x10);
        assert_eq!(bcd(59), 0x59);
        assert_eq!(bcd(99), 0x99);
    }

    #[test]
    fn civil_time_of_known_instants() {
        let t = civil_time(0);
        assert_eq!(
            (t.year, t.month, t.day, t.weekday, t.hour),
            (1970, 1, 1, 5, 0)
        );
        let t = civil_time(clock());
        assert_eq!(
            (
                t.year, t.month, t.day, t.weekday, t.hour, t.minute, t.second
            ),
            (2026, 3, 1, 1, 23, 59, 58)
        );
        // A leap day, 2024-02-29 12:00:00, a Thursday.
        let t = civil_time(1_709_208_000);
        assert_eq!((t.year, t.month, t.day, t.weekday), (2024, 2, 29, 5));
    }

    #[test]
    fn time_registers_answer_the_clock_in_bcd() {
        let c = Cmos::with_clock(clock);
        assert_eq!(read(&c, SECONDS), 0x58);
        assert_eq!(read(&c, MINUTES), 0x59);
        assert_eq!(read(&c, HOURS), 0x23);
        assert_eq!(read(&c, WEEKDAY), 0x01);
        assert_eq!(read(&c, DAY), 0x01);
        assert_eq!(read(&c, MONTH), 0x03);
        assert_eq!(read(&c, YEAR), 0x26);
        assert_eq!(read(&c, CMOS_CENTURY), 0x20);
        // Binary mode, then 12-hour mode.
        c.write(0, &[REG_B]);
        c.write(1, &[REG_B_24H | REG_B_BINARY]);
        assert_eq!(read(&c, SECONDS), 58);
        assert_eq!(read(&c, HOURS), 23);
        c.write(0, &[REG_B]);
        c.write(1, &[0]);
        assert_eq!(read(&c, HOURS), 0x80 | 0x11, "11 PM in BCD");
    }

    #[test]
    fn status_registers() {
        let c = Cmos::with_clock(clock);
        assert_eq!(read(&c, REG_A), 0x26);
        assert_eq!(read(&c, REG_B), 0x02);
        assert_eq!(read(&c, REG_C), 0);
        assert_eq!(read(&c, REG_D), 0x80);
        // rtc-cmos clears the interrupt enables in B and rewrites A; UIP never shows.
        c.write(0, &[REG_B]);
        c.write(1, &[0x02 | 0x70]);
        assert_eq!(read(&c, REG_B), 0x72);
        c.write(0, &[REG_A]);
        c.write(1, &[0xa6]);
        assert_eq!(read(&c, REG_A), 0x26);
        // C and D are fixed, and the time cannot be set.
        for i in [REG_C, REG_D, SECONDS, YEAR] {
            let before = read(&c, i);
            c.write(1, &[0x42]);
            assert_eq!(read(&c, i), before);
        }
    }

    #[test]
    fn the_index_ignores_the_nmi_mask_bit() {
        let c = Cmos::with_clock(clock);
        assert_eq!(read(&c, 0x80 | REG_D), 0x80);
        assert_eq!(read(&c, 0x80 | SECONDS), 0x58);
        c.write(0, &[0x80 | 0x40]);
        c.write(1, &[0x5a]);
        assert_eq!(read(&c, 0x40), 0x5a);
        let mut idx = [0];
        c.read(0, &mut idx);
        assert_eq!(idx, [0x40]);
    }

    #[test]
    fn unknown_indices_are_ram() {
        let c = Cmos::with_clock(clock);
        for i in [0x0e, 0x33, 0x5b, 0x7f] {
            assert_eq!(read(&c, i), 0, "index {i:#x} starts as 0");
            c.write(1, &[i ^ 0xa5]);
            assert_eq!(read(&c, i), i ^ 0xa5);
        }
        // Alarm registers are RAM too.
        c.write(0, &[0x01]);
        c.write(1, &[0x30]);
        assert_eq!(read(&c, 0x01), 0x30);
    }
}
