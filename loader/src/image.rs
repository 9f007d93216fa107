// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Kernel images: ELF with a PVH entry note, and bzImage (Linux boot protocol).
//!
//! Parsing happens in two passes. veil's own pass reads every header field with checked
//! arithmetic against the file's length and refuses anything it cannot place safely
//! (linux-loader streams into guest memory as it parses, so a bad segment found late would
//! leave earlier ones written). Then [`KernelImage::cross_check`] runs linux-loader's own
//! loader over the same bytes into a staging copy in host memory, laid out at the guest
//! addresses veil chose, and compares what linux-loader found with veil's reading. Guest
//! memory is touched only after both agree.

use std::io::Cursor;
use std::mem::size_of;

use linux_loader::bootparam::{LOADED_HIGH, XLF_KERNEL_64, setup_header};
use linux_loader::elf::{Elf64_Ehdr, Elf64_Nhdr, Elf64_Phdr, PT_LOAD, PT_NOTE};
use linux_loader::loader::{BzImage as LlBzImage, Elf as LlElf, KernelLoader, PvhBootCapability};
use vm_memory::{ByteValued, Bytes, GuestAddress, GuestMemoryMmap};

use crate::layout::merge_pages;
use crate::ram::{ByteRange, PAGE_SIZE};

/// ELF identification: class 64-bit (`ELFCLASS64`).
const ELFCLASS64: u8 = 2;
/// ELF identification: little-endian (`ELFDATA2LSB`).
const ELFDATA2LSB: u8 = 1;
/// `e_type` of an executable (`ET_EXEC`).
const ET_EXEC: u16 = 2;
/// `e_machine` of x86-64 (`EM_X86_64`).
const EM_X86_64: u16 = 62;
/// The note type of the PVH 32-bit entry point, from Xen's public `elfnote.h`
/// (`XEN_ELFNOTE_PHYS32_ENTRY`).
const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;
/// Notes are 4-byte aligned in kernels (linux-loader reads them the same way).
const NOTE_ALIGN: u64 = 4;

/// Offset of the setup header in a bzImage (Documentation/arch/x86/boot.rst).
const SETUP_HEADER_OFFSET: usize = 0x1f1;
/// `boot_flag` value every bzImage carries at 0x1fe.
const BOOT_FLAG: u16 = 0xaa55;
/// `header` value "HdrS" at 0x202.
const HDRS: u32 = 0x5372_6448;
/// The oldest boot protocol veil loads: 2.12 added `xloadflags` and with it the
/// `XLF_KERNEL_64` bit that says the 64-bit entry exists.
pub const MIN_BOOT_PROTOCOL: u16 = 0x020c;

