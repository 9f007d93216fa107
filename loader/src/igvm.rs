// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! IGVM files as a boot source: their page data, page types, parameter areas and vCPU
//! state become a [`BootPlan`] that a launch technology issues like any other.
//!
//! The file is read with the `igvm` crate for one platform, SEV-SNP or TDX, after veil
//! has checked the header sizes and file data offsets the crate computes with unchecked
//! arithmetic ([`check_fixed_header`]). Its
//! directives are then taken in file order, and everything veil cannot carry out exactly
//! as the file asks is refused with an [`IgvmError`] before a plan exists:
//!
//! | directive | taken as |
//! | --- | --- |
//! | page data (4 KiB, normal) | a [`PageType::Normal`] page, or [`PageType::Unmeasured`] with the unmeasured flag; an empty page is a normal page of zeros |
//! | page data, secrets / CPUID / CPUID-XF (SNP) | a [`PageType::Secrets`] / [`PageType::Cpuid`] page |
//! | parameter area, then command line or memory map into it, then its insertion | an unmeasured run holding the command line (NUL-terminated) or one entry per RAM range |
//! | required memory | checked to be RAM; places nothing |
//! | SNP VP context (the VMSA of vCPU 0) | the boot vCPU's entry state, with the VMSA kept in [`IgvmPlan`] for the SNP backend to check |
//! | SNP guest policy (initialization) | kept in [`IgvmPlan`] |
//!
//! Refused: 2 MiB and shared pages, page data not in ascending address order (veil
//! issues pages by address, so the measurement would differ from the file's), a VP
//! context before page data (KVM measures VMSAs last), VP contexts of other vCPUs,
//! native, VBS and AArch64 VP contexts, the VP count, environment info, SRAT, MADT, SLIT,
//! PPTT, MMIO ranges and device tree parameters, error ranges, SNP ID blocks, VBS
//! measurements, and every initialization header but the guest policy (relocatable
//! regions, page table relocation, CoRIM documents and signatures, CCA policies). A TD
//! has no VP context: its vCPUs start where the TDX module puts them.

use std::borrow::Cow;
use std::collections::BTreeMap;

use igvm::snp_defs::{SevSelector, SevVmsa};
use igvm::{IgvmDirectiveHeader, IgvmFile, IgvmInitializationHeader, IgvmPlatformHeader};
use igvm_defs::{IGVM_MAGIC_VALUE, IgvmPageDataType, IgvmPlatformType};
use kvm_bindings::{kvm_dtable, kvm_segment};
use serde::{Deserialize, Serialize};
use veil_abi::x86_64::{CR0_PE, CpuMode, EFER_LMA, EFER_SVME, EntryError, EntryRegisters};
use zerocopy::IntoBytes;

use crate::image::KernelFormat;
use crate::layout::{Layout, LayoutError, Placement};
use crate::load::{BootPlan, BootSource, LoadError, PlannedObject};
use crate::measure::{MeasurementLog, ObjectKind};
use crate::populate::PageType;
use crate::ram::{ByteRange, GuestRam, PAGE_SIZE};

/// The largest parameter area veil fills: 1 MiB.
pub const PARAMETER_AREA_MAX: u64 = 1 << 20;
/// Size of an `IGVM_VHS_MEMORY_MAP_ENTRY`.
const MEMORY_MAP_ENTRY: usize = 24;
/// Size of the version 1 fixed header, and of version 2's.
const FIXED_HEADER_V1: u64 = 24;
const FIXED_HEADER_V2: u64 = 32;

/// The platform an IGVM file is loaded for: its directives are those whose
/// compatibility mask names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum IgvmPlatform {
    /// AMD SEV-SNP.
    SevSnp,
    /// Intel TDX.
    Tdx,
}

impl IgvmPlatform {
    fn platform_type(self) -> IgvmPlatformType {
        match self {
            IgvmPlatform::SevSnp => IgvmPlatformType::SEV_SNP,
            IgvmPlatform::Tdx => IgvmPlatformType::TDX,
        }
    }

    fn isolation(self) -> igvm::IsolationType {
        match self {
            IgvmPlatform::SevSnp => igvm::IsolationType::Snp,
            IgvmPlatform::Tdx => igvm::IsolationType::Tdx,
        }
    }
}

