// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! [`HostCaps`]: what the host's KVM offers for private memory, and which flavors it can
//! therefore run.

use std::path::Path;

use kvm_bindings::{
    KVM_CAP_EXIT_HYPERCALL, KVM_CAP_GUEST_MEMFD, KVM_CAP_MEMORY_ATTRIBUTES,
    KVM_CAP_MEMORY_FAULT_INFO, KVM_CAP_USER_MEMORY2, KVM_CAP_VM_TYPES,
};
use kvm_ioctls::Kvm;
use serde::Serialize;

use crate::backend::KVM_CAP_GUEST_MEMFD_FLAGS;
use crate::model::{Flavor, KvmSideMapping};

/// `KVM_CAP_PRE_FAULT_MEMORY`; newer than kvm-bindings 0.14 knows.
/// Linux 6.10 `include/uapi/linux/kvm.h`.
pub const KVM_CAP_PRE_FAULT_MEMORY: u32 = 236;

pub use veil_abi::kvm::KVM_HC_MAP_GPA_RANGE;

/// Where the probe looks for the PVM module (see [`HostCaps::kvm_side_mapping`]).
pub const PVM_MODULE_PATH: &str = "/sys/module/kvm_pvm";

/// Why hosts whose KVM maps guest_memfd into the guest itself still need a KVM-side
/// mapping: observed on Linux 7.3 (gmem-only memory slots, AMD SVM without NRIP-save or
/// decode assists), and true of x86 KVM's instruction emulator on every kernel so far.
const EMULATOR_NEEDS_MAPPING: &str = "KVM's instruction emulator reaches guest memory only \
     through userspace_addr, also for guest_memfd-only memory slots: without that mapping, \
     MMIO and string I/O fail wherever they are emulated (and CPUID and HLT on CPUs without \
     NRIP-save)";

/// Why probing failed or a flavor cannot run.
#[derive(Debug, thiserror::Error)]
pub enum CapsError {
    /// `/dev/kvm` could not be opened.
    #[error("cannot open /dev/kvm")]
    OpenKvm(#[source] std::io::Error),
    /// KVM speaks an API version veil does not know.
    #[error("KVM API version {found}, veil needs 12")]
    ApiVersion {
        /// The version found.
        found: i32,
    },
    /// A flavor needs a capability the host lacks.
    #[error("the {flavor} flavor needs {capability}, which this host lacks")]
    Missing {
        /// The flavor asked for.
        flavor: Flavor,
        /// The first missing capability, named as in the KVM API.
        capability: String,
    },
}

/// What KVM offers for one VM type.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VmTypeCaps {
    /// The VM type number (`KVM_CREATE_VM` argument).
    pub vm_type: u32,
    /// Its name in the KVM API.
    pub name: String,
    /// Why creating a VM of this type to probe it failed, if it did (the other fields are
    /// then zero).
    pub create_error: Option<String>,
    /// `KVM_CAP_GUEST_MEMFD` on a VM of this type.
    pub guest_memfd: bool,
    /// `KVM_CAP_GUEST_MEMFD_FLAGS` (244) on a VM of this type.
    pub guest_memfd_flags: u64,
    /// `KVM_CAP_MEMORY_ATTRIBUTES` (233): the attributes `KVM_SET_MEMORY_ATTRIBUTES` takes.
    pub memory_attributes: u64,
}

/// Whether a flavor can run here, and if not what is missing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FlavorSupport {
    /// The flavor.
    pub flavor: Flavor,
    /// The VM type to create for it, when it can run.
    pub vm_type: Option<u32>,
    /// The missing capabilities, named as in the KVM API; empty when it can run.
    pub missing: Vec<String>,
}

impl FlavorSupport {
    /// What `flavor`'s model says of a host that answered `probe`.
    pub fn of(flavor: Flavor, probe: &RawProbe) -> FlavorSupport {
        let (vm_type, missing) = match flavor.model().support(probe) {
            Ok(vm_type) => (Some(vm_type), Vec::new()),
            Err(missing) => (None, missing),
        };
        FlavorSupport {
            flavor,
            vm_type,
            missing,
        }
    }

    /// Whether the flavor can run on this host.
    pub fn supported(&self) -> bool {
        self.missing.is_empty()
    }
}

/// Whether KVM needs a separate mapping of guest memory, and why veil thinks so.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KvmMappingNeed {
    /// What regions should get.
    pub mapping: KvmSideMapping,
    /// The evidence.
    pub reason: String,
}

