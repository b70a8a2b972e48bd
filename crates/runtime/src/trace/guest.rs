//! The guest agent's spans in the trace: a process of their own per VM.

use serde_json::json;

use super::{push, GuestSpan, GUEST_PID_BASE, GUEST_SPANS_MAX, NAME_MAX};

/// Adds the spans of the guest of the VMM `vmm_pid`.
pub fn add_guest(spans: &[GuestSpan], vmm_pid: u32) {
    let pid = GUEST_PID_BASE + u64::from(vmm_pid);
    push(json!({
        "name": "process_name", "ph": "M", "pid": pid,
        "args": {"name": format!("guest agent (VM of nacre-vmm {vmm_pid})")},
    }));
    for s in spans.iter().take(GUEST_SPANS_MAX) {
        let name: String = s
            .name
            .chars()
            .filter(|c| c.is_ascii_graphic() || *c == ' ')
            .take(NAME_MAX)
            .collect();
        push(json!({
            "name": format!("agent.{name}"),
            "cat": "guest",
            "ph": "X",
            "ts": s.start_us,
            "dur": s.duration_us,
            "pid": pid,
            "tid": s.thread,
        }));
    }
}

/// Where a long-lived reader of one agent's spans got to: the agent
/// answers `GetTrace` with its last spans, taken or not, so a shim that
/// asks after each task keeps only those that ended after the last one it
/// took (spans ending in the same microsecond as that one are taken with
/// it or not at all).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct GuestCursor {
    last_end_us: Option<u64>,
}

impl GuestCursor {
    /// The spans of `spans` not taken before; advances the cursor.
    pub fn take_new(&mut self, spans: Vec<GuestSpan>) -> Vec<GuestSpan> {
        let end = |s: &GuestSpan| s.start_us.saturating_add(s.duration_us);
        let fresh: Vec<GuestSpan> = match self.last_end_us {
            Some(last) => spans.into_iter().filter(|s| end(s) > last).collect(),
            None => spans,
        };
        if let Some(max) = fresh.iter().map(end).max() {
            self.last_end_us = Some(self.last_end_us.map_or(max, |l| l.max(max)));
        }
        fresh
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(name: &str, start_us: u64, duration_us: u64) -> GuestSpan {
        GuestSpan {
            name: name.into(),
            start_us,
            duration_us,
            thread: 1,
        }
    }

    #[test]
    fn each_span_is_taken_once_across_reads() {
        let mut cursor = GuestCursor::default();
        let first = vec![span("Restored", 10, 5), span("CreateContainer", 20, 30)];
        assert_eq!(cursor.take_new(first.clone()).len(), 2);
        // The agent answers with what it keeps: the old spans and new ones,
        // a long one that started before the last taken one ended.
        let mut second = first;
        second.push(span("WaitProcess", 40, 100));
        second.push(span("RemoveContainer", 141, 2));
        let names: Vec<String> = cursor
            .take_new(second.clone())
            .into_iter()
            .map(|s| s.name)
            .collect();
        assert_eq!(names, ["WaitProcess", "RemoveContainer"]);
        assert!(cursor.take_new(second).is_empty());
        assert!(cursor.take_new(Vec::new()).is_empty());
    }
}
