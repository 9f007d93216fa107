// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The TDX launch sequence of Linux 7.2's `Documentation/virt/kvm/x86/intel-tdx.rst`
//! ("KVM TDX creation flow"): `KVM_TDX_CAPABILITIES` and `KVM_TDX_INIT_VM` right after
//! `KVM_CREATE_VM` (with `KVM_CAP_SPLIT_IRQCHIP`, which TDX vCPUs need), per vCPU
//! `KVM_SET_CPUID2` and `KVM_TDX_INIT_VCPU` in place of register setup, one
//! `KVM_TDX_INIT_MEM_REGION` loop per run of boot data on memory already private
//! (measured for normal pages), and `KVM_TDX_FINALIZE_VM`.
//!
//! `KVM_SET_CPUID2` comes before `KVM_TDX_INIT_VCPU`, not after as the rst lists it:
//! `tdx_vcpu_init` puts the APIC in x2APIC mode, which KVM refuses unless the vCPU's
//! CPUID has X2APIC ("userspace is responsible for configuring guest CPUID
//! accordingly", `tdx.c`). No MSR, FPU or register is set: the TDX module owns them.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use veil_vmm::kvm_bindings::{CpuId, KVM_CPUID_FLAG_SIGNIFCANT_INDEX, kvm_cpuid_entry2};
use veil_vmm::kvm_ioctls::{Kvm, VcpuFd, VmFd};
use veil_vmm::veil_abi::x86_64::EntryRegisters;
use veil_vmm::veil_loader::{ByteRange, PageType};
use veil_vmm::veil_memory::HostSafeMemory;
use veil_vmm::veil_memory::veil_attrs::{Attributes, FrameRange};
use veil_vmm::veil_vcpu::ExitRouting;
use veil_vmm::{Launch, LaunchError, LaunchRun, LaunchVm};

use crate::exits::TdxExits;
use crate::ioctl::{
    IoctlError, KvmTdx, KvmTdxInitMemRegion, TdxCapabilities, TdxCommand, TdxHost, TdxInitVm, TdxVm,
};

/// `KVM_X86_TDX_VM`.
pub const KVM_X86_TDX_VM: u32 = 5;
/// The technology's name in veil's errors and reports.
pub const TECHNOLOGY: &str = "tdx";
/// TD attribute `SEPT_VE_DISABLE` (bit 28), QEMU's default attributes.
pub const ATTR_SEPT_VE_DISABLE: u64 = 1 << 28;
/// TD attribute `DEBUG` (bit 0).
pub const ATTR_DEBUG: u64 = 1 << 0;
/// XFAM x87 and SSE (bits 0 and 1), which every TD has.
pub const XFAM_X87_SSE: u64 = 0b11;
/// CPUID leaf 1 ECX bit 21: x2APIC.
const CPUID_1_ECX_X2APIC: u32 = 1 << 21;
/// Retries of a call answered `EINTR`, `EAGAIN` or (finalize) `EBUSY`.
pub const RETRIES: u32 = 1000;
/// The most CPUID entries `KVM_TDX_CAPABILITIES` is given room for.
const MAX_CAPS_ROOM: u32 = 1024;
const PAGE: u64 = 4096;

/// How a TD is launched.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TdxConfig {
    /// TD attributes (KVM ORs in the fixed-1 bits).
    pub attributes: u64,
    /// XFAM.
    pub xfam: u64,
    /// Guest physical address width, 48 or 52: the shared bit is bit `gpaw - 1`.
    pub gpaw: u8,
    /// MRCONFIGID.
    #[serde(skip)]
    pub mrconfigid: [u8; 48],
    /// MROWNER.
    #[serde(skip)]
    pub mrowner: [u8; 48],
    /// MROWNERCONFIG.
    #[serde(skip)]
    pub mrownerconfig: [u8; 48],
    /// The initial RCX of every vCPU (`KVM_TDX_INIT_VCPU`'s data; TDVF takes its HOB
    /// there). `None`: the boot vCPU's boot-parameters pointer (`rsi`, else `rbx`).
    pub init_rcx: Option<u64>,
}

