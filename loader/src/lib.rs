// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Boot data placement for KVM guests with private memory.
//!
//! This crate will place kernels, initrds, command lines and boot parameters into guest
//! memory, including memory that becomes private, and record a measurement log of what
//! was placed. None of it is written yet: the crate exports nothing.
