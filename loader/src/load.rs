// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Planning, measuring and placing a boot image.
//!
//! [`plan`] does all the work that needs no guest memory: parse and check the kernel,
//! compute the layout, build every byte of boot data, cross-check with linux-loader and
//! measure. [`BootPlan::place`] then writes the planned objects through a [`Populate`]
//! target. Any error before `place` leaves memory untouched; an error during `place`
//! scrubs what was written.

use std::borrow::Cow;

use linux_loader::bootparam::boot_params;
use serde::{Deserialize, Serialize};
use veil_abi::x86_64::{EntryRegisters, boot_gdt_bytes};
use vm_memory::{ByteValued, GuestAddress};

use crate::igvm::{IgvmError, IgvmPlan};
use crate::image::{ImageError, KernelFormat, KernelImage};
use crate::layout::{Layout, LayoutError};
use crate::measure::MeasurementLog;
use crate::measure::ObjectKind;
use crate::populate::{PageRun, PageType, Populate, PopulateError, PopulateWay, write_zeros};
use crate::ram::{ByteRange, GuestRam, PAGE_SIZE};
use crate::x86::{
    BootDataError, flat64_entry, identity_page_tables, linux_zero_page, linux64_entry, memory_map,
    pvh_entry, pvh_start_info, pvh_start_info_size,
};

/// The longest PVH command line veil places, without its NUL: one page with the NUL.
/// (An ELF kernel does not declare a limit; Linux itself keeps 2048 bytes on x86.)
pub const PVH_CMDLINE_MAX: u64 = 4095;

/// What to boot.
#[derive(Debug, Clone, Copy)]
pub struct BootSource<'a> {
    /// The kernel file's bytes.
    pub kernel: &'a [u8],
    /// The kernel's format, or `None` to tell it from its magic numbers.
    pub format: Option<KernelFormat>,
    /// The initrd's bytes.
    pub initrd: Option<&'a [u8]>,
    /// The kernel command line, without a terminating NUL (for example what
    /// `linux_loader::cmdline::Cmdline::as_cstring` holds).
    pub cmdline: &'a str,
    /// Firmware tables to place with the kernel, if any.
    pub firmware: Option<FirmwareTables<'a>>,
}

/// Firmware tables (ACPI) the VMM built for a fixed guest-physical address: a boot
/// object like the others (placed, measured, made private with them), whose pages the
/// memory map marks as ACPI data rather than RAM, and whose RSDP the kernel is pointed
/// at (`boot_params.acpi_rsdp_addr`, `hvm_start_info.rsdp_paddr`).
///
/// The tables hold absolute addresses (the XSDT points at the others), so they are built
/// for `base` and placed only there.
#[derive(Debug, Clone, Copy)]
pub struct FirmwareTables<'a> {
    /// The guest-physical address of the first byte.
    pub base: u64,
    /// The tables, as they go into guest memory from `base`.
    pub bytes: &'a [u8],
    /// The guest-physical address of the RSDP inside them (16-byte aligned, with its
    /// whole 36 bytes inside `bytes`).
    pub rsdp: u64,
}

/// The length of an ACPI 2.0 RSDP.
pub const RSDP_LEN: u64 = 36;

impl FirmwareTables<'_> {
    /// Where the tables go, checked: not empty, not wrapping, the RSDP inside and aligned.
    pub fn range(&self) -> Result<ByteRange, LoadError> {
        let bad = |reason| LoadError::FirmwareTables {
            base: self.base,
            len: self.bytes.len() as u64,
            rsdp: self.rsdp,
            reason,
        };
        let range = ByteRange::new(self.base, self.bytes.len() as u64)
            .ok_or(bad("the tables are empty or wrap around the address space"))?;
        let rsdp = ByteRange::new(self.rsdp, RSDP_LEN).ok_or(bad("the RSDP wraps"))?;
        if !range.contains(&rsdp) {
            return Err(bad("the RSDP's 36 bytes are not inside the tables"));
        }
        if !self.rsdp.is_multiple_of(16) {
            return Err(bad("the RSDP is not 16-byte aligned"));
        }
        Ok(range)
    }
}

impl<'a> BootSource<'a> {
    /// A kernel with no initrd and an empty command line.
    pub fn new(kernel: &'a [u8]) -> Self {
        BootSource {
            kernel,
            format: None,
            initrd: None,
            cmdline: "",
            firmware: None,
        }
    }

