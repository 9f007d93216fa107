// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! [`RecordingTdx`]: a stand-in for KVM and the TDX module at the ioctl level. It records
//! every call, answers as Linux 7.2's `arch/x86/kvm/vmx/tdx.c` does (`E2BIG` for too
//! little CPUID room, `EINVAL` out of order or for bad arguments, one page at a time
//! with `EINTR` and the structure written back when stopped early), and extends an MRTD
//! as the module would: PAGE.ADD per page, 16 MR.EXTENDs per measured page.

use std::sync::{Mutex, MutexGuard, PoisonError};

use veil_vmm::kvm_bindings::{CpuId, kvm_cpuid_entry2};
use veil_vmm::kvm_ioctls::{Kvm, VcpuFd, VmFd};

use crate::ioctl::{IoctlError, TdxCapabilities, TdxCommand, TdxHost, TdxInitVm, TdxVm};
use crate::mrtd::Mrtd;

/// One recorded call.
#[derive(Debug, Clone, PartialEq)]
pub enum Call {
    /// `KVM_GET_SUPPORTED_CPUID`.
    SupportedCpuid,
    /// `KVM_ENABLE_CAP(KVM_CAP_SPLIT_IRQCHIP)`.
    EnableSplitIrqchip,
    /// `KVM_TDX_CAPABILITIES` with room for this many entries.
    Capabilities {
        /// `cpuid.nent` in.
        room: u32,
    },
    /// `KVM_TDX_INIT_VM`.
    InitVm(TdxInitVm),
    /// `KVM_SET_CPUID2`.
    SetCpuid {
        /// The vCPU.
        vcpu: u32,
        /// Whether leaf 1 has x2APIC.
        x2apic: bool,
    },
    /// `KVM_TDX_INIT_VCPU`.
    InitVcpu {
        /// The vCPU.
        vcpu: u32,
        /// The initial RCX.
        rcx: u64,
    },
    /// `KVM_TDX_INIT_MEM_REGION`, as passed.
    InitMemRegion {
        /// The vCPU it was issued on.
        vcpu: u32,
        /// `gpa`.
        gpa: u64,
        /// `nr_pages`.
        nr_pages: u64,
        /// `KVM_TDX_MEASURE_MEMORY_REGION`.
        measure: bool,
        /// `source_addr` minus the source buffer's start.
        source_offset: u64,
    },
    /// `KVM_TDX_FINALIZE_VM`.
    FinalizeVm,
}

/// One page the module added.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AddedPage {
    /// Its GPA.
    pub gpa: u64,
    /// Whether it was measured (MR.EXTEND).
    pub measured: bool,
    /// SHA-384 of its contents.
    pub sha384: [u8; 48],
}

/// Faults to inject.
#[derive(Debug, Clone, Default)]
pub struct Script {
    /// At most this many pages per INIT_MEM_REGION call, then `EINTR` (0: no limit).
    pub max_pages_per_call: u64,
    /// Fail the page at this GPA with `EIO` and this SEAMCALL status.
    pub fail_at: Option<(u64, u64)>,
    /// Answer FINALIZE_VM `EBUSY` this many times first.
    pub busy: u32,
}

#[derive(Debug, Default)]
struct Inner {
    calls: Vec<Call>,
    initialised: bool,
    x2apic: Vec<u32>,
    vcpus: Vec<u32>,
    finalized: bool,
    mrtd: Mrtd,
    pages: Vec<AddedPage>,
    busy_left: u32,
}

/// See the module documentation.
#[derive(Debug)]
pub struct RecordingTdx {
    caps: TdxCapabilities,
    supported: Vec<kvm_cpuid_entry2>,
    script: Script,
    inner: Mutex<Inner>,
}

/// Capabilities of a plausible module: SEPT_VE_DISABLE and DEBUG, x87/SSE/AVX, and
/// leaves 1, 7 and 0x80000008 configurable in every bit.
pub fn example_capabilities() -> TdxCapabilities {
    let all = |function, flags| kvm_cpuid_entry2 {
        function,
        flags,
        eax: u32::MAX,
        ebx: u32::MAX,
        ecx: u32::MAX,
        edx: u32::MAX,
        ..Default::default()
    };
    TdxCapabilities {
        supported_attrs: (1 << 28) | 1,
        supported_xfam: 0x7,
        cpuid: vec![all(1, 0), all(7, 1), all(0x8000_0008, 0)],
        ..Default::default()
    }
}

impl RecordingTdx {
    /// A module with `caps` on a host whose KVM supports the `supported` CPUID.
    pub fn new(caps: TdxCapabilities, supported: Vec<kvm_cpuid_entry2>) -> Self {
        RecordingTdx::scripted(caps, supported, Script::default())
    }

