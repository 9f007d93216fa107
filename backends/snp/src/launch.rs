// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The SNP launch sequence, as Linux 6.12's
//! `Documentation/virt/kvm/x86/amd-memory-encryption.rst` documents it: `KVM_SEV_INIT2`
//! (§ "KVM_SEV_INIT2") before any vCPU, `KVM_SEV_SNP_LAUNCH_START` (§ 18), one
//! `KVM_SEV_SNP_LAUNCH_UPDATE` loop per run of boot data (§ 19), each on memory already
//! private, and `KVM_SEV_SNP_LAUNCH_FINISH` (§ 20), which also measures every vCPU's VMSA.
//!
//! The steps are functions over a [`SevVm`] ([`init`], [`launch_update`],
//! [`launch_finish`]), so the same code runs against KVM (through [`SnpLaunch`], veil's
//! [`Launch`]) and against [`RecordingFirmware`](crate::RecordingFirmware), which is how
//! [`measure`](crate::measure()) computes the digest.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Mutex, MutexGuard, PoisonError};

use veil_vmm::kvm_bindings::{
    KVM_MAX_CPUID_ENTRIES, kvm_sev_init, kvm_sev_snp_launch_finish, kvm_sev_snp_launch_start,
    kvm_sev_snp_launch_update,
};
use veil_vmm::kvm_ioctls::{Kvm, VmFd};
use veil_vmm::veil_loader::{BootPlan, BootSource, ByteRange, IgvmPlatform, PageType};
use veil_vmm::veil_memory::HostSafeMemory;
use veil_vmm::veil_memory::veil_attrs::{Attributes, FrameRange};
use veil_vmm::{Launch, LaunchError, LaunchRun, LaunchVm, Launched, Vm, VmError};

use crate::boot::{BootPages, BootPagesError, add_boot_pages, cpuid_page};
use crate::digest::page_type;
use crate::firmware::SevStatus;
use crate::ioctl::{IoctlError, KvmSev, SevCommand, SevHost, SevVm};
use crate::policy::{PolicyError, SnpPolicy};
use crate::vmsa::{VMSA_GPA, VcpuState};

/// `KVM_X86_SNP_VM`.
pub const KVM_X86_SNP_VM: u32 = 4;
/// The technology's name in veil's errors and reports.
pub const TECHNOLOGY: &str = "sev-snp";
/// The highest GHCB protocol version Linux 6.12 accepts (`GHCB_VERSION_MAX`).
pub const GHCB_VERSION_MAX: u16 = 2;
/// How often a launch update answered `EAGAIN` or `EINTR` is retried before giving up.
pub const RETRIES: u32 = 1000;
const PAGE: u64 = 4096;

/// How an SNP guest is launched.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SnpConfig {
    /// The guest policy (`KVM_SEV_SNP_LAUNCH_START`).
    pub policy: SnpPolicy,
    /// `KVM_SEV_INIT2`'s `vmsa_features`, checked against what KVM accepts; KVM adds
    /// SNP_ACTIVE itself.
    pub vmsa_features: u64,
    /// The highest GHCB protocol version the guest may use (1 or 2).
    pub ghcb_version: u16,
    /// Guest OS visible workarounds (`gosvw`).
    pub gosvw: [u8; 16],
    /// Host data bound into the attestation report (`KVM_SEV_SNP_LAUNCH_FINISH`).
    pub host_data: [u8; 32],
    /// Whether the host's CR4 has MCE set, which KVM copies into every VMSA (true on
    /// every x86-64 Linux host in practice); only the predicted VMSAs depend on it.
    pub host_mce: bool,
}

impl Default for SnpConfig {
    fn default() -> Self {
        SnpConfig {
            policy: SnpPolicy::DEFAULT,
            vmsa_features: 0,
            ghcb_version: GHCB_VERSION_MAX,
            gosvw: [0; 16],
            host_data: [0; 32],
            host_mce: true,
        }
    }
}

