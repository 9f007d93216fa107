// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The memory-model seam: [`MemoryModel`], what a flavor of conversion is, and the pieces
//! an implementation builds from.
//!
//! A model answers five questions for the regions that use it: what the host must offer
//! ([`MemoryModel::support`]), how a region is backed ([`MemoryModel::back`], returning
//! a [`Backing`]), which content policies it honours, whether host writes made while a
//! page is shared are what the guest reads once it is private
//! ([`MemoryModel::keeps_contents`], which decides how a loader populates private
//! memory), and which system calls carry out a conversion ([`MemoryModel::plan`], over
//! a [`RegionPlan`]). The conversion engine in [`HostSafeMemory`](crate::HostSafeMemory)
//! drives any model the same way: all or nothing with rollback, only the changed runs
//! reach the kernel, listeners in order, host-access leases.
//!
//! veil's own flavors ([`Flavor::ATTRIBUTES`], [`Flavor::IN_PLACE`],
//! [`Flavor::EMULATED`]) are three implementations; a backend adds a fourth by
//! implementing the trait in its own crate and passing `Flavor::new(&ITS_MODEL)`.

use std::fmt;
use std::os::fd::{AsFd, BorrowedFd};

use serde::{Serialize, Serializer};
use veil_attrs::{Attributes, Change, FrameRange, PAGE_SIZE};

use crate::backend::{GuestMemfd, GuestMemfdSource, SharedMemfd};
use crate::builder::BuildError;
use crate::caps::RawProbe;
use crate::region::RegionSpec;

/// Whether a conversion keeps the bytes of the pages it converts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ContentPolicy {
    /// Converted pages keep their contents (pKVM-like share/unshare). Only models where
    /// one page serves both states honour it.
    Preserve,
    /// Converted pages are freed and read as zeros afterwards (SNP/TDX-like).
    Discard,
    /// Conversions free nothing. Where one page serves both states this is
    /// [`Preserve`](ContentPolicy::Preserve). Where each state has its own backing
    /// (the attributes flavor) each side keeps its pages: a converted page reads what
    /// its new side last held, and the side no longer used is not given back to the host.
    /// For shared backings that cannot be punched page by page (hugetlb) or that a device
    /// has pinned.
    Retain,
}

/// Whether regions give KVM a mapping of their own (`userspace_addr`), separate from the
/// host view veil protects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum KvmSideMapping {
    /// A separate read-write mapping is given to KVM as `userspace_addr`. KVM's own
    /// accesses to guest memory (its instruction emulator's page-table walks and
    /// operand reads, on every x86 host today) go through `userspace_addr` even for
    /// guest_memfd slots, so this is what [`HostCaps`](crate::HostCaps) decides on every
    /// host: KVM emulates MMIO accesses and string I/O on any x86 host, CPUID and HLT on
    /// CPUs without NRIP-save, and all guest code on PVM.
    Separate,
    /// guest_memfd-backed regions whose host view is the guest_memfd give KVM no mapping
    /// (`userspace_addr = 0`): KVM maps the guest_memfd into the guest itself. **Only for
    /// callers who know their guests never make KVM emulate an instruction** (no MMIO, no
    /// string I/O, and on CPUs without NRIP-save or decode assists not even CPUID or HLT):
    /// KVM cannot read their memory then, and such a guest gets a failed emulation (an
    /// injected fault, a shutdown, an internal-error exit) or, after HLT, a RIP that did
    /// not advance. Memfd-backed regions still get one (KVM has nothing else to reach a
    /// memfd through).
    Omitted,
}

