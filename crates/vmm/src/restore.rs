//! Restoring a VM from a template (`nacre-vmm --restore DIR`): the same
//! machine as [`crate::run`] builds, with its state loaded instead of a
//! kernel booted.

use std::fs::OpenOptions;
use std::path::PathBuf;
use std::sync::{mpsc, Arc, Mutex};

use kvm_bindings::KVM_MAX_CPUID_ENTRIES;
use kvm_ioctls::VmFd;
use vmm_sys_util::eventfd::EventFd;

use crate::api::ApiServer;
use crate::arch::x86_64::cpuid;
use crate::cleanup::Cleanup;
use crate::devices::legacy::{cmos, i8042, serial, Cmos, SerialDevice, SerialOutput, I8042};
use crate::devices::virtio::fs::{SharedDir, VirtioFs};
use crate::devices::virtio::net::{self as virtio_net, NetConfig, VirtioNet};
use crate::devices::virtio::vsock::Vsock;
use crate::devices::virtio::VirtioDevice;
use crate::devices::Bus;
use crate::error::VmmError;
use crate::events::{self, ExitEvent};
use crate::snapshot::state::SerialSnapshot;
use crate::snapshot::{format, memory, DeviceState, MEMORY_FILE};
use crate::vcpu::{self, Vcpu, VcpuControl};
use crate::vm;
use crate::vmm::{
    add_virtio_device, dax_window, device_counters, map_dax_windows, wait_for_exit, VmHandle,
};

/// What `--restore` needs besides the template: the host-side paths of
/// the new VM.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RestoreConfig {
    /// The template directory.
    pub dir: PathBuf,
    /// Host socket of the vsock device (required if the template has one).
    pub vsock_uds: Option<PathBuf>,
    pub api_socket: Option<PathBuf>,
    pub serial_log: Option<PathBuf>,
    pub serial_stdout: bool,
    /// One per virtio-fs device of the template, matched by tag.
    pub shared_dirs: Vec<SharedDir>,
    /// One per virtio-net device of the template, in device order, with
    /// the template's MTU; the MAC may differ (the guest keeps the
    /// template's until it is told another).
    pub nets: Vec<NetConfig>,
    /// When given, the template must have been booted from this kernel.
    pub kernel: Option<PathBuf>,
    /// When given, the template must have been booted with this initrd.
    pub initrd: Option<PathBuf>,
}

fn restore_err(what: &str) -> impl FnOnce(String) -> VmmError + '_ {
    move |e| VmmError::Restore(format!("{what}: {e}"))
}

fn io_err(what: &'static str) -> impl FnOnce(std::io::Error) -> VmmError {
    move |source| VmmError::Io { what, source }
}

