// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Booting a [`Vm`] on x86-64: vCPUs set up at veil-loader's entry, the boot image placed
//! the launch technology's way, RAM made private at launch, the launch finalised.

use kvm_ioctls::VcpuFd;
use veil_abi::arch::EntryRegisters;
use veil_loader::vm_memory::GuestAddress;
use veil_loader::{
    BootPlan, BootSource, ByteRange, GuestRam, Loaded, PageRun, Populate, PopulateError,
    PopulateWay,
};
use veil_memory::veil_attrs::{Attributes, FrameRange};
use veil_memory::{HostSafeMemory, Region};
use veil_vcpu::Vcpu;
use veil_vcpu::x86_64::X86Error;

use crate::launch::LaunchError;
use crate::populate::LaunchPopulate;
use crate::vm::{Vm, VmError};

/// What [`Vm::launch`] made: the loaded boot image, the vCPUs set up to run it, and the
/// RAM that stayed shared although all of it was to be private.
#[derive(Debug)]
pub struct Launched {
    /// Where everything is, how it was populated, what was measured.
    pub loaded: Loaded,
    /// The vCPUs, by id: the boot vCPU first, the others waiting for their start-up IPI.
    pub vcpus: Vec<Vcpu>,
    /// Ranges that stayed shared under [`VmBuilder::private_at_launch`](crate::VmBuilder::private_at_launch), each with why.
    pub shared: Vec<(ByteRange, &'static str)>,
}

impl Vm {
    /// Creates vCPU `id` and sets it up to enter the kernel veil-loader placed: `entry` is
    /// the `entry` of a `veil_loader::Loaded` (or of a `BootPlan`), set up the launch
    /// technology's way (for plain KVM veil-vcpu's `setup_entry`, with `id` as the APIC
    /// id: CPUID, MSRs, FPU, segments, control and general registers).
    ///
    /// An entry state that contradicts itself is refused before the vCPU is created, so
    /// the id stays free. KVM cannot destroy a vCPU: if an ioctl fails after creation,
    /// the id stays taken in this VM.
    pub fn create_boot_vcpu(&self, id: u32, entry: &EntryRegisters) -> Result<Vcpu, VmError> {
        let refused = |source| VmError::Entry { id, source };
        entry.validate().map_err(|e| refused(e.into()))?;
        let vcpu = self.create_vcpu(u64::from(id))?;
        self.setup_vcpu(&[], &vcpu, id, Some(entry))?;
        Ok(vcpu)
    }

    fn setup_vcpu(
        &self,
        created: &[&VcpuFd],
        vcpu: &Vcpu,
        id: u32,
        entry: Option<&EntryRegisters>,
    ) -> Result<(), VmError> {
        let ctx = self.context(created);
        match self.launch.setup_vcpu(&ctx, vcpu.fd(), id, entry) {
            Ok(()) => Ok(()),
            // veil-vcpu's own setup failing is the entry's error, as callers expect.
            Err(LaunchError::Step {
                technology,
                step,
                source,
            }) => match source.downcast::<X86Error>() {
                Ok(x86) => Err(VmError::Entry { id, source: *x86 }),
                Err(source) => Err(self.launch_error()(LaunchError::Step {
                    technology,
                    step,
                    source,
                })),
            },
            Err(e) => Err(self.launch_error()(e)),
        }
    }

    /// Loads `source` into this VM's memory the launch technology's way: through
    /// [`Launch::populate`](crate::Launch::populate) where it populates private memory itself, the memory's own
    /// way otherwise (see `veil_loader::load`). vCPUs created so far are not known to the
    /// technology here; [`launch`](Self::launch) orders everything.
    pub fn load(&self, source: &BootSource<'_>) -> Result<Loaded, VmError> {
        self.place(&self.plan(source)?, &[])
    }

