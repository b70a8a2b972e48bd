//! A log sink with a hard cap on the bytes written and on each line.

use std::io::{self, Write};
use std::sync::{Arc, Mutex};

use tracing_subscriber::fmt::MakeWriter;

/// Room kept under the cap for the final "log truncated" line.
const RESERVE: u64 = 128;
const LINE_CUT_MARK: &[u8] = b" [line truncated]\n";

/// A [`MakeWriter`] over one shared output that writes at most `max_bytes`
/// in total (the final "log truncated" line included) and at most
/// `max_line` bytes of any one write (one formatted event). Everything after
/// the cap is dropped and counted. Write errors are ignored: logging must
/// never stop the VMM.
#[derive(Clone)]
pub struct CappedWriter {
    inner: Arc<Mutex<Capped>>,
}

struct Capped {
    out: Box<dyn Write + Send>,
    written: u64,
    max_bytes: u64,
    max_line: usize,
    dropped: u64,
    truncated: bool,
}

impl CappedWriter {
    /// Writes to `out`, at most `max_bytes` in total and `max_line` per line.
    pub fn new(out: impl Write + Send + 'static, max_bytes: u64, max_line: usize) -> Self {
        Self {
            inner: Arc::new(Mutex::new(Capped {
                out: Box::new(out),
                written: 0,
                max_bytes,
                max_line: max_line.max(LINE_CUT_MARK.len()),
                dropped: 0,
                truncated: false,
            })),
        }
    }

    /// Bytes written so far.
    pub fn bytes_written(&self) -> u64 {
        self.lock().written
    }

    /// Bytes dropped because the cap was reached.
    pub fn bytes_dropped(&self) -> u64 {
        self.lock().dropped
    }

    /// Writes one line (or any chunk) under the caps.
    pub fn write_line(&self, buf: &[u8]) {
        self.lock().write_line(buf);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Capped> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Capped {
    fn write_line(&mut self, buf: &[u8]) {
        if self.truncated {
            self.dropped += buf.len() as u64;
            return;
        }
        let cut = buf.len() > self.max_line;
        let body = if cut {
            &buf[..self.max_line - LINE_CUT_MARK.len()]
        } else {
            buf
        };
        let len = body.len() as u64 + if cut { LINE_CUT_MARK.len() as u64 } else { 0 };
        if self.written + len + RESERVE > self.max_bytes {
            self.truncated = true;
            self.dropped += buf.len() as u64;
            let marker = format!(
                "nacre-vmm: log truncated at {} bytes (--log-max-bytes {}); later messages are dropped\n",
                self.written, self.max_bytes
            );
            if self.written + marker.len() as u64 <= self.max_bytes {
                self.put(marker.as_bytes());
            }
            return;
        }
        self.put(body);
        if cut {
            self.put(LINE_CUT_MARK);
        }
    }

    fn put(&mut self, bytes: &[u8]) {
        // Counted even if the write fails: the cap bounds what is attempted.
        self.written += bytes.len() as u64;
        let _ = self.out.write_all(bytes);
    }
}

impl Write for CappedWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_line(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        let _ = self.lock().out.flush();
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for CappedWriter {
    type Writer = CappedWriter;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}