/// What the host's KVM offers for guest-private memory.
///
/// [`HostCaps::probe`] asks KVM; [`HostCaps::from_probe`] decides from the raw answers,
/// so the decision is tested without `/dev/kvm`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HostCaps {
    /// What KVM answered.
    #[serde(flatten)]
    pub probe: RawProbe,
    /// Whether regions need a separate KVM-side mapping: on every host today, since KVM
    /// emulates some guest instructions (MMIO, string I/O) by reading guest memory through
    /// `userspace_addr` (see [`KvmSideMapping`]).
    pub kvm_side_mapping: KvmMappingNeed,
    /// Each of veil's own flavors, whether it runs here.
    pub flavors: Vec<FlavorSupport>,
}

/// The raw answers a probe collects; input to [`HostCaps::from_probe`] and to each
/// model's [`MemoryModel::support`](crate::MemoryModel::support).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RawProbe {
    /// `KVM_GET_API_VERSION`.
    pub api_version: i32,
    /// `KVM_CAP_VM_TYPES` (235), a bit per supported VM type (0 where the cap is missing:
    /// only the default type).
    pub vm_types_mask: u64,
    /// Each supported VM type, probed on a VM of that type (always including type 0).
    pub vm_types: Vec<VmTypeCaps>,
    /// `KVM_CAP_USER_MEMORY2` (231): `KVM_SET_USER_MEMORY_REGION2`.
    pub user_memory2: bool,
    /// `KVM_CAP_MEMORY_FAULT_INFO` (232): memory fault exits.
    pub memory_fault_info: bool,
    /// `KVM_CAP_EXIT_HYPERCALL` (201): hypercalls KVM can forward to userspace, a bit each.
    pub exit_hypercall_mask: u64,
    /// `KVM_CAP_PRE_FAULT_MEMORY` (236).
    pub pre_fault_memory: bool,
    /// Whether the PVM module is loaded.
    pub pvm_module: bool,
}

impl RawProbe {
    /// The VM types whose VMs could be created to probe them.
    pub fn usable_vm_types(&self) -> impl Iterator<Item = &VmTypeCaps> {
        self.vm_types.iter().filter(|t| t.create_error.is_none())
    }

    /// The same answers with only the VM types in `types`: what a model decides for a
    /// launch technology that creates only those (plain KVM: 0 and 1; SEV-SNP: 4).
    pub fn only_vm_types(&self, types: &[u32]) -> RawProbe {
        RawProbe {
            vm_types: self
                .vm_types
                .iter()
                .filter(|t| types.contains(&t.vm_type))
                .cloned()
                .collect(),
            ..self.clone()
        }
    }
}

/// The name of x86 VM type `t` in the KVM API.
pub fn vm_type_name(t: u32) -> String {
    match t {
        0 => "KVM_X86_DEFAULT_VM".into(),
        1 => "KVM_X86_SW_PROTECTED_VM".into(),
        2 => "KVM_X86_SEV_VM".into(),
        3 => "KVM_X86_SEV_ES_VM".into(),
        4 => "KVM_X86_SNP_VM".into(),
        5 => "KVM_X86_TDX_VM".into(),
        t => format!("VM type {t}"),
    }
}

fn positive(v: i32) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

impl HostCaps {
    /// Probes `/dev/kvm`.
    pub fn probe() -> Result<HostCaps, CapsError> {
        let kvm = Kvm::new().map_err(|e| CapsError::OpenKvm(e.into()))?;
        Self::probe_with(&kvm)
    }

    /// Probes an open KVM: system capabilities, then a VM of each supported type
    /// (created and dropped) for the per-VM ones.
    pub fn probe_with(kvm: &Kvm) -> Result<HostCaps, CapsError> {
        let api_version = kvm.get_api_version();
        if api_version != 12 {
            return Err(CapsError::ApiVersion { found: api_version });
        }
        let check = |cap: u32| kvm.check_extension_raw(cap.into());
        let vm_types_mask = positive(check(KVM_CAP_VM_TYPES));
        let mut vm_types = Vec::new();
        for t in 0..64u32 {
            if t != 0 && vm_types_mask & (1 << t) == 0 {
                continue;
            }
            let mut caps = VmTypeCaps {
                vm_type: t,
                name: vm_type_name(t),
                create_error: None,
                guest_memfd: false,
                guest_memfd_flags: 0,
                memory_attributes: 0,
            };
            match kvm.create_vm_with_type(t.into()) {
                Ok(vm) => {
                    let check = |cap: u32| vm.check_extension_raw(cap.into());
                    caps.guest_memfd = check(KVM_CAP_GUEST_MEMFD) > 0;
                    caps.guest_memfd_flags = positive(check(KVM_CAP_GUEST_MEMFD_FLAGS));
                    caps.memory_attributes = positive(check(KVM_CAP_MEMORY_ATTRIBUTES));
                }
                Err(e) => caps.create_error = Some(std::io::Error::from(e).to_string()),
            }
            vm_types.push(caps);
        }
        Ok(Self::from_probe(RawProbe {
            api_version,
            vm_types_mask,
            vm_types,
            user_memory2: check(KVM_CAP_USER_MEMORY2) > 0,
            memory_fault_info: check(KVM_CAP_MEMORY_FAULT_INFO) > 0,
            exit_hypercall_mask: positive(check(KVM_CAP_EXIT_HYPERCALL)),
            pre_fault_memory: check(KVM_CAP_PRE_FAULT_MEMORY) > 0,
            pvm_module: Path::new(PVM_MODULE_PATH).exists(),
        }))
    }

