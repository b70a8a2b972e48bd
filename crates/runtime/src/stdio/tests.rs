use std::fs::{File, OpenOptions};
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::input::copy_fifo;
use super::*;
use crate::agent::fake::FakeAgent;

/// A FIFO in a temp dir, opened for reading (as the stdin copy does, once
/// a writer is there) and for writing.
fn fifo() -> (tempfile::TempDir, File, File) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("stdin");
    let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    // SAFETY: a NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let p = path.clone();
    let reader = std::thread::spawn(move || File::open(p).unwrap());
    let writer = OpenOptions::new().write(true).open(&path).unwrap();
    (dir, reader.join().unwrap(), writer)
}

/// A pipe: (read end, write end).
fn pipe() -> (std::os::fd::OwnedFd, std::os::fd::OwnedFd) {
    use std::os::fd::FromRawFd;
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: two fresh descriptors nothing else owns.
    unsafe {
        (
            std::os::fd::OwnedFd::from_raw_fd(fds[0]),
            std::os::fd::OwnedFd::from_raw_fd(fds[1]),
        )
    }
}

fn collect(out: &Arc<Mutex<Vec<u8>>>) -> impl FnMut(&[u8]) -> Option<usize> + '_ {
    move |data| {
        out.lock().unwrap().extend_from_slice(data);
        Some(data.len())
    }
}

#[test]
fn stdin_ends_when_the_writers_close() {
    let (_dir, reader, mut writer) = fifo();
    let (wake, _close) = pipe();
    let out = Arc::new(Mutex::new(Vec::new()));
    writer.write_all(b"hello").unwrap();
    drop(writer);
    assert_eq!(copy_fifo(reader, &wake, &mut collect(&out)), 5);
    assert_eq!(out.lock().unwrap().as_slice(), b"hello");
}

#[test]
fn close_io_ends_stdin_after_what_was_written() {
    // The client keeps its end open (as CRI does); CloseIO ends the input
    // once the FIFO is drained.
    let (_dir, reader, mut writer) = fifo();
    let (wake, close) = pipe();
    let out = Arc::new(Mutex::new(Vec::new()));
    let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let copy = {
        let out = out.clone();
        std::thread::spawn(move || copy_fifo(reader, &wake, &mut collect(&out)))
    };
    writer.write_all(&data).unwrap();
    drop(close);
    assert_eq!(copy.join().unwrap(), data.len());
    assert_eq!(*out.lock().unwrap(), data);
    drop(writer);
}

#[test]
fn stdin_stops_when_the_process_takes_no_more() {
    let (_dir, reader, mut writer) = fifo();
    let (wake, _close) = pipe();
    writer.write_all(b"abc").unwrap();
    assert_eq!(copy_fifo(reader, &wake, &mut |_| None), 0);
}

/// A sink the test reads back.
#[derive(Clone, Default)]
struct Shared(Arc<Mutex<Vec<u8>>>);

impl Write for Shared {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn end(sink: &Shared) -> OutputEnd {
    let sink = sink.clone();
    Box::new(move || Box::new(sink))
}

fn agent_with_process() -> Arc<FakeAgent> {
    let agent = Arc::new(FakeAgent::default());
    agent.create_container("c", b"{}").unwrap();
    agent.set_output("c", "", b"out", b"err");
    agent
}

#[test]
fn outputs_and_input_go_between_the_agent_and_the_ends() {
    let agent = agent_with_process();
    let client: Arc<dyn AgentClient> = agent.clone();
    let (out, err) = (Shared::default(), Shared::default());
    let (r, w) = pipe();
    let mut w = File::from(w);
    let relay = start(
        &client,
        "c",
        "",
        Ends {
            stdin: Some(Box::new(ReaderInput(File::from(r)))),
            stdout: Some(end(&out)),
            stderr: Some(end(&err)),
            window: None,
        },
    )
    .unwrap();
    w.write_all(b"typed").unwrap();
    drop(w);
    relay.wait_outputs(Duration::from_secs(10));
    assert_eq!(out.0.lock().unwrap().as_slice(), b"out");
    assert_eq!(err.0.lock().unwrap().as_slice(), b"err");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !agent.container("c").unwrap().processes[""].stdin_closed {
        assert!(std::time::Instant::now() < deadline, "stdin never closed");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(agent.container("c").unwrap().processes[""].stdin, b"typed");
}

#[test]
fn without_input_the_process_stdin_is_closed_at_once() {
    let agent = agent_with_process();
    let client: Arc<dyn AgentClient> = agent.clone();
    let out = Shared::default();
    let relay = start(
        &client,
        "c",
        "",
        Ends {
            stdout: Some(end(&out)),
            ..Ends::default()
        },
    )
    .unwrap();
    assert!(agent.container("c").unwrap().processes[""].stdin_closed);
    relay.wait_outputs(Duration::from_secs(10));
    assert_eq!(out.0.lock().unwrap().as_slice(), b"out");
}
