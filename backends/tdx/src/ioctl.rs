// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The ioctl layer: the TDX structures of Linux's uAPI (kvm-bindings 0.14 has none of
//! them), every call veil-tdx makes as a [`TdxCommand`], and [`TdxHost`]/[`TdxVm`], the
//! two small traits the real host ([`KvmTdx`]) and the recording fake
//! ([`RecordingTdx`](crate::RecordingTdx)) implement.
//!
//! Layouts are Linux 7.2's `arch/x86/include/uapi/asm/kvm.h` (`struct kvm_tdx_cmd`,
//! `kvm_tdx_capabilities`, `kvm_tdx_init_vm`, `kvm_tdx_init_mem_region`).

use std::os::raw::c_ulong;

use veil_vmm::kvm_bindings::{
    CpuId, KVM_CAP_SPLIT_IRQCHIP, KVM_MAX_CPUID_ENTRIES, KVMIO, kvm_cpuid_entry2, kvm_enable_cap,
};
use veil_vmm::kvm_ioctls::{Kvm, VcpuFd, VmFd};
use vmm_sys_util::ioctl::ioctl_with_mut_ref;

mod nr {
    use super::{KVMIO, c_ulong};
    vmm_sys_util::ioctl_iowr_nr!(KVM_MEMORY_ENCRYPT_OP, KVMIO, 0xba, c_ulong);
}

/// `enum kvm_tdx_cmd_id`.
pub mod cmd {
    /// `KVM_TDX_CAPABILITIES`.
    pub const CAPABILITIES: u32 = 0;
    /// `KVM_TDX_INIT_VM`.
    pub const INIT_VM: u32 = 1;
    /// `KVM_TDX_INIT_VCPU`.
    pub const INIT_VCPU: u32 = 2;
    /// `KVM_TDX_INIT_MEM_REGION`.
    pub const INIT_MEM_REGION: u32 = 3;
    /// `KVM_TDX_FINALIZE_VM`.
    pub const FINALIZE_VM: u32 = 4;
}

/// `KVM_TDX_MEASURE_MEMORY_REGION`: `kvm_tdx_cmd.flags` of a measured INIT_MEM_REGION.
pub const KVM_TDX_MEASURE_MEMORY_REGION: u32 = 1 << 0;
/// The `ioapic` pins `KVM_CAP_SPLIT_IRQCHIP` is enabled with (as QEMU does).
pub const SPLIT_IRQCHIP_PINS: u64 = 24;

/// `struct kvm_tdx_cmd`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct KvmTdxCmd {
    /// `enum kvm_tdx_cmd_id`.
    pub id: u32,
    /// Sub-command flags.
    pub flags: u32,
    /// An immediate or a pointer.
    pub data: u64,
    /// The SEAMCALL status, out; must be 0 in.
    pub hw_error: u64,
}

/// `struct kvm_tdx_init_mem_region`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct KvmTdxInitMemRegion {
    /// The source buffer.
    pub source_addr: u64,
    /// The first page's GPA.
    pub gpa: u64,
    /// How many 4 KiB pages.
    pub nr_pages: u64,
}

const _: () = assert!(size_of::<KvmTdxCmd>() == 24);
const _: () = assert!(size_of::<KvmTdxInitMemRegion>() == 24);
const _: () = assert!(size_of::<kvm_cpuid_entry2>() == 40);

/// Offset of `cpuid` in `struct kvm_tdx_capabilities` (six u64 and `reserved[250]`).
pub const CAPABILITIES_CPUID_OFFSET: usize = 2048;
/// Offset of `cpuid` in `struct kvm_tdx_init_vm` (KVM asserts 256).
pub const INIT_VM_CPUID_OFFSET: usize = 256;

/// What `KVM_TDX_CAPABILITIES` reports.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TdxCapabilities {
    /// TD attributes KVM and the module accept.
    pub supported_attrs: u64,
    /// XFAM bits they accept.
    pub supported_xfam: u64,
    /// TDVMCALLs (GetTdVmCallInfo leaf 1, R11) KVM itself handles.
    pub kernel_tdvmcallinfo_1_r11: u64,
    /// The ones it forwards to userspace.
    pub user_tdvmcallinfo_1_r11: u64,
    /// As above, R12.
    pub kernel_tdvmcallinfo_1_r12: u64,
    /// As above, R12.
    pub user_tdvmcallinfo_1_r12: u64,
    /// The configurable CPUID leaves, each with the bits that may be set.
    pub cpuid: Vec<kvm_cpuid_entry2>,
}

