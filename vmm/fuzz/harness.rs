// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The conversion fuzz harness, shared by the cargo-fuzz target and by veil-vmm's
//! `conversions_corpus` test (which replays the committed corpus in every `cargo test`).
//!
//! An input is a configuration byte, then a sequence of steps against veil-vmm's
//! [`MemoryExits`] over veil-memory's [`HostSafeMemory`]: guest conversion requests
//! (validated by veil-vcpu as a run loop would), memory faults, host reads and writes
//! through the checked accessors and through `vm-memory`, and a system call made to
//! fail. The memory is in the attributes flavor on a [`RecordingAttributesVm`] (with a
//! memfd standing in for guest_memfd), or in the emulated flavor on real memory; every
//! system call its conversions make is recorded.
//!
//! A model keeps each page's state and contents, from the requests alone and each
//! region's content policy. After every step, page by page: veil's attribute map agrees
//! with the model; the state the recorded kernel calls left (KVM's attributes, replayed
//! from the recorded `KVM_SET_MEMORY_ATTRIBUTES` calls, or the host view's protections,
//! replayed from the recorded `mprotect`s) agrees with it; and the host view's real
//! protections, probed with `process_vm_readv`, agree with that. Every host access to a
//! private page must be refused, every other access to guest memory must succeed, and
//! every byte read must be what the model says the page holds.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd};
use std::sync::{Arc, Mutex};

use veil_vmm::MemoryExits;
use veil_vmm::veil_attrs::{Attributes, FrameRange, Gfn};
use veil_vmm::veil_memory::vm_memory::{Bytes as _, GuestAddress};
use veil_vmm::veil_memory::{
    BackendError, ContentPolicy, Flavor, GuestMemfdSource, HostAccessError, HostSafeMemory,
    RecordingAttributesVm, RegionSpec, StepKind, Store, Syscall, Syscalls,
};
use veil_vmm::veil_vcpu::{
    MapGpaRangeArgs, MemoryFault, MemoryHandler, RequestOutcome, veil_attrs::PAGE_SIZE,
};

const PAGE: u64 = PAGE_SIZE;
/// The regions, in frames: two adjacent ones, a gap, a third.
const REGIONS: [(u64, u64); 3] = [(0, 32), (32, 32), (128, 32)];
/// Frames from 0 to the end of the last region.
const FRAMES: u64 = 160;

/// The region of each frame below [`FRAMES`], or [`NO_REGION`]: looked up for every
/// frame at every step.
const REGION_OF: [u8; FRAMES as usize] = {
    let mut table = [NO_REGION; FRAMES as usize];
    let mut r = 0;
    while r < REGIONS.len() {
        let (s, n) = REGIONS[r];
        let mut g = s;
        while g < s + n {
            table[g as usize] = r as u8;
            g += 1;
        }
        r += 1;
    }
    table
};
const NO_REGION: u8 = u8::MAX;

/// A guest_memfd stand-in: a memfd, which punches holes the same way.
struct MemfdSource;

impl GuestMemfdSource for MemfdSource {
    fn guest_memfd_flags(&self) -> Result<u64, BackendError> {
        Ok(0)
    }