impl Default for TdxConfig {
    fn default() -> Self {
        TdxConfig {
            attributes: ATTR_SEPT_VE_DISABLE,
            xfam: XFAM_X87_SSE,
            gpaw: 48,
            mrconfigid: [0; 48],
            mrowner: [0; 48],
            mrownerconfig: [0; 48],
            init_rcx: None,
        }
    }
}

/// Why a TDX launch step was refused or failed. Refusals come before any ioctl.
#[derive(Debug, thiserror::Error)]
pub enum TdxError {
    /// A guest physical address width other than 48 or 52.
    #[error("guest physical address width {0} is neither 48 nor 52")]
    Gpaw(u8),
    /// TD attributes the module does not accept.
    #[error(
        "TD attributes {requested:#x} include {unsupported:#x}, which the TDX module does not accept"
    )]
    Attributes {
        /// Asked for.
        requested: u64,
        /// Not supported.
        unsupported: u64,
    },
    /// XFAM bits the module does not accept.
    #[error("XFAM {requested:#x} includes {unsupported:#x}, which the TDX module does not accept")]
    Xfam {
        /// Asked for.
        requested: u64,
        /// Not supported.
        unsupported: u64,
    },
    /// The configurable CPUID lacks leaf 0x80000008, where KVM reads the GPAW.
    #[error("the TDX module's configurable CPUID lacks leaf 0x80000008")]
    NoGpawLeaf,
    /// A step came out of order.
    #[error("{step} before {needs}")]
    Order {
        /// The step.
        step: &'static str,
        /// What must come first.
        needs: &'static str,
    },
    /// A page type TDX has no way to add (secrets, CPUID, vCPU state).
    #[error("TDX does not populate {page_type} pages ({range})")]
    PageType {
        /// The type.
        page_type: PageType,
        /// The run.
        range: ByteRange,
    },
    /// The run is not page-aligned.
    #[error("{range} is not page-aligned")]
    Misaligned {
        /// The run.
        range: ByteRange,
    },
    /// The run's bytes are not exactly the run.
    #[error("{range} came with {bytes:#x} bytes")]
    LengthMismatch {
        /// The run.
        range: ByteRange,
        /// How many bytes.
        bytes: usize,
    },
    /// The run reaches the shared half of the GPA space (the shared bit and above).
    #[error("{range} reaches the shared bit {bit}")]
    SharedGpa {
        /// The run.
        range: ByteRange,
        /// The shared bit.
        bit: u8,
    },
    /// A zero run whose bytes are not all zero.
    #[error("{range} is to be zero pages but holds non-zero bytes")]
    ZeroNotZero {
        /// The run.
        range: ByteRange,
    },
    /// The run is not inside one region of guest memory.
    #[error("{range} is not inside guest memory")]
    OutsideMemory {
        /// The run.
        range: ByteRange,
    },
    /// The run is not backed by a guest_memfd.
    #[error("{range} is not backed by a guest_memfd")]
    NotGuestMemfd {
        /// The run.
        range: ByteRange,
    },
    /// The run is not private yet.
    #[error("{range} is not private")]
    NotPrivate {
        /// The run.
        range: ByteRange,
    },
    /// An ioctl failed.
    #[error("{step} failed")]
    Ioctl {
        /// The step.
        step: &'static str,
        /// The ioctl's error.
        #[source]
        source: IoctlError,
    },
    /// INIT_MEM_REGION failed at a page.
    #[error("KVM_TDX_INIT_MEM_REGION of the page at {gpa:#x} failed")]
    MemRegion {
        /// The first page not done.
        gpa: u64,
        /// The ioctl's error.
        #[source]
        source: IoctlError,
    },
    /// KVM returned success without finishing, or kept failing to make progress.
    #[error("KVM_TDX_INIT_MEM_REGION made no progress at {gpa:#x}")]
    NoProgress {
        /// The page.
        gpa: u64,
    },
}

impl TdxError {
    /// The TDX module's status, where a SEAMCALL failed.
    pub fn hw_error(&self) -> Option<u64> {
        match self {
            TdxError::Ioctl { source, .. } | TdxError::MemRegion { source, .. } => {
                Some(source.hw_error).filter(|&e| e != 0)
            }
            _ => None,
        }
    }
}

fn ioctl(step: &'static str) -> impl FnOnce(IoctlError) -> TdxError {
    move |source| TdxError::Ioctl { step, source }
}