impl std::fmt::Display for IgvmPlatform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            IgvmPlatform::SevSnp => "SEV-SNP",
            IgvmPlatform::Tdx => "TDX",
        })
    }
}

/// The VMSA an IGVM file gives SEV-SNP's vCPU 0, as the file holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnpVmsa {
    /// The GPA the file measures it at.
    pub gpa: u64,
    /// Its 4096 bytes.
    pub bytes: Vec<u8>,
}

/// What an IGVM file gave a plan beyond its pages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IgvmPlan {
    /// The platform the file was read for.
    pub platform: IgvmPlatform,
    /// The compatibility mask of that platform in the file.
    pub compatibility_mask: u32,
    /// The SNP guest policy the file asks for, if it names one.
    pub guest_policy: Option<u64>,
    /// vCPU 0's VMSA (SEV-SNP only). The plan's entry state is decoded from it; a
    /// launch backend checks that the VMSA it will get equals this one.
    pub vmsa: Option<SnpVmsa>,
    /// The memory the file requires, checked to be RAM.
    pub required_memory: Vec<ByteRange>,
}

/// Why an IGVM file was refused. Nothing has been written anywhere when one is returned.
#[derive(Debug, thiserror::Error)]
pub enum IgvmError {
    /// The fixed header is missing or inconsistent with the file.
    #[error("IGVM file of {len} bytes: {reason}")]
    Header {
        /// The file's length.
        len: u64,
        /// What is wrong.
        reason: &'static str,
    },
    /// The file's total size says it is longer than it is.
    #[error("IGVM file truncated: its header says {need} bytes, the file has {have}")]
    Truncated {
        /// The size the header declares.
        need: u64,
        /// The file's length.
        have: u64,
    },
    /// The `igvm` crate refused the file (a bad checksum, header or directive).
    #[error("the igvm crate refused the file")]
    Parse(#[source] igvm::Error),
    /// The `igvm` crate's parser panicked on the file (an input veil's checks before
    /// parsing did not foresee); the panic was caught.
    #[error("the igvm crate's parser panicked on the file")]
    ParserPanicked,
    /// The file has no directives for the platform.
    #[error("the IGVM file does not support {platform}")]
    NoPlatform {
        /// The platform asked for.
        platform: IgvmPlatform,
    },
    /// A directive or initialization header veil does not carry out.
    #[error("directive {index} ({what}) is not supported")]
    Unsupported {
        /// Its index among the file's directives, or among its initialization headers,
        /// or (relocation, refused before the file is parsed) among all its variable
        /// headers.
        index: usize,
        /// What it is.
        what: &'static str,
    },
    /// A page of a size, alignment or visibility veil does not populate.
    #[error("page data at {gpa:#x} (directive {index}): {reason}")]
    Page {
        /// The directive's index.
        index: usize,
        /// Its GPA.
        gpa: u64,
        /// What is wrong.
        reason: &'static str,
    },
    /// A page data type the platform does not take.
    #[error("page data at {gpa:#x} has data type {data_type:#x}, which {platform} does not take")]
    PageDataType {
        /// Its GPA.
        gpa: u64,
        /// The data type.
        data_type: u32,
        /// The platform.
        platform: IgvmPlatform,
    },
    /// Pages that are not in ascending address order: veil issues pages by address, so
    /// the file's measurement (in file order) would not be the one the launch produces.
    #[error(
        "directive {index} places {gpa:#x} after {previous:#x}: pages must come in ascending address order"
    )]
    OutOfOrder {
        /// The directive's index.
        index: usize,
        /// Its GPA.
        gpa: u64,
        /// The end of the previous page.
        previous: u64,
    },
    /// A page after the VP context: KVM measures the VMSA after every page.
    #[error("directive {index} places pages after the VP context, which is measured last")]
    PageAfterVpContext {
        /// The directive's index.
        index: usize,
    },
    /// A VP context of a vCPU other than 0, or a second one.
    #[error(
        "VP context for vCPU {vp_index} (directive {index}): only vCPU 0's, once, is supported"
    )]
    VpContext {
        /// The directive's index.
        index: usize,
        /// The vCPU.
        vp_index: u16,
    },
    /// An SNP file without vCPU 0's VMSA.
    #[error("the IGVM file has no VP context for vCPU 0, which an SNP launch needs")]
    NoVpContext,
    /// The VMSA holds a state veil cannot give a vCPU.
    #[error("the VMSA's {field} = {value:#x} cannot be given to a vCPU: {reason}")]
    Vmsa {
        /// The field.
        field: &'static str,
        /// Its value.
        value: u64,
        /// Why.
        reason: &'static str,
    },
    /// The state decoded from the VMSA is not a valid entry.
    #[error("the VMSA's state is not a valid entry")]
    Entry(#[source] EntryError),
    /// A parameter area or a parameter in it is inconsistent.
    #[error("parameter area {area} (directive {index}): {reason}")]
    ParameterArea {
        /// The directive's index.
        index: usize,
        /// The area's index.
        area: u32,
        /// What is wrong.
        reason: &'static str,
    },
    /// The command line does not fit its parameter.
    #[error("the command line of {len} bytes does not fit the {room} bytes of its parameter")]
    CommandLineTooLong {
        /// Its length without the NUL.
        len: u64,
        /// The room from its offset to the end of the area, NUL included.
        room: u64,
    },
    /// A command line was given, but the file takes none.
    #[error("a command line was given, but the IGVM file has no command line parameter")]
    CommandLineUnused,
    /// Something an IGVM boot source does not take (an initrd, firmware tables).
    #[error("an IGVM boot source takes no {0}")]
    NotTaken(&'static str),
    /// Memory the file requires is not RAM.
    #[error("the IGVM file requires {range}, which is not inside one RAM range")]
    RequiredMemory {
        /// The range.
        range: ByteRange,
    },
    /// The pages do not fit the guest's RAM.
    #[error("the IGVM file's pages do not fit the guest's RAM")]
    Layout(#[from] LayoutError),
    /// The file places nothing.
    #[error("the IGVM file places no page for {platform}")]
    Empty {
        /// The platform.
        platform: IgvmPlatform,
    },
}

/// Checks the fixed header's sizes and offsets against the file, then walks the
/// variable headers: what the `igvm` crate reads with unchecked arithmetic.
pub fn check_fixed_header(file: &[u8]) -> Result<(), IgvmError> {
    let len = file.len() as u64;
    let bad = |reason| IgvmError::Header { len, reason };
    let word = |at: usize| -> Option<u32> {
        Some(u32::from_le_bytes(file.get(at..at + 4)?.try_into().ok()?))
    };
    let (Some(magic), Some(version), Some(offset), Some(size), Some(total)) =
        (word(0), word(4), word(8), word(12), word(16))
    else {
        return Err(bad("shorter than the fixed header"));
    };
    if magic != IGVM_MAGIC_VALUE {
        return Err(bad("no IGVM magic at offset 0"));
    }
    let header_len = match version {
        1 => FIXED_HEADER_V1,
        2 => FIXED_HEADER_V2,
        _ => return Err(bad("unknown format version")),
    };
    if u64::from(total) > len {
        return Err(IgvmError::Truncated {
            need: total.into(),
            have: len,
        });
    }
    if u64::from(total) != len {
        return Err(bad("the total file size in the header is not the file's"));
    }
    if len < header_len {
        return Err(IgvmError::Truncated {
            need: header_len,
            have: len,
        });
    }
    let end = u64::from(offset) + u64::from(size);
    if u64::from(offset) < header_len || size == 0 || end > len {
        return Err(bad(
            "the variable headers do not lie between the fixed header and the end",
        ));
    }
    check_variable_headers(file, offset as usize, end as usize)
}

/// Walks the variable headers in `file[start..end]` and checks what the `igvm` crate
/// computes with unchecked arithmetic: every file data offset lies in the file data
/// section (after the headers) and a parameter area's or CoRIM document's data fits the
/// file. Relocation headers are refused here: veil does not relocate, and the crate's
/// check of their sizes can overflow.
fn check_variable_headers(file: &[u8], start: usize, end: usize) -> Result<(), IgvmError> {
    let len = file.len() as u64;
    let bad = |reason| IgvmError::Header { len, reason };
    let data_start = end as u64;
    let u32_at = |at: usize| -> Option<u32> {
        Some(u32::from_le_bytes(
            file.get(at..at.checked_add(4)?)?.try_into().ok()?,
        ))
    };
    let u64_at = |at: usize| -> Option<u64> {
        Some(u64::from_le_bytes(
            file.get(at..at.checked_add(8)?)?.try_into().ok()?,
        ))
    };
    let mut at = start;
    let mut index = 0;
    while at < end {
        let (Some(typ), Some(length)) = (u32_at(at), u32_at(at + 4)) else {
            return Err(bad("a variable header runs past the header section"));
        };
        let body = at + 8;
        let body_end = body as u64 + u64::from(length);
        if body_end > end as u64 {
            return Err(bad("a variable header runs past the header section"));
        }
        // Where the body holds a file data offset, and how many bytes it points at
        // (`None`: at most a page, which may end the file short).
        let data: Option<(usize, Option<u64>)> = match typ {
            // IGVM_VHT_RELOCATABLE_REGION, IGVM_VHT_PAGE_TABLE_RELOCATION_REGION
            0x102 | 0x103 => {
                return Err(IgvmError::Unsupported {
                    index,
                    what: "relocation",
                });
            }
            // IGVM_VHT_SUPPORTED_PLATFORM: mask, highest VTL, platform type. The crate
            // asserts on what a VBS (VSM isolation) file's VP context holds, so such a
            // platform is refused before it parses anything.
            0x1 if file.get(body + 5) == Some(&1) => {
                return Err(IgvmError::Unsupported {
                    index,
                    what: "a VBS (VSM isolation) platform",
                });
            }
            // IGVM_VHT_CORIM_DOCUMENT, IGVM_VHT_CORIM_SIGNATURE: mask, offset, size.
            0x104 | 0x105 => Some((4, Some(u32_at(body + 8).map_or(0, u64::from)))),
            // IGVM_VHT_PARAMETER_AREA: number_of_bytes, index, offset.
            0x301 => Some((12, Some(u64_at(body).unwrap_or(u64::MAX)))),
            // IGVM_VHT_PAGE_DATA, IGVM_VHT_VP_CONTEXT: gpa, mask, offset.
            0x302 | 0x304 => Some((12, None)),
            _ => None,
        };
        if let Some((field, size)) = data
            && u64::from(length) >= field as u64 + 4
        {
            let offset = u32_at(body + field).map_or(0, u64::from);
            let fits = |size: u64| {
                offset >= data_start && offset.checked_add(size).is_some_and(|e| e <= len)
            };
            // An offset of 0 means no data, except for a VP context, whose offset the
            // crate always subtracts the file data start from.
            if (offset != 0 || typ == 0x304) && !fits(size.unwrap_or(0)) {
                return Err(bad(
                    "a header's file data lies outside the file data section",
                ));
            }
        }
        at = (body_end.div_ceil(8) * 8) as usize;
        index += 1;
    }
    Ok(())
}

/// Reads `file` with the `igvm` crate for `platform`, after [`check_fixed_header`].
///
/// The checks before parsing cover every panic of the crate's parser found so far; a
/// panic they miss is caught (where panics unwind, the default) and reported as
/// [`IgvmError::ParserPanicked`] rather than
/// ending the caller.
pub fn parse(file: &[u8], platform: IgvmPlatform) -> Result<IgvmFile, IgvmError> {
    check_fixed_header(file)?;
    std::panic::catch_unwind(|| IgvmFile::new_from_binary(file, Some(platform.isolation())))
        .map_err(|_| IgvmError::ParserPanicked)?
        .map_err(IgvmError::Parse)
}

/// A parameter area as the directives fill it.
struct Area {
    bytes: Vec<u8>,
    inserted: bool,
}

/// Plans the IGVM file `source.kernel` for `platform` in `ram` (see the module
/// documentation for what is taken and refused). `source.cmdline` fills the file's
/// command line parameter; an initrd or firmware tables are refused.
pub fn plan_igvm<'a>(
    source: &BootSource<'a>,
    platform: IgvmPlatform,
    ram: &GuestRam,
) -> Result<BootPlan<'a>, LoadError> {
    if let Some(offset) = source.cmdline.bytes().position(|b| b == 0) {
        return Err(LoadError::CommandLineNul { offset });
    }
    Ok(plan_file(source, platform, ram)?)
}

