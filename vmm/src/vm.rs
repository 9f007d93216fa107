// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! [`Vm`]: a KVM VM with veil's guest memory registered, launched by a [`Launch`]
//! technology, and its memory exits wired up.
//!
//! What every caller of veil-memory, veil-loader and veil-vcpu otherwise writes the same
//! way: probe the host, create a VM of a type the launch technology creates and the
//! flavor runs on, initialise it, build guest memory with that VM as its guest_memfd
//! source (and as the VM whose attributes conversions set), register the memory slots
//! and keep them from outliving the memory, enable conversion exits where the host has
//! them, place boot data and set up vCPUs the technology's way, and run vCPUs with the
//! memory as their [`MemoryHandler`](veil_vcpu::MemoryHandler) and the technology's
//! hypercalls and exits routed. Devices stay with the caller.

use std::sync::Arc;

use kvm_ioctls::{Kvm, VcpuFd, VmFd};
#[cfg(target_arch = "x86_64")]
use veil_loader::LoadError;
use veil_memory::{
    BuildError, CapsError, ContentPolicy, ConversionStats, ConvertError, Flavor, FlavorSupport,
    HostCaps, HostSafeMemory, MemslotError, RegionSpec, vm_type_name,
};
#[cfg(target_arch = "x86_64")]
use veil_vcpu::x86_64::X86Error;
use veil_vcpu::{
    CapError, ExitRouting, FaultPolicy, IoHandler, RunnerError, Vcpu, VcpuSet,
    enable_conversion_exits,
};

use crate::exits::{MemoryExitStats, MemoryExits};
use crate::launch::{Launch, LaunchError, LaunchVm, PlainKvm};