    /// With these firmware tables.
    pub fn firmware(mut self, tables: FirmwareTables<'a>) -> Self {
        self.firmware = Some(tables);
        self
    }

    /// With this initrd.
    pub fn initrd(mut self, initrd: &'a [u8]) -> Self {
        self.initrd = Some(initrd);
        self
    }

    /// With this command line.
    pub fn cmdline(mut self, cmdline: &'a str) -> Self {
        self.cmdline = cmdline;
        self
    }

    /// Insisting on this format.
    pub fn format(mut self, format: KernelFormat) -> Self {
        self.format = Some(format);
        self
    }

    /// A flat binary of 64-bit code to place at `load` and enter there in long mode
    /// ([`KernelFormat::Flat64`]), with no initrd and an empty command line.
    pub fn flat(code: &'a [u8], load: u64) -> Self {
        BootSource::new(code).format(KernelFormat::Flat64 { load })
    }
}

/// Why a boot image could not be planned or placed.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The kernel image was refused.
    #[error("bad kernel image")]
    Image(#[from] ImageError),
    /// The command line is longer than the kernel accepts.
    #[error("command line of {len} bytes is longer than the kernel's limit of {max}")]
    CommandLineTooLong {
        /// Its length without the NUL.
        len: u64,
        /// The limit without the NUL.
        max: u64,
    },
    /// The command line holds a NUL byte, which would cut it short.
    #[error("command line holds a NUL byte at offset {offset}")]
    CommandLineNul {
        /// Where.
        offset: usize,
    },
    /// The firmware tables are malformed.
    #[error("firmware tables of {len:#x} bytes at {base:#x} with the RSDP at {rsdp:#x}: {reason}")]
    FirmwareTables {
        /// Where they were to go.
        base: u64,
        /// Their length.
        len: u64,
        /// The RSDP's address.
        rsdp: u64,
        /// What is wrong.
        reason: &'static str,
    },
    /// No layout could be made.
    #[error("cannot lay out the boot image")]
    Layout(#[from] LayoutError),
    /// Boot data could not be built.
    #[error("cannot build boot data")]
    BootData(#[from] BootDataError),
    /// The plan was made for other RAM than the target has.
    #[error("the plan was made for different RAM than the target's")]
    RamMismatch,
    /// Two objects of different page types share a page, which can be populated as one
    /// type only.
    #[error(
        "the page at {page:#x} holds a {first} page of {first_kind:?} and a {second} page of {second_kind:?}"
    )]
    PageTypeConflict {
        /// The page's address.
        page: u64,
        /// One object's kind.
        first_kind: ObjectKind,
        /// Its page type.
        first: PageType,
        /// The other object's kind.
        second_kind: ObjectKind,
        /// Its page type.
        second: PageType,
    },
    /// The IGVM file was refused.
    #[error("bad IGVM file")]
    Igvm(#[from] IgvmError),
    /// Writing into guest memory failed; what was written has been scrubbed.
    #[error("populating guest memory failed")]
    Populate(#[from] PopulateError),
    /// Writing failed, and scrubbing what was written failed too.
    #[error("populating guest memory failed ({cause}), and scrubbing it failed as well")]
    ScrubFailed {
        /// The first failure.
        cause: PopulateError,
        /// The scrub's failure.
        #[source]
        scrub: PopulateError,
    },
}

/// One object to place: its kind, its exact guest range, its bytes and the page type its
/// pages are populated as. Bytes past `bytes.len()` up to the range's end are zero (an
/// ELF segment's bss).
#[derive(Debug, Clone)]
pub struct PlannedObject<'a> {
    /// What it is.
    pub kind: ObjectKind,
    /// Where it goes.
    pub range: ByteRange,
    /// Its leading bytes.
    pub bytes: Cow<'a, [u8]>,
    /// How its pages are populated ([`PageType::Normal`] for everything veil-loader
    /// plans itself; a launch technology may mark objects otherwise before placing).
    pub page_type: PageType,
}

impl PlannedObject<'_> {
    /// Zero bytes after `bytes` up to the range's end. Objects are built never to exceed
    /// their range; saturating keeps that an invariant rather than a possible panic.
    fn zero_tail(&self) -> u64 {
        self.range.len().saturating_sub(self.bytes.len() as u64)
    }
}