/// A memory model: how a region's conversions between shared and private are carried
/// out.
///
/// A model answers five questions for the regions that use it: what the host must offer
/// ([`support`](Self::support)), how a region is backed ([`back`](Self::back), returning a
/// [`Backing`]), which content policies it honours, whether host writes made while a page
/// is shared are what the guest reads once it is private
/// ([`keeps_contents`](Self::keeps_contents), which decides how a loader populates
/// private memory), and which system calls carry out a conversion
/// ([`plan`](Self::plan), over a [`RegionPlan`]). The conversion engine in
/// [`HostSafeMemory`](crate::HostSafeMemory) drives any model the same way: all or
/// nothing with rollback, only the changed runs reach the kernel, listeners in order,
/// host-access leases. veil's own flavors ([`Flavor::ATTRIBUTES`], [`Flavor::IN_PLACE`],
/// [`Flavor::EMULATED`]) are three implementations; a backend adds one by implementing
/// the trait in its own crate and using `Flavor::new(&ITS_MODEL)`.
///
/// Implementations are stateless descriptions (per-region state lives in the
/// [`Backing`] they create), used through a `&'static` reference inside a [`Flavor`].
pub trait MemoryModel: Send + Sync + 'static {
    /// The model's name, unique among the models a program uses: veil's are
    /// `attributes`, `in-place` and `emulated`.
    fn name(&self) -> &'static str;

    /// Whether conversions can be carried out under `policy`. A region asking for a
    /// policy its model does not honour is refused before anything is allocated.
    fn honours(&self, policy: ContentPolicy) -> bool;

    /// Whether bytes the host writes while a page is shared are what the guest reads once
    /// it is private, under `policy`: true where one page serves both states and the
    /// policy keeps it. A loader writes boot data then converts where this holds, and
    /// leaves it shared (or hands it to a launch technology) where it does not.
    fn keeps_contents(&self, policy: ContentPolicy) -> bool;

    /// Whether this model runs on a host, from the raw answers of its probe: the VM type
    /// to create, or the capabilities it lacks, named as in the KVM API.
    fn support(&self, probe: &RawProbe) -> Result<u32, Vec<String>>;

    /// Checks that the region `spec` describes can be backed in `env` (its range is
    /// valid, its policy honoured): called for every region before anything is
    /// allocated for any of them.
    fn check(&self, spec: &RegionSpec, env: &BackingEnv<'_>) -> Result<(), BuildError> {
        let _ = (spec, env);
        Ok(())
    }

    /// Creates the backing of the region `spec` describes, after every region passed
    /// [`check`](Self::check). Its files must be the region's size.
    fn back(&self, spec: &RegionSpec, env: &BackingEnv<'_>) -> Result<Backing, BuildError>;

    /// Plans the system calls that carry out a conversion's changes inside one region.
    /// Called only for regions where some page's private bit changes.
    fn plan(&self, region: &mut RegionPlan<'_>);
}

/// A handle to a [`MemoryModel`]: what a region's conversions are carried out by.
///
/// Cheap to copy, compared and printed by name. veil's own flavors are constants;
/// another model becomes a flavor with [`Flavor::new`].
#[derive(Clone, Copy)]
pub struct Flavor(&'static dyn MemoryModel);

impl Flavor {
    /// KVM tracks the state (`KVM_SET_MEMORY_ATTRIBUTES`); private memory lives in a
    /// guest_memfd, shared memory in a memfd, and the side a conversion stops using is
    /// discarded. The style of SNP, TDX and software-protected VMs. Contents are not
    /// preserved.
    pub const ATTRIBUTES: Flavor = Flavor(&crate::flavors::Attributes);
    /// One mmap-able guest_memfd holds the memory in both states; veil tracks the state
    /// and makes private ranges inaccessible in its own view (the pKVM style).
    pub const IN_PLACE: Flavor = Flavor(&crate::flavors::InPlace);
    /// As in-place, on a plain memfd: works on any KVM, and hardens a VMM against touching
    /// guest memory it should not.
    pub const EMULATED: Flavor = Flavor(&crate::flavors::Emulated);
    /// veil's own flavors, best first: attributes, in-place, emulated.
    pub const BUILT_IN: [Flavor; 3] = [Flavor::ATTRIBUTES, Flavor::IN_PLACE, Flavor::EMULATED];

    /// The flavor of `model`.
    pub const fn new(model: &'static dyn MemoryModel) -> Flavor {
        Flavor(model)
    }

    /// The model behind this flavor.
    pub fn model(self) -> &'static dyn MemoryModel {
        self.0
    }

    /// The flavor's name, as written in the docs and the `veil` report.
    pub fn name(self) -> &'static str {
        self.0.name()
    }

    /// The built-in flavor named `name`.
    pub fn built_in(name: &str) -> Option<Flavor> {
        Flavor::BUILT_IN.into_iter().find(|f| f.name() == name)
    }

    /// Whether the flavor can carry out conversions under `policy`
    /// ([`MemoryModel::honours`]).
    pub fn honours(self, policy: ContentPolicy) -> bool {
        self.0.honours(policy)
    }

    /// Whether host writes made while shared survive a conversion to private
    /// ([`MemoryModel::keeps_contents`]).
    pub fn keeps_contents(self, policy: ContentPolicy) -> bool {
        self.0.keeps_contents(policy)
    }
}

