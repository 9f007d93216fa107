// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Guest programs, kept as assembly source in `guests/` and assembled by the Rust
//! compiler into the test binary, so the binary needs nothing beside it in the testbed.
//!
//! Each `guests/<name>.s` is GNU assembler (AT&T) source that starts by naming its mode
//! (`.code16` or `.code64`). It is placed in a read-only data section of its own between
//! two symbols and handed to the tests as bytes; it is never executed on the host. The
//! sources use no absolute addresses of their own labels (64-bit guests address their
//! data relative to `%rip`), so the bytes run wherever the test loads them. All sources
//! are assembled into one module: labels and macros carry the guest's name as a prefix,
//! or are numeric local labels.

/// The guest-physical address every guest program is loaded at and entered at
/// (`%cs` = 0, `%ip` = this).
pub const LOAD_GPA: u64 = 0x1000;

/// Assembles `guests/<name>.s` into the section `.rodata.veil_guest_<name>` and defines
/// a function `<name>()` returning its bytes.
macro_rules! guest {
    ($(#[$doc:meta])* $name:ident) => {
        std::arch::global_asm!(
            concat!(
                ".pushsection .rodata.veil_guest_", stringify!($name), ",\"a\",@progbits\n",
                ".p2align 4\n",
                ".globl veil_guest_", stringify!($name), "_start\n",
                ".hidden veil_guest_", stringify!($name), "_start\n",
                "veil_guest_", stringify!($name), "_start:\n",
                include_str!(concat!("guests/", stringify!($name), ".s")),
                "\n.code64\n",
                ".globl veil_guest_", stringify!($name), "_end\n",
                ".hidden veil_guest_", stringify!($name), "_end\n",
                "veil_guest_", stringify!($name), "_end:\n",
                ".popsection\n",
            ),
            options(att_syntax, raw)
        );

        $(#[$doc])*
        pub fn $name() -> &'static [u8] {
            mod symbols {
                unsafe extern "C" {
                    #[link_name = concat!("veil_guest_", stringify!($name), "_start")]
                    pub static START: u8;
                    #[link_name = concat!("veil_guest_", stringify!($name), "_end")]
                    pub static END: u8;
                }
            }
            let start = &raw const symbols::START;
            let end = &raw const symbols::END;
            let len = end.addr().saturating_sub(start.addr());
            // SAFETY: both symbols are defined by the `global_asm!` block above, in one
            // read-only section, `END` after `START`: the `len` bytes from `START` are the
            // assembled guest, initialised and never written, for the program's lifetime.
            unsafe { std::slice::from_raw_parts(start, len) }
        }
    };
}

guest!(
    /// `guests/probe.s`: reads `%ds:%si`, reports it on port 0x10; when `%ah` is
    /// non-zero writes it there and reports the byte read back on port 0x11; halts.
    probe
);

guest!(
    /// `guests/map_gpa_range.s`: issues `vmmcall` with the registers the host set
    /// and reports `%eax` (the hypercall's result) on port 0x12; halts.
    map_gpa_range
);

guest!(
    /// `guests/bad_requests.s` (64-bit): malformed MAP_GPA_RANGE requests, each result
    /// and whether the target page stayed as it was reported on port 0x10.
    bad_requests
);

guest!(
    /// `guests/conversions.s` (64-bit): the conversion scenarios of
    /// `private_mem_conversions_test` on one chunk of guest memory.
    conversions
);

#[cfg(test)]
mod tests {
    #[test]
    fn guests_are_assembled() {
        // movb (%si),%al = 8a 04; outb %al,$0x10 = e6 10; ...; hlt = f4.
        let probe = super::probe();
        assert_eq!(&probe[..4], &[0x8a, 0x04, 0xe6, 0x10]);
        assert_eq!(probe.last(), Some(&0xf4));
        // vmmcall = 0f 01 d9; outl %eax,$0x12 in 16-bit code = 66 e7 12; hlt = f4.
        assert_eq!(
            super::map_gpa_range(),
            &[0x0f, 0x01, 0xd9, 0x66, 0xe7, 0x12, 0xf4]
        );
    }
}