    /// Plans `source` for this VM's RAM, for a caller to change before
    /// [`launch_plan`](Self::launch_plan): entry registers for its own guest, a launch
    /// technology's page types.
    pub fn plan<'a>(&self, source: &BootSource<'a>) -> Result<BootPlan<'a>, VmError> {
        let ram = veil_loader::ConvertPrivate::ram(self.memory.as_ref())
            .map_err(|e| VmError::Load(e.into()))?;
        veil_loader::plan(source, &ram).map_err(VmError::Load)
    }

    fn place(&self, plan: &BootPlan<'_>, vcpus: &[&VcpuFd]) -> Result<Loaded, VmError> {
        if self.launch.populates() {
            let ctx = self.context(vcpus);
            plan.place(&LaunchPopulate::new(self.launch.as_ref(), &ctx))
        } else if self.private_at_launch {
            plan.place(&SealAllRam(self.memory.as_ref()))
        } else {
            plan.place(self.memory.as_ref())
        }
        .map_err(VmError::Load)
    }

    /// Launches `source` on `vcpus` vCPUs, in the order every technology needs: the boot
    /// vCPU (id 0) set up at the kernel's entry and the others to wait for their start-up
    /// IPI ([`Launch::setup_vcpu`](crate::Launch::setup_vcpu)), the boot image placed ([`Launch::populate`](crate::Launch::populate) or the
    /// memory's own way), all RAM made private where [`VmBuilder::private_at_launch`](crate::VmBuilder::private_at_launch)
    /// asks, and the launch finalised ([`Launch::finalize`](crate::Launch::finalize)). Then [`run`](Self::run) the
    /// vCPUs.
    pub fn launch(&self, source: &BootSource<'_>, vcpus: u32) -> Result<Launched, VmError> {
        self.launch_plan(&self.plan(source)?, vcpus)
    }

    /// [`launch`](Self::launch) of a plan made for this VM's RAM (`veil_loader::plan`),
    /// which the caller may have changed first: a launch technology's page types for
    /// some objects, say.
    pub fn launch_plan(&self, plan: &BootPlan<'_>, vcpus: u32) -> Result<Launched, VmError> {
        // Everything that can be refused is, before a vCPU exists (KVM cannot destroy one).
        plan.entry.validate().map_err(|e| VmError::Entry {
            id: 0,
            source: e.into(),
        })?;
        let runs = plan.page_runs().map_err(VmError::Load)?;
        if self.launch.populates() {
            if let Some(run) = runs.iter().find(|r| !self.launch.accepts(r.page_type)) {
                return Err(self.launch_error()(LaunchError::PageType {
                    technology: self.launch.name(),
                    page_type: run.page_type,
                    range: run.range,
                }));
            }
        } else {
            veil_loader::check_plain(&runs, veil_loader::Populate::way(self.memory.as_ref()))
                .map_err(|e| VmError::Load(e.into()))?;
        }
        let mut created: Vec<Vcpu> = Vec::new();
        for id in 0..vcpus.max(1) {
            let vcpu = self.create_vcpu(u64::from(id))?;
            let fds: Vec<&VcpuFd> = created.iter().map(Vcpu::fd).collect();
            let entry = (id == 0).then_some(&plan.entry);
            self.setup_vcpu(&fds, &vcpu, id, entry)?;
            created.push(vcpu);
        }
        let fds: Vec<&VcpuFd> = created.iter().map(Vcpu::fd).collect();
        let loaded = self.place(plan, &fds)?;
        let shared = if self.private_at_launch {
            self.make_ram_private(&loaded)?
        } else {
            Vec::new()
        };
        self.launch
            .finalize(&self.context(&fds))
            .map_err(self.launch_error())?;
        drop(fds);
        Ok(Launched {
            loaded,
            vcpus: created,
            shared,
        })
    }

    /// Converts every region to private, except boot data the memory could only place
    /// shared; returns what stayed shared and why.
    fn make_ram_private(&self, loaded: &Loaded) -> Result<Vec<(ByteRange, &'static str)>, VmError> {
        let keep: Vec<ByteRange> = match loaded.populated.way {
            PopulateWay::SharedOnly => loaded.populated.ranges(),
            _ => Vec::new(),
        };
        let mut private = Vec::new();
        for region in self.memory.regions() {
            let mut at = region.base();
            let end = region.base() + region.size();
            for k in &keep {
                if k.start().0 >= end || k.end() <= at {
                    continue;
                }
                if k.start().0 > at {
                    private.push((at, k.start().0 - at));
                }
                at = at.max(k.end());
            }
            if at < end {
                private.push((at, end - at));
            }
        }
        let frames: Vec<FrameRange> = private
            .iter()
            .filter_map(|&(gpa, size)| FrameRange::from_gpa(gpa, size).ok())
            .collect();
        self.memory
            .convert_ranges(&frames, Attributes::PRIVATE)
            .map_err(VmError::PrivateAtLaunch)?;
        Ok(keep
            .into_iter()
            .map(|r| {
                (
                    r,
                    "boot data: this memory's flavor cannot put contents into private memory \
                     and no launch technology copies them there",
                )
            })
            .collect())
    }
}

/// The memory's own way of placing boot data, except that where it writes and then
/// converts and all RAM becomes private at launch anyway, sealing converts all of it at
/// once: one conversion (one `mprotect` over the whole view, in the in-place flavor)
/// instead of one for the boot data and one for the rest.
struct SealAllRam<'m>(&'m HostSafeMemory);

impl Populate for SealAllRam<'_> {
    fn way(&self) -> PopulateWay {
        self.0.way()
    }

    fn ram(&self) -> Result<GuestRam, PopulateError> {
        Populate::ram(self.0)
    }

    fn prepare(&self, runs: &[PageRun]) -> Result<(), PopulateError> {
        self.0.prepare(runs)
    }

    fn write(&self, gpa: GuestAddress, bytes: &[u8]) -> Result<(), PopulateError> {
        Populate::write(self.0, gpa, bytes)
    }

    fn seal(&self, runs: &[PageRun]) -> Result<Vec<ByteRange>, PopulateError> {
        if self.way() != PopulateWay::WriteThenConvert {
            return self.0.seal(runs);
        }
        let all: Vec<FrameRange> = self.0.regions().iter().map(Region::range).collect();
        self.0
            .convert_ranges(&all, Attributes::PRIVATE)
            .map_err(|e| PopulateError::Convert {
                runs: veil_loader::ranges_of(runs),
                to: "private",
                source: e.into(),
            })?;
        Ok(veil_loader::ranges_of(runs))
    }

    fn scrub(&self, runs: &[PageRun]) -> Result<(), PopulateError> {
        self.0.scrub(runs)
    }
}
