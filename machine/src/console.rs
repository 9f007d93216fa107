// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Console input: standard input fed to COM1 by an event-manager loop on its own thread,
//! and a guard that puts a terminal in raw mode and restores exactly what it found.
//!
//! Only a terminal, a FIFO or a socket is watched: epoll refuses `/dev/null` and regular
//! files (EPERM), which is what standard input is in CI. When the guest's receive FIFO is
//! full, input stops being read until the guest has read all of it, so nothing is lost
//! and the loop does not spin.

use std::fs::File;
use std::io::{self, IsTerminal, Read};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::FileTypeExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

use event_manager::{EventManager, EventOps, Events, MutEventSubscriber, SubscriberOps};
use veil_vmm::seccomp::{self, ThreadKind};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use crate::devices::Com1;

/// Whether standard input can be watched with epoll: a terminal, a FIFO or a socket.
pub fn stdin_is_pollable() -> bool {
    let stdin = io::stdin();
    if stdin.is_terminal() {
        return true;
    }
    let Ok(fd) = stdin.as_fd().try_clone_to_owned() else {
        return false;
    };
    File::from(fd)
        .metadata()
        .map(|m| m.file_type().is_fifo() || m.file_type().is_socket())
        .unwrap_or(false)
}

/// Puts standard input's terminal in raw mode (no line editing, no echo; signals stay,
/// so Ctrl-C still reaches the VMM) and restores the saved settings when dropped. Does
/// nothing when standard input is not a terminal.
pub struct RawTerminal {
    saved: Option<libc::termios>,
}

