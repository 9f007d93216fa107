// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! MRTD: one running SHA-384 over the records of TDH.MEM.PAGE.ADD and TDH.MR.EXTEND,
//! finalised by TDH.MR.FINALIZE (Intel TDX module ABI; the same records in the igvm
//! crate's TDX measurement and td-shim's tools).
//!
//! ```text
//! PAGE.ADD  (128 bytes): "MEM.PAGE.ADD" at 0, GPA (u64 LE) at 16, zeros elsewhere
//! MR.EXTEND (128 bytes + 256 data bytes) per 256-byte chunk: "MR.EXTEND" at 0,
//!           the chunk's GPA at 16, zeros elsewhere, then the chunk
//! ```
//!
//! KVM (Linux 7.2 `arch/x86/kvm/vmx/tdx.c`) issues them page by page: PAGE.ADD, then,
//! for a measured region, the page's 16 EXTENDs.

use sha2::{Digest as _, Sha384};

/// A running MRTD.
#[derive(Debug, Clone, Default)]
pub struct Mrtd(Sha384);

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Mrtd {
    /// TDH.MEM.PAGE.ADD of the page at `gpa`.
    pub fn page_add(&mut self, gpa: u64) {
        let mut r = [0u8; 128];
        r[..12].copy_from_slice(b"MEM.PAGE.ADD");
        r[16..24].copy_from_slice(&gpa.to_le_bytes());
        self.0.update(r);
    }

    /// The 16 TDH.MR.EXTENDs of the 4 KiB `page` at `gpa`.
    pub fn extend_page(&mut self, gpa: u64, page: &[u8]) {
        for (i, chunk) in page.chunks(256).enumerate() {
            let mut r = [0u8; 128];
            r[..9].copy_from_slice(b"MR.EXTEND");
            r[16..24].copy_from_slice(&(gpa + i as u64 * 256).to_le_bytes());
            self.0.update(r);
            self.0.update(chunk);
        }
    }

    /// The MRTD TDH.MR.FINALIZE leaves.
    pub fn finish(&self) -> [u8; 48] {
        self.0.clone().finalize().into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Golden values of a 15-line hashlib implementation of the records above.
    #[test]
    fn known_values() {
        let m = Mrtd::default();
        assert_eq!(
            hex(&m.finish()),
            "38b060a751ac96384cd9327eb1b1e36a21fdb71114be07434c0cc7bf63f6e1da274edebfe76f65fbd51ad2f14898b95b"
        );
        let mut m = Mrtd::default();
        m.page_add(0);
        assert_eq!(
            hex(&m.finish()),
            "8f3e9a8aca6784eab874f7aa4dda5d49104a88047f1f86695ef2a88f5691a90e34aac48ce45ffa1f5a23c7d62980d570"
        );
        m.extend_page(0, &[0; 4096]);
        assert_eq!(
            hex(&m.finish()),
            "236f0efa607ff8843f1855d7ef80dc3dda8fb455787a186b8787212951eab0096e3193bb26f817c2b63c21f5e10f9938"
        );
        let pattern: Vec<u8> = (0..4096).map(|i| i as u8).collect();
        m.page_add(0x1000);
        m.extend_page(0x1000, &pattern);
        assert_eq!(
            hex(&m.finish()),
            "ac70dde553a019652002f43eb0ec4fa48db15739e9a91bcb85c6e35685bc4005146d2899a451deccfc3dcf6ec6cc76e0"
        );
        let mut p = Mrtd::default();
        p.page_add(0x1000);
        p.extend_page(0x1000, &pattern);
        assert_eq!(
            hex(&p.finish()),
            "15a8464628b6214951c4a1b57775507dd950263654e8790e257995b45013c84aba1d87a3bcbc1929b5f7db6d3e92cad6"
        );
    }
}
