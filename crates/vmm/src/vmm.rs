//! Building and running one VM: the order of setup, and the wait for the
//! first reason to stop.

use std::fs::OpenOptions;
use std::path::Path;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kvm_bindings::KVM_MAX_CPUID_ENTRIES;
use kvm_ioctls::{IoEventAddress, Kvm, VmFd};
use vmm_sys_util::eventfd::EventFd;

use crate::api::{self, ApiServer, VmControl, VmStatus};
use crate::arch::x86_64::layout::{
    e820_map, mmio_slot_addr, FIRST_VIRTIO_IRQ, MMIO_DEVICE_SIZE, MPTABLE_START,
};
use crate::arch::x86_64::{boot, cpuid, mptable, regs};
use crate::cleanup::Cleanup;
use crate::cmdline::{self, MmioDeviceDecl};
use crate::config::{host_memory_bytes, VmConfig};
use crate::devices::legacy::{cmos, i8042, serial, Cmos, SerialDevice, SerialOutput, I8042};
use crate::devices::virtio::counters::DeviceCounters;
use crate::devices::virtio::fs::{DaxWindow, VirtioFs, DAX_WINDOW_SIZE};
use crate::devices::virtio::mmio::REG_QUEUE_NOTIFY;
use crate::devices::virtio::net::VirtioNet;
use crate::devices::virtio::vsock::Vsock;
use crate::devices::virtio::{MmioTransport, VirtioDevice};
use crate::devices::Bus;
use crate::error::VmmError;
use crate::events::{self, ExitEvent, ExitSender};
use crate::memory::{self, GuestRam};
use crate::snapshot::{BootShape, Snapshotter};
use crate::vcpu::{self, RunState, Vcpu, VcpuControl};
use crate::vm;

/// How long pause waits for the vCPUs to stop.
const PAUSE_TIMEOUT: Duration = Duration::from_secs(5);

fn io_err(what: &'static str) -> impl FnOnce(std::io::Error) -> VmmError {
    move |source| VmmError::Io { what, source }
}

fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmmError {
    move |source| VmmError::Kvm { what, source }
}

