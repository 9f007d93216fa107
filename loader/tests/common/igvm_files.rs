// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! IGVM files for tests, built with the igvm crate's own types and serializer: one file
//! for SEV-SNP (compatibility mask 1) and TDX (mask 2) with page data of every type,
//! parameter areas for the command line and memory map, and vCPU 0's VMSA. Shared by
//! veil-loader's, veil-snp's and veil-tdx's tests.

#![allow(dead_code)]

use igvm::snp_defs::SevVmsa;
use igvm::{IgvmDirectiveHeader, IgvmFile, IgvmInitializationHeader, IgvmPlatformHeader};
use igvm_defs::{
    IGVM_VHS_PARAMETER, IGVM_VHS_PARAMETER_INSERT, IGVM_VHS_SUPPORTED_PLATFORM, IgvmPageDataFlags,
    IgvmPageDataType, IgvmPlatformType,
};
use zerocopy::{FromBytes, FromZeros, IntoBytes};

/// The SNP platform's compatibility mask.
pub const SNP: u32 = 1;
/// The TDX platform's.
pub const TDX: u32 = 2;
/// The GPA KVM measures VMSAs at, which the files use.
pub const VMSA_GPA: u64 = 0xFFFF_FFFF_F000;
/// The sample's guest policy (SnpPolicy::DEFAULT: SMT allowed, reserved bit 17).
pub const POLICY: u64 = 0x3_0000;
/// The sample's first page.
pub const BASE: u64 = 0x10_0000;

/// A page of `data` (at most 4 KiB, the rest zero) at `gpa`.
pub fn page(gpa: u64, mask: u32, data: Vec<u8>) -> IgvmDirectiveHeader {
    typed(
        gpa,
        mask,
        IgvmPageDataType::NORMAL,
        IgvmPageDataFlags::new(),
        data,
    )
}

/// A page of `data_type` with `flags`.
pub fn typed(
    gpa: u64,
    mask: u32,
    data_type: IgvmPageDataType,
    flags: IgvmPageDataFlags,
    data: Vec<u8>,
) -> IgvmDirectiveHeader {
    IgvmDirectiveHeader::PageData {
        gpa,
        compatibility_mask: mask,
        flags,
        data_type,
        data,
    }
}

/// vCPU `vp_index`'s VMSA at `gpa`.
pub fn vp_context(gpa: u64, vp_index: u16, vmsa: &[u8]) -> IgvmDirectiveHeader {
    let mut v = SevVmsa::new_zeroed();
    v.as_mut_bytes().copy_from_slice(vmsa);
    IgvmDirectiveHeader::SnpVpContext {
        gpa,
        compatibility_mask: SNP,
        vp_index,
        vmsa: Box::new(v),
    }
}

/// `(area, bytes)` declared, then `uses` of it, then its insertion at `gpa`.
pub fn parameter_area(
    area: u32,
    bytes: u64,
    uses: Vec<IgvmDirectiveHeader>,
    gpa: u64,
    mask: u32,
) -> Vec<IgvmDirectiveHeader> {
    let mut out = vec![IgvmDirectiveHeader::ParameterArea {
        number_of_bytes: bytes,
        parameter_area_index: area,
        initial_data: Vec::new(),
    }];
    out.extend(uses);
    out.push(IgvmDirectiveHeader::ParameterInsert(
        IGVM_VHS_PARAMETER_INSERT {
            gpa,
            compatibility_mask: mask,
            parameter_area_index: area,
        },
    ));
    out
}

/// A parameter at `offset` of `area`.
pub fn parameter(area: u32, offset: u32) -> IGVM_VHS_PARAMETER {
    IGVM_VHS_PARAMETER {
        parameter_area_index: area,
        byte_offset: offset,
    }
}

fn platform(mask: u32, platform_type: IgvmPlatformType) -> IgvmPlatformHeader {
    IgvmPlatformHeader::SupportedPlatform(IGVM_VHS_SUPPORTED_PLATFORM {
        compatibility_mask: mask,
        highest_vtl: 0,
        platform_type,
        platform_version: 1,
        shared_gpa_boundary: 0,
    })
}

/// The serialized file of `directives` for SNP and TDX, with the SNP guest policy.
pub fn file(directives: Vec<IgvmDirectiveHeader>) -> Vec<u8> {
    let (bytes, _) = file_and_headers(directives);
    bytes
}

/// The serialized file and the igvm crate's reading of it back.
pub fn file_and_headers(directives: Vec<IgvmDirectiveHeader>) -> (Vec<u8>, IgvmFile) {
    let f = IgvmFile::new(
        igvm::IgvmRevision::V1,
        vec![
            platform(SNP, IgvmPlatformType::SEV_SNP),
            platform(TDX, IgvmPlatformType::TDX),
        ],
        vec![IgvmInitializationHeader::GuestPolicy {
            policy: POLICY,
            compatibility_mask: SNP,
        }],
        directives,
    )
    .expect("the igvm crate accepts the test file");
    let mut out = Vec::new();
    f.serialize(&mut out).expect("the test file serializes");
    (out, f)
}

/// A pattern page: byte `i` is `i * seed`.
pub fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(seed)).collect()
}

/// The sample's directives: three measured pages (one with less than a page of data),
/// an empty (zero) page, an unmeasured page, a command line area and a memory map area,
/// then (SNP only) a secrets and a CPUID page, and last vCPU 0's VMSA.
pub fn sample_directives(vmsa: &[u8], cpuid: Vec<u8>) -> Vec<IgvmDirectiveHeader> {
    let both = SNP | TDX;
    let mut d = vec![
        page(BASE, both, pattern(3, 4096)),
        page(BASE + 0x1000, both, pattern(5, 4096)),
        page(BASE + 0x2000, both, pattern(7, 100)),
        page(BASE + 0x3000, both, Vec::new()),
        typed(
            BASE + 0x4000,
            both,
            IgvmPageDataType::NORMAL,
            IgvmPageDataFlags::new().with_unmeasured(true),
            pattern(11, 4096),
        ),
    ];
    d.extend(parameter_area(
        0,
        4096,
        vec![IgvmDirectiveHeader::CommandLine(parameter(0, 16))],
        BASE + 0x5000,
        both,
    ));
    d.extend(parameter_area(
        1,
        4096,
        vec![IgvmDirectiveHeader::MemoryMap(parameter(1, 0))],
        BASE + 0x6000,
        both,
    ));
    d.push(typed(
        BASE + 0x7000,
        SNP,
        IgvmPageDataType::SECRETS,
        IgvmPageDataFlags::new(),
        Vec::new(),
    ));
    d.push(typed(
        BASE + 0x8000,
        SNP,
        IgvmPageDataType::CPUID_DATA,
        IgvmPageDataFlags::new(),
        cpuid,
    ));
    d.push(vp_context(VMSA_GPA, 0, vmsa));
    d
}

/// The sample file with `vmsa` for vCPU 0.
pub fn sample(vmsa: &[u8], cpuid: Vec<u8>) -> Vec<u8> {
    file(sample_directives(vmsa, cpuid))
}

/// A VMSA read back from bytes.
pub fn vmsa_struct(bytes: &[u8]) -> SevVmsa {
    SevVmsa::read_from_bytes(bytes).expect("a 4096-byte VMSA")
}
