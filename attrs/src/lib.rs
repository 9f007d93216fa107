// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Userspace tracking of private/shared memory attributes per guest-physical range.
//!
//! See the README below for the vocabulary, the guarantees and an example.
#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]

mod attributes;
mod concurrent;
mod map;
mod range;
mod tree;

#[cfg(test)]
mod oracle_tests;

pub use attributes::{Attributes, AttributesError, PageState, Tag};
pub use concurrent::{AttrMapWriter, ConcurrentAttrMap};
pub use map::{AttrMap, Change, Changes, Run, Runs};
pub use range::{FrameRange, Gfn, MAX_FRAMES, PAGE_SHIFT, PAGE_SIZE, RangeError};