/// What `KVM_TDX_INIT_VM` passes (the TD_PARAMS userspace chooses).
#[derive(Debug, Clone, PartialEq)]
pub struct TdxInitVm {
    /// TD attributes.
    pub attributes: u64,
    /// XFAM.
    pub xfam: u64,
    /// MRCONFIGID (SHA-384 size).
    pub mrconfigid: [u8; 48],
    /// MROWNER.
    pub mrowner: [u8; 48],
    /// MROWNERCONFIG.
    pub mrownerconfig: [u8; 48],
    /// The TD's CPUID configuration.
    pub cpuid: Vec<kvm_cpuid_entry2>,
}

/// Failed ioctl: errno and the TDX module's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{command} failed with errno {errno}, TDX module status {hw_error:#x}")]
pub struct IoctlError {
    /// The ioctl or sub-command.
    pub command: &'static str,
    /// The errno.
    pub errno: i32,
    /// `kvm_tdx_cmd.hw_error` after the call (0 when none).
    pub hw_error: u64,
}

/// One call veil-tdx makes, with what it passes.
#[derive(Debug)]
pub enum TdxCommand<'a> {
    /// `KVM_ENABLE_CAP(KVM_CAP_SPLIT_IRQCHIP, 24)`: TDX vCPUs need the split irqchip.
    EnableSplitIrqchip,
    /// `KVM_TDX_CAPABILITIES` with room for `room` CPUID entries.
    Capabilities {
        /// Filled in.
        caps: &'a mut TdxCapabilities,
        /// `cpuid.nent` in.
        room: u32,
    },
    /// `KVM_TDX_INIT_VM`.
    InitVm(&'a TdxInitVm),
    /// `KVM_SET_CPUID2` on vCPU `vcpu`.
    SetCpuid {
        /// The vCPU id.
        vcpu: u32,
        /// The table.
        cpuid: &'a CpuId,
    },
    /// `KVM_TDX_INIT_VCPU` on vCPU `vcpu` with the initial RCX.
    InitVcpu {
        /// The vCPU id.
        vcpu: u32,
        /// The initial RCX.
        rcx: u64,
    },
    /// `KVM_TDX_INIT_MEM_REGION` on vCPU `vcpu`; `region.source_addr` points into
    /// `source`; KVM writes progress back into `region`.
    InitMemRegion {
        /// The vCPU id.
        vcpu: u32,
        /// In and out.
        region: &'a mut KvmTdxInitMemRegion,
        /// `KVM_TDX_MEASURE_MEMORY_REGION` or not.
        measure: bool,
        /// The buffer the source lies in.
        source: &'a [u8],
    },
    /// `KVM_TDX_FINALIZE_VM`.
    FinalizeVm,
}

impl TdxCommand<'_> {
    /// The command's name in the KVM API.
    pub fn name(&self) -> &'static str {
        match self {
            TdxCommand::EnableSplitIrqchip => "KVM_ENABLE_CAP(KVM_CAP_SPLIT_IRQCHIP)",
            TdxCommand::Capabilities { .. } => "KVM_TDX_CAPABILITIES",
            TdxCommand::InitVm(_) => "KVM_TDX_INIT_VM",
            TdxCommand::SetCpuid { .. } => "KVM_SET_CPUID2",
            TdxCommand::InitVcpu { .. } => "KVM_TDX_INIT_VCPU",
            TdxCommand::InitMemRegion { .. } => "KVM_TDX_INIT_MEM_REGION",
            TdxCommand::FinalizeVm => "KVM_TDX_FINALIZE_VM",
        }
    }
}

/// One VM's TDX calls.
pub trait TdxVm {
    /// Issues `command`.
    fn command(&self, command: TdxCommand<'_>) -> Result<(), IoctlError>;
}

/// What the host offers a TDX launch.
pub trait TdxHost: Send + Sync {
    /// `KVM_GET_SUPPORTED_CPUID`.
    fn supported_cpuid(&self, kvm: &Kvm) -> Result<CpuId, IoctlError>;

    /// The calls of `vm`, whose vCPUs (by id) are `vcpus`.
    fn vm<'a>(&'a self, vm: &'a VmFd, vcpus: Vec<(u32, &'a VcpuFd)>) -> Box<dyn TdxVm + 'a>;
}

/// The real host: kvm-ioctls on the VM and vCPUs.
#[derive(Debug, Clone, Copy, Default)]
pub struct KvmTdx;

impl TdxHost for KvmTdx {
    fn supported_cpuid(&self, kvm: &Kvm) -> Result<CpuId, IoctlError> {
        kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(|e| IoctlError {
                command: "KVM_GET_SUPPORTED_CPUID",
                errno: e.errno(),
                hw_error: 0,
            })
    }

    fn vm<'a>(&'a self, vm: &'a VmFd, vcpus: Vec<(u32, &'a VcpuFd)>) -> Box<dyn TdxVm + 'a> {
        Box::new(KvmTdxVm { vm, vcpus })
    }
}