/// Restores the VM saved in `config.dir` and runs it until it stops.
pub fn restore(config: &RestoreConfig) -> Result<ExitEvent, VmmError> {
    let start = std::time::Instant::now();
    let header = format::read_header(&config.dir)?;
    header.check_image(config.kernel.as_deref(), config.initrd.as_deref())?;
    let state = format::read_state(&config.dir, &header)?;
    let shape = &state.shape;
    if state.vcpus.len() != usize::from(shape.vcpus) || header.memory_size != shape.memory_mib << 20
    {
        return Err(format::TemplateError::Malformed {
            path: config.dir.join(crate::snapshot::STATE_FILE),
            reason: format!(
                "{} vCPU states for {} vCPUs, {} bytes of memory for {} MiB",
                state.vcpus.len(),
                shape.vcpus,
                header.memory_size,
                shape.memory_mib
            ),
        }
        .into());
    }
    // Bad host-side inputs before KVM, as a boot does.
    check_nets(&state.devices.virtio, &config.nets)?;
    let mut nets = config.nets.iter().enumerate();
    let mut devices: Vec<Box<dyn VirtioDevice>> = Vec::new();
    let mut windows = Vec::new();
    let mut cleanup = Cleanup::default();
    for saved in &state.devices.virtio {
        match &saved.device {
            DeviceState::Vsock { cid } => {
                let uds = config.vsock_uds.clone().ok_or_else(|| {
                    VmmError::Restore(
                        "the template has a vsock device: --vsock-uds is required".into(),
                    )
                })?;
                devices.push(Box::new(Vsock::new(*cid, uds.clone())?));
                cleanup.add_vsock_uds(&uds);
            }
            DeviceState::Fs { tag } => {
                let dir = config.shared_dirs.iter().find(|d| &d.tag == tag).ok_or_else(|| {
                    VmmError::Restore(format!(
                        "the template has a virtio-fs device {tag:?}: --shared-dir {tag}=PATH is required"
                    ))
                })?;
                let mut fs = VirtioFs::new(dir).map_err(|source| VmmError::Fs {
                    tag: tag.clone(),
                    source,
                })?;
                windows.push(dax_window(&mut fs, header.memory_size, windows.len())?);
                devices.push(Box::new(fs));
            }
            DeviceState::Net { .. } => {
                // check_nets matched the counts.
                let (index, net) = nets.next().ok_or_else(|| {
                    VmmError::RestoreArgs("fewer --net devices than the template has".into())
                })?;
                let device =
                    VirtioNet::new(net).map_err(|source| VmmError::Net { index, source })?;
                devices.push(Box::new(device));
            }
        }
    }

    crate::signals::block_termination_signals().map_err(io_err("blocking signals"))?;
    let (exit_tx, exit_rx) = mpsc::channel();
    crate::signals::spawn_signal_thread(exit_tx.clone())
        .map_err(io_err("starting the signal thread"))?;

    let kvm = vm::open_kvm()?;
    let memory_path = config.dir.join(MEMORY_FILE);
    let sha256 =
        memory::digest(&memory_path, header.memory_size).map_err(format::TemplateError::from)?;
    if sha256 != header.memory_sha256 {
        return Err(format::TemplateError::Checksum { path: memory_path }.into());
    }
    let ram = memory::map_private(&memory_path, header.memory_size)
        .map_err(format::TemplateError::from)?;
    let vm = Arc::new(vm::create_vm(&kvm, &ram)?);
    map_dax_windows(&vm, &ram, &windows)?;
    crate::snapshot::vm::restore(&vm, &state.vm)
        .map_err(|e| restore_err("VM state")(e.to_string()))?;

    let mut io_bus = Bus::new();
    let mut mmio_bus = Bus::new();
    let serial = restored_serial(&vm, config, &state.devices.serial)?;
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
    io_bus.insert(
        cmos::CMOS_BASE,
        cmos::CMOS_LEN,
        Arc::new(Mutex::new(Cmos::with_index(state.devices.cmos_index))),
    )?;
    let mut transports = Vec::new();
    let mut to_activate = Vec::new();
    for (slot, (device, saved)) in devices.into_iter().zip(&state.devices.virtio).enumerate() {
        add_virtio_device(&vm, &ram, &mut mmio_bus, device, slot, &mut transports)?;
        if let Some(t) = transports.last() {
            let running = t
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .restore(saved)
                .map_err(restore_err("virtio device"))?;
            if running {
                to_activate.push(t.clone());
            }
        }
    }

    let supported = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(|source| VmmError::Kvm {
            what: "KVM_GET_SUPPORTED_CPUID",
            source,
        })?;
    let control = Arc::new(VcpuControl::default());
    let io_bus = Arc::new(io_bus);
    let mmio_bus = Arc::new(mmio_bus);
    let mut vcpus = Vec::new();
    for saved in &state.vcpus {
        let id = saved.id;
        let vcpu_err = |what| move |source| VmmError::Vcpu { id, what, source };
        let fd = vm
            .create_vcpu(u64::from(id))
            .map_err(vcpu_err("KVM_CREATE_VCPU"))?;
        let mut cpuid = supported.clone();
        cpuid::fixup(cpuid.as_mut_slice(), id, shape.vcpus);
        fd.set_cpuid2(&cpuid).map_err(vcpu_err("KVM_SET_CPUID2"))?;
        saved
            .restore(&fd)
            .map_err(|e| restore_err("vCPU state")(e.to_string()))?;
        vcpus.push(Vcpu {
            id,
            fd,
            io_bus: io_bus.clone(),
            mmio_bus: mmio_bus.clone(),
            control: control.clone(),
            exit: exit_tx.clone(),
            mem: ram.mem.clone(),
        });
    }
    // After the vCPUs' MSRs: their TSC writes make KVM recompute its clock.
    crate::snapshot::vm::restore_clock(&vm, &state.vm)
        .map_err(|e| restore_err("kvmclock")(e.to_string()))?;
    // With every local APIC restored, devices may interrupt the guest.
    for t in to_activate {
        t.lock()
            .unwrap_or_else(|p| p.into_inner())
            .activate_restored()
            .map_err(restore_err("starting a virtio device"))?;
    }
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
        template = %config.dir.display(),
        vcpus = shape.vcpus,
        memory_mib = shape.memory_mib,
        took = ?start.elapsed(),
        "resuming the restored guest"
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
        server.spawn(Arc::new(VmHandle {
            control: control.clone(),
            exit: exit_tx.clone(),
            vcpus: shape.vcpus,
            memory_mib: shape.memory_mib,
            devices: device_counters(&transports),
            snapshot: None,
        }))?;
    }
    Ok(wait_for_exit(
        &exit_rx,
        &guest_panicked,
        &control,
        &serial,
        &mut cleanup,
    ))
}

