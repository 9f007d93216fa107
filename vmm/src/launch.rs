// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The launch seam: [`Launch`], the technology a VM is launched with (plain KVM, SEV-SNP,
//! TDX, a pKVM-style guest), and [`PlainKvm`], the one that needs nothing.
//!
//! A launch technology decides the VM types it can create, initialises the VM right after
//! `KVM_CREATE_VM`, sets up each vCPU (where it may replace register setup: TDX sets no
//! registers), populates boot data with a page type per run where it copies boot data
//! into private memory itself, finalises the VM before its first `KVM_RUN`, and adds its
//! own hypercall ABIs and exit hook to the vCPUs' routing. [`Vm`](crate::Vm) drives these
//! hooks in a fixed order (see [`Vm::launch`](crate::Vm::launch)); a technology is added
//! by implementing the trait in its own crate.

use std::fmt;

use kvm_ioctls::{Kvm, VcpuFd, VmFd};
use veil_abi::arch::EntryRegisters;
use veil_loader::{ByteRange, PageType};
use veil_memory::HostSafeMemory;
use veil_vcpu::{BoxError, ExitRouting};

/// The VM and what has been made of it so far, as a [`Launch`] hook sees it.
pub struct LaunchVm<'a> {
    /// The open `/dev/kvm`.
    pub kvm: &'a Kvm,
    /// The VM.
    pub vm: &'a VmFd,
    /// Its guest memory.
    pub memory: &'a HostSafeMemory,
    /// The vCPUs created so far, by id order (all of them from
    /// [`Launch::populate`] on).
    pub vcpus: &'a [&'a VcpuFd],
}

impl fmt::Debug for LaunchVm<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LaunchVm")
            .field("vcpus", &self.vcpus.len())
            .finish_non_exhaustive()
    }
}

/// One run of boot data for [`Launch::populate`]: already private in veil's record and in
/// the memory model (KVM's attributes say private where the model sets them).
#[derive(Debug, Clone, Copy)]
pub struct LaunchRun<'a> {
    /// The guest-physical pages.
    pub range: ByteRange,
    /// What they are.
    pub page_type: PageType,
    /// Their contents, as the loader wrote them (`range.len()` bytes, page-aligned in
    /// host memory): what a technology copies into private memory and measures.
    pub bytes: &'a [u8],
}

/// Why a launch could not go on. A technology's own error, with its own code (a firmware
/// error number, say), travels as the source: [`LaunchError::backend`] gets it back.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// The host lacks what the technology needs; nothing was created.
    #[error("{technology} cannot launch here: the host lacks {missing}")]
    Unsupported {
        /// The technology.
        technology: &'static str,
        /// What is missing, named as in the KVM API.
        missing: String,
    },
    /// The technology does not populate pages of this type; nothing was written.
    #[error("{technology} does not populate {page_type} pages ({range})")]
    PageType {
        /// The technology.
        technology: &'static str,
        /// The type.
        page_type: PageType,
        /// The run that has it.
        range: ByteRange,
    },
    /// A step of the technology failed.
    #[error("{technology}: {step} failed")]
    Step {
        /// The technology.
        technology: &'static str,
        /// What it was doing.
        step: &'static str,
        /// Its own error.
        #[source]
        source: BoxError,
    },
}

impl LaunchError {
    /// The technology's own error, if it is an `E`.
    pub fn backend<E: std::error::Error + 'static>(&self) -> Option<&E> {
        match self {
            LaunchError::Step { source, .. } => source.downcast_ref::<E>(),
            _ => None,
        }
    }
}

/// A launch technology: the VM types it creates, its initialisation, vCPU setup, boot data
/// population with page types, finalisation, and its own hypercalls and exits.
/// [`Vm::launch`](crate::Vm::launch) calls the hooks in this order: [`vm_types`](Self::vm_types)
/// (to create the VM), [`init`](Self::init), [`setup_vcpu`](Self::setup_vcpu) for every
/// vCPU, [`populate`](Self::populate) for every run of boot data (where
/// [`populates`](Self::populates)), [`finalize`](Self::finalize);
/// [`exit_routing`](Self::exit_routing) when the vCPUs run.
pub trait Launch: Send + Sync {
    /// The technology's name, as errors and the `veil` report give it.
    fn name(&self) -> &'static str;

    /// The VM types (`KVM_CREATE_VM` arguments) this technology creates VMs of; the
    /// memory flavor picks one of these.
    fn vm_types(&self) -> &[u32];