struct KvmTdxVm<'a> {
    vm: &'a VmFd,
    vcpus: Vec<(u32, &'a VcpuFd)>,
}

/// `entries` as `struct kvm_cpuid2` after `at` bytes of `buf`: `nent`, padding, entries.
fn put_cpuid(buf: &mut [u8], at: usize, entries: &[kvm_cpuid_entry2]) {
    buf[at..at + 4].copy_from_slice(&(entries.len() as u32).to_le_bytes());
    for (i, e) in entries.iter().enumerate() {
        let o = at + 8 + i * 40;
        for (j, v) in [e.function, e.index, e.flags, e.eax, e.ebx, e.ecx, e.edx]
            .into_iter()
            .enumerate()
        {
            buf[o + 4 * j..o + 4 * j + 4].copy_from_slice(&v.to_le_bytes());
        }
    }
}

fn get_cpuid(buf: &[u8], at: usize, room: usize) -> Vec<kvm_cpuid_entry2> {
    let u32_at = |o: usize| u32::from_le_bytes([buf[o], buf[o + 1], buf[o + 2], buf[o + 3]]);
    let n = (u32_at(at) as usize).min(room);
    (0..n)
        .map(|i| {
            let o = at + 8 + i * 40;
            kvm_cpuid_entry2 {
                function: u32_at(o),
                index: u32_at(o + 4),
                flags: u32_at(o + 8),
                eax: u32_at(o + 12),
                ebx: u32_at(o + 16),
                ecx: u32_at(o + 20),
                edx: u32_at(o + 24),
                ..Default::default()
            }
        })
        .collect()
}

fn u64_at(buf: &[u8], o: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&buf[o..o + 8]);
    u64::from_le_bytes(b)
}

/// A zeroed buffer of `len` bytes, 8-byte aligned as the kernel's structures are.
fn aligned(len: usize) -> Vec<u64> {
    vec![0u64; len.div_ceil(8)]
}

fn bytes_mut(words: &mut [u64]) -> &mut [u8] {
    // SAFETY: `u64` has no padding and every bit pattern of its bytes is a valid `u8`;
    // the slice covers exactly the vector's initialised storage, borrowed mutably.
    unsafe { std::slice::from_raw_parts_mut(words.as_mut_ptr().cast::<u8>(), words.len() * 8) }
}

impl KvmTdxVm<'_> {
    fn vm_op(&self, name: &'static str, id: u32, data: u64) -> Result<(), IoctlError> {
        let mut c = KvmTdxCmd {
            id,
            data,
            ..Default::default()
        };
        // SAFETY: `c` is a `struct kvm_tdx_cmd` KVM reads and writes back; `data` is 0
        // or points at a live buffer laid out as this sub-command's structure, large
        // enough for what KVM copies (its `cpuid.nent` entries).
        unsafe { self.vm.encrypt_op(&mut c) }.map_err(|e| IoctlError {
            command: name,
            errno: e.errno(),
            hw_error: c.hw_error,
        })
    }

    fn vcpu(&self, id: u32, name: &'static str) -> Result<&VcpuFd, IoctlError> {
        self.vcpus
            .iter()
            .find(|(i, _)| *i == id)
            .map(|(_, v)| *v)
            .ok_or(IoctlError {
                command: name,
                errno: libc::ENOENT,
                hw_error: 0,
            })
    }

    fn vcpu_op(
        &self,
        vcpu: &VcpuFd,
        name: &'static str,
        c: &mut KvmTdxCmd,
    ) -> Result<(), IoctlError> {
        // SAFETY: `c` is a valid `struct kvm_tdx_cmd`; its `data` is an immediate or
        // points at a live `kvm_tdx_init_mem_region` whose source range the caller
        // checked lies in a live buffer.
        let ret = unsafe { ioctl_with_mut_ref(vcpu, nr::KVM_MEMORY_ENCRYPT_OP(), c) };
        if ret < 0 {
            return Err(IoctlError {
                command: name,
                errno: std::io::Error::last_os_error().raw_os_error().unwrap_or(0),
                hw_error: c.hw_error,
            });
        }
        Ok(())
    }
}