/// Checks the `--net` devices against the template's virtio-net devices:
/// as many, in the same order, each with the saved MTU (the guest driver
/// sized its buffers and limits by it). MACs may differ.
pub fn check_nets(
    saved: &[crate::snapshot::MmioState],
    nets: &[NetConfig],
) -> Result<(), VmmError> {
    virtio_net::validate_all(nets).map_err(|e| VmmError::RestoreArgs(format!("--net: {e}")))?;
    let template: Vec<Option<u16>> = saved
        .iter()
        .filter_map(|d| match &d.device {
            DeviceState::Net { mtu, .. } => Some(*mtu),
            _ => None,
        })
        .collect();
    if template.len() != nets.len() {
        return Err(VmmError::RestoreArgs(format!(
            "the template has {} network device(s), {} --net given: give one --net per \
             device of the template, in order",
            template.len(),
            nets.len()
        )));
    }
    for (index, (mtu, net)) in template.iter().zip(nets).enumerate() {
        if *mtu != net.mtu {
            let show = |m: Option<u16>| m.map_or("none".to_string(), |m| m.to_string());
            return Err(VmmError::RestoreArgs(format!(
                "--net device {index}: MTU {} differs from the template's {}",
                show(net.mtu),
                show(*mtu)
            )));
        }
    }
    Ok(())
}

fn restored_serial(
    vm: &VmFd,
    config: &RestoreConfig,
    saved: &SerialSnapshot,
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
        .map_err(|source| VmmError::Kvm {
            what: "KVM_IRQFD for the serial port",
            source,
        })?;
    // The template was made once its agent was ready (see console.rs).
    let out = SerialOutput::new(log, config.serial_stdout).after_ready();
    let device = SerialDevice::from_snapshot(saved, irq, out).map_err(restore_err("serial"))?;
    Ok(Arc::new(Mutex::new(device)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::MmioState;

    fn saved(device: DeviceState) -> MmioState {
        MmioState {
            device_type: 0,
            device,
            status: 0,
            acked_features: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            queue_select: 0,
            interrupt_status: 0,
            activated: false,
            queues: Vec::new(),
        }
    }

    fn net(value: &str) -> NetConfig {
        NetConfig::parse(value).unwrap_or_else(|e| panic!("{value}: {e}"))
    }

    #[test]
    fn nets_must_match_the_template_in_count_and_mtu() {
        let template = [
            saved(DeviceState::Vsock { cid: 3 }),
            saved(DeviceState::Net {
                mac: "02:00:00:00:00:01".into(),
                mtu: Some(1500),
            }),
        ];
        let pod = net("fd=5,mac=0a:58:0a:58:00:05,mtu=1500");
        assert!(check_nets(&template, std::slice::from_ref(&pod)).is_ok());
        let err = |nets: &[NetConfig]| match check_nets(&template, nets) {
            Err(e) => {
                assert_eq!(e.exit_code(), crate::error::exit_code::CONFIG);
                e.to_string()
            }
            Ok(()) => panic!("{nets:?} accepted"),
        };
        let e = err(&[]);
        assert!(e.contains("1 network device(s), 0 --net"), "{e}");
        let e = err(&[pod.clone(), net("fd=6,mac=0a:58:0a:58:00:06,mtu=1500")]);
        assert!(e.contains("2 --net"), "{e}");
        let e = err(&[net("fd=5,mac=0a:58:0a:58:00:05,mtu=9000")]);
        assert!(e.contains("MTU 9000") && e.contains("1500"), "{e}");
        let e = err(&[net("fd=5,mac=0a:58:0a:58:00:05")]);
        assert!(e.contains("MTU none"), "{e}");
        assert!(check_nets(&template[..1], &[]).is_ok());
    }
}
