//! vCPU threads: the KVM_RUN loop, I/O dispatch to the buses, and parking
//! for pause/resume.
//!
//! Pausing: the controller sets the target state to paused and kicks every
//! vCPU thread with [`kick_signal`]. The signal handler sets the thread's
//! `kvm_run.immediate_exit`, so KVM_RUN returns EINTR whether the signal
//! lands inside KVM_RUN or just before it; the thread then parks on a
//! condition variable until resumed.

use std::cell::Cell;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kvm_bindings::{
    KVM_INTERNAL_ERROR_EMULATION, KVM_SYSTEM_EVENT_CRASH, KVM_SYSTEM_EVENT_RESET,
    KVM_SYSTEM_EVENT_SHUTDOWN,
};
use kvm_ioctls::{VcpuExit, VcpuFd};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::signal::{register_signal_handler, Killable, SIGRTMIN};

use crate::devices::Bus;
use crate::events::{self, ExitEvent, ExitSender};
use crate::snapshot::VcpuState;

/// The real-time signal used to kick vCPU threads out of KVM_RUN.
pub fn kick_signal() -> i32 {
    SIGRTMIN()
}

thread_local! {
    // The calling vCPU thread's kvm_run.immediate_exit byte, or null.
    static IMMEDIATE_EXIT: Cell<*mut u8> = const { Cell::new(std::ptr::null_mut()) };
}

extern "C" fn handle_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    let ptr = IMMEDIATE_EXIT.with(Cell::get);
    if !ptr.is_null() {
        // SAFETY: the pointer is this thread's own kvm_run mapping, set by
        // Vcpu::run and cleared before that mapping can go away; a volatile
        // byte store is async-signal-safe.
        unsafe { std::ptr::write_volatile(ptr, 1) };
    }
}

/// Installs the kick signal handler; once per process, before vCPUs run.
pub fn install_kick_handler() -> Result<(), vmm_sys_util::errno::Error> {
    register_signal_handler(kick_signal(), handle_kick)
}

/// What the vCPUs should be doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunState {
    Running,
    Paused,
}

#[derive(Debug)]
struct ControlState {
    target: RunState,
    parked: usize,
    /// The current request to parked vCPUs to save their state.
    save: Option<Arc<SaveRequest>>,
    /// Their answers to it.
    saved: Vec<Result<VcpuState, String>>,
}

/// A request to every parked vCPU: save your state.
#[derive(Debug)]
pub struct SaveRequest {
    generation: u64,
    /// The MSRs to save (KVM_GET_MSR_INDEX_LIST).
    pub msr_index: Vec<u32>,
}

/// Shared between the vCPU threads and whoever pauses them.
#[derive(Debug)]
pub struct VcpuControl {
    state: Mutex<ControlState>,
    cond: Condvar,
    handles: Mutex<Vec<JoinHandle<()>>>,
}

impl Default for VcpuControl {
    fn default() -> Self {
        Self {
            state: Mutex::new(ControlState {
                target: RunState::Running,
                parked: 0,
                save: None,
                saved: Vec::new(),
            }),
            cond: Condvar::new(),
            handles: Mutex::new(Vec::new()),
        }
    }
}

impl VcpuControl {
    fn lock(&self) -> std::sync::MutexGuard<'_, ControlState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The state the vCPUs were last asked to be in.
    pub fn target(&self) -> RunState {
        self.lock().target
    }

    /// Keeps the handle of a started vCPU thread, for kicking.
    pub fn add_thread(&self, handle: JoinHandle<()>) {
        self.handles
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(handle);
    }

    /// Kicks every vCPU out of KVM_RUN once (the profiler's tick).
    pub fn kick(&self) {
        self.kick_all();
    }

    fn kick_all(&self) {
        let handles = self.handles.lock().unwrap_or_else(|p| p.into_inner());
        for h in handles.iter() {
            // The handles are never joined, so their pthread_t stay valid.
            if let Err(e) = h.kill(kick_signal()) {
                tracing::warn!("kicking a vCPU thread: {e}");
            }
        }
    }

