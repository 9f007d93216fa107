// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Hypercalls routed by number: a [`Hypercall`] as the guest made it, the
//! [`HypercallAbi`] that owns its number, and [`Hypercalls`], the ABIs a VM's vCPUs route
//! by. KVM's `KVM_HC_MAP_GPA_RANGE` is one registered ABI ([`MapGpaRangeAbi`]); a
//! backend registers its own (pKVM's share/unshare, a vendor's) the same way, on either
//! transport.
//!
//! An ABI turns a hypercall into a validated request, never passing raw guest values on:
//! a conversion is a [`MapGpaRange`], which only validation makes. What the guest reads
//! back is the ABI's own encoding of the outcome, written for every hypercall.

use std::fmt;
use std::sync::Arc;

use crate::abi::KVM_HC_MAP_GPA_RANGE;
use crate::handler::{BoxError, RequestOutcome};
use crate::request::{GuestLayout, HypercallResult, MapGpaRange, MapGpaRangeArgs};

/// How a hypercall reached the VMM, and so where its result goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    /// `KVM_EXIT_HYPERCALL`: the result goes to `kvm_run.hypercall.ret`.
    Exit,
    /// veil's port-I/O hypercall (an `out` to [`HYPERCALL_PORT`](crate::HYPERCALL_PORT)):
    /// the number in `rax`, the arguments in `rbx`, `rcx`, `rdx`, `rsi`; the result goes
    /// to `rax`.
    Port,
}

/// A hypercall as the guest made it: number, arguments and mode. Nothing in it has been
/// checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hypercall {
    /// The hypercall number.
    pub nr: u64,
    /// The arguments (`a0`..`a5`; the port transport carries four).
    pub args: [u64; 6],
    /// Whether the guest was in 64-bit mode. When clear, every value is 32-bit.
    pub long_mode: bool,
    /// How it arrived.
    pub transport: Transport,
}

impl Hypercall {
    /// `value` as the guest's mode sees it: the low 32 bits outside 64-bit mode (as KVM
    /// does).
    pub fn width(&self, value: u64) -> u64 {
        if self.long_mode {
            value
        } else {
            value & u64::from(u32::MAX)
        }
    }

    /// The number, as the guest's mode sees it.
    pub fn number(&self) -> u64 {
        self.width(self.nr)
    }

    /// Argument `i` (0 to 5), as the guest's mode sees it.
    pub fn arg(&self, i: usize) -> u64 {
        self.args.get(i).map_or(0, |&a| self.width(a))
    }
}

/// What an ABI asks of the VMM for a hypercall it decoded and validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AbiRequest {
    /// Convert a range; the [`MemoryHandler`](crate::MemoryHandler) carries it out and the
    /// ABI encodes the outcome ([`HypercallAbi::answer`]).
    Convert(MapGpaRange),
    /// Nothing to carry out: the guest reads this value (an information call, such as the
    /// granule a share call works in).
    Answer(u64),
}

/// A hypercall its ABI refused: what the guest reads, and why (logged at a limited
/// rate). Nothing was carried out.
#[derive(Debug)]
pub struct Refusal {
    /// The value the guest reads.
    pub code: u64,
    /// What was wrong.
    pub reason: BoxError,
}

impl Refusal {
    /// A refusal answered `code`, for `reason`.
    pub fn new(code: u64, reason: impl Into<BoxError>) -> Self {
        Refusal {
            code,
            reason: reason.into(),
        }
    }
}

/// A hypercall ABI: the numbers it owns, how it decodes and validates them, and how it
/// tells the guest the outcome.
///
/// `decode` must return only requests it validated as strictly as
/// [`MapGpaRangeArgs::validate`] does (a [`MapGpaRange`] can only be built by validation,
/// against the guest's layout), and refuse everything else with the ABI's own error code.
pub trait HypercallAbi: Send + Sync {
    /// A short name, for logs.
    fn name(&self) -> &'static str;

