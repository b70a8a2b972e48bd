//! Publishing task events to containerd's ttRPC endpoint.
//!
//! containerd-shim's `RemotePublisher` reconnects only on some errors: after
//! a containerd restart its connection fails with another one and every
//! later event (TaskExit, TaskDelete...) is dropped. This publisher drops a
//! failed connection, reconnects and retries, for a while, and publishes
//! in order (one event at a time), so TaskOOM stays before its TaskExit.

use std::os::fd::RawFd;
use std::time::Duration;

use containerd_shim::protos::protobuf::MessageDyn;
use containerd_shim::protos::shim::event::Envelope;
use containerd_shim::protos::shim::events::ForwardRequest;
use containerd_shim::protos::shim_async::{Client, EventsClient};
use containerd_shim::protos::ttrpc::context::with_timeout;

use crate::error::ShimError;

/// Tries per event: with the backoff below, about 15 s for containerd to
/// come back.
const ATTEMPTS: u32 = 10;
/// How long one forward may take.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(5);

/// containerd's event endpoint (`TTRPC_ADDRESS`), or a recorder of the
/// topics published (for tests of the Task service).
pub struct Publisher {
    address: String,
    client: tokio::sync::Mutex<Option<EventsClient>>,
    recorded: Option<std::sync::Mutex<Vec<String>>>,
}

impl Publisher {
    /// Connects to `address` (a socket path or `unix://` URL).
    pub async fn connect(address: &str) -> Result<Self, ShimError> {
        let client = connect(address).await?;
        Ok(Self {
            address: address.to_string(),
            client: tokio::sync::Mutex::new(Some(client)),
            recorded: None,
        })
    }

    /// A publisher that only records the topics it is given, in order.
    pub fn recorder() -> Self {
        Self {
            address: String::new(),
            client: tokio::sync::Mutex::new(None),
            recorded: Some(std::sync::Mutex::new(Vec::new())),
        }
    }

    /// The topics a [`Publisher::recorder`] was given so far.
    pub fn recorded(&self) -> Vec<String> {
        self.recorded
            .as_ref()
            .map(|r| r.lock().unwrap_or_else(|e| e.into_inner()).clone())
            .unwrap_or_default()
    }

    /// Publishes `event` on `topic` in `namespace`; logs and drops it when
    /// containerd stays unreachable.
    pub async fn publish(&self, topic: &str, namespace: &str, event: Box<dyn MessageDyn>) {
        if let Some(r) = &self.recorded {
            r.lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(topic.to_string());
            return;
        }
        let any = match containerd_shim::util::convert_to_any(event) {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(topic, "encoding an event: {e}");
                return;
            }
        };
        let mut req = ForwardRequest::new();
        req.set_envelope(Envelope {
            timestamp: containerd_shim::util::timestamp().ok().into(),
            namespace: namespace.to_string(),
            topic: topic.to_string(),
            event: Some(any).into(),
            ..Default::default()
        });
        let timeout = i64::try_from(FORWARD_TIMEOUT.as_nanos()).unwrap_or(i64::MAX);
        let mut client = self.client.lock().await;
        for attempt in 0..ATTEMPTS {
            if client.is_none() {
                match connect(&self.address).await {
                    Ok(c) => *client = Some(c),
                    Err(e) => tracing::debug!(topic, attempt, "reconnecting: {e}"),
                }
            }
            if let Some(c) = client.as_ref() {
                match c.forward(with_timeout(timeout), &req).await {
                    Ok(_) => return,
                    Err(e) => {
                        tracing::info!(topic, attempt, "publishing an event: {e}; reconnecting");
                        *client = None;
                    }
                }
            }
            tokio::time::sleep(backoff(attempt)).await;
        }
        tracing::warn!(
            topic,
            "event dropped: containerd at {} unreachable",
            self.address
        );
    }
}

/// 100 ms, doubling, at most 2 s.
fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(100u64.saturating_mul(1 << attempt.min(5))).min(Duration::from_secs(2))
}

async fn connect(address: &str) -> Result<EventsClient, ShimError> {
    let addr = address.to_string();
    let fd: RawFd = tokio::task::spawn_blocking(move || containerd_shim::util::connect(addr))
        .await
        .map_err(|e| ShimError::Internal(format!("connecting to containerd: {e}")))?
        .map_err(|e| ShimError::Internal(format!("connecting to containerd at {address}: {e}")))?;
    // SAFETY: `fd` is a connected Unix socket that nothing else owns;
    // the client takes ownership of it.
    let client = unsafe { Client::from_raw_unix_socket_fd(fd) };
    Ok(EventsClient::new(client))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        assert_eq!(backoff(0), Duration::from_millis(100));
        assert_eq!(backoff(1), Duration::from_millis(200));
        assert_eq!(backoff(9), Duration::from_secs(2));
        let total: Duration = (0..ATTEMPTS).map(backoff).sum();
        assert!(total >= Duration::from_secs(10), "{total:?}");
    }
}
