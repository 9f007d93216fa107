// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! `KVM_EXIT_TDX` (40): the TDVMCALLs KVM forwards (Linux 7.2 `api.rst`, "KVM_EXIT_TDX"),
//! answered by an [`UnknownExitHandler`] the launch adds to the vCPUs' routing.
//!
//! veil offers no optional TDVMCALL: `GetTdVmCallInfo` leaf 1 reports none (R11..R14
//! zero), `GetQuote` and `SetupEventNotifyInterrupt` are answered
//! `TDVMCALL_STATUS_SUBFUNC_UNSUPPORTED`, and any other call keeps the status KVM preset
//! ("userspace need not do anything"). MapGPA is not one of these: KVM turns it into
//! `KVM_EXIT_HYPERCALL` with `KVM_HC_MAP_GPA_RANGE`, which veil's default routing takes.

use std::sync::Arc;

use veil_vmm::kvm_bindings::kvm_run;
use veil_vmm::veil_vcpu::{BoxError, UnknownExitHandler};

/// `KVM_EXIT_TDX`.
pub const KVM_EXIT_TDX: u32 = 40;
/// `TDVMCALL_GET_TD_VM_CALL_INFO`.
pub const GET_TD_VM_CALL_INFO: u64 = 0x10000;
/// `TDVMCALL_MAP_GPA`.
pub const MAP_GPA: u64 = 0x10001;
/// `TDVMCALL_GET_QUOTE`.
pub const GET_QUOTE: u64 = 0x10002;
/// `TDVMCALL_REPORT_FATAL_ERROR`.
pub const REPORT_FATAL_ERROR: u64 = 0x10003;
/// `TDVMCALL_SETUP_EVENT_NOTIFY_INTERRUPT`.
pub const SETUP_EVENT_NOTIFY_INTERRUPT: u64 = 0x10004;
/// `TDVMCALL_STATUS_SUCCESS`.
pub const STATUS_SUCCESS: u64 = 0;
/// `TDVMCALL_STATUS_INVALID_OPERAND`.
pub const STATUS_INVALID_OPERAND: u64 = 0x8000_0000_0000_0000;
/// `TDVMCALL_STATUS_SUBFUNC_UNSUPPORTED`.
pub const STATUS_SUBFUNC_UNSUPPORTED: u64 = 0x8000_0000_0000_0003;

/// The `tdx` member of `kvm_run`'s exit union: `flags`, `nr`, and six words of the
/// call's union (`ret` first).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TdxExit {
    /// Always 0 so far.
    pub flags: u64,
    /// The TDVMCALL leaf (guest R11).
    pub nr: u64,
    /// `ret` and the call's fields.
    pub words: [u64; 6],
}

impl TdxExit {
    /// Reads the member from the union's bytes.
    pub fn decode(union: &[u8; 256]) -> Self {
        let word = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&union[i * 8..i * 8 + 8]);
            u64::from_le_bytes(b)
        };
        TdxExit {
            flags: word(0),
            nr: word(1),
            words: [word(2), word(3), word(4), word(5), word(6), word(7)],
        }
    }

    /// Writes the member back into the union's bytes.
    pub fn encode(&self, union: &mut [u8; 256]) {
        let mut put = |i: usize, v: u64| union[i * 8..i * 8 + 8].copy_from_slice(&v.to_le_bytes());
        put(0, self.flags);
        put(1, self.nr);
        for (i, w) in self.words.iter().enumerate() {
            put(2 + i, *w);
        }
    }

    /// veil's answer (see the module documentation): the exit with its outputs set.
    pub fn answered(mut self) -> Self {
        match self.nr {
            GET_TD_VM_CALL_INFO => {
                // get_tdvmcall_info { ret, leaf, r11, r12, r13, r14 }
                if self.words[1] == 1 {
                    self.words = [STATUS_SUCCESS, 1, 0, 0, 0, 0];
                } else {
                    self.words[0] = STATUS_INVALID_OPERAND;
                }
            }
            GET_QUOTE | SETUP_EVENT_NOTIFY_INTERRUPT => self.words[0] = STATUS_SUBFUNC_UNSUPPORTED,
            _ => {}
        }
        self
    }
}

