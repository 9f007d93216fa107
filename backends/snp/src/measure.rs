// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The launch digest of a plan, computed without a VM by running the launch steps the
//! backend runs ([`init`], [`launch_update`] for every run the loader places,
//! [`launch_finish`]) against [`RecordingFirmware`], with the VMSAs veil's vCPUs get.
//! The loader's own `BootPlan::place` produces the runs and their bytes, as it does for
//! a real launch, so the two cannot drift apart.

use std::collections::BTreeMap;

use veil_vmm::LaunchRun;
use veil_vmm::kvm_bindings::CpuId;
use veil_vmm::veil_loader::vm_memory::GuestAddress;
use veil_vmm::veil_loader::{
    BootPlan, BootSource, ByteRange, GuestRam, LoadError, PageRun, Populate, PopulateError,
    PopulateWay,
};

use crate::boot::{BootPages, add_boot_pages, cpuid_page};
use crate::digest::{hex, page_type};
use crate::launch::{
    SnpConfig, SnpError, TECHNOLOGY, check_igvm, init, launch_finish, launch_update, snp_page_type,
};
use crate::recording::RecordingFirmware;
use crate::vmsa::vmsa_pages;

/// One page of the launch digest, so anyone can recompute it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SnpPage {
    /// The GPA in `PAGE_INFO`.
    pub gpa: u64,
    /// The firmware page type: normal, zero, unmeasured, secrets, cpuid or vmsa.
    pub page_type: &'static str,
    /// The firmware page type's number.
    pub page_type_code: u8,
    /// SHA-384 of the page's 4096 bytes, for normal and VMSA pages (hex).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub contents_sha384: Option<String>,
}

/// The SNP launch digest of a plan and every page it covers.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SnpMeasurement {
    /// `"sev-snp"`.
    pub technology: &'static str,
    /// The launch digest the attestation report's MEASUREMENT would hold (hex).
    pub launch_digest: String,
    /// The guest policy.
    pub policy: u64,
    /// The VMSA features asked of KVM (SNP_ACTIVE not included).
    pub vmsa_features: u64,
    /// The number of vCPUs (VMSAs).
    pub vcpus: u32,
    /// Where the direct boot pages went, when [`measure`] added them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub boot_pages: Option<BootPages>,
    /// Every page in the order the firmware measured it, the VMSAs last.
    pub pages: Vec<SnpPage>,
}

impl SnpMeasurement {
    /// The report as pretty-printed JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }
}

/// Why a plan could not be measured.
#[derive(Debug, thiserror::Error)]
pub enum MeasureError {
    /// Planning or placing the boot image failed (a launch step's error inside).
    #[error("cannot plan or place the boot image")]
    Load(#[from] LoadError),
    /// A launch step refused.
    #[error("the SNP launch refused")]
    Snp(#[from] SnpError),
}

/// Guest memory in a map of pages, as the launch sees it: the loader writes, sealing a
/// run hands its bytes to the launch update.
struct Capture<'a> {
    ram: GuestRam,
    pages: std::cell::RefCell<BTreeMap<u64, Box<[u8; 4096]>>>,
    firmware: Option<&'a RecordingFirmware>,
    sealed: std::cell::RefCell<Vec<(PageRun, Vec<u8>)>>,
}

impl<'a> Capture<'a> {
    fn new(plan: &BootPlan<'_>, firmware: Option<&'a RecordingFirmware>) -> Self {
        Capture {
            ram: plan.ram.clone(),
            pages: Default::default(),
            firmware,
            sealed: Default::default(),
        }
    }
}

impl Populate for Capture<'_> {
    fn way(&self) -> PopulateWay {
        PopulateWay::Launch
    }

    fn ram(&self) -> Result<GuestRam, PopulateError> {
        Ok(self.ram.clone())
    }

    fn prepare(&self, runs: &[PageRun]) -> Result<(), PopulateError> {
        match runs.iter().find(|r| snp_page_type(r.page_type).is_none()) {
            Some(r) => Err(PopulateError::PageType {
                range: r.range,
                page_type: r.page_type,
                way: PopulateWay::Launch,
            }),
            None => Ok(()),
        }
    }

    fn write(&self, gpa: GuestAddress, bytes: &[u8]) -> Result<(), PopulateError> {
        let mut pages = self.pages.borrow_mut();
        let mut at = gpa.0;
        let mut rest = bytes;
        while !rest.is_empty() {
            let page = pages
                .entry(at & !0xfff)
                .or_insert_with(|| Box::new([0; 4096]));
            let off = (at & 0xfff) as usize;
            let n = rest.len().min(4096 - off);
            page[off..off + n].copy_from_slice(&rest[..n]);
            rest = &rest[n..];
            at += n as u64;
        }
        Ok(())
    }

