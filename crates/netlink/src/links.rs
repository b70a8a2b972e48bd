//! Creating and deleting links: the host runtime's macvtap endpoints.

use crate::attr;
use crate::ops::Handle;
use crate::socket::{NetlinkError, NLM_F_CREATE};

const RTM_NEWLINK: u16 = 16;
const RTM_DELLINK: u16 = 17;
const IFLA_IFNAME: u16 = 3;
const IFLA_LINK: u16 = 5;
const IFLA_MTU: u16 = 4;
const IFLA_LINKINFO: u16 = 18;
const IFLA_INFO_KIND: u16 = 1;
const IFLA_INFO_DATA: u16 = 2;
const IFLA_MACVLAN_MODE: u16 = 1;
/// `MACVLAN_MODE_PASSTHRU`: one macvtap owns the lower link's traffic and
/// takes its MAC address.
const MACVLAN_MODE_PASSTHRU: u32 = 8;
const NLA_F_NESTED: u16 = 0x8000;
const NLM_F_EXCL: u16 = 0x200;
const IFINFOMSG_LEN: usize = 16;

fn ifinfomsg(index: u32) -> Vec<u8> {
    let mut m = vec![0u8; IFINFOMSG_LEN];
    m[4..8].copy_from_slice(&index.to_ne_bytes());
    m
}

/// The RTM_NEWLINK payload of a passthru macvtap `name` on link `lower`
/// with interface index `index`.
pub(crate) fn macvtap_msg(name: &str, lower: u32, index: u32, mtu: u32) -> Vec<u8> {
    let mut msg = ifinfomsg(index);
    let mut cname = name.as_bytes().to_vec();
    cname.push(0);
    attr::push(&mut msg, IFLA_IFNAME, &cname);
    attr::push(&mut msg, IFLA_LINK, &lower.to_ne_bytes());
    attr::push(&mut msg, IFLA_MTU, &mtu.to_ne_bytes());
    let mut data = Vec::new();
    attr::push(
        &mut data,
        IFLA_MACVLAN_MODE,
        &MACVLAN_MODE_PASSTHRU.to_ne_bytes(),
    );
    let mut info = Vec::new();
    attr::push(&mut info, IFLA_INFO_KIND, b"macvtap");
    attr::push(&mut info, IFLA_INFO_DATA | NLA_F_NESTED, &data);
    attr::push(&mut msg, IFLA_LINKINFO | NLA_F_NESTED, &info);
    msg
}

impl Handle {
    /// Creates macvtap `name` in passthru mode on link `lower`, with
    /// interface index `index` (devtmpfs names its character device
    /// `/dev/tap<index>`, a name shared by all network namespaces that may
    /// already lead to another namespace's macvtap: open it by the device
    /// number in the namespace's sysfs) and MTU `mtu`.
    pub fn add_macvtap(
        &mut self,
        name: &str,
        lower: u32,
        index: u32,
        mtu: u32,
    ) -> Result<(), NetlinkError> {
        self.sock.request(
            RTM_NEWLINK,
            NLM_F_CREATE | NLM_F_EXCL,
            &macvtap_msg(name, lower, index, mtu),
            &|| format!("creating macvtap {name} (index {index}) on link {lower}"),
        )
    }

    /// Deletes link `index`.
    pub fn delete_link(&mut self, index: u32) -> Result<(), NetlinkError> {
        self.sock.request(RTM_DELLINK, 0, &ifinfomsg(index), &|| {
            format!("deleting link {index}")
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macvtap_request_nests_kind_and_mode() {
        let msg = macvtap_msg("mvt0", 7, 4242, 1400);
        assert_eq!(&msg[4..8], &4242u32.to_ne_bytes());
        let attrs: Vec<(u16, Vec<u8>)> = attr::parse(&msg[IFINFOMSG_LEN..])
            .map(|(k, d)| (k, d.to_vec()))
            .collect();
        assert_eq!(attrs[0], (IFLA_IFNAME, b"mvt0\0".to_vec()));
        assert_eq!(attrs[1], (IFLA_LINK, 7u32.to_ne_bytes().to_vec()));
        assert_eq!(attrs[2], (IFLA_MTU, 1400u32.to_ne_bytes().to_vec()));
        let (kind, info) = &attrs[3];
        assert_eq!(*kind, IFLA_LINKINFO);
        let info: Vec<(u16, Vec<u8>)> = attr::parse(info).map(|(k, d)| (k, d.to_vec())).collect();
        assert_eq!(info[0], (IFLA_INFO_KIND, b"macvtap".to_vec()));
        let mode: Vec<(u16, Vec<u8>)> = attr::parse(&info[1].1)
            .map(|(k, d)| (k, d.to_vec()))
            .collect();
        assert_eq!(info[1].0, IFLA_INFO_DATA);
        assert_eq!(
            mode,
            vec![(
                IFLA_MACVLAN_MODE,
                MACVLAN_MODE_PASSTHRU.to_ne_bytes().to_vec()
            )]
        );
    }
}