/// `KVM_TDX_CAPABILITIES`, growing the CPUID room on `E2BIG`.
pub fn capabilities(vm: &dyn TdxVm) -> Result<TdxCapabilities, TdxError> {
    let mut room = 64;
    loop {
        let mut caps = TdxCapabilities::default();
        match vm.command(TdxCommand::Capabilities {
            caps: &mut caps,
            room,
        }) {
            Ok(()) => return Ok(caps),
            Err(e) if e.errno == libc::E2BIG && room < MAX_CAPS_ROOM => room *= 2,
            Err(e) => return Err(ioctl("KVM_TDX_CAPABILITIES")(e)),
        }
    }
}

/// The TD's CPUID configuration: each configurable leaf of `caps` with the bits the
/// host supports (`supported`) that the module lets userspace set, and the GPAW in
/// 0x80000008 EAX bits 23:16.
pub fn td_cpuid(
    caps: &TdxCapabilities,
    supported: &[kvm_cpuid_entry2],
    gpaw: u8,
) -> Result<Vec<kvm_cpuid_entry2>, TdxError> {
    let mut out = Vec::new();
    for c in &caps.cpuid {
        let indexed = c.flags & KVM_CPUID_FLAG_SIGNIFCANT_INDEX != 0;
        let Some(s) = supported
            .iter()
            .find(|s| s.function == c.function && (!indexed || s.index == c.index))
        else {
            if c.function == 0x8000_0008 {
                out.push(kvm_cpuid_entry2 {
                    function: c.function,
                    eax: u32::from(gpaw) << 16,
                    ..Default::default()
                });
            }
            continue;
        };
        let mut e = kvm_cpuid_entry2 {
            function: c.function,
            index: if indexed { c.index } else { 0 },
            flags: c.flags & KVM_CPUID_FLAG_SIGNIFCANT_INDEX,
            eax: s.eax & c.eax,
            ebx: s.ebx & c.ebx,
            ecx: s.ecx & c.ecx,
            edx: s.edx & c.edx,
            ..Default::default()
        };
        if e.function == 0x8000_0008 {
            e.eax = (e.eax & !0x00ff_0000) | (u32::from(gpaw) << 16);
        }
        out.push(e);
    }
    if !out.iter().any(|e| e.function == 0x8000_0008) {
        return Err(TdxError::NoGpawLeaf);
    }
    Ok(out)
}

/// The configuration's checks that need no host.
pub fn check_config(config: &TdxConfig) -> Result<(), TdxError> {
    if config.gpaw != 48 && config.gpaw != 52 {
        return Err(TdxError::Gpaw(config.gpaw));
    }
    Ok(())
}

/// What [`init`] learnt.
#[derive(Debug, Clone)]
pub struct TdInit {
    /// What the module offers.
    pub caps: TdxCapabilities,
    /// What `KVM_TDX_INIT_VM` was given.
    pub init_vm: TdxInitVm,
}

/// `KVM_CAP_SPLIT_IRQCHIP`, `KVM_TDX_CAPABILITIES`, then `KVM_TDX_INIT_VM` with the
/// configuration checked against the capabilities.
pub fn init(vm: &dyn TdxVm, config: &TdxConfig, supported: &CpuId) -> Result<TdInit, TdxError> {
    check_config(config)?;
    vm.command(TdxCommand::EnableSplitIrqchip)
        .map_err(ioctl("KVM_ENABLE_CAP(KVM_CAP_SPLIT_IRQCHIP)"))?;
    let caps = capabilities(vm)?;
    let unsupported = config.attributes & !caps.supported_attrs;
    if unsupported != 0 {
        return Err(TdxError::Attributes {
            requested: config.attributes,
            unsupported,
        });
    }
    let unsupported = config.xfam & !caps.supported_xfam;
    if unsupported != 0 {
        return Err(TdxError::Xfam {
            requested: config.xfam,
            unsupported,
        });
    }
    let init_vm = TdxInitVm {
        attributes: config.attributes,
        xfam: config.xfam,
        mrconfigid: config.mrconfigid,
        mrowner: config.mrowner,
        mrownerconfig: config.mrownerconfig,
        cpuid: td_cpuid(&caps, supported.as_slice(), config.gpaw)?,
    };
    vm.command(TdxCommand::InitVm(&init_vm))
        .map_err(ioctl("KVM_TDX_INIT_VM"))?;
    Ok(TdInit { caps, init_vm })
}