/// Everything decided before guest memory is touched.
#[derive(Debug, Clone)]
pub struct BootPlan<'a> {
    /// The kernel's format.
    pub format: KernelFormat,
    /// The RAM the plan was made for.
    pub ram: GuestRam,
    /// Where everything goes.
    pub layout: Layout,
    /// The vCPU's entry state.
    pub entry: EntryRegisters,
    /// The objects, in placement order.
    pub objects: Vec<PlannedObject<'a>>,
    /// Their measurement.
    pub log: MeasurementLog,
    /// What an IGVM file gave the plan beyond its pages (`None` for a kernel).
    pub igvm: Option<IgvmPlan>,
}

/// What [`BootPlan::place`] did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Populated {
    /// The way the target populated memory.
    pub way: PopulateWay,
    /// The page runs written, with their page types.
    pub runs: Vec<PageRun>,
    /// The ranges that are private now (empty when the way leaves memory shared).
    pub private: Vec<ByteRange>,
}

impl Populated {
    /// The ranges of the page runs written.
    pub fn ranges(&self) -> Vec<ByteRange> {
        crate::populate::ranges_of(&self.runs)
    }
}

/// A loaded boot image: where everything is, how to enter it, what was measured.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// Where everything is.
    pub layout: Layout,
    /// The vCPU's entry state.
    pub entry: EntryRegisters,
    /// The measurement log.
    pub log: MeasurementLog,
    /// How memory was populated.
    pub populated: Populated,
}

