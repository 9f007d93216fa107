// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Userspace tracking of private/shared memory attributes per guest-physical range.
//!
//! `veil-attrs` is the userspace mirror of KVM's per-VM memory attribute array
//! (`KVM_SET_MEMORY_ATTRIBUTES`). Shared is the implied default: a frame with no
//! attribute set is shared, and [`Attributes::PRIVATE`] (bit 3) marks it private. Finer
//! distinctions are carried as a sub-state [`Tag`] beside the attributes, never as a third
//! state.
//!
//! [`AttrMap`] answers "what state is this frame in", "is this whole range private", and,
//! on [`AttrMap::set`], exactly which sub-ranges changed and from what: the work a
//! conversion must do. [`ConcurrentAttrMap`] lets many vCPU threads read while one thread
//! converts.
//!
//! The crate is pure Rust: no KVM, no `unsafe`.

#![forbid(unsafe_code)]

mod attributes;
mod concurrent;
mod map;
mod range;
mod tree;

#[cfg(test)]
mod oracle_tests;

pub use attributes::{Attributes, AttributesError, PageState, Tag};
pub use concurrent::ConcurrentAttrMap;
pub use map::{AttrMap, Change, Changes, Run, Runs};
pub use range::{FrameRange, Gfn, MAX_FRAMES, PAGE_SHIFT, PAGE_SIZE, RangeError};