/// Why an SNP launch step was refused or failed. Refusals come before any ioctl.
#[derive(Debug, thiserror::Error)]
pub enum SnpError {
    /// The policy is not one KVM accepts.
    #[error("invalid guest policy")]
    Policy(#[from] PolicyError),
    /// VMSA features KVM does not accept.
    #[error(
        "VMSA features {requested:#x} include {unsupported:#x}, which KVM does not accept (it accepts {supported:#x})"
    )]
    VmsaFeatures {
        /// Asked for.
        requested: u64,
        /// What KVM accepts.
        supported: u64,
        /// The difference.
        unsupported: u64,
    },
    /// A GHCB version outside 1..=2.
    #[error("GHCB protocol version {0} is outside 1..=2")]
    GhcbVersion(u16),
    /// The firmware device could not be opened.
    #[error("cannot open {}", crate::ioctl::SEV_DEVICE)]
    OpenFirmware(#[source] std::io::Error),
    /// A step came out of order (an update before LAUNCH_START, say).
    #[error("{step} before {needs}")]
    Order {
        /// The step.
        step: &'static str,
        /// What must come first.
        needs: &'static str,
    },
    /// A page type SNP's LAUNCH_UPDATE does not take from userspace (a vCPU state page:
    /// KVM measures the VMSAs itself).
    #[error("SNP does not populate {page_type} pages ({range})")]
    PageType {
        /// The type.
        page_type: PageType,
        /// The run.
        range: ByteRange,
    },
    /// The run is not page-aligned.
    #[error("{range} is not page-aligned")]
    Misaligned {
        /// The run.
        range: ByteRange,
    },
    /// The run's bytes are not exactly the run.
    #[error("{range} came with {bytes:#x} bytes")]
    LengthMismatch {
        /// The run.
        range: ByteRange,
        /// How many bytes.
        bytes: usize,
    },
    /// The run is not (all) guest memory.
    #[error("{range} is not inside guest memory")]
    OutsideMemory {
        /// The run.
        range: ByteRange,
    },
    /// The run is not private yet: LAUNCH_UPDATE needs KVM_MEMORY_ATTRIBUTE_PRIVATE on
    /// every page beforehand.
    #[error("{range} is not private")]
    NotPrivate {
        /// The run.
        range: ByteRange,
    },
    /// The run is not backed by a guest_memfd, which LAUNCH_UPDATE needs.
    #[error("{range} is not backed by a guest_memfd")]
    NotGuestMemfd {
        /// The run.
        range: ByteRange,
    },
    /// A zero run whose bytes are not all zero: the firmware would zero what the loader
    /// placed.
    #[error("{range} is to be zero pages but holds non-zero bytes")]
    ZeroNotZero {
        /// The run.
        range: ByteRange,
    },
    /// An ioctl failed; [`SnpError::firmware`] names the firmware's status.
    #[error("{step} failed")]
    Ioctl {
        /// The step.
        step: &'static str,
        /// The ioctl's error.
        #[source]
        source: IoctlError,
    },
    /// LAUNCH_UPDATE failed at a page.
    #[error("KVM_SEV_SNP_LAUNCH_UPDATE of the {page_type} page at {gpa:#x} failed")]
    Update {
        /// The first page not done.
        gpa: u64,
        /// The run's type.
        page_type: PageType,
        /// The ioctl's error.
        #[source]
        source: IoctlError,
    },
    /// The firmware refused CPUID entries and wrote the values it accepts back; these
    /// are the table's entries it changed (their index).
    #[error("the firmware refused CPUID entries {entries:?} of the CPUID page at {gpa:#x}")]
    CpuidRefused {
        /// The page.
        gpa: u64,
        /// The indices of the changed `snp_cpuid_fn` entries.
        entries: Vec<usize>,
        /// The ioctl's error.
        #[source]
        source: IoctlError,
    },
    /// KVM returned success without doing a page, so looping would never end.
    #[error("KVM_SEV_SNP_LAUNCH_UPDATE made no progress at {gpa:#x}")]
    NoProgress {
        /// The page.
        gpa: u64,
    },
    /// The boot pages could not be made.
    #[error("cannot make the direct boot pages")]
    BootPages(#[from] BootPagesError),
    /// An IGVM plan made for another platform than SEV-SNP.
    #[error("the IGVM plan was made for {0}, not SEV-SNP")]
    IgvmPlatform(IgvmPlatform),
    /// An IGVM plan without vCPU 0's VMSA.
    #[error("the IGVM plan has no VMSA for vCPU 0")]
    IgvmNoVmsa,
    /// The IGVM file measures its VMSA at another GPA than KVM does.
    #[error(
        "the IGVM file measures its VMSA at {gpa:#x}; KVM measures every VMSA at {VMSA_GPA:#x}"
    )]
    IgvmVmsaGpa {
        /// The file's GPA.
        gpa: u64,
    },
    /// The VMSA KVM would build for vCPU 0 is not the IGVM file's: the file sets state
    /// KVM does not take from userspace (or sets it otherwise).
    #[error(
        "the IGVM file's VMSA differs from the one KVM builds at offset {offset:#x}: the file has {file:#018x}, KVM {kvm:#018x}"
    )]
    IgvmVmsa {
        /// The offset of the first differing 8-byte word.
        offset: usize,
        /// The file's word there.
        file: u64,
        /// KVM's word there.
        kvm: u64,
    },
    /// The IGVM file asks for another guest policy than the launch's.
    #[error(
        "the IGVM file asks for guest policy {file:#x}; the launch is configured with {config:#x}"
    )]
    IgvmPolicy {
        /// The file's policy.
        file: u64,
        /// The configuration's.
        config: u64,
    },
}