    fn seal(&self, runs: &[PageRun]) -> Result<Vec<ByteRange>, PopulateError> {
        let pages = self.pages.borrow();
        for run in runs {
            let mut bytes = Vec::with_capacity(run.range.len() as usize);
            let mut at = run.range.start().0;
            while at < run.range.end() {
                match pages.get(&at) {
                    Some(p) => bytes.extend_from_slice(&p[..]),
                    None => bytes.extend_from_slice(&[0; 4096]),
                }
                at += 4096;
            }
            let launch_run = LaunchRun {
                range: run.range,
                page_type: run.page_type,
                bytes: &bytes,
            };
            if let Some(firmware) = self.firmware {
                launch_update(firmware, &launch_run, true).map_err(|e| PopulateError::Launch {
                    step: "populate",
                    range: run.range,
                    source: Box::new(e),
                })?;
            }
            self.sealed.borrow_mut().push((*run, bytes));
        }
        Ok(runs.iter().map(|r| r.range).collect())
    }

    fn scrub(&self, _runs: &[PageRun]) -> Result<(), PopulateError> {
        Ok(())
    }
}

/// Every run of `plan` with the bytes a launch update gets for it, in the order the
/// launch issues them: what [`measure_plan`] measures, for a second implementation to
/// recompute.
pub fn placed_runs(plan: &BootPlan<'_>) -> Result<Vec<(PageRun, Vec<u8>)>, MeasureError> {
    let capture = Capture::new(plan, None);
    plan.place(&capture)?;
    Ok(capture.sealed.into_inner())
}

/// The launch digest of `plan` (to which the caller added the boot pages, or not) on
/// `vcpus` vCPUs launched with `config`: the steps [`SnpLaunch`](crate::SnpLaunch) issues,
/// against [`RecordingFirmware`].
pub fn measure_plan(
    plan: &BootPlan<'_>,
    config: &SnpConfig,
    vcpus: u32,
) -> Result<SnpMeasurement, MeasureError> {
    check_igvm(plan, config)?;
    let vmsas = vmsa_pages(&plan.entry, vcpus, config.vmsa_features, config.host_mce);
    let firmware = RecordingFirmware::new(config.vmsa_features, vmsas);
    init(&firmware, config, config.vmsa_features)?;
    plan.place(&Capture::new(plan, Some(&firmware)))?;
    launch_finish(&firmware, config)?;
    Ok(SnpMeasurement {
        technology: TECHNOLOGY,
        launch_digest: firmware.digest().to_hex(),
        policy: config.policy.bits(),
        vmsa_features: config.vmsa_features,
        vcpus: vcpus.max(1),
        boot_pages: None,
        pages: firmware
            .pages()
            .into_iter()
            .map(|p| SnpPage {
                gpa: p.gpa,
                page_type: page_type::name(p.page_type),
                page_type_code: p.page_type,
                contents_sha384: p.contents.map(|c| hex(&c)),
            })
            .collect(),
    })
}

/// A CPUID page for measuring without a host: its contents are not measured (CPUID
/// pages enter the digest by address and type only), so one leaf-0 entry stands in.
pub fn placeholder_cpuid_page() -> Vec<u8> {
    let mut page = vec![0u8; 4096];
    page[0] = 1; // count
    page[16 + 24] = 0xd; // leaf 0's EAX: the highest standard leaf
    page
}

/// `veil measure --snp`: the launch digest of booting `source` in `ram` on `vcpus`
/// vCPUs with `config`, the direct boot pages added as [`SnpLaunch::launch`] adds them
/// (`cpuid`: the table to place, [`placeholder_cpuid_page`] where no host is at hand; it does
/// not change the digest). An IGVM file (`KernelFormat::Igvm`) gets no boot pages: it
/// brings its own, and its VMSA is checked with [`check_igvm`].
///
/// [`SnpLaunch::launch`]: crate::SnpLaunch::launch
pub fn measure(
    source: &BootSource<'_>,
    ram: &GuestRam,
    config: &SnpConfig,
    vcpus: u32,
    cpuid: Option<&CpuId>,
) -> Result<SnpMeasurement, MeasureError> {
    let mut plan = veil_vmm::veil_loader::plan(source, ram)?;
    // An IGVM file brings its own secrets and CPUID pages.
    if plan.igvm.is_some() {
        return measure_plan(&plan, config, vcpus);
    }
    let table = match cpuid {
        Some(c) => cpuid_page(c).map_err(SnpError::from)?,
        None => placeholder_cpuid_page(),
    };
    let pages = add_boot_pages(&mut plan, table).map_err(SnpError::from)?;
    let mut m = measure_plan(&plan, config, vcpus)?;
    m.boot_pages = Some(pages);
    Ok(m)
}