    fn create_guest_memfd(&self, size: u64, _flags: u64) -> io::Result<OwnedFd> {
        // SAFETY: a NUL-terminated name and flags; the kernel returns a new descriptor or
        // -1.
        let fd = unsafe { libc::memfd_create(c"veil-fuzz-gmem".as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just returned by memfd_create and nothing else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let size = libc::off_t::try_from(size).map_err(|_| io::Error::other("size"))?;
        // SAFETY: `fd` is an open memfd.
        if unsafe { libc::ftruncate(std::os::fd::AsRawFd::as_raw_fd(&fd), size) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(fd)
    }
}

/// One recorded system call: what, over which frames, and whether it succeeded.
#[derive(Debug, Clone, Copy)]
struct Recorded {
    kind: StepKind,
    range: FrameRange,
    ok: bool,
}

/// Records every system call, failing the one it is told to.
#[derive(Default)]
struct Recorder {
    calls: Mutex<Vec<Recorded>>,
    fail: Mutex<Option<(usize, i32)>>,
}

impl Syscalls for Recorder {
    fn issue(&self, call: Syscall<'_>) -> io::Result<()> {
        let (kind, range) = (call.kind(), call.range());
        let injected = {
            let mut fail = self.fail.lock().unwrap_or_else(|p| p.into_inner());
            match *fail {
                Some((0, errno)) => {
                    *fail = None;
                    Some(errno)
                }
                Some((n, errno)) => {
                    *fail = Some((n - 1, errno));
                    None
                }
                None => None,
            }
        };
        let result = match injected {
            Some(errno) => Err(io::Error::from_raw_os_error(errno)),
            None => call.issue(),
        };
        let ok = result.is_ok();
        let mut calls = self.calls.lock().unwrap_or_else(|p| p.into_inner());
        calls.push(Recorded { kind, range, ok });
        result
    }
}

impl Recorder {
    fn take(&self) -> Vec<Recorded> {
        std::mem::take(&mut *self.calls.lock().unwrap_or_else(|p| p.into_inner()))
    }
    fn armed_errno(&self) -> Option<i32> {
        self.fail
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .map(|(_, errno)| errno)
    }
    fn disarm(&self) {
        *self.fail.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
}

/// Reads the input front to back; past its end everything is zero.
struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    fn u8(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }
    fn u64(&mut self) -> u64 {
        (0..8).fold(0, |v, i| v | u64::from(self.u8()) << (8 * i))
    }
}

struct Model {
    attributes: bool,
    policies: [ContentPolicy; 3],
    /// Whether each page is private.
    private: Vec<bool>,
    /// Contents of the shared side of pages written to, by frame; missing pages read
    /// zero.
    contents: Vec<Option<Box<[u8]>>>,
    /// The state the recorded calls left: KVM's attributes (attributes flavor) or the
    /// host view's protections (emulated), per page.
    kernel: Vec<bool>,
    stats: veil_vmm::MemoryExitStats,
}

impl Model {
    fn region_of(g: u64) -> Option<usize> {
        let r = *REGION_OF.get(usize::try_from(g).ok()?)?;
        (r != NO_REGION).then_some(usize::from(r))
    }

    fn in_memory(g: u64) -> bool {
        Self::region_of(g).is_some()
    }

    /// Whether a page that changes state under `policy` loses its (shared) contents.
    fn discards(&self, policy: ContentPolicy, to_private: bool) -> bool {
        match (self.attributes, policy) {
            (true, ContentPolicy::Discard) => to_private,
            (false, ContentPolicy::Discard) => true,
            _ => false,
        }
    }

    /// Checks that `got` is what the model holds from `gpa` on.
    fn check_read(&self, gpa: u64, got: &[u8]) {
        let mut done = 0;
        while done < got.len() {
            let a = gpa + done as u64;
            let (g, offset) = (a / PAGE, (a % PAGE) as usize);
            let n = (got.len() - done).min(PAGE as usize - offset);
            let got = &got[done..done + n];
            let want = self.contents[g as usize]
                .as_deref()
                .map(|p| &p[offset..offset + n]);
            let same = match want {
                Some(want) => got == want,
                None => *got == ZEROS[..n],
            };
            if !same {
                // Name the first byte that differs.
                for (i, &b) in got.iter().enumerate() {
                    let want = want.map_or(0, |w| w[i]);
                    assert_eq!(b, want, "byte at {:#x}", a + i as u64);
                }
            }
            done += n;
        }
    }

    fn write(&mut self, gpa: u64, data: &[u8]) {
        let mut done = 0;
        while done < data.len() {
            let a = gpa + done as u64;
            let (g, offset) = (a / PAGE, (a % PAGE) as usize);
            let n = (data.len() - done).min(PAGE as usize - offset);
            self.contents[g as usize]
                .get_or_insert_with(|| vec![0; PAGE as usize].into_boxed_slice())
                [offset..offset + n]
                .copy_from_slice(&data[done..done + n]);
            done += n;
        }
    }

    /// Applies a recorded call to the kernel-side state; `contents`: a discard drops the
    /// model's contents too (for conversions that failed; a successful one changes the
    /// contents as the policy says, whatever the calls did).
    fn replay(&mut self, call: &Recorded, contents: bool) {
        if !call.ok {
            return;
        }
        let private = match call.kind {
            StepKind::SetAttributes(a) if self.attributes => a.is_private(),
            StepKind::Protect { inaccessible } if !self.attributes => inaccessible,
            StepKind::Discard(Store::View) => {
                if contents {
                    for g in call.range.start().0..call.range.end().0 {
                        self.contents[g as usize] = None;
                    }
                }
                return;
            }
            StepKind::Discard(Store::GuestMemfd) => {
                assert!(
                    self.attributes,
                    "a guest_memfd discard in the emulated flavor"
                );
                return;
            }
            other => panic!("{other} in the wrong flavor"),
        };
        for g in call.range.start().0..call.range.end().0 {
            assert!(Self::in_memory(g), "{call:?} outside guest memory");
            self.kernel[g as usize] = private;
        }
    }
}

/// How many of the host view bytes at `addrs` can be read, in order up to the first
/// that cannot, without touching them: the kernel refuses `process_vm_readv` on a page
/// the process cannot read, and stops there.
fn readable_bytes(addrs: &[u64]) -> usize {
    let mut bytes = [0u8; 2];
    let local = libc::iovec {
        iov_base: bytes.as_mut_ptr().cast(),
        iov_len: addrs.len().min(bytes.len()),
    };
    let remote = [0, 1].map(|k| libc::iovec {
        iov_base: addrs.get(k).map_or(0, |&addr| addr) as *mut libc::c_void,
        iov_len: 1,
    });
    // SAFETY: the local iovec is bytes of this stack frame, as many as the remote ones;
    // those are only read by the kernel, which checks them and stops (or fails with
    // EFAULT) at the first that is not readable.
    let n = unsafe {
        libc::process_vm_readv(
            libc::getpid(),
            &local,
            1,
            remote.as_ptr(),
            local.iov_len as libc::c_ulong,
            0,
        )
    };
    usize::try_from(n).unwrap_or(0)
}

/// The recorded attributes VM and memory of one input.
struct Memory {
    exits: MemoryExits,
    recorder: Arc<Recorder>,
    view: [u64; 3],
}

fn build(attributes: bool, policies: [ContentPolicy; 3]) -> Memory {
    let recorder = Arc::new(Recorder::default());
    let flavor = if attributes {
        Flavor::ATTRIBUTES
    } else {
        Flavor::EMULATED
    };
    let vm = Arc::new(RecordingAttributesVm::new());
    let source = MemfdSource;
    let mut builder = HostSafeMemory::builder().syscalls(recorder.clone());
    if attributes {
        builder = builder.guest_memfd_source(&source).attributes_vm(vm);
    }
    for (&(s, n), &policy) in REGIONS.iter().zip(&policies) {
        builder = builder.region(RegionSpec::new(s * PAGE, n * PAGE, flavor).policy(policy));
    }
    let memory = builder.build().expect("building guest memory");
    let mut view = [0; 3];
    for (v, r) in view.iter_mut().zip(memory.regions()) {
        *v = r.host_view_addr();
    }
    Memory {
        exits: MemoryExits::new(Arc::new(memory)),
        recorder,
        view,
    }
}

/// The host view address of guest frame `g`.
fn view_addr(m: &Memory, g: u64) -> Option<u64> {
    let r = Model::region_of(g)?;
    Some(m.view[r] + (g - REGIONS[r].0) * PAGE)
}

/// A guest-physical address near the places where things change: region edges, the
/// gap, page edges, or anywhere.
fn gpa(input: &mut Input<'_>) -> u64 {
    let sel = input.u8();
    let frame = u64::from(input.u8()) % (FRAMES + 8);
    match sel & 3 {
        0 | 1 => frame * PAGE,
        2 => (frame * PAGE)
            .wrapping_add(u64::from(input.u8()))
            .wrapping_sub(128),
        _ => input.u64(),
    }
}

/// Runs one input.
pub fn run(data: &[u8]) {
    let mut input = Input(data);
    let config = input.u8();
    let attributes = config & 1 != 0;
    let policy = |bits: u8| match (attributes, bits & 3) {
        (true, 0 | 2) => ContentPolicy::Discard,
        (true, _) => ContentPolicy::Retain,
        (false, 0) => ContentPolicy::Discard,
        (false, 1) => ContentPolicy::Preserve,
        (false, _) => ContentPolicy::Retain,
    };
    let policies = [
        policy(config >> 1),
        policy(config >> 3),
        policy(config >> 5),
    ];
    let memory = build(attributes, policies);
    let mut model = Model {
        attributes,
        policies,
        private: vec![false; FRAMES as usize],
        contents: vec![None; FRAMES as usize],
        kernel: vec![false; FRAMES as usize],
        stats: Default::default(),
    };
    // Building makes no calls the model does not know of.
    for call in memory.recorder.take() {
        model.replay(&call, true);
    }
    let mut steps = 0;
    while !input.is_empty() && steps < 48 {
        steps += 1;
        let op = input.u8();
        match op % 8 {
            0..=2 => {
                let gpa = gpa(&mut input);
                let pages = match input.u8() {
                    0 => input.u64(),
                    n => u64::from(n % 48),
                };
                let mut attributes = if op & 0x10 != 0 { 0x10 } else { 0 };
                attributes |= u64::from(op >> 5 & 1);
                if op & 0x40 != 0 {
                    attributes = input.u64();
                }
                let args = MapGpaRangeArgs {
                    nr: 12,
                    gpa,
                    pages,
                    attributes,
                    long_mode: op & 0x80 == 0,
                };
                request(&memory, &mut model, &args);
            }
            3 | 4 => {
                let fault = MemoryFault {
                    gpa: gpa(&mut input),
                    size: u64::from(input.u8()) * 64 + u64::from(op >> 3 & 1),
                    flags: if op & 0x10 != 0 { 8 } else { 0 } | u64::from(op >> 5 & 2),
                };
                fault_exit(&memory, &mut model, &fault);
            }
            5 | 6 => {
                let gpa = gpa(&mut input);
                let len = usize::from(input.u8()) * 48 + 1;
                let write = op & 0x10 != 0;
                let through_vm_memory = op & 0x20 != 0;
                host_access(&memory, &mut model, gpa, len, write, through_vm_memory, op);
            }
            _ => {
                let errno = [libc::EINTR, libc::EAGAIN, libc::ENOMEM, libc::EPERM]
                    [usize::from(op >> 3 & 3)];
                *memory
                    .recorder
                    .fail
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()) = Some((usize::from(op >> 5), errno));
            }
        }
        check(&memory, &model, false);
    }
    check(&memory, &model, true);
}

/// A conversion request as a guest makes it: validated by veil-vcpu against the layout,
/// then handed to the memory exits.
fn request(m: &Memory, model: &mut Model, args: &MapGpaRangeArgs) {
    let layout = m.exits.layout().clone();
    let Ok(request) = args.validate(&layout) else {
        return;
    };
    let (range, to) = (request.range(), request.to());
    // veil-vcpu validated it: inside the layout, in one contiguous span.
    for g in range.start().0..range.end().0 {
        assert!(Model::in_memory(g), "{request} validated outside memory");
    }
    let armed = m.recorder.armed_errno();
    let result = m.exits.map_gpa_range(&request);
    let calls = m.recorder.take();
    let failed = calls.iter().any(|c| !c.ok);
    model.stats.requests += 1;
    // An interrupted call is the guest's to retry; any other failure stops the VM.
    let retry = matches!(armed, Some(libc::EINTR | libc::EAGAIN));
    match (&result, failed) {
        (Ok(RequestOutcome::Done), false) => convert(model, range, to, &calls),
        (Ok(RequestOutcome::Retry), true) if retry => {
            model.stats.retried += 1;
            undone(model, &calls);
        }
        (Err(_), true) if !retry => {
            model.stats.failed += 1;
            undone(model, &calls);
        }
        other => panic!("{request}: {other:?} with calls {calls:?} (failure armed: {armed:?})"),
    }
    m.recorder.disarm();
    probe(m, model, &calls);
}

/// A memory fault: veil-vcpu gives the handler the faulting frames when they are guest
/// memory.
fn fault_exit(m: &Memory, model: &mut Model, fault: &MemoryFault) {
    let Some(range) = fault.frames() else { return };
    if !m.exits.layout().contains(&range) {
        return;
    }
    let to = fault.access().attributes();
    let already =
        (range.start().0..range.end().0).all(|g| model.private[g as usize] == to.is_private());
    let result = m.exits.memory_fault(fault, range);
    let calls = m.recorder.take();
    let failed = calls.iter().any(|c| !c.ok);
    match (result, failed) {
        (Ok(0), false) if already => assert!(calls.is_empty(), "{calls:?}"),
        (Ok(n), false) if !already => {
            let before = model.stats;
            convert(model, range, to, &calls);
            let moved = model.stats.pages_to_private + model.stats.pages_to_shared
                - before.pages_to_private
                - before.pages_to_shared;
            assert_eq!(n, moved, "pages changed by {fault}");
            model.stats.faults += 1;
        }
        (Err(_), true) => undone(model, &calls),
        (result, _) => panic!("{fault}: {result:?} with calls {calls:?}"),
    }
    m.recorder.disarm();
    probe(m, model, &calls);
}

/// A successful conversion of `range` to `to`: the model's pages change, contents go
/// as the policies say, and the calls made are what those policies allow.
fn convert(model: &mut Model, range: FrameRange, to: Attributes, calls: &[Recorded]) {
    let private = to.is_private();
    let mut discarded = vec![false; FRAMES as usize];
    for c in calls {
        if let StepKind::Discard(Store::View) = c.kind {
            for g in c.range.start().0..c.range.end().0 {
                discarded[g as usize] = true;
            }
        }
        // Calls act within the conversion's range only.
        assert!(
            range.contains_range(&c.range),
            "{c:?} outside the conversion of {range}"
        );
    }
    for g in range.start().0..range.end().0 {
        let r = Model::region_of(g).expect("a page of a validated range");
        let policy = model.policies[r];
        if model.private[g as usize] != private {
            if private {
                model.stats.pages_to_private += 1;
            } else {
                model.stats.pages_to_shared += 1;
            }
            model.private[g as usize] = private;
            if model.discards(policy, private) {
                assert!(
                    discarded[g as usize],
                    "page {g:#x} not discarded ({policy:?})"
                );
                model.contents[g as usize] = None;
            }
        }
        if matches!(policy, ContentPolicy::Preserve | ContentPolicy::Retain) {
            assert!(
                !discarded[g as usize],
                "page {g:#x} discarded under {policy:?}"
            );
        }
    }
    for c in calls {
        model.replay(c, false);
    }
}

/// A conversion that failed: veil undid it, so the model's states stand; contents a
/// discard dropped before the failure are gone (a discard cannot be undone).
fn undone(model: &mut Model, calls: &[Recorded]) {
    for c in calls {
        model.replay(c, true);
    }
}

fn host_access(
    m: &Memory,
    model: &mut Model,
    gpa: u64,
    len: usize,
    write: bool,
    through_vm_memory: bool,
    seed: u8,
) {
    let memory = m.exits.memory();
    let end = u128::from(gpa) + len as u128;
    // The span holding the first byte: [0, 64) or [128, 160) frames.
    let span = SPANS
        .iter()
        .map(|&(s, e)| (s * PAGE, e * PAGE))
        .find(|&(s, e)| s <= gpa && gpa < e);
    // What is checked and copied: the whole access through the checked accessors; through
    // `vm-memory`, the part in the first span (it then stops, short, with an error).
    let piece = span.map(|(_, e)| (gpa, end.min(u128::from(e)) as u64));
    let whole = piece.is_some_and(|(_, e)| u128::from(e) == end);
    let private =
        |(a, e): (u64, u64)| (a / PAGE..e.div_ceil(PAGE)).find(|&g| model.private[g as usize]);
    let data: Vec<u8> = (0..len)
        .map(|i| seed ^ (i as u8).wrapping_mul(31))
        .collect();
    let mut buf = vec![FILL[0]; len];
    let result = match (write, through_vm_memory) {
        (true, false) => memory.host_write(gpa, &data).map_err(Some),
        (false, false) => memory.host_read(gpa, &mut buf).map_err(Some),
        (true, true) => memory
            .write_slice(&data, GuestAddress(gpa))
            .map_err(|e| veil_vmm::veil_memory::host_access_error(&e).cloned()),
        (false, true) => memory
            .read_slice(&mut buf, GuestAddress(gpa))
            .map_err(|e| veil_vmm::veil_memory::host_access_error(&e).cloned()),
    };
    // (start, end) of the bytes that must have been copied.
    let copied = match (&result, piece) {
        (Ok(()), Some(p)) if whole && private(p).is_none() => Some(p),
        (Ok(()), _) => panic!("host access at {gpa:#x}+{len:#x} allowed"),
        (Err(Some(HostAccessError::Private { private: named, .. })), Some(p)) => {
            let checked = if through_vm_memory || whole {
                Some(p)
            } else {
                None
            };
            let first = checked.and_then(private);
            assert!(
                first.is_some(),
                "access at {gpa:#x}+{len:#x} refused as private"
            );
            // The run named is private, and inside the access's pages.
            assert_eq!(named.start().0, first.unwrap_or(0), "{named}");
            assert!(named.end().0 <= p.1.div_ceil(PAGE), "{named}");
            for g in named.start().0..named.end().0 {
                assert!(model.private[g as usize], "{named} named private");
            }
            None
        }
        (Err(Some(HostAccessError::NotGuestMemory { .. })), p) => {
            assert!(
                p.is_none() || !whole,
                "access at {gpa:#x}+{len:#x} refused as outside"
            );
            assert!(
                !through_vm_memory || p.is_none(),
                "vm-memory refused a first byte inside"
            );
            None
        }
        // vm-memory copied the part in the first span, then stopped short.
        (Err(None), Some(p)) if through_vm_memory && !whole && private(p).is_none() => Some(p),
        // vm-memory's own error for a first byte outside guest memory.
        (Err(None), None) if through_vm_memory => None,
        (Err(e), _) => panic!("host access at {gpa:#x}+{len:#x}: {e:?}"),
    };
    let n = copied.map_or(0, |(a, e)| (e - a) as usize);
    if write {
        model.write(gpa, &data[..n]);
    } else {
        model.check_read(gpa, &buf[..n]);
    }
    assert!(
        buf[n..].chunks(FILL.len()).all(|c| *c == FILL[..c.len()]),
        "a refused read copied bytes"
    );
}

/// What a read buffer holds before the read: a page of it.
const FILL: [u8; PAGE as usize] = [0xee; PAGE as usize];

/// A page of zeros, what a page never written holds.
const ZEROS: [u8; PAGE as usize] = [0; PAGE as usize];

/// Guest-physically contiguous runs of regions, in frames.
const SPANS: [(u64, u64); 2] = [(0, 64), (128, 160)];

/// The host view's real protection at both ends of every range a recorded call touched.
fn probe(m: &Memory, model: &Model, calls: &[Recorded]) {
    for c in calls {
        let (first, last) = (c.range.start().0, c.range.last().0);
        probe_page(model, first, readable(view_addr(m, first)));
        // (A one-page range has one end.)
        if last != first {
            probe_page(model, last, readable(view_addr(m, last)));
        }
    }
}

/// Checks that frame `g`'s host view is `readable` exactly when the model says.
fn probe_page(model: &Model, g: u64, readable: Option<bool>) {
    let want = model.attributes || !model.private[g as usize];
    assert_eq!(readable, Some(want), "host view protection at frame {g:#x}");
}

/// Whether the byte at `addr`, and the last byte of its page, can be read.
fn readable(addr: Option<u64>) -> Option<bool> {
    let addr = addr?;
    let last = addr + PAGE - 1;
    // Both in one call; where the first cannot be read, the last on its own.
    let (first, last) = match readable_bytes(&[addr, last]) {
        2 => (true, true),
        1 => (true, false),
        _ => (false, readable_bytes(&[last]) == 1),
    };
    assert_eq!(first, last, "a page readable in part at {addr:#x}");
    Some(first)
}

/// The readable ranges of this process's address space, from `/proc/self/maps`, in
/// address order.
fn readable_ranges() -> Vec<(u64, u64, bool)> {
    let maps = std::fs::read("/proc/self/maps").expect("reading /proc/self/maps");
    let mut ranges = Vec::new();
    let mut rest = &maps[..];
    while !rest.is_empty() {
        // The line's end, found by libc's memchr: one call, not a check per byte.
        // SAFETY: `rest` is `rest.len()` readable bytes; memchr reads no further.
        let nl = unsafe { libc::memchr(rest.as_ptr().cast(), b'\n'.into(), rest.len()) };
        let len = if nl.is_null() {
            rest.len()
        } else {
            nl as usize - rest.as_ptr() as usize
        };
        let line = &rest[..len];
        rest = &rest[(len + 1).min(rest.len())..];
        // Each line starts `start-end perms `, in hexadecimal.
        let (start, line) = hex_until(line, b'-');
        let (end, line) = hex_until(line, b' ');
        ranges.push((start, end, line.first() == Some(&b'r')));
    }
    assert!(
        ranges
            .windows(2)
            .all(|w| w[0].0 < w[0].1 && w[0].1 <= w[1].0),
        "/proc/self/maps out of order"
    );
    ranges
}

/// The hexadecimal number `text` starts with, up to `end`, and what follows `end`.
fn hex_until(text: &[u8], end: u8) -> (u64, &[u8]) {
    let mut value = 0u64;
    for (i, &c) in text.iter().enumerate() {
        let digit = HEX[usize::from(c)];
        if digit == NOT_HEX {
            assert_eq!(c, end, "a line of /proc/self/maps");
            return (value, &text[i + 1..]);
        }
        value = value << 4 | u64::from(digit);
    }
    panic!("a line of /proc/self/maps ends early")
}

/// The value of each lower-case hexadecimal digit, [`NOT_HEX`] for other bytes.
const HEX: [u8; 256] = {
    let mut table = [NOT_HEX; 256];
    let mut d = 0;
    while d < 16 {
        table[b"0123456789abcdef"[d] as usize] = d as u8;
        d += 1;
    }
    table
};
const NOT_HEX: u8 = u8::MAX;

/// Whether the range of `ranges` holding the page at `addr` (whole) is readable, if one
/// does.
fn range_readable(ranges: &[(u64, u64, bool)], addr: u64) -> Option<bool> {
    let k = ranges
        .partition_point(|&(s, _, _)| s <= addr)
        .checked_sub(1)?;
    let (_, e, r) = ranges[k];
    (addr + PAGE <= e).then_some(r)
}

/// Whether the model has every page of `[a, b)` `private`, outside memory only shared
/// ones, and the recorded kernel calls left every one in memory `private`.
fn run_agrees(model: &Model, a: u64, b: u64, private: bool) -> bool {
    let same = [private; FRAMES as usize];
    let (a, b) = (a as usize, b as usize);
    if model.private[a..b] != same[..b - a] {
        return false;
    }
    let mut g = a;
    while g < b {
        // The frames from `g` on that are all in memory, or all outside it: up to the
        // next edge of a region.
        let inside = Model::in_memory(g as u64);
        let end = REGIONS
            .iter()
            .flat_map(|&(s, n)| [s, s + n])
            .map(|edge| edge as usize)
            .filter(|&edge| edge > g)
            .min()
            .map_or(b, |edge| edge.min(b));
        if inside {
            if model.kernel[g..end] != same[..end - g] {
                return false;
            }
        } else if private {
            return false;
        }
        g = end;
    }
    true
}

fn check(m: &Memory, model: &Model, probe_all: bool) {
    let memory = m.exits.memory();
    let map = memory.attributes();
    // The map's pages, read run by run (a lookup per page costs most of a step), and
    // looked up at both ends of every run.
    let frames = FrameRange::new(Gfn(0), FRAMES).expect("the frames");
    let mut next = 0;
    for run in map.runs(frames).expect("the frames of the map") {
        assert_eq!(run.range.start().0, next, "the runs of veil's map");
        for end in [run.range.start(), run.range.last()] {
            assert_eq!(map.get(end).ok(), Some(run.state), "veil's map at {end}");
        }
        let (a, b) = (run.range.start().0, run.range.end().0);
        let private = run.state.attributes.is_private();
        // The run's pages at once; page by page (naming the first that differs) if any
        // does.
        if !run_agrees(model, a, b, private) {
            for g in a..b {
                let want = model.private[g as usize];
                assert_eq!(private, want, "veil's map at frame {g:#x}");
                if !Model::in_memory(g) {
                    assert!(!want, "a frame outside memory is private");
                    continue;
                }
                assert_eq!(
                    model.kernel[g as usize], want,
                    "the kernel calls at frame {g:#x}"
                );
            }
        }
        next = b;
    }
    assert_eq!(next, FRAMES, "the runs of veil's map");
    assert_eq!(m.exits.stats(), model.stats, "memory exit statistics");
    if probe_all {
        // Every page of the host view, as the kernel lists its mappings.
        let ranges = readable_ranges();
        for g in 0..FRAMES {
            let Some(addr) = view_addr(m, g) else {
                continue;
            };
            probe_page(model, g, range_readable(&ranges, addr));
        }
    }
}