impl SnpError {
    /// The firmware's status, if the firmware failed a command.
    pub fn firmware(&self) -> Option<SevStatus> {
        match self {
            SnpError::Ioctl { source, .. }
            | SnpError::Update { source, .. }
            | SnpError::CpuidRefused { source, .. } => {
                Some(source.firmware).filter(|s| !s.is_success())
            }
            _ => None,
        }
    }

    /// The ioctl's errno, if one failed.
    pub fn errno(&self) -> Option<i32> {
        match self {
            SnpError::Ioctl { source, .. }
            | SnpError::Update { source, .. }
            | SnpError::CpuidRefused { source, .. } => Some(source.errno),
            _ => None,
        }
    }
}

/// Checks `config` against what KVM accepts (`supported_features`): before any ioctl.
pub fn check_config(config: &SnpConfig, supported_features: u64) -> Result<(), SnpError> {
    SnpPolicy::new(config.policy.bits())?;
    if !(1..=GHCB_VERSION_MAX).contains(&config.ghcb_version) {
        return Err(SnpError::GhcbVersion(config.ghcb_version));
    }
    let unsupported = config.vmsa_features & !supported_features;
    if unsupported != 0 {
        return Err(SnpError::VmsaFeatures {
            requested: config.vmsa_features,
            supported: supported_features,
            unsupported,
        });
    }
    Ok(())
}

/// `KVM_SEV_INIT2` then `KVM_SEV_SNP_LAUNCH_START`, after [`check_config`].
pub fn init(vm: &dyn SevVm, config: &SnpConfig, supported_features: u64) -> Result<(), SnpError> {
    check_config(config, supported_features)?;
    let mut init = kvm_sev_init {
        vmsa_features: config.vmsa_features,
        ghcb_version: config.ghcb_version,
        ..Default::default()
    };
    vm.command(SevCommand::Init2(&mut init))
        .map_err(|source| SnpError::Ioctl {
            step: "KVM_SEV_INIT2",
            source,
        })?;
    let mut start = kvm_sev_snp_launch_start {
        policy: config.policy.bits(),
        gosvw: config.gosvw,
        ..Default::default()
    };
    vm.command(SevCommand::LaunchStart(&mut start))
        .map_err(|source| SnpError::Ioctl {
            step: "KVM_SEV_SNP_LAUNCH_START",
            source,
        })
}

