// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! What [`Machine::run`](crate::Machine::run) reports, serializable so `veil run` can
//! write it as JSON: how the guest ended, its exits, the memory's conversions, what
//! stayed shared and why, and whether the host was refused a private page while the
//! guest ran.

use serde::Serialize;
use veil_loader::ByteRange;
use veil_vcpu::{ExitStats, StopReason, SystemEventKind};
use veil_vmm::VmStats;

use crate::devices::DeviceEnd;

/// How the guest ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum GuestEnd {
    /// ACPI S5 through the sleep control register (`poweroff`), or KVM's shutdown event.
    PowerOff,
    /// The i8042's CPU reset (`reboot=k`), or KVM's reset event.
    Reset,
    /// `KVM_EXIT_SHUTDOWN` on a vCPU: a triple fault, or an exception with no handler.
    Shutdown {
        /// The vCPU.
        vcpu: usize,
    },
    /// Every vCPU halted with nothing to wake it (only seen without the in-kernel
    /// irqchip; with it KVM keeps halted vCPUs).
    Halted,
    /// The VM stopped on an error.
    Error {
        /// What went wrong, with its causes.
        message: String,
    },
    /// The run timeout passed first; the vCPUs were stopped.
    TimedOut,
}

impl GuestEnd {
    /// The end of a run: what a device asked for first, else the timeout, else why the
    /// vCPUs stopped.
    pub fn of(device: Option<DeviceEnd>, timed_out: bool, reason: &StopReason) -> GuestEnd {
        match (device, timed_out, reason) {
            (Some(DeviceEnd::PowerOff), ..) => GuestEnd::PowerOff,
            (Some(DeviceEnd::Reset), ..) => GuestEnd::Reset,
            (None, true, _) => GuestEnd::TimedOut,
            (None, false, StopReason::Shutdown { vcpu }) => GuestEnd::Shutdown { vcpu: *vcpu },
            (None, false, StopReason::SystemEvent { kind, .. }) => match kind {
                SystemEventKind::Shutdown => GuestEnd::PowerOff,
                SystemEventKind::Reset => GuestEnd::Reset,
                other => GuestEnd::Error {
                    message: format!("system event {other:?}"),
                },
            },
            (None, false, StopReason::AllHalted) => GuestEnd::Halted,
            (None, false, other) => GuestEnd::Error {
                message: other.to_string(),
            },
        }
    }
}

/// The outcome of the host reading a private guest page while the guest ran (taken when
/// the guest wrote its first console byte).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "result", rename_all = "kebab-case")]
pub enum PrivateRead {
    /// The guest never wrote to the console, so no read was tried.
    NotTried,
    /// No page was private at that moment.
    NoPrivatePage,
    /// The read of the page at `gpa` was refused, as it must be.
    Refused {
        /// The page.
        gpa: u64,
        /// veil-memory's refusal.
        error: String,
    },
    /// The read succeeded: private memory reached the host. A bug.
    Allowed {
        /// The page.
        gpa: u64,
    },
    /// The read failed for another reason than the page being private.
    Failed {
        /// The page.
        gpa: u64,
        /// The error.
        error: String,
    },
}

/// A range of RAM that was shared when the guest started, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SharedRange {
    /// The bytes.
    pub range: ByteRange,
    /// Why it is not private.
    pub reason: String,
}

/// The VMM process's resident memory when the guest ended, from `/proc/self/smaps`
/// (KiB), split between guest memory (the mappings of guest RAM: the host view and any
/// mapping KVM has of its own) and everything else, which is what veil itself costs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct HostMemory {
    /// Resident outside guest memory: the binary, heap, stacks, KVM's per-vCPU pages.
    pub vmm_kib: u64,
    /// Of that, anonymous memory (heap, stacks).
    pub vmm_anonymous_kib: u64,
    /// Resident in the mappings of guest memory (a page mapped twice counts twice).
    pub guest_kib: u64,
}

impl HostMemory {
    /// This process's figures now, with `guest` the (address, length) of every mapping
    /// of guest memory; `None` where `/proc/self/smaps` cannot be read.
    pub fn sample(guest: &[(u64, u64)]) -> Option<HostMemory> {
        Some(Self::parse(
            &std::fs::read_to_string("/proc/self/smaps").ok()?,
            guest,
        ))
    }

    /// The figures in the text of a `smaps` file.
    pub fn parse(smaps: &str, guest: &[(u64, u64)]) -> HostMemory {
        let mut m = HostMemory {
            vmm_kib: 0,
            vmm_anonymous_kib: 0,
            guest_kib: 0,
        };
        let mut in_guest = false;
        let kib = |rest: &str| -> u64 {
            rest.trim()
                .strip_suffix("kB")
                .and_then(|n| n.trim().parse().ok())
                .unwrap_or(0)
        };
        for line in smaps.lines() {
            // A mapping's header: "start-end perms offset dev inode [path]".
            if let Some((start, end)) = line
                .split_whitespace()
                .next()
                .and_then(|r| r.split_once('-'))
                .and_then(|(a, b)| {
                    Some((
                        u64::from_str_radix(a, 16).ok()?,
                        u64::from_str_radix(b, 16).ok()?,
                    ))
                })
            {
                in_guest = guest
                    .iter()
                    .any(|&(base, len)| start < base.saturating_add(len) && base < end);
            } else if let Some(rest) = line.strip_prefix("Rss:") {
                if in_guest {
                    m.guest_kib += kib(rest);
                } else {
                    m.vmm_kib += kib(rest);
                }
            } else if let Some(rest) = line.strip_prefix("Anonymous:")
                && !in_guest
            {
                m.vmm_anonymous_kib += kib(rest);
            }
        }
        m
    }
}

