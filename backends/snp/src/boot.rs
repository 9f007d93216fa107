// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Direct kernel boot without firmware: the secrets page, the CPUID page and the
//! `cc_blob_sev_info` that points at both, added to a veil-loader plan and handed to a
//! Linux kernel through a `SETUP_CC_BLOB` setup_data entry, as OpenVMM does on KVM.
//!
//! Linux finds the blob in its decompressor (`arch/x86/boot/compressed/sev.c`
//! `find_cc_blob`: the EFI table, then setup_data of type `SETUP_CC_BLOB` = 7, whose
//! payload is the blob's 32-bit address) and again in the kernel proper. The three pages
//! are taken out of the e820 map so the kernel never allocates them. A PVH kernel has no
//! boot parameters to carry the blob: the pages are placed and measured but not linked.

use std::borrow::Cow;

use veil_vmm::kvm_bindings::{CpuId, KVM_CPUID_FLAG_SIGNIFCANT_INDEX, kvm_cpuid_entry2};
use veil_vmm::veil_loader::{
    BootPlan, ByteRange, ExtraObject, KernelFormat, ObjectKind, PageType, PlanEditError,
};

/// `SETUP_CC_BLOB` (`arch/x86/include/uapi/asm/setup_data.h`).
pub const SETUP_CC_BLOB: u32 = 7;
/// `CC_BLOB_SEV_HDR_MAGIC`: "AMDE".
pub const CC_BLOB_SEV_HDR_MAGIC: u32 = 0x4544_4d41;
/// The most entries an SNP CPUID table holds (`SNP_CPUID_COUNT_MAX`).
pub const CPUID_COUNT_MAX: usize = 64;
/// Size of `struct snp_cpuid_fn`.
const CPUID_FN_SIZE: usize = 48;
/// Offset of the entries in `struct snp_cpuid_table`.
const CPUID_TABLE_HEADER: usize = 16;

/// Why the boot pages could not be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BootPagesError {
    /// More non-empty CPUID leaves than the table holds.
    #[error("{count} CPUID entries do not fit the SNP CPUID table (at most 64)")]
    TooManyCpuidEntries {
        /// How many there were.
        count: usize,
    },
    /// No CPUID entry at all: the guest would terminate (`GHCB_TERM_CPUID`).
    #[error("the CPUID table has no entry")]
    NoCpuidEntries,
    /// The plan could not take the pages.
    #[error("cannot add the SNP boot pages to the plan")]
    Plan(#[source] PlanEditError),
    /// The blob ended above 4 GiB, where the setup_data's 32-bit address cannot reach.
    #[error("the cc_blob at {0:#x} is above 4 GiB")]
    Above4G(u64),
}

/// Where the boot pages went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct BootPages {
    /// The secrets page (type SECRETS: the firmware fills it).
    pub secrets: ByteRange,
    /// The CPUID page (type CPUID: the firmware checks it).
    pub cpuid: ByteRange,
    /// The `cc_blob_sev_info` (a normal, measured page).
    pub cc_blob: ByteRange,
    /// The `SETUP_CC_BLOB` entry linking it, for the Linux boot protocol.
    pub setup_data: Option<ByteRange>,
}

/// The bits KVM reports that the firmware checks against the hardware and refuses, as
/// OpenVMM clears them: (leaf, subleaf, register index 0..4 = eax..edx, mask to clear).
const SYNTHETIC_BITS: &[(u32, u32, usize, u32)] = &[
    (1, 0, 2, 1 << 24),           // TSC-deadline timer, emulated by KVM
    (7, 0, 1, 1 << 1),            // IA32_TSC_ADJUST
    (7, 0, 3, u32::MAX),          // leaf 7 EDX
    (0x8000_0008, 0, 1, 1 << 25), // virtualized SSBD
    (0x8000_0021, 0, 0, 1 << 9),  // SBPB... as OpenVMM
    (0x8000_0021, 0, 2, u32::MAX),
];

