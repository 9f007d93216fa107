// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! An initramfs builder: a cpio archive in the "newc" format Linux unpacks over its
//! rootfs, uncompressed (the kernel takes it as it is), built in memory without tools.
//!
//! Each entry is the ASCII magic `070701`, thirteen 8-digit hexadecimal fields (inode,
//! mode, uid, gid, nlink, mtime, file size, device major/minor, rdev major/minor, name
//! size with its NUL, checksum 0), the name and its NUL padded to 4 bytes, then the data
//! padded to 4 bytes. The archive ends with an entry named `TRAILER!!!`. Everything is
//! owned by root with mtime 0, so the same inputs give the same bytes.
//!
//! Suggested kernel command line for the machine (hardware-reduced ACPI, COM1 console):
//! [`LINUX_CMDLINE`].

/// The command line for Linux on this machine: the console on COM1, power-off and
/// reboot through the machine's devices (`reboot=k` is the i8042 reset, `panic=-1`
/// reboots at once), no PCI probing, one 8250 port, no i8042 probing, no crypto
/// self-tests, and a quiet boot (every console byte costs a port exit). Neither
/// `noapic` nor `nolapic`: without a PIC (hardware-reduced ACPI) interrupts only reach
/// the CPUs through the IOAPIC, and `nolapic` gives up SMP.
pub const LINUX_CMDLINE: &str = "console=ttyS0 reboot=k panic=-1 pci=off tsc=reliable \
     no_timer_check 8250.nr_uarts=1 i8042.noaux i8042.nomux i8042.dumbkbd cryptomgr.notests quiet";

/// What [`REPORT_INIT`] prints first on its report line.
pub const REPORT_MARKER: &str = "@@veil-linux@@";

/// An `/init` for [`busybox_initramfs`] that reports and powers off: one line starting
/// with [`REPORT_MARKER`] holding the guest's uptime in seconds when it got there
/// (`uptime=S`, from `/proc/uptime`: the boot-to-marker time, by the guest's clock), the
/// command line (`cmdline=[...]`), the CPU count Linux brought up (`cpus=N`) and
/// `MemTotal`, then `poweroff -f`. What veil's Linux boot tests and boot-time
/// measurements run.
pub const REPORT_INIT: &str = r#"#!/bin/busybox sh
/bin/busybox mkdir -p /proc /sys
/bin/busybox mount -t proc proc /proc
echo "@@veil-linux@@ uptime=$(/bin/busybox cut -d' ' -f1 /proc/uptime) cmdline=[$(/bin/busybox cat /proc/cmdline)] cpus=$(/bin/busybox grep -c ^processor /proc/cpuinfo) $(/bin/busybox grep MemTotal /proc/meminfo) @@end"
/bin/busybox poweroff -f
"#;

const MAGIC: &[u8; 6] = b"070701";
const TRAILER: &str = "TRAILER!!!";

/// `S_IFDIR`.
pub const MODE_DIR: u32 = 0o040_000;
/// `S_IFREG`.
pub const MODE_FILE: u32 = 0o100_000;
/// `S_IFLNK`.
pub const MODE_SYMLINK: u32 = 0o120_000;
/// `S_IFCHR`.
pub const MODE_CHAR: u32 = 0o020_000;

/// Why an entry was refused. The archive is unchanged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InitramfsError {
    /// The path is empty, holds a NUL, or names `.`/`..` components.
    #[error("{path:?} is not a path inside the archive")]
    BadPath {
        /// The path given.
        path: String,
    },
    /// newc sizes are 32-bit.
    #[error("{path:?} has {len} bytes; newc entries hold at most 4 GiB - 1")]
    TooLarge {
        /// The entry.
        path: String,
        /// Its size.
        len: usize,
    },
}

#[derive(Debug, Clone)]
struct Entry {
    name: String,
    mode: u32,
    rdev: (u32, u32),
    data: Vec<u8>,
}

/// A cpio newc archive being built.
#[derive(Debug, Clone, Default)]
pub struct Initramfs {
    entries: Vec<Entry>,
}

fn checked_name(path: &str) -> Result<String, InitramfsError> {
    let name = path.trim_start_matches('/');
    let bad = name.is_empty()
        || name.contains('\0')
        || name
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..");
    if bad {
        return Err(InitramfsError::BadPath {
            path: path.to_string(),
        });
    }
    Ok(name.to_string())
}