/// Plans `source` for a guest with `ram`: parses and checks, lays out, builds boot data,
/// cross-checks with linux-loader and measures. Touches no guest memory.
///
/// An IGVM file ([`KernelFormat::Igvm`]) is planned by [`plan_igvm`](crate::plan_igvm).
pub fn plan<'a>(source: &BootSource<'a>, ram: &GuestRam) -> Result<BootPlan<'a>, LoadError> {
    if let Some(KernelFormat::Igvm { platform }) = source.format {
        return crate::igvm::plan_igvm(source, platform, ram);
    }
    let image = match source.format {
        Some(format) => KernelImage::parse_as(source.kernel, format)?,
        None => KernelImage::parse(source.kernel)?,
    };

    if let Some(offset) = source.cmdline.bytes().position(|b| b == 0) {
        return Err(LoadError::CommandLineNul { offset });
    }
    let max = match &image {
        KernelImage::BzImage(bz) => bz.cmdline_max(),
        KernelImage::PvhElf(_) | KernelImage::Flat(_) => PVH_CMDLINE_MAX,
    };
    let len = source.cmdline.len() as u64;
    if len > max {
        return Err(LoadError::CommandLineTooLong { len, max });
    }
    let mut cmdline = source.cmdline.as_bytes().to_vec();
    cmdline.push(0);

    // An empty initrd is no initrd: nothing placed, no module entry.
    let initrd_len = source.initrd.map(|i| i.len() as u64).filter(|&n| n > 0);
    let firmware = source
        .firmware
        .map(|f| f.range().map(|r| (r, f)))
        .transpose()?;
    let firmware_range = firmware.map(|(r, _)| r);
    let map = memory_map(ram, firmware_range);
    let rsdp = firmware.map(|(_, f)| f.rsdp);
    let boot_params_len = match &image {
        KernelImage::BzImage(_) => size_of::<boot_params>() as u64,
        KernelImage::PvhElf(_) | KernelImage::Flat(_) => {
            pvh_start_info_size(map.len(), initrd_len.is_some())
        }
    };
    let layout = Layout::compute_with(
        &image,
        initrd_len,
        cmdline.len() as u64,
        boot_params_len,
        firmware_range,
        ram,
    )?;
    image.cross_check(GuestAddress(layout.kernel_load))?;

    // PVH kernels and flat images get an `hvm_start_info`.
    let start_info = || {
        pvh_start_info(
            layout.boot_params.start().0,
            layout.cmdline,
            layout.initrd,
            &map,
            rsdp,
        )
    };
    let (boot_params, entry): (Vec<u8>, EntryRegisters) = match &image {
        KernelImage::BzImage(bz) => {
            let params = linux_zero_page(
                bz,
                layout.kernel_load,
                layout.cmdline,
                layout.initrd,
                &map,
                rsdp,
            )?;
            let tables = layout.page_tables.map(|r| r.start().0).unwrap_or_default();
            let entry = linux64_entry(
                layout.kernel_load,
                layout.boot_params.start().0,
                tables,
                layout.gdt.start().0,
            );
            (params.as_slice().to_vec(), entry)
        }
        KernelImage::PvhElf(elf) => (
            start_info(),
            pvh_entry(
                elf.entry(),
                layout.boot_params.start().0,
                layout.gdt.start().0,
            ),
        ),
        KernelImage::Flat(f) => (
            start_info(),
            flat64_entry(
                f.entry(),
                layout.boot_params.start().0,
                layout.page_tables.map(|r| r.start().0).unwrap_or_default(),
                layout.gdt.start().0,
            ),
        ),
    };

    // Each object with its own range, in the order Layout::compute places them.
    let kernel: Vec<PlannedObject<'a>> = match &image {
        KernelImage::PvhElf(elf) => elf
            .segments()
            .iter()
            .map(|s| PlannedObject {
                kind: ObjectKind::KernelSegment,
                range: s.range,
                bytes: Cow::Borrowed(elf.segment_bytes(s)),
                page_type: PageType::Normal,
            })
            .collect(),
        KernelImage::BzImage(bz) => kernel_objects(&layout, bz.payload()),
        KernelImage::Flat(f) => kernel_objects(&layout, f.bytes()),
    };
    let generated = [
        layout
            .initrd
            .zip(source.initrd)
            .map(|(range, bytes)| PlannedObject {
                kind: ObjectKind::Initrd,
                range,
                bytes: Cow::Borrowed(bytes),
                page_type: PageType::Normal,
            }),
        Some(PlannedObject {
            kind: ObjectKind::CommandLine,
            range: layout.cmdline,
            bytes: Cow::Owned(cmdline),
            page_type: PageType::Normal,
        }),
        Some(PlannedObject {
            kind: ObjectKind::BootParams,
            range: layout.boot_params,
            bytes: Cow::Owned(boot_params),
            page_type: PageType::Normal,
        }),
        layout.page_tables.map(|range| PlannedObject {
            kind: ObjectKind::PageTables,
            range,
            bytes: Cow::Owned(identity_page_tables(
                range.start().0,
                range.len() / PAGE_SIZE,
            )),
            page_type: PageType::Normal,
        }),
        Some(PlannedObject {
            kind: ObjectKind::Gdt,
            range: layout.gdt,
            bytes: Cow::Owned(boot_gdt_bytes()),
            page_type: PageType::Normal,
        }),
        firmware.map(|(range, f)| PlannedObject {
            kind: ObjectKind::FirmwareTables,
            range,
            bytes: Cow::Borrowed(f.bytes),
            page_type: PageType::Normal,
        }),
    ];
    let objects: Vec<PlannedObject<'a>> = kernel
        .into_iter()
        .chain(generated.into_iter().flatten())
        .collect();
    debug_assert_eq!(
        objects
            .iter()
            .map(|o| (o.kind, o.range))
            .collect::<Vec<_>>(),
        layout
            .placements
            .iter()
            .map(|p| (p.kind, p.range))
            .collect::<Vec<_>>(),
        "objects pair with the layout's placements"
    );

    let mut log = MeasurementLog::new();
    log.record(ObjectKind::KernelImage, None, source.kernel, 0);
    for o in &objects {
        log.record(o.kind, Some(o.range.start().0), &o.bytes, o.zero_tail());
    }

    Ok(BootPlan {
        format: image.format(),
        ram: ram.clone(),
        layout,
        entry,
        objects,
        log,
        igvm: None,
    })
}

/// The objects of the kernel placements of `layout`, all holding `bytes`.
fn kernel_objects<'a>(layout: &Layout, bytes: &'a [u8]) -> Vec<PlannedObject<'a>> {
    layout
        .placements
        .iter()
        .filter(|p| p.kind == ObjectKind::Kernel)
        .map(|p| PlannedObject {
            kind: p.kind,
            range: p.range,
            bytes: Cow::Borrowed(bytes),
            page_type: PageType::Normal,
        })
        .collect()
}

/// The measurement log of `source` for a guest with `ram`, computed without a VM. It is
/// the log [`load`] produces for the same inputs.
pub fn measure(source: &BootSource<'_>, ram: &GuestRam) -> Result<MeasurementLog, LoadError> {
    Ok(plan(source, ram)?.log)
}