/// The firmware page type of a veil page type, or `None` where SNP takes no such page
/// from userspace.
pub fn snp_page_type(t: PageType) -> Option<u8> {
    match t {
        PageType::Normal => Some(page_type::NORMAL),
        PageType::Zero => Some(page_type::ZERO),
        PageType::Unmeasured => Some(page_type::UNMEASURED),
        PageType::Secrets => Some(page_type::SECRETS),
        PageType::Cpuid => Some(page_type::CPUID),
        PageType::VcpuState => None,
    }
}

/// What [`launch_update`] checks before its first ioctl: the type, alignment, length,
/// and (for zero runs) that the bytes are zeros. Returns the firmware page type.
pub fn check_run(run: &LaunchRun<'_>) -> Result<u8, SnpError> {
    let range = run.range;
    let t = snp_page_type(run.page_type).ok_or(SnpError::PageType {
        page_type: run.page_type,
        range,
    })?;
    if !range.start().0.is_multiple_of(PAGE) || !range.len().is_multiple_of(PAGE) {
        return Err(SnpError::Misaligned { range });
    }
    if run.bytes.len() as u64 != range.len() {
        return Err(SnpError::LengthMismatch {
            range,
            bytes: run.bytes.len(),
        });
    }
    if run.page_type == PageType::Zero && run.bytes.iter().any(|&b| b != 0) {
        return Err(SnpError::ZeroNotZero { range });
    }
    Ok(t)
}

/// One page, aligned as one: a `[Page]` is its pages' bytes back to back.
#[repr(C, align(4096))]
struct Page([u8; 4096]);

/// A page-aligned copy of `bytes`, zero-padded to whole pages.
fn page_copy(bytes: &[u8]) -> Vec<Page> {
    let mut pages: Vec<Page> = (0..bytes.len().div_ceil(4096))
        .map(|_| Page([0; 4096]))
        .collect();
    for (page, chunk) in pages.iter_mut().zip(bytes.chunks(4096)) {
        page.0[..chunk.len()].copy_from_slice(chunk);
    }
    pages
}

fn page_bytes_mut(pages: &mut [Page]) -> &mut [u8] {
    // SAFETY: `Page` is `repr(C)` and exactly 4096 bytes of `u8` with no padding (its
    // size equals its alignment), so the slice's storage is `len * 4096` initialised
    // bytes; the `&mut` borrow makes this the only reference to them.
    unsafe { std::slice::from_raw_parts_mut(pages.as_mut_ptr().cast::<u8>(), pages.len() * 4096) }
}

/// `KVM_SEV_SNP_LAUNCH_UPDATE` of one run that is already private (`private` says so;
/// the caller checked it), looping as the rst says: KVM advances `gfn_start`, `uaddr`
/// and `len` by the pages done and returns 0, or fails with no progress. `EAGAIN` (which
/// the 6.12 rst lists though no 6.12 path returns it) and `EINTR` are retried with the
/// written-back structure.
pub fn launch_update(vm: &dyn SevVm, run: &LaunchRun<'_>, private: bool) -> Result<(), SnpError> {
    let t = check_run(run)?;
    if !private {
        return Err(SnpError::NotPrivate { range: run.range });
    }
    // KVM reads the source by the page and may write a refused CPUID page back.
    let mut pages = page_copy(run.bytes);
    let source = page_bytes_mut(&mut pages);
    let original: Vec<u8> = if t == page_type::CPUID {
        source.to_vec()
    } else {
        Vec::new()
    };
    let base = source.as_ptr() as u64;
    let mut params = kvm_sev_snp_launch_update {
        gfn_start: run.range.start().0 / PAGE,
        uaddr: base,
        len: run.range.len(),
        type_: t,
        ..Default::default()
    };
    let mut retries = 0;
    while params.len != 0 {
        let before = params.len;
        let gpa = params.gfn_start * PAGE;
        match vm.command(SevCommand::LaunchUpdate {
            params: &mut params,
            source,
        }) {
            Ok(()) if params.len < before => {}
            Ok(()) => return Err(SnpError::NoProgress { gpa }),
            Err(e) if (e.errno == libc::EAGAIN || e.errno == libc::EINTR) && retries < RETRIES => {
                retries += 1;
            }
            Err(source_err)
                if t == page_type::CPUID && source_err.firmware == SevStatus::INVALID_PARAM =>
            {
                let done = (gpa - run.range.start().0) as usize;
                let entries =
                    changed_cpuid_entries(&original[done..done + 4096], &source[done..done + 4096]);
                return Err(SnpError::CpuidRefused {
                    gpa,
                    entries,
                    source: source_err,
                });
            }
            Err(source) => {
                return Err(SnpError::Update {
                    gpa,
                    page_type: run.page_type,
                    source,
                });
            }
        }
    }
    Ok(())
}