    /// Stops every vCPU and waits until all are parked.
    pub fn pause(&self, timeout: Duration) -> Result<(), String> {
        let expected = self.handles.lock().map(|h| h.len()).unwrap_or(0);
        self.lock().target = RunState::Paused;
        let deadline = Instant::now() + timeout;
        loop {
            self.kick_all();
            let state = self.lock();
            let (state, _) = self
                .cond
                .wait_timeout_while(state, Duration::from_millis(50), |s| s.parked < expected)
                .unwrap_or_else(|p| p.into_inner());
            if state.parked >= expected {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "only {} of {expected} vCPUs stopped within {timeout:?}",
                    state.parked
                ));
            }
        }
    }

    /// Has every vCPU (paused before with [`Self::pause`]) save its state
    /// on its own thread; returns the states ordered by vCPU id.
    pub fn save_all(
        &self,
        msr_index: Vec<u32>,
        timeout: Duration,
    ) -> Result<Vec<VcpuState>, String> {
        let expected = self.handles.lock().map(|h| h.len()).unwrap_or(0);
        let mut state = self.lock();
        if state.target != RunState::Paused || state.parked < expected {
            return Err("the vCPUs are not paused".into());
        }
        let generation = state.save.as_ref().map_or(1, |r| r.generation + 1);
        state.save = Some(Arc::new(SaveRequest {
            generation,
            msr_index,
        }));
        state.saved.clear();
        self.cond.notify_all();
        let (mut state, timed_out) = self
            .cond
            .wait_timeout_while(state, timeout, |s| s.saved.len() < expected)
            .unwrap_or_else(|p| p.into_inner());
        if timed_out.timed_out() {
            return Err(format!(
                "only {} of {expected} vCPUs saved their state within {timeout:?}",
                state.saved.len()
            ));
        }
        let mut states = std::mem::take(&mut state.saved)
            .into_iter()
            .collect::<Result<Vec<_>, _>>()?;
        states.sort_by_key(|s| s.id);
        Ok(states)
    }

    /// Lets parked vCPUs run again.
    pub fn resume(&self) {
        self.lock().target = RunState::Running;
        self.cond.notify_all();
    }

    /// Called by a vCPU thread that will never run the guest again: it
    /// counts as parked from now on.
    fn mark_stopped(&self) {
        self.lock().parked += 1;
        self.cond.notify_all();
    }

    /// Called by a vCPU thread before entering the guest: blocks while the
    /// VM is paused, answering save requests with `save`.
    fn park_while_paused(&self, mut save: impl FnMut(&SaveRequest) -> Result<VcpuState, String>) {
        let mut state = self.lock();
        if state.target == RunState::Running {
            return;
        }
        state.parked += 1;
        let mut answered = state.save.as_ref().map_or(0, |r| r.generation);
        self.cond.notify_all();
        while state.target == RunState::Paused {
            if let Some(request) = state.save.clone().filter(|r| r.generation != answered) {
                answered = request.generation;
                drop(state);
                let result = save(&request);
                state = self.lock();
                if state.save.as_ref().map(|r| r.generation) == Some(answered) {
                    state.saved.push(result);
                    self.cond.notify_all();
                }
                continue;
            }
            state = self.cond.wait(state).unwrap_or_else(|p| p.into_inner());
        }
        state.parked -= 1;
    }
}

/// One vCPU and what it needs to run.
pub struct Vcpu {
    pub id: u8,
    pub fd: VcpuFd,
    pub io_bus: Arc<Bus>,
    pub mmio_bus: Arc<Bus>,
    pub control: Arc<VcpuControl>,
    pub exit: ExitSender,
    pub mem: GuestMemoryMmap,
}

enum Next {
    Continue,
    Stop(ExitEvent),
    InternalError,
    Interrupted,
}

