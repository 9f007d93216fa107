// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The MRTD of a plan, computed without a VM by running the launch steps the backend
//! runs ([`init`], [`init_vcpu`], [`init_mem_region`] for every run the loader places,
//! [`finalize`]) against [`RecordingTdx`]. The loader's own `BootPlan::place` produces
//! the runs and their bytes, as for a real launch.

use std::cell::RefCell;
use std::collections::BTreeMap;

use sha2::{Digest as _, Sha384};
use veil_vmm::LaunchRun;
use veil_vmm::kvm_bindings::kvm_cpuid_entry2;
use veil_vmm::veil_loader::vm_memory::GuestAddress;
use veil_vmm::veil_loader::{
    BootPlan, BootSource, ByteRange, GuestRam, IgvmPlatform, LoadError, PageRun, Populate,
    PopulateError, PopulateWay,
};

use crate::ioctl::TdxCapabilities;
use crate::launch::{
    TECHNOLOGY, TdxConfig, TdxError, finalize, init, init_mem_region, init_vcpu, measured,
    vcpu_cpuid,
};
use crate::mrtd::hex;
use crate::recording::RecordingTdx;

/// SHA-384 of `bytes`.
pub fn sha384(bytes: &[u8]) -> [u8; 48] {
    Sha384::digest(bytes).into()
}

/// One page TDH.MEM.PAGE.ADD added.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TdxPage {
    /// Its GPA.
    pub gpa: u64,
    /// Whether its contents were extended into the MRTD (16 TDH.MR.EXTENDs).
    pub measured: bool,
    /// SHA-384 of its 4096 bytes (hex).
    pub contents_sha384: String,
}

/// The MRTD of a plan and every page it covers.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TdxMeasurement {
    /// `"tdx"`.
    pub technology: &'static str,
    /// The MRTD a TD report would hold (hex).
    pub mrtd: String,
    /// The TD attributes asked for (reported beside the MRTD, not in it).
    pub attributes: u64,
    /// XFAM (likewise).
    pub xfam: u64,
    /// Every page in the order it was added.
    pub pages: Vec<TdxPage>,
}

impl TdxMeasurement {
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
    #[error("the TDX launch refused")]
    Tdx(#[from] TdxError),
    /// An IGVM plan made for another platform than TDX (its pages are the ones that
    /// platform's directives place).
    #[error("the IGVM plan was made for {0}, not TDX")]
    IgvmPlatform(IgvmPlatform),
}

struct Capture<'a> {
    ram: GuestRam,
    pages: RefCell<BTreeMap<u64, Box<[u8; 4096]>>>,
    module: Option<(&'a RecordingTdx, u8)>,
    sealed: RefCell<Vec<(PageRun, Vec<u8>)>>,
}

impl Populate for Capture<'_> {
    fn way(&self) -> PopulateWay {
        PopulateWay::Launch
    }

    fn ram(&self) -> Result<GuestRam, PopulateError> {
        Ok(self.ram.clone())
    }

    fn prepare(&self, runs: &[PageRun]) -> Result<(), PopulateError> {
        match runs.iter().find(|r| measured(r.page_type).is_none()) {
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
        let (mut at, mut rest) = (gpa.0, bytes);
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
            if let Some((module, gpaw)) = self.module {
                let r = LaunchRun {
                    range: run.range,
                    page_type: run.page_type,
                    bytes: &bytes,
                };
                init_mem_region(module, 0, &r, true, gpaw).map_err(|e| PopulateError::Launch {
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

impl<'a> Capture<'a> {
    fn new(plan: &BootPlan<'_>, module: Option<(&'a RecordingTdx, u8)>) -> Self {
        Capture {
            ram: plan.ram.clone(),
            pages: Default::default(),
            module,
            sealed: Default::default(),
        }
    }
}

/// Every run of `plan` with the bytes INIT_MEM_REGION gets for it, in launch order.
pub fn placed_runs(plan: &BootPlan<'_>) -> Result<Vec<(PageRun, Vec<u8>)>, MeasureError> {
    let capture = Capture::new(plan, None);
    plan.place(&capture)?;
    Ok(capture.sealed.into_inner())
}

/// The MRTD of launching `plan` with `config`: the steps [`TdxLaunch`](crate::TdxLaunch)
/// issues, against [`RecordingTdx`] (whose capabilities accept exactly `config`; neither
/// they nor the CPUID enter the MRTD).
pub fn measure_plan(
    plan: &BootPlan<'_>,
    config: &TdxConfig,
) -> Result<TdxMeasurement, MeasureError> {
    if let Some(igvm) = &plan.igvm
        && igvm.platform != IgvmPlatform::Tdx
    {
        return Err(MeasureError::IgvmPlatform(igvm.platform));
    }
    let gpaw_leaf = kvm_cpuid_entry2 {
        function: 0x8000_0008,
        eax: u32::MAX,
        ..Default::default()
    };
    let caps = TdxCapabilities {
        supported_attrs: config.attributes,
        supported_xfam: config.xfam,
        cpuid: vec![
            gpaw_leaf,
            kvm_cpuid_entry2 {
                function: 1,
                ecx: u32::MAX,
                ..Default::default()
            },
        ],
        ..Default::default()
    };
    let module = RecordingTdx::new(
        caps,
        vec![
            kvm_cpuid_entry2 {
                function: 0x8000_0008,
                eax: 0x3030,
                ..Default::default()
            },
            kvm_cpuid_entry2 {
                function: 1,
                ..Default::default()
            },
        ],
    );
    let supported = module.supported().map_err(|source| TdxError::Ioctl {
        step: "KVM_GET_SUPPORTED_CPUID",
        source,
    })?;
    init(&module, config, &supported)?;
    init_vcpu(
        &module,
        0,
        &vcpu_cpuid(&supported, 0),
        config.init_rcx.unwrap_or(0),
    )?;
    plan.place(&Capture::new(plan, Some((&module, config.gpaw))))?;
    finalize(&module)?;
    Ok(TdxMeasurement {
        technology: TECHNOLOGY,
        mrtd: hex(&module.mrtd()),
        attributes: config.attributes,
        xfam: config.xfam,
        pages: module
            .pages()
            .into_iter()
            .map(|p| TdxPage {
                gpa: p.gpa,
                measured: p.measured,
                contents_sha384: hex(&p.sha384),
            })
            .collect(),
    })
}

/// `veil measure --tdx`: the MRTD of booting `source` in `ram` with `config`.
pub fn measure(
    source: &BootSource<'_>,
    ram: &GuestRam,
    config: &TdxConfig,
) -> Result<TdxMeasurement, MeasureError> {
    let plan = veil_vmm::veil_loader::plan(source, ram)?;
    measure_plan(&plan, config)
}
