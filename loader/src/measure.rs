// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The measurement log: what was placed where, with SHA-256 digests, and a running launch
//! digest.
//!
//! Each entry records an object's kind, guest-physical range and the SHA-256 of the bytes
//! that range holds after loading (an ELF segment's zero-filled tail included). The launch
//! digest starts as 32 zero bytes and is extended once per entry, in order, the way a TPM
//! PCR is: `digest = SHA-256(digest || encoding(entry))`, where
//!
//! ```text
//! encoding(entry) = kind name (ASCII, as in the JSON) || 0x00
//!                || gpa (u64 little-endian; u64::MAX for the unplaced kernel image)
//!                || size (u64 little-endian) || SHA-256 of the bytes (32 bytes)
//! ```
//!
//! The first entry is the whole kernel file (`kernel-image`, no address), so a changed
//! byte anywhere in the kernel changes the digest even where no placement covers it.
//! Nothing else enters the computation: the same inputs and RAM give the same log and
//! digest on every run and machine.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest as _, Sha256};

/// What an object of the boot image is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ObjectKind {
    /// The whole kernel file. Measured, never placed: it makes the bytes no placement
    /// covers (a bzImage's real-mode setup code, an ELF's headers) count too.
    KernelImage,
    /// One loadable segment of an ELF kernel.
    KernelSegment,
    /// A bzImage's protected-mode kernel.
    Kernel,
    /// The initial ramdisk.
    Initrd,
    /// The kernel command line, with its terminating NUL.
    CommandLine,
    /// The boot parameters: Linux's zero page, or PVH's `hvm_start_info` with its module
    /// list and memory map.
    BootParams,
    /// Identity-mapped page tables for a 64-bit entry.
    PageTables,
    /// The global descriptor table.
    Gdt,
    /// Firmware tables the VMM built (ACPI: RSDP, XSDT, FADT, MADT, DSDT).
    FirmwareTables,
    /// A Linux `setup_data` entry linked from the boot parameters.
    SetupData,
    /// A page a launch technology adds for its guest (one its firmware fills, a table
    /// the guest reads), placed with [`BootPlan::add_objects`](crate::BootPlan::add_objects).
    LaunchData,
    /// A page of an IGVM file's page data.
    IgvmPage,
    /// An IGVM parameter area, filled by veil and inserted where the file says.
    IgvmParameters,
}

impl ObjectKind {
    /// The kind's name as it appears in the measurement log.
    pub const fn name(self) -> &'static str {
        match self {
            ObjectKind::KernelImage => "kernel-image",
            ObjectKind::KernelSegment => "kernel-segment",
            ObjectKind::Kernel => "kernel",
            ObjectKind::Initrd => "initrd",
            ObjectKind::CommandLine => "command-line",
            ObjectKind::BootParams => "boot-params",
            ObjectKind::PageTables => "page-tables",
            ObjectKind::Gdt => "gdt",
            ObjectKind::FirmwareTables => "firmware-tables",
            ObjectKind::SetupData => "setup-data",
            ObjectKind::LaunchData => "launch-data",
            ObjectKind::IgvmPage => "igvm-page",
            ObjectKind::IgvmParameters => "igvm-parameters",
        }
    }
}

/// Version of the log's format and digest rule, recorded in the JSON.
pub const LOG_VERSION: u32 = 1;

/// A SHA-256 digest; serialized as 64 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Digest(pub [u8; 32]);

impl Digest {
    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Digest {
        Digest(Sha256::digest(bytes).into())
    }

    /// Lowercase hex.
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Parses 64 hex digits.
    pub fn from_hex(s: &str) -> Option<Digest> {
        if s.len() != 64 || !s.is_ascii() {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        Some(Digest(out))
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({})", self.to_hex())
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl Serialize for Digest {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Digest::from_hex(&s).ok_or_else(|| serde::de::Error::custom("expected 64 hex digits"))
    }
}

/// One measured object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeasuredObject {
    /// What it is.
    pub kind: ObjectKind,
    /// Its guest-physical address; absent for the unplaced kernel image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpa: Option<u64>,
    /// Its size in bytes.
    pub size: u64,
    /// SHA-256 of its bytes.
    pub sha256: Digest,
}

impl MeasuredObject {
    /// The bytes this entry contributes to the launch digest.
    pub fn encoding(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + 17 + 32);
        out.extend_from_slice(self.kind.name().as_bytes());
        out.push(0);
        out.extend_from_slice(&self.gpa.unwrap_or(u64::MAX).to_le_bytes());
        out.extend_from_slice(&self.size.to_le_bytes());
        out.extend_from_slice(&self.sha256.0);
        out
    }
}

/// The measurement log of one boot image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeasurementLog {
    /// [`LOG_VERSION`].
    pub version: u32,
    /// The entries, in placement order.
    pub entries: Vec<MeasuredObject>,
    /// The launch digest after extending with every entry.
    pub launch_digest: Digest,
}

impl Default for MeasurementLog {
    fn default() -> Self {
        MeasurementLog {
            version: LOG_VERSION,
            entries: Vec::new(),
            launch_digest: Digest::default(),
        }
    }
}