    /// Decides, from raw probe answers, which of veil's flavors run and whether KVM needs
    /// its own mapping.
    ///
    /// The mapping is decided from what KVM really needs rather than from whether it can
    /// map guest_memfd itself: a mapping wherever a guest may cause instruction
    /// emulation, which on today's kernels is everywhere. Only a caller who knows its
    /// guests never cause emulation may choose [`KvmSideMapping::Omitted`] itself.
    pub fn from_probe(p: RawProbe) -> HostCaps {
        let flavors = Flavor::BUILT_IN
            .into_iter()
            .map(|f| FlavorSupport::of(f, &p))
            .collect();
        let kvm_side_mapping = KvmMappingNeed {
            mapping: KvmSideMapping::Separate,
            reason: if p.pvm_module {
                format!(
                    "{PVM_MODULE_PATH} exists: PVM emulates guest code, and its instruction \
                     emulator reads guest memory through userspace_addr, even for guest_memfd \
                     slots"
                )
            } else {
                EMULATOR_NEEDS_MAPPING.to_string()
            },
        };
        HostCaps {
            probe: p,
            kvm_side_mapping,
            flavors,
        }
    }

    /// Whether `flavor` runs here: veil's own flavors as decided when probing, any other
    /// as its model decides from the same answers.
    pub fn flavor(&self, flavor: Flavor) -> FlavorSupport {
        match self.flavors.iter().find(|f| f.flavor == flavor) {
            Some(f) => f.clone(),
            None => FlavorSupport::of(flavor, &self.probe),
        }
    }

    /// The support for `flavor`, or an error naming the first capability it lacks.
    pub fn require(&self, flavor: Flavor) -> Result<FlavorSupport, CapsError> {
        let f = self.flavor(flavor);
        match f.missing.first() {
            Some(cap) => Err(CapsError::Missing {
                flavor,
                capability: cap.clone(),
            }),
            None => Ok(f),
        }
    }

    /// veil's flavors that run here, best first: attributes, in-place, emulated.
    pub fn supported_flavors(&self) -> Vec<Flavor> {
        self.flavors
            .iter()
            .filter(|f| f.supported())
            .map(|f| f.flavor)
            .collect()
    }

    /// Whether KVM forwards `KVM_HC_MAP_GPA_RANGE` to userspace when enabled.
    pub fn map_gpa_range_exits(&self) -> bool {
        self.probe.exit_hypercall_mask & (1 << KVM_HC_MAP_GPA_RANGE) != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vm(t: u32, gmem: bool, flags: u64, attrs: u64) -> VmTypeCaps {
        VmTypeCaps {
            vm_type: t,
            name: vm_type_name(t),
            create_error: None,
            guest_memfd: gmem,
            guest_memfd_flags: flags,
            memory_attributes: attrs,
        }
    }

    /// The PVM development machines (KVM-HOST-NOTES.md).
    fn pvm_host() -> RawProbe {
        RawProbe {
            api_version: 12,
            vm_types_mask: 1,
            vm_types: vec![vm(0, true, 3, 0)],
            user_memory2: true,
            memory_fault_info: true,
            exit_hypercall_mask: 4096,
            pre_fault_memory: false,
            pvm_module: true,
        }
    }

    #[test]
    fn pvm_host_runs_in_place_and_emulated() {
        let caps = HostCaps::from_probe(pvm_host());
        assert_eq!(
            caps.supported_flavors(),
            [Flavor::IN_PLACE, Flavor::EMULATED]
        );
        let err = caps.require(Flavor::ATTRIBUTES).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("KVM_CAP_VM_TYPES"), "{msg}");
        assert!(caps.flavor(Flavor::ATTRIBUTES).missing[1].contains("233"));
        assert_eq!(caps.require(Flavor::IN_PLACE).unwrap().vm_type, Some(0));
        assert_eq!(caps.kvm_side_mapping.mapping, KvmSideMapping::Separate);
        assert!(caps.map_gpa_range_exits());
    }