/// Why a [`Vm`] could not be built or could not start its vCPUs. Nothing built so far is
/// left behind.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// `/dev/kvm` could not be opened.
    #[error("cannot open /dev/kvm")]
    OpenKvm(#[source] kvm_ioctls::Error),
    /// Probing the host's capabilities failed.
    #[error("probing the host's KVM failed")]
    Probe(#[source] CapsError),
    /// The flavor asked for does not run on this host (the error names what is missing).
    #[error("the {flavor} flavor does not run on this host")]
    Flavor {
        /// The flavor asked for, or the one the host was expected to run.
        flavor: Flavor,
        /// What the host lacks.
        #[source]
        source: CapsError,
    },
    /// `KVM_CREATE_VM` failed.
    #[error("cannot create a VM of type {vm_type}")]
    CreateVm {
        /// The VM type asked for.
        vm_type: u32,
        /// The error.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// veil-memory could not build the guest memory.
    #[error("cannot build guest memory")]
    Memory(#[source] BuildError),
    /// KVM refused a memory slot; none is left registered. The source names the slot.
    #[error("cannot register the guest memory with KVM")]
    Memslot(#[source] MemslotError),
    /// The host offers conversion exits, but enabling them failed.
    #[error("cannot enable conversion exits")]
    ConversionExits(#[source] CapError),
    /// Creating or starting vCPUs failed.
    #[error("cannot create or start vCPUs")]
    Vcpu(#[source] RunnerError),
    /// A vCPU could not be set up for the boot entry: the entry state was refused
    /// (before the vCPU was created), or setting its registers failed.
    #[cfg(target_arch = "x86_64")]
    #[error("cannot set up vCPU {id} for the boot entry")]
    Entry {
        /// The vCPU's id.
        id: u32,
        /// Why.
        #[source]
        source: X86Error,
    },
    /// The launch technology refused, or one of its steps failed; its own error is the
    /// source's source ([`LaunchError::backend`]).
    #[error("launching with {technology} failed")]
    Launch {
        /// The technology.
        technology: &'static str,
        /// What went wrong.
        #[source]
        source: LaunchError,
    },
    /// Planning or placing the boot image failed.
    #[cfg(target_arch = "x86_64")]
    #[error("cannot load the boot image")]
    Load(#[source] LoadError),
    /// Making RAM private at launch failed; veil-memory undid the conversion.
    #[error("cannot make guest RAM private at launch")]
    PrivateAtLaunch(#[source] ConvertError),
}

impl VmError {
    /// The launch technology's own error, if it failed with an `E` (through any of the
    /// launch steps, populate included).
    pub fn launch_backend<E: std::error::Error + 'static>(&self) -> Option<&E> {
        let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(self);
        while let Some(e) = cur {
            if let Some(found) = e.downcast_ref::<E>() {
                return Some(found);
            }
            if let Some(launch) = e.downcast_ref::<LaunchError>()
                && let Some(found) = launch.backend::<E>()
            {
                return Some(found);
            }
            cur = e.source();
        }
        None
    }
}

/// A [`Vm`]'s memory statistics; see [`Vm::stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct VmStats {
    /// The guest's conversion requests and memory faults, as answered.
    pub requests: MemoryExitStats,
    /// Every conversion of this VM's memory: pages each way and system calls.
    pub conversions: ConversionStats,
}

impl std::fmt::Display for VmStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "guest: {}; memory: {}", self.requests, self.conversions)
    }
}

/// Describes a [`Vm`]; see [`Vm::builder`].
#[must_use]
pub struct VmBuilder {
    flavor: Option<Flavor>,
    regions: Vec<(u64, u64, ContentPolicy)>,
    launch: Arc<dyn Launch>,
    private_at_launch: Option<bool>,
    caps: Option<HostCaps>,
}

impl Default for VmBuilder {
    fn default() -> Self {
        VmBuilder {
            flavor: None,
            regions: Vec::new(),
            launch: Arc::new(PlainKvm),
            private_at_launch: None,
            caps: None,
        }
    }
}

impl std::fmt::Debug for VmBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VmBuilder")
            .field("flavor", &self.flavor)
            .field("regions", &self.regions)
            .field("launch", &self.launch.name())
            .field("private_at_launch", &self.private_at_launch)
            .field("caps", &self.caps.is_some())
            .finish()
    }
}

impl VmBuilder {
    /// Launches the VM with `launch` (default: [`PlainKvm`]).
    pub fn launch(mut self, launch: Arc<dyn Launch>) -> Self {
        self.launch = launch;
        self
    }

    /// Decides with `caps` instead of probing the host again: a VMM that builds many VMs
    /// probes once ([`HostCaps::probe`]) and passes the result to each.
    pub fn caps(mut self, caps: HostCaps) -> Self {
        self.caps = Some(caps);
        self
    }

    /// Makes all RAM private when [`Vm::launch`] places the boot image, except what the
    /// memory cannot populate privately (which [`Launched::shared`](crate::Launched::shared) names). Default: what
    /// the launch technology's guests expect ([`Launch::private_at_launch`]).
    pub fn private_at_launch(mut self, private: bool) -> Self {
        self.private_at_launch = Some(private);
        self
    }

    /// Carries out conversions in `flavor`. Without this, the first flavor the host runs
    /// that honours every region's content policy, in the order of
    /// [`HostCaps::supported_flavors`] (attributes, in-place, emulated). The attributes
    /// flavor only discards, so where it is the best a host runs, a region that keeps
    /// its contents gets the next flavor instead of a VM that cannot be built.
    pub fn flavor(mut self, flavor: Flavor) -> Self {
        self.flavor = Some(flavor);
        self
    }

    /// Adds `size` bytes of guest memory at guest-physical `base`, keeping or discarding
    /// contents on conversion as `policy` says. The attributes flavor only discards.
    pub fn region(mut self, base: u64, size: u64, policy: ContentPolicy) -> Self {
        self.regions.push((base, size, policy));
        self
    }

    /// Probes the host, creates and initialises the VM, builds its memory, and registers
    /// the memory with it.
    pub fn build(self) -> Result<Vm, VmError> {
        let kvm = Kvm::new().map_err(VmError::OpenKvm)?;
        let caps = match self.caps {
            Some(caps) => caps,
            None => HostCaps::probe_with(&kvm).map_err(VmError::Probe)?,
        };
        let launch = self.launch;
        let technology = launch.name();
        let launch_error = |source| VmError::Launch { technology, source };
        // Only the VM types the technology creates count.
        let probe = caps.probe.only_vm_types(launch.vm_types());
        if probe.usable_vm_types().next().is_none() {
            let names: Vec<String> = launch.vm_types().iter().map(|&t| vm_type_name(t)).collect();
            return Err(launch_error(LaunchError::Unsupported {
                technology,
                missing: format!("VM type {} (KVM_CAP_VM_TYPES, 235)", names.join(" or ")),
            }));
        }
        let supported = |f: Flavor| FlavorSupport::of(f, &probe);
        let flavor = match self.flavor {
            Some(flavor) => flavor,
            None => {
                let runs: Vec<Flavor> = Flavor::BUILT_IN
                    .into_iter()
                    .filter(|&f| supported(f).supported())
                    .collect();
                default_flavor(&runs, self.regions.iter().map(|&(_, _, policy)| policy))
            }
        };
        let support = supported(flavor);
        let vm_type = match (support.vm_type, support.missing.first()) {
            (Some(vm_type), None) => vm_type,
            (_, missing) => {
                let capability = missing
                    .cloned()
                    .unwrap_or_else(|| format!("support for {flavor}"));
                return Err(VmError::Flavor {
                    flavor,
                    source: CapsError::Missing { flavor, capability },
                });
            }
        };
        let vm = Arc::new(
            kvm.create_vm_with_type(vm_type.into())
                .map_err(|source| VmError::CreateVm { vm_type, source })?,
        );
        launch.init(&kvm, &vm).map_err(launch_error)?;

        // The VM is both where guest_memfds come from and whose attributes conversions
        // set: each region's flavor takes what it needs.
        let mut memory = HostSafeMemory::builder()
            .guest_memfd_source(vm.as_ref())
            .attributes_vm(vm.clone())
            .kvm_side_mapping(caps.kvm_side_mapping.mapping);
        for &(base, size, policy) in &self.regions {
            memory = memory.region(RegionSpec::new(base, size, flavor).policy(policy));
        }
        let memory = Arc::new(memory.build().map_err(VmError::Memory)?);

        // SAFETY: the slots point into mappings and guest_memfds owned by `memory`, which
        // the `Vm` built below keeps alive until `Vm::drop` has removed the slots (or, if
        // KVM refuses that, forever). On error nothing stays registered.
        unsafe { memory.register_memslots(&vm, 0) }.map_err(VmError::Memslot)?;
        // From here on `Vm::drop` removes the slots.
        let private_at_launch = self
            .private_at_launch
            .unwrap_or_else(|| launch.private_at_launch());
        let built = Vm {
            kvm,
            vm,
            exits: Arc::new(MemoryExits::new(memory.clone())),
            memory,
            caps,
            flavor,
            launch,
            private_at_launch,
        };
        if built.caps.map_gpa_range_exits() {
            enable_conversion_exits(&built.vm).map_err(VmError::ConversionExits)?;
        }
        Ok(built)
    }
}

/// The flavor a [`VmBuilder`] without [`VmBuilder::flavor`] uses: the first of
/// `supported` (best first, as [`HostCaps::supported_flavors`] lists them) that honours
/// every one of `policies`, or the emulated flavor, which runs on any KVM and honours
/// both policies.
///
/// A region that must keep its contents across conversions (a kernel placed shared and
/// then made private where the flavor converts in place) therefore gets in-place or
/// emulated memory on a host whose best flavor is attributes, instead of a VM that
/// cannot be built.
fn default_flavor(
    supported: &[Flavor],
    policies: impl IntoIterator<Item = ContentPolicy>,
) -> Flavor {
    let policies: Vec<ContentPolicy> = policies.into_iter().collect();
    supported
        .iter()
        .copied()
        .find(|&f| policies.iter().all(|&p| f.honours(p)))
        .unwrap_or(Flavor::EMULATED)
}

/// A KVM VM with veil's guest memory registered as its memory slots, ready for vCPUs.
///
/// Dropping it deletes the memory slots, so KVM never reaches the memory after veil
/// unmaps it, even where vCPU file descriptors outlive the `Vm`. Stop the vCPUs first:
/// after the drop their guest finds no memory.
pub struct Vm {
    pub(crate) kvm: Kvm,
    pub(crate) vm: Arc<VmFd>,
    pub(crate) memory: Arc<HostSafeMemory>,
    exits: Arc<MemoryExits>,
    caps: HostCaps,
    flavor: Flavor,
    pub(crate) launch: Arc<dyn Launch>,
    pub(crate) private_at_launch: bool,
}

impl std::fmt::Debug for Vm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vm")
            .field("flavor", &self.flavor)
            .field("launch", &self.launch.name())
            .field("memory", &self.memory)
            .finish_non_exhaustive()
    }
}

