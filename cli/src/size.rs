// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Memory sizes on the command line: `4096`, `512M`, `1G`, `64GiB`.

const PAGE: u64 = 4096;

/// Parses a size in bytes with an optional binary suffix (K, M, G, T, with or without
/// `iB`), refusing 0, sizes that are not a whole number of 4 KiB pages, and overflow.
pub fn parse(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (number, suffix) = t.split_at(digits);
    if number.is_empty() {
        return Err(format!(
            "{s:?} is not a size: give a number of bytes with an optional K, M, G or T suffix"
        ));
    }
    let shift = match suffix.to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kib" | "kb" => 10,
        "m" | "mib" | "mb" => 20,
        "g" | "gib" | "gb" => 30,
        "t" | "tib" | "tb" => 40,
        _ => {
            return Err(format!(
                "{s:?} has an unknown suffix {suffix:?}: use K, M, G or T (powers of 1024)"
            ));
        }
    };
    let n: u64 = number.parse().map_err(|_| format!("{s:?} is too large"))?;
    let bytes = n
        .checked_mul(1u64 << shift)
        .ok_or_else(|| format!("{s:?} is too large"))?;
    if bytes == 0 {
        return Err("a size of 0: guest memory needs at least one 4 KiB page".into());
    }
    if bytes % PAGE != 0 {
        return Err(format!(
            "{s:?} is not a whole number of 4 KiB pages ({bytes} bytes)"
        ));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suffixes_are_powers_of_1024() {
        assert_eq!(parse("4096"), Ok(4096));
        assert_eq!(parse("4K"), Ok(4096));
        assert_eq!(parse("512M"), Ok(512 << 20));
        assert_eq!(parse("1g"), Ok(1 << 30));
        assert_eq!(parse("64GiB"), Ok(64 << 30));
        assert_eq!(parse(" 2T "), Ok(2 << 40));
    }

    #[test]
    fn bad_sizes_say_why() {
        assert!(parse("0").unwrap_err().contains("size of 0"));
        assert!(parse("0M").unwrap_err().contains("size of 0"));
        assert!(parse("100").unwrap_err().contains("4 KiB pages"));
        assert!(parse("1X").unwrap_err().contains("unknown suffix"));
        assert!(parse("M").unwrap_err().contains("not a size"));
        assert!(parse("").unwrap_err().contains("not a size"));
        assert!(parse("-1G").unwrap_err().contains("not a size"));
        assert!(
            parse("99999999999999999999")
                .unwrap_err()
                .contains("too large")
        );
        assert!(parse("17179869184T").unwrap_err().contains("too large"));
    }
}
