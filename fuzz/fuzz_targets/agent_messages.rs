//! The agent's reply payloads without the transport: every response
//! message of the nacre protocol decoded from arbitrary bytes (what the
//! ttrpc client hands the generated stubs), and an agent's error status
//! turned into the runtime's error (`AgentClientError::from_rpc`, whose
//! text reaches logs, the CLI and containerd).
//!
//! The `agent_reply` target drives the same decoding through the real
//! client and socket, at a few dozen executions per second; this one
//! reaches the payload decoding millions of times.
//!
//! Invariants: a payload that decodes re-encodes to bytes that decode to
//! the same message (round trip); a guest's status message is shown with
//! no control characters but newline and tab, and cut near
//! `GUEST_TEXT_MAX` bytes.

#![no_main]

use std::time::Duration;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use nacre_protocol::protobuf::{Enum, Message};
use nacre_protocol::ttrpc::{self, Code};
use nacre_protocol::{agent, container, health, network};
use nacre_runtime::agent::{guest_text, AgentClientError, GUEST_TEXT_MAX};

#[derive(Arbitrary, Debug)]
struct Input {
    kind: u8,
    code: u8,
    message: String,
    payload: Vec<u8>,
}

fn round_trip<M: Message + PartialEq + std::fmt::Debug>(bytes: &[u8]) {
    let Ok(m) = M::parse_from_bytes(bytes) else {
        return;
    };
    let again = m.write_to_bytes().expect("re-encoding a decoded message");
    let back = M::parse_from_bytes(&again).expect("decoding a re-encoded message");
    assert_eq!(back, m, "round trip");
}

fn decode(kind: u8, b: &[u8]) {
    match kind % 15 {
        0 => round_trip::<agent::GetGuestDetailsResponse>(b),
        1 => round_trip::<container::CreateContainerResponse>(b),
        2 => round_trip::<container::ExecProcessResponse>(b),
        3 => round_trip::<container::WaitProcessResponse>(b),
        4 => round_trip::<container::WriteStdinResponse>(b),
        5 => round_trip::<container::ReadStdoutResponse>(b),
        6 => round_trip::<container::ReadStderrResponse>(b),
        7 => round_trip::<container::ListProcessesResponse>(b),
        8 => round_trip::<container::StatsContainerResponse>(b),
        9 => round_trip::<container::StateContainerResponse>(b),
        10 => round_trip::<health::CheckResponse>(b),
        11 => round_trip::<network::ConfigureNetworkResponse>(b),
        12 => round_trip::<ttrpc::Response>(b),
        13 => round_trip::<ttrpc::Status>(b),
        _ => round_trip::<agent::SetTimeResponse>(b),
    }
}

fn check_shown(text: &str) {
    assert!(
        !text
            .chars()
            .any(|c| c.is_control() && c != '\n' && c != '\t'),
        "a control character from the guest shown on the host: {text:?}"
    );
}

fuzz_target!(|input: Input| {
    decode(input.kind, &input.payload);
    let shown = guest_text(&input.message);
    check_shown(&shown);
    assert!(
        shown.len() <= GUEST_TEXT_MAX + 40,
        "{} bytes kept",
        shown.len()
    );
    if input.message.len() <= GUEST_TEXT_MAX {
        assert_eq!(
            shown.chars().count(),
            input.message.chars().count(),
            "nothing cut"
        );
    }
    let code = Code::from_i32(i32::from(input.code % 17)).unwrap_or(Code::UNKNOWN);
    let status = ttrpc::get_status(code, input.message.clone());
    let err = AgentClientError::from_rpc(
        "Agent.Fuzz",
        Duration::from_secs(1),
        ttrpc::Error::RpcStatus(status),
    );
    check_shown(&err.to_string());
});