impl Initramfs {
    /// An empty archive.
    pub fn new() -> Self {
        Initramfs::default()
    }

    fn push(
        &mut self,
        path: &str,
        mode: u32,
        rdev: (u32, u32),
        data: Vec<u8>,
    ) -> Result<&mut Self, InitramfsError> {
        let name = checked_name(path)?;
        if u32::try_from(data.len()).is_err() {
            return Err(InitramfsError::TooLarge {
                path: path.to_string(),
                len: data.len(),
            });
        }
        self.entries.push(Entry {
            name,
            mode,
            rdev,
            data,
        });
        Ok(self)
    }

    /// A directory with permissions `perm` (0o755, say).
    pub fn dir(&mut self, path: &str, perm: u32) -> Result<&mut Self, InitramfsError> {
        self.push(path, MODE_DIR | (perm & 0o7777), (0, 0), Vec::new())
    }

    /// A regular file.
    pub fn file(
        &mut self,
        path: &str,
        perm: u32,
        data: &[u8],
    ) -> Result<&mut Self, InitramfsError> {
        self.push(path, MODE_FILE | (perm & 0o7777), (0, 0), data.to_vec())
    }

    /// A symbolic link to `target`.
    pub fn symlink(&mut self, path: &str, target: &str) -> Result<&mut Self, InitramfsError> {
        self.push(
            path,
            MODE_SYMLINK | 0o777,
            (0, 0),
            target.as_bytes().to_vec(),
        )
    }

    /// A character device `major:minor` (5:1 is `/dev/console`).
    pub fn char_device(
        &mut self,
        path: &str,
        perm: u32,
        major: u32,
        minor: u32,
    ) -> Result<&mut Self, InitramfsError> {
        self.push(
            path,
            MODE_CHAR | (perm & 0o7777),
            (major, minor),
            Vec::new(),
        )
    }

    /// The archive's bytes, trailer included.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for (i, e) in self.entries.iter().enumerate() {
            let nlink = if e.mode & 0o170_000 == MODE_DIR { 2 } else { 1 };
            write_entry(&mut out, i as u32 + 1, e, nlink);
        }
        let trailer = Entry {
            name: TRAILER.to_string(),
            mode: 0,
            rdev: (0, 0),
            data: Vec::new(),
        };
        write_entry(&mut out, 0, &trailer, 1);
        out
    }
}