/// The indices of the `snp_cpuid_fn` entries (48 bytes each after a 16-byte header)
/// that differ between the page sent and the page the firmware wrote back.
fn changed_cpuid_entries(sent: &[u8], back: &[u8]) -> Vec<usize> {
    (0..64)
        .filter(|i| {
            let r = 16 + i * 48..16 + (i + 1) * 48;
            sent.get(r.clone()) != back.get(r)
        })
        .collect()
}

/// `KVM_SEV_SNP_LAUNCH_FINISH` with `host_data`, no ID block: KVM first measures every
/// vCPU's VMSA, then finishes.
pub fn launch_finish(vm: &dyn SevVm, config: &SnpConfig) -> Result<(), SnpError> {
    let mut finish = kvm_sev_snp_launch_finish {
        host_data: config.host_data,
        ..Default::default()
    };
    vm.command(SevCommand::LaunchFinish(&mut finish))
        .map_err(|source| SnpError::Ioctl {
            step: "KVM_SEV_SNP_LAUNCH_FINISH",
            source,
        })
}

/// Checks an IGVM plan against what an SNP launch on KVM does with it, before any
/// ioctl: made for SEV-SNP, with vCPU 0's VMSA measured where KVM measures VMSAs
/// ([`VMSA_GPA`]), that VMSA exactly the one KVM builds from the entry state the plan
/// gives vCPU 0 (so the launch digest is the one the file was built for), and the
/// file's guest policy, if it names one, the configuration's. Plans of kernels pass.
pub fn check_igvm(plan: &BootPlan<'_>, config: &SnpConfig) -> Result<(), SnpError> {
    let Some(igvm) = &plan.igvm else {
        return Ok(());
    };
    if igvm.platform != IgvmPlatform::SevSnp {
        return Err(SnpError::IgvmPlatform(igvm.platform));
    }
    if let Some(file) = igvm.guest_policy
        && file != config.policy.bits()
    {
        return Err(SnpError::IgvmPolicy {
            file,
            config: config.policy.bits(),
        });
    }
    let vmsa = igvm.vmsa.as_ref().ok_or(SnpError::IgvmNoVmsa)?;
    if vmsa.gpa != VMSA_GPA {
        return Err(SnpError::IgvmVmsaGpa { gpa: vmsa.gpa });
    }
    let kvm = VcpuState::entry(&plan.entry).vmsa(config.vmsa_features, config.host_mce);
    let word = |b: &[u8], at: usize| {
        b.get(at..at + 8)
            .and_then(|w| w.try_into().ok())
            .map(u64::from_le_bytes)
            .unwrap_or(0)
    };
    match (0..kvm.len().max(vmsa.bytes.len()))
        .step_by(8)
        .find(|&at| word(&kvm, at) != word(&vmsa.bytes, at) || vmsa.bytes.len() != kvm.len())
    {
        Some(offset) => Err(SnpError::IgvmVmsa {
            offset,
            file: word(&vmsa.bytes, offset),
            kvm: word(&kvm, offset),
        }),
        None => Ok(()),
    }
}

