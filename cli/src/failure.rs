// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Why `veil` failed, as an exit code and a message that names what is wrong and the fix.

use std::error::Error;
use std::io;
use std::path::Path;

use veil_vmm::veil_memory::CapsError;
use veil_vmm::{LaunchError, VmError};

/// `veil`'s exit codes. Scripts may rely on them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Everything asked for was done and every check passed.
    Success = 0,
    /// KVM or the VM failed while veil used it (an ioctl refused, a vCPU error).
    VmError = 1,
    /// The command line or a file it names is wrong (clap uses the same code).
    Usage = 2,
    /// The host lacks what was asked for: `/dev/kvm`, the permission to open it, a
    /// capability a flavor or backend needs.
    HostLacks = 3,
    /// The guest ran but failed a check (`veil demo`; `veil soak`: a mismatch, no
    /// conversion, a failed request), or ended abnormally (`veil run`).
    GuestFailed = 4,
    /// A veil thread made a system call its seccomp filter does not allow, and veil
    /// ended the VM (the message names the thread and the call).
    Confinement = 5,
}

/// The help text's table of exit codes.
pub const EXIT_CODES: &str = "Exit codes:
  0  success: everything asked for was done and every check passed
  1  VM error: KVM or the VM failed while veil used it
  2  bad usage: an unknown flag, a bad value, a file that is missing or malformed
  3  the host lacks what was asked for: /dev/kvm, permission to open it, a capability
  4  the guest failed a check (veil soak: a mismatch), or ended abnormally
  5  a veil thread made a system call its seccomp filter does not allow; veil ended the VM";

/// A failure: its exit code and the whole message.
#[derive(Debug)]
pub struct Failure {
    /// The exit code.
    pub status: Status,
    /// What went wrong and, where veil knows one, the fix.
    pub message: String,
}

impl Failure {
    /// A failure with `status` and `message`.
    pub fn new(status: Status, message: impl Into<String>) -> Self {
        Failure {
            status,
            message: message.into(),
        }
    }

    /// Bad usage.
    pub fn usage(message: impl Into<String>) -> Self {
        Failure::new(Status::Usage, message)
    }

    /// The guest failed a check.
    pub fn guest(message: impl Into<String>) -> Self {
        Failure::new(Status::GuestFailed, message)
    }

    /// A file named on the command line could not be read.
    pub fn unreadable(what: &str, path: &Path, e: &io::Error) -> Self {
        let why = match e.kind() {
            io::ErrorKind::NotFound => "it does not exist".to_string(),
            io::ErrorKind::PermissionDenied => "permission denied".to_string(),
            _ => e.to_string(),
        };
        Failure::usage(format!("cannot read the {what} {}: {why}", path.display()))
    }

    /// A failure of veil-vmm, classified: what the host lacks, what the user got wrong,
    /// or what KVM refused. `doing` says what veil was doing ("building the VM").
    pub fn vm(doing: &str, e: &VmError) -> Self {
        if let Some(f) = host_lacks(e) {
            return f;
        }
        let status = match e {
            VmError::Load(_) => Status::Usage,
            _ => Status::VmError,
        };
        Failure::new(status, format!("{doing}: {}", chain(e)))
    }
}

