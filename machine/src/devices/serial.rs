// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! COM1: vm-superio's 16550A, its interrupt an `EventFd` the machine registers as an
//! irqfd on GSI 4, its output a writer the caller picks, its input fed by the console
//! thread.

use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};

use vm_superio::serial::SerialEvents;
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use super::PortDevice;

/// vm-superio's interrupt trigger as an `EventFd`: a write is an edge on the irqfd's GSI.
#[derive(Debug)]
pub struct IrqTrigger(EventFd);

impl Trigger for IrqTrigger {
    type E = io::Error;

    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

/// Told once, when the guest writes its first console byte.
pub type FirstByte = Box<dyn FnOnce() + Send>;

/// Where COM1's output goes: a writer (stdout, a file, a buffer a test reads), and an
/// optional hook run before the first byte is written.
pub struct ConsoleSink {
    out: Box<dyn Write + Send>,
    first_byte: Option<FirstByte>,
}

impl ConsoleSink {
    /// Output to `out`.
    pub fn new(out: Box<dyn Write + Send>) -> Self {
        ConsoleSink {
            out,
            first_byte: None,
        }
    }

    /// Runs `hook` (once) when the first byte arrives, before it is written.
    pub fn on_first_byte(mut self, hook: FirstByte) -> Self {
        self.first_byte = Some(hook);
        self
    }
}

impl Write for ConsoleSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if !buf.is_empty()
            && let Some(hook) = self.first_byte.take()
        {
            hook();
        }
        self.out.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// Tells the console thread that the guest emptied the receive FIFO, so it reads input
/// again.
struct InputDrained(EventFd);

impl SerialEvents for InputDrained {
    fn buffer_read(&self) {}
    fn out_byte(&self) {}
    fn tx_lost_byte(&self) {}
    fn in_buffer_empty(&self) {
        if let Err(e) = self.0.write(1) {
            log::warn!("COM1: cannot signal that its input was read: {e}");
        }
    }
}

/// COM1.
pub struct Com1 {
    serial: Mutex<Serial<IrqTrigger, InputDrained, ConsoleSink>>,
    irq: EventFd,
    drained: EventFd,
    write_failed: AtomicBool,
}

impl Com1 {
    /// A UART writing to `out`. Its interrupt and "input drained" eventfds are new.
    pub fn new(out: ConsoleSink) -> io::Result<Com1> {
        let irq = EventFd::new(EFD_NONBLOCK)?;
        let drained = EventFd::new(EFD_NONBLOCK)?;
        let serial = Serial::with_events(
            IrqTrigger(irq.try_clone()?),
            InputDrained(drained.try_clone()?),
            out,
        );
        Ok(Com1 {
            serial: Mutex::new(serial),
            irq,
            drained,
            write_failed: AtomicBool::new(false),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Serial<IrqTrigger, InputDrained, ConsoleSink>> {
        // vm-superio's state stays consistent between calls; a panic elsewhere while the
        // lock was held does not leave it half-updated in a way that matters here.
        self.serial.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The interrupt eventfd: register it with `VmFd::register_irqfd` on
    /// [`COM1_GSI`](super::COM1_GSI).
    pub fn irq(&self) -> &EventFd {
        &self.irq
    }

    /// Becomes readable when the guest has read every received byte.
    pub fn drained(&self) -> &EventFd {
        &self.drained
    }

    /// Room left in the receive FIFO.
    pub fn fifo_capacity(&self) -> usize {
        self.lock().fifo_capacity()
    }

    /// Queues `bytes` for the guest to read, raising the receive interrupt; returns how
    /// many fit (0 when the FIFO is full).
    pub fn enqueue(&self, bytes: &[u8]) -> usize {
        match self.lock().enqueue_raw_bytes(bytes) {
            Ok(n) => n,
            Err(vm_superio::serial::Error::FullFifo) => 0,
            Err(e) => {
                log::warn!("COM1: cannot raise the receive interrupt: {e:?}");
                0
            }
        }
    }
}

impl PortDevice for Com1 {
    fn name(&self) -> &'static str {
        "com1"
    }

    fn read(&self, offset: u16, data: &mut [u8]) {
        let mut s = self.lock();
        for b in data {
            *b = s.read(offset as u8);
        }
    }

    fn write(&self, offset: u16, data: &[u8]) {
        let mut s = self.lock();
        for &b in data {
            if let Err(e) = s.write(offset as u8, b)
                && !self.write_failed.swap(true, Ordering::Relaxed)
            {
                // A console that cannot be written loses output, not the guest.
                log::warn!("COM1: output lost ({e:?}); further failures are not logged");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// A writer tests read back.
    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    const THR: u16 = 0;
    const IER: u16 = 1;
    const IIR: u16 = 2;
    const LSR: u16 = 5;

    fn read(c: &Com1, offset: u16) -> u8 {
        let mut d = [0];
        c.read(offset, &mut d);
        d[0]
    }

    #[test]
    fn output_reaches_the_sink_and_the_first_byte_is_announced() {
        let buf = Buffer::default();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let hook_seen = seen.clone();
        let hook_buf = buf.clone();
        let sink = ConsoleSink::new(Box::new(buf.clone())).on_first_byte(Box::new(move || {
            // Runs before the byte is written.
            hook_seen
                .lock()
                .unwrap()
                .push(hook_buf.0.lock().unwrap().len());
        }));
        let c = Com1::new(sink).unwrap();
        c.write(THR, b"hi");
        c.write(THR, b"!");
        assert_eq!(*buf.0.lock().unwrap(), b"hi!");
        assert_eq!(*seen.lock().unwrap(), vec![0], "the hook ran once, first");
        assert_eq!(read(&c, LSR) & 0x60, 0x60, "transmitter empty");
    }

    #[test]
    fn interrupts_go_to_the_eventfd() {
        let c = Com1::new(ConsoleSink::new(Box::new(io::sink()))).unwrap();
        assert!(c.irq().read().is_err(), "nothing pending yet");
        // THR-empty interrupts enabled: asserted at once (vm-superio 0.8.2), and on
        // every byte written.
        c.write(IER, &[0x02]);
        assert_eq!(c.irq().read().unwrap(), 1);
        assert_eq!(read(&c, IIR) & 0x0f, 0x02, "THR empty");
        c.write(THR, b"x");
        assert_eq!(c.irq().read().unwrap(), 1);
    }

    #[test]
    fn input_is_queued_and_drained() {
        let c = Com1::new(ConsoleSink::new(Box::new(io::sink()))).unwrap();
        c.write(IER, &[0x01]);
        assert_eq!(c.enqueue(b"ab"), 2);
        assert_eq!(c.irq().read().unwrap(), 1, "receive interrupt");
        assert_eq!(read(&c, LSR) & 1, 1, "data ready");
        assert_eq!(read(&c, THR), b'a');
        assert!(c.drained().read().is_err(), "a byte is still there");
        assert_eq!(read(&c, THR), b'b');
        assert_eq!(c.drained().read().unwrap(), 1);
        let cap = c.fifo_capacity();
        assert_eq!(c.enqueue(&vec![b'z'; cap + 10]), cap);
        assert_eq!(c.enqueue(b"more"), 0, "full");
    }

    #[test]
    fn a_failing_sink_loses_output_only() {
        struct Broken;
        impl Write for Broken {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::Error::from(io::ErrorKind::BrokenPipe))
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let c = Com1::new(ConsoleSink::new(Box::new(Broken))).unwrap();
        c.write(THR, b"lost");
        c.write(IER, &[0x01]);
        assert_eq!(read(&c, IER), 0x01, "the UART goes on");
    }
}
