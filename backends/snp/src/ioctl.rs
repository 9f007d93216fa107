// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The ioctl layer: every call veil-snp makes to KVM, behind two small traits so that a
//! recording fake ([`RecordingFirmware`](crate::RecordingFirmware)) can stand in for KVM
//! and the firmware.
//!
//! [`SevHost`] is what the host offers (the VMSA features KVM accepts, the firmware
//! device); [`SevVm`] is one VM's `KVM_MEMORY_ENCRYPT_OP`, one [`SevCommand`] a call,
//! each carrying the kvm-bindings structure KVM reads and writes back. [`KvmSev`] is
//! the real one, through kvm-ioctls' `VmFd::encrypt_op_sev`.

use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};

use veil_vmm::kvm_bindings::{
    KVM_X86_GRP_SEV, KVM_X86_SEV_VMSA_FEATURES, KVMIO, kvm_device_attr, kvm_sev_cmd, kvm_sev_init,
    kvm_sev_snp_launch_finish, kvm_sev_snp_launch_start, kvm_sev_snp_launch_update,
};
use veil_vmm::kvm_ioctls::{Kvm, VmFd};
use vmm_sys_util::ioctl::ioctl_with_ref;

use crate::firmware::SevStatus;

// `KVM_GET_DEVICE_ATTR = _IOW(KVMIO, 0xe2, struct kvm_device_attr)`, issued on /dev/kvm
// (`include/uapi/linux/kvm.h`); kvm-ioctls has it only on device fds.
mod nr {
    use super::{KVMIO, kvm_device_attr};
    vmm_sys_util::ioctl_iow_nr!(KVM_GET_DEVICE_ATTR, KVMIO, 0xe2, kvm_device_attr);
}
use nr::KVM_GET_DEVICE_ATTR;

/// `enum sev_cmd_id` values veil-snp issues (`arch/x86/include/uapi/asm/kvm.h`).
pub mod cmd {
    /// `KVM_SEV_INIT2`.
    pub const INIT2: u32 = 22;
    /// `KVM_SEV_SNP_LAUNCH_START`.
    pub const SNP_LAUNCH_START: u32 = 100;
    /// `KVM_SEV_SNP_LAUNCH_UPDATE`.
    pub const SNP_LAUNCH_UPDATE: u32 = 101;
    /// `KVM_SEV_SNP_LAUNCH_FINISH`.
    pub const SNP_LAUNCH_FINISH: u32 = 102;
}

/// The firmware device every SNP command goes through (`kvm_sev_cmd.sev_fd`).
pub const SEV_DEVICE: &str = "/dev/sev";

/// One `KVM_MEMORY_ENCRYPT_OP` sub-command with the structure it passes. KVM writes
/// progress back into `LaunchUpdate`'s structure (and, for a CPUID page it refused,
/// the corrected page into `source`).
#[derive(Debug)]
pub enum SevCommand<'a> {
    /// `KVM_SEV_INIT2`.
    Init2(&'a mut kvm_sev_init),
    /// `KVM_SEV_SNP_LAUNCH_START`.
    LaunchStart(&'a mut kvm_sev_snp_launch_start),
    /// `KVM_SEV_SNP_LAUNCH_UPDATE`; `params.uaddr` points into `source`.
    LaunchUpdate {
        /// What KVM reads and writes back.
        params: &'a mut kvm_sev_snp_launch_update,
        /// The buffer `params.uaddr` and `params.len` lie in.
        source: &'a mut [u8],
    },
    /// `KVM_SEV_SNP_LAUNCH_FINISH`.
    LaunchFinish(&'a mut kvm_sev_snp_launch_finish),
}

impl SevCommand<'_> {
    /// The `sev_cmd_id`.
    pub fn id(&self) -> u32 {
        match self {
            SevCommand::Init2(_) => cmd::INIT2,
            SevCommand::LaunchStart(_) => cmd::SNP_LAUNCH_START,
            SevCommand::LaunchUpdate { .. } => cmd::SNP_LAUNCH_UPDATE,
            SevCommand::LaunchFinish(_) => cmd::SNP_LAUNCH_FINISH,
        }
    }

    /// The command's name in the KVM API.
    pub fn name(&self) -> &'static str {
        command_name(self.id())
    }

    /// The structure's address, for `kvm_sev_cmd.data`.
    fn data(&mut self) -> u64 {
        match self {
            SevCommand::Init2(p) => std::ptr::from_mut(*p) as u64,
            SevCommand::LaunchStart(p) => std::ptr::from_mut(*p) as u64,
            SevCommand::LaunchUpdate { params, .. } => std::ptr::from_mut(*params) as u64,
            SevCommand::LaunchFinish(p) => std::ptr::from_mut(*p) as u64,
        }
    }
}

/// The KVM API's name of sub-command `id`.
pub fn command_name(id: u32) -> &'static str {
    match id {
        cmd::INIT2 => "KVM_SEV_INIT2",
        cmd::SNP_LAUNCH_START => "KVM_SEV_SNP_LAUNCH_START",
        cmd::SNP_LAUNCH_UPDATE => "KVM_SEV_SNP_LAUNCH_UPDATE",
        cmd::SNP_LAUNCH_FINISH => "KVM_SEV_SNP_LAUNCH_FINISH",
        _ => "KVM_MEMORY_ENCRYPT_OP",
    }
}

