// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! [`RecordingFirmware`]: a stand-in for KVM and the SEV firmware at the ioctl level.
//!
//! It records every call with the structure it was given, answers as Linux 6.12's
//! `arch/x86/kvm/svm/sev.c` does (the same `EINVAL` checks, progress written back into
//! the launch update's structure, `EIO` with the firmware's status when no page was
//! done), and extends a launch digest as the firmware would, one `PAGE_INFO` per page,
//! the VMSAs it was given last at LAUNCH_FINISH. Faults can be scripted: at most so many
//! pages per call, `EAGAIN` a number of times, a firmware failure at a page, a CPUID
//! page refused and corrected.

use std::fs::File;
use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::sync::{Mutex, MutexGuard, PoisonError};

use veil_vmm::kvm_bindings::{kvm_sev_init, kvm_sev_snp_launch_finish, kvm_sev_snp_launch_start};
use veil_vmm::kvm_ioctls::{Kvm, VmFd};

use crate::digest::{LaunchDigest, Sha384Digest, page_type, sha384};
use crate::firmware::SevStatus;
use crate::ioctl::{IoctlError, SevCommand, SevHost, SevVm};
use crate::policy::SnpPolicy;
use crate::vmsa::VMSA_GPA;

/// One launch update as it was issued (the source address as an offset into the buffer
/// the command carried, so records compare across runs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpdateCall {
    /// `gfn_start`.
    pub gfn_start: u64,
    /// `len`.
    pub len: u64,
    /// `type`.
    pub page_type: u8,
    /// `flags`.
    pub flags: u16,
    /// `uaddr` minus the source buffer's start.
    pub source_offset: u64,
}

/// One recorded call.
#[derive(Debug, Clone, PartialEq)]
pub enum Call {
    /// `KVM_GET_DEVICE_ATTR(KVM_X86_SEV_VMSA_FEATURES)` on `/dev/kvm`.
    GetVmsaFeatures,
    /// Opening `/dev/sev`.
    OpenFirmware,
    /// `KVM_SEV_INIT2`.
    Init2(kvm_sev_init),
    /// `KVM_SEV_SNP_LAUNCH_START`.
    LaunchStart(kvm_sev_snp_launch_start),
    /// `KVM_SEV_SNP_LAUNCH_UPDATE`.
    LaunchUpdate(UpdateCall),
    /// `KVM_SEV_SNP_LAUNCH_FINISH`.
    LaunchFinish(kvm_sev_snp_launch_finish),
}

/// One page the firmware measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MeasuredPage {
    /// Its GPA in `PAGE_INFO` (`0xFFFFFFFFF000` for VMSAs).
    pub gpa: u64,
    /// The firmware page type.
    pub page_type: u8,
    /// SHA-384 of its contents, for NORMAL and VMSA pages.
    pub contents: Option<Sha384Digest>,
}

/// Faults to inject.
#[derive(Debug, Clone, Default)]
pub struct Script {
    /// At most this many pages per launch update call (0: no limit).
    pub max_pages_per_call: u64,
    /// Answer this many launch update calls `EAGAIN` first.
    pub eagain: u32,
    /// Fail the page at this GPA with this firmware status.
    pub fail_at: Option<(u64, SevStatus)>,
    /// Refuse CPUID pages with `SEV_RET_INVALID_PARAM`, changing the first entry's EAX.
    pub refuse_cpuid: bool,
}

#[derive(Debug, Default)]
struct Inner {
    calls: Vec<Call>,
    initialised: bool,
    started: bool,
    finished: bool,
    digest: LaunchDigest,
    pages: Vec<MeasuredPage>,
    eagain_left: u32,
}

/// See the module documentation.
#[derive(Debug)]
pub struct RecordingFirmware {
    supported_features: u64,
    vmsas: Vec<Vec<u8>>,
    script: Script,
    inner: Mutex<Inner>,
}

impl RecordingFirmware {
    /// A firmware whose KVM accepts `supported_features` as VMSA features and which
    /// measures `vmsas` (the VMSAs KVM would build, in vCPU order) at LAUNCH_FINISH.
    pub fn new(supported_features: u64, vmsas: Vec<Vec<u8>>) -> Self {
        RecordingFirmware::scripted(supported_features, vmsas, Script::default())
    }