/// The vCPU's `KVM_SET_CPUID2` table: the host's, as veil-vcpu normalises it for APIC id
/// `id`, with x2APIC, which a TD's vCPUs run in.
pub fn vcpu_cpuid(supported: &CpuId, id: u32) -> CpuId {
    let mut cpuid = supported.clone();
    let _ = veil_vmm::veil_vcpu::x86_64::normalize_cpuid(&mut cpuid, id);
    for e in cpuid.as_mut_slice() {
        if e.function == 1 {
            e.ecx |= CPUID_1_ECX_X2APIC;
        }
    }
    cpuid
}

/// `KVM_SET_CPUID2` then `KVM_TDX_INIT_VCPU(rcx)` on vCPU `id`.
pub fn init_vcpu(vm: &dyn TdxVm, id: u32, cpuid: &CpuId, rcx: u64) -> Result<(), TdxError> {
    vm.command(TdxCommand::SetCpuid { vcpu: id, cpuid })
        .map_err(ioctl("KVM_SET_CPUID2"))?;
    vm.command(TdxCommand::InitVcpu { vcpu: id, rcx })
        .map_err(ioctl("KVM_TDX_INIT_VCPU"))
}

/// Whether TDX adds pages of `t`, and measured or not: normal pages are measured, zero
/// and unmeasured pages added without MR.EXTEND (a zero page from a zeroed source: TDX
/// has no zero page type).
pub fn measured(t: PageType) -> Option<bool> {
    match t {
        PageType::Normal => Some(true),
        PageType::Zero | PageType::Unmeasured => Some(false),
        PageType::Secrets | PageType::Cpuid | PageType::VcpuState => None,
    }
}

/// What [`init_mem_region`] checks before its first ioctl; returns whether the run is
/// measured.
pub fn check_run(run: &LaunchRun<'_>, gpaw: u8) -> Result<bool, TdxError> {
    let range = run.range;
    let measure = measured(run.page_type).ok_or(TdxError::PageType {
        page_type: run.page_type,
        range,
    })?;
    if !range.start().0.is_multiple_of(PAGE) || !range.len().is_multiple_of(PAGE) {
        return Err(TdxError::Misaligned { range });
    }
    if run.bytes.len() as u64 != range.len() {
        return Err(TdxError::LengthMismatch {
            range,
            bytes: run.bytes.len(),
        });
    }
    let bit = gpaw.saturating_sub(1);
    if range.end() > 1u64 << bit {
        return Err(TdxError::SharedGpa { range, bit });
    }
    if run.page_type == PageType::Zero && run.bytes.iter().any(|&b| b != 0) {
        return Err(TdxError::ZeroNotZero { range });
    }
    Ok(measure)
}

/// `KVM_TDX_INIT_MEM_REGION` of one private run on vCPU `vcpu`, looping on the
/// written-back structure: KVM adds one page at a time and returns `EINTR` (or
/// `EAGAIN`) with the structure showing how far it got when it stops early.
pub fn init_mem_region(
    vm: &dyn TdxVm,
    vcpu: u32,
    run: &LaunchRun<'_>,
    private: bool,
    gpaw: u8,
) -> Result<(), TdxError> {
    let measure = check_run(run, gpaw)?;
    if !private {
        return Err(TdxError::NotPrivate { range: run.range });
    }
    let source = page_copy(run.bytes);
    let source = page_bytes(&source);
    let mut region = KvmTdxInitMemRegion {
        source_addr: source.as_ptr() as u64,
        gpa: run.range.start().0,
        nr_pages: run.range.len() / PAGE,
    };
    let mut retries = 0;
    while region.nr_pages != 0 {
        let before = region.nr_pages;
        let gpa = region.gpa;
        match vm.command(TdxCommand::InitMemRegion {
            vcpu,
            region: &mut region,
            measure,
            source,
        }) {
            Ok(()) if region.nr_pages < before => {}
            Ok(()) => return Err(TdxError::NoProgress { gpa }),
            Err(e) if (e.errno == libc::EINTR || e.errno == libc::EAGAIN) && retries < RETRIES => {
                retries += 1;
            }
            Err(source) => {
                return Err(TdxError::MemRegion {
                    gpa: region.gpa,
                    source,
                });
            }
        }
    }
    Ok(())
}

