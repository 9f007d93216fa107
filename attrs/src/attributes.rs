// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The per-page state: KVM memory attributes plus veil's sub-state tag.

use std::fmt;
use std::num::NonZeroU16;

/// Errors from building [`Attributes`] out of a raw attribute word.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AttributesError {
    /// The word has bits veil does not know. They are rejected rather than kept, so a
    /// typo or a newer ABI never turns into a silently different state.
    #[error("unknown memory attribute bits {unknown:#x} in {bits:#x}")]
    UnknownBits {
        /// The whole attribute word as given.
        bits: u64,
        /// The bits in it that veil does not know.
        unknown: u64,
    },
}

/// KVM memory attributes of a guest page (`KVM_SET_MEMORY_ATTRIBUTES`).
///
/// Shared is the implied default: a page with no bit set is shared, and there is no
/// "shared" bit. [`Attributes::PRIVATE`] is the same bit as
/// `KVM_MEMORY_ATTRIBUTE_PRIVATE` and `KVM_MEMORY_EXIT_FLAG_PRIVATE`.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Attributes(u8);

/// `KVM_MEMORY_ATTRIBUTE_PRIVATE` (include/uapi/linux/kvm.h), bit 3 of the raw word.
const KVM_PRIVATE: u64 = 1 << 3;

impl Attributes {
    /// The page is private: host userspace cannot (or must not) map or touch it.
    //
    // Kept in bit 0 rather than KVM's bit 3: the raw word exists only at the boundary
    // (`from_bits`, `bits`), and a private test on a freshly read bitmap bit then costs
    // nothing.
    pub const PRIVATE: Attributes = Attributes(1);

    /// Every bit veil knows.
    pub const KNOWN: Attributes = Attributes::PRIVATE;

    /// No attribute set: the page is shared (the implied default).
    pub const fn empty() -> Self {
        Attributes(0)
    }

    /// Builds attributes from a raw attribute word, rejecting bits veil does not know.
    pub const fn from_bits(bits: u64) -> Result<Self, AttributesError> {
        let unknown = bits & !KVM_PRIVATE;
        if unknown != 0 {
            return Err(AttributesError::UnknownBits { bits, unknown });
        }
        Ok(Attributes((bits == KVM_PRIVATE) as u8))
    }

    /// The raw attribute word, as KVM takes it.
    pub const fn bits(self) -> u64 {
        if self.is_private() { KVM_PRIVATE } else { 0 }
    }

    /// Whether no bit is set, i.e. the page is shared.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// Whether the private bit is set.
    pub const fn is_private(self) -> bool {
        self.0 & Self::PRIVATE.0 != 0
    }

    /// Whether every bit of `other` is set in `self`.
    pub const fn contains(self, other: Attributes) -> bool {
        self.0 & other.0 == other.0
    }
}

impl fmt::Debug for Attributes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for Attributes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_private() {
            f.write_str("private")
        } else {
            f.write_str("shared")
        }
    }
}

impl TryFrom<u64> for Attributes {
    type Error = AttributesError;

    fn try_from(bits: u64) -> Result<Self, Self::Error> {
        Attributes::from_bits(bits)
    }
}

/// Sub-state metadata stored beside the attributes of a run of pages.
///
/// A tag refines a state (for example "shared with one device only", or "private,
/// lent to another VM"); it is never a third state. Its meaning belongs to whoever sets
/// it. Zero is reserved for "no tag", which is the default, so `Option<Tag>` is as small
/// as a `u16`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tag(NonZeroU16);

impl Tag {
    /// A tag with the given value; `None` for zero, which means "no tag".
    pub const fn new(value: u16) -> Option<Tag> {
        match NonZeroU16::new(value) {
            Some(v) => Some(Tag(v)),
            None => None,
        }
    }

    /// The tag's value (never zero).
    pub const fn get(self) -> u16 {
        self.0.get()
    }
}

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "tag {}", self.0)
    }
}

/// Everything veil records for one page: its attributes and an optional sub-state tag.
///
/// Two runs merge exactly when their `PageState`s are equal.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PageState {
    /// KVM memory attributes.
    pub attributes: Attributes,
    /// Sub-state metadata; `None` by default.
    pub tag: Option<Tag>,
}

impl PageState {
    /// Shared, untagged: the state of every page of a new guest.
    pub const SHARED: PageState = PageState {
        attributes: Attributes::empty(),
        tag: None,
    };

    /// Private, untagged.
    pub const PRIVATE: PageState = PageState {
        attributes: Attributes::PRIVATE,
        tag: None,
    };

    /// A state with the given attributes and no tag.
    pub const fn new(attributes: Attributes) -> Self {
        PageState {
            attributes,
            tag: None,
        }
    }

    /// A state with the given attributes and tag.
    pub const fn tagged(attributes: Attributes, tag: Tag) -> Self {
        PageState {
            attributes,
            tag: Some(tag),
        }
    }

    /// Whether the page is private.
    pub const fn is_private(self) -> bool {
        self.attributes.is_private()
    }
}

impl From<Attributes> for PageState {
    fn from(attributes: Attributes) -> Self {
        PageState::new(attributes)
    }
}

impl fmt::Display for PageState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.tag {
            Some(tag) => write!(f, "{} ({tag})", self.attributes),
            None => write!(f, "{}", self.attributes),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_is_bit_three() {
        assert_eq!(Attributes::PRIVATE.bits(), 8);
        assert_eq!(Attributes::from_bits(8), Ok(Attributes::PRIVATE));
        assert!(Attributes::from_bits(8).unwrap().is_private());
    }

    #[test]
    fn empty_is_shared_default() {
        assert_eq!(Attributes::default(), Attributes::empty());
        assert!(!Attributes::empty().is_private());
        assert!(Attributes::from_bits(0).unwrap().is_empty());
        assert_eq!(PageState::default(), PageState::SHARED);
    }

    #[test]
    fn unknown_bits_rejected() {
        for bits in [1, 1 << 4, 1 << 63, 0x18, u64::MAX] {
            let err = Attributes::from_bits(bits).unwrap_err();
            assert_eq!(
                err,
                AttributesError::UnknownBits {
                    bits,
                    unknown: bits & !8
                }
            );
        }
    }

    #[test]
    fn tag_zero_is_none() {
        assert_eq!(Tag::new(0), None);
        assert_eq!(Tag::new(7).map(Tag::get), Some(7));
        assert_eq!(std::mem::size_of::<Option<Tag>>(), 2);
    }

    #[test]
    fn display() {
        assert_eq!(PageState::PRIVATE.to_string(), "private");
        let t = Tag::new(2).unwrap();
        assert_eq!(
            PageState::tagged(Attributes::empty(), t).to_string(),
            "shared (tag 2)"
        );
    }
}