/// Why a kernel image was refused. Nothing has been written anywhere when one is returned.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// Neither an ELF magic at offset 0 nor a bzImage "HdrS" at 0x202.
    #[error("not a kernel image: no ELF magic at offset 0 and no bzImage header at 0x202")]
    UnknownFormat,
    /// The file ends before a structure it must hold.
    #[error("image truncated: {what} needs {need} bytes, the file has {have}")]
    Truncated {
        /// What was being read.
        what: &'static str,
        /// The file length needed.
        need: u64,
        /// The file length.
        have: u64,
    },
    /// A magic number is wrong.
    #[error("bad magic in {what}: found {found:#x}")]
    BadMagic {
        /// Which magic.
        what: &'static str,
        /// The value found.
        found: u64,
    },
    /// An ELF identification or header field names something veil does not load.
    #[error("unsupported ELF {field} {value:#x}")]
    UnsupportedElf {
        /// The field.
        field: &'static str,
        /// Its value.
        value: u64,
    },
    /// A header field is out of the range the format allows.
    #[error("{field} = {value:#x} is out of range: {reason}")]
    FieldOutOfRange {
        /// The field.
        field: &'static str,
        /// Its value.
        value: u64,
        /// What the format requires.
        reason: &'static str,
    },
    /// A program header's file bytes lie outside the file or overflow.
    #[error(
        "ELF segment {index}: file bytes {offset:#x} + {size:#x} lie outside the {file_len}-byte file"
    )]
    SegmentOutsideFile {
        /// Program header index.
        index: usize,
        /// `p_offset`.
        offset: u64,
        /// `p_filesz`.
        size: u64,
        /// The file length.
        file_len: u64,
    },
    /// A program header's guest range wraps around the address space.
    #[error("ELF segment {index}: {paddr:#x} + {memsz:#x} overflows the address space")]
    SegmentOverflow {
        /// Program header index.
        index: usize,
        /// `p_paddr`.
        paddr: u64,
        /// `p_memsz`.
        memsz: u64,
    },
    /// A program header has more file bytes than memory bytes.
    #[error("ELF segment {index}: p_filesz {filesz:#x} exceeds p_memsz {memsz:#x}")]
    FileSizeExceedsMemSize {
        /// Program header index.
        index: usize,
        /// `p_filesz`.
        filesz: u64,
        /// `p_memsz`.
        memsz: u64,
    },
    /// The ELF has nothing to load.
    #[error("ELF has no loadable segment")]
    NoLoadableSegment,
    /// A note header or its name or descriptor runs past its segment.
    #[error("malformed ELF note at file offset {offset:#x}: {reason}")]
    BadNote {
        /// File offset of the note header.
        offset: u64,
        /// What is wrong.
        reason: &'static str,
    },
    /// An IGVM file where a kernel was expected: it is planned for a platform
    /// ([`KernelFormat::Igvm`]), not parsed as a kernel.
    #[error("an IGVM file is not a kernel: plan it as KernelFormat::Igvm for SEV-SNP or TDX")]
    Igvm,
    /// The ELF carries no PVH entry note (`XEN_ELFNOTE_PHYS32_ENTRY`).
    #[error("ELF has no PVH entry note")]
    NoPvhNote,
    /// The PVH entry point is not inside any loaded segment.
    #[error("PVH entry {entry:#x} lies outside every loadable segment")]
    EntryOutsideSegments {
        /// The entry point from the note.
        entry: u64,
    },
    /// The bzImage's boot protocol is older than veil supports.
    #[error("boot protocol {major}.{minor:02} is not supported (need {MIN_BOOT_PROTOCOL:#06x} or later)", major = version >> 8, minor = version & 0xff)]
    UnsupportedProtocol {
        /// The `version` field.
        version: u16,
    },
    /// The bzImage has no 64-bit entry point (`XLF_KERNEL_64` clear).
    #[error("bzImage has no 64-bit entry point (xloadflags {xloadflags:#x})")]
    No64BitEntry {
        /// The `xloadflags` field.
        xloadflags: u16,
    },
    /// The bzImage wants to be loaded at 0x10000 (a zImage): `LOADED_HIGH` is clear.
    #[error("bzImage does not load high (loadflags {loadflags:#x}): zImage is not supported")]
    NotLoadedHigh {
        /// The `loadflags` field.
        loadflags: u8,
    },
    /// linux-loader refused the image veil had accepted.
    #[error("linux-loader refused the image")]
    LinuxLoader(#[source] linux_loader::loader::Error),
    /// linux-loader read the image differently from veil.
    #[error(
        "linux-loader disagrees on {what}: veil read {veil:#x}, linux-loader {linux_loader:#x}"
    )]
    Disagreement {
        /// The value compared.
        what: &'static str,
        /// veil's value.
        veil: u64,
        /// linux-loader's value.
        linux_loader: u64,
    },
    /// The staging copy could not be allocated.
    #[error("cannot allocate a staging copy of {size:#x} bytes")]
    Staging {
        /// Bytes asked for.
        size: u64,
        /// The allocation error.
        #[source]
        source: vm_memory::mmap::FromRangesError,
    },
}

/// The kernel formats veil loads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KernelFormat {
    /// An ELF executable with a PVH entry note: entered in 32-bit protected mode with
    /// `hvm_start_info` in `rbx`.
    PvhElf,
    /// A bzImage: entered at its 64-bit entry with `boot_params` in `rsi`.
    BzImage,
    /// A flat binary of 64-bit code, placed at `load` and entered there in long mode on
    /// identity page tables, with the same `hvm_start_info` as a PVH kernel in `rbx`.
    /// It has no magic number: it is only ever loaded when asked for.
    Flat64 {
        /// The guest-physical address of its first byte, and its entry point (4 KiB
        /// aligned, below 4 GiB).
        load: u64,
    },
    /// An IGVM file, read for one platform ([`plan_igvm`](crate::plan_igvm)). It is a
    /// boot image of its own, not a kernel: its pages and vCPU state come from the file.
    Igvm {
        /// The platform its directives are taken for.
        platform: crate::igvm::IgvmPlatform,
    },
}

