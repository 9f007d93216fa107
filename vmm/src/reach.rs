// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Whether a guest's `vmcall`/`vmmcall` reaches this VMM: found out by running one.
//!
//! `KVM_CAP_EXIT_HYPERCALL` says KVM *can* forward `KVM_HC_MAP_GPA_RANGE` to userspace,
//! not that a guest's instruction gets there: under a paravirtual KVM (PVM) the
//! instruction never leaves the kernel, and the vCPU spins in `KVM_RUN` until a signal
//! takes it out. The only way to know is to run a guest that makes the call, with a
//! deadline. This module only finds out; which transport a guest should then use is the
//! caller's decision ([`GuestHypercallProbe::transport`] gives veil's).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use veil_loader::BootSource;
use veil_memory::ContentPolicy;
use veil_vcpu::{BoxError, ExitKind, FaultPolicy, IoHandler, StopReason, Transport};

use crate::vm::{Vm, VmError};

/// Where the probe guest's code goes, and the page its request converts.
const CODE: u64 = 0x10_0000;
const RAM: u64 = 2 << 20;
const PAGE: u64 = RAM - 0x1000;
/// The port the probe guest writes the value it got back to.
const RESULT_PORT: u16 = 0x10;

/// The hypercall instruction of this CPU's vendor: `vmmcall` on AMD and Hygon, `vmcall`
/// elsewhere (KVM emulates the other vendor's, but that costs an exit of its own).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HypercallInstruction {
    /// Intel's `vmcall` (`0f 01 c1`).
    Vmcall,
    /// AMD's `vmmcall` (`0f 01 d9`).
    Vmmcall,
}

impl HypercallInstruction {
    /// The instruction this CPU's vendor uses, from the CPUID vendor string KVM reports.
    pub fn for_vendor(vendor: &[u8; 12]) -> Self {
        match vendor {
            b"AuthenticAMD" | b"HygonGenuine" => HypercallInstruction::Vmmcall,
            _ => HypercallInstruction::Vmcall,
        }
    }

    /// Its mnemonic.
    pub fn name(self) -> &'static str {
        match self {
            HypercallInstruction::Vmcall => "vmcall",
            HypercallInstruction::Vmmcall => "vmmcall",
        }
    }

    /// Its encoding.
    pub fn bytes(self) -> [u8; 3] {
        match self {
            HypercallInstruction::Vmcall => [0x0f, 0x01, 0xc1],
            HypercallInstruction::Vmmcall => [0x0f, 0x01, 0xd9],
        }
    }
}

/// What became of the probe guest's `KVM_HC_MAP_GPA_RANGE`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case", tag = "outcome")]
pub enum HypercallReach {
    /// It reached userspace as `KVM_EXIT_HYPERCALL`: the MAP_GPA_RANGE transport works.
    Userspace,
    /// KVM answered it without an exit; the guest read `returned` (`-KVM_ENOSYS` when
    /// conversion exits are off).
    Kernel {
        /// The value the guest got back in `rax`.
        returned: u64,
    },
    /// The vCPU neither exited nor came back to the guest within the deadline.
    Hangs {
        /// How long the probe waited.
        waited_ms: u64,
    },
    /// The guest stopped some other way (the reason is given): the answer is unknown.
    Failed {
        /// Why the probe VM stopped.
        reason: String,
    },
}

/// The result of [`probe_guest_hypercall`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct GuestHypercallProbe {
    /// The instruction the guest used.
    pub instruction: HypercallInstruction,
    /// What became of it.
    pub reach: HypercallReach,
}

impl GuestHypercallProbe {
    /// Whether a guest's hypercall instruction reaches this VMM.
    pub fn reaches_userspace(&self) -> bool {
        self.reach == HypercallReach::Userspace
    }

    /// The transport a guest should convert memory with here: the hypercall exit where
    /// it reaches userspace, veil's port-I/O hypercall otherwise (which works everywhere).
    pub fn transport(&self) -> Transport {
        if self.reaches_userspace() {
            Transport::Exit
        } else {
            Transport::Port
        }
    }
}

impl std::fmt::Display for GuestHypercallProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = self.instruction.name();
        match &self.reach {
            HypercallReach::Userspace => write!(f, "a guest's {name} reaches userspace"),
            HypercallReach::Kernel { returned } => write!(
                f,
                "a guest's {name} is answered in the kernel (the guest read {:#x})",
                returned
            ),
            HypercallReach::Hangs { waited_ms } => write!(
                f,
                "a guest's {name} never comes back (no exit within {waited_ms} ms)"
            ),
            HypercallReach::Failed { reason } => {
                write!(f, "the {name} probe guest failed: {reason}")
            }
        }
    }
}

/// The probe guest, 64-bit code at [`CODE`]: one `KVM_HC_MAP_GPA_RANGE` making the
/// (already shared) last page shared, then the value it got back to [`RESULT_PORT`].
fn probe_code(instruction: HypercallInstruction) -> Vec<u8> {
    let gpa = u32::try_from(PAGE).expect("the probe page is below 4 GiB");
    let mut code = Vec::new();
    code.push(0xb8); // mov eax, KVM_HC_MAP_GPA_RANGE
    code.extend_from_slice(&12u32.to_le_bytes());
    code.push(0xbb); // mov ebx, gpa
    code.extend_from_slice(&gpa.to_le_bytes());
    code.push(0xb9); // mov ecx, 1 (page)
    code.extend_from_slice(&1u32.to_le_bytes());
    code.extend_from_slice(&[0x31, 0xd2]); // xor edx, edx (to shared, 4 KiB pages)
    code.extend_from_slice(&instruction.bytes());
    code.extend_from_slice(&[0xe7, RESULT_PORT as u8]); // out RESULT_PORT, eax
    code.push(0xf4); // hlt
    code
}