    /// Whether this ABI owns `call` (usually: its number, as the guest's mode sees it).
    /// The first registered ABI that claims a call decodes it.
    fn claims(&self, call: &Hypercall) -> bool;

    /// Decodes and validates `call` against the guest's `layout`.
    fn decode(&self, call: &Hypercall, layout: &GuestLayout) -> Result<AbiRequest, Refusal>;

    /// The value the guest reads when a conversion it asked for ended as `outcome`.
    fn answer(&self, call: &Hypercall, outcome: RequestOutcome) -> u64;
}

/// KVM's conversion hypercall, `KVM_HC_MAP_GPA_RANGE`: validated by
/// [`MapGpaRangeArgs::validate`], answered 0, `EINVAL` or `EAGAIN`
/// ([`HypercallResult`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct MapGpaRangeAbi;

impl HypercallAbi for MapGpaRangeAbi {
    fn name(&self) -> &'static str {
        "KVM_HC_MAP_GPA_RANGE"
    }

    fn claims(&self, call: &Hypercall) -> bool {
        call.number() == KVM_HC_MAP_GPA_RANGE
    }

    fn decode(&self, call: &Hypercall, layout: &GuestLayout) -> Result<AbiRequest, Refusal> {
        MapGpaRangeArgs::from(call)
            .validate(layout)
            .map(AbiRequest::Convert)
            .map_err(|e| Refusal::new(HypercallResult::InvalidArgument.code(), e))
    }

    fn answer(&self, _call: &Hypercall, outcome: RequestOutcome) -> u64 {
        match outcome {
            RequestOutcome::Done => HypercallResult::Success,
            RequestOutcome::Retry => HypercallResult::Retry,
            RequestOutcome::Refused => HypercallResult::InvalidArgument,
        }
        .code()
    }
}

/// The hypercall ABIs a VM's vCPUs route by, in registration order, and what a guest
/// reads for a number none claims.
///
/// The default has [`MapGpaRangeAbi`] and answers unclaimed numbers `EINVAL`.
#[derive(Clone)]
pub struct Hypercalls {
    abis: Vec<Arc<dyn HypercallAbi>>,
    unclaimed: u64,
}

impl Hypercalls {
    /// No ABI at all: every hypercall is answered `unclaimed`.
    pub fn none(unclaimed: u64) -> Self {
        Hypercalls {
            abis: Vec::new(),
            unclaimed,
        }
    }

    /// Adds `abi` after the ones registered so far.
    pub fn register(mut self, abi: Arc<dyn HypercallAbi>) -> Self {
        self.abis.push(abi);
        self
    }

    /// The ABI that claims `call`, if any.
    pub fn route(&self, call: &Hypercall) -> Option<&dyn HypercallAbi> {
        self.abis
            .iter()
            .find(|a| a.claims(call))
            .map(|a| a.as_ref())
    }

    /// What a guest reads for a hypercall no ABI claims.
    pub fn unclaimed(&self) -> u64 {
        self.unclaimed
    }

    /// The registered ABIs' names, in order.
    pub fn names(&self) -> Vec<&'static str> {
        self.abis.iter().map(|a| a.name()).collect()
    }
}

impl Default for Hypercalls {
    fn default() -> Self {
        Hypercalls::none(HypercallResult::InvalidArgument.code()).register(Arc::new(MapGpaRangeAbi))
    }
}

impl fmt::Debug for Hypercalls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hypercalls")
            .field("abis", &self.names())
            .field("unclaimed", &self.unclaimed)
            .finish()
    }
}

/// No hypercall ABI claims this number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("no hypercall ABI claims number {nr:#x}")]
pub struct Unclaimed {
    /// The number, as the guest's mode sees it.
    pub nr: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::abi::KVM_MAP_GPA_RANGE_ENCRYPTED;
    use crate::request::RequestError;
    use veil_attrs::Attributes;

