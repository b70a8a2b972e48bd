//! The device thread: one epoll loop over the two queue notifications and
//! the kill eventfd. Each descriptor chain is one FUSE request: the
//! readable part is the request, the writable part takes the reply.

use crate::devices::virtio::worker::WorkerHandle;
use std::io::ErrorKind;
use std::os::fd::AsRawFd;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc;
use std::sync::Arc;

use fuse_backend_rs::api::server::Server;
use fuse_backend_rs::passthrough::{Config as PassthroughConfig, PassthroughFs};
use fuse_backend_rs::transport::{FsCacheReqHandler, Reader, VirtioFsWriter};
use tracing::{debug, error, warn};
use virtio_queue::{DescriptorChain, Queue, QueueT};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::super::counters::DeviceCounters;
use super::super::{ActiveQueue, GuestMemory, Interrupt};
use super::counting::RequestHook;
use super::dax::{DaxWindow, WindowMapper};
use super::dax_scope::DaxScope;
use super::guard::NoDeviceNodes;
use crate::devices::virtio::guest_errors::{FS_DROPPED_REQUESTS, USED_RING_FAILURES};

const KILL_TOKEN: u64 = 0;
const HIPRIO_TOKEN: u64 = 1;
const REQUEST_TOKEN: u64 = 2;

pub(super) type FuseServer = Server<NoDeviceNodes<PassthroughFs<()>>>;

pub struct Worker {
    mem: GuestMemory,
    interrupt: Arc<Interrupt>,
    hiprio: ActiveQueue,
    request: ActiveQueue,
    kill: EventFd,
    epoll: Epoll,
    counters: Arc<DeviceCounters>,
    mapper: Option<WindowMapper>,
}

impl Worker {
    /// Builds a worker over the hiprio and request queues (in that order),
    /// counting in `counters`, mapping files into `window` if there is one.
    pub fn new(
        mem: GuestMemory,
        interrupt: Arc<Interrupt>,
        queues: [ActiveQueue; 2],
        counters: Arc<DeviceCounters>,
        window: Option<Arc<DaxWindow>>,
    ) -> std::io::Result<Self> {
        let [hiprio, request] = queues;
        let kill = EventFd::new(libc::EFD_NONBLOCK)?;
        let epoll = Epoll::new()?;
        for (fd, token) in [
            (kill.as_raw_fd(), KILL_TOKEN),
            (hiprio.notify.as_raw_fd(), HIPRIO_TOKEN),
            (request.notify.as_raw_fd(), REQUEST_TOKEN),
        ] {
            epoll.ctl(
                ControlOperation::Add,
                fd,
                EpollEvent::new(EventSet::IN, token),
            )?;
        }
        Ok(Self {
            mem,
            interrupt,
            hiprio,
            request,
            kill,
            epoll,
            counters,
            mapper: window.map(WindowMapper),
        })
    }

    /// Starts the thread, which sets up the file system server for `config`
    /// first; returns once the server is ready or failed.
    pub fn spawn(self, tag: &str, config: PassthroughConfig) -> std::io::Result<WorkerHandle> {
        let kill = self.kill.try_clone()?;
        let (ready_tx, ready_rx) = mpsc::sync_channel(1);
        // The thread logs where its creator does (the global logger, or a
        // test's own subscriber).
        let dispatch = tracing::dispatcher::get_default(Clone::clone);
        let thread = crate::seccomp::spawn(
            crate::seccomp::ThreadKind::Fs,
            format!("fs-{tag}"),
            move || match new_server(config) {
                Ok(server) => {
                    let _ = ready_tx.send(Ok(()));
                    let _log = tracing::dispatcher::set_default(&dispatch);
                    self.run(&server);
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                }
            },
        )?;
        let ready = ready_rx
            .recv()
            .unwrap_or_else(|_| Err(std::io::Error::other("the worker thread died")));
        let handle = WorkerHandle::new("virtio-fs", kill, thread);
        match ready {
            Ok(()) => Ok(handle),
            Err(e) => {
                handle.stop();
                Err(e)
            }
        }
    }

