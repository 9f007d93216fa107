// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]

pub mod kvm;
#[cfg(target_arch = "x86_64")]
pub mod x86_64;

/// This architecture's boot state: [`x86_64`] on x86-64. Code that only passes an entry
/// state along (a launch technology's vCPU setup, say) names it through here, so its
/// signature is the same on every architecture.
#[cfg(target_arch = "x86_64")]
pub use x86_64 as arch;

/// The error type that crosses veil's seams: what a handler, a populate target or a
/// backend returns when its failure has a type of its own. Any `std::error::Error`
/// converts into it with `?`, and the caller gets the original back with
/// `downcast_ref`, so a backend's own error code survives to whoever asked.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;