impl RawTerminal {
    /// Saves the terminal's settings and switches to raw mode.
    pub fn enter() -> io::Result<RawTerminal> {
        if !io::stdin().is_terminal() {
            return Ok(RawTerminal { saved: None });
        }
        let fd = io::stdin().as_raw_fd();
        // SAFETY: `termios` is plain data; tcgetattr fills it or fails.
        let mut saved: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: `fd` is standard input, open for the process's life; `saved` is a
        // valid, writable termios.
        if unsafe { libc::tcgetattr(fd, &mut saved) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let mut raw = saved;
        raw.c_lflag &= !(libc::ICANON | libc::ECHO | libc::IEXTEN);
        raw.c_iflag &= !(libc::ICRNL | libc::IXON);
        raw.c_cc[libc::VMIN] = 1;
        raw.c_cc[libc::VTIME] = 0;
        // SAFETY: as above; `raw` is a valid termios.
        if unsafe { libc::tcsetattr(fd, libc::TCSANOW, &raw) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(RawTerminal { saved: Some(saved) })
    }

    /// Whether a terminal was switched (and will be restored).
    pub fn is_raw(&self) -> bool {
        self.saved.is_some()
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        if let Some(saved) = self.saved.take() {
            let fd = io::stdin().as_raw_fd();
            // SAFETY: `fd` is standard input; `saved` is what tcgetattr returned for it.
            if unsafe { libc::tcsetattr(fd, libc::TCSANOW, &saved) } != 0 {
                log::warn!(
                    "cannot restore the terminal: {}",
                    io::Error::last_os_error()
                );
            }
        }
    }
}

/// Moves bytes from standard input into COM1's receive FIFO.
struct StdinToCom1 {
    com1: Arc<Com1>,
    stdin: File,
    stop: EventFd,
    stopped: Arc<AtomicBool>,
}

impl StdinToCom1 {
    fn stdin_events(&self) -> Events {
        Events::new(&self.stdin, EventSet::IN)
    }

    fn drained_events(&self) -> Events {
        Events::new(self.com1.drained(), EventSet::IN)
    }

    fn read_stdin(&mut self, ops: &mut EventOps) {
        let room = self.com1.fifo_capacity();
        if room == 0 {
            // Wait for the guest to read what it has before reading more.
            let _ = ops.remove(self.stdin_events());
            if let Err(e) = ops.add(self.drained_events()) {
                log::warn!("console input: cannot wait for COM1 to drain: {e:?}");
            }
            return;
        }
        let mut buf = vec![0u8; room];
        match self.stdin.read(&mut buf) {
            Ok(0) => {
                log::debug!("console input: end of standard input");
                let _ = ops.remove(self.stdin_events());
            }
            Ok(n) => {
                self.com1.enqueue(&buf[..n]);
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock
                ) => {}
            Err(e) => {
                log::warn!("console input: reading standard input failed: {e}");
                let _ = ops.remove(self.stdin_events());
            }
        }
    }
}

impl MutEventSubscriber for StdinToCom1 {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(self.stdin_events()) {
            log::warn!("console input: cannot watch standard input: {e:?}");
        }
        if let Err(e) = ops.add(Events::new(&self.stop, EventSet::IN)) {
            log::warn!("console input: cannot watch for stop: {e:?}");
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let fd = events.fd();
        if fd == self.stop.as_raw_fd() {
            self.stopped.store(true, Ordering::SeqCst);
        } else if fd == self.com1.drained().as_raw_fd() {
            let _ = self.com1.drained().read();
            let _ = ops.remove(self.drained_events());
            if let Err(e) = ops.add(self.stdin_events()) {
                log::warn!("console input: cannot watch standard input again: {e:?}");
            }
        } else if fd == self.stdin.as_raw_fd() {
            self.read_stdin(ops);
        }
    }
}

/// The console input thread; stopped and joined on drop.
pub struct ConsoleInput {
    stop: EventFd,
    thread: Option<JoinHandle<()>>,
}

impl ConsoleInput {
    /// Starts feeding standard input to `com1`, or returns `None` (saying why in the log)
    /// when standard input cannot be watched.
    pub fn start(com1: Arc<Com1>) -> io::Result<Option<ConsoleInput>> {
        if !stdin_is_pollable() {
            log::info!("console input off: standard input is not a terminal, FIFO or socket");
            return Ok(None);
        }
        let stdin = File::from(io::stdin().as_fd().try_clone_to_owned()?);
        let stop = EventFd::new(EFD_NONBLOCK)?;
        let stopped = Arc::new(AtomicBool::new(false));
        let subscriber = StdinToCom1 {
            com1,
            stdin,
            stop: stop.try_clone()?,
            stopped: stopped.clone(),
        };
        let mut manager: EventManager<Box<dyn MutEventSubscriber + Send>> =
            EventManager::new().map_err(|e| io::Error::other(format!("{e:?}")))?;
        manager.add_subscriber(Box::new(subscriber));
        let thread = std::thread::Builder::new()
            .name("console-in".into())
            .spawn(move || {
                // Started by a confined thread, the loop narrows its filter to what it
                // needs; started by an unconfined one, it stays unconfined.
                match seccomp::narrow_if_confined(ThreadKind::Device) {
                    Ok(true) => log::debug!("console input: confined"),
                    Ok(false) => {}
                    Err(e) => {
                        // Stopping input is safer than reading it with a wider filter.
                        log::error!("console input off: {e}");
                        return;
                    }
                }
                while !stopped.load(Ordering::SeqCst) {
                    if let Err(e) = manager.run_with_timeout(100) {
                        log::warn!("console input stopped: {e:?}");
                        return;
                    }
                }
            })?;
        Ok(Some(ConsoleInput {
            stop,
            thread: Some(thread),
        }))
    }
}

impl Drop for ConsoleInput {
    fn drop(&mut self) {
        if let Err(e) = self.stop.write(1) {
            log::warn!("cannot stop the console input thread: {e}");
        }
        if let Some(t) = self.thread.take()
            && t.join().is_err()
        {
            log::warn!("the console input thread panicked");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::time::{Duration, Instant};

    use crate::devices::{ConsoleSink, PortDevice};

    /// Feeds a pipe to COM1 through the same subscriber the thread runs.
    #[test]
    fn pipe_input_reaches_the_guest_and_waits_while_the_fifo_is_full() {
        let com1 = Arc::new(Com1::new(ConsoleSink::new(Box::new(io::sink()))).unwrap());
        let (reader, mut writer) = std::io::pipe().unwrap();
        let stop = EventFd::new(EFD_NONBLOCK).unwrap();
        let stopped = Arc::new(AtomicBool::new(false));
        let mut manager: EventManager<Box<dyn MutEventSubscriber + Send>> =
            EventManager::new().unwrap();
        manager.add_subscriber(Box::new(StdinToCom1 {
            com1: com1.clone(),
            stdin: File::from(std::os::fd::OwnedFd::from(reader)),
            stop: stop.try_clone().unwrap(),
            stopped: stopped.clone(),
        }));
        let cap = com1.fifo_capacity();
        writer.write_all(&vec![b'a'; cap + 3]).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while com1.fifo_capacity() > 0 && Instant::now() < deadline {
            manager.run_with_timeout(10).unwrap();
        }
        assert_eq!(com1.fifo_capacity(), 0, "the FIFO filled up");
        // Full: the loop stops reading instead of spinning.
        manager.run_with_timeout(10).unwrap();
        assert_eq!(manager.run_with_timeout(10).unwrap(), 0);
        // The guest reads everything; the rest of the input follows.
        let mut byte = [0u8];
        for _ in 0..cap {
            com1.read(0, &mut byte);
            assert_eq!(byte, [b'a']);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while com1.fifo_capacity() == cap && Instant::now() < deadline {
            manager.run_with_timeout(10).unwrap();
        }
        assert_eq!(com1.fifo_capacity(), cap - 3);
        stop.write(1).unwrap();
        manager.run_with_timeout(10).unwrap();
        assert!(stopped.load(Ordering::SeqCst));
    }

    #[test]
    fn a_terminal_guard_without_a_terminal_does_nothing() {
        // Under cargo test, standard input is not a terminal (or, run by hand, it is
        // restored on drop either way).
        let g = RawTerminal::enter().unwrap();
        assert_eq!(g.is_raw(), io::stdin().is_terminal());
    }
}
