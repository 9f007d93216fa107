// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! [`Machine`]: a veil-vmm [`Vm`] made into a PC that boots Linux: the layout, ACPI
//! tables placed as a boot object, the in-kernel irqchip and PIT, COM1 with its irqfd,
//! the i8042, CMOS, ACPI sleep and PCI ports, private RAM as asked, and a run that ends
//! when the guest powers off, resets, shuts down, or the timeout passes.
//!
//! Everything a configuration can get wrong is refused before a KVM object exists.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kvm_ioctls::{Cap, Kvm};
use veil_loader::{
    BootSource, ByteRange, GuestRam, LayoutError as PlacementError, LoadError, PopulateWay,
};
use veil_memory::veil_attrs::{Attributes, FrameRange};
use veil_memory::{ContentPolicy, ConvertError, Flavor, HostAccessError, HostSafeMemory};
use veil_vcpu::{FaultPolicy, Vcpu};
use veil_vmm::{Launch, PlainKvm, Vm, VmError};

use crate::acpi::{AcpiError, AcpiTables, MAX_VCPUS};
use crate::console::{ConsoleInput, RawTerminal};
use crate::cpu::{CpuError, PcLaunch, check_caps, create_irqchip};
use crate::devices::{
    ACPI_SLEEP_PORT, AcpiSleep, BusError, CMOS_PORT, COM1_GSI, COM1_PORT, Cmos, Com1, ConsoleSink,
    EndSignal, I8042, I8042_PORT, PCI_CONFIG_PORT, PciConfigNoDevice, PortBus,
};
use crate::initramfs::LINUX_CMDLINE;
use crate::layout::{LayoutError, MemoryLayout};
use crate::report::{GuestEnd, HostMemory, MachineReport, PrivateRead, SharedRange};

/// Which RAM is private when the guest starts.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum PrivateRam {
    /// All of it, except boot data the memory's flavor can only place shared (the
    /// report names those ranges).
    #[default]
    All,
    /// None asked for (boot data the flavor populates privately is private still).
    None,
    /// These `(base, size)` byte ranges: page-aligned, inside RAM.
    Ranges(Vec<(u64, u64)>),
}

/// What to boot and on what.
pub struct MachineConfig {
    /// The kernel file: a bzImage or an ELF with a PVH entry.
    pub kernel: Vec<u8>,
    /// The initrd, if any.
    pub initrd: Option<Vec<u8>>,
    /// The kernel command line (default [`LINUX_CMDLINE`]).
    pub cmdline: String,
    /// RAM in bytes, a multiple of 4 KiB (default 512 MiB).
    pub memory_size: u64,
    /// vCPUs, 1 to [`MAX_VCPUS`] (default 1).
    pub vcpus: u32,
    /// The memory flavor, or `None` for the first the host runs.
    pub flavor: Option<Flavor>,
    /// Which RAM is private (default all).
    pub private: PrivateRam,
    /// Where COM1's output goes (default standard output).
    pub console: Box<dyn Write + Send>,
    /// Whether standard input feeds COM1 (when it is a terminal, FIFO or socket; a
    /// terminal is put in raw mode for the run).
    pub stdin: bool,
    /// The launch technology (default [`PlainKvm`]).
    pub launch: Arc<dyn Launch>,
    /// How long the guest may run; `None` for no limit.
    pub timeout: Option<Duration>,
    /// What memory faults do (default: convert implicitly, as SNP and TDX guests expect).
    pub fault_policy: FaultPolicy,
}

impl MachineConfig {
    /// A configuration for `kernel` with the defaults.
    pub fn new(kernel: Vec<u8>) -> Self {
        MachineConfig {
            kernel,
            initrd: None,
            cmdline: LINUX_CMDLINE.to_string(),
            memory_size: 512 << 20,
            vcpus: 1,
            flavor: None,
            private: PrivateRam::All,
            console: Box::new(std::io::stdout()),
            stdin: false,
            launch: Arc::new(PlainKvm),
            timeout: None,
            fault_policy: FaultPolicy::default(),
        }
    }
}