fn plan_file<'a>(
    source: &BootSource<'a>,
    platform: IgvmPlatform,
    ram: &GuestRam,
) -> Result<BootPlan<'a>, IgvmError> {
    if source.initrd.is_some_and(|i| !i.is_empty()) {
        return Err(IgvmError::NotTaken("initrd"));
    }
    if source.firmware.is_some() {
        return Err(IgvmError::NotTaken("firmware tables"));
    }
    let file = parse(source.kernel, platform)?;
    let mask = file
        .platforms()
        .iter()
        .map(|IgvmPlatformHeader::SupportedPlatform(p)| p)
        .find(|p| p.platform_type == platform.platform_type())
        .map(|p| p.compatibility_mask)
        .ok_or(IgvmError::NoPlatform { platform })?;
    let ours = |m: u32| m & mask != 0;

    let mut guest_policy = None;
    // The crate has already dropped the headers of other platforms.
    for (index, header) in file.initializations().iter().enumerate() {
        match header {
            IgvmInitializationHeader::GuestPolicy {
                policy,
                compatibility_mask,
            } => {
                if ours(*compatibility_mask) {
                    guest_policy = Some(*policy);
                }
            }
            IgvmInitializationHeader::RelocatableRegion { .. } => {
                return Err(IgvmError::Unsupported {
                    index,
                    what: "a relocatable region",
                });
            }
            IgvmInitializationHeader::PageTableRelocationRegion { .. } => {
                return Err(IgvmError::Unsupported {
                    index,
                    what: "page table relocation",
                });
            }
            _ => {
                return Err(IgvmError::Unsupported {
                    index,
                    what: "an initialization header other than the guest policy",
                });
            }
        }
    }

    let mut objects: Vec<PlannedObject<'a>> = Vec::new();
    let mut areas: BTreeMap<u32, Area> = BTreeMap::new();
    let mut vmsa: Option<SnpVmsa> = None;
    let mut required_memory = Vec::new();
    let mut cmdline_used = false;
    // The end of the last page placed, for the ascending-order rule.
    let mut placed_end: Option<u64> = None;
    let mut place = |index: usize, range: ByteRange, vmsa_seen: bool| {
        if vmsa_seen {
            return Err(IgvmError::PageAfterVpContext { index });
        }
        if let Some(previous) = placed_end
            && range.start().0 < previous
        {
            return Err(IgvmError::OutOfOrder {
                index,
                gpa: range.start().0,
                previous,
            });
        }
        placed_end = Some(range.end());
        Ok(())
    };

    for (index, d) in file.directives().iter().enumerate() {
        if d.compatibility_mask().is_some_and(|m| !ours(m)) {
            continue;
        }
        let unsupported = |what| Err(IgvmError::Unsupported { index, what });
        match d {
            IgvmDirectiveHeader::PageData {
                gpa,
                flags,
                data_type,
                data,
                ..
            } => {
                let page = |reason| IgvmError::Page {
                    index,
                    gpa: *gpa,
                    reason,
                };
                if flags.is_2mb_page() {
                    return Err(page("2 MiB pages are not supported"));
                }
                if flags.shared() {
                    return Err(page(
                        "shared pages are not supported: veil populates private memory",
                    ));
                }
                if !gpa.is_multiple_of(PAGE_SIZE) {
                    return Err(page("not page-aligned"));
                }
                if data.len() as u64 > PAGE_SIZE {
                    return Err(page("more than 4 KiB of data"));
                }
                let range =
                    ByteRange::new(*gpa, PAGE_SIZE).ok_or(page("wraps the address space"))?;
                let refused = IgvmError::PageDataType {
                    gpa: *gpa,
                    data_type: data_type.0.into(),
                    platform,
                };
                let page_type = match (*data_type, platform) {
                    (IgvmPageDataType::NORMAL, _) if flags.unmeasured() => PageType::Unmeasured,
                    (IgvmPageDataType::NORMAL, _) => PageType::Normal,
                    (IgvmPageDataType::SECRETS, IgvmPlatform::SevSnp) => PageType::Secrets,
                    (
                        IgvmPageDataType::CPUID_DATA | IgvmPageDataType::CPUID_XF,
                        IgvmPlatform::SevSnp,
                    ) => PageType::Cpuid,
                    _ => return Err(refused),
                };
                place(index, range, vmsa.is_some())?;
                objects.push(PlannedObject {
                    kind: ObjectKind::IgvmPage,
                    range,
                    bytes: Cow::Owned(data.clone()),
                    page_type,
                });
            }
            IgvmDirectiveHeader::ParameterArea {
                number_of_bytes,
                parameter_area_index,
                initial_data,
            } => {
                let bad = |reason| IgvmError::ParameterArea {
                    index,
                    area: *parameter_area_index,
                    reason,
                };
                if *number_of_bytes == 0
                    || !number_of_bytes.is_multiple_of(PAGE_SIZE)
                    || *number_of_bytes > PARAMETER_AREA_MAX
                {
                    return Err(bad("its size is not a whole number of pages up to 1 MiB"));
                }
                if initial_data.len() as u64 > *number_of_bytes {
                    return Err(bad("its initial data is larger than the area"));
                }
                let mut bytes = initial_data.clone();
                bytes.resize(*number_of_bytes as usize, 0);
                if areas
                    .insert(
                        *parameter_area_index,
                        Area {
                            bytes,
                            inserted: false,
                        },
                    )
                    .is_some()
                {
                    return Err(bad("declared twice"));
                }
            }
            IgvmDirectiveHeader::CommandLine(p) => {
                let area = open_area(&mut areas, index, p.parameter_area_index)?;
                let mut line = source.cmdline.as_bytes().to_vec();
                line.push(0);
                let at = p.byte_offset as usize;
                let room = area.bytes.len().saturating_sub(at) as u64;
                if line.len() as u64 > room {
                    return Err(IgvmError::CommandLineTooLong {
                        len: source.cmdline.len() as u64,
                        room,
                    });
                }
                area.bytes[at..at + line.len()].copy_from_slice(&line);
                cmdline_used = true;
            }
            IgvmDirectiveHeader::MemoryMap(p) => {
                let area = open_area(&mut areas, index, p.parameter_area_index)?;
                let map = memory_map(ram);
                let at = p.byte_offset as usize;
                // Room for the entries and the zero entry that ends them.
                if at.saturating_add(map.len() + MEMORY_MAP_ENTRY) > area.bytes.len() {
                    return Err(IgvmError::ParameterArea {
                        index,
                        area: p.parameter_area_index,
                        reason: "the memory map does not fit",
                    });
                }
                area.bytes[at..at + map.len()].copy_from_slice(&map);
                area.bytes[at + map.len()..at + map.len() + MEMORY_MAP_ENTRY].fill(0);
            }
            IgvmDirectiveHeader::ParameterInsert(insert) => {
                let bad = |reason| IgvmError::ParameterArea {
                    index,
                    area: insert.parameter_area_index,
                    reason,
                };
                let area = areas
                    .get_mut(&insert.parameter_area_index)
                    .ok_or(bad("inserted but never declared"))?;
                if area.inserted {
                    return Err(bad("inserted twice"));
                }
                if !insert.gpa.is_multiple_of(PAGE_SIZE) {
                    return Err(bad("inserted at an address that is not page-aligned"));
                }
                let range = ByteRange::new(insert.gpa, area.bytes.len() as u64)
                    .ok_or(bad("inserted where it wraps the address space"))?;
                area.inserted = true;
                place(index, range, vmsa.is_some())?;
                objects.push(PlannedObject {
                    kind: ObjectKind::IgvmParameters,
                    range,
                    bytes: Cow::Owned(std::mem::take(&mut area.bytes)),
                    page_type: PageType::Unmeasured,
                });
            }
            IgvmDirectiveHeader::RequiredMemory {
                gpa,
                number_of_bytes,
                ..
            } => {
                let range = ByteRange::new(*gpa, u64::from(*number_of_bytes)).ok_or(
                    IgvmError::Unsupported {
                        index,
                        what: "an empty or wrapping required memory range",
                    },
                )?;
                if !ram.holds(&range) {
                    return Err(IgvmError::RequiredMemory { range });
                }
                required_memory.push(range);
            }
            IgvmDirectiveHeader::SnpVpContext {
                gpa,
                vp_index,
                vmsa: state,
                ..
            } => {
                if *vp_index != 0 || vmsa.is_some() {
                    return Err(IgvmError::VpContext {
                        index,
                        vp_index: *vp_index,
                    });
                }
                vmsa = Some(SnpVmsa {
                    gpa: *gpa,
                    bytes: state.as_bytes().to_vec(),
                });
            }
            IgvmDirectiveHeader::VpCount(_) => return unsupported("the VP count parameter"),
            IgvmDirectiveHeader::EnvironmentInfo(_) => {
                return unsupported("the environment info parameter");
            }
            IgvmDirectiveHeader::Srat(_) => return unsupported("the SRAT parameter"),
            IgvmDirectiveHeader::Madt(_) => return unsupported("the MADT parameter"),
            IgvmDirectiveHeader::Slit(_) => return unsupported("the SLIT parameter"),
            IgvmDirectiveHeader::Pptt(_) => return unsupported("the PPTT parameter"),
            IgvmDirectiveHeader::MmioRanges(_) => return unsupported("the MMIO ranges parameter"),
            IgvmDirectiveHeader::DeviceTree(_) => return unsupported("the device tree parameter"),
            IgvmDirectiveHeader::X64NativeVpContext { .. } => {
                return unsupported("a native x64 VP context");
            }
            IgvmDirectiveHeader::X64VbsVpContext { .. } => {
                return unsupported("a VBS VP context");
            }
            IgvmDirectiveHeader::AArch64VbsVpContext { .. }
            | IgvmDirectiveHeader::AArch64CcaVpContext { .. } => {
                return unsupported("an AArch64 VP context");
            }
            IgvmDirectiveHeader::ErrorRange { .. } => return unsupported("an error range"),
            IgvmDirectiveHeader::SnpIdBlock { .. } => return unsupported("an SNP ID block"),
            IgvmDirectiveHeader::VbsMeasurement { .. } => {
                return unsupported("a VBS measurement");
            }
        }
    }
    if let Some((&area, _)) = areas.iter().find(|(_, a)| !a.inserted) {
        return Err(IgvmError::ParameterArea {
            index: file.directives().len(),
            area,
            reason: "declared but never inserted",
        });
    }
    if !source.cmdline.is_empty() && !cmdline_used {
        return Err(IgvmError::CommandLineUnused);
    }

    let placements: Vec<Placement> = objects
        .iter()
        .map(|o| Placement {
            kind: o.kind,
            range: o.range,
        })
        .collect();
    let span = placements
        .iter()
        .map(|p| p.range)
        .reduce(|a, b| a.hull(&b))
        .ok_or(IgvmError::Empty { platform })?;
    let entry = match platform {
        IgvmPlatform::SevSnp => {
            let v = vmsa.as_ref().ok_or(IgvmError::NoVpContext)?;
            entry_of_vmsa(&v.bytes)?
        }
        // A TD's vCPUs start at the reset vector in the state the TDX module gives
        // them; the entry is that vector's, which no TDX launch writes.
        IgvmPlatform::Tdx => EntryRegisters::protected32(0xffff_fff0, 0),
    };
    entry.validate().map_err(IgvmError::Entry)?;

    let layout = Layout {
        placements,
        kernel_reserved: span,
        // The file's own pages are its boot data.
        gdt: span,
        page_tables: None,
        boot_params: span,
        cmdline: span,
        initrd: None,
        kernel_load: span.start().0,
        firmware: None,
    };
    check_layout(&layout, ram)?;
    let mut log = MeasurementLog::new();
    log.record(ObjectKind::KernelImage, None, source.kernel, 0);
    for o in &objects {
        log.record(
            o.kind,
            Some(o.range.start().0),
            &o.bytes,
            o.range.len().saturating_sub(o.bytes.len() as u64),
        );
    }
    Ok(BootPlan {
        format: KernelFormat::Igvm { platform },
        ram: ram.clone(),
        layout,
        entry,
        objects,
        log,
        igvm: Some(IgvmPlan {
            platform,
            compatibility_mask: mask,
            guest_policy,
            vmsa,
            required_memory,
        }),
    })
}