impl TdxVm for KvmTdxVm<'_> {
    fn command(&self, command: TdxCommand<'_>) -> Result<(), IoctlError> {
        let name = command.name();
        match command {
            TdxCommand::EnableSplitIrqchip => {
                let mut cap = kvm_enable_cap {
                    cap: KVM_CAP_SPLIT_IRQCHIP,
                    ..Default::default()
                };
                cap.args[0] = SPLIT_IRQCHIP_PINS;
                self.vm.enable_cap(&cap).map_err(|e| IoctlError {
                    command: name,
                    errno: e.errno(),
                    hw_error: 0,
                })
            }
            TdxCommand::Capabilities { caps, room } => {
                let mut words = aligned(CAPABILITIES_CPUID_OFFSET + 8 + room as usize * 40);
                let buf = bytes_mut(&mut words);
                buf[CAPABILITIES_CPUID_OFFSET..CAPABILITIES_CPUID_OFFSET + 4]
                    .copy_from_slice(&room.to_le_bytes());
                self.vm_op(name, cmd::CAPABILITIES, buf.as_mut_ptr() as u64)?;
                *caps = TdxCapabilities {
                    supported_attrs: u64_at(buf, 0),
                    supported_xfam: u64_at(buf, 8),
                    kernel_tdvmcallinfo_1_r11: u64_at(buf, 16),
                    user_tdvmcallinfo_1_r11: u64_at(buf, 24),
                    kernel_tdvmcallinfo_1_r12: u64_at(buf, 32),
                    user_tdvmcallinfo_1_r12: u64_at(buf, 40),
                    cpuid: get_cpuid(buf, CAPABILITIES_CPUID_OFFSET, room as usize),
                };
                Ok(())
            }
            TdxCommand::InitVm(init) => {
                let mut words = aligned(INIT_VM_CPUID_OFFSET + 8 + init.cpuid.len() * 40);
                let buf = bytes_mut(&mut words);
                buf[0..8].copy_from_slice(&init.attributes.to_le_bytes());
                buf[8..16].copy_from_slice(&init.xfam.to_le_bytes());
                buf[16..64].copy_from_slice(&init.mrconfigid);
                buf[64..112].copy_from_slice(&init.mrowner);
                buf[112..160].copy_from_slice(&init.mrownerconfig);
                put_cpuid(buf, INIT_VM_CPUID_OFFSET, &init.cpuid);
                self.vm_op(name, cmd::INIT_VM, buf.as_mut_ptr() as u64)
            }
            TdxCommand::SetCpuid { vcpu, cpuid } => self
                .vcpu(vcpu, name)?
                .set_cpuid2(cpuid)
                .map_err(|e| IoctlError {
                    command: name,
                    errno: e.errno(),
                    hw_error: 0,
                }),
            TdxCommand::InitVcpu { vcpu, rcx } => {
                let fd = self.vcpu(vcpu, name)?;
                let mut c = KvmTdxCmd {
                    id: cmd::INIT_VCPU,
                    data: rcx,
                    ..Default::default()
                };
                self.vcpu_op(fd, name, &mut c)
            }
            TdxCommand::InitMemRegion {
                vcpu,
                region,
                measure,
                source,
            } => {
                let fd = self.vcpu(vcpu, name)?;
                let start = source.as_ptr() as u64;
                let inside = region.source_addr >= start
                    && region
                        .nr_pages
                        .checked_mul(4096)
                        .and_then(|n| n.checked_add(region.source_addr))
                        .is_some_and(|end| end <= start + source.len() as u64);
                if !inside {
                    return Err(IoctlError {
                        command: name,
                        errno: libc::EFAULT,
                        hw_error: 0,
                    });
                }
                let mut c = KvmTdxCmd {
                    id: cmd::INIT_MEM_REGION,
                    flags: if measure {
                        KVM_TDX_MEASURE_MEMORY_REGION
                    } else {
                        0
                    },
                    data: std::ptr::from_mut(region) as u64,
                    hw_error: 0,
                };
                self.vcpu_op(fd, name, &mut c)
            }
            TdxCommand::FinalizeVm => self.vm_op(name, cmd::FINALIZE_VM, 0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpuid_round_trips_through_the_kernel_layout() {
        let entries = vec![
            kvm_cpuid_entry2 {
                function: 0x8000_0008,
                index: 0,
                flags: 0,
                eax: 0x0030_3030,
                ..Default::default()
            },
            kvm_cpuid_entry2 {
                function: 7,
                index: 1,
                flags: 1,
                ebx: 5,
                edx: 9,
                ..Default::default()
            },
        ];
        let mut words = aligned(INIT_VM_CPUID_OFFSET + 8 + 2 * 40);
        let buf = bytes_mut(&mut words);
        put_cpuid(buf, INIT_VM_CPUID_OFFSET, &entries);
        assert_eq!(buf[256], 2, "nent");
        assert_eq!(&buf[264..268], &0x8000_0008u32.to_le_bytes());
        assert_eq!(get_cpuid(buf, INIT_VM_CPUID_OFFSET, 8), entries);
        assert_eq!(
            get_cpuid(buf, INIT_VM_CPUID_OFFSET, 1).len(),
            1,
            "never past the room"
        );
    }
}
