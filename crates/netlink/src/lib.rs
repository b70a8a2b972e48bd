//! A small rtnetlink client on raw `NETLINK_ROUTE` sockets: list links,
//! addresses, routes and neighbours, and add or change them.
//!
//! Two users: the host runtime reads a pod network namespace's interfaces
//! (from a thread that entered the namespace), and the guest agent applies
//! them to the guest's NIC. The agent is copied into guest memory byte by
//! byte at boot, so this crate depends on libc and thiserror only.
//!
//! It does not enter namespaces or touch traffic control: callers do
//! that; the only interfaces it creates are the runtime's macvtaps.
//! Files: `socket` (framing, requests, dumps), `attr` (attribute encoding
//! and decoding), `types` (the objects), `ops` (the requests on them),
//! `links` (creating and deleting links).

mod attr;
mod links;
mod ops;
mod socket;
mod types;

pub use ops::{describe_route, Handle};
pub use socket::NetlinkError;
pub use types::{Address, BadMac, Link, MacAddr, Neighbour, Route, RouteScope};