/// A flat 64-bit image: its bytes and where they go.
#[derive(Debug, Clone)]
pub struct FlatImage<'a> {
    bytes: &'a [u8],
    range: ByteRange,
}

impl<'a> FlatImage<'a> {
    /// Its bytes.
    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// Where it goes.
    pub fn range(&self) -> ByteRange {
        self.range
    }

    /// Its entry point: its first byte.
    pub fn entry(&self) -> u64 {
        self.range.start().0
    }
}

/// A loadable ELF segment, checked to lie inside the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ElfSegment {
    /// Index of its program header.
    pub index: usize,
    /// Where its file bytes start in the file.
    pub file_offset: u64,
    /// How many bytes come from the file (`p_filesz`).
    pub file_size: u64,
    /// The guest-physical bytes it occupies: `p_paddr` and `p_memsz`. Bytes past
    /// `file_size` are zero.
    pub range: ByteRange,
}

/// A checked ELF kernel with a PVH entry note.
#[derive(Debug, Clone)]
pub struct PvhElf<'a> {
    bytes: &'a [u8],
    segments: Vec<ElfSegment>,
    span: ByteRange,
    entry: u32,
}

impl<'a> PvhElf<'a> {
    /// The loadable segments, in program-header order.
    pub fn segments(&self) -> &[ElfSegment] {
        &self.segments
    }

    /// The smallest range holding every segment.
    pub fn span(&self) -> ByteRange {
        self.span
    }

    /// The 32-bit PVH entry point.
    pub fn entry(&self) -> u64 {
        u64::from(self.entry)
    }

    /// The file bytes of `segment` (checked at parse time to lie inside the file).
    pub fn segment_bytes(&self, segment: &ElfSegment) -> &'a [u8] {
        let start = usize::try_from(segment.file_offset).unwrap_or(usize::MAX);
        let len = usize::try_from(segment.file_size).unwrap_or(usize::MAX);
        start
            .checked_add(len)
            .and_then(|end| self.bytes.get(start..end))
            .unwrap_or(&[])
    }
}

/// A checked bzImage.
#[derive(Debug, Clone)]
pub struct BzImage<'a> {
    file: &'a [u8],
    header: setup_header,
    setup_size: u64,
    payload: &'a [u8],
}

impl<'a> BzImage<'a> {
    /// The setup header as the image declares it; bytes past its declared end are zero.
    pub fn header(&self) -> &setup_header {
        &self.header
    }

    /// The boot protocol version, e.g. `0x020f` for 2.15.
    pub fn version(&self) -> u16 {
        self.header.version
    }

    /// Size of the real-mode setup part (`(setup_sects + 1) * 512`), not loaded for a
    /// 64-bit entry.
    pub fn setup_size(&self) -> u64 {
        self.setup_size
    }

    /// The protected-mode kernel: everything after the setup part, loaded as is.
    pub fn payload(&self) -> &'a [u8] {
        self.payload
    }

    /// The longest command line the kernel accepts, without the terminating NUL.
    pub fn cmdline_max(&self) -> u64 {
        u64::from(self.header.cmdline_size)
    }

    /// Whether the kernel may be loaded at any `kernel_alignment`-aligned address.
    pub fn relocatable(&self) -> bool {
        self.header.relocatable_kernel != 0
    }

    /// The alignment a relocated kernel needs.
    pub fn kernel_alignment(&self) -> u64 {
        u64::from(self.header.kernel_alignment)
    }

    /// The load address the kernel prefers.
    pub fn pref_address(&self) -> u64 {
        self.header.pref_address
    }

    /// The memory the kernel needs from its load address on: `init_size`, or the payload
    /// if that is larger.
    pub fn memory_needed(&self) -> u64 {
        u64::from(self.header.init_size).max(self.payload.len() as u64)
    }

    /// The highest address the initrd may occupy (`initrd_addr_max`, inclusive).
    pub fn initrd_addr_max(&self) -> u64 {
        u64::from(self.header.initrd_addr_max)
    }
}