/// Records what the probe guest writes to [`RESULT_PORT`].
#[derive(Default)]
struct Result32(AtomicU64);

const NOTHING: u64 = u64::MAX;

impl IoHandler for Result32 {
    fn pio_write(&self, port: u16, data: &[u8]) -> Result<(), BoxError> {
        if port != RESULT_PORT || data.len() != 4 {
            return Err(format!("unexpected port write {port:#x}").into());
        }
        let value = u32::from_le_bytes(data.try_into().expect("four bytes"));
        self.0.store(u64::from(value), Ordering::SeqCst);
        Ok(())
    }
}

/// The CPUID vendor string KVM reports for its guests.
fn vendor(kvm: &kvm_ioctls::Kvm) -> Result<[u8; 12], VmError> {
    let cpuid = kvm
        .get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
        .map_err(VmError::OpenKvm)?;
    let leaf0 = cpuid
        .as_slice()
        .iter()
        .find(|e| e.function == 0)
        .copied()
        .unwrap_or_default();
    let mut v = [0u8; 12];
    v[..4].copy_from_slice(&leaf0.ebx.to_le_bytes());
    v[4..8].copy_from_slice(&leaf0.edx.to_le_bytes());
    v[8..].copy_from_slice(&leaf0.ecx.to_le_bytes());
    Ok(v)
}

/// Runs a one-vCPU guest that issues `KVM_HC_MAP_GPA_RANGE` with this CPU's hypercall
/// instruction, and reports whether it reached userspace, was answered in the kernel, or
/// never came back within `deadline` (then the vCPU is kicked out and the VM dropped).
///
/// Costs a VM with 2 MiB of memory and, on a host where the call hangs, `deadline`.
pub fn probe_guest_hypercall(deadline: Duration) -> Result<GuestHypercallProbe, VmError> {
    let vm = Vm::builder()
        .region(0, RAM, ContentPolicy::Discard)
        .private_at_launch(false)
        .build()?;
    let instruction = HypercallInstruction::for_vendor(&vendor(vm.kvm())?);
    let code = probe_code(instruction);
    let launched = vm.launch(&BootSource::flat(&code, CODE), 1)?;
    let result = Arc::new(Result32(AtomicU64::new(NOTHING)));
    let started = Instant::now();
    let set = vm.run(launched.vcpus, result.clone(), FaultPolicy::Refuse)?;
    let report = match set.wait_timeout(deadline) {
        Ok(report) => report,
        Err(set) => {
            let waited_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
            set.stop();
            if let Err(stuck) = set.wait_timeout(Duration::from_secs(5)) {
                // The kick did not take the vCPU out of KVM_RUN: keep its thread, the
                // VM and the memory alive rather than pull them from under it.
                log::error!("the hypercall probe's vCPU does not stop; leaving it");
                std::mem::forget(stuck);
                std::mem::forget(vm);
            }
            let reach = HypercallReach::Hangs { waited_ms };
            return Ok(GuestHypercallProbe { instruction, reach });
        }
    };
    let reach = if report.stats().count(ExitKind::Hypercall) > 0 {
        HypercallReach::Userspace
    } else {
        match (result.0.load(Ordering::SeqCst), &report.reason) {
            (NOTHING, reason) => HypercallReach::Failed {
                reason: reason.to_string(),
            },
            // The guest reported eax; a negative errno reads as one sign-extended.
            (eax, StopReason::AllHalted) => HypercallReach::Kernel {
                returned: i64::from(eax as u32 as i32) as u64,
            },
            (_, reason) => HypercallReach::Failed {
                reason: reason.to_string(),
            },
        }
    };
    Ok(GuestHypercallProbe { instruction, reach })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vendor_picks_the_instruction() {
        assert_eq!(
            HypercallInstruction::for_vendor(b"AuthenticAMD"),
            HypercallInstruction::Vmmcall
        );
        assert_eq!(
            HypercallInstruction::for_vendor(b"HygonGenuine"),
            HypercallInstruction::Vmmcall
        );
        assert_eq!(
            HypercallInstruction::for_vendor(b"GenuineIntel"),
            HypercallInstruction::Vmcall
        );
    }

    #[test]
    fn probe_code_makes_one_request_and_reports() {
        let code = probe_code(HypercallInstruction::Vmmcall);
        assert_eq!(&code[..5], &[0xb8, 12, 0, 0, 0]);
        assert_eq!(&code[5..10], &[0xbb, 0x00, 0xf0, 0x1f, 0x00]);
        let at = code.len() - 6;
        assert_eq!(&code[at..], &[0x0f, 0x01, 0xd9, 0xe7, 0x10, 0xf4]);
    }

    #[test]
    fn transport_follows_the_reach() {
        let probe = |reach| GuestHypercallProbe {
            instruction: HypercallInstruction::Vmcall,
            reach,
        };
        assert_eq!(
            probe(HypercallReach::Userspace).transport(),
            Transport::Exit
        );
        for reach in [
            HypercallReach::Kernel { returned: 0 },
            HypercallReach::Hangs { waited_ms: 10 },
            HypercallReach::Failed { reason: "x".into() },
        ] {
            let p = probe(reach);
            assert_eq!(p.transport(), Transport::Port, "{p}");
            assert!(!p.reaches_userspace());
        }
    }
}