/// Plans `source` for `target`'s RAM and places it.
pub fn load<P: Populate + ?Sized>(
    source: &BootSource<'_>,
    target: &P,
) -> Result<Loaded, LoadError> {
    let ram = target.ram()?;
    plan(source, &ram)?.place(target)
}

impl BootPlan<'_> {
    /// The pages the objects cover, as sorted, disjoint runs of one page type each: touching
    /// pages of the same type merge. Fails if two objects of different types share a page.
    pub fn page_runs(&self) -> Result<Vec<PageRun>, LoadError> {
        let mut pages: Vec<(ByteRange, &PlannedObject<'_>)> = self
            .objects
            .iter()
            .filter_map(|o| Some((o.range.page_aligned()?, o)))
            .collect();
        pages.sort_by_key(|(r, _)| *r);
        let mut out: Vec<(PageRun, &PlannedObject<'_>)> = Vec::new();
        for (range, o) in pages {
            if let Some((last, last_o)) = out.last_mut()
                && range.start().0 <= last.range.end()
            {
                if range.start().0 < last.range.end() && o.page_type != last.page_type {
                    return Err(LoadError::PageTypeConflict {
                        page: range.start().0,
                        first_kind: last_o.kind,
                        first: last.page_type,
                        second_kind: o.kind,
                        second: o.page_type,
                    });
                }
                if o.page_type == last.page_type {
                    let end = last.range.end().max(range.end());
                    if let Some(m) =
                        ByteRange::new(last.range.start().0, end - last.range.start().0)
                    {
                        last.range = m;
                    }
                    *last_o = o;
                    continue;
                }
            }
            out.push((
                PageRun {
                    range,
                    page_type: o.page_type,
                },
                o,
            ));
        }
        Ok(out.into_iter().map(|(r, _)| r).collect())
    }

    /// Writes every object through `target`: prepares the page runs (nothing is written
    /// if that fails), zeroes the parts of the runs no object covers, writes the objects,
    /// and seals the runs. On a failure after the first write, every run is scrubbed.
    pub fn place<P: Populate + ?Sized>(&self, target: &P) -> Result<Loaded, LoadError> {
        if target.ram()? != self.ram {
            return Err(LoadError::RamMismatch);
        }
        let runs = self.page_runs()?;
        target.prepare(&runs)?;
        let written = self
            .write_all(target, &runs)
            .and_then(|()| target.seal(&runs));
        let private = match written {
            Ok(private) => private,
            Err(cause) => {
                return Err(match target.scrub(&runs) {
                    Ok(()) => LoadError::Populate(cause),
                    Err(scrub) => LoadError::ScrubFailed { cause, scrub },
                });
            }
        };
        Ok(Loaded {
            layout: self.layout.clone(),
            entry: self.entry,
            log: self.log.clone(),
            populated: Populated {
                way: target.way(),
                runs,
                private,
            },
        })
    }

    fn write_all<P: Populate + ?Sized>(
        &self,
        target: &P,
        runs: &[PageRun],
    ) -> Result<(), PopulateError> {
        let mut ranges: Vec<ByteRange> = self.objects.iter().map(|o| o.range).collect();
        ranges.sort();
        // Zero what no object covers, so pages that become private hold nothing stale.
        for run in runs.iter().map(|r| &r.range) {
            let mut at = run.start().0;
            for r in ranges.iter().filter(|r| r.overlaps(run)) {
                if let Some(gap) = ByteRange::new(at, r.start().0.saturating_sub(at)) {
                    write_zeros(gap, |gpa, z| target.write(gpa, z))?;
                }
                at = at.max(r.end());
            }
            if let Some(gap) = ByteRange::new(at, run.end().saturating_sub(at)) {
                write_zeros(gap, |gpa, z| target.write(gpa, z))?;
            }
        }
        for o in &self.objects {
            if !o.bytes.is_empty() {
                target.write(o.range.start(), &o.bytes)?;
            }
            let tail = o.zero_tail();
            if let Some(tail) = ByteRange::new(o.range.start().0 + o.bytes.len() as u64, tail) {
                write_zeros(tail, |gpa, z| target.write(gpa, z))?;
            }
        }
        Ok(())
    }
}
