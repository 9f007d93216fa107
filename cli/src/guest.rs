// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! What the subcommands with an embedded guest (`veil demo`, `veil soak`) share: the
//! flavor and content policy they run, the hypercall transport the host offers a guest,
//! the VM with all RAM private from launch and vCPU threads confined by seccomp, and
//! the launch of a flat 64-bit guest on any number of vCPUs.

use std::sync::Arc;

use veil_vmm::kvm_bindings::kvm_regs;
use veil_vmm::seccomp::Confined;
use veil_vmm::veil_loader::{BootSource, ByteRange};
use veil_vmm::veil_memory::{ContentPolicy, Flavor, HostCaps};
use veil_vmm::veil_vcpu::{Transport, Vcpu};
use veil_vmm::{GuestHypercallProbe, HypercallInstruction, PlainKvm, Vm, VmError};

use crate::caps::HYPERCALL_PROBE_DEADLINE;
use crate::failure::Failure;

/// What an embedded guest's VM is asked for.
pub struct Setup {
    /// The flavor, or `None` for the best this host runs.
    pub flavor: Option<Flavor>,
    /// The content policy, or `None` for `Preserve` where the flavor keeps contents and
    /// `Discard` elsewhere.
    pub policy: Option<ContentPolicy>,
    /// Bytes of RAM at guest-physical 0.
    pub ram: u64,
    /// Run the vCPU threads without their seccomp filter.
    pub no_seccomp: bool,
}

/// A VM for an embedded guest, built but not launched.
pub struct GuestVm {
    /// The VM, with one region of RAM at 0, all private once launched.
    pub vm: Vm,
    /// The flavor it runs.
    pub flavor: Flavor,
    /// Its region's content policy.
    pub policy: ContentPolicy,
    /// Whether a guest's hypercall instruction reaches veil here.
    pub probe: GuestHypercallProbe,
    /// `Ok` when the vCPU threads run under their seccomp filter, else why not.
    pub seccomp: Result<(), &'static str>,
    confined: Option<Arc<Confined>>,
}

impl GuestVm {
    /// Probes the host and the hypercall transport and builds the VM `setup` asks for.
    pub fn build(setup: &Setup) -> Result<Self, Failure> {
        let vm_failure = |doing: &'static str| move |e: VmError| Failure::vm(doing, &e);
        if let (Some(flavor), Some(policy)) = (setup.flavor, setup.policy)
            && !flavor.honours(policy)
        {
            return Err(Failure::usage(format!(
                "the {flavor} flavor cannot honour the {} content policy",
                policy_name(policy)
            )));
        }
        let caps = HostCaps::probe().map_err(|e| Failure::vm("probing KVM", &VmError::Probe(e)))?;
        let flavor = match setup.flavor {
            Some(f) => f,
            // The best this host runs, among those that honour the policy asked for.
            None => caps
                .supported_flavors()
                .iter()
                .copied()
                .find(|f| setup.policy.is_none_or(|p| f.honours(p)))
                .unwrap_or(Flavor::EMULATED),
        };
        let policy = match setup.policy {
            Some(p) => p,
            // A flavor that cannot keep contents discards them on conversion instead.
            None if flavor.honours(ContentPolicy::Preserve) => ContentPolicy::Preserve,
            None => ContentPolicy::Discard,
        };
        let probe = veil_vmm::probe_guest_hypercall(HYPERCALL_PROBE_DEADLINE)
            .map_err(vm_failure("running the hypercall probe guest"))?;
        // The vCPU threads, where the guest's requests are handled, run under their
        // seccomp filter; the main thread stays unconfined (the demo forks from it).
        let seccomp = crate::run::seccomp_wanted(setup.no_seccomp);
        let confined = seccomp
            .is_ok()
            .then(|| Arc::new(Confined::new(Arc::new(PlainKvm))));
        let mut builder = Vm::builder();
        if let Some(c) = &confined {
            builder = builder.launch(c.clone());
        }
        let vm = builder
            .caps(caps)
            .flavor(flavor)
            .region(0, setup.ram, policy)
            .private_at_launch(true)
            .build()
            .map_err(vm_failure("building the VM"))?;
        Ok(GuestVm {
            vm,
            flavor,
            policy,
            probe,
            seccomp,
            confined,
        })
    }

    /// Places the flat 64-bit guest `code` at `load` and creates `vcpus` vCPUs entering
    /// it, vCPU `i`'s registers as `regs(i, ...)` sets them on top of the loader's entry.
    pub fn launch(
        &self,
        code: &[u8],
        load: u64,
        vcpus: u32,
        regs: impl Fn(u32, &mut kvm_regs),
    ) -> Result<LaunchedGuest, Failure> {
        let vm_failure = |doing: &'static str| move |e: VmError| Failure::vm(doing, &e);
        let source = BootSource::flat(code, load);
        let mut plan = self
            .vm
            .plan(&source)
            .map_err(vm_failure("planning the guest"))?;
        let entry = plan.entry;
        let entry_for = |index: u32| {
            let mut e = entry;
            e.regs.rsi = self.transport_code();
            regs(index, &mut e.regs);
            e
        };
        plan.entry = entry_for(0);
        let launched = self
            .vm
            .launch_plan(&plan, 1)
            .map_err(vm_failure("launching the guest"))?;
        let mut all = launched.vcpus;
        for index in 1..vcpus {
            all.push(
                self.vm
                    .create_boot_vcpu(index, &entry_for(index))
                    .map_err(vm_failure("creating vCPUs"))?,
            );
        }
        Ok(LaunchedGuest {
            vcpus: all,
            shared: launched.shared,
        })
    }

    /// The transport the guest uses, as `hypercall.S` takes it in `rsi`.
    pub fn transport_code(&self) -> u64 {
        match (self.probe.transport(), self.probe.instruction) {
            (Transport::Port, _) => 0,
            (Transport::Exit, HypercallInstruction::Vmcall) => 1,
            (Transport::Exit, HypercallInstruction::Vmmcall) => 2,
        }
    }

    /// The transport, in words.
    pub fn transport_name(&self) -> String {
        match self.probe.transport() {
            Transport::Port => "port I/O 0x5e".into(),
            Transport::Exit => self.probe.instruction.name().to_string(),
        }
    }

    /// How many vCPU threads the seccomp filter confined, when it was on.
    pub fn confined_threads(&self) -> Option<usize> {
        self.confined.as_ref().map(|c| c.vcpu_threads())
    }
}

/// An embedded guest placed in its VM, ready to run.
pub struct LaunchedGuest {
    /// The vCPUs, by index.
    pub vcpus: Vec<Vcpu>,
    /// The RAM that stayed shared at launch, with why.
    pub shared: Vec<(ByteRange, &'static str)>,
}

/// A content policy's name, as `--policy` takes it.
pub fn policy_name(policy: ContentPolicy) -> &'static str {
    match policy {
        ContentPolicy::Preserve => "preserve",
        ContentPolicy::Discard => "discard",
        ContentPolicy::Retain => "retain",
    }
}