/// A parsed, checked kernel image.
#[derive(Debug, Clone)]
pub enum KernelImage<'a> {
    /// An ELF kernel with a PVH entry note.
    PvhElf(PvhElf<'a>),
    /// A bzImage.
    BzImage(BzImage<'a>),
    /// A flat 64-bit binary.
    Flat(FlatImage<'a>),
}

/// Copies a plain-data structure out of `bytes` at `offset`, or `None` if it does not fit.
fn read_obj<T: ByteValued + Default>(bytes: &[u8], offset: u64) -> Option<T> {
    let start = usize::try_from(offset).ok()?;
    let end = start.checked_add(size_of::<T>())?;
    let src = bytes.get(start..end)?;
    let mut value = T::default();
    value.as_mut_slice().copy_from_slice(src);
    Some(value)
}

fn truncated(what: &'static str, need: u64, bytes: &[u8]) -> ImageError {
    ImageError::Truncated {
        what,
        need,
        have: bytes.len() as u64,
    }
}

impl<'a> KernelImage<'a> {
    /// Parses `bytes` as whichever format its magic numbers say.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, ImageError> {
        if bytes.starts_with(b"\x7fELF") {
            return Self::parse_elf(bytes);
        }
        if bytes.get(0x202..0x206) == Some(&HDRS.to_le_bytes()[..]) {
            return Self::parse_bzimage(bytes);
        }
        if bytes.starts_with(b"IGVM") {
            return Err(ImageError::Igvm);
        }
        Err(ImageError::UnknownFormat)
    }

    /// Parses `bytes` as `format`.
    pub fn parse_as(bytes: &'a [u8], format: KernelFormat) -> Result<Self, ImageError> {
        match format {
            KernelFormat::PvhElf => Self::parse_elf(bytes),
            KernelFormat::BzImage => Self::parse_bzimage(bytes),
            KernelFormat::Flat64 { load } => Self::parse_flat(bytes, load),
            KernelFormat::Igvm { .. } => Err(ImageError::Igvm),
        }
    }

    /// The image's format.
    pub fn format(&self) -> KernelFormat {
        match self {
            KernelImage::PvhElf(_) => KernelFormat::PvhElf,
            KernelImage::BzImage(_) => KernelFormat::BzImage,
            KernelImage::Flat(f) => KernelFormat::Flat64 {
                load: f.range.start().0,
            },
        }
    }

    /// Takes `bytes` as a flat 64-bit image at `load`: refused if it is empty, if `load`
    /// is not 4 KiB aligned, or if the image does not end below 4 GiB (the identity page
    /// tables' reach, and the start info's 32-bit fields').
    pub fn parse_flat(bytes: &'a [u8], load: u64) -> Result<Self, ImageError> {
        let field = |reason| ImageError::FieldOutOfRange {
            field: "flat image load address",
            value: load,
            reason,
        };
        if bytes.is_empty() {
            return Err(truncated("a flat image", 1, bytes));
        }
        if !load.is_multiple_of(crate::PAGE_SIZE) {
            return Err(field("it is not 4 KiB aligned"));
        }
        let range = ByteRange::new(load, bytes.len() as u64)
            .filter(|r| r.end() <= 1 << 32)
            .ok_or(field("the image does not end below 4 GiB"))?;
        Ok(KernelImage::Flat(FlatImage { bytes, range }))
    }

    /// Parses an ELF kernel with a PVH entry note.
    pub fn parse_elf(bytes: &'a [u8]) -> Result<Self, ImageError> {
        let ehdr_len = size_of::<Elf64_Ehdr>() as u64;
        let ehdr: Elf64_Ehdr =
            read_obj(bytes, 0).ok_or_else(|| truncated("the ELF header", ehdr_len, bytes))?;
        let magic = u32::from_le_bytes([
            ehdr.e_ident[0],
            ehdr.e_ident[1],
            ehdr.e_ident[2],
            ehdr.e_ident[3],
        ]);
        if &ehdr.e_ident[..4] != b"\x7fELF" {
            return Err(ImageError::BadMagic {
                what: "the ELF header",
                found: u64::from(magic),
            });
        }
        let unsupported = |field, value: u64| ImageError::UnsupportedElf { field, value };
        if ehdr.e_ident[4] != ELFCLASS64 {
            return Err(unsupported("class", ehdr.e_ident[4].into()));
        }
        if ehdr.e_ident[5] != ELFDATA2LSB {
            return Err(unsupported("byte order", ehdr.e_ident[5].into()));
        }
        if ehdr.e_type != ET_EXEC {
            return Err(unsupported("type", ehdr.e_type.into()));
        }
        if ehdr.e_machine != EM_X86_64 {
            return Err(unsupported("machine", ehdr.e_machine.into()));
        }
        let phdr_len = size_of::<Elf64_Phdr>() as u64;
        if u64::from(ehdr.e_phentsize) != phdr_len {
            return Err(ImageError::FieldOutOfRange {
                field: "e_phentsize",
                value: ehdr.e_phentsize.into(),
                reason: "must be the size of an ELF64 program header (56)",
            });
        }
        if ehdr.e_phoff < ehdr_len {
            return Err(ImageError::FieldOutOfRange {
                field: "e_phoff",
                value: ehdr.e_phoff,
                reason: "program headers must follow the ELF header",
            });
        }
        if ehdr.e_phnum == 0 {
            return Err(ImageError::NoLoadableSegment);
        }
        let table_end = u64::from(ehdr.e_phnum)
            .checked_mul(phdr_len)
            .and_then(|n| n.checked_add(ehdr.e_phoff))
            .ok_or(ImageError::FieldOutOfRange {
                field: "e_phoff",
                value: ehdr.e_phoff,
                reason: "the program header table wraps the address space",
            })?;
        if table_end > bytes.len() as u64 {
            return Err(truncated("the program header table", table_end, bytes));
        }

        let file_len = bytes.len() as u64;
        let mut segments = Vec::new();
        let mut entry = None;
        for index in 0..usize::from(ehdr.e_phnum) {
            let offset = ehdr.e_phoff + index as u64 * phdr_len;
            let phdr: Elf64_Phdr = read_obj(bytes, offset)
                .ok_or_else(|| truncated("a program header", offset + phdr_len, bytes))?;
            let in_file = phdr
                .p_offset
                .checked_add(phdr.p_filesz)
                .is_some_and(|end| end <= file_len);
            // Only the segments veil reads must lie inside the file.
            if matches!(phdr.p_type, PT_LOAD | PT_NOTE) && !in_file {
                return Err(ImageError::SegmentOutsideFile {
                    index,
                    offset: phdr.p_offset,
                    size: phdr.p_filesz,
                    file_len,
                });
            }
            match phdr.p_type {
                PT_LOAD => {
                    if phdr.p_filesz > phdr.p_memsz {
                        return Err(ImageError::FileSizeExceedsMemSize {
                            index,
                            filesz: phdr.p_filesz,
                            memsz: phdr.p_memsz,
                        });
                    }
                    if phdr.p_paddr.checked_add(phdr.p_memsz).is_none() {
                        return Err(ImageError::SegmentOverflow {
                            index,
                            paddr: phdr.p_paddr,
                            memsz: phdr.p_memsz,
                        });
                    }
                    // An empty segment places nothing; skip it as linux-loader does.
                    if let Some(range) = ByteRange::new(phdr.p_paddr, phdr.p_memsz) {
                        segments.push(ElfSegment {
                            index,
                            file_offset: phdr.p_offset,
                            file_size: phdr.p_filesz,
                            range,
                        });
                    }
                }
                PT_NOTE if entry.is_none() => {
                    entry = find_pvh_entry(bytes, phdr.p_offset, phdr.p_filesz)?;
                }
                _ => {}
            }
        }
        let span = segments
            .iter()
            .map(|s| s.range)
            .reduce(|a, b| a.hull(&b))
            .ok_or(ImageError::NoLoadableSegment)?;
        let entry = entry.ok_or(ImageError::NoPvhNote)?;
        let e = u64::from(entry);
        if !segments.iter().any(|s| {
            s.file_size > 0 && s.range.start().0 <= e && e < s.range.start().0 + s.file_size
        }) {
            return Err(ImageError::EntryOutsideSegments { entry: e });
        }
        Ok(KernelImage::PvhElf(PvhElf {
            bytes,
            segments,
            span,
            entry,
        }))
    }

    /// Parses a bzImage for the 64-bit Linux boot protocol.
    pub fn parse_bzimage(bytes: &'a [u8]) -> Result<Self, ImageError> {
        let header_end = (SETUP_HEADER_OFFSET + size_of::<setup_header>()) as u64;
        // The header's fields up to `xloadflags` (2.12) must be present.
        let mut header: setup_header = read_obj(bytes, SETUP_HEADER_OFFSET as u64)
            .ok_or_else(|| truncated("the setup header", header_end, bytes))?;
        if header.boot_flag != BOOT_FLAG {
            return Err(ImageError::BadMagic {
                what: "boot_flag",
                found: header.boot_flag.into(),
            });
        }
        if header.header != HDRS {
            return Err(ImageError::BadMagic {
                what: "the setup header signature",
                found: header.header.into(),
            });
        }
        if header.version < MIN_BOOT_PROTOCOL {
            return Err(ImageError::UnsupportedProtocol {
                version: header.version,
            });
        }
        if header.loadflags & LOADED_HIGH == 0 {
            return Err(ImageError::NotLoadedHigh {
                loadflags: header.loadflags,
            });
        }
        if header.xloadflags & XLF_KERNEL_64 == 0 {
            return Err(ImageError::No64BitEntry {
                xloadflags: header.xloadflags,
            });
        }
        // The header ends at 0x202 + the byte at 0x201 (the jump's displacement); what
        // follows belongs to the setup code and must not be handed to the kernel.
        let declared_end = 0x202 + u64::from(bytes[0x201]);
        let min_end = 0x238; // through `xloadflags`, which 2.12 defines
        if declared_end < min_end {
            return Err(ImageError::FieldOutOfRange {
                field: "setup header length",
                value: declared_end,
                reason: "a 2.12 header extends at least to 0x238",
            });
        }
        if declared_end < header_end {
            let keep = (declared_end - SETUP_HEADER_OFFSET as u64) as usize;
            header.as_mut_slice()[keep..].fill(0);
        }
        let sects = if header.setup_sects == 0 {
            4
        } else {
            u64::from(header.setup_sects)
        };
        let setup_size = (sects + 1) * 512;
        if declared_end > setup_size {
            return Err(ImageError::FieldOutOfRange {
                field: "setup header length",
                value: declared_end,
                reason: "the header must end inside the setup sectors",
            });
        }
        let file_len = bytes.len() as u64;
        if setup_size >= file_len {
            return Err(truncated(
                "the protected-mode kernel",
                setup_size + 1,
                bytes,
            ));
        }
        // syssize counts 16-byte paragraphs of protected-mode code (32 bits since 2.04).
        let sys_bytes = u64::from(header.syssize) * 16;
        if sys_bytes == 0 {
            return Err(ImageError::FieldOutOfRange {
                field: "syssize",
                value: header.syssize.into(),
                reason: "the protected-mode kernel is empty",
            });
        }
        if setup_size + sys_bytes > file_len {
            return Err(truncated(
                "the protected-mode kernel (syssize)",
                setup_size + sys_bytes,
                bytes,
            ));
        }
        if header.relocatable_kernel != 0
            && (!header.kernel_alignment.is_power_of_two()
                || u64::from(header.kernel_alignment) < PAGE_SIZE)
        {
            return Err(ImageError::FieldOutOfRange {
                field: "kernel_alignment",
                value: header.kernel_alignment.into(),
                reason: "must be a power of two of at least 4 KiB",
            });
        }
        if header.cmdline_size == 0 {
            return Err(ImageError::FieldOutOfRange {
                field: "cmdline_size",
                value: 0,
                reason: "the kernel accepts no command line at all",
            });
        }
        if header.initrd_addr_max == 0 {
            return Err(ImageError::FieldOutOfRange {
                field: "initrd_addr_max",
                value: 0,
                reason: "no address is allowed for the initrd",
            });
        }
        let payload = &bytes[setup_size as usize..];
        Ok(KernelImage::BzImage(BzImage {
            file: bytes,
            header,
            setup_size,
            payload,
        }))
    }

    /// Runs linux-loader's loader for this format over the image into a staging copy in
    /// host memory, and checks that it agrees with veil's reading. `load` is where the
    /// bzImage goes; ELF segments go to their own addresses.
    pub fn cross_check(&self, load: GuestAddress) -> Result<(), ImageError> {
        match self {
            // linux-loader has no reading of a flat image to compare with.
            KernelImage::Flat(_) => Ok(()),
            KernelImage::PvhElf(elf) => {
                // linux-loader copies p_filesz bytes of each segment with file bytes.
                let ranges: Vec<ByteRange> = elf
                    .segments
                    .iter()
                    .filter(|s| s.file_size > 0)
                    .filter_map(|s| ByteRange::new(s.range.start().0, s.file_size))
                    .collect();
                let staging = staging_memory(&ranges)?;
                let result = LlElf::load(&staging, None, &mut Cursor::new(elf.bytes), None)
                    .map_err(ImageError::LinuxLoader)?;
                let found = match result.pvh_boot_cap {
                    PvhBootCapability::PvhEntryPresent(addr) => addr.0,
                    _ => 0,
                };
                agree("the PVH entry point", elf.entry(), found)?;
                let end = elf
                    .segments
                    .iter()
                    .filter(|s| s.file_size > 0)
                    .map(|s| s.range.end())
                    .max()
                    .unwrap_or(0);
                agree("the kernel's end", end, result.kernel_end)?;
                for s in elf.segments.iter().filter(|s| s.file_size > 0) {
                    check_staged(&staging, s.range.start().0, elf.segment_bytes(s))?;
                }
                Ok(())
            }
            KernelImage::BzImage(bz) => {
                let len = bz.payload.len() as u64;
                let range = ByteRange::new(load.0, len).ok_or(ImageError::FieldOutOfRange {
                    field: "load address",
                    value: load.0,
                    reason: "the kernel would wrap the address space",
                })?;
                let staging = staging_memory(&[range])?;
                let result = LlBzImage::load(&staging, Some(load), &mut Cursor::new(bz.file), None)
                    .map_err(ImageError::LinuxLoader)?;
                agree("the load address", load.0, result.kernel_load.0)?;
                agree("the kernel's end", load.0 + len, result.kernel_end)?;
                let theirs = result.setup_header.unwrap_or_default();
                agree(
                    "the boot protocol version",
                    bz.header.version.into(),
                    theirs.version.into(),
                )?;
                agree(
                    "setup_sects",
                    bz.header.setup_sects.into(),
                    theirs.setup_sects.into(),
                )?;
                check_staged(&staging, load.0, bz.payload)
            }
        }
    }
}

fn agree(what: &'static str, veil: u64, linux_loader: u64) -> Result<(), ImageError> {
    if veil == linux_loader {
        Ok(())
    } else {
        Err(ImageError::Disagreement {
            what,
            veil,
            linux_loader,
        })
    }
}

/// Host memory laid out at the guest addresses of `ranges` (page-rounded, merged).
fn staging_memory(ranges: &[ByteRange]) -> Result<GuestMemoryMmap, ImageError> {
    let merged = merge_pages(ranges.iter().copied());
    let size = merged.iter().map(ByteRange::len).sum();
    let regions: Vec<(GuestAddress, usize)> = merged
        .iter()
        .map(|r| (r.start(), r.len() as usize))
        .collect();
    GuestMemoryMmap::from_ranges(&regions).map_err(|source| ImageError::Staging { size, source })
}

/// Checks that the staging copy holds `expected` at `gpa`.
fn check_staged(staging: &GuestMemoryMmap, gpa: u64, expected: &[u8]) -> Result<(), ImageError> {
    let mut buf = vec![0u8; expected.len()];
    let differs = staging.read_slice(&mut buf, GuestAddress(gpa)).is_err() || buf != expected;
    if differs {
        return Err(ImageError::Disagreement {
            what: "the bytes loaded at this address",
            veil: gpa,
            linux_loader: gpa,
        });
    }
    Ok(())
}

/// Looks for the PVH entry note among the notes in `[offset, offset + size)` of `bytes`
/// (already checked to lie inside the file).
fn find_pvh_entry(bytes: &[u8], offset: u64, size: u64) -> Result<Option<u32>, ImageError> {
    let nhdr_len = size_of::<Elf64_Nhdr>() as u64;
    let end = offset + size;
    let mut at = offset;
    while at < end {
        let bad = |reason| ImageError::BadNote { offset: at, reason };
        if end - at < nhdr_len {
            return Err(bad("the note header runs past its segment"));
        }
        let nhdr: Elf64_Nhdr = read_obj(bytes, at).ok_or(bad("the note header is truncated"))?;
        let name_len = align_up(u64::from(nhdr.n_namesz));
        let desc_len = align_up(u64::from(nhdr.n_descsz));
        let name_at = at + nhdr_len;
        let desc_at = name_at + name_len;
        let next = desc_at + desc_len;
        if next > end {
            return Err(bad("the note's name or descriptor runs past its segment"));
        }
        let name = &bytes[name_at as usize..name_at as usize + nhdr.n_namesz as usize];
        if nhdr.n_type == XEN_ELFNOTE_PHYS32_ENTRY && name == b"Xen\0" {
            let desc = &bytes[desc_at as usize..desc_at as usize + nhdr.n_descsz as usize];
            // Linux writes the entry as a pointer-sized value; the PVH ABI makes it a
            // 32-bit physical address, so anything in the upper half is an error.
            let entry = match desc.len() {
                4 => u32::from_le_bytes([desc[0], desc[1], desc[2], desc[3]]),
                8 => {
                    let v = u64::from_le_bytes([
                        desc[0], desc[1], desc[2], desc[3], desc[4], desc[5], desc[6], desc[7],
                    ]);
                    u32::try_from(v).map_err(|_| ImageError::FieldOutOfRange {
                        field: "PVH entry point",
                        value: v,
                        reason: "must be a 32-bit physical address",
                    })?
                }
                _ => return Err(bad("the PVH entry note's descriptor is not 4 or 8 bytes")),
            };
            return Ok(Some(entry));
        }
        at = next;
    }
    Ok(None)
}

/// Rounds a note field length up to the note alignment. Inputs are at most `u32::MAX`, so
/// this never overflows a `u64`.
fn align_up(len: u64) -> u64 {
    len.div_ceil(NOTE_ALIGN) * NOTE_ALIGN
}

#[cfg(test)]
mod tests {
    use super::*;

    fn note(name: &[u8], kind: u32, desc: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&(name.len() as u32).to_le_bytes());
        v.extend_from_slice(&(desc.len() as u32).to_le_bytes());
        v.extend_from_slice(&kind.to_le_bytes());
        v.extend_from_slice(name);
        v.resize(v.len().div_ceil(4) * 4, 0);
        v.extend_from_slice(desc);
        v.resize(v.len().div_ceil(4) * 4, 0);
        v
    }

    fn entry_of(notes: &[u8]) -> Result<Option<u32>, ImageError> {
        find_pvh_entry(notes, 0, notes.len() as u64)
    }

    #[test]
    fn pvh_note_after_other_notes() {
        // Linux's vmlinux: a GNU build-id note, other Xen notes, then PHYS32_ENTRY with a
        // pointer-sized (8-byte) descriptor.
        let mut notes = note(b"GNU\0", 3, &[0xab; 20]);
        notes.extend(note(b"Xen\0", 6, b"linux\0"));
        notes.extend(note(b"Xen\0", 18, &0x100_0a40u64.to_le_bytes()));
        assert_eq!(entry_of(&notes).unwrap(), Some(0x100_0a40));
        // A 4-byte descriptor, as in the PVH test kernel.
        assert_eq!(
            entry_of(&note(b"Xen\0", 18, &0x20_0000u32.to_le_bytes())).unwrap(),
            Some(0x20_0000)
        );
        // The right type under another name is not the PVH note.
        assert_eq!(entry_of(&note(b"Xem\0", 18, &[0; 4])).unwrap(), None);
        assert_eq!(entry_of(&[]).unwrap(), None);
    }

    #[test]
    fn bad_pvh_notes() {
        let high = note(b"Xen\0", 18, &0x1_0000_0000u64.to_le_bytes());
        assert!(matches!(
            entry_of(&high),
            Err(ImageError::FieldOutOfRange {
                field: "PVH entry point",
                value: 0x1_0000_0000,
                ..
            })
        ));
        assert!(matches!(
            entry_of(&note(b"Xen\0", 18, &[1, 2, 3, 4, 5, 6])),
            Err(ImageError::BadNote { .. })
        ));
        let mut short = note(b"Xen\0", 18, &[0; 4]);
        short.truncate(10);
        assert!(matches!(
            entry_of(&short),
            Err(ImageError::BadNote { offset: 0, .. })
        ));
        let mut past = note(b"GNU\0", 3, &[0; 8]);
        past[4..8].copy_from_slice(&64u32.to_le_bytes());
        assert!(matches!(entry_of(&past), Err(ImageError::BadNote { .. })));
    }
}