/// `KVM_TDX_FINALIZE_VM`, retried while the module answers busy (`EBUSY`).
pub fn finalize(vm: &dyn TdxVm) -> Result<(), TdxError> {
    let mut retries = 0;
    loop {
        match vm.command(TdxCommand::FinalizeVm) {
            Ok(()) => return Ok(()),
            Err(e) if e.errno == libc::EBUSY && retries < RETRIES => retries += 1,
            Err(e) => return Err(ioctl("KVM_TDX_FINALIZE_VM")(e)),
        }
    }
}

#[repr(C, align(4096))]
struct Page([u8; 4096]);

fn page_copy(bytes: &[u8]) -> Vec<Page> {
    let mut pages: Vec<Page> = (0..bytes.len().div_ceil(4096))
        .map(|_| Page([0; 4096]))
        .collect();
    for (page, chunk) in pages.iter_mut().zip(bytes.chunks(4096)) {
        page.0[..chunk.len()].copy_from_slice(chunk);
    }
    pages
}

fn page_bytes(pages: &[Page]) -> &[u8] {
    // SAFETY: `Page` is `repr(C)` and exactly 4096 bytes of `u8` with no padding, so the
    // slice's storage is `len * 4096` initialised bytes, borrowed for as long as `pages`.
    unsafe { std::slice::from_raw_parts(pages.as_ptr().cast::<u8>(), pages.len() * 4096) }
}

/// Checks `range` against `memory`: inside one region, backed by a guest_memfd, private.
pub fn check_memory(memory: &HostSafeMemory, range: ByteRange) -> Result<(), TdxError> {
    let region = memory
        .regions()
        .iter()
        .find(|r| r.base() <= range.start().0 && range.end() <= r.base() + r.size())
        .ok_or(TdxError::OutsideMemory { range })?;
    if region.guest_memfd().is_none() {
        return Err(TdxError::NotGuestMemfd { range });
    }
    let private = FrameRange::from_gpa(range.start().0, range.len())
        .ok()
        .and_then(|f| memory.attributes().range_is(f, Attributes::PRIVATE).ok())
        .unwrap_or(false);
    if !private {
        return Err(TdxError::NotPrivate { range });
    }
    Ok(())
}

#[derive(Debug, Default)]
struct State {
    supported: Option<CpuId>,
    td: Option<TdInit>,
    rcx: Option<u64>,
    finalized: bool,
}

/// TDX as a veil [`Launch`]; see the module documentation. `H` is [`KvmTdx`] for real,
/// [`RecordingTdx`](crate::RecordingTdx) in tests.
#[derive(Debug)]
pub struct TdxLaunch<H: TdxHost = KvmTdx> {
    config: TdxConfig,
    host: H,
    state: Mutex<State>,
}

impl TdxLaunch<KvmTdx> {
    /// A launch with `config` on the real host.
    pub fn new(config: TdxConfig) -> Result<Self, TdxError> {
        TdxLaunch::with_host(config, KvmTdx)
    }
}