impl Vm {
    /// Starts describing a VM.
    pub fn builder() -> VmBuilder {
        VmBuilder::default()
    }

    /// The open `/dev/kvm` (for `veil_vcpu::x86_64::setup_entry`, for example).
    pub fn kvm(&self) -> &Kvm {
        &self.kvm
    }

    /// The KVM VM.
    pub fn fd(&self) -> &VmFd {
        &self.vm
    }

    /// The guest memory: write boot data through it, check page states in it.
    pub fn memory(&self) -> &Arc<HostSafeMemory> {
        &self.memory
    }

    /// The memory as veil-vcpu's memory handler, as [`run`](Self::run) passes it.
    pub fn exits(&self) -> &Arc<MemoryExits> {
        &self.exits
    }

    /// What the guest's requests came to and what conversions did so far (conversions
    /// made by the host, at launch for example, included). The vCPUs' exit statistics
    /// come from their [`VcpuSet`].
    pub fn stats(&self) -> VmStats {
        VmStats {
            requests: self.exits.stats(),
            conversions: self.memory.stats(),
        }
    }

    /// The host's capabilities, as probed when the VM was built.
    pub fn caps(&self) -> &HostCaps {
        &self.caps
    }

    /// How this VM's conversions are carried out.
    pub fn flavor(&self) -> Flavor {
        self.flavor
    }

