// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The SNP guest policy, checked as Linux 6.12's `snp_launch_start` checks it
//! (`arch/x86/kvm/svm/sev.c`, `SNP_POLICY_MASK_*`), before any ioctl.

/// `SNP_POLICY_MASK_API_MINOR`, bits 7:0: the lowest firmware API minor version.
pub const API_MINOR: u64 = 0xff;
/// `SNP_POLICY_MASK_API_MAJOR`, bits 15:8.
pub const API_MAJOR: u64 = 0xff00;
/// `SNP_POLICY_MASK_SMT`, bit 16: SMT allowed. Linux 6.12 requires it.
pub const SMT: u64 = 1 << 16;
/// `SNP_POLICY_MASK_RSVD_MBO`, bit 17: reserved, must be one.
pub const RSVD_MBO: u64 = 1 << 17;
/// `SNP_POLICY_MASK_DEBUG`, bit 19: the host may debug the guest.
pub const DEBUG: u64 = 1 << 19;
/// `SNP_POLICY_MASK_SINGLE_SOCKET`, bit 20: Linux 6.12 refuses it.
pub const SINGLE_SOCKET: u64 = 1 << 20;
/// Every bit Linux 6.12 accepts (`SNP_POLICY_MASK_VALID`).
pub const VALID: u64 = API_MINOR | API_MAJOR | SMT | RSVD_MBO | DEBUG | SINGLE_SOCKET;

/// Why a guest policy was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// Bits outside `SNP_POLICY_MASK_VALID`.
    #[error("policy {policy:#x} sets bits {bits:#x} that Linux 6.12 does not accept")]
    UnknownBits {
        /// The policy.
        policy: u64,
        /// The bits.
        bits: u64,
    },
    /// A bit that must be set is clear.
    #[error("policy {policy:#x} lacks {name} (bit {bit}), which KVM requires")]
    Required {
        /// The policy.
        policy: u64,
        /// The bit's name.
        name: &'static str,
        /// Its number.
        bit: u32,
    },
    /// `SINGLE_SOCKET`, which KVM refuses.
    #[error("policy {policy:#x} sets SINGLE_SOCKET (bit 20), which KVM refuses")]
    SingleSocket {
        /// The policy.
        policy: u64,
    },
}

/// A guest policy KVM will accept in `KVM_SEV_SNP_LAUNCH_START`; only
/// [`new`](Self::new) makes one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
pub struct SnpPolicy(u64);

impl SnpPolicy {
    /// SMT allowed, the must-be-one bit, no debugging, any firmware version: `0x30000`.
    pub const DEFAULT: SnpPolicy = SnpPolicy(SMT | RSVD_MBO);

    /// Checks `policy` against Linux 6.12's rules.
    pub const fn new(policy: u64) -> Result<SnpPolicy, PolicyError> {
        if policy & !VALID != 0 {
            return Err(PolicyError::UnknownBits {
                policy,
                bits: policy & !VALID,
            });
        }
        if policy & RSVD_MBO == 0 {
            return Err(PolicyError::Required {
                policy,
                name: "RSVD_MBO",
                bit: 17,
            });
        }
        if policy & SMT == 0 {
            return Err(PolicyError::Required {
                policy,
                name: "SMT",
                bit: 16,
            });
        }
        if policy & SINGLE_SOCKET != 0 {
            return Err(PolicyError::SingleSocket { policy });
        }
        Ok(SnpPolicy(policy))
    }

    /// The policy's bits.
    pub const fn bits(self) -> u64 {
        self.0
    }

    /// Whether the host may debug the guest.
    pub const fn debug(self) -> bool {
        self.0 & DEBUG != 0
    }
}

impl Default for SnpPolicy {
    fn default() -> Self {
        SnpPolicy::DEFAULT
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linux_6_12_rules() {
        assert_eq!(SnpPolicy::default().bits(), 0x30000);
        assert!(SnpPolicy::new(0xb_0000).unwrap().debug());
        assert_eq!(SnpPolicy::new(0x3_0102).unwrap().bits(), 0x3_0102);
        assert_eq!(
            SnpPolicy::new(0x1_0000),
            Err(PolicyError::Required {
                policy: 0x1_0000,
                name: "RSVD_MBO",
                bit: 17
            })
        );
        assert!(matches!(
            SnpPolicy::new(0x2_0000),
            Err(PolicyError::Required { bit: 16, .. })
        ));
        assert_eq!(
            SnpPolicy::new(0x13_0000),
            Err(PolicyError::SingleSocket { policy: 0x13_0000 })
        );
        assert_eq!(
            SnpPolicy::new(0x43_0000),
            Err(PolicyError::UnknownBits {
                policy: 0x43_0000,
                bits: 0x40_0000
            })
        );
        // MIGRATE_MA (bit 18) is 7.2's, not 6.12's.
        assert!(matches!(
            SnpPolicy::new(0x7_0000),
            Err(PolicyError::UnknownBits { bits: 0x4_0000, .. })
        ));
    }
}
