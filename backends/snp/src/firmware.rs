// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The SEV firmware's status codes by name.
//!
//! KVM returns `EIO` for every firmware failure (the ccp driver's `__sev_do_cmd_locked`
//! turns any non-zero status into `-EIO`); the reason is only in `kvm_sev_cmd.error`.
//! [`SevStatus`] gives that number its name from `enum sev_ret_code`
//! (`include/uapi/linux/psp-sev.h`; the values up to 0x27 are those of Linux 6.12, the
//! later ones were added by 7.2).

use std::fmt;

/// A status of the SEV firmware, as KVM copies it into `kvm_sev_cmd.error`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct SevStatus(pub u32);

/// `(code, name)` of every status `psp-sev.h` names.
const NAMES: &[(u32, &str)] = &[
    (0x00, "SEV_RET_SUCCESS"),
    (0x01, "SEV_RET_INVALID_PLATFORM_STATE"),
    (0x02, "SEV_RET_INVALID_GUEST_STATE"),
    (0x03, "SEV_RET_INVALID_CONFIG"),
    (0x04, "SEV_RET_INVALID_LEN"),
    (0x05, "SEV_RET_ALREADY_OWNED"),
    (0x06, "SEV_RET_INVALID_CERTIFICATE"),
    (0x07, "SEV_RET_POLICY_FAILURE"),
    (0x08, "SEV_RET_INACTIVE"),
    (0x09, "SEV_RET_INVALID_ADDRESS"),
    (0x0a, "SEV_RET_BAD_SIGNATURE"),
    (0x0b, "SEV_RET_BAD_MEASUREMENT"),
    (0x0c, "SEV_RET_ASID_OWNED"),
    (0x0d, "SEV_RET_INVALID_ASID"),
    (0x0e, "SEV_RET_WBINVD_REQUIRED"),
    (0x0f, "SEV_RET_DFFLUSH_REQUIRED"),
    (0x10, "SEV_RET_INVALID_GUEST"),
    (0x11, "SEV_RET_INVALID_COMMAND"),
    (0x12, "SEV_RET_ACTIVE"),
    (0x13, "SEV_RET_HWSEV_RET_PLATFORM"),
    (0x14, "SEV_RET_HWSEV_RET_UNSAFE"),
    (0x15, "SEV_RET_UNSUPPORTED"),
    (0x16, "SEV_RET_INVALID_PARAM"),
    (0x17, "SEV_RET_RESOURCE_LIMIT"),
    (0x18, "SEV_RET_SECURE_DATA_INVALID"),
    (0x19, "SEV_RET_INVALID_PAGE_SIZE"),
    (0x1a, "SEV_RET_INVALID_PAGE_STATE"),
    (0x1b, "SEV_RET_INVALID_MDATA_ENTRY"),
    (0x1c, "SEV_RET_INVALID_PAGE_OWNER"),
    (0x1d, "SEV_RET_AEAD_OFLOW"),
    (0x1f, "SEV_RET_EXIT_RING_BUFFER"),
    (0x20, "SEV_RET_RMP_INIT_REQUIRED"),
    (0x21, "SEV_RET_BAD_SVN"),
    (0x22, "SEV_RET_BAD_VERSION"),
    (0x23, "SEV_RET_SHUTDOWN_REQUIRED"),
    (0x24, "SEV_RET_UPDATE_FAILED"),
    (0x25, "SEV_RET_RESTORE_REQUIRED"),
    (0x26, "SEV_RET_RMP_INITIALIZATION_FAILED"),
    (0x27, "SEV_RET_INVALID_KEY"),
    (0x28, "SEV_RET_SHUTDOWN_INCOMPLETE"),
    (0x30, "SEV_RET_INCORRECT_BUFFER_LENGTH"),
    (0x31, "SEV_RET_EXPAND_BUFFER_LENGTH_REQUEST"),
    (0x32, "SEV_RET_SPDM_REQUEST"),
    (0x33, "SEV_RET_SPDM_ERROR"),
    (0x35, "SEV_RET_SEV_STATUS_ERR_IN_DEV_CONN"),
    (0x36, "SEV_RET_SEV_STATUS_INVALID_DEV_CTX"),
    (0x37, "SEV_RET_SEV_STATUS_INVALID_TDI_CTX"),
    (0x38, "SEV_RET_SEV_STATUS_INVALID_TDI"),
    (0x39, "SEV_RET_SEV_STATUS_RECLAIM_REQUIRED"),
    (0x3a, "SEV_RET_IN_USE"),
    (0x3b, "SEV_RET_SEV_STATUS_INVALID_DEV_STATE"),
    (0x3c, "SEV_RET_SEV_STATUS_INVALID_TDI_STATE"),
    (0x3d, "SEV_RET_SEV_STATUS_DEV_CERT_CHANGED"),
    (0x3e, "SEV_RET_SEV_STATUS_RESYNC_REQ"),
    (0x3f, "SEV_RET_SEV_STATUS_RESPONSE_TOO_LARGE"),
];

impl SevStatus {
    /// `SEV_RET_SUCCESS`: also what KVM leaves when the failure was not the firmware's.
    pub const SUCCESS: SevStatus = SevStatus(0);
    /// `SEV_RET_INVALID_PARAM`: on a CPUID page, the firmware rejected entries and wrote
    /// the values it accepts back into the page.
    pub const INVALID_PARAM: SevStatus = SevStatus(0x16);
    /// `SEV_RET_INVALID_PAGE_STATE`: a page was not in the state the command needs (not
    /// private in the RMP, already assigned).
    pub const INVALID_PAGE_STATE: SevStatus = SevStatus(0x1a);
    /// `SEV_RET_POLICY_FAILURE`: the guest policy is not one the platform allows.
    pub const POLICY_FAILURE: SevStatus = SevStatus(0x07);

    /// The code's name as `psp-sev.h` spells it, if it has one.
    pub fn name(self) -> Option<&'static str> {
        NAMES.iter().find(|(c, _)| *c == self.0).map(|(_, n)| *n)
    }

    /// Whether this is `SEV_RET_SUCCESS`: the firmware did not fail (or was not called).
    pub fn is_success(self) -> bool {
        self.0 == 0
    }
}

impl fmt::Display for SevStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => write!(f, "{name} ({:#x})", self.0),
            None => write!(f, "unknown SEV firmware status {:#x}", self.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_have_their_header_names() {
        assert_eq!(
            SevStatus(0x1a).to_string(),
            "SEV_RET_INVALID_PAGE_STATE (0x1a)"
        );
        assert_eq!(
            SevStatus::INVALID_PARAM.name(),
            Some("SEV_RET_INVALID_PARAM")
        );
        assert_eq!(SevStatus(0x27).name(), Some("SEV_RET_INVALID_KEY"));
        assert_eq!(SevStatus(0x1e).name(), None);
        assert_eq!(
            SevStatus(0x1e).to_string(),
            "unknown SEV firmware status 0x1e"
        );
        assert!(SevStatus::SUCCESS.is_success());
        // The table is sorted and has no duplicate code.
        assert!(NAMES.windows(2).all(|w| w[0].0 < w[1].0));
    }
}
