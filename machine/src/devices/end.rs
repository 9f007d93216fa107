// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! How devices end the guest: the ACPI sleep register (power-off) and the i8042's CPU
//! reset line set an [`EndSignal`], which whoever runs the vCPUs waits on and then stops
//! them. A device runs on a vCPU thread and cannot stop the set itself.

use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

use serde::Serialize;
use vm_superio::{I8042Device, Trigger};

use super::PortDevice;

/// What a device asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DeviceEnd {
    /// ACPI S5 through the sleep control register.
    PowerOff,
    /// The i8042's CPU reset (0xfe to port 0x64).
    Reset,
}

/// The first end a device asked for, and a wait for it.
#[derive(Debug, Default)]
pub struct EndSignal {
    end: Mutex<Option<DeviceEnd>>,
    changed: Condvar,
}

impl EndSignal {
    fn lock(&self) -> MutexGuard<'_, Option<DeviceEnd>> {
        // The value is a plain `Option`: a panic elsewhere cannot leave it half-written.
        self.end.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Asks for `end`; the first request wins.
    pub fn request(&self, end: DeviceEnd) {
        let mut e = self.lock();
        if e.is_none() {
            *e = Some(end);
            log::info!("the guest asked for {end:?}");
        }
        self.changed.notify_all();
    }

    /// What was asked for so far.
    pub fn get(&self) -> Option<DeviceEnd> {
        *self.lock()
    }

    /// Waits up to `limit` for a request.
    pub fn wait(&self, limit: Duration) -> Option<DeviceEnd> {
        let e = self.lock();
        let (e, _) = self
            .changed
            .wait_timeout_while(e, limit, |e| e.is_none())
            .unwrap_or_else(|p| p.into_inner());
        *e
    }
}

/// The trigger vm-superio's i8042 pulls on a CPU reset.
struct ResetTrigger(std::sync::Arc<EndSignal>);

impl Trigger for ResetTrigger {
    type E = std::convert::Infallible;

    fn trigger(&self) -> Result<(), Self::E> {
        self.0.request(DeviceEnd::Reset);
        Ok(())
    }
}

/// The command that pulses the CPU reset line: 0xfe to the i8042's command port.
pub const I8042_RESET: u8 = 0xfe;

/// vm-superio's i8042, whose only effect is the CPU reset Linux's `reboot=k` uses. It
/// reads 0 everywhere: the FADT declares no 8042, so Linux does not probe it, and its
/// reset path only waits for "input buffer empty", which 0 says.
pub struct I8042(Mutex<I8042Device<ResetTrigger>>);

impl I8042 {
    /// An i8042 that asks `end` for a reset.
    pub fn new(end: std::sync::Arc<EndSignal>) -> Self {
        I8042(Mutex::new(I8042Device::new(ResetTrigger(end))))
    }
}

impl PortDevice for I8042 {
    fn name(&self) -> &'static str {
        "i8042"
    }

    fn read(&self, offset: u16, data: &mut [u8]) {
        let mut d = self.0.lock().unwrap_or_else(|p| p.into_inner());
        for b in data {
            *b = d.read(offset as u8);
        }
    }

    fn write(&self, offset: u16, data: &[u8]) {
        let mut d = self.0.lock().unwrap_or_else(|p| p.into_inner());
        for &b in data {
            // The trigger cannot fail.
            let Ok(()) = d.write(offset as u8, b);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn the_first_request_wins_and_wakes_the_waiter() {
        let s = Arc::new(EndSignal::default());
        assert_eq!(s.get(), None);
        assert_eq!(s.wait(Duration::from_millis(1)), None);
        let t = {
            let s = s.clone();
            std::thread::spawn(move || s.wait(Duration::from_secs(30)))
        };
        s.request(DeviceEnd::PowerOff);
        s.request(DeviceEnd::Reset);
        assert_eq!(t.join().unwrap(), Some(DeviceEnd::PowerOff));
        assert_eq!(s.get(), Some(DeviceEnd::PowerOff));
    }

    #[test]
    fn only_0xfe_on_the_command_port_resets() {
        let s = Arc::new(EndSignal::default());
        let k = I8042::new(s.clone());
        k.write(0, &[I8042_RESET]); // the data port
        k.write(4, &[0xd1, 0x60, 0xaa]);
        let mut d = [0xff; 2];
        k.read(4, &mut d);
        assert_eq!(d, [0, 0], "status: input buffer empty");
        assert_eq!(s.get(), None);
        k.write(4, &[I8042_RESET]);
        assert_eq!(s.get(), Some(DeviceEnd::Reset));
    }
}
