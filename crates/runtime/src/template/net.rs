//! Network devices of templates: a template's VM has detached devices
//! with placeholder MACs; a restored guest's agent is told to give each
//! NIC its pod MAC.

use crate::network::GuestNetwork;
use crate::vm::VmNet;

/// The MAC of the `index`th network device of a template's VM:
/// locally administered, `02:6e:61:63:00:<index>` ("nac").
pub fn placeholder_mac(index: usize) -> String {
    format!("02:6e:61:63:00:{:02x}", index & 0xff)
}

/// The network devices of the template for a VM with `nets`: detached,
/// placeholder MACs, the same MTUs.
pub(super) fn template_nets(nets: &[VmNet]) -> Vec<VmNet> {
    nets.iter()
        .enumerate()
        .map(|(i, net)| VmNet {
            fd: None,
            mac: placeholder_mac(i),
            mtu: net.mtu,
        })
        .collect()
}

/// Tells the agent of a restored VM that its NICs still have the
/// template's MACs: the `i`th interface of `net` (the `i`th network
/// device) is given its MAC first.
pub fn mark_restored(net: &mut GuestNetwork) {
    for (i, iface) in net.interfaces.iter_mut().enumerate() {
        iface.current_mac = Some(placeholder_mac(i));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_nets_are_detached_placeholders_in_order() {
        let nets = [
            VmNet {
                fd: Some(7),
                mac: "0a:58:0a:58:00:05".into(),
                mtu: Some(1450),
            },
            VmNet {
                fd: Some(8),
                mac: "0a:58:0a:58:00:06".into(),
                mtu: None,
            },
        ];
        let t = template_nets(&nets);
        let arg = |n: &VmNet| n.net_arg().map(|a| a.to_arg()).unwrap_or_default();
        assert_eq!(arg(&t[0]), "detached,mac=02:6e:61:63:00:00,mtu=1450");
        assert_eq!(arg(&t[1]), "detached,mac=02:6e:61:63:00:01");
        let mut net = GuestNetwork::default();
        for n in &nets {
            net.interfaces.push(crate::network::GuestInterface {
                mac: n.mac.clone(),
                name: "eth".into(),
                mtu: 1500,
                addresses: Vec::new(),
                current_mac: None,
            });
        }
        mark_restored(&mut net);
        assert_eq!(
            net.interfaces[1].current_mac.as_deref(),
            Some("02:6e:61:63:00:01")
        );
    }
}