/// Whether every page of `range` is private in `memory`'s record.
pub fn is_private(memory: &HostSafeMemory, range: ByteRange) -> bool {
    FrameRange::from_gpa(range.start().0, range.len())
        .ok()
        .and_then(|f| memory.attributes().range_is(f, Attributes::PRIVATE).ok())
        .unwrap_or(false)
}

/// Checks `range` against `memory`: inside one region, backed by a guest_memfd, private.
pub fn check_memory(memory: &HostSafeMemory, range: ByteRange) -> Result<(), SnpError> {
    let region = memory
        .regions()
        .iter()
        .find(|r| r.base() <= range.start().0 && range.end() <= r.base() + r.size())
        .ok_or(SnpError::OutsideMemory { range })?;
    if region.guest_memfd().is_none() {
        return Err(SnpError::NotGuestMemfd { range });
    }
    if !is_private(memory, range) {
        return Err(SnpError::NotPrivate { range });
    }
    Ok(())
}

#[derive(Debug, Default)]
struct State {
    firmware: Option<OwnedFd>,
    started: bool,
    finished: bool,
}

/// SEV-SNP as a veil [`Launch`]: an SNP VM, `KVM_SEV_INIT2` and LAUNCH_START in
/// [`init`](Launch::init), veil-vcpu's register setup (KVM builds the VMSAs from it),
/// every run of boot data through LAUNCH_UPDATE with its page type, LAUNCH_FINISH in
/// [`finalize`](Launch::finalize). Conversions at run time are the guest's page-state
/// changes, which KVM forwards as `KVM_HC_MAP_GPA_RANGE`: veil's default routing.
///
/// The host is `H`: [`KvmSev`] for real, [`RecordingFirmware`](crate::RecordingFirmware)
/// in tests.
#[derive(Debug)]
pub struct SnpLaunch<H: SevHost = KvmSev> {
    config: SnpConfig,
    host: H,
    state: Mutex<State>,
}

impl SnpLaunch<KvmSev> {
    /// A launch with `config` on the real host; the configuration is checked here, the
    /// VMSA features when the VM is initialised.
    pub fn new(config: SnpConfig) -> Result<Self, SnpError> {
        SnpLaunch::with_host(config, KvmSev)
    }
}

