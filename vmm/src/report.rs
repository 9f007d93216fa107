// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The host capability report of the `veil` binary, formatted for people.

use std::fmt::Write;

use veil_memory::{
    GUEST_MEMFD_FLAG_INIT_SHARED, GUEST_MEMFD_FLAG_MMAP, GUEST_MEMFD_KNOWN_FLAGS, HostCaps,
    KvmSideMapping, vm_type_name,
};

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

/// The capability report as a table for people.
pub fn caps_table(caps: &HostCaps) -> String {
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
                "{:#x} (MAP_GPA_RANGE: {})",
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
    use veil_memory::{Flavor, RawProbe, VmTypeCaps};

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
        assert!(t.contains("0x1000 (MAP_GPA_RANGE: yes)"), "{t}");
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