/// `e` and its sources, joined by ": ".
pub fn chain(e: &(dyn Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let text = c.to_string();
        // Some errors repeat their source in their own message.
        if !s.ends_with(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        cur = c.source();
    }
    s
}

/// Why `/dev/kvm` could not be opened and the fix, where `errno` means the host lacks
/// KVM or the user may not use it.
fn kvm_unopenable(errno: i32) -> Option<Failure> {
    let message = match errno {
        libc::ENOENT | libc::ENXIO | libc::ENODEV => {
            "cannot open /dev/kvm: it does not exist, so this host offers no KVM. \
             Load the module for this CPU (`modprobe kvm_intel` or `modprobe kvm_amd`), \
             enable virtualization in the firmware, or run veil on a machine with \
             nested virtualization."
        }
        libc::EACCES | libc::EPERM => {
            "cannot open /dev/kvm: permission denied. Add your user to the group that \
             owns it (usually `sudo usermod -aG kvm $USER`, then log in again) or run \
             veil as root."
        }
        _ => return None,
    };
    Some(Failure::new(Status::HostLacks, message))
}

/// The failures that mean the host lacks something, with the fix.
fn host_lacks(e: &VmError) -> Option<Failure> {
    let lacks = |m: String| Some(Failure::new(Status::HostLacks, m));
    match e {
        VmError::OpenKvm(err) => kvm_unopenable(err.errno()),
        // Probing opens /dev/kvm itself when no caps were passed (`HostCaps::probe`).
        VmError::Probe(CapsError::OpenKvm(err)) => kvm_unopenable(err.raw_os_error()?),
        VmError::Flavor { flavor, source } => {
            let missing = match source {
                CapsError::Missing { capability, .. } => capability.clone(),
                other => chain(other),
            };
            lacks(format!(
                "the {flavor} flavor does not run on this host: it needs {missing}. \
                 `veil caps` lists the flavors that do; pick one with --flavor."
            ))
        }
        VmError::Launch {
            technology,
            source: LaunchError::Unsupported { missing, .. },
        } => lacks(format!(
            "the {technology} backend does not run on this host: it needs {missing}. \
             `veil caps` lists the backends that do."
        )),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use veil_vmm::veil_memory::Flavor;

    #[test]
    fn missing_kvm_and_permission_name_the_fix() {
        let missing = Failure::vm(
            "building the VM",
            &VmError::OpenKvm(veil_vmm::kvm_ioctls::Error::new(libc::ENOENT)),
        );
        assert_eq!(missing.status, Status::HostLacks);
        assert!(missing.message.contains("modprobe"), "{}", missing.message);
        let denied = Failure::vm(
            "building the VM",
            &VmError::OpenKvm(veil_vmm::kvm_ioctls::Error::new(libc::EACCES)),
        );
        assert_eq!(denied.status, Status::HostLacks);
        assert!(denied.message.contains("kvm group") || denied.message.contains("usermod"));
        let other = Failure::vm(
            "building the VM",
            &VmError::OpenKvm(veil_vmm::kvm_ioctls::Error::new(libc::EIO)),
        );
        assert_eq!(other.status, Status::VmError);
        assert!(
            other
                .message
                .starts_with("building the VM: cannot open /dev/kvm")
        );
    }

    /// `veil demo` and `veil soak` probe the host before building (`HostCaps::probe`),
    /// which opens /dev/kvm itself: the same causes get the same fixes.
    #[test]
    fn missing_kvm_found_while_probing_names_the_fix() {
        let probing = |errno| {
            Failure::vm(
                "probing KVM",
                &VmError::Probe(CapsError::OpenKvm(io::Error::from_raw_os_error(errno))),
            )
        };
        let missing = probing(libc::ENOENT);
        assert_eq!(missing.status, Status::HostLacks);
        assert!(missing.message.contains("modprobe"), "{}", missing.message);
        let denied = probing(libc::EACCES);
        assert_eq!(denied.status, Status::HostLacks);
        assert!(denied.message.contains("usermod"), "{}", denied.message);
        let other = probing(libc::EIO);
        assert_eq!(other.status, Status::VmError);
        assert!(
            other.message.starts_with("probing KVM: "),
            "{}",
            other.message
        );
        // An error without an errno is KVM's, not the host lacking it.
        let no_errno = Failure::vm(
            "probing KVM",
            &VmError::Probe(CapsError::OpenKvm(io::Error::other("odd"))),
        );
        assert_eq!(no_errno.status, Status::VmError);
    }

    #[test]
    fn a_missing_capability_is_the_host_lacking() {
        let f = Failure::vm(
            "building the VM",
            &VmError::Flavor {
                flavor: Flavor::ATTRIBUTES,
                source: CapsError::Missing {
                    flavor: Flavor::ATTRIBUTES,
                    capability: "KVM_CAP_MEMORY_ATTRIBUTES".into(),
                },
            },
        );
        assert_eq!(f.status, Status::HostLacks);
        assert!(
            f.message.contains("KVM_CAP_MEMORY_ATTRIBUTES"),
            "{}",
            f.message
        );
        assert!(f.message.contains("--flavor"));
    }

    #[test]
    fn unreadable_files_are_named() {
        let e = io::Error::from(io::ErrorKind::NotFound);
        let f = Failure::unreadable("kernel", Path::new("/no/such/vmlinuz"), &e);
        assert_eq!(f.status, Status::Usage);
        assert_eq!(
            f.message,
            "cannot read the kernel /no/such/vmlinuz: it does not exist"
        );
    }

    #[test]
    fn chain_keeps_every_cause_once() {
        #[derive(Debug, thiserror::Error)]
        #[error("outer")]
        struct Outer(#[source] io::Error);
        let e = Outer(io::Error::other("inner"));
        assert_eq!(chain(&e), "outer: inner");
    }
}