    fn run(mut self, server: &FuseServer) {
        let mut events = vec![EpollEvent::default(); 8];
        // The driver may have queued requests before the device started.
        self.process(server);
        loop {
            let n = match self.epoll.wait(-1, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    error!("virtio-fs: epoll_wait failed, stopping the device: {e}");
                    return;
                }
            };
            for ev in &events[..n] {
                match ev.data() {
                    KILL_TOKEN => {
                        debug!("virtio-fs: worker stopping");
                        return;
                    }
                    HIPRIO_TOKEN => self.counters.take_notifications(&self.hiprio.notify),
                    REQUEST_TOKEN => self.counters.take_notifications(&self.request.notify),
                    _ => {}
                }
            }
            self.process(server);
        }
    }

    /// Serves both queues until empty, then interrupts the guest once if
    /// any chain was used.
    fn process(&mut self, server: &FuseServer) {
        let mut used = 0;
        for queue in [&mut self.hiprio.queue, &mut self.request.queue] {
            used += serve_queue(
                queue,
                &self.mem,
                server,
                &self.counters,
                self.mapper.as_mut(),
            );
        }
        if used > 0 {
            if let Err(e) = self.interrupt.signal_used_queue() {
                error!("virtio-fs: interrupting the guest: {e}");
            }
        }
    }
}

/// Creates the FUSE server in the calling thread, which first gets its own
/// umask and working directory: `PassthroughFs` sets the umask to 0 (so the
/// modes the guest asks for are the modes it gets) and that must not leak
/// into the rest of the VMM, which creates sockets and logs.
pub(super) fn new_server(config: PassthroughConfig) -> std::io::Result<FuseServer> {
    // SAFETY: unshare(CLONE_FS) only detaches this thread's root, cwd and
    // umask from the other threads'; no memory is involved.
    if unsafe { libc::unshare(libc::CLONE_FS) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let fs = PassthroughFs::<()>::new(config)?;
    Ok(Server::new(NoDeviceNodes(fs, DaxScope::default())))
}

/// Handles every available chain of `queue`, counting the requests
/// served in `counters`, mapping files with `mapper` (without one, a
/// SETUPMAPPING is refused); returns how many chains were used.
pub(super) fn serve_queue(
    queue: &mut Queue,
    mem: &GuestMemory,
    server: &FuseServer,
    counters: &DeviceCounters,
    mut mapper: Option<&mut WindowMapper>,
) -> usize {
    let mut count = 0;
    while let Some(chain) = queue.pop_descriptor_chain(mem) {
        let head = chain.head_index();
        let written = match handle_chain(mem, chain, server, counters, mapper.as_deref_mut()) {
            Ok(n) => n,
            Err(e) => {
                if FS_DROPPED_REQUESTS.record() {
                    warn!("virtio-fs: dropping a request: {e}");
                } else {
                    debug!("virtio-fs: dropping a request: {e}");
                }
                0
            }
        };
        if let Err(e) = queue.add_used(mem, head, written) {
            if USED_RING_FAILURES.record() {
                warn!("virtio-fs: returning a buffer: {e}");
            }
        }
        count += 1;
    }
    count
}

/// Serves one FUSE request; returns the reply's length.
fn handle_chain(
    mem: &GuestMemory,
    chain: DescriptorChain<&GuestMemory>,
    server: &FuseServer,
    counters: &DeviceCounters,
    mapper: Option<&mut WindowMapper>,
) -> Result<u32, String> {
    let reader = Reader::from_descriptor_chain(mem, chain.clone())
        .map_err(|e| format!("request buffers: {e}"))?;
    let writer = VirtioFsWriter::new(mem, chain).map_err(|e| format!("reply buffers: {e}"))?;
    // The FUSE server is third-party code fed with guest input: a panic in
    // it costs this request, not the device.
    let hook = RequestHook::default();
    let result = catch_unwind(AssertUnwindSafe(|| {
        let mapper = mapper.map(|m| m as &mut dyn FsCacheReqHandler);
        server.handle_message(reader, writer.into(), mapper, Some(&hook))
    }))
    .map_err(|_| "the FUSE server panicked".to_string())?;
    let written = result.map_err(|e| format!("FUSE: {e}"))?;
    hook.count(written, counters);
    u32::try_from(written).map_err(|_| "reply longer than 4 GiB".to_string())
}
