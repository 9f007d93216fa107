// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Shared by veil-machine's integration tests: the test kernels in `guests/` (assembled
//! by veil-tests, which the `veil` binary's tests share), and a console buffer tests
//! read back.

#![allow(dead_code)]

use std::io::{self, Write};
use std::sync::{Arc, Mutex};

// Each test binary uses some of these.
#[allow(unused_imports)]
pub use veil_tests::machine_kernels::{BZIMAGE_OK, PVH_OK, bzimage_kernel, pvh_kernel};

/// A console sink whose bytes the test reads back.
#[derive(Clone, Default)]
pub struct Console(Arc<Mutex<Vec<u8>>>);

impl Console {
    /// Everything written so far, as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl Write for Console {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
