// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The thin wiring that composes the veil crates into a VMM.
//!
//! This crate will probe the host, pick a flavor, and build a VM out of `veil-memory`,
//! `veil-vcpu` and `veil-loader`. It owns no logic a component crate should own. Nothing
//! is wired yet: the `veil` binary only says so.
