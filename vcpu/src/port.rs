// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! veil's port-I/O hypercall transport: on x86-64 the guest loads the hypercall's
//! registers and executes `out` to [`HYPERCALL_PORT`](crate::HYPERCALL_PORT); the run loop
//! reads them at that exit and writes the result to `rax`. Elsewhere there is no port I/O,
//! and an exit that claims to be one is an error.

#[cfg(target_arch = "x86_64")]
pub(crate) use x86::PortRegisters;
#[cfg(target_arch = "x86_64")]
pub use x86::port_hypercall;

#[cfg(not(target_arch = "x86_64"))]
pub(crate) use other::PortRegisters;

#[cfg(target_arch = "x86_64")]
mod x86 {
    use kvm_bindings::{kvm_regs, kvm_sregs};
    use kvm_ioctls::VcpuFd;
    use veil_abi::x86_64::EFER_LMA;

    use crate::dispatch::{HypercallRegisters, RunError};
    use crate::hypercall::{Hypercall, Transport};

    /// A port-I/O hypercall, from the registers at the `out`: `rax` = number, `rbx`, `rcx`,
    /// `rdx`, `rsi` = the first four arguments (for MAP_GPA_RANGE: gpa, pages, attributes),
    /// 64-bit when `EFER.LMA` and `CS.L`.
    pub fn port_hypercall(regs: &kvm_regs, sregs: &kvm_sregs) -> Hypercall {
        Hypercall {
            nr: regs.rax,
            args: [regs.rbx, regs.rcx, regs.rdx, regs.rsi, 0, 0],
            long_mode: sregs.efer & EFER_LMA != 0 && sregs.cs.l != 0,
            transport: Transport::Port,
        }
    }

    /// The registers of this exit's port-I/O hypercall, read only if one happened, and
    /// kept where they were read for writing the result back.
    pub(crate) struct PortRegisters<'a> {
        fd: &'a VcpuFd,
        regs: Option<kvm_regs>,
    }

    impl<'a> PortRegisters<'a> {
        pub(crate) fn new(fd: &'a VcpuFd) -> Self {
            PortRegisters { fd, regs: None }
        }

        /// Writes a port-I/O hypercall's result to `rax`, the other registers as read.
        pub(crate) fn set_result(&self, rax: u64) -> Result<(), RunError> {
            // The registers were read to decode the request, so they are there.
            let Some(regs) = &self.regs else {
                return Err(RunError::Kvm {
                    op: "KVM_GET_REGS",
                    source: vmm_sys_util::errno::Error::new(libc::EINVAL),
                });
            };
            let regs = kvm_regs { rax, ..*regs };
            self.fd.set_regs(&regs).map_err(|source| RunError::Kvm {
                op: "KVM_SET_REGS",
                source,
            })
        }
    }

    impl HypercallRegisters for PortRegisters<'_> {
        fn port_hypercall(&mut self) -> Result<Hypercall, RunError> {
            let regs = self.fd.get_regs().map_err(|source| RunError::Kvm {
                op: "KVM_GET_REGS",
                source,
            })?;
            let sregs = self.fd.get_sregs().map_err(|source| RunError::Kvm {
                op: "KVM_GET_SREGS",
                source,
            })?;
            Ok(port_hypercall(self.regs.insert(regs), &sregs))
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn port_hypercall_registers() {
            let regs = kvm_regs {
                rax: 12,
                rbx: 0x1000,
                rcx: 3,
                rdx: 0x10,
                rsi: 7,
                rdi: 9,
                ..Default::default()
            };
            let mut sregs = kvm_sregs::default();
            let a = port_hypercall(&regs, &sregs);
            assert_eq!((a.nr, a.args), (12, [0x1000, 3, 0x10, 7, 0, 0]));
            assert_eq!(a.transport, Transport::Port);
            assert!(!a.long_mode, "real mode");
            sregs.efer = EFER_LMA;
            assert!(
                !port_hypercall(&regs, &sregs).long_mode,
                "compatibility mode"
            );
            sregs.cs.l = 1;
            assert!(port_hypercall(&regs, &sregs).long_mode);
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
mod other {
    use kvm_ioctls::VcpuFd;

    use crate::dispatch::{HypercallRegisters, RunError};
    use crate::hypercall::Hypercall;

    /// No port I/O on this architecture: a port hypercall is an error.
    pub(crate) struct PortRegisters;

    impl PortRegisters {
        pub(crate) fn new(_fd: &VcpuFd) -> Self {
            PortRegisters
        }

        pub(crate) fn set_result(&self, _rax: u64) -> Result<(), RunError> {
            Err(RunError::NoPortTransport)
        }
    }

    impl HypercallRegisters for PortRegisters {
        fn port_hypercall(&mut self) -> Result<Hypercall, RunError> {
            Err(RunError::NoPortTransport)
        }
    }
}
