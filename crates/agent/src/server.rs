//! The ttRPC server: both services on one listener.

use std::sync::mpsc::Sender;
use std::sync::Arc;

use nacre_protocol::ttrpc;
use nacre_protocol::{agent_ttrpc, health_ttrpc, network_ttrpc};

use crate::config::ListenAddr;
use crate::container::AgentEngine;
use crate::network::NetworkService;
use crate::service::{AgentService, Event, HealthService};

/// Worker threads per connection. The sync ttrpc server starts
/// `DEFAULT` workers per connection and, whenever fewer than `MIN` are
/// idle, starts more (up to `DEFAULT` idle again); idle workers beyond
/// `MAX` exit. So the pool grows with the calls that block (WaitProcess,
/// ReadStdout/ReadStderr, WriteStdin): with `MIN` 2 there are always two
/// idle workers for a signal or a state query while others are blocked.
const WORKERS_DEFAULT: usize = 2;
const WORKERS_MIN: usize = 1;
const WORKERS_MAX: usize = 16;

/// The server could not start.
#[derive(Debug, thiserror::Error)]
#[error("serving ttRPC on {addr}: {source}")]
pub struct ServeError {
    /// Where it tried to listen.
    pub addr: String,
    /// ttrpc's error.
    #[source]
    pub source: ttrpc::Error,
}

/// Binds `addr`, registers the services and starts serving in background
/// threads. A stale Unix socket file at the path is replaced.
pub fn start(
    addr: &ListenAddr,
    events: Sender<Event>,
    engine: AgentEngine,
) -> Result<ttrpc::Server, ServeError> {
    let err = |source| ServeError {
        addr: addr.to_string(),
        source,
    };
    if let ListenAddr::Unix(path) = addr {
        match std::fs::remove_file(path) {
            Ok(()) => tracing::debug!("removed stale socket {path}"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(err(ttrpc::Error::Others(format!("removing {path}: {e}")))),
        }
    }
    let health = health_ttrpc::create_health(Arc::new(HealthService));
    let agent = agent_ttrpc::create_agent(Arc::new(AgentService::new(events, engine)));
    let network = network_ttrpc::create_network(Arc::new(NetworkService::new("/etc".into())));
    let mut server = ttrpc::Server::new()
        .set_thread_count_default(WORKERS_DEFAULT)
        .set_thread_count_min(WORKERS_MIN)
        .set_thread_count_max(WORKERS_MAX)
        .bind(&addr.to_string())
        .map_err(err)?
        .register_service(health)
        .register_service(agent)
        .register_service(network);
    server.start().map_err(err)?;
    Ok(server)
}