    /// Initialises the VM right after `KVM_CREATE_VM`, before memory is registered
    /// (`KVM_SEV_INIT2`, `KVM_TDX_INIT_VM`).
    fn init(&self, kvm: &Kvm, vm: &VmFd) -> Result<(), LaunchError> {
        let _ = (kvm, vm);
        Ok(())
    }

    /// Sets up vCPU `id` (its APIC id): to start at `entry` for the boot vCPU, waiting for
    /// its start-up IPI for the others (`entry` is `None`). The default is veil-vcpu's:
    /// CPUID, boot MSRs, FPU, and for the boot vCPU the entry's registers. A technology
    /// whose vCPU state the VMM must not set (TDX) replaces it.
    fn setup_vcpu(
        &self,
        vm: &LaunchVm<'_>,
        vcpu: &VcpuFd,
        id: u32,
        entry: Option<&EntryRegisters>,
    ) -> Result<(), LaunchError> {
        plain_setup(self.name(), vm.kvm, vcpu, id, entry)
    }

    /// Whether the technology copies boot data into private memory itself
    /// ([`populate`](Self::populate)). When `false` (the default), boot data reaches
    /// memory the way the memory's flavor allows (write, then convert; or shared only).
    fn populates(&self) -> bool {
        false
    }

    /// Whether [`populate`](Self::populate) takes pages of `page_type`. Checked for every
    /// run before anything is written.
    fn accepts(&self, page_type: PageType) -> bool {
        let _ = page_type;
        false
    }

    /// Copies one run of boot data into private memory and measures it as its page type
    /// says (`KVM_SEV_SNP_LAUNCH_UPDATE`, `KVM_TDX_INIT_MEM_REGION`). Only called where
    /// [`populates`](Self::populates) and [`accepts`](Self::accepts) say so.
    fn populate(&self, vm: &LaunchVm<'_>, run: &LaunchRun<'_>) -> Result<(), LaunchError> {
        let _ = vm;
        Err(LaunchError::PageType {
            technology: self.name(),
            page_type: run.page_type,
            range: run.range,
        })
    }

    /// Finalises the launch after boot data is placed and every vCPU is set up, before
    /// the first `KVM_RUN` (`KVM_SEV_SNP_LAUNCH_FINISH`, `KVM_TDX_FINALIZE_VM`).
    fn finalize(&self, vm: &LaunchVm<'_>) -> Result<(), LaunchError> {
        let _ = vm;
        Ok(())
    }

    /// Adds the technology's own hypercall ABIs and exit hook to `routing` (veil's
    /// defaults: MAP_GPA_RANGE, no hook).
    fn exit_routing(&self, routing: ExitRouting) -> ExitRouting {
        routing
    }

    /// Whether guests of this technology expect all their RAM private at launch (the
    /// pKVM-style ABI: memory is private until the guest shares it). A
    /// [`VmBuilder`](crate::VmBuilder) can ask for it either way.
    fn private_at_launch(&self) -> bool {
        false
    }
}

/// veil-vcpu's vCPU setup: the whole entry for the boot vCPU, CPUID, MSRs and FPU for the
/// others. What [`Launch::setup_vcpu`] does unless a technology replaces it.
pub fn plain_setup(
    technology: &'static str,
    kvm: &Kvm,
    vcpu: &VcpuFd,
    id: u32,
    entry: Option<&EntryRegisters>,
) -> Result<(), LaunchError> {
    #[cfg(target_arch = "x86_64")]
    {
        use veil_vcpu::x86_64::{X86Error, setup_cpu, setup_entry};
        let step = |step| {
            move |source: X86Error| LaunchError::Step {
                technology,
                step,
                source: Box::new(source),
            }
        };
        match entry {
            Some(entry) => {
                setup_entry(kvm, vcpu, id, entry).map_err(step("setting up the boot vCPU"))
            }
            None => setup_cpu(kvm, vcpu, id).map_err(step("setting up a vCPU")),
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (kvm, vcpu, id, entry);
        Err(LaunchError::Unsupported {
            technology,
            missing: "veil's vCPU setup for this architecture".into(),
        })
    }
}

/// Plain KVM: default or software-protected VMs, no initialisation or finalisation, boot
/// data placed the memory's own way, vCPUs set up by veil-vcpu.
#[derive(Debug, Clone, Copy, Default)]
pub struct PlainKvm;

/// The VM types plain KVM creates: `KVM_X86_DEFAULT_VM` and `KVM_X86_SW_PROTECTED_VM`.
pub const PLAIN_VM_TYPES: [u32; 2] = [0, 1];

impl Launch for PlainKvm {
    fn name(&self) -> &'static str {
        "plain"
    }

    fn vm_types(&self) -> &[u32] {
        &PLAIN_VM_TYPES
    }
}