    fn call(nr: u64, args: [u64; 3], long_mode: bool) -> Hypercall {
        Hypercall {
            nr,
            args: [args[0], args[1], args[2], 0, 0, 0],
            long_mode,
            transport: Transport::Exit,
        }
    }

    #[test]
    fn map_gpa_range_claims_its_number_only_and_decodes_strictly() {
        let abi = MapGpaRangeAbi;
        let layout = GuestLayout::from_size(2 << 20);
        assert!(abi.claims(&call(12, [0; 3], true)));
        assert!(!abi.claims(&call(11, [0; 3], true)));
        // Outside long mode the upper half of the number is not the guest's.
        assert!(abi.claims(&call((7 << 32) | 12, [0; 3], false)));
        assert!(!abi.claims(&call((7 << 32) | 12, [0; 3], true)));
        match abi.decode(
            &call(12, [0x1000, 2, KVM_MAP_GPA_RANGE_ENCRYPTED], true),
            &layout,
        ) {
            Ok(AbiRequest::Convert(r)) => {
                assert_eq!(
                    (r.gpa(), r.pages(), r.to()),
                    (0x1000, 2, Attributes::PRIVATE)
                )
            }
            other => panic!("{other:?}"),
        }
        let refused = abi
            .decode(&call(12, [0x1001, 1, 0], true), &layout)
            .unwrap_err();
        assert_eq!(refused.code, 22);
        assert_eq!(
            refused.reason.downcast_ref::<RequestError>(),
            Some(&RequestError::Misaligned { gpa: 0x1001 })
        );
        for (outcome, code) in [
            (RequestOutcome::Done, 0),
            (RequestOutcome::Retry, 11),
            (RequestOutcome::Refused, 22),
        ] {
            assert_eq!(abi.answer(&call(12, [0; 3], true), outcome), code);
        }
    }

    struct Claims(u64, &'static str);

    impl HypercallAbi for Claims {
        fn name(&self) -> &'static str {
            self.1
        }
        fn claims(&self, call: &Hypercall) -> bool {
            call.number() == self.0
        }
        fn decode(&self, _: &Hypercall, _: &GuestLayout) -> Result<AbiRequest, Refusal> {
            Ok(AbiRequest::Answer(self.0))
        }
        fn answer(&self, _: &Hypercall, _: RequestOutcome) -> u64 {
            0
        }
    }

    #[test]
    fn routing_is_by_claim_in_registration_order() {
        let h = Hypercalls::default()
            .register(Arc::new(Claims(5, "five")))
            .register(Arc::new(Claims(5, "five again")))
            .register(Arc::new(Claims(12, "twelve")));
        assert_eq!(
            h.names(),
            ["KVM_HC_MAP_GPA_RANGE", "five", "five again", "twelve"]
        );
        assert_eq!(
            h.route(&call(5, [0; 3], true)).map(|a| a.name()),
            Some("five")
        );
        assert_eq!(
            h.route(&call(12, [0; 3], true)).map(|a| a.name()),
            Some("KVM_HC_MAP_GPA_RANGE")
        );
        assert!(h.route(&call(6, [0; 3], true)).is_none());
        assert_eq!(h.unclaimed(), 22);
        let none = Hypercalls::none(u64::MAX);
        assert!(none.route(&call(12, [0; 3], true)).is_none());
        assert_eq!(none.unclaimed(), u64::MAX);
    }

    #[test]
    fn arguments_follow_the_mode() {
        let c = call(12, [u64::MAX, 1 << 40, 3], false);
        assert_eq!(
            (c.arg(0), c.arg(1), c.arg(2), c.arg(6)),
            (0xffff_ffff, 0, 3, 0)
        );
        let c = Hypercall {
            long_mode: true,
            ..c
        };
        assert_eq!((c.arg(0), c.arg(1)), (u64::MAX, 1 << 40));
    }
}