/// Checks that every placement lies in one RAM range and none overlaps another.
fn check_layout(layout: &Layout, ram: &GuestRam) -> Result<(), LayoutError> {
    if let Some(p) = layout.placements.iter().find(|p| !ram.holds(&p.range)) {
        return Err(LayoutError::OutsideRam {
            kind: p.kind,
            range: p.range,
        });
    }
    layout.check()
}

fn open_area(
    areas: &mut BTreeMap<u32, Area>,
    index: usize,
    area: u32,
) -> Result<&mut Area, IgvmError> {
    let bad = |reason| IgvmError::ParameterArea {
        index,
        area,
        reason,
    };
    let a = areas.get_mut(&area).ok_or(bad("used but never declared"))?;
    if a.inserted {
        return Err(bad("written after it was inserted"));
    }
    Ok(a)
}

/// One `IGVM_VHS_MEMORY_MAP_ENTRY` (type MEMORY) per RAM range.
fn memory_map(ram: &GuestRam) -> Vec<u8> {
    let mut out = Vec::new();
    for r in ram.ranges() {
        out.extend_from_slice(&(r.start().0 / PAGE_SIZE).to_le_bytes());
        out.extend_from_slice(&(r.len() / PAGE_SIZE).to_le_bytes());
        out.extend_from_slice(&0u16.to_le_bytes()); // MemoryMapEntryType::MEMORY
        out.extend_from_slice(&0u16.to_le_bytes()); // flags
        out.extend_from_slice(&0u32.to_le_bytes()); // reserved
    }
    out
}