impl Vcpu {
    /// Runs the guest on this thread until the VM stops; reports why on
    /// the exit channel.
    pub fn run(mut self) {
        let immediate_exit: *mut u8 = &mut self.fd.get_kvm_run().immediate_exit;
        IMMEDIATE_EXIT.with(|c| c.set(immediate_exit));
        let event = self.run_loop();
        IMMEDIATE_EXIT.with(|c| c.set(std::ptr::null_mut()));
        self.control.mark_stopped();
        events::send(&self.exit, event);
        // Park for good: the process exits soon; keeping the thread (and its
        // kvm_run mapping) alive keeps kicks harmless.
        loop {
            std::thread::park();
        }
    }

    /// Saves this (parked) vCPU's state: first completes the I/O of its
    /// last exit (KVM_RUN with immediate_exit set returns at once), so the
    /// registers hold its result.
    fn save_state(&mut self, request: &SaveRequest) -> Result<VcpuState, String> {
        let id = self.id;
        self.fd.set_kvm_immediate_exit(1);
        let completed = match self.fd.run() {
            Err(e) if e.errno() == libc::EINTR => Ok(()),
            Err(e) => Err(format!("vCPU {id}: completing the last exit: {e}")),
            Ok(exit) => Err(format!(
                "vCPU {id}: unexpected exit {exit:?} while completing the last one"
            )),
        };
        self.fd.set_kvm_immediate_exit(0);
        completed?;
        VcpuState::save(self.id, &self.fd, &request.msr_index).map_err(|e| e.to_string())
    }

    fn run_loop(&mut self) -> ExitEvent {
        loop {
            let control = self.control.clone();
            control.park_while_paused(|request| self.save_state(request));
            match self.step() {
                Next::Continue => {}
                Next::Interrupted => {
                    self.fd.set_kvm_immediate_exit(0);
                    if crate::profile::enabled() {
                        if let Ok(regs) = self.fd.get_regs() {
                            crate::profile::record(regs.rip);
                        }
                    }
                }
                Next::Stop(event) => return event,
                Next::InternalError => {
                    let reason = self.describe_internal_error();
                    return ExitEvent::VcpuFailure {
                        vcpu: self.id,
                        reason,
                    };
                }
            }
        }
    }

    fn step(&mut self) -> Next {
        let id = self.id;
        match self.fd.run() {
            Ok(VcpuExit::IoIn(port, data)) => {
                if !self.io_bus.read(u64::from(port), data) {
                    tracing::trace!(port, "read from unhandled port");
                    data.fill(0xff);
                }
                Next::Continue
            }
            Ok(VcpuExit::IoOut(port, data)) => {
                if !self.io_bus.write(u64::from(port), data) {
                    tracing::trace!(port, "write to unhandled port");
                }
                Next::Continue
            }
            Ok(VcpuExit::MmioRead(addr, data)) => {
                if !self.mmio_bus.read(addr, data) {
                    tracing::trace!(addr, "read from unhandled MMIO");
                    data.fill(0);
                }
                Next::Continue
            }
            Ok(VcpuExit::MmioWrite(addr, data)) => {
                if !self.mmio_bus.write(addr, data) {
                    tracing::trace!(addr, "write to unhandled MMIO");
                }
                Next::Continue
            }
            Ok(VcpuExit::Hlt) => {
                // The in-kernel local APIC handles HLT; seeing it means the
                // guest halted for good (e.g. `poweroff -f` without ACPI).
                tracing::debug!(vcpu = id, "HLT exit");
                Next::Continue
            }
            Ok(VcpuExit::Shutdown) => {
                let rip = self.fd.get_regs().map(|r| r.rip).unwrap_or(0);
                tracing::info!(
                    vcpu = id,
                    rip = format_args!("{rip:#x}"),
                    "triple fault: guest reset"
                );
                Next::Stop(ExitEvent::GuestReset)
            }
            Ok(VcpuExit::SystemEvent(kind, _)) => match kind {
                KVM_SYSTEM_EVENT_SHUTDOWN => Next::Stop(ExitEvent::GuestShutdown),
                KVM_SYSTEM_EVENT_RESET => Next::Stop(ExitEvent::GuestReset),
                KVM_SYSTEM_EVENT_CRASH => Next::Stop(ExitEvent::VcpuFailure {
                    vcpu: id,
                    reason: "guest crash system event".into(),
                }),
                other => {
                    tracing::warn!(vcpu = id, kind = other, "unknown system event");
                    Next::Continue
                }
            },
            Ok(VcpuExit::InternalError) => Next::InternalError,
            Ok(VcpuExit::FailEntry(reason, cpu)) => Next::Stop(ExitEvent::VcpuFailure {
                vcpu: id,
                reason: format!("KVM entry failure: hardware reason {reason:#x} on cpu {cpu}"),
            }),
            Ok(VcpuExit::Intr) => Next::Interrupted,
            Ok(other) => Next::Stop(ExitEvent::VcpuFailure {
                vcpu: id,
                reason: format!("unexpected KVM exit {other:?}"),
            }),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => Next::Interrupted,
            Err(e) => Next::Stop(ExitEvent::VcpuFailure {
                vcpu: id,
                reason: format!("KVM_RUN: {e}"),
            }),
        }
    }

