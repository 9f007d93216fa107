// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! `veil caps`: what the host's KVM offers for guest-private memory, whether a guest's
//! hypercall reaches veil, and which flavors and backends run here.

use std::fmt::Write;
use std::time::Duration;

use veil_vmm::kvm_bindings;
use veil_vmm::veil_memory::{
    GUEST_MEMFD_FLAG_INIT_SHARED, GUEST_MEMFD_FLAG_MMAP, GUEST_MEMFD_KNOWN_FLAGS, HostCaps,
    KvmSideMapping, vm_type_name,
};
use veil_vmm::{GuestHypercallProbe, Launch, PlainKvm, VmError, probe_guest_hypercall};

use crate::failure::Failure;

/// How long the hypercall probe waits for its guest: a guest that makes one request
/// and halts takes well under a millisecond where the call works, even emulated.
pub const HYPERCALL_PROBE_DEADLINE: Duration = Duration::from_millis(300);

/// Everything `veil caps` reports.
#[derive(Debug, serde::Serialize)]
pub struct Report {
    /// veil's version.
    pub veil: &'static str,
    /// What KVM offers, and which flavors run.
    pub host: HostCaps,
    /// Whether a guest's `vmcall`/`vmmcall` reaches veil.
    pub guest_hypercall: GuestHypercallProbe,
    /// The launch backends veil has, and whether each runs here.
    pub backends: Vec<Backend>,
}

/// A launch backend and whether this host runs it.
#[derive(Debug, serde::Serialize)]
pub struct Backend {
    /// Its name.
    pub name: &'static str,
    /// The VM types it creates.
    pub vm_types: Vec<String>,
    /// Whether the host creates one of them.
    pub runs: bool,
    /// What is missing where it does not.
    pub missing: Option<String>,
}

/// The launch backends the `veil` binary offers (`veil run --backend`).
pub fn backends() -> Vec<Box<dyn Launch>> {
    let mut all: Vec<Box<dyn Launch>> = vec![Box::new(PlainKvm)];
    // Their default configurations are valid; a refusal here would be a bug in them.
    match veil_snp::SnpLaunch::new(veil_snp::SnpConfig::default()) {
        Ok(snp) => all.push(Box::new(snp)),
        Err(e) => log::error!("the SEV-SNP backend refuses its default configuration: {e}"),
    }
    match veil_tdx::TdxLaunch::new(veil_tdx::TdxConfig::default()) {
        Ok(tdx) => all.push(Box::new(tdx)),
        Err(e) => log::error!("the TDX backend refuses its default configuration: {e}"),
    }
    all
}

/// Probes the host: KVM's capabilities and a guest's hypercall.
pub fn probe() -> Result<Report, Failure> {
    let kvm = veil_vmm::kvm_ioctls::Kvm::new()
        .map_err(|e| Failure::vm("probing KVM", &VmError::OpenKvm(e)))?;
    let host =
        HostCaps::probe_with(&kvm).map_err(|e| Failure::vm("probing KVM", &VmError::Probe(e)))?;
    let guest_hypercall = probe_guest_hypercall(HYPERCALL_PROBE_DEADLINE)
        .map_err(|e| Failure::vm("running the hypercall probe guest", &e))?;
    let backends = backends()
        .iter()
        .map(|b| {
            let usable: Vec<u32> = host
                .probe
                .only_vm_types(b.vm_types())
                .usable_vm_types()
                .map(|t| t.vm_type)
                .collect();
            let vm_types: Vec<String> = b.vm_types().iter().map(|&t| vm_type_name(t)).collect();
            Backend {
                name: b.name(),
                runs: !usable.is_empty(),
                missing: usable
                    .is_empty()
                    .then(|| format!("VM type {}", vm_types.join(" or "))),
                vm_types,
            }
        })
        .collect();
    Ok(Report {
        veil: env!("CARGO_PKG_VERSION"),
        host,
        guest_hypercall,
        backends,
    })
}

/// The whole report as text for people.
pub fn text(report: &Report) -> String {
    let mut out = format!("veil {}: {}", report.veil, caps_table(&report.host));
    let probe = &report.guest_hypercall;
    let _ = writeln!(out, "\n  guest hypercall: {probe}");
    let _ = writeln!(
        out,
        "    so guests convert memory through {}",
        match probe.transport() {
            veil_vmm::veil_vcpu::Transport::Exit => format!(
                "{} (KVM_HC_MAP_GPA_RANGE as KVM_EXIT_HYPERCALL) or veil's port-I/O hypercall",
                probe.instruction.name()
            ),
            veil_vmm::veil_vcpu::Transport::Port =>
                "veil's port-I/O hypercall (out to port 0x5e; docs/guest-abi.md)".to_string(),
        }
    );
    let _ = writeln!(
        out,
        "\n  {:<12} {:<10} {:<36} missing",
        "backend", "runs here", "VM types"
    );
    for b in &report.backends {
        let _ = writeln!(
            out,
            "  {:<12} {:<10} {:<46} {}",
            b.name,
            yes(b.runs),
            b.vm_types.join(", "),
            b.missing.as_deref().unwrap_or("-")
        );
    }
    out
}

