// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Changing a [`BootPlan`] after [`plan`](crate::plan) made it: objects a launch
//! technology adds for its guest (a page its firmware fills, a table the guest reads,
//! with their own page types), Linux `setup_data` entries linked from the boot
//! parameters, and RAM taken out of the memory map the kernel is given.
//!
//! Each change keeps the plan whole: the new objects get pages no other object uses,
//! the layout lists them, and the measurement log is recomputed, so
//! [`BootPlan::place`] and the log describe the same bytes afterwards.

use std::borrow::Cow;

use linux_loader::bootparam::{E820_MAX_ENTRIES_ZEROPAGE, boot_e820_entry, boot_params};
use vm_memory::ByteValued;

use crate::image::KernelFormat;
use crate::layout::{BOOT_DATA_START, LOW_LIMIT, LayoutError, Placement};
use crate::load::{BootPlan, PlannedObject};
use crate::measure::{MeasurementLog, ObjectKind};
use crate::populate::PageType;
use crate::ram::{ByteRange, PAGE_SIZE};
use crate::x86::E820_RAM;

/// e820 type of reserved memory (`E820_TYPE_RESERVED`, `arch/x86/include/asm/e820/types.h`).
pub const E820_RESERVED: u32 = 2;

/// Size of a Linux `struct setup_data` header: `next` (u64), `type` (u32), `len` (u32)
/// (`arch/x86/include/uapi/asm/bootparam.h`).
pub const SETUP_DATA_HEADER: u64 = 16;

/// One object to add to a plan: what it is, its leading bytes, its size and the page
/// type its pages are populated as.
#[derive(Debug, Clone)]
pub struct ExtraObject<'a> {
    /// What it is.
    pub kind: ObjectKind,
    /// Its leading bytes (the rest of `len` is zero).
    pub bytes: Cow<'a, [u8]>,
    /// Its size in bytes (at least `bytes.len()`, at least one).
    pub len: u64,
    /// How its pages are populated.
    pub page_type: PageType,
}

/// Why a plan could not be changed. The plan is left as it was.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanEditError {
    /// An object's bytes are longer than the object, or it is empty.
    #[error("a {kind:?} object of {len:#x} bytes cannot hold {bytes:#x} bytes")]
    BadObject {
        /// The object.
        kind: ObjectKind,
        /// Its size.
        len: u64,
        /// Its bytes.
        bytes: u64,
    },
    /// No free pages below 4 GiB hold the objects.
    #[error("no room for {size:#x} more bytes of boot data below 4 GiB")]
    NoRoom {
        /// The pages needed.
        size: u64,
    },
    /// The change needs Linux boot parameters (a bzImage), which this plan has not.
    #[error("{what} needs the Linux boot protocol's boot parameters; the kernel is {format:?}")]
    NotLinuxBootProtocol {
        /// The change.
        what: &'static str,
        /// The plan's kernel format.
        format: KernelFormat,
    },
    /// The range to reserve is not RAM the memory map lists.
    #[error("{range} is not RAM in the memory map")]
    NotRam {
        /// The range.
        range: ByteRange,
    },
    /// The memory map would need more entries than the zero page holds.
    #[error("the memory map would need more than {max} entries")]
    MemoryMapFull {
        /// Its capacity.
        max: usize,
    },
    /// The changed layout does not hold together.
    #[error("the changed layout is inconsistent")]
    Layout(#[source] LayoutError),
}

impl<'a> BootPlan<'a> {
    /// Adds `objects`, one after the other and each page-aligned, at the lowest free
    /// pages at or above 4 KiB and below 4 GiB, and returns where each went. The
    /// measurement log is recomputed.
    pub fn add_objects(
        &mut self,
        objects: Vec<ExtraObject<'a>>,
    ) -> Result<Vec<ByteRange>, PlanEditError> {
        let pages = |len: u64| len.div_ceil(PAGE_SIZE).saturating_mul(PAGE_SIZE);
        let mut size = 0u64;
        for o in &objects {
            if o.len == 0 || (o.bytes.len() as u64) > o.len {
                return Err(PlanEditError::BadObject {
                    kind: o.kind,
                    len: o.len,
                    bytes: o.bytes.len() as u64,
                });
            }
            size = size.saturating_add(pages(o.len));
        }
        if objects.is_empty() {
            return Ok(Vec::new());
        }
        let block = self
            .lowest_free(size)
            .ok_or(PlanEditError::NoRoom { size })?;
        let mut at = block.start().0;
        let mut ranges = Vec::with_capacity(objects.len());
        let mut edited = self.clone();
        for o in objects {
            let range = ByteRange::new(at, o.len).ok_or(PlanEditError::NoRoom { size })?;
            at += pages(o.len);
            edited.layout.placements.push(Placement {
                kind: o.kind,
                range,
            });
            edited.objects.push(PlannedObject {
                kind: o.kind,
                range,
                bytes: o.bytes,
                page_type: o.page_type,
            });
            ranges.push(range);
        }
        edited.layout.check().map_err(PlanEditError::Layout)?;
        edited.remeasure();
        *self = edited;
        Ok(ranges)
    }