impl<H: SevHost> SnpLaunch<H> {
    /// A launch with `config` on `host`.
    pub fn with_host(config: SnpConfig, host: H) -> Result<Self, SnpError> {
        check_config(&config, u64::MAX)?;
        Ok(SnpLaunch {
            config,
            host,
            state: Mutex::new(State::default()),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &SnpConfig {
        &self.config
    }

    /// The host it issues its commands to.
    pub fn host(&self) -> &H {
        &self.host
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn step(&self, step: &'static str) -> impl FnOnce(SnpError) -> LaunchError {
        move |e| LaunchError::Step {
            technology: TECHNOLOGY,
            step,
            source: Box::new(e),
        }
    }

    fn with_vm<R>(
        &self,
        vm: &VmFd,
        f: impl FnOnce(&dyn SevVm, &mut State) -> Result<R, SnpError>,
        step: &'static str,
    ) -> Result<R, LaunchError> {
        let mut state = self.lock();
        let firmware = match &state.firmware {
            Some(fd) => fd
                .try_clone()
                .map_err(|e| self.step(step)(SnpError::OpenFirmware(e)))?,
            None => {
                return Err(self.step(step)(SnpError::Order {
                    step,
                    needs: "init (KVM_SEV_INIT2)",
                }));
            }
        };
        let ops = self.host.vm(vm, firmware.as_fd());
        f(ops.as_ref(), &mut state).map_err(self.step(step))
    }

    /// Adds the direct boot pages (secrets, CPUID from `kvm`'s supported CPUID as veil
    /// gives it to the boot vCPU, the cc_blob and its setup_data) to `plan`.
    pub fn prepare_plan(&self, kvm: &Kvm, plan: &mut BootPlan<'_>) -> Result<BootPages, SnpError> {
        let mut cpuid = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(|e| SnpError::Ioctl {
                step: "KVM_GET_SUPPORTED_CPUID",
                source: IoctlError {
                    command: "KVM_GET_SUPPORTED_CPUID",
                    errno: e.errno(),
                    firmware: SevStatus::SUCCESS,
                },
            })?;
        // What the boot vCPU's KVM_SET_CPUID2 gets, so the table and the vCPU agree.
        let _ = veil_vmm::veil_vcpu::x86_64::normalize_cpuid(&mut cpuid, 0);
        Ok(add_boot_pages(plan, cpuid_page(&cpuid)?)?)
    }

    /// Plans `source` for `vm`, adds the direct boot pages, and launches it on `vcpus`
    /// vCPUs ([`Vm::launch_plan`]). An IGVM file (`KernelFormat::Igvm`) brings its own
    /// secrets and CPUID pages: none are added, and [`check_igvm`] runs first.
    pub fn launch(
        &self,
        vm: &Vm,
        source: &BootSource<'_>,
        vcpus: u32,
    ) -> Result<Launched, VmError> {
        let mut plan = vm.plan(source)?;
        let prepared = if plan.igvm.is_some() {
            check_igvm(&plan, &self.config).map_err(|e| (e, "checking the IGVM file"))
        } else {
            self.prepare_plan(vm.kvm(), &mut plan)
                .map(drop)
                .map_err(|e| (e, "adding the direct boot pages"))
        };
        prepared.map_err(|(e, step)| VmError::Launch {
            technology: TECHNOLOGY,
            source: self.step(step)(e),
        })?;
        vm.launch_plan(&plan, vcpus)
    }
}

impl<H: SevHost> Launch for SnpLaunch<H> {
    fn name(&self) -> &'static str {
        TECHNOLOGY
    }

    fn vm_types(&self) -> &[u32] {
        &[KVM_X86_SNP_VM]
    }

    fn init(&self, kvm: &Kvm, vm: &VmFd) -> Result<(), LaunchError> {
        let step = "KVM_SEV_INIT2 and KVM_SEV_SNP_LAUNCH_START";
        let supported = self.host.vmsa_features(kvm).map_err(|source| {
            self.step(step)(SnpError::Ioctl {
                step: "reading the VMSA features KVM accepts",
                source,
            })
        })?;
        // Refused before the firmware device is even opened.
        check_config(&self.config, supported).map_err(self.step(step))?;
        let firmware = self
            .host
            .open_firmware()
            .map_err(|e| self.step(step)(SnpError::OpenFirmware(e)))?;
        self.lock().firmware = Some(firmware);
        self.with_vm(
            vm,
            |ops, state| {
                init(ops, &self.config, supported)?;
                state.started = true;
                Ok(())
            },
            step,
        )
    }

    fn populates(&self) -> bool {
        true
    }

    fn accepts(&self, page_type: PageType) -> bool {
        snp_page_type(page_type).is_some()
    }

    fn populate(&self, vm: &LaunchVm<'_>, run: &LaunchRun<'_>) -> Result<(), LaunchError> {
        let step = "KVM_SEV_SNP_LAUNCH_UPDATE";
        check_run(run).map_err(self.step(step))?;
        check_memory(vm.memory, run.range).map_err(self.step(step))?;
        self.with_vm(
            vm.vm,
            |ops, state| {
                if !state.started || state.finished {
                    return Err(SnpError::Order {
                        step,
                        needs: "KVM_SEV_SNP_LAUNCH_START (and not after LAUNCH_FINISH)",
                    });
                }
                launch_update(ops, run, true)
            },
            step,
        )
    }

    fn finalize(&self, vm: &LaunchVm<'_>) -> Result<(), LaunchError> {
        let step = "KVM_SEV_SNP_LAUNCH_FINISH";
        self.with_vm(
            vm.vm,
            |ops, state| {
                if !state.started || state.finished {
                    return Err(SnpError::Order {
                        step,
                        needs: "KVM_SEV_SNP_LAUNCH_START (once)",
                    });
                }
                launch_finish(ops, &self.config)?;
                state.finished = true;
                Ok(())
            },
            step,
        )
    }
}