impl<H: TdxHost> TdxLaunch<H> {
    /// A launch with `config` on `host`.
    pub fn with_host(config: TdxConfig, host: H) -> Result<Self, TdxError> {
        check_config(&config)?;
        Ok(TdxLaunch {
            config,
            host,
            state: Mutex::new(State::default()),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &TdxConfig {
        &self.config
    }

    /// The host its commands go to.
    pub fn host(&self) -> &H {
        &self.host
    }

    /// What `KVM_TDX_CAPABILITIES` and `KVM_TDX_INIT_VM` were, once `init` ran.
    pub fn td(&self) -> Option<TdInit> {
        self.lock().td.clone()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn step(step: &'static str) -> impl FnOnce(TdxError) -> LaunchError {
        move |e| LaunchError::Step {
            technology: TECHNOLOGY,
            step,
            source: Box::new(e),
        }
    }
}

/// The RCX a vCPU gets: the configured one, or the boot vCPU's boot-parameters pointer.
fn rcx_of(config: &TdxConfig, entry: Option<&EntryRegisters>) -> Option<u64> {
    config.init_rcx.or_else(|| {
        entry.map(|e| {
            if e.regs.rsi != 0 {
                e.regs.rsi
            } else {
                e.regs.rbx
            }
        })
    })
}

impl<H: TdxHost> Launch for TdxLaunch<H> {
    fn name(&self) -> &'static str {
        TECHNOLOGY
    }

    fn vm_types(&self) -> &[u32] {
        &[KVM_X86_TDX_VM]
    }

    fn init(&self, kvm: &Kvm, vm: &VmFd) -> Result<(), LaunchError> {
        let step = "KVM_TDX_CAPABILITIES and KVM_TDX_INIT_VM";
        let supported = self
            .host
            .supported_cpuid(kvm)
            .map_err(|e| Self::step(step)(ioctl("KVM_GET_SUPPORTED_CPUID")(e)))?;
        let ops = self.host.vm(vm, Vec::new());
        let td = init(ops.as_ref(), &self.config, &supported).map_err(Self::step(step))?;
        let mut s = self.lock();
        s.supported = Some(supported);
        s.td = Some(td);
        Ok(())
    }

    /// `KVM_SET_CPUID2` and `KVM_TDX_INIT_VCPU`; no MSR, FPU or register.
    fn setup_vcpu(
        &self,
        vm: &LaunchVm<'_>,
        vcpu: &VcpuFd,
        id: u32,
        entry: Option<&EntryRegisters>,
    ) -> Result<(), LaunchError> {
        let step = "KVM_TDX_INIT_VCPU";
        let (cpuid, rcx) = {
            let mut s = self.lock();
            let Some(supported) = s.supported.clone().filter(|_| s.td.is_some()) else {
                return Err(Self::step(step)(TdxError::Order {
                    step,
                    needs: "KVM_TDX_INIT_VM",
                }));
            };
            if let Some(r) = rcx_of(&self.config, entry) {
                s.rcx = Some(r);
            }
            (vcpu_cpuid(&supported, id), s.rcx.unwrap_or(0))
        };
        let ops = self.host.vm(vm.vm, vec![(id, vcpu)]);
        init_vcpu(ops.as_ref(), id, &cpuid, rcx).map_err(Self::step(step))
    }

    fn populates(&self) -> bool {
        true
    }

    fn accepts(&self, page_type: PageType) -> bool {
        measured(page_type).is_some()
    }

    fn populate(&self, vm: &LaunchVm<'_>, run: &LaunchRun<'_>) -> Result<(), LaunchError> {
        let step = "KVM_TDX_INIT_MEM_REGION";
        check_run(run, self.config.gpaw).map_err(Self::step(step))?;
        check_memory(vm.memory, run.range).map_err(Self::step(step))?;
        let order = |needs| Self::step(step)(TdxError::Order { step, needs });
        {
            let s = self.lock();
            if s.td.is_none() {
                return Err(order("KVM_TDX_INIT_VM"));
            }
            if s.finalized {
                return Err(order("KVM_TDX_FINALIZE_VM (not after)"));
            }
        }
        let Some(&first) = vm.vcpus.first() else {
            return Err(order("KVM_TDX_INIT_VCPU of a vCPU to issue it on"));
        };
        let ops = self.host.vm(vm.vm, vec![(0, first)]);
        init_mem_region(ops.as_ref(), 0, run, true, self.config.gpaw).map_err(Self::step(step))
    }

    fn finalize(&self, vm: &LaunchVm<'_>) -> Result<(), LaunchError> {
        let step = "KVM_TDX_FINALIZE_VM";
        if self.lock().td.is_none() {
            return Err(Self::step(step)(TdxError::Order {
                step,
                needs: "KVM_TDX_INIT_VM",
            }));
        }
        let ops = self.host.vm(vm.vm, Vec::new());
        finalize(ops.as_ref()).map_err(Self::step(step))?;
        self.lock().finalized = true;
        Ok(())
    }

    /// Adds [`TdxExits`] for `KVM_EXIT_TDX`; MapGPA arrives as `KVM_HC_MAP_GPA_RANGE`,
    /// which the default routing already takes.
    fn exit_routing(&self, routing: ExitRouting) -> ExitRouting {
        ExitRouting {
            unknown_exits: Some(Arc::new(TdxExits {
                next: routing.unknown_exits.clone(),
            })),
            ..routing
        }
    }
}
