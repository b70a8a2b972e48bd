use super::*;

fn device(kind: &str, name: &str) -> DeviceCounters {
    DeviceCounters {
        device: kind.into(),
        name: name.into(),
        notifications: 1,
        interrupts: 2,
        ..Default::default()
    }
}

#[test]
fn a_sane_answer_is_kept_whole() {
    let mut fs = device("fs", "nacre");
    fs.requests = FS_OPS.iter().map(|op| ((*op).to_owned(), 3)).collect();
    fs.bytes = [("read".to_owned(), 10), ("write".to_owned(), 20)].into();
    let mut vsock = device("vsock", "vsock");
    vsock.packets = [("rx".to_owned(), 5), ("tx".to_owned(), 6)].into();
    vsock.bytes = [("rx".to_owned(), 50), ("tx".to_owned(), 60)].into();
    let net = device("net", "tap0_abc-1.x");
    let status = Response {
        guest_errors: Some([("fs_dropped_request".to_owned(), 7)].into()),
        devices: Some(vec![fs.clone(), vsock.clone(), net.clone()]),
        ..Response::ok()
    };
    let got = VmmCounters::from_status(status);
    assert_eq!(
        got.guest_errors,
        [("fs_dropped_request".to_owned(), 7)].into()
    );
    assert_eq!(got.devices, vec![fs, vsock, net]);
    assert_eq!(
        VmmCounters::from_status(Response::ok()),
        VmmCounters::default(),
        "an older VMM without counters"
    );
}

#[test]
fn hostile_device_entries_are_bounded_and_named_sanely() {
    let mut reported = Vec::new();
    // Unknown kinds, and a kind's look-alikes.
    for kind in ["blk", "FS", "fs ", "", "net\n", "vsock\"}"] {
        reported.push(device(kind, "x"));
    }
    // Odd and huge names, and counters foreign to the kind.
    let mut odd = device("fs", "a\"b\\c\nd}{e=,f é\u{0}");
    odd.requests = [
        ("read".to_owned(), 1),
        ("evil\"label".to_owned(), 2),
        ("x".repeat(10_000), 3),
    ]
    .into();
    odd.packets = [("rx".to_owned(), 9)].into();
    odd.bytes = [("read".to_owned(), 4), ("rx".to_owned(), 5)].into();
    reported.push(odd);
    reported.push(device("net", &"n".repeat(100_000)));
    reported.push(device("vsock", ""));
    let mut net = device("net", "eth0");
    net.requests = [("read".to_owned(), 1)].into();
    net.bytes = [("write".to_owned(), 1), ("tx".to_owned(), 2)].into();
    reported.push(net);
    // The same device again (a later entry cannot replace the first), and
    // thousands more.
    reported.push(device("net", "eth0"));
    for i in 0..5000 {
        reported.push(device("net", &format!("tap{i}")));
    }

    let kept = devices(reported);
    assert_eq!(kept.len(), DEVICES_MAX);
    let mut seen = std::collections::BTreeSet::new();
    for d in &kept {
        assert!(DEVICE_KINDS.contains(&d.device.as_str()), "{d:?}");
        assert!(
            !d.name.is_empty() && d.name.chars().count() <= NAME_MAX,
            "{d:?}"
        );
        assert!(
            d.name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)),
            "{d:?}"
        );
        assert!(
            seen.insert((d.device.clone(), d.name.clone())),
            "twice: {d:?}"
        );
        assert!(d.requests.keys().all(|k| FS_OPS.contains(&k.as_str())));
    }
    let fs = &kept[0];
    assert_eq!(fs.device, "fs");
    assert_eq!(fs.name, "a_b_c_d__e__f___");
    assert_eq!(fs.requests, [("read".to_owned(), 1)].into());
    assert!(fs.packets.is_empty(), "virtio-fs has no packets");
    assert_eq!(fs.bytes, [("read".to_owned(), 4)].into());
    assert_eq!(kept[1].name, "n".repeat(NAME_MAX));
    assert_eq!(
        (kept[2].device.as_str(), kept[2].name.as_str()),
        ("vsock", "_")
    );
    let eth0 = &kept[3];
    assert!(eth0.requests.is_empty());
    assert_eq!(eth0.bytes, [("tx".to_owned(), 2)].into());
    assert_eq!(eth0.notifications, 1);
}

#[test]
fn hostile_guest_error_kinds_are_bounded() {
    let mut counts: BTreeMap<String, u64> = (0..40)
        .map(|i| {
            (
                format!("kind_{}", char::from(b'a' + (i % 26) as u8)).repeat(1 + i / 26),
                1,
            )
        })
        .collect();
    counts.insert("fs_dropped_request".into(), 7);
    counts.insert("bad\nlabel\"}".into(), 9);
    counts.insert("x".repeat(100), 9);
    let got = guest_errors(counts);
    assert!(got.len() <= GUEST_ERROR_KINDS_MAX, "{got:?}");
    assert!(got.keys().all(|k| k.len() <= GUEST_ERROR_KIND_LEN_MAX
        && k.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')));
    assert_eq!(got.get("fs_dropped_request"), Some(&7));
}

/// A VMM answer of the largest size the runtime reads, all devices: what
/// is kept stays small.
#[test]
fn the_largest_answer_read_keeps_little() {
    let mut line = String::from(r#"{"ok":true,"devices":["#);
    let mut i = 0;
    while line.len() < crate::vm::API_REPLY_MAX as usize - 200 {
        line.push_str(&format!(
            r#"{{"device":"fs","name":"t{i}","requests":{{"read":1,"zz{i}":2}}}},"#
        ));
        i += 1;
    }
    line.push_str(r#"{"device":"vsock","name":"vsock"}]}"#);
    let status = Response::parse(&line).unwrap();
    let kept = VmmCounters::from_status(status);
    assert_eq!(kept.devices.len(), DEVICES_MAX);
    let size = serde_json::to_string(&kept).unwrap().len();
    assert!(size < 8 << 10, "{size} bytes kept");
}