/// A failed ioctl: its errno and, for `KVM_MEMORY_ENCRYPT_OP`, the firmware's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{command} failed with errno {errno} ({}), firmware status {firmware}", errno_name(*.errno))]
pub struct IoctlError {
    /// The ioctl or sub-command.
    pub command: &'static str,
    /// The errno.
    pub errno: i32,
    /// `kvm_sev_cmd.error` after the call (`SEV_RET_SUCCESS` when the firmware did not
    /// fail or was not called).
    pub firmware: SevStatus,
}

/// The symbolic name of the errnos KVM returns from these ioctls.
pub fn errno_name(errno: i32) -> &'static str {
    match errno {
        libc::EINVAL => "EINVAL",
        libc::EIO => "EIO",
        libc::EFAULT => "EFAULT",
        libc::ENOTTY => "ENOTTY",
        libc::EBUSY => "EBUSY",
        libc::EAGAIN => "EAGAIN",
        libc::EINTR => "EINTR",
        libc::ENXIO => "ENXIO",
        libc::EPERM => "EPERM",
        libc::ENOMEM => "ENOMEM",
        _ => "errno",
    }
}

/// One VM's `KVM_MEMORY_ENCRYPT_OP`.
pub trait SevVm {
    /// Issues `command`; on failure, the errno and the firmware's status.
    fn command(&self, command: SevCommand<'_>) -> Result<(), IoctlError>;
}

/// What the host offers an SNP launch: the VMSA features KVM accepts, the firmware
/// device, and each VM's commands.
pub trait SevHost: Send + Sync {
    /// The `KVM_SEV_INIT2` `vmsa_features` KVM accepts (`KVM_GET_DEVICE_ATTR` on
    /// `/dev/kvm`, group `KVM_X86_GRP_SEV`, attribute `KVM_X86_SEV_VMSA_FEATURES`).
    fn vmsa_features(&self, kvm: &Kvm) -> Result<u64, IoctlError>;

    /// Opens the firmware device ([`SEV_DEVICE`]), whose descriptor every command
    /// carries.
    fn open_firmware(&self) -> io::Result<OwnedFd>;

    /// The commands of `vm`, carrying `firmware` as `sev_fd`.
    fn vm<'a>(&'a self, vm: &'a VmFd, firmware: BorrowedFd<'a>) -> Box<dyn SevVm + 'a>;
}

/// The real host: kvm-ioctls on `/dev/kvm` and the VM, `/dev/sev` for the firmware.
#[derive(Debug, Clone, Copy, Default)]
pub struct KvmSev;

impl SevHost for KvmSev {
    fn vmsa_features(&self, kvm: &Kvm) -> Result<u64, IoctlError> {
        let mut features = 0u64;
        let attr = kvm_device_attr {
            flags: 0,
            group: KVM_X86_GRP_SEV,
            attr: u64::from(KVM_X86_SEV_VMSA_FEATURES),
            addr: std::ptr::from_mut(&mut features) as u64,
        };
        // SAFETY: `attr` is a valid `kvm_device_attr` for the duration of the call, and
        // `addr` points at the live `u64` the kernel writes this attribute's 8 bytes to.
        let ret = unsafe { ioctl_with_ref(kvm, KVM_GET_DEVICE_ATTR(), &attr) };
        if ret < 0 {
            return Err(IoctlError {
                command: "KVM_GET_DEVICE_ATTR(KVM_X86_SEV_VMSA_FEATURES)",
                errno: io::Error::last_os_error().raw_os_error().unwrap_or(0),
                firmware: SevStatus::SUCCESS,
            });
        }
        Ok(features)
    }

    fn open_firmware(&self) -> io::Result<OwnedFd> {
        Ok(OpenOptions::new()
            .read(true)
            .write(true)
            .open(SEV_DEVICE)?
            .into())
    }

    fn vm<'a>(&'a self, vm: &'a VmFd, firmware: BorrowedFd<'a>) -> Box<dyn SevVm + 'a> {
        Box::new(KvmSevVm { vm, firmware })
    }
}

struct KvmSevVm<'a> {
    vm: &'a VmFd,
    firmware: BorrowedFd<'a>,
}

impl SevVm for KvmSevVm<'_> {
    fn command(&self, mut command: SevCommand<'_>) -> Result<(), IoctlError> {
        let name = command.name();
        // KVM reads `len` bytes at `uaddr` and may write a refused CPUID page back
        // there: both must lie in the mutable buffer the command carries.
        if let SevCommand::LaunchUpdate { params, source } = &command {
            let start = source.as_ptr() as u64;
            let inside = params.uaddr >= start
                && params
                    .uaddr
                    .checked_add(params.len)
                    .is_some_and(|end| end <= start + source.len() as u64);
            if !inside {
                return Err(IoctlError {
                    command: name,
                    errno: libc::EFAULT,
                    firmware: SevStatus::SUCCESS,
                });
            }
        }
        let mut sev = kvm_sev_cmd {
            id: command.id(),
            data: command.data(),
            sev_fd: self.firmware.as_raw_fd() as u32,
            ..Default::default()
        };
        // `data` points at the structure `command` borrows mutably for this call, the
        // size KVM copies for this id; a launch update's source range was checked above.
        self.vm.encrypt_op_sev(&mut sev).map_err(|e| IoctlError {
            command: name,
            errno: e.errno(),
            firmware: SevStatus(sev.error),
        })
    }
}