/// Feeds the SHA-256 of `bytes` followed by `zeros` zero bytes.
fn digest_with_zero_tail(bytes: &[u8], zeros: u64) -> Digest {
    static ZEROS: [u8; 4096] = [0; 4096];
    let mut h = Sha256::new();
    h.update(bytes);
    let mut left = zeros;
    while left > 0 {
        let n = left.min(ZEROS.len() as u64) as usize;
        h.update(&ZEROS[..n]);
        left -= n as u64;
    }
    Digest(h.finalize().into())
}

impl MeasurementLog {
    /// An empty log.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends an object whose bytes are `bytes` followed by `zero_tail` zero bytes, and
    /// extends the launch digest.
    pub fn record(&mut self, kind: ObjectKind, gpa: Option<u64>, bytes: &[u8], zero_tail: u64) {
        let entry = MeasuredObject {
            kind,
            gpa,
            size: (bytes.len() as u64).saturating_add(zero_tail),
            sha256: digest_with_zero_tail(bytes, zero_tail),
        };
        self.launch_digest = extend(&self.launch_digest, &entry);
        self.entries.push(entry);
    }

    /// Recomputes the launch digest from the entries (for checking a log read back).
    pub fn replay(&self) -> Digest {
        self.entries
            .iter()
            .fold(Digest::default(), |d, e| extend(&d, e))
    }

    /// The log as pretty-printed JSON.
    pub fn to_json(&self) -> String {
        // Serializing plain structs of integers and strings to a String cannot fail.
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// Reads a log back from JSON.
    pub fn from_json(s: &str) -> Result<MeasurementLog, serde_json::Error> {
        serde_json::from_str(s)
    }
}

/// `SHA-256(digest || encoding(entry))`.
pub fn extend(digest: &Digest, entry: &MeasuredObject) -> Digest {
    let mut h = Sha256::new();
    h.update(digest.0);
    h.update(entry.encoding());
    Digest(h.finalize().into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_known_answer() {
        // FIPS 180-2 test vector.
        assert_eq!(
            Digest::of(b"abc").to_hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn zero_tail_counts_as_zero_bytes() {
        let mut bytes = b"kernel".to_vec();
        bytes.resize(6 + 10_000, 0);
        assert_eq!(digest_with_zero_tail(b"kernel", 10_000), Digest::of(&bytes));
    }

    #[test]
    fn extend_chains_in_order() {
        let mut a = MeasurementLog::new();
        a.record(ObjectKind::Kernel, Some(0x100_0000), b"k", 0);
        a.record(ObjectKind::Gdt, Some(0x1000), b"g", 0);
        let mut b = MeasurementLog::new();
        b.record(ObjectKind::Gdt, Some(0x1000), b"g", 0);
        b.record(ObjectKind::Kernel, Some(0x100_0000), b"k", 0);
        assert_ne!(a.launch_digest, b.launch_digest, "order matters");
        assert_eq!(a.replay(), a.launch_digest);

        // By hand: SHA-256(SHA-256(0^32 || e0) || e1).
        let e0 = &a.entries[0];
        let mut first = Sha256::new();
        first.update([0u8; 32]);
        first.update(e0.encoding());
        let d0: [u8; 32] = first.finalize().into();
        let mut second = Sha256::new();
        second.update(d0);
        second.update(a.entries[1].encoding());
        assert_eq!(a.launch_digest.0, <[u8; 32]>::from(second.finalize()));

        // The same bytes at another address are another entry.
        let mut c = MeasurementLog::new();
        c.record(ObjectKind::Kernel, Some(0x200_0000), b"k", 0);
        c.record(ObjectKind::Gdt, Some(0x1000), b"g", 0);
        assert_ne!(a.launch_digest, c.launch_digest);
    }

    #[test]
    fn encoding_layout() {
        let e = MeasuredObject {
            kind: ObjectKind::Gdt,
            gpa: None,
            size: 40,
            sha256: Digest([7; 32]),
        };
        let enc = e.encoding();
        assert_eq!(&enc[..4], b"gdt\0");
        assert_eq!(&enc[4..12], &u64::MAX.to_le_bytes());
        assert_eq!(&enc[12..20], &40u64.to_le_bytes());
        assert_eq!(&enc[20..], &[7; 32]);
    }

    #[test]
    fn json_round_trip() {
        let mut log = MeasurementLog::new();
        log.record(ObjectKind::KernelImage, None, b"whole file", 0);
        log.record(ObjectKind::KernelSegment, Some(0x10_0000), b"text", 12);
        let json = log.to_json();
        assert!(json.contains("\"kind\": \"kernel-segment\""), "{json}");
        assert!(!json.contains("\"gpa\": null"), "{json}");
        let back = MeasurementLog::from_json(&json).unwrap();
        assert_eq!(back, log);
        assert_eq!(back.replay(), log.launch_digest);
        assert!(
            MeasurementLog::from_json(&json.replace(&log.launch_digest.to_hex(), "zz")).is_err()
        );
        assert_eq!(Digest::from_hex(&"0".repeat(63)), None);
        assert_eq!(Digest::from_hex(&"é".repeat(32)), None);
    }
}