/// The SNP CPUID table (`struct snp_cpuid_table`, `arch/x86/include/asm/sev.h`) of
/// `cpuid`, in one 4 KiB page: one `snp_cpuid_fn` per entry with a non-zero output,
/// `xcr0_in` = 1 (x87, the initial XCR0) for leaf 0xD subleaves 0 and 1, and the bits
/// the firmware would refuse cleared.
pub fn cpuid_page(cpuid: &CpuId) -> Result<Vec<u8>, BootPagesError> {
    let mut entries: Vec<kvm_cpuid_entry2> = cpuid.as_slice().to_vec();
    for e in &mut entries {
        for &(leaf, sub, reg, mask) in SYNTHETIC_BITS {
            if e.function == leaf && e.index == sub {
                let r = match reg {
                    0 => &mut e.eax,
                    1 => &mut e.ebx,
                    2 => &mut e.ecx,
                    _ => &mut e.edx,
                };
                *r &= !mask;
            }
        }
    }
    entries.retain(|e| e.eax | e.ebx | e.ecx | e.edx != 0);
    if entries.is_empty() {
        return Err(BootPagesError::NoCpuidEntries);
    }
    if entries.len() > CPUID_COUNT_MAX {
        return Err(BootPagesError::TooManyCpuidEntries {
            count: entries.len(),
        });
    }
    let mut page = vec![0u8; 4096];
    page[0..4].copy_from_slice(&(entries.len() as u32).to_le_bytes());
    for (i, e) in entries.iter().enumerate() {
        let at = CPUID_TABLE_HEADER + i * CPUID_FN_SIZE;
        let ecx_in = if e.flags & KVM_CPUID_FLAG_SIGNIFCANT_INDEX != 0 {
            e.index
        } else {
            0
        };
        let xcr0_in: u64 = if e.function == 0xd && e.index <= 1 {
            1
        } else {
            0
        };
        let mut f = Vec::with_capacity(CPUID_FN_SIZE);
        f.extend_from_slice(&e.function.to_le_bytes());
        f.extend_from_slice(&ecx_in.to_le_bytes());
        f.extend_from_slice(&xcr0_in.to_le_bytes());
        f.extend_from_slice(&0u64.to_le_bytes()); // xss_in
        for r in [e.eax, e.ebx, e.ecx, e.edx] {
            f.extend_from_slice(&r.to_le_bytes());
        }
        f.extend_from_slice(&0u64.to_le_bytes());
        page[at..at + CPUID_FN_SIZE].copy_from_slice(&f);
    }
    Ok(page)
}

/// `struct cc_blob_sev_info` (packed, 40 bytes) for these pages.
pub fn cc_blob(secrets: u64, cpuid: u64) -> Vec<u8> {
    let mut b = Vec::with_capacity(40);
    b.extend_from_slice(&CC_BLOB_SEV_HDR_MAGIC.to_le_bytes());
    b.extend_from_slice(&0u16.to_le_bytes()); // version
    b.extend_from_slice(&0u16.to_le_bytes());
    b.extend_from_slice(&secrets.to_le_bytes());
    b.extend_from_slice(&4096u32.to_le_bytes()); // secrets_len: must be 4096
    b.extend_from_slice(&0u32.to_le_bytes());
    b.extend_from_slice(&cpuid.to_le_bytes());
    b.extend_from_slice(&4096u32.to_le_bytes()); // cpuid_len: at least 4096
    b.extend_from_slice(&0u32.to_le_bytes());
    b
}

/// Adds the secrets page, the CPUID page of `cpuid_page` and the cc_blob to `plan`, one
/// after the other, reserves them in the e820 map and links the blob with a
/// `SETUP_CC_BLOB` entry where the plan is a bzImage's. On error the plan is unchanged.
pub fn add_boot_pages(
    plan: &mut BootPlan<'_>,
    cpuid_page: Vec<u8>,
) -> Result<BootPages, BootPagesError> {
    let object = |bytes: Vec<u8>, page_type| ExtraObject {
        kind: ObjectKind::LaunchData,
        bytes: Cow::Owned(bytes),
        len: 4096,
        page_type,
    };
    let objects = |blob: Vec<u8>| {
        vec![
            object(Vec::new(), PageType::Secrets),
            object(cpuid_page.clone(), PageType::Cpuid),
            object(blob, PageType::Normal),
        ]
    };
    // The blob holds the other pages' addresses: find where the three go, then place
    // them for good with the blob filled in (the same search gives the same pages).
    let ranges = plan
        .clone()
        .add_objects(objects(Vec::new()))
        .map_err(BootPagesError::Plan)?;
    let (secrets, cpuid, blob) = (ranges[0], ranges[1], ranges[2]);
    let mut edited = plan.clone();
    let placed = edited
        .add_objects(objects(cc_blob(secrets.start().0, cpuid.start().0)))
        .map_err(BootPagesError::Plan)?;
    debug_assert_eq!(placed, ranges);
    let address =
        u32::try_from(blob.start().0).map_err(|_| BootPagesError::Above4G(blob.start().0))?;
    let setup_data = if edited.format == KernelFormat::BzImage {
        let all = ByteRange::new(secrets.start().0, blob.end() - secrets.start().0).unwrap_or(blob);
        edited.reserve_ram(all).map_err(BootPagesError::Plan)?;
        Some(
            edited
                .add_setup_data(SETUP_CC_BLOB, &address.to_le_bytes())
                .map_err(BootPagesError::Plan)?,
        )
    } else {
        None
    };
    *plan = edited;
    Ok(BootPages {
        secrets,
        cpuid,
        cc_blob: blob,
        setup_data,
    })
}
