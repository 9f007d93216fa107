// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Two backends built on veil's seams from outside veil's crates, through their public
//! traits only. `docs/backends.md` walks through the first line by line.
//!
//! - [`pkvm`]: a pKVM-style backend. The guest shares and unshares memory with pKVM's
//!   guest ABI (`HYP_MEMINFO`, `MEM_SHARE`, `MEM_UNSHARE`, one granule per call, SMCCC
//!   return codes), carried over veil's port-I/O transport on x86. Contents are
//!   preserved, the host view loses access on unshare, and memory is private at launch.
//! - [`recording`]: a launch technology that records every hook veil calls, with the
//!   page types the loader passed, and otherwise launches like plain KVM.

pub mod pkvm;
pub mod recording;