    /// The same, with faults.
    pub fn scripted(supported_features: u64, vmsas: Vec<Vec<u8>>, script: Script) -> Self {
        RecordingFirmware {
            supported_features,
            vmsas,
            inner: Mutex::new(Inner {
                eagain_left: script.eagain,
                ..Inner::default()
            }),
            script,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Every call so far, in order.
    pub fn calls(&self) -> Vec<Call> {
        self.lock().calls.clone()
    }

    /// The launch digest so far.
    pub fn digest(&self) -> LaunchDigest {
        self.lock().digest
    }

    /// The pages measured so far, in order.
    pub fn pages(&self) -> Vec<MeasuredPage> {
        self.lock().pages.clone()
    }

    /// Whether LAUNCH_FINISH succeeded.
    pub fn finished(&self) -> bool {
        self.lock().finished
    }

    /// Carries out `command` as KVM 6.12 and the firmware would.
    pub fn command(&self, command: SevCommand<'_>) -> Result<(), IoctlError> {
        let name = command.name();
        let fail = |errno, firmware| {
            Err(IoctlError {
                command: name,
                errno,
                firmware,
            })
        };
        let einval = || fail(libc::EINVAL, SevStatus::SUCCESS);
        let mut s = self.lock();
        match command {
            SevCommand::Init2(init) => {
                s.calls.push(Call::Init2(*init));
                if s.initialised
                    || init.flags != 0
                    || init.ghcb_version > 2
                    || init.vmsa_features & !self.supported_features != 0
                {
                    return einval();
                }
                s.initialised = true;
                Ok(())
            }
            SevCommand::LaunchStart(start) => {
                s.calls.push(Call::LaunchStart(*start));
                if !s.initialised || s.started || start.flags != 0 {
                    return einval();
                }
                if SnpPolicy::new(start.policy).is_err() {
                    return einval();
                }
                s.started = true;
                Ok(())
            }
            SevCommand::LaunchUpdate { params, source } => {
                let base = source.as_ptr() as u64;
                s.calls.push(Call::LaunchUpdate(UpdateCall {
                    gfn_start: params.gfn_start,
                    len: params.len,
                    page_type: params.type_,
                    flags: params.flags,
                    source_offset: params.uaddr.wrapping_sub(base),
                }));
                let types = [
                    page_type::NORMAL,
                    page_type::ZERO,
                    page_type::UNMEASURED,
                    page_type::SECRETS,
                    page_type::CPUID,
                ];
                if !s.started
                    || s.finished
                    || !params.len.is_multiple_of(4096)
                    || params.flags != 0
                    || !types.contains(&params.type_)
                {
                    return einval();
                }
                if s.eagain_left > 0 {
                    s.eagain_left -= 1;
                    return fail(libc::EAGAIN, SevStatus::SUCCESS);
                }
                let zero = params.type_ == page_type::ZERO;
                let offset = params.uaddr.wrapping_sub(base);
                if !zero && offset.saturating_add(params.len) > source.len() as u64 {
                    return fail(libc::EFAULT, SevStatus::SUCCESS);
                }
                let mut pages = params.len / 4096;
                if self.script.max_pages_per_call > 0 {
                    pages = pages.min(self.script.max_pages_per_call);
                }
                let mut done = 0u64;
                let mut failure = None;
                for i in 0..pages {
                    let gpa = (params.gfn_start + i) * 4096;
                    if let Some((at, status)) = self.script.fail_at
                        && at == gpa
                    {
                        failure = Some(status);
                        break;
                    }
                    let at = (offset + i * 4096) as usize;
                    if params.type_ == page_type::CPUID && self.script.refuse_cpuid {
                        // The firmware corrects the table; KVM copies it back.
                        if let Some(b) = source.get_mut(at + 16 + 24) {
                            *b ^= 0xff;
                        }
                        failure = Some(SevStatus::INVALID_PARAM);
                        break;
                    }
                    let contents =
                        (params.type_ == page_type::NORMAL).then(|| sha384(&source[at..at + 4096]));
                    s.digest.update(params.type_, gpa, contents.as_ref());
                    s.pages.push(MeasuredPage {
                        gpa,
                        page_type: params.type_,
                        contents,
                    });
                    done += 1;
                }
                if done == 0
                    && let Some(status) = failure
                {
                    return fail(libc::EIO, status);
                }
                params.gfn_start += done;
                params.len -= done * 4096;
                if !zero {
                    params.uaddr += done * 4096;
                }
                Ok(())
            }
            SevCommand::LaunchFinish(finish) => {
                s.calls.push(Call::LaunchFinish(*finish));
                if !s.started || s.finished || finish.flags != 0 {
                    return einval();
                }
                for vmsa in &self.vmsas {
                    let contents = sha384(vmsa);
                    s.digest.update(page_type::VMSA, VMSA_GPA, Some(&contents));
                    s.pages.push(MeasuredPage {
                        gpa: VMSA_GPA,
                        page_type: page_type::VMSA,
                        contents: Some(contents),
                    });
                }
                s.finished = true;
                Ok(())
            }
        }
    }
}

impl SevVm for RecordingFirmware {
    fn command(&self, command: SevCommand<'_>) -> Result<(), IoctlError> {
        RecordingFirmware::command(self, command)
    }
}

struct Bound<'a>(&'a RecordingFirmware);

impl SevVm for Bound<'_> {
    fn command(&self, command: SevCommand<'_>) -> Result<(), IoctlError> {
        self.0.command(command)
    }
}

impl SevHost for RecordingFirmware {
    fn vmsa_features(&self, _kvm: &Kvm) -> Result<u64, IoctlError> {
        self.lock().calls.push(Call::GetVmsaFeatures);
        Ok(self.supported_features)
    }

    /// Opens `/dev/null` in place of `/dev/sev`: a descriptor no command reaches.
    fn open_firmware(&self) -> io::Result<OwnedFd> {
        self.lock().calls.push(Call::OpenFirmware);
        Ok(File::open("/dev/null")?.into())
    }

    fn vm<'a>(&'a self, _vm: &'a VmFd, _firmware: BorrowedFd<'a>) -> Box<dyn SevVm + 'a> {
        Box::new(Bound(self))
    }
}
