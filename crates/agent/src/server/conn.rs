//! One ttRPC connection: frames in, each request a job of the pool that
//! calls its method handler and writes the answer under the connection's
//! write lock.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::{Arc, Condvar, Mutex, PoisonError};

use nacre_protocol::ttrpc;
use ttrpc::proto::{
    Codec, MessageHeader, Request, Response, MESSAGE_HEADER_LENGTH, MESSAGE_LENGTH_MAX,
    MESSAGE_TYPE_REQUEST,
};
use ttrpc::sync::{MethodHandler, TtrpcContext};
use ttrpc::{get_status, Code};

/// Method handlers by path (`/service/Method`).
pub type Methods = HashMap<String, Box<dyn MethodHandler + Send + Sync>>;

/// Calls of one connection running at once; the reader waits for one to
/// end before it reads the next request. Calls that block hold one each
/// (WaitProcess, ReadStdout and ReadStderr of every running process), so
/// the bound is far above what a pod's processes keep waiting; it only
/// keeps a runaway client from making threads without end.
const MAX_IN_FLIGHT: usize = 1024;

/// Accepts connections on `listener` and serves each from the pool.
pub fn accept_loop(listener: &OwnedFd, methods: &Arc<Methods>) {
    loop {
        let conn = match crate::listen::accept(listener) {
            Ok(conn) => conn,
            Err(e) => {
                tracing::warn!("ttRPC: accept: {e}");
                std::thread::sleep(std::time::Duration::from_millis(100));
                continue;
            }
        };
        let conn = match Connection::new(conn) {
            Ok(conn) => Arc::new(conn),
            Err(e) => {
                tracing::warn!("ttRPC: a connection: {e}");
                continue;
            }
        };
        let methods = Arc::clone(methods);
        if let Err(e) = crate::pool::spawn(move || conn.serve(&methods)) {
            tracing::error!("ttRPC: serving a connection: {e}");
        }
    }
}

struct Connection {
    read: File,
    write: Mutex<File>,
    fd: i32,
    in_flight: Mutex<usize>,
    done: Condvar,
    /// Dropped when the connection ends: calls watching `cancel_rx` see
    /// it disconnected.
    cancel: Mutex<Option<crossbeam_channel::Sender<()>>>,
    cancel_rx: crossbeam_channel::Receiver<()>,
}

impl Connection {
    fn new(fd: OwnedFd) -> io::Result<Connection> {
        let raw = fd.as_raw_fd();
        let read = File::from(fd);
        let write = read.try_clone()?;
        let (tx, rx) = crossbeam_channel::bounded(0);
        Ok(Connection {
            read,
            write: Mutex::new(write),
            fd: raw,
            in_flight: Mutex::new(0),
            done: Condvar::new(),
            cancel: Mutex::new(Some(tx)),
            cancel_rx: rx,
        })
    }

    /// Reads requests until the peer hangs up or sends a malformed frame.
    fn serve(self: &Arc<Self>, methods: &Arc<Methods>) {
        loop {
            let (mh, body) = match read_frame(&self.read) {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(e) => {
                    tracing::debug!("ttRPC: reading a frame: {e}");
                    break;
                }
            };
            if mh.type_ != MESSAGE_TYPE_REQUEST {
                continue;
            }
            self.enter();
            let (conn, methods) = (Arc::clone(self), Arc::clone(methods));
            let job = move || {
                conn.call(&methods, mh, body);
                conn.leave();
            };
            if let Err(e) = crate::pool::spawn(job) {
                tracing::error!("ttRPC: no thread for a call: {e}");
                self.leave();
                self.answer(
                    mh.stream_id,
                    &status_response(
                        Code::RESOURCE_EXHAUSTED,
                        "the agent has no thread for the call",
                    ),
                );
            }
        }
        self.cancel
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
    }

    fn enter(&self) {
        let mut n = self
            .in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        while *n >= MAX_IN_FLIGHT {
            n = self.done.wait(n).unwrap_or_else(PoisonError::into_inner);
        }
        *n += 1;
    }

    fn leave(&self) {
        let mut n = self
            .in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        *n = n.saturating_sub(1);
        self.done.notify_one();
    }

    /// Decodes and runs one request, then writes what the handler answered.
    fn call(&self, methods: &Methods, mh: MessageHeader, body: Vec<u8>) {
        let req = match <Request as Codec>::decode(&body) {
            Ok(req) => req,
            Err(e) => {
                let msg = format!("decoding the request: {e}");
                self.answer(mh.stream_id, &status_response(Code::INVALID_ARGUMENT, msg));
                return;
            }
        };
        let path = format!("/{}/{}", req.service, req.method);
        let Some(method) = methods.get(&path) else {
            let msg = format!("{path} does not exist");
            self.answer(mh.stream_id, &status_response(Code::INVALID_ARGUMENT, msg));
            return;
        };
        let (tx, rx) = std::sync::mpsc::channel();
        let ctx = TtrpcContext {
            fd: self.fd,
            cancel_rx: self.cancel_rx.clone(),
            mh,
            res_tx: tx,
            metadata: ttrpc::context::from_pb(&req.metadata),
            timeout_nano: req.timeout_nano,
            conn_ctx: Arc::default(),
        };
        if let Err(e) = method.handler(ctx, req) {
            tracing::debug!("ttRPC: {path}: {e:?}");
        }
        // The handler has sent its answer (or nothing, if it failed).
        for (header, payload) in rx.try_iter() {
            self.write_frame(header, &payload);
        }
    }

    fn answer(&self, stream_id: u32, res: &Response) {
        match res.encode() {
            // The frame's length is set by `write_frame`.
            Ok(payload) => self.write_frame(MessageHeader::new_response(stream_id, 0), &payload),
            Err(e) => tracing::warn!("ttRPC: encoding an answer: {e:?}"),
        }
    }

    /// Writes one frame (header then payload) under the write lock.
    fn write_frame(&self, mut header: MessageHeader, payload: &[u8]) {
        header.length = u32::try_from(payload.len()).unwrap_or(u32::MAX);
        let mut frame = Vec::with_capacity(MESSAGE_HEADER_LENGTH + payload.len());
        frame.extend_from_slice(&Vec::<u8>::from(header));
        frame.extend_from_slice(payload);
        let mut w = self.write.lock().unwrap_or_else(PoisonError::into_inner);
        if let Err(e) = w.write_all(&frame) {
            tracing::debug!("ttRPC: writing an answer: {e}");
        }
    }
}

fn status_response(code: Code, msg: impl ToString) -> Response {
    let mut res = Response::new();
    res.set_status(get_status(code, msg));
    res
}

/// One frame, or None at a clean end of the stream. A frame longer than
/// ttrpc's maximum ends the connection (the peer is the host's runtime,
/// which never sends one).
fn read_frame(mut r: &File) -> io::Result<Option<(MessageHeader, Vec<u8>)>> {
    let mut head = [0u8; MESSAGE_HEADER_LENGTH];
    let mut got = 0;
    while got < head.len() {
        match r.read(&mut head[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let mh = MessageHeader::from(head);
    let len = mh.length as usize;
    if len > MESSAGE_LENGTH_MAX {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("a frame of {len} bytes (at most {MESSAGE_LENGTH_MAX})"),
        ));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body)?;
    Ok(Some((mh, body)))
}

#[cfg(test)]
mod tests;