impl std::fmt::Debug for MachineConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MachineConfig")
            .field("kernel", &self.kernel.len())
            .field("initrd", &self.initrd.as_ref().map(Vec::len))
            .field("cmdline", &self.cmdline)
            .field("memory_size", &self.memory_size)
            .field("vcpus", &self.vcpus)
            .field("flavor", &self.flavor)
            .field("private", &self.private)
            .field("stdin", &self.stdin)
            .field("launch", &self.launch.name())
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// Why the machine could not boot or run. Each variant names what is wrong and how to
/// fix it; nothing is left behind.
#[derive(Debug, thiserror::Error)]
pub enum MachineError {
    /// The memory size does not give a layout (0, not whole pages, too small or large).
    #[error("bad memory size")]
    MemorySize(#[from] LayoutError),
    /// The vCPU count is 0 or above what the machine or the host supports.
    #[error("{count} vCPUs: give between 1 and {max}")]
    VcpuCount {
        /// The count asked for.
        count: u32,
        /// The most this machine on this host runs.
        max: u32,
    },
    /// The kernel (or its command line) was refused: veil-loader's error says why.
    #[error("cannot load the kernel")]
    Kernel(#[source] Box<LoadError>),
    /// The initrd does not fit the RAM where the kernel may reach it.
    #[error(
        "the initrd of {len:#x} bytes does not fit in {memory:#x} bytes of RAM: give more memory or a smaller initrd"
    )]
    InitrdTooLarge {
        /// Its length.
        len: u64,
        /// The RAM.
        memory: u64,
        /// The loader's reason.
        #[source]
        source: Box<LoadError>,
    },
    /// The kernel does not fit the RAM.
    #[error("{memory:#x} bytes of RAM are too small for this kernel: give more memory")]
    MemoryTooSmall {
        /// The RAM.
        memory: u64,
        /// The loader's reason.
        #[source]
        source: Box<LoadError>,
    },
    /// A private range is not page-aligned or not inside RAM.
    #[error("private range {base:#x} + {size:#x}: {reason}")]
    PrivateRange {
        /// Its base.
        base: u64,
        /// Its size.
        size: u64,
        /// What is wrong.
        reason: &'static str,
    },
    /// `/dev/kvm` could not be opened.
    #[error("cannot open /dev/kvm")]
    Kvm(#[source] kvm_ioctls::Error),
    /// The host lacks the irqchip, PIT or irqfds, or setting them up failed.
    #[error("cannot set up the interrupt controllers")]
    Irqchip(#[source] CpuError),
    /// The host does not run the flavor asked for; the source names the capability.
    #[error("the {flavor} flavor does not run on this host")]
    Flavor {
        /// The flavor.
        flavor: Flavor,
        /// What is missing.
        #[source]
        source: Box<VmError>,
    },
    /// veil-vmm could not build, launch or run the VM.
    #[error("the VM failed")]
    Vm(#[source] Box<VmError>),
    /// The ACPI tables could not be built.
    #[error("cannot build the ACPI tables")]
    Acpi(#[from] AcpiError),
    /// A device could not be created.
    #[error("cannot create the {device}")]
    Device {
        /// The device.
        device: &'static str,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Two devices claim one port (a bug in the machine).
    #[error("cannot map the devices")]
    Bus(#[from] BusError),
    /// COM1's interrupt could not be registered.
    #[error("cannot register COM1's irqfd on GSI {COM1_GSI}")]
    Irqfd(#[source] kvm_ioctls::Error),
    /// Making the private ranges private failed; nothing was converted.
    #[error("cannot make the private ranges private")]
    Convert(#[source] ConvertError),
    /// The terminal could not be put in raw mode.
    #[error("cannot set up the console")]
    Console(#[source] std::io::Error),
}

/// Sorts the loader's refusals into the ones a user fixes with the initrd or the memory
/// size, and the kernel's own.
fn load_error(e: LoadError, sizes: Sizes) -> MachineError {
    let Sizes { memory, initrd } = sizes;
    match &e {
        LoadError::Layout(
            PlacementError::LargerThanRam { what, .. } | PlacementError::NoRoom { what, .. },
        ) if *what == "initrd" => MachineError::InitrdTooLarge {
            len: initrd,
            memory,
            source: Box::new(e),
        },
        LoadError::Layout(
            PlacementError::LargerThanRam { .. }
            | PlacementError::NoRoom { .. }
            | PlacementError::FixedKernelDoesNotFit { .. },
        ) => MachineError::MemoryTooSmall {
            memory,
            source: Box::new(e),
        },
        _ => MachineError::Kernel(Box::new(e)),
    }
}

/// The sizes the loader's errors are explained with.
#[derive(Debug, Clone, Copy)]
struct Sizes {
    memory: u64,
    initrd: u64,
}

impl Sizes {
    fn of(config: &MachineConfig) -> Sizes {
        Sizes {
            memory: config.memory_size,
            initrd: config.initrd.as_ref().map_or(0, |i| i.len() as u64),
        }
    }
}

fn vm_error(e: VmError, sizes: Sizes) -> MachineError {
    match e {
        VmError::Load(e) => load_error(e, sizes),
        e @ VmError::Flavor { flavor, .. } => MachineError::Flavor {
            flavor,
            source: Box::new(e),
        },
        e => MachineError::Vm(Box::new(e)),
    }
}

/// Checks the private ranges: page-aligned, non-empty, inside one RAM range.
fn check_ranges(ranges: &[(u64, u64)], layout: &MemoryLayout) -> Result<(), MachineError> {
    let ram = layout.ram();
    for &(base, size) in ranges {
        let bad = |reason| MachineError::PrivateRange { base, size, reason };
        if size == 0 {
            return Err(bad("it is empty"));
        }
        if base % veil_loader::PAGE_SIZE != 0 || size % veil_loader::PAGE_SIZE != 0 {
            return Err(bad("it is not 4 KiB aligned"));
        }
        let end = base.checked_add(size).ok_or(bad("it wraps around"))?;
        if !ram.iter().any(|&(b, s)| base >= b && end <= b + s) {
            return Err(bad(
                "it is not inside one RAM range (see the memory layout)",
            ));
        }
    }
    Ok(())
}

/// `ranges` minus `holes`, as byte ranges in address order.
fn subtract(ranges: &[ByteRange], holes: &[ByteRange]) -> Vec<ByteRange> {
    let mut out = Vec::new();
    for r in ranges {
        let mut at = r.start().0;
        let mut holes: Vec<&ByteRange> = holes.iter().filter(|h| h.overlaps(r)).collect();
        holes.sort();
        for h in holes {
            if let Some(piece) = ByteRange::new(at, h.start().0.saturating_sub(at)) {
                out.push(piece);
            }
            at = at.max(h.end());
        }
        if let Some(piece) = ByteRange::new(at, r.end().saturating_sub(at)) {
            out.push(piece);
        }
    }
    out
}

/// The RAM of `memory` that is shared now, each range with why: the boot data in
/// `kept` with `kept_reason`, the rest because no one asked for it to be private.
fn shared_ranges(
    memory: &HostSafeMemory,
    ram: &[(u64, u64)],
    kept: &[ByteRange],
    kept_reason: &str,
) -> Vec<SharedRange> {
    let attrs = memory.attributes();
    let mut shared = Vec::new();
    for &(base, size) in ram {
        let Ok(frames) = FrameRange::from_gpa(base, size) else {
            continue;
        };
        let Ok(runs) = attrs.runs(frames) else {
            continue;
        };
        for run in runs.filter(|r| !r.state.attributes.contains(Attributes::PRIVATE)) {
            if let Some(r) = ByteRange::new(run.range.gpa(), run.range.size()) {
                shared.push(r);
            }
        }
    }
    let mut out: Vec<SharedRange> = Vec::new();
    for r in &shared {
        for k in kept.iter().filter(|k| k.overlaps(r)) {
            let start = k.start().0.max(r.start().0);
            if let Some(piece) = ByteRange::new(start, k.end().min(r.end()) - start) {
                out.push(SharedRange {
                    range: piece,
                    reason: kept_reason.to_string(),
                });
            }
        }
        for piece in subtract(std::slice::from_ref(r), kept) {
            out.push(SharedRange {
                range: piece,
                reason: "not asked to be private".to_string(),
            });
        }
    }
    out.sort_by_key(|s| s.range);
    out
}

/// The host's read of the first private page, as [`PrivateRead`] records it.
fn try_private_read(memory: &HostSafeMemory) -> PrivateRead {
    let attrs = memory.attributes();
    let first = memory.regions().iter().find_map(|region| {
        attrs
            .runs(region.range())
            .ok()?
            .find(|r| r.state.attributes.contains(Attributes::PRIVATE))
    });
    let Some(run) = first else {
        return PrivateRead::NoPrivatePage;
    };
    let gpa = run.range.gpa();
    let mut buf = [0u8; 8];
    match memory.host_read(gpa, &mut buf) {
        Ok(()) => PrivateRead::Allowed { gpa },
        Err(e @ HostAccessError::Private { .. }) => PrivateRead::Refused {
            gpa,
            error: e.to_string(),
        },
        Err(e) => PrivateRead::Failed {
            gpa,
            error: e.to_string(),
        },
    }
}

/// A booted PC, ready to [`run`](Machine::run).
pub struct Machine {
    vm: Vm,
    vcpus: Vec<Vcpu>,
    bus: Arc<PortBus>,
    com1: Arc<Com1>,
    end: Arc<EndSignal>,
    private_read: Arc<Mutex<PrivateRead>>,
    layout: MemoryLayout,
    acpi: AcpiTables,
    shared: Vec<SharedRange>,
    launch_digest: String,
    stdin: bool,
    timeout: Option<Duration>,
    fault_policy: FaultPolicy,
    vcpu_count: u32,
}

impl std::fmt::Debug for Machine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Machine")
            .field("vm", &self.vm)
            .field("vcpus", &self.vcpu_count)
            .field("bus", &self.bus)
            .finish_non_exhaustive()
    }
}

/// What a [`MachineConfig`] boots, decided without KVM: the guest-physical layout, the
/// ACPI tables and the RAM the kernel is planned into. `veil measure` measures exactly
/// this, so its log is the one a run records.
#[derive(Debug)]
pub struct BootImage {
    /// The guest-physical layout.
    pub layout: MemoryLayout,
    /// The ACPI tables for the configured vCPUs.
    pub acpi: AcpiTables,
    /// The RAM, as veil-loader plans into it.
    pub ram: GuestRam,
}

impl BootImage {
    /// Checks the memory size, the vCPU count and that the kernel, initrd and command
    /// line plan into the RAM; touches no KVM.
    pub fn new(config: &MachineConfig) -> Result<BootImage, MachineError> {
        let layout = MemoryLayout::new(config.memory_size)?;
        let count = config.vcpus;
        if count == 0 || count > MAX_VCPUS {
            return Err(MachineError::VcpuCount {
                count,
                max: MAX_VCPUS,
            });
        }
        let acpi = AcpiTables::build(&layout, count)?;
        let ram = GuestRam::new(&layout.ram()).map_err(|e| {
            MachineError::Kernel(Box::new(LoadError::Populate(
                veil_loader::PopulateError::Ram(e),
            )))
        })?;
        let image = BootImage { layout, acpi, ram };
        veil_loader::plan(&image.source(config), &image.ram)
            .map_err(|e| load_error(e, Sizes::of(config)))?;
        Ok(image)
    }

    /// The boot source: `config`'s kernel, initrd and command line, with the ACPI tables.
    pub fn source<'a>(&'a self, config: &'a MachineConfig) -> BootSource<'a> {
        let mut source = BootSource::new(&config.kernel)
            .cmdline(&config.cmdline)
            .firmware(self.acpi.firmware());
        if let Some(initrd) = &config.initrd {
            source = source.initrd(initrd);
        }
        source
    }
}

impl Machine {
    /// Checks `config`, builds the VM and its devices, and launches the kernel on it.
    pub fn boot(config: MachineConfig) -> Result<Machine, MachineError> {
        // Everything that can be refused without KVM first.
        let mut config = config;
        let console = std::mem::replace(&mut config.console, Box::new(std::io::sink()));
        let image = BootImage::new(&config)?;
        let count = config.vcpus;
        let sizes = Sizes::of(&config);
        let source = image.source(&config);
        let layout = &image.layout;
        if let PrivateRam::Ranges(ranges) = &config.private {
            check_ranges(ranges, layout)?;
        }

        // The host.
        let kvm = Kvm::new().map_err(MachineError::Kvm)?;
        check_caps(&kvm).map_err(MachineError::Irqchip)?;
        let host_max = u32::try_from(kvm.get_max_vcpus()).unwrap_or(u32::MAX);
        if count > host_max {
            return Err(MachineError::VcpuCount {
                count,
                max: host_max.min(MAX_VCPUS),
            });
        }
        let tsc_deadline = kvm.check_extension(Cap::TscDeadlineTimer);
        drop(kvm);

        let launch = Arc::new(PcLaunch::new(config.launch.clone(), count, tsc_deadline));
        let mut builder = Vm::builder()
            .launch(launch)
            .private_at_launch(config.private == PrivateRam::All);
        if let Some(flavor) = config.flavor {
            builder = builder.flavor(flavor);
        }
        // Retain: kept in place where one page serves both states, nothing freed where
        // each has its own; every flavor honours it.
        for (base, size) in layout.ram() {
            builder = builder.region(base, size, ContentPolicy::Retain);
        }
        let vm = builder.build().map_err(|e| vm_error(e, sizes))?;
        create_irqchip(vm.kvm(), vm.fd(), layout).map_err(MachineError::Irqchip)?;

        // Devices.
        let end = Arc::new(EndSignal::default());
        let private_read = Arc::new(Mutex::new(PrivateRead::NotTried));
        let hook = {
            let memory = vm.memory().clone();
            let record = private_read.clone();
            Box::new(move || {
                let read = try_private_read(&memory);
                log::info!("host read of a private page while the guest runs: {read:?}");
                *record.lock().unwrap_or_else(|p| p.into_inner()) = read;
            })
        };
        let com1 = Arc::new(
            Com1::new(ConsoleSink::new(console).on_first_byte(hook)).map_err(|source| {
                MachineError::Device {
                    device: "COM1 UART",
                    source,
                }
            })?,
        );
        vm.fd()
            .register_irqfd(com1.irq(), COM1_GSI)
            .map_err(MachineError::Irqfd)?;
        let mut bus = PortBus::new();
        bus.add(COM1_PORT, com1.clone())?;
        bus.add(I8042_PORT, Arc::new(I8042::new(end.clone())))?;
        bus.add(CMOS_PORT, Arc::new(Cmos::new()))?;
        bus.add(ACPI_SLEEP_PORT, Arc::new(AcpiSleep::new(end.clone())))?;
        bus.add(PCI_CONFIG_PORT, Arc::new(PciConfigNoDevice::default()))?;

        let launched = vm.launch(&source, count).map_err(|e| vm_error(e, sizes))?;
        let kept: Vec<ByteRange> = match launched.loaded.populated.way {
            PopulateWay::SharedOnly => launched.loaded.populated.ranges(),
            _ => Vec::new(),
        };
        if let PrivateRam::Ranges(ranges) = &config.private {
            let asked: Vec<ByteRange> = ranges
                .iter()
                .filter_map(|&(b, s)| ByteRange::new(b, s))
                .collect();
            // Converting boot data the flavor placed shared would hand the guest zeros.
            let frames: Vec<FrameRange> = subtract(&asked, &kept)
                .iter()
                .filter_map(|r| FrameRange::from_gpa(r.start().0, r.len()).ok())
                .collect();
            vm.memory()
                .convert_ranges(&frames, Attributes::PRIVATE)
                .map_err(MachineError::Convert)?;
        }
        let kept_reason = launched.shared.first().map_or(
            "boot data: this memory's flavor cannot put contents into private memory",
            |(_, why)| *why,
        );
        let shared = shared_ranges(vm.memory(), &layout.ram(), &kept, kept_reason);
        let BootImage { layout, acpi, .. } = image;
        Ok(Machine {
            vcpus: launched.vcpus,
            launch_digest: launched.loaded.log.launch_digest.to_hex(),
            vm,
            bus: Arc::new(bus),
            com1,
            end,
            private_read,
            layout,
            acpi,
            shared,
            stdin: config.stdin,
            timeout: config.timeout,
            fault_policy: config.fault_policy,
            vcpu_count: count,
        })
    }

    /// The VM, to inspect its memory and capabilities.
    pub fn vm(&self) -> &Vm {
        &self.vm
    }

    /// The guest-physical layout.
    pub fn layout(&self) -> &MemoryLayout {
        &self.layout
    }

    /// The ACPI tables given to the guest.
    pub fn acpi(&self) -> &AcpiTables {
        &self.acpi
    }

    /// RAM that is shared as the guest starts, and why.
    pub fn shared(&self) -> &[SharedRange] {
        &self.shared
    }

    /// Runs the guest until it powers off, resets or shuts down, the VM fails, or the
    /// timeout passes, and reports how it went.
    pub fn run(self) -> Result<MachineReport, MachineError> {
        let Machine {
            vm,
            vcpus,
            bus,
            com1,
            end,
            private_read,
            layout,
            acpi: _,
            shared,
            launch_digest,
            stdin,
            timeout,
            fault_policy,
            vcpu_count,
        } = self;
        // The kernel and initrd were copied into guest memory and freed, but glibc keeps
        // freed heap pages resident (the first large free raises its mmap threshold, so
        // later copies came from the heap): give them back before the guest runs.
        #[cfg(target_env = "gnu")]
        // SAFETY: malloc_trim only returns free heap memory to the kernel; it is safe to
        // call at any time from any thread.
        unsafe {
            libc::malloc_trim(0);
        }
        let started = Instant::now();
        // Restored when the run ends, on every path out of here.
        let terminal = if stdin {
            Some(RawTerminal::enter().map_err(MachineError::Console)?)
        } else {
            None
        };
        let input = if stdin {
            ConsoleInput::start(com1).map_err(MachineError::Console)?
        } else {
            None
        };
        let set = vm
            .run(vcpus, bus, fault_policy)
            .map_err(|e| MachineError::Vm(Box::new(e)))?;
        let deadline = timeout.map(|t| started + t);
        let mut timed_out = false;
        loop {
            if end.wait(Duration::from_millis(10)).is_some() || set.is_finished() {
                break;
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                timed_out = true;
                break;
            }
        }
        // The guest has ended; nothing is torn down yet.
        let guest: Vec<(u64, u64)> = vm
            .memory()
            .regions()
            .iter()
            .flat_map(|r| {
                [
                    (r.host_view_addr(), r.size()),
                    (r.kvm_userspace_addr(), r.size()),
                ]
            })
            .filter(|&(addr, _)| addr != 0)
            .collect();
        let host_memory = HostMemory::sample(&guest);
        set.stop();
        let report = set.wait();
        drop(input);
        drop(terminal);
        if timed_out {
            // Where each vCPU was when the time ran out: what to look at first.
            for v in &report.vcpus {
                if let Some(vcpu) = &v.vcpu {
                    let rip = vcpu.fd().get_regs().map(|r| r.rip);
                    let mp = vcpu.fd().get_mp_state().map(|m| m.mp_state);
                    log::warn!("vCPU {} stopped at rip {rip:x?}, mp_state {mp:?}", v.index);
                }
            }
        }
        let end = GuestEnd::of(end.get(), timed_out, &report.reason);
        let private_read = private_read
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        Ok(MachineReport {
            end,
            flavor: vm.flavor().to_string(),
            launch: vm.launch_technology().name(),
            vcpus: vcpu_count,
            memory_size: layout.memory_size(),
            launch_digest,
            exits: report.stats(),
            memory: vm.stats(),
            shared,
            private_read,
            console_input: stdin && crate::console::stdin_is_pollable(),
            run_millis: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            host_memory,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn ranges_must_be_aligned_and_inside_ram() {
        let layout = MemoryLayout::new(3 * 1024 * MIB + 2 * MIB).unwrap();
        check_ranges(&[(0, MIB), (1 << 32, 2 * MIB)], &layout).unwrap();
        for (range, reason) in [
            ((0, 0), "empty"),
            ((0x800, 0x1000), "aligned"),
            ((0x1000, 0x800), "aligned"),
            ((u64::MAX - 0xfff, 0x2000), "wraps"),
            ((0xbfff_f000, 0x2000), "inside"),
            ((0xc000_0000, 0x1000), "inside"),
            ((1 << 32, 3 * MIB), "inside"),
        ] {
            let e = check_ranges(&[range], &layout).unwrap_err();
            assert!(
                matches!(e, MachineError::PrivateRange { .. }) && e.to_string().contains(reason),
                "{range:x?}: {e}"
            );
        }
    }

    #[test]
    fn subtracting_ranges() {
        let r = |s, l| ByteRange::new(s, l).unwrap();
        assert_eq!(
            subtract(&[r(0, 0x10000)], &[r(0x2000, 0x1000), r(0x8000, 0x10000)]),
            vec![r(0, 0x2000), r(0x3000, 0x5000)]
        );
        assert_eq!(subtract(&[r(0, 0x1000)], &[r(0, 0x1000)]), vec![]);
        assert_eq!(subtract(&[r(0x1000, 0x1000)], &[]), vec![r(0x1000, 0x1000)]);
    }
}