    /// The technology the VM is launched with.
    pub fn launch_technology(&self) -> &dyn Launch {
        self.launch.as_ref()
    }

    /// Whether KVM forwards `KVM_HC_MAP_GPA_RANGE` to userspace (enabled where the host
    /// offers it). veil's port-I/O hypercall works either way.
    pub fn conversion_exits(&self) -> bool {
        // `build` fails unless enabling them succeeded where the host offers them.
        self.caps.map_gpa_range_exits()
    }

    /// Creates vCPU `id`.
    pub fn create_vcpu(&self, id: u64) -> Result<Vcpu, VmError> {
        Vcpu::new(&self.vm, id).map_err(VmError::Vcpu)
    }

    pub(crate) fn context<'a>(&'a self, vcpus: &'a [&'a VcpuFd]) -> LaunchVm<'a> {
        LaunchVm {
            kvm: &self.kvm,
            vm: &self.vm,
            memory: &self.memory,
            vcpus,
        }
    }

    pub(crate) fn launch_error(&self) -> impl Fn(LaunchError) -> VmError + '_ {
        |source| VmError::Launch {
            technology: self.launch.name(),
            source,
        }
    }

    /// Runs `vcpus` (registers already set), one thread each, with this VM's memory
    /// answering memory exits, `io` answering port and MMIO accesses, memory faults
    /// handled as `policy` says, and the launch technology's hypercall ABIs and exit hook
    /// routed.
    pub fn run<I>(
        &self,
        vcpus: Vec<Vcpu>,
        io: Arc<I>,
        policy: FaultPolicy,
    ) -> Result<VcpuSet, VmError>
    where
        I: IoHandler + ?Sized + 'static,
    {
        let routing = self.launch.exit_routing(ExitRouting::default());
        VcpuSet::spawn_routed(vcpus, self.exits.clone(), io, policy, routing).map_err(VmError::Vcpu)
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        // If KVM keeps a slot, the VM may still reach the memory behind it: leak the
        // memory rather than unmap it under the VM.
        if let Err(e) = self.memory.remove_memslots(&self.vm, 0) {
            log::error!("{e}; leaking the guest memory");
            std::mem::forget(Arc::clone(&self.memory));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ContentPolicy::{Discard, Preserve, Retain};
    const ATTRIBUTES: Flavor = Flavor::ATTRIBUTES;
    const IN_PLACE: Flavor = Flavor::IN_PLACE;
    const EMULATED: Flavor = Flavor::EMULATED;

    #[test]
    fn default_flavor_is_the_best_the_host_runs() {
        let all = [ATTRIBUTES, IN_PLACE, EMULATED];
        assert_eq!(default_flavor(&all, [Discard, Discard]), ATTRIBUTES);
        assert_eq!(default_flavor(&all[1..], [Discard]), IN_PLACE);
        assert_eq!(default_flavor(&[EMULATED], [Discard]), EMULATED);
        // No region yet: veil-memory refuses that, whichever the flavor.
        assert_eq!(default_flavor(&all, []), ATTRIBUTES);
        // A host that reports nothing still runs the emulated flavor.
        assert_eq!(default_flavor(&[], [Preserve]), EMULATED);
    }

    #[test]
    fn default_flavor_honours_every_content_policy() {
        // A software-protected or SNP/TDX host of Linux 6.12: attributes and emulated.
        let attributes_host = [ATTRIBUTES, EMULATED];
        assert_eq!(default_flavor(&attributes_host, [Preserve]), EMULATED);
        assert_eq!(
            default_flavor(&attributes_host, [Discard, Preserve]),
            EMULATED
        );
        assert_eq!(
            default_flavor(&[ATTRIBUTES, IN_PLACE, EMULATED], [Preserve, Discard]),
            IN_PLACE
        );
        // Retaining is honoured everywhere: an attributes host keeps the attributes flavor.
        assert_eq!(default_flavor(&attributes_host, [Retain]), ATTRIBUTES);
    }
}