    /// Adds a Linux `setup_data` entry of `setup_type` holding `payload`, linked at the
    /// head of the list in the boot parameters (`hdr.setup_data`), on a page of its
    /// own. Only for the Linux boot protocol (a bzImage).
    pub fn add_setup_data(
        &mut self,
        setup_type: u32,
        payload: &[u8],
    ) -> Result<ByteRange, PlanEditError> {
        let mut params = self.linux_boot_params("a setup_data entry")?;
        let len = u32::try_from(payload.len()).map_err(|_| PlanEditError::BadObject {
            kind: ObjectKind::SetupData,
            len: u64::from(u32::MAX),
            bytes: payload.len() as u64,
        })?;
        let mut bytes = Vec::with_capacity(SETUP_DATA_HEADER as usize + payload.len());
        bytes.extend_from_slice(&params.hdr.setup_data.to_le_bytes());
        bytes.extend_from_slice(&setup_type.to_le_bytes());
        bytes.extend_from_slice(&len.to_le_bytes());
        bytes.extend_from_slice(payload);
        let total = bytes.len() as u64;
        let mut edited = self.clone();
        let range = edited.add_objects(vec![ExtraObject {
            kind: ObjectKind::SetupData,
            bytes: Cow::Owned(bytes),
            len: total,
            page_type: PageType::Normal,
        }])?[0];
        params.hdr.setup_data = range.start().0;
        edited.set_linux_boot_params(&params);
        *self = edited;
        Ok(range)
    }

    /// Takes the page-aligned `range` out of the RAM the kernel's memory map lists,
    /// marking it reserved, so the kernel never allocates it (a page a technology's
    /// firmware fills, say). Only for the Linux boot protocol (its e820 table).
    pub fn reserve_ram(&mut self, range: ByteRange) -> Result<(), PlanEditError> {
        let mut params = self.linux_boot_params("reserving RAM")?;
        let aligned = range.page_aligned().unwrap_or(range);
        let count = usize::from(params.e820_entries).min(E820_MAX_ENTRIES_ZEROPAGE);
        let old: Vec<boot_e820_entry> = params.e820_table[..count].to_vec();
        let inside = old.iter().any(|e| {
            e.r#type == E820_RAM
                && e.addr <= aligned.start().0
                && aligned.end() <= e.addr.saturating_add(e.size)
        });
        if !inside {
            return Err(PlanEditError::NotRam { range });
        }
        let mut new: Vec<boot_e820_entry> = Vec::with_capacity(old.len() + 2);
        let entry = |addr: u64, end: u64, r#type: u32| boot_e820_entry {
            addr,
            size: end - addr,
            r#type,
        };
        for e in old {
            let end = e.addr.saturating_add(e.size);
            if e.r#type != E820_RAM || end <= aligned.start().0 || aligned.end() <= e.addr {
                new.push(e);
                continue;
            }
            if e.addr < aligned.start().0 {
                new.push(entry(e.addr, aligned.start().0, E820_RAM));
            }
            new.push(entry(
                e.addr.max(aligned.start().0),
                end.min(aligned.end()),
                E820_RESERVED,
            ));
            if aligned.end() < end {
                new.push(entry(aligned.end(), end, E820_RAM));
            }
        }
        if new.len() > E820_MAX_ENTRIES_ZEROPAGE {
            return Err(PlanEditError::MemoryMapFull {
                max: E820_MAX_ENTRIES_ZEROPAGE,
            });
        }
        params.e820_table = [boot_e820_entry::default(); E820_MAX_ENTRIES_ZEROPAGE];
        params.e820_table[..new.len()].copy_from_slice(&new);
        params.e820_entries = new.len() as u8;
        self.set_linux_boot_params(&params);
        self.remeasure();
        Ok(())
    }

    /// The Linux zero page of this plan, for `what`.
    fn linux_boot_params(&self, what: &'static str) -> Result<boot_params, PlanEditError> {
        let refused = PlanEditError::NotLinuxBootProtocol {
            what,
            format: self.format,
        };
        if self.format != KernelFormat::BzImage {
            return Err(refused);
        }
        let object = self
            .objects
            .iter()
            .find(|o| o.kind == ObjectKind::BootParams)
            .ok_or(refused.clone())?;
        let mut params = boot_params::default();
        let dst = params.as_mut_slice();
        if object.bytes.len() < dst.len() {
            return Err(refused);
        }
        dst.copy_from_slice(&object.bytes[..dst.len()]);
        Ok(params)
    }

    fn set_linux_boot_params(&mut self, params: &boot_params) {
        if let Some(o) = self
            .objects
            .iter_mut()
            .find(|o| o.kind == ObjectKind::BootParams)
        {
            o.bytes = Cow::Owned(params.as_slice().to_vec());
        }
    }

    /// Recomputes the measurement log from the objects, keeping its first entry (the
    /// whole kernel file, which the plan no longer holds).
    fn remeasure(&mut self) {
        let mut log = MeasurementLog::new();
        log.entries.extend(self.log.entries.iter().take(1).cloned());
        log.launch_digest = log.replay();
        for o in &self.objects {
            let tail = o.range.len().saturating_sub(o.bytes.len() as u64);
            log.record(o.kind, Some(o.range.start().0), &o.bytes, tail);
        }
        self.log = log;
    }

    /// The lowest page-aligned range of `size` bytes in one RAM range, at or above
    /// 4 KiB and below 4 GiB, that no placement (nor the kernel's reservation) touches.
    fn lowest_free(&self, size: u64) -> Option<ByteRange> {
        let mut taken: Vec<ByteRange> = self
            .layout
            .placements
            .iter()
            .map(|p| p.range)
            .chain(std::iter::once(self.layout.kernel_reserved))
            .filter_map(|r| r.page_aligned())
            .collect();
        taken.sort();
        for r in self.ram.ranges() {
            let top = r.end().min(LOW_LIMIT);
            let mut a = r.start().0.max(BOOT_DATA_START).div_ceil(PAGE_SIZE) * PAGE_SIZE;
            loop {
                let cand = ByteRange::new(a, size)?;
                if cand.end() > top {
                    break;
                }
                match taken
                    .iter()
                    .filter(|t| t.overlaps(&cand))
                    .map(|t| t.end())
                    .max()
                {
                    Some(past) => a = past,
                    None => return Some(cand),
                }
            }
        }
        None
    }
}