/// Boots the VM described by `config` and runs it until it stops. Returns
/// why it stopped; files the VMM created are removed on every path.
pub fn run(config: &VmConfig) -> Result<ExitEvent, VmmError> {
    config.validate(host_memory_bytes())?;
    boot::preflight(&config.kernel, config.initrd.as_deref())?;
    // Before KVM: a bad shared directory is a bad input, like the kernel.
    let fs_devices = config
        .shared_dirs
        .iter()
        .map(|dir| {
            VirtioFs::new(dir).map_err(|source| VmmError::Fs {
                tag: dir.tag.clone(),
                source,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut fs_devices = fs_devices;
    let windows = fs_devices
        .iter_mut()
        .enumerate()
        .map(|(index, fs)| dax_window(fs, config.memory_bytes(), index))
        .collect::<Result<Vec<_>, _>>()?;
    // Also before KVM: an inherited tap descriptor is checked (and owned)
    // at once, so a bad one is reported as bad input.
    let net_devices = config
        .nets
        .iter()
        .enumerate()
        .map(|(index, net)| VirtioNet::new(net).map_err(|source| VmmError::Net { index, source }))
        .collect::<Result<Vec<_>, _>>()?;

    // Before any thread exists, so every thread inherits the mask.
    crate::signals::block_termination_signals().map_err(io_err("blocking signals"))?;
    let mut cleanup = Cleanup::default();
    let (exit_tx, exit_rx) = mpsc::channel();
    crate::signals::spawn_signal_thread(exit_tx.clone())
        .map_err(io_err("starting the signal thread"))?;

    let kvm = vm::open_kvm()?;

    let ram = memory::create(config.memory_bytes())?;
    let vm = Arc::new(vm::create_vm(&kvm, &ram)?);
    map_dax_windows(&vm, &ram, &windows)?;
    let kernel = boot::load_kernel(&ram.mem, &config.kernel)?;
    let initrd = match &config.initrd {
        Some(path) => Some(boot::load_initrd(
            &ram.mem,
            ram.size,
            path,
            kernel.kernel_end,
        )?),
        None => None,
    };

    let mut io_bus = Bus::new();
    let mut mmio_bus = Bus::new();
    let serial = serial_device(&vm, config)?;
    let guest_panicked = serial
        .lock()
        .map(|s| s.panic_flag())
        .unwrap_or_else(|p| p.into_inner().panic_flag());
    io_bus.insert(serial::COM1_BASE, serial::SERIAL_LEN, serial.clone())?;
    io_bus.insert(
        i8042::I8042_BASE,
        i8042::I8042_LEN,
        Arc::new(Mutex::new(I8042::new(exit_tx.clone()))),
    )?;
    let cmos_dev = Arc::new(Mutex::new(Cmos::default()));
    io_bus.insert(cmos::CMOS_BASE, cmos::CMOS_LEN, cmos_dev.clone())?;

    let mut decls = Vec::new();
    let mut transports = Vec::new();
    if let Some(vsock) = &config.vsock {
        let device = Vsock::new(vsock.cid, vsock.uds_path.clone())?;
        cleanup.add_vsock_uds(&vsock.uds_path);
        let decl = add_virtio_device(
            &vm,
            &ram,
            &mut mmio_bus,
            Box::new(device),
            decls.len(),
            &mut transports,
        )?;
        decls.push(decl);
    }
    for device in fs_devices {
        tracing::info!(tag = device.tag(), dir = %device.root().display(), "virtio-fs share");
        let decl = add_virtio_device(
            &vm,
            &ram,
            &mut mmio_bus,
            Box::new(device),
            decls.len(),
            &mut transports,
        )?;
        decls.push(decl);
    }
    for device in net_devices {
        tracing::info!(tap = device.tap_name(), mac = %device.mac(), "virtio-net device");
        let decl = add_virtio_device(
            &vm,
            &ram,
            &mut mmio_bus,
            Box::new(device),
            decls.len(),
            &mut transports,
        )?;
        decls.push(decl);
    }

    let quirks = config.host_quirks && cmdline::host_is_pvm();
    let line = cmdline::build(quirks, &decls, &config.cmdline_extra);
    tracing::info!(cmdline = %line, "kernel command line");
    boot::write_cmdline(&ram.mem, &line)?;
    let e820 = e820_map(ram.size, decls.len() as u64);
    boot::write_zero_page(&ram.mem, &boot::zero_page(line.len(), initrd, &e820)?)?;
    mptable::write(&ram.mem, MPTABLE_START, config.vcpus)?;
    regs::write_boot_structures(&ram.mem).map_err(|source| VmmError::Regs { id: 0, source })?;

    let control = Arc::new(VcpuControl::default());
    let vcpus = create_vcpus(
        &kvm,
        &vm,
        &ram,
        config,
        kernel.kernel_load.0,
        Arc::new(io_bus),
        Arc::new(mmio_bus),
        &control,
        &exit_tx,
    )?;
    // Bound last, so the socket appearing means the VM is set up.
    let api_server = match &config.api_socket {
        Some(path) => {
            let server = ApiServer::bind(path)?;
            cleanup.add_socket(server.path());
            Some(server)
        }
        None => None,
    };
    vcpu::install_kick_handler().map_err(|e| VmmError::Io {
        what: "installing the vCPU kick handler",
        source: std::io::Error::from_raw_os_error(e.errno()),
    })?;
    tracing::info!(
        vcpus = config.vcpus,
        memory_mib = config.memory_mib,
        "starting the guest"
    );
    for v in vcpus {
        let handle = events::spawn_guarded(
            crate::seccomp::ThreadKind::Vcpu,
            format!("vcpu{}", v.id),
            exit_tx.clone(),
            move || v.run(),
        )
        .map_err(io_err("starting a vCPU thread"))?;
        control.add_thread(handle);
    }
    crate::profile::start(&control).map_err(io_err("starting the profiler"))?;

    if let Some(server) = api_server {
        let counters = device_counters(&transports);
        let snapshot = Snapshotter {
            vm: vm.clone(),
            ram: GuestRam {
                mem: ram.mem.clone(),
                file: ram.file.clone(),
                size: ram.size,
            },
            control: control.clone(),
            serial: serial.clone(),
            cmos: cmos_dev,
            transports,
            shape: BootShape {
                vcpus: config.vcpus,
                memory_mib: config.memory_mib,
                cmdline: line.clone(),
            },
            kernel: config.kernel.clone(),
            initrd: config.initrd.clone(),
            msr_index: msr_index(&kvm),
            source_is_memfd: true,
            taken: Default::default(),
        };
        let handle = Arc::new(VmHandle {
            control: control.clone(),
            exit: exit_tx.clone(),
            vcpus: config.vcpus,
            memory_mib: config.memory_mib,
            devices: counters,
            snapshot: Some(snapshot),
        });
        server.spawn(handle)?;
    }

    Ok(wait_for_exit(
        &exit_rx,
        &guest_panicked,
        &control,
        &serial,
        &mut cleanup,
    ))
}

/// Waits for the first reason to stop, stops the vCPUs, flushes the
/// console and removes the VMM's files.
pub(crate) fn wait_for_exit(
    exit_rx: &mpsc::Receiver<ExitEvent>,
    guest_panicked: &std::sync::atomic::AtomicBool,
    control: &VcpuControl,
    serial: &Mutex<SerialDevice>,
    cleanup: &mut Cleanup,
) -> ExitEvent {
    // The channel cannot close: the caller holds a sender.
    let mut event = exit_rx
        .recv()
        .unwrap_or(ExitEvent::DeviceFailure("exit channel closed".into()));
    if event == ExitEvent::GuestReset && guest_panicked.load(std::sync::atomic::Ordering::SeqCst) {
        event = ExitEvent::GuestPanic;
    }
    match &event {
        ExitEvent::VcpuFailure { vcpu, reason } => {
            tracing::error!(vcpu, "vCPU failure: {reason}");
        }
        ExitEvent::DeviceFailure(reason) => tracing::error!("device failure: {reason}"),
        ExitEvent::GuestPanic => tracing::error!("the guest kernel panicked (see its console)"),
        other => tracing::info!(?other, "VM stopping"),
    }
    if let Some(line) = crate::devices::virtio::guest_errors::summary() {
        tracing::info!("{line}");
    }
    // Stop the guest before tearing anything down.
    let _ = control.pause(Duration::from_secs(1));
    serial.lock().unwrap_or_else(|p| p.into_inner()).flush();
    cleanup.run();
    event
}

pub(crate) fn serial_device(
    vm: &VmFd,
    config: &VmConfig,
) -> Result<Arc<Mutex<SerialDevice>>, VmmError> {
    let log = match &config.serial_log {
        Some(path) => Some(
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|source| VmmError::SerialLog {
                    path: path.clone(),
                    source,
                })?,
        ),
        None => None,
    };
    let irq = EventFd::new(libc::EFD_NONBLOCK).map_err(io_err("creating the serial eventfd"))?;
    vm.register_irqfd(&irq, serial::COM1_IRQ)
        .map_err(kvm_err("KVM_IRQFD for the serial port"))?;
    let out = SerialOutput::new(log, config.serial_stdout);
    Ok(Arc::new(Mutex::new(SerialDevice::new(irq, out))))
}

/// The MSRs a snapshot saves: KVM_GET_MSR_INDEX_LIST (none if it fails).
pub(crate) fn msr_index(kvm: &Kvm) -> Vec<u32> {
    match kvm.get_msr_index_list() {
        Ok(list) => list.as_slice().to_vec(),
        Err(e) => {
            tracing::warn!("KVM_GET_MSR_INDEX_LIST: {e}; snapshots will lack MSRs");
            Vec::new()
        }
    }
}

/// Gives `fs`, the `index`th share of a VM of `mem_size` bytes of RAM,
/// its DAX window; returns it for [`map_dax_windows`].
pub(crate) fn dax_window(
    fs: &mut VirtioFs,
    mem_size: u64,
    index: usize,
) -> Result<Arc<DaxWindow>, VmmError> {
    let addr =
        crate::arch::x86_64::layout::dax_window_addr(mem_size, index as u64, DAX_WINDOW_SIZE);
    let window =
        Arc::new(DaxWindow::new(addr, DAX_WINDOW_SIZE).map_err(io_err("reserving a DAX window"))?);
    fs.set_window(window.clone());
    Ok(window)
}

/// Maps the shares' DAX windows into the VM, in the memory slots after
/// RAM's.
pub(crate) fn map_dax_windows(
    vm: &VmFd,
    ram: &GuestRam,
    windows: &[Arc<DaxWindow>],
) -> Result<(), VmmError> {
    for (i, window) in windows.iter().enumerate() {
        let slot = (vm_memory::GuestMemory::num_regions(&ram.mem) + i) as u32;
        vm::map_window(vm, slot, window)?;
    }
    Ok(())
}

/// Puts `device` behind a virtio-mmio transport in slot `slot`, with its
/// irqfd and ioeventfds; keeps the transport in `transports` (for
/// snapshots) and returns its command-line declaration.
pub(crate) fn add_virtio_device(
    vm: &VmFd,
    ram: &GuestRam,
    mmio_bus: &mut Bus,
    device: Box<dyn VirtioDevice>,
    slot: usize,
    transports: &mut Vec<Arc<Mutex<MmioTransport>>>,
) -> Result<MmioDeviceDecl, VmmError> {
    let addr = mmio_slot_addr(slot as u64);
    let irq = FIRST_VIRTIO_IRQ + slot as u32;
    let irq_evt =
        EventFd::new(libc::EFD_NONBLOCK).map_err(io_err("creating a virtio irq eventfd"))?;
    vm.register_irqfd(&irq_evt, irq)
        .map_err(kvm_err("KVM_IRQFD for a virtio device"))?;
    let transport = MmioTransport::new(ram.mem.clone(), device, irq_evt)?;
    for (index, evt) in transport.queue_evts().iter().enumerate() {
        vm.register_ioevent(
            evt,
            &IoEventAddress::Mmio(addr + REG_QUEUE_NOTIFY),
            index as u32,
        )
        .map_err(kvm_err("KVM_IOEVENTFD for a virtio queue"))?;
    }
    tracing::debug!(
        device = transport.device_type(),
        addr = format_args!("{addr:#x}"),
        irq,
        "virtio-mmio device"
    );
    let transport = Arc::new(Mutex::new(transport));
    mmio_bus.insert(addr, MMIO_DEVICE_SIZE, transport.clone())?;
    transports.push(transport);
    Ok(MmioDeviceDecl {
        addr,
        size: MMIO_DEVICE_SIZE,
        irq,
    })
}

/// The counters of every device behind `transports`, in slot order.
pub(crate) fn device_counters(
    transports: &[Arc<Mutex<MmioTransport>>],
) -> Vec<Arc<DeviceCounters>> {
    transports
        .iter()
        .filter_map(|t| t.lock().unwrap_or_else(|p| p.into_inner()).counters())
        .collect()
}

#[allow(clippy::too_many_arguments, reason = "one-shot setup helper")]
fn create_vcpus(
    kvm: &Kvm,
    vm: &VmFd,
    ram: &GuestRam,
    config: &VmConfig,
    entry: u64,
    io_bus: Arc<Bus>,
    mmio_bus: Arc<Bus>,
    control: &Arc<VcpuControl>,
    exit: &ExitSender,
) -> Result<Vec<Vcpu>, VmmError> {
    let supported = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(kvm_err("KVM_GET_SUPPORTED_CPUID"))?;
    let mut vcpus = Vec::new();
    for id in 0..config.vcpus {
        let vcpu_err = |what| move |source| VmmError::Vcpu { id, what, source };
        let fd = vm
            .create_vcpu(u64::from(id))
            .map_err(vcpu_err("KVM_CREATE_VCPU"))?;
        let mut cpuid = supported.clone();
        cpuid::fixup(cpuid.as_mut_slice(), id, config.vcpus);
        fd.set_cpuid2(&cpuid).map_err(vcpu_err("KVM_SET_CPUID2"))?;
        regs::setup_common(&fd).map_err(|source| VmmError::Regs { id, source })?;
        if id == 0 {
            regs::setup_boot_vcpu(&fd, entry).map_err(|source| VmmError::Regs { id, source })?;
        }
        vcpus.push(Vcpu {
            id,
            fd,
            io_bus: io_bus.clone(),
            mmio_bus: mmio_bus.clone(),
            control: control.clone(),
            exit: exit.clone(),
            mem: ram.mem.clone(),
        });
    }
    Ok(vcpus)
}

/// What the control socket acts on.
pub(crate) struct VmHandle {
    pub(crate) control: Arc<VcpuControl>,
    pub(crate) exit: ExitSender,
    pub(crate) vcpus: u8,
    pub(crate) memory_mib: u64,
    /// Every virtio device's counters, for `status`.
    pub(crate) devices: Vec<Arc<DeviceCounters>>,
    pub(crate) snapshot: Option<Snapshotter>,
}

impl VmControl for VmHandle {
    fn status(&self) -> VmStatus {
        VmStatus {
            state: match self.control.target() {
                RunState::Running => api::State::Running,
                RunState::Paused => api::State::Paused,
            },
            pid: std::process::id(),
            vcpus: self.vcpus,
            memory_mib: self.memory_mib,
        }
    }

    fn devices(&self) -> Vec<nacre_vmm_api::DeviceCounters> {
        self.devices.iter().map(|c| c.snapshot()).collect()
    }

    fn pause(&self) -> Result<(), String> {
        self.control.pause(PAUSE_TIMEOUT)
    }

    fn resume(&self) -> Result<(), String> {
        if self.snapshot.as_ref().is_some_and(Snapshotter::taken) {
            return Err("a snapshot stopped this VM's devices; it can only be shut down".into());
        }
        self.control.resume();
        Ok(())
    }

    fn snapshot(&self, dir: &Path) -> Result<(), String> {
        match &self.snapshot {
            Some(s) => s.take(dir),
            None => Err("snapshots are not supported for this VM".into()),
        }
    }

    fn shutdown(&self) {
        events::send(&self.exit, ExitEvent::ApiShutdown);
    }
}
