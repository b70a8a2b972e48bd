//! The ttRPC API between the host runtime and the guest agent.