fn pad4(out: &mut Vec<u8>) {
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

fn write_entry(out: &mut Vec<u8>, ino: u32, e: &Entry, nlink: u32) {
    out.extend_from_slice(MAGIC);
    let fields = [
        ino,
        e.mode,
        0, // uid
        0, // gid
        nlink,
        0, // mtime
        e.data.len() as u32,
        0, // devmajor
        0, // devminor
        e.rdev.0,
        e.rdev.1,
        e.name.len() as u32 + 1,
        0, // check
    ];
    for f in fields {
        out.extend_from_slice(format!("{f:08X}").as_bytes());
    }
    out.extend_from_slice(e.name.as_bytes());
    out.push(0);
    pad4(out);
    out.extend_from_slice(&e.data);
    pad4(out);
}

/// An initramfs around a static busybox: `/bin/busybox`, `/bin/sh` linked to it, the
/// directories Linux and busybox expect (`/dev`, `/proc`, `/sys`, `/tmp`), and `init`
/// as `/init`, a script run by busybox's shell (start it with `#!/bin/busybox sh`).
pub fn busybox_initramfs(busybox: &[u8], init: &str) -> Result<Vec<u8>, InitramfsError> {
    let mut a = Initramfs::new();
    for d in ["bin", "dev", "proc", "sys", "tmp"] {
        a.dir(d, 0o755)?;
    }
    a.file("bin/busybox", 0o755, busybox)?
        .symlink("bin/sh", "busybox")?
        .file("init", 0o755, init.as_bytes())?;
    Ok(a.to_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_report_init_prints_its_marker() {
        assert!(REPORT_INIT.starts_with("#!/bin/busybox sh\n"));
        assert!(REPORT_INIT.contains(&format!("echo \"{REPORT_MARKER} uptime=")));
        assert!(REPORT_INIT.trim_end().ends_with("poweroff -f"));
    }

    const HEADER_LEN: usize = 110;

    /// The fields and name of the entry at `at`, and where the next one starts.
    fn parse(b: &[u8], at: usize) -> ([u32; 13], String, Vec<u8>, usize) {
        assert_eq!(&b[at..at + 6], MAGIC, "magic at {at}");
        let mut f = [0u32; 13];
        for (i, v) in f.iter_mut().enumerate() {
            let s = std::str::from_utf8(&b[at + 6 + 8 * i..at + 14 + 8 * i]).unwrap();
            assert!(
                s.chars()
                    .all(|c| c.is_ascii_digit() || c.is_ascii_uppercase())
            );
            *v = u32::from_str_radix(s, 16).unwrap();
        }
        let name_len = f[11] as usize;
        let name_at = at + HEADER_LEN;
        assert_eq!(b[name_at + name_len - 1], 0, "name ends with NUL");
        let name = String::from_utf8(b[name_at..name_at + name_len - 1].to_vec()).unwrap();
        let data_at = (name_at + name_len).next_multiple_of(4);
        let data = b[data_at..data_at + f[6] as usize].to_vec();
        let next = (data_at + f[6] as usize).next_multiple_of(4);
        (f, name, data, next)
    }

    #[test]
    fn headers_padding_and_trailer() {
        let mut a = Initramfs::new();
        a.dir("/dev", 0o755)
            .unwrap()
            .char_device("dev/console", 0o600, 5, 1)
            .unwrap()
            .file("init", 0o755, b"#!/bin/sh\n")
            .unwrap()
            .symlink("sh", "busybox")
            .unwrap();
        let b = a.to_bytes();
        assert_eq!(b.len() % 4, 0);
        let mut at = 0;
        let mut seen = Vec::new();
        while at < b.len() {
            let (f, name, data, next) = parse(&b, at);
            // Header + name padded to 4, data padded to 4, zeros in the padding.
            assert_eq!(next % 4, 0);
            assert!(b[at + HEADER_LEN + f[11] as usize..].len() >= data.len());
            seen.push((name, f[1], f[4], (f[9], f[10]), data));
            at = next;
        }
        assert_eq!(at, b.len());
        assert_eq!(
            seen,
            vec![
                ("dev".into(), 0o040755, 2, (0, 0), vec![]),
                ("dev/console".into(), 0o020600, 1, (5, 1), vec![]),
                ("init".into(), 0o100755, 1, (0, 0), b"#!/bin/sh\n".to_vec()),
                ("sh".into(), 0o120777, 1, (0, 0), b"busybox".to_vec()),
                ("TRAILER!!!".into(), 0, 1, (0, 0), vec![]),
            ]
        );
        // A 3-byte name ("dev") + NUL after the 110-byte header: 114, padded to 116.
        assert_eq!(&b[110..114], b"dev\0");
        assert_eq!(&b[114..116], &[0, 0]);
        assert_eq!(&b[116..122], MAGIC);
    }

    #[test]
    fn the_same_inputs_give_the_same_bytes() {
        let one = busybox_initramfs(b"\x7fELF...", "#!/bin/busybox sh\necho hi\n").unwrap();
        let two = busybox_initramfs(b"\x7fELF...", "#!/bin/busybox sh\necho hi\n").unwrap();
        assert_eq!(one, two);
        let names: Vec<String> = {
            let mut at = 0;
            let mut v = Vec::new();
            while at < one.len() {
                let (_, name, _, next) = parse(&one, at);
                v.push(name);
                at = next;
            }
            v
        };
        assert!(names.contains(&"init".to_string()));
        assert!(names.contains(&"bin/busybox".to_string()));
        assert_eq!(names.last().map(String::as_str), Some(TRAILER));
    }

    #[test]
    fn bad_paths_are_refused() {
        let mut a = Initramfs::new();
        for p in ["", "/", "a//b", "../x", "a/./b", "nul\0x"] {
            assert!(
                matches!(a.file(p, 0o644, b""), Err(InitramfsError::BadPath { .. })),
                "{p:?}"
            );
        }
        assert_eq!(
            a.to_bytes().len(),
            parse(&a.to_bytes(), 0).3,
            "only the trailer"
        );
    }

    #[test]
    fn the_suggested_command_line_keeps_the_apics() {
        for word in ["console=ttyS0", "reboot=k", "panic=-1", "pci=off"] {
            assert!(LINUX_CMDLINE.split(' ').any(|w| w == word), "{word}");
        }
        assert!(!LINUX_CMDLINE.contains("noapic") && !LINUX_CMDLINE.contains("nolapic"));
    }
}
