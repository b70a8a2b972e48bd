//! The VMM's own counters as Prometheus families: the errors the guest
//! caused, and each virtio device's traffic. Every device sample carries
//! `device` (`fs`, `net`, `vsock`) and `name` (the share tag, the host
//! interface, `vsock`) besides the sandbox's labels.

use super::super::{ProcessUsage, SandboxReport};
use super::{sandbox_labels, Out};

/// The device counter families: name, help, and the samples of one device
/// as (extra label, its value, count).
type Samples = fn(&nacre_vmm_api::DeviceCounters) -> Vec<(Option<(&'static str, String)>, u64)>;

const FAMILIES: [(&str, &str, Samples); 5] = [
    (
        "nacre_vmm_device_requests_total",
        "Requests the guest made of a virtio-fs device (FUSE requests served), by opcode group (op).",
        |d| keyed("op", &d.requests),
    ),
    (
        "nacre_vmm_device_packets_total",
        "Frames (net) or packets (vsock) through a virtio device, by direction (rx: to the guest, tx: from it).",
        |d| keyed("direction", &d.packets),
    ),
    (
        "nacre_vmm_device_bytes_total",
        "Payload bytes through a virtio device, by direction (net, vsock: rx to the guest, tx from it; fs: read and write file data).",
        |d| keyed("direction", &d.bytes),
    ),
    (
        "nacre_vmm_device_notifications_total",
        "Queue notifications (kicks) the guest sent a virtio device.",
        |d| vec![(None, d.notifications)],
    ),
    (
        "nacre_vmm_device_interrupts_total",
        "Interrupts a virtio device raised to the guest.",
        |d| vec![(None, d.interrupts)],
    ),
];

fn keyed(
    label: &'static str,
    counts: &std::collections::BTreeMap<String, u64>,
) -> Vec<(Option<(&'static str, String)>, u64)> {
    counts
        .iter()
        .map(|(k, n)| (Some((label, k.clone())), *n))
        .collect()
}

/// Adds the guest error and device families of `sandboxes` to `out`.
pub(super) fn render(out: &mut Out, sandboxes: &[(SandboxReport, Option<ProcessUsage>)]) {
    out.family(
        "nacre_vmm_guest_errors_total",
        "counter",
        "Errors the guest caused in the VMM's virtio devices (malformed requests, bad queues, credit violations), by kind.",
    );
    for (r, _) in sandboxes {
        for (kind, n) in &r.guest_errors {
            let mut l = sandbox_labels(r);
            l.push(("kind", kind.clone()));
            out.sample("nacre_vmm_guest_errors_total", &l, *n as f64);
        }
    }
    for (name, help, samples) in FAMILIES {
        out.family(name, "counter", help);
        for (r, _) in sandboxes {
            for d in &r.devices {
                for (extra, n) in samples(d) {
                    let mut l = sandbox_labels(r);
                    l.push(("device", d.device.clone()));
                    l.push(("name", d.name.clone()));
                    l.extend(extra);
                    out.sample(name, &l, n as f64);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::render;
    use super::super::tests::report;
    use super::super::NodeFacts;
    use nacre_vmm_api::DeviceCounters;

    #[test]
    fn each_device_counter_is_a_sample() {
        let mut r = report();
        r.sandbox = "pod".into();
        r.devices = vec![
            DeviceCounters {
                device: "fs".into(),
                name: "nacre".into(),
                notifications: 4,
                interrupts: 3,
                requests: [("read".to_owned(), 2), ("lookup".to_owned(), 9)].into(),
                bytes: [("read".to_owned(), 8192), ("write".to_owned(), 5)].into(),
                ..Default::default()
            },
            DeviceCounters {
                device: "vsock".into(),
                name: "vsock".into(),
                packets: [("rx".to_owned(), 7), ("tx".to_owned(), 6)].into(),
                bytes: [("rx".to_owned(), 70), ("tx".to_owned(), 60)].into(),
                ..Default::default()
            },
        ];
        let text = render(&[(r, None)], NodeFacts::default());
        let l = "sandbox=\"pod\",namespace=\"k8s.io\"";
        let fs = format!("{l},device=\"fs\",name=\"nacre\"");
        let vsock = format!("{l},device=\"vsock\",name=\"vsock\"");
        for want in [
            format!("nacre_vmm_device_requests_total{{{fs},op=\"read\"}} 2"),
            format!("nacre_vmm_device_requests_total{{{fs},op=\"lookup\"}} 9"),
            format!("nacre_vmm_device_bytes_total{{{fs},direction=\"read\"}} 8192"),
            format!("nacre_vmm_device_bytes_total{{{fs},direction=\"write\"}} 5"),
            format!("nacre_vmm_device_notifications_total{{{fs}}} 4"),
            format!("nacre_vmm_device_interrupts_total{{{fs}}} 3"),
            format!("nacre_vmm_device_packets_total{{{vsock},direction=\"rx\"}} 7"),
            format!("nacre_vmm_device_bytes_total{{{vsock},direction=\"tx\"}} 60"),
            format!("nacre_vmm_device_interrupts_total{{{vsock}}} 0"),
            "# TYPE nacre_vmm_device_bytes_total counter".to_owned(),
        ] {
            assert!(text.contains(&want), "{want} missing in\n{text}");
        }
        assert_eq!(
            text.matches("# TYPE nacre_vmm_device_requests_total")
                .count(),
            1
        );
        assert!(!text.contains(&format!("nacre_vmm_device_packets_total{{{fs}")));
    }
}
