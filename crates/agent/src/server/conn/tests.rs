use std::os::unix::net::UnixStream;
use std::sync::mpsc;
use std::time::Duration;

use nacre_protocol::health::check_response::ServingStatus;
use nacre_protocol::health::{CheckRequest, CheckResponse};
use nacre_protocol::health_ttrpc::{self, Health, HealthClient};

use super::*;

/// A health service whose `Check` of service "wait" blocks until a
/// `Check` of service "go" comes.
struct Gate {
    open: Mutex<Option<mpsc::Receiver<()>>>,
    opener: Mutex<mpsc::Sender<()>>,
}

impl Health for Gate {
    fn check(&self, _ctx: &TtrpcContext, req: CheckRequest) -> ttrpc::Result<CheckResponse> {
        match req.service.as_str() {
            "wait" => {
                let rx = self.open.lock().unwrap().take().unwrap();
                rx.recv_timeout(Duration::from_secs(20)).unwrap();
            }
            "go" => self.opener.lock().unwrap().send(()).unwrap(),
            _ => {}
        }
        let mut resp = CheckResponse::new();
        resp.status = ServingStatus::SERVING.into();
        Ok(resp)
    }
}

/// A client over a socket pair whose other end is served.
fn served() -> HealthClient {
    let (tx, rx) = mpsc::channel();
    let methods: Methods = health_ttrpc::create_health(Arc::new(Gate {
        open: Mutex::new(Some(rx)),
        opener: Mutex::new(tx),
    }));
    let methods = Arc::new(methods);
    let (ours, theirs) = UnixStream::pair().unwrap();
    let conn = Arc::new(Connection::new(OwnedFd::from(theirs)).unwrap());
    crate::pool::spawn(move || conn.serve(&methods)).unwrap();
    HealthClient::new(ttrpc::Client::new(std::os::fd::IntoRawFd::into_raw_fd(ours)).unwrap())
}

fn check(client: &HealthClient, service: &str) -> ttrpc::Result<CheckResponse> {
    let mut req = CheckRequest::new();
    req.service = service.into();
    client.check(ttrpc::context::with_timeout(20_000_000_000), &req)
}

#[test]
fn answers_calls() {
    let client = served();
    let resp = check(&client, "").unwrap();
    assert_eq!(resp.status.enum_value(), Ok(ServingStatus::SERVING));
}

#[test]
fn a_blocked_call_does_not_hold_up_others() {
    let client = served();
    let waiting = client.clone();
    let blocked = std::thread::spawn(move || check(&waiting, "wait"));
    std::thread::sleep(Duration::from_millis(50));
    check(&client, "go").unwrap();
    blocked.join().unwrap().unwrap();
}

#[test]
fn unknown_methods_are_refused_by_name() {
    let (ours, theirs) = UnixStream::pair().unwrap();
    let conn = Arc::new(Connection::new(OwnedFd::from(theirs)).unwrap());
    let methods = Arc::new(Methods::new());
    crate::pool::spawn(move || conn.serve(&methods)).unwrap();
    let client =
        HealthClient::new(ttrpc::Client::new(std::os::fd::IntoRawFd::into_raw_fd(ours)).unwrap());
    let err = check(&client, "").unwrap_err().to_string();
    assert!(
        err.contains("/nacre.agent.v1.Health/Check does not exist"),
        "{err}"
    );
}

#[test]
fn an_oversized_frame_ends_the_connection() {
    let (mut ours, theirs) = UnixStream::pair().unwrap();
    let conn = Arc::new(Connection::new(OwnedFd::from(theirs)).unwrap());
    let methods = Arc::new(Methods::new());
    let (done_tx, done_rx) = mpsc::channel();
    crate::pool::spawn(move || {
        conn.serve(&methods);
        done_tx.send(()).unwrap();
    })
    .unwrap();
    let len = u32::try_from(MESSAGE_LENGTH_MAX + 1).unwrap();
    let head: Vec<u8> = MessageHeader::new_request(1, len).into();
    ours.write_all(&head).unwrap();
    done_rx.recv_timeout(Duration::from_secs(10)).unwrap();
    // The agent's end is closed: the host reads EOF.
    let mut buf = [0u8; 1];
    assert_eq!(ours.read(&mut buf).unwrap(), 0);
}