    /// The same, with faults.
    pub fn scripted(
        caps: TdxCapabilities,
        supported: Vec<kvm_cpuid_entry2>,
        script: Script,
    ) -> Self {
        RecordingTdx {
            caps,
            supported,
            inner: Mutex::new(Inner {
                busy_left: script.busy,
                ..Inner::default()
            }),
            script,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Every call so far.
    pub fn calls(&self) -> Vec<Call> {
        self.lock().calls.clone()
    }

    /// The MRTD so far.
    pub fn mrtd(&self) -> [u8; 48] {
        self.lock().mrtd.finish()
    }

    /// The pages added so far.
    pub fn pages(&self) -> Vec<AddedPage> {
        self.lock().pages.clone()
    }

    /// Whether FINALIZE_VM succeeded.
    pub fn finalized(&self) -> bool {
        self.lock().finalized
    }

    /// The CPUID `KVM_GET_SUPPORTED_CPUID` answers.
    pub fn supported(&self) -> Result<CpuId, IoctlError> {
        CpuId::from_entries(&self.supported).map_err(|_| IoctlError {
            command: "KVM_GET_SUPPORTED_CPUID",
            errno: libc::E2BIG,
            hw_error: 0,
        })
    }
}

impl TdxVm for RecordingTdx {
    fn command(&self, command: TdxCommand<'_>) -> Result<(), IoctlError> {
        let name = command.name();
        let fail = |errno, hw_error| {
            Err(IoctlError {
                command: name,
                errno,
                hw_error,
            })
        };
        let mut s = self.lock();
        match command {
            TdxCommand::EnableSplitIrqchip => {
                s.calls.push(Call::EnableSplitIrqchip);
                Ok(())
            }
            TdxCommand::Capabilities { caps, room } => {
                s.calls.push(Call::Capabilities { room });
                if (room as usize) < self.caps.cpuid.len() {
                    return fail(libc::E2BIG, 0);
                }
                *caps = self.caps.clone();
                Ok(())
            }
            TdxCommand::InitVm(init) => {
                s.calls.push(Call::InitVm(init.clone()));
                let gpaw_ok = init
                    .cpuid
                    .iter()
                    .find(|e| e.function == 0x8000_0008)
                    .is_some_and(|e| matches!((e.eax >> 16) & 0xff, 48 | 52));
                let configurable = init
                    .cpuid
                    .iter()
                    .all(|e| self.caps.cpuid.iter().any(|c| c.function == e.function));
                if s.initialised
                    || !gpaw_ok
                    || !configurable
                    || init.attributes & !self.caps.supported_attrs != 0
                    || init.xfam & !self.caps.supported_xfam != 0
                {
                    return fail(libc::EINVAL, 0);
                }
                s.initialised = true;
                Ok(())
            }
            TdxCommand::SetCpuid { vcpu, cpuid } => {
                let x2apic = cpuid
                    .as_slice()
                    .iter()
                    .any(|e| e.function == 1 && e.ecx & (1 << 21) != 0);
                s.calls.push(Call::SetCpuid { vcpu, x2apic });
                if !s.initialised {
                    return fail(libc::EIO, 0);
                }
                if x2apic {
                    s.x2apic.push(vcpu);
                }
                Ok(())
            }
            TdxCommand::InitVcpu { vcpu, rcx } => {
                s.calls.push(Call::InitVcpu { vcpu, rcx });
                if !s.initialised
                    || s.finalized
                    || !s.x2apic.contains(&vcpu)
                    || s.vcpus.contains(&vcpu)
                {
                    return fail(libc::EINVAL, 0);
                }
                s.vcpus.push(vcpu);
                Ok(())
            }
            TdxCommand::InitMemRegion {
                vcpu,
                region,
                measure,
                source,
            } => {
                let base = source.as_ptr() as u64;
                let offset = region.source_addr.wrapping_sub(base);
                s.calls.push(Call::InitMemRegion {
                    vcpu,
                    gpa: region.gpa,
                    nr_pages: region.nr_pages,
                    measure,
                    source_offset: offset,
                });
                if !s.vcpus.contains(&vcpu)
                    || s.finalized
                    || region.nr_pages == 0
                    || !region.gpa.is_multiple_of(4096)
                    || !region.source_addr.is_multiple_of(4096)
                {
                    return fail(libc::EINVAL, 0);
                }
                if offset.saturating_add(region.nr_pages.saturating_mul(4096)) > source.len() as u64
                {
                    return fail(libc::EFAULT, 0);
                }
                let mut done = 0;
                while region.nr_pages > 0 {
                    if self.script.max_pages_per_call > 0 && done == self.script.max_pages_per_call
                    {
                        return fail(libc::EINTR, 0);
                    }
                    if let Some((at, hw)) = self.script.fail_at
                        && at == region.gpa
                    {
                        return fail(libc::EIO, hw);
                    }
                    let at = (region.source_addr - base) as usize;
                    let page = &source[at..at + 4096];
                    s.mrtd.page_add(region.gpa);
                    if measure {
                        s.mrtd.extend_page(region.gpa, page);
                    }
                    let gpa = region.gpa;
                    s.pages.push(AddedPage {
                        gpa,
                        measured: measure,
                        sha384: crate::measure::sha384(page),
                    });
                    region.gpa += 4096;
                    region.source_addr += 4096;
                    region.nr_pages -= 1;
                    done += 1;
                }
                Ok(())
            }
            TdxCommand::FinalizeVm => {
                s.calls.push(Call::FinalizeVm);
                if !s.initialised || s.finalized {
                    return fail(libc::EINVAL, 0);
                }
                if s.busy_left > 0 {
                    s.busy_left -= 1;
                    return fail(libc::EBUSY, 0);
                }
                s.finalized = true;
                Ok(())
            }
        }
    }
}

struct Bound<'a>(&'a RecordingTdx);

impl TdxVm for Bound<'_> {
    fn command(&self, command: TdxCommand<'_>) -> Result<(), IoctlError> {
        self.0.command(command)
    }
}

impl TdxHost for RecordingTdx {
    fn supported_cpuid(&self, _kvm: &Kvm) -> Result<CpuId, IoctlError> {
        self.lock().calls.push(Call::SupportedCpuid);
        self.supported()
    }

    fn vm<'a>(&'a self, _vm: &'a VmFd, _vcpus: Vec<(u32, &'a VcpuFd)>) -> Box<dyn TdxVm + 'a> {
        Box::new(Bound(self))
    }
}