/// Answers `KVM_EXIT_TDX`, passing other unknown exits to `next`.
#[derive(Clone, Default)]
pub struct TdxExits {
    /// The hook that was routed before this one.
    pub next: Option<Arc<dyn UnknownExitHandler>>,
}

impl UnknownExitHandler for TdxExits {
    fn handle(&self, vcpu: usize, reason: u32, run: &mut kvm_run) -> Result<bool, BoxError> {
        if reason != KVM_EXIT_TDX {
            return match &self.next {
                Some(next) => next.handle(vcpu, reason, run),
                None => Ok(false),
            };
        }
        // SAFETY: the exit reason is KVM_EXIT_TDX, so the kernel wrote the union's `tdx`
        // member; reading it as its 256 bytes of padding is valid for any contents.
        let bytes = unsafe { &mut run.__bindgen_anon_1.padding };
        // SAFETY: `c_char` and `u8` have the same size and alignment, and every bit
        // pattern is valid for both.
        let bytes: &mut [u8; 256] = unsafe { &mut *std::ptr::from_mut(bytes).cast::<[u8; 256]>() };
        let exit = TdxExit::decode(bytes);
        if exit.nr == GET_QUOTE || exit.nr == REPORT_FATAL_ERROR {
            log::info!("vCPU {vcpu}: TDVMCALL {:#x} refused", exit.nr);
        }
        exit.answered().encode(bytes);
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exit(nr: u64, words: [u64; 6]) -> TdxExit {
        TdxExit {
            flags: 0,
            nr,
            words,
        }
    }

    #[test]
    fn tdvmcalls_are_answered_as_documented() {
        let info = exit(
            GET_TD_VM_CALL_INFO,
            [STATUS_SUBFUNC_UNSUPPORTED, 1, 7, 7, 7, 7],
        )
        .answered();
        assert_eq!(info.words, [0, 1, 0, 0, 0, 0]);
        let bad = exit(GET_TD_VM_CALL_INFO, [0, 2, 0, 0, 0, 0]).answered();
        assert_eq!(bad.words[0], STATUS_INVALID_OPERAND);
        assert_eq!(
            exit(GET_QUOTE, [0, 0x1000, 0x1000, 0, 0, 0])
                .answered()
                .words[0],
            STATUS_SUBFUNC_UNSUPPORTED
        );
        let other = exit(0x20000, [STATUS_SUBFUNC_UNSUPPORTED, 5, 0, 0, 0, 0]);
        assert_eq!(
            other.answered(),
            other,
            "unknown calls keep what KVM preset"
        );
    }

    #[test]
    fn the_handler_writes_into_kvm_run() {
        let mut run = kvm_run::default();
        let mut union = [0u8; 256];
        exit(GET_QUOTE, [0, 0x2000, 0x1000, 0, 0, 0]).encode(&mut union);
        // SAFETY: writing the union's padding member.
        unsafe {
            for (d, s) in run.__bindgen_anon_1.padding.iter_mut().zip(union) {
                *d = s as _;
            }
        }
        let h = TdxExits::default();
        assert!(h.handle(0, KVM_EXIT_TDX, &mut run).unwrap());
        // SAFETY: reading the padding member just written.
        let after: Vec<u8> = unsafe { run.__bindgen_anon_1.padding }
            .iter()
            .map(|&b| b as u8)
            .collect();
        let after = TdxExit::decode(&after.try_into().unwrap());
        assert_eq!(after.words[0], STATUS_SUBFUNC_UNSUPPORTED);
        assert_eq!(after.words[1], 0x2000);
        // Other reasons are not TDX's.
        assert!(!h.handle(0, 41, &mut run).unwrap());
    }
}