/// What a run of the machine did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MachineReport {
    /// How the guest ended.
    pub end: GuestEnd,
    /// The flavor conversions were carried out in.
    pub flavor: String,
    /// The launch technology.
    pub launch: &'static str,
    /// The vCPUs.
    pub vcpus: u32,
    /// The RAM in bytes.
    pub memory_size: u64,
    /// The launch digest of the measurement log (hex).
    pub launch_digest: String,
    /// The exits of all vCPUs.
    pub exits: ExitStats,
    /// The guest's conversion requests and faults, and every conversion of the memory
    /// (pages each way, system calls) from building it to the end.
    pub memory: VmStats,
    /// RAM that was shared when the guest started, and why.
    pub shared: Vec<SharedRange>,
    /// The host's read of a private page while the guest ran.
    pub private_read: PrivateRead,
    /// Whether standard input was fed to the console.
    pub console_input: bool,
    /// Wall-clock time of the run, in milliseconds.
    pub run_millis: u64,
    /// The VMM's resident memory when the guest ended (before anything was torn down).
    pub host_memory: Option<HostMemory>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn ends_prefer_what_a_device_asked_for() {
        let requested = StopReason::Requested;
        assert_eq!(
            GuestEnd::of(Some(DeviceEnd::PowerOff), true, &requested),
            GuestEnd::PowerOff
        );
        assert_eq!(
            GuestEnd::of(Some(DeviceEnd::Reset), false, &requested),
            GuestEnd::Reset
        );
        assert_eq!(GuestEnd::of(None, true, &requested), GuestEnd::TimedOut);
        assert_eq!(
            GuestEnd::of(None, false, &StopReason::Shutdown { vcpu: 1 }),
            GuestEnd::Shutdown { vcpu: 1 }
        );
        assert_eq!(
            GuestEnd::of(None, false, &StopReason::AllHalted),
            GuestEnd::Halted
        );
        let event = |kind| StopReason::SystemEvent { vcpu: 0, kind };
        assert_eq!(
            GuestEnd::of(None, false, &event(SystemEventKind::Shutdown)),
            GuestEnd::PowerOff
        );
        assert_eq!(
            GuestEnd::of(None, false, &event(SystemEventKind::Reset)),
            GuestEnd::Reset
        );
        let error = StopReason::Error {
            vcpu: 0,
            error: Arc::new(veil_vcpu::RunError::Kvm {
                op: "KVM_RUN",
                source: vmm_sys_util::errno::Error::new(libc::EFAULT),
            }),
        };
        let GuestEnd::Error { message } = GuestEnd::of(None, false, &error) else {
            panic!("an error")
        };
        assert!(message.contains("KVM_RUN"), "{message}");
    }

    /// Three mappings: the binary, the heap, and guest memory.
    const SMAPS: &str = "\
55d0c0000000-55d0c0100000 r-xp 00000000 08:01 1234 /usr/bin/veil
Size:               1024 kB
Rss:                  20 kB
Anonymous:             0 kB
55d0c1000000-55d0c1100000 rw-p 00000000 00:00 0 [heap]
Rss:                 100 kB
Anonymous:           100 kB
7f0000000000-7f0010000000 rw-s 00000000 00:01 77 /memfd:veil (deleted)
Rss:                4096 kB
Anonymous:             0 kB
";

    #[test]
    fn the_report_serializes() {
        let mut stats = ExitStats::default();
        stats = stats.merged(&stats);
        let r = MachineReport {
            end: GuestEnd::Shutdown { vcpu: 0 },
            flavor: "in-place".into(),
            launch: "plain",
            vcpus: 2,
            memory_size: 1 << 20,
            launch_digest: "00".into(),
            exits: stats,
            memory: VmStats::default(),
            shared: vec![SharedRange {
                range: ByteRange::new(0x1000, 0x1000).unwrap(),
                reason: "boot data".into(),
            }],
            private_read: PrivateRead::Refused {
                gpa: 0x2000,
                error: "private".into(),
            },
            console_input: false,
            run_millis: 3,
            host_memory: Some(HostMemory::parse(SMAPS, &[(0x7f00_0000_0000, 0x1000_0000)])),
        };
        assert_eq!(
            r.host_memory,
            Some(HostMemory {
                vmm_kib: 120,
                vmm_anonymous_kib: 100,
                guest_kib: 4096
            })
        );
        let v: serde_json::Value = serde_json::to_value(&r).unwrap();
        assert_eq!(v["end"]["kind"], "shutdown");
        assert_eq!(v["end"]["vcpu"], 0);
        assert_eq!(v["private_read"]["result"], "refused");
        assert_eq!(v["private_read"]["gpa"], 0x2000);
        assert_eq!(v["shared"][0]["reason"], "boot data");
        assert_eq!(v["exits"]["refused_hypercalls"], 0);
        assert_eq!(v["memory"]["conversions"]["pages_to_private"], 0);
    }
}