    #[test]
    fn software_protected_host_runs_attributes() {
        // Linux 6.12 with CONFIG_KVM_SW_PROTECTED_VM: types 0 and 1, no guest_memfd mmap.
        let p = RawProbe {
            vm_types_mask: 0b11,
            vm_types: vec![vm(0, true, 0, 0), vm(1, true, 0, 8)],
            pvm_module: false,
            ..pvm_host()
        };
        let caps = HostCaps::from_probe(p);
        assert_eq!(
            caps.supported_flavors(),
            [Flavor::ATTRIBUTES, Flavor::EMULATED]
        );
        assert_eq!(caps.require(Flavor::ATTRIBUTES).unwrap().vm_type, Some(1));
        let err = caps.require(Flavor::IN_PLACE).unwrap_err();
        assert!(err.to_string().contains("KVM_CAP_GUEST_MEMFD_FLAGS (244)"));
        assert_eq!(caps.kvm_side_mapping.mapping, KvmSideMapping::Separate);
    }

    #[test]
    fn guest_memfd_mapping_host_still_gives_kvm_a_mapping() {
        // Linux 7.3 with CONFIG_KVM_SW_PROTECTED_VM: mmap-able guest_memfd for default VMs,
        // attributes for software-protected ones.
        let p = RawProbe {
            vm_types_mask: 0b11,
            vm_types: vec![vm(0, true, 3, 0), vm(1, true, 1, 8)],
            pre_fault_memory: true,
            pvm_module: false,
            ..pvm_host()
        };
        let caps = HostCaps::from_probe(p);
        assert_eq!(
            caps.supported_flavors(),
            [Flavor::ATTRIBUTES, Flavor::IN_PLACE, Flavor::EMULATED]
        );
        assert_eq!(caps.require(Flavor::ATTRIBUTES).unwrap().vm_type, Some(1));
        assert_eq!(caps.require(Flavor::IN_PLACE).unwrap().vm_type, Some(0));
        // KVM maps the guest_memfd into the guest, but its instruction emulator does not.
        assert_eq!(caps.kvm_side_mapping.mapping, KvmSideMapping::Separate);
        let reason = &caps.kvm_side_mapping.reason;
        assert!(
            reason.contains("emulator") && reason.contains("MMIO"),
            "{reason}"
        );
    }

    #[test]
    fn old_host_runs_emulated_only() {
        let p = RawProbe {
            vm_types_mask: 0,
            vm_types: vec![vm(0, false, 0, 0)],
            user_memory2: false,
            exit_hypercall_mask: 0,
            ..pvm_host()
        };
        let caps = HostCaps::from_probe(p);
        assert_eq!(caps.supported_flavors(), [Flavor::EMULATED]);
        let inplace = caps.flavor(Flavor::IN_PLACE);
        assert!(
            inplace
                .missing
                .iter()
                .any(|m| m == "KVM_CAP_GUEST_MEMFD (234)")
        );
        assert!(
            inplace
                .missing
                .iter()
                .any(|m| m == "KVM_CAP_USER_MEMORY2 (231)")
        );
        assert!(!caps.map_gpa_range_exits());
    }

    #[test]
    fn failed_vm_creation_is_reported_not_used() {
        let mut failed = vm(1, true, 0, 8);
        failed.create_error = Some("Invalid argument (os error 22)".into());
        let p = RawProbe {
            vm_types_mask: 0b11,
            vm_types: vec![vm(0, true, 3, 0), failed],
            ..pvm_host()
        };
        let caps = HostCaps::from_probe(p);
        assert!(!caps.flavor(Flavor::ATTRIBUTES).supported());
        // The private type exists but its VMs cannot be created: it counts as missing.
        assert!(
            caps.flavor(Flavor::ATTRIBUTES)
                .missing
                .contains(&"a VM type with private memory (KVM_CAP_VM_TYPES, 235)".to_string())
        );
        assert_eq!(caps.require(Flavor::IN_PLACE).unwrap().vm_type, Some(0));
    }
}