impl PartialEq for Flavor {
    fn eq(&self, other: &Flavor) -> bool {
        self.name() == other.name()
    }
}

impl Eq for Flavor {}

impl std::hash::Hash for Flavor {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.name().hash(state);
    }
}

impl fmt::Debug for Flavor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Flavor({})", self.name())
    }
}

impl fmt::Display for Flavor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl Serialize for Flavor {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

/// What a guest memory is being built with, as a model sees it in
/// [`MemoryModel::back`].
#[derive(Clone, Copy)]
pub struct BackingEnv<'a> {
    pub(crate) guest_memfd_source: Option<&'a dyn GuestMemfdSource>,
    pub(crate) attributes_vm: bool,
    pub(crate) kvm_side_mapping: KvmSideMapping,
}

impl<'a> BackingEnv<'a> {
    /// What creates guest_memfds (a KVM VM), if the memory was given one.
    pub fn guest_memfd_source(&self) -> Option<&'a dyn GuestMemfdSource> {
        self.guest_memfd_source
    }

    /// Whether the memory was given a VM whose memory attributes conversions may set
    /// (`KVM_SET_MEMORY_ATTRIBUTES`).
    pub fn has_attributes_vm(&self) -> bool {
        self.attributes_vm
    }

    /// Whether KVM needs a mapping of its own.
    pub fn kvm_side_mapping(&self) -> KvmSideMapping {
        self.kvm_side_mapping
    }
}

/// The file a region's host view maps.
#[derive(Debug)]
pub enum BackingFile {
    /// A guest_memfd the host can map (`GUEST_MEMFD_FLAG_MMAP`): one file for both states.
    GuestMemfd(GuestMemfd),
    /// A memfd.
    Memfd(SharedMemfd),
}

impl BackingFile {
    /// The size in bytes.
    pub fn size(&self) -> u64 {
        match self {
            BackingFile::GuestMemfd(g) => g.size(),
            BackingFile::Memfd(m) => m.size(),
        }
    }
}

impl AsFd for BackingFile {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            BackingFile::GuestMemfd(g) => g.as_fd(),
            BackingFile::Memfd(m) => m.as_fd(),
        }
    }
}

impl From<GuestMemfd> for BackingFile {
    fn from(g: GuestMemfd) -> Self {
        BackingFile::GuestMemfd(g)
    }
}

impl From<SharedMemfd> for BackingFile {
    fn from(m: SharedMemfd) -> Self {
        BackingFile::Memfd(m)
    }
}

/// How KVM reaches a region's shared memory: the `userspace_addr` of its memory slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvmAccess {
    /// The host view itself, which conversions never protect (only discard).
    HostView,
    /// A read-write mapping of the backing file of its own, which conversions never
    /// touch: the host view can then be protected without KVM losing access.
    OwnMapping,
    /// None (`userspace_addr = 0`): KVM maps the guest_memfd itself.
    None,
}

/// The backing stores of a region, as its model made them: the file the host view maps,
/// optionally a guest_memfd of its own for private memory, how KVM reaches shared
/// memory, and the granule conversions change the host view in.
#[derive(Debug)]
pub struct Backing {
    pub(crate) view: BackingFile,
    pub(crate) private: Option<GuestMemfd>,
    pub(crate) kvm: KvmAccess,
    pub(crate) granule: u64,
}

impl Backing {
    /// A backing whose host view maps `view`, with no separate private store, KVM
    /// reaching memory through the host view, and 4 KiB conversions.
    pub fn new(view: impl Into<BackingFile>) -> Backing {
        Backing {
            view: view.into(),
            private: None,
            kvm: KvmAccess::HostView,
            granule: PAGE_SIZE,
        }
    }

