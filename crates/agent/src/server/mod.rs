//! The ttRPC server: the agent's services (health, agent, network) on one
//! listener, served by the agent's thread pool ([`crate::pool`]).
//!
//! The services are ttrpc's generated method handlers; what this module
//! replaces is ttrpc's sync server, which starts five threads for every
//! connection (handler, reader, response writer and two workers) and more
//! whenever a call blocks. In a VM restored from a template every one of
//! them was guest kernel work before the first answer (about 0.3 s where
//! guest kernel mode is emulated). Here a connection's reader and each
//! call are jobs of the pool, whose threads the template already made, and
//! a call writes its own answer.

mod conn;

use std::os::fd::OwnedFd;
use std::sync::mpsc::Sender;
use std::sync::Arc;

use nacre_protocol::{agent_ttrpc, health_ttrpc, network_ttrpc};

use crate::config::ListenAddr;
use crate::container::AgentEngine;
use crate::network::NetworkService;
use crate::service::{AgentService, Event, HealthService};

pub use conn::Methods;

/// Threads made before the agent is ready: the template's connection
/// and a container's calls and output readers find them made.
const PRESTART: usize = 12;

/// The server could not start.
#[derive(Debug, thiserror::Error)]
#[error("serving ttRPC on {addr}: {source}")]
pub struct ServeError {
    /// Where it tried to listen.
    pub addr: String,
    /// Why.
    #[source]
    pub source: std::io::Error,
}

/// A running server: accepts connections until the agent exits.
#[derive(Debug)]
pub struct Server {
    _listener: Arc<OwnedFd>,
}

/// The services' method handlers by path (`/service/Method`).
pub fn methods(events: Sender<Event>, engine: AgentEngine) -> Methods {
    let mut methods = Methods::new();
    methods.extend(health_ttrpc::create_health(Arc::new(HealthService)));
    methods.extend(agent_ttrpc::create_agent(Arc::new(AgentService::new(
        events, engine,
    ))));
    methods.extend(network_ttrpc::create_network(Arc::new(
        NetworkService::new("/etc".into()),
    )));
    methods
}

/// Binds `addr`, registers the services and starts accepting on a thread
/// of the pool. A stale Unix socket file at the path is replaced.
pub fn start(
    addr: &ListenAddr,
    events: Sender<Event>,
    engine: AgentEngine,
) -> Result<Server, ServeError> {
    let err = |source| ServeError {
        addr: addr.to_string(),
        source,
    };
    let listener = Arc::new(crate::listen::listen(addr).map_err(err)?);
    let methods = Arc::new(methods(events, engine));
    let pool = crate::pool::global();
    pool.prestart(PRESTART).map_err(err)?;
    let accepting = Arc::clone(&listener);
    pool.spawn(move || conn::accept_loop(&accepting, &methods))
        .map_err(err)?;
    Ok(Server {
        _listener: listener,
    })
}