fn yes(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

fn gmem_flags(flags: u64) -> String {
    let mut names = Vec::new();
    if flags & GUEST_MEMFD_FLAG_MMAP != 0 {
        names.push("MMAP");
    }
    if flags & GUEST_MEMFD_FLAG_INIT_SHARED != 0 {
        names.push("INIT_SHARED");
    }
    let rest = flags & !GUEST_MEMFD_KNOWN_FLAGS;
    let mut s = format!("{flags:#x}");
    if !names.is_empty() || rest != 0 {
        let mut all = names.join("|");
        if rest != 0 {
            if !all.is_empty() {
                all.push('|');
            }
            let _ = write!(all, "{rest:#x}");
        }
        let _ = write!(s, " ({all})");
    }
    s
}

fn attributes(bits: u64) -> String {
    match bits {
        0 => "0x0 (none)".into(),
        b if b == u64::from(kvm_bindings::KVM_MEMORY_ATTRIBUTE_PRIVATE) => {
            format!("{b:#x} (PRIVATE)")
        }
        b => format!("{b:#x}"),
    }
}

/// KVM's capabilities and the flavors, as a table for people.
fn caps_table(caps: &HostCaps) -> String {
    let mut out = String::new();
    let types: Vec<String> = caps
        .probe
        .vm_types
        .iter()
        .map(|t| vm_type_name(t.vm_type))
        .collect();
    let _ = writeln!(out, "KVM host capabilities for guest-private memory\n");
    let rows = [
        ("KVM API version", caps.probe.api_version.to_string()),
        (
            "VM types (KVM_CAP_VM_TYPES)",
            format!("{:#x}: {}", caps.probe.vm_types_mask, types.join(", ")),
        ),
        (
            "KVM_SET_USER_MEMORY_REGION2 (KVM_CAP_USER_MEMORY2)",
            yes(caps.probe.user_memory2).into(),
        ),
        (
            "memory fault exits (KVM_CAP_MEMORY_FAULT_INFO)",
            yes(caps.probe.memory_fault_info).into(),
        ),
        (
            "hypercall exits (KVM_CAP_EXIT_HYPERCALL)",
            format!(
                "{:#x} (MAP_GPA_RANGE offered: {})",
                caps.probe.exit_hypercall_mask,
                yes(caps.map_gpa_range_exits())
            ),
        ),
        (
            "pre-fault memory (KVM_CAP_PRE_FAULT_MEMORY)",
            yes(caps.probe.pre_fault_memory).into(),
        ),
    ];
    for (k, v) in rows {
        let _ = writeln!(out, "  {k:<52} {v}");
    }
    let _ = writeln!(
        out,
        "\n  {:<28} {:<12} {:<26} memory attributes",
        "VM type", "guest_memfd", "guest_memfd flags"
    );
    for t in &caps.probe.vm_types {
        let name = format!("{} ({})", vm_type_name(t.vm_type), t.vm_type);
        match &t.create_error {
            Some(e) => {
                let _ = writeln!(out, "  {name:<28} cannot create a VM of this type: {e}");
            }
            None => {
                let _ = writeln!(
                    out,
                    "  {name:<28} {:<12} {:<26} {}",
                    yes(t.guest_memfd),
                    gmem_flags(t.guest_memfd_flags),
                    attributes(t.memory_attributes)
                );
            }
        }
    }
    let mapping = match caps.kvm_side_mapping.mapping {
        KvmSideMapping::Separate => "separate (KVM gets its own read-write mapping)",
        KvmSideMapping::Omitted => "omitted (userspace_addr 0 for guest_memfd-only slots)",
    };
    let _ = writeln!(out, "\n  KVM-side mapping: {mapping}");
    let _ = writeln!(out, "    because {}", caps.kvm_side_mapping.reason);
    let _ = writeln!(
        out,
        "\n  {:<12} {:<10} {:<8} missing",
        "flavor", "runs here", "VM type"
    );
    for f in &caps.flavors {
        let vm_type = f.vm_type.map_or("-".to_string(), |t| t.to_string());
        let missing = if f.missing.is_empty() {
            "-".to_string()
        } else {
            f.missing.join("; ")
        };
        let _ = writeln!(
            out,
            "  {:<12} {:<10} {:<8} {missing}",
            f.flavor.name(),
            yes(f.supported()),
            vm_type
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use veil_vmm::veil_memory::{Flavor, RawProbe, VmTypeCaps};

    fn pvm() -> HostCaps {
        HostCaps::from_probe(RawProbe {
            api_version: 12,
            vm_types_mask: 1,
            vm_types: vec![VmTypeCaps {
                vm_type: 0,
                name: vm_type_name(0),
                create_error: None,
                guest_memfd: true,
                guest_memfd_flags: 3,
                memory_attributes: 0,
            }],
            user_memory2: true,
            memory_fault_info: true,
            exit_hypercall_mask: 4096,
            pre_fault_memory: false,
            pvm_module: true,
        })
    }

    #[test]
    fn table_says_what_runs_and_why() {
        let t = caps_table(&pvm());
        assert!(t.contains("KVM API version"), "{t}");
        assert!(t.contains("0x3 (MMAP|INIT_SHARED)"), "{t}");
        assert!(t.contains("0x1000 (MAP_GPA_RANGE offered: yes)"), "{t}");
        assert!(t.contains("KVM-side mapping: separate"), "{t}");
        let line = |flavor: Flavor| {
            t.lines()
                .find(|l| l.trim_start().starts_with(&format!("{} ", flavor.name())))
                .unwrap_or_else(|| panic!("no line for {flavor}: {t}"))
                .to_string()
        };
        assert!(line(Flavor::IN_PLACE).contains(" yes "));
        assert!(line(Flavor::EMULATED).contains(" yes "));
        let attrs = line(Flavor::ATTRIBUTES);
        assert!(attrs.contains(" no ") && attrs.contains("KVM_CAP_MEMORY_ATTRIBUTES"));
    }

    #[test]
    fn flags_name_unknown_bits() {
        assert_eq!(gmem_flags(0), "0x0");
        assert_eq!(gmem_flags(5), "0x5 (MMAP|0x4)");
        assert_eq!(attributes(8), "0x8 (PRIVATE)");
    }
}