    /// With `private` as the guest_memfd that backs private memory (given to KVM in the
    /// memory slot), separate from the host view's file.
    pub fn private(mut self, private: GuestMemfd) -> Backing {
        self.private = Some(private);
        self
    }

    /// With KVM reaching shared memory as `kvm` says.
    pub fn kvm_access(mut self, kvm: KvmAccess) -> Backing {
        self.kvm = kvm;
        self
    }

    /// With conversions that change the host view in whole units of `granule` bytes (a
    /// power of two, at least 4 KiB): a conversion of a range that cuts one fails before
    /// anything changes.
    pub fn granule(mut self, granule: u64) -> Backing {
        self.granule = granule;
        self
    }

    /// The guest_memfd KVM gets in the memory slot: the private store, or the host view's
    /// file if that is a guest_memfd.
    pub fn guest_memfd(&self) -> Option<&GuestMemfd> {
        self.private.as_ref().or(match &self.view {
            BackingFile::GuestMemfd(g) => Some(g),
            BackingFile::Memfd(_) => None,
        })
    }

    /// The memfd behind the host view, if it is one.
    pub fn shared_memfd(&self) -> Option<&SharedMemfd> {
        match &self.view {
            BackingFile::Memfd(m) => Some(m),
            BackingFile::GuestMemfd(_) => None,
        }
    }

    /// The file behind `store`.
    pub(crate) fn store(&self, store: Store) -> Option<BorrowedFd<'_>> {
        match store {
            Store::View => Some(self.view.as_fd()),
            Store::GuestMemfd => self.guest_memfd().map(AsFd::as_fd),
        }
    }
}

/// One of a region's backing files, as a discard names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Store {
    /// The file the host view maps.
    View,
    /// The guest_memfd of the memory slot ([`Backing::guest_memfd`]).
    GuestMemfd,
}

/// A system call a conversion issues, as a plan names it and as errors report it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepKind {
    /// `KVM_SET_MEMORY_ATTRIBUTES` to the given attributes.
    SetAttributes(Attributes),
    /// `mprotect` of the host view, to no access (`true`) or read-write (`false`).
    Protect {
        /// Whether the range becomes inaccessible.
        inaccessible: bool,
    },
    /// A punched hole in one of the region's files.
    Discard(Store),
}

impl StepKind {
    /// The step that undoes this one for a run whose attributes were `old`, or `None`
    /// for a discard, which cannot be undone.
    pub(crate) fn inverse(self, old: Attributes) -> Option<StepKind> {
        match self {
            StepKind::SetAttributes(_) => Some(StepKind::SetAttributes(old)),
            StepKind::Protect { inaccessible } => Some(StepKind::Protect {
                inaccessible: !inaccessible,
            }),
            StepKind::Discard(_) => None,
        }
    }
}

impl fmt::Display for StepKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StepKind::SetAttributes(a) => write!(f, "KVM_SET_MEMORY_ATTRIBUTES to {a}"),
            StepKind::Protect { inaccessible: true } => f.write_str("mprotect(PROT_NONE)"),
            StepKind::Protect {
                inaccessible: false,
            } => f.write_str("mprotect(PROT_READ | PROT_WRITE)"),
            StepKind::Discard(Store::GuestMemfd) => {
                f.write_str("punching a hole in the guest_memfd")
            }
            StepKind::Discard(Store::View) => {
                f.write_str("punching a hole in the host view's file")
            }
        }
    }
}

/// One system call of a plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Op {
    pub(crate) region: usize,
    pub(crate) kind: StepKind,
    pub(crate) range: FrameRange,
}

/// A few ops inline: a typical conversion allocates nothing for its plan.
pub(crate) type Ops = smallvec::SmallVec<[Op; 4]>;

/// The system calls of a conversion: reversible ones first, discards last.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Plan {
    pub(crate) reversible: Ops,
    pub(crate) discards: Ops,
    pub(crate) bytes_discarded: u64,
}

