// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Restricted-memory backends for KVM guests with private memory.
//!
//! This crate will hold the host capability probe, the guest_memfd, shared-memfd and
//! emulated backends, the conversion engine for the attributes, in-place and emulated
//! flavors, and guest memory that refuses host access to private ranges. None of it is
//! written yet: the crate exports nothing.