    /// Describes a KVM internal error with the registers, and logs it.
    fn describe_internal_error(&mut self) -> String {
        // SAFETY: the exit reason is KVM_EXIT_INTERNAL_ERROR, so the
        // `internal` member of the union is the one KVM filled.
        let internal = unsafe { self.fd.get_kvm_run().__bindgen_anon_1.internal };
        let kind = if internal.suberror == KVM_INTERNAL_ERROR_EMULATION {
            "emulation failure"
        } else {
            "internal error"
        };
        let ndata = (internal.ndata as usize).min(internal.data.len());
        let mut text = format!(
            "KVM {kind} (suberror {}, data {:x?})",
            internal.suberror,
            &internal.data[..ndata]
        );
        if let Ok(r) = self.fd.get_regs() {
            text.push_str(&format!(
                "; rip={:#x} rsp={:#x} rflags={:#x} rax={:#x} rbx={:#x} rcx={:#x} rdx={:#x} rsi={:#x} rdi={:#x}",
                r.rip, r.rsp, r.rflags, r.rax, r.rbx, r.rcx, r.rdx, r.rsi, r.rdi
            ));
            if let Ok(s) = self.fd.get_sregs() {
                text.push_str(&format!(
                    " cs={:#x} cr0={:#x} cr2={:#x} cr3={:#x} cr4={:#x} efer={:#x}",
                    s.cs.selector, s.cr0, s.cr2, s.cr3, s.cr4, s.efer
                ));
            }
            if let Some(bytes) = self.code_at(r.rip) {
                text.push_str(&format!(" code@rip={bytes:02x?}"));
            }
        }
        tracing::error!(vcpu = self.id, "{text}");
        text
    }

    fn code_at(&self, rip: u64) -> Option<[u8; 16]> {
        let t = self.fd.translate_gva(rip).ok()?;
        if t.valid == 0 {
            return None;
        }
        let mut bytes = [0u8; 16];
        self.mem
            .read_slice(&mut bytes, GuestAddress(t.physical_address))
            .ok()?;
        Some(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pause_with_no_vcpus_is_immediate() {
        let c = VcpuControl::default();
        assert!(c.pause(Duration::from_millis(10)).is_ok());
        assert_eq!(c.target(), RunState::Paused);
        c.resume();
        assert_eq!(c.target(), RunState::Running);
    }

    #[test]
    fn parked_thread_counts_and_resumes() {
        let c = Arc::new(VcpuControl::default());
        let c2 = c.clone();
        // A stand-in vCPU thread that parks between "runs".
        let worker = std::thread::spawn(move || {
            for _ in 0..200 {
                c2.park_while_paused(|_| Err("no state".into()));
                std::thread::sleep(Duration::from_millis(1));
            }
        });
        c.add_thread(worker);
        assert!(install_kick_handler().is_ok());
        assert!(c.pause(Duration::from_secs(5)).is_ok());
        assert_eq!(c.lock().parked, 1);
        c.resume();
    }
}
