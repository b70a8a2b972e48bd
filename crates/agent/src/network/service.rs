//! `nacre.agent.v1.Network`: the one place where network errors become
//! ttRPC statuses.

use std::path::PathBuf;
use std::sync::Mutex;

use nacre_protocol::network::{ConfigureNetworkRequest, ConfigureNetworkResponse};
use nacre_protocol::network_ttrpc;
use nacre_protocol::ttrpc::{self, get_status, Code, TtrpcContext};

use super::{apply, plan, NetworkError};

/// Serves `nacre.agent.v1.Network`, writing files under `etc`.
#[derive(Debug)]
pub struct NetworkService {
    etc: PathBuf,
    /// One configuration at a time.
    lock: Mutex<()>,
}

impl NetworkService {
    /// A service writing resolv.conf, hosts and hostname under `etc`.
    #[must_use]
    pub fn new(etc: PathBuf) -> Self {
        Self {
            etc,
            lock: Mutex::new(()),
        }
    }
}

fn into_rpc(e: NetworkError) -> ttrpc::Error {
    let code = match &e {
        NetworkError::Invalid(_) => Code::INVALID_ARGUMENT,
        NetworkError::NoInterface(_) => Code::NOT_FOUND,
        _ => Code::INTERNAL,
    };
    tracing::warn!("rpc failed: {e}");
    ttrpc::Error::RpcStatus(get_status(code, e.to_string()))
}

impl network_ttrpc::Network for NetworkService {
    fn configure_network(
        &self,
        _ctx: &TtrpcContext,
        req: ConfigureNetworkRequest,
    ) -> ttrpc::Result<ConfigureNetworkResponse> {
        let plan = plan(&req).map_err(into_rpc)?;
        let _guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let names = apply(&plan, &self.etc).map_err(into_rpc)?;
        let mut resp = ConfigureNetworkResponse::new();
        resp.interface_names = names;
        Ok(resp)
    }
}
