// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The SNP launch digest: SHA-384 chained over one 112-byte `PAGE_INFO` per page the
//! firmware's SNP_LAUNCH_UPDATE takes (SEV-SNP firmware ABI, "SNP_LAUNCH_UPDATE",
//! `PAGE_INFO` layout; the same in sev-snp-measure's `gctx.py`, the sev crate's
//! `gctx.rs` and the igvm crate's SNP measurement).
//!
//! ```text
//! 0x00 DIGEST_CUR[48]  the digest so far (48 zero bytes at first)
//! 0x30 CONTENTS[48]    SHA-384 of the page for NORMAL and VMSA pages, zeros otherwise
//! 0x60 LENGTH u16      0x70
//! 0x62 PAGE_TYPE u8
//! 0x63 IMI_PAGE u8     0
//! 0x64 VMPL3/2/1_PERMS 0, reserved 0
//! 0x68 GPA u64
//! new digest = SHA-384(PAGE_INFO)
//! ```

use sha2::{Digest as _, Sha384};

/// Firmware page types (`SNP_PAGE_TYPE_*`, `include/linux/psp-sev.h`; KVM's
/// `KVM_SEV_SNP_PAGE_TYPE_*` are the same numbers).
pub mod page_type {
    /// Measured contents.
    pub const NORMAL: u8 = 1;
    /// A VMSA; only KVM issues it.
    pub const VMSA: u8 = 2;
    /// Zeroed by the firmware.
    pub const ZERO: u8 = 3;
    /// Contents placed, not measured.
    pub const UNMEASURED: u8 = 4;
    /// Filled by the firmware with the guest's secrets.
    pub const SECRETS: u8 = 5;
    /// A CPUID table the firmware checks.
    pub const CPUID: u8 = 6;

    /// The firmware's name of `t`.
    pub fn name(t: u8) -> &'static str {
        match t {
            NORMAL => "normal",
            VMSA => "vmsa",
            ZERO => "zero",
            UNMEASURED => "unmeasured",
            SECRETS => "secrets",
            CPUID => "cpuid",
            _ => "invalid",
        }
    }
}

/// A SHA-384 digest.
pub type Sha384Digest = [u8; 48];

/// SHA-384 of `bytes`.
pub fn sha384(bytes: &[u8]) -> Sha384Digest {
    Sha384::digest(bytes).into()
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The launch digest as the firmware extends it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LaunchDigest(pub Sha384Digest);

impl Default for LaunchDigest {
    fn default() -> Self {
        LaunchDigest([0; 48])
    }
}

impl LaunchDigest {
    /// The `PAGE_INFO` of a page of `page_type` at `gpa` whose contents hash is
    /// `contents` (`None`: 48 zero bytes), after this digest.
    pub fn page_info(&self, page_type: u8, gpa: u64, contents: Option<&Sha384Digest>) -> [u8; 112] {
        let mut info = [0u8; 112];
        info[..48].copy_from_slice(&self.0);
        if let Some(c) = contents {
            info[48..96].copy_from_slice(c);
        }
        info[96..98].copy_from_slice(&0x70u16.to_le_bytes());
        info[98] = page_type;
        info[104..112].copy_from_slice(&gpa.to_le_bytes());
        info
    }

    /// Extends the digest by one page.
    pub fn update(&mut self, page_type: u8, gpa: u64, contents: Option<&Sha384Digest>) {
        self.0 = sha384(&self.page_info(page_type, gpa, contents));
    }

    /// Lowercase hex.
    pub fn to_hex(&self) -> String {
        hex(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Golden values computed with sev-snp-measure 0.0.13's `GCTX`.
    #[test]
    fn known_digests() {
        let mut d = LaunchDigest::default();
        d.update(page_type::NORMAL, 0, Some(&sha384(&[0; 4096])));
        assert_eq!(
            d.to_hex(),
            "9d13634b6014bb21cf059b2dc694e7bff01a8a7137041100cd2b695f3d10fb687267b97808b27f8f471d943bc6f53a20"
        );
        let mut d = LaunchDigest::default();
        d.update(page_type::ZERO, 0x1000, None);
        assert_eq!(
            d.to_hex(),
            "4bd4147976a1e7554c1c778a781affc1c672f1965a727ba16084989b7e356044a28bbe585a2f75dac9356fa5ab78f061"
        );
        let pattern: Vec<u8> = (0..4096).map(|i| i as u8).collect();
        let mut d = LaunchDigest::default();
        d.update(page_type::NORMAL, 0x1000, Some(&sha384(&pattern)));
        assert_eq!(
            d.to_hex(),
            "d9ee416942ec5db1caf25b01cff7feaed0d7ac42422f811c6164e4857e3f800d270202f572ade105c96b3959107b8521"
        );
        let mut d = LaunchDigest::default();
        d.update(page_type::NORMAL, 0, Some(&sha384(&[0; 4096])));
        d.update(page_type::ZERO, 0x1000, None);
        d.update(page_type::UNMEASURED, 0x2000, None);
        d.update(page_type::SECRETS, 0x3000, None);
        d.update(page_type::CPUID, 0x4000, None);
        assert_eq!(
            d.to_hex(),
            "43af46e6b20bf630da0dbc6392e51fee9dfa805945d2411f0ed748bd44e3601c016e737b423dc8af9fd91b48bc8c5cca"
        );
    }
}
