use std::time::Duration;

use tracing_subscriber::EnvFilter;

use super::test_util::{bridge_log, SharedBuf};
use super::{subscriber, LogLimits};

fn limits(max_bytes: u64) -> LogLimits {
    LogLimits {
        max_bytes,
        max_line: 256,
        burst: 5,
        window: Duration::from_secs(3600),
    }
}

#[test]
fn one_call_site_is_rate_limited_and_summarized() {
    let buf = SharedBuf::default();
    let (sub, handle) = subscriber(EnvFilter::new("info"), &limits(1 << 20), buf.clone());
    tracing::subscriber::with_default(sub, || {
        for i in 0..100_000 {
            tracing::error!("guest did something wrong: {i}");
        }
        tracing::info!("another call site still logs");
    });
    assert_eq!(handle.suppressed(), 100_000 - 5);
    handle.flush();
    let text = buf.contents();
    assert_eq!(text.matches("guest did something wrong").count(), 5);
    assert!(text.contains("another call site still logs"));
    assert!(
        text.contains("99995 messages from nacre_vmm::logging::tests at "),
        "{text}"
    );
}

#[test]
fn log_crate_records_are_limited_per_call_site() {
    bridge_log();
    let buf = SharedBuf::default();
    let (sub, handle) = subscriber(EnvFilter::new("info"), &limits(1 << 20), buf.clone());
    tracing::subscriber::with_default(sub, || {
        for _ in 0..1000 {
            log::error!(target: "virtio_queue::queue", "virtio queue with invalid size: 3");
            log::warn!(target: "fuse_backend_rs", "other site");
        }
    });
    handle.flush();
    let text = buf.contents();
    assert_eq!(text.matches("invalid size").count(), 5, "{text}");
    assert_eq!(text.matches("other site").count(), 5, "{text}");
    assert!(
        text.contains("995 messages from virtio_queue::queue"),
        "{text}"
    );
    assert!(text.contains("995 messages from fuse_backend_rs"), "{text}");
}

#[test]
fn total_bytes_and_line_length_are_capped() {
    let buf = SharedBuf::default();
    let mut l = limits(4096);
    l.burst = u32::MAX;
    let (sub, handle) = subscriber(EnvFilter::new("info"), &l, buf.clone());
    let huge = vec![0xabu8; 1 << 20];
    tracing::subscriber::with_default(sub, || {
        tracing::error!("a guest-sized body: {:?}", huge);
        for i in 0..10_000 {
            tracing::info!("line {i}");
        }
    });
    let text = buf.contents();
    assert!(text.len() <= 4096, "{}", text.len());
    assert_eq!(handle.bytes_written(), text.len() as u64);
    assert!(handle.bytes_dropped() > 0);
    let first = text.lines().next().unwrap();
    assert!(first.len() <= 256, "{}", first.len());
    assert!(first.contains("a guest-sized body: [171, 171"), "{first}");
    assert!(text.ends_with("later messages are dropped\n"), "{text}");
    assert_eq!(text.matches("log truncated at").count(), 1);
}