/// One region of a conversion being planned, handed to [`MemoryModel::plan`]: what
/// changes in it, and where the model puts the system calls that carry it out.
pub struct RegionPlan<'a> {
    pub(crate) index: usize,
    pub(crate) range: FrameRange,
    pub(crate) policy: ContentPolicy,
    pub(crate) to: Attributes,
    /// Every change of the conversion's range, in address order (some may lie outside
    /// this region, and some may not flip the private bit).
    pub(crate) changes: &'a [Change],
    pub(crate) plan: &'a mut Plan,
}

impl<'a> RegionPlan<'a> {
    /// The region's guest-physical range.
    pub fn region(&self) -> FrameRange {
        self.range
    }

    /// The region's content policy.
    pub fn policy(&self) -> ContentPolicy {
        self.policy
    }

    /// The attributes the conversion gives its range.
    pub fn to(&self) -> Attributes {
        self.to
    }

    /// Whether the conversion is to private.
    pub fn to_private(&self) -> bool {
        self.to.is_private()
    }

    /// The runs of this region whose private bit changes, in address order. Tag-only
    /// changes cost no system call and are not among them.
    pub fn changed_runs(&self) -> impl Iterator<Item = FrameRange> + use<'a> {
        let (changes, range, to_private) = (self.changes, self.range, self.to_private());
        changes
            .iter()
            .filter(move |c| c.previous.attributes.is_private() != to_private)
            .filter_map(move |c| c.range.intersection(&range))
    }

    /// From the first to the last changed page of this region: one span where one call
    /// is right for every page in it (pages of the span that did not change are already
    /// in the target state).
    pub fn span(&self) -> Option<FrameRange> {
        let mut runs = self.changed_runs();
        let first = runs.next()?;
        let last = runs.last().unwrap_or(first);
        FrameRange::from_bounds(first.start(), last.end())
    }

    /// Adds `KVM_SET_MEMORY_ATTRIBUTES` of `range` to the conversion's attributes. It is
    /// undone, run by changed run, if a later step fails.
    pub fn set_attributes(&mut self, range: FrameRange) {
        self.push_reversible(StepKind::SetAttributes(self.to), range);
    }

    /// Adds an `mprotect` of the host view over `range`: no access on a conversion to
    /// private, read-write on one to shared. It is undone, run by changed run, if a later
    /// step fails.
    pub fn protect(&mut self, range: FrameRange) {
        let inaccessible = self.to_private();
        self.push_reversible(StepKind::Protect { inaccessible }, range);
    }

    fn push_reversible(&mut self, kind: StepKind, range: FrameRange) {
        self.plan.reversible.push(Op {
            region: self.index,
            kind,
            range,
        });
    }

    /// Adds a discard of `store` over `range`. Discards run after every reversible step
    /// and cannot be undone; the changed bytes inside `range` count as discarded.
    pub fn discard(&mut self, store: Store, range: FrameRange) {
        self.plan.discards.push(Op {
            region: self.index,
            kind: StepKind::Discard(store),
            range,
        });
        self.plan.bytes_discarded += self.changed_bytes_within(range);
    }

    /// Adds a discard of `store` over each of [`changed_runs`](Self::changed_runs): pages
    /// of the region that did not change keep their contents. The same as a
    /// [`discard`](Self::discard) per changed run, without looking up the changed bytes
    /// of each: they are the run's.
    pub fn discard_changed_runs(&mut self, store: Store) {
        for run in self.changed_runs() {
            self.plan.discards.push(Op {
                region: self.index,
                kind: StepKind::Discard(store),
                range: run,
            });
            self.plan.bytes_discarded += run.size();
        }
    }

    /// The bytes of changed runs inside `range`, found by binary search (a discard per
    /// changed run costs one lookup each, not a walk of every change).
    fn changed_bytes_within(&self, range: FrameRange) -> u64 {
        let to_private = self.to_private();
        let first = self
            .changes
            .partition_point(|c| c.range.end() <= range.start());
        self.changes[first..]
            .iter()
            .take_while(|c| c.range.start() < range.end())
            .filter(|c| c.previous.attributes.is_private() != to_private)
            .filter_map(|c| c.range.intersection(&range)?.intersection(&self.range))
            .map(|r| r.size())
            .sum()
    }
}