/// A VMSA segment as `KVM_SET_SREGS` takes it (the inverse of `svm_set_segment`'s
/// packing of the attributes).
fn segment(s: &SevSelector) -> kvm_segment {
    let a = s.attrib;
    let bit = |n: u16| ((a >> n) & 1) as u8;
    let present = bit(7);
    kvm_segment {
        base: s.base,
        limit: s.limit,
        selector: s.selector,
        type_: (a & 0xf) as u8,
        present,
        dpl: ((a >> 5) & 3) as u8,
        db: bit(10),
        s: bit(4),
        l: bit(9),
        g: bit(11),
        avl: bit(8),
        unusable: u8::from(present == 0),
        padding: 0,
    }
}

fn table(field: &'static str, s: &SevSelector) -> Result<kvm_dtable, IgvmError> {
    let limit = u16::try_from(s.limit).map_err(|_| IgvmError::Vmsa {
        field,
        value: s.limit.into(),
        reason: "a descriptor table limit is 16 bits",
    })?;
    Ok(kvm_dtable {
        base: s.base,
        limit,
        ..Default::default()
    })
}

/// The entry state a vCPU must be given for KVM to build `vmsa` (4096 bytes, as an
/// IGVM SNP VP context holds it): the mode from EFER.LMA and CR0.PE, the segments,
/// descriptor tables, control registers and general registers. Everything else in the
/// VMSA is KVM's to fill; the SNP backend compares the VMSA it predicts with the file's.
pub fn entry_of_vmsa(vmsa: &[u8]) -> Result<EntryRegisters, IgvmError> {
    use zerocopy::FromBytes;
    let v = SevVmsa::read_from_bytes(vmsa).map_err(|_| IgvmError::Vmsa {
        field: "size",
        value: vmsa.len() as u64,
        reason: "a VMSA is 4096 bytes",
    })?;
    let mode = if v.efer & EFER_LMA != 0 {
        CpuMode::Long64
    } else if v.cr0 & CR0_PE != 0 {
        CpuMode::Protected32
    } else {
        return Err(IgvmError::Vmsa {
            field: "cr0",
            value: v.cr0,
            reason: "real mode (CR0.PE clear) is not an entry veil sets up",
        });
    };
    let data = segment(&v.ds);
    for (field, s) in [("es", &v.es), ("ss", &v.ss), ("fs", &v.fs), ("gs", &v.gs)] {
        if s != &v.ds {
            return Err(IgvmError::Vmsa {
                field,
                value: s.selector.into(),
                reason: "every data segment must equal ds: veil loads one data segment",
            });
        }
    }
    let mut entry = EntryRegisters {
        mode,
        cr0: v.cr0,
        cr3: v.cr3,
        cr4: v.cr4,
        efer: v.efer & !EFER_SVME,
        gdt: table("gdtr", &v.gdtr)?,
        idt: table("idtr", &v.idtr)?,
        code: segment(&v.cs),
        data,
        tss: segment(&v.tr),
        ..EntryRegisters::protected32(0, 0)
    };
    let r = &mut entry.regs;
    r.rip = v.rip;
    r.rflags = v.rflags;
    r.rsp = v.rsp;
    r.rax = v.rax;
    r.rcx = v.rcx;
    r.rdx = v.rdx;
    r.rbx = v.rbx;
    r.rbp = v.rbp;
    r.rsi = v.rsi;
    r.rdi = v.rdi;
    r.r8 = v.r8;
    r.r9 = v.r9;
    r.r10 = v.r10;
    r.r11 = v.r11;
    r.r12 = v.r12;
    r.r13 = v.r13;
    r.r14 = v.r14;
    r.r15 = v.r15;
    Ok(entry)
}
