use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::*;
use crate::agent::fake::FakeAgent;

fn started() -> Started {
    Started {
        vcpus: 1,
        memory_mib: 128,
        kind: "cold",
        seconds: 0.0,
    }
}

fn pod() -> (Pod, FakeVm, Arc<FakeAgent>) {
    let vm = FakeVm::new();
    let agent = Arc::new(FakeAgent::default());
    let pod = Pod::from_parts(agent.clone(), Box::new(vm.clone()), started());
    (pod, vm, agent)
}

#[test]
fn a_vm_that_dies_gives_128_plus_its_signal_once() {
    let (pod, vm, _) = pod();
    assert_eq!(pod.poll_exit(), None);
    assert_eq!(pod.exit_status(), None);
    vm.die(libc::SIGKILL);
    assert_eq!(pod.wait_exit(Duration::from_secs(5)), Some(137));
    assert_eq!(pod.poll_exit(), Some(137));
    assert_eq!(pod.exit_status(), Some(137));
    assert!(!pod.is_shut_down());
    // A later shutdown has nothing left to stop.
    pod.shutdown(Duration::from_secs(1)).unwrap();
    assert_eq!(vm.stops(), (0, 0));
    assert_eq!(pod.exit_status(), Some(137));
}

#[test]
fn shutdown_goes_through_the_guest_and_marks_the_pod() {
    let (pod, vm, _) = pod();
    pod.shutdown(Duration::from_secs(1)).unwrap();
    assert!(pod.is_shut_down());
    assert!(!vm.running());
    assert_eq!(vm.stops(), (1, 0));
    assert_eq!(pod.exit_status(), Some(VM_LOST_STATUS));
    drop(pod);
    assert_eq!(vm.stops(), (1, 0));
}

#[test]
fn kill_and_drop_kill_the_vm() {
    let (pod, vm, _) = pod();
    pod.kill();
    assert_eq!(vm.stops(), (0, 1));
    let (pod, vm, _) = self::pod();
    drop(pod);
    assert_eq!(
        vm.stops(),
        (0, 1),
        "a dropped pod never leaves its VM running"
    );
}

#[test]
fn wait_exit_times_out_while_the_vm_runs() {
    let (pod, vm, _) = pod();
    assert_eq!(pod.wait_exit(Duration::from_millis(20)), None);
    let v = vm.clone();
    let killer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(50));
        v.die(libc::SIGTERM);
    });
    assert_eq!(
        pod.wait_exit(Duration::from_secs(10)),
        Some(128 + libc::SIGTERM)
    );
    killer.join().unwrap();
}

#[test]
fn the_guest_identity_keeps_only_dns_host_names() {
    let id = guest_identity("sb1", Some("web-0.ns"), true).unwrap();
    assert_eq!(id.hostname, "web-0.ns");
    assert_eq!(id.sandbox_id, "sb1");
    assert_eq!(
        id.shared_tag.as_deref(),
        Some(crate::container::paths::SHARED_TAG)
    );
    for bad in ["", "a b", "x;reboot", "h\n", "nacre.debug=1 x"] {
        assert_eq!(
            guest_identity("sb1", Some(bad), false).unwrap().hostname,
            "",
            "{bad:?}"
        );
    }
    assert_eq!(guest_identity("sb1", None, false).unwrap().shared_tag, None);
}

#[test]
fn lost_status_is_128_plus_the_signal_else_255() {
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(lost_status(ExitStatus::from_raw(9)), 137);
    assert_eq!(lost_status(ExitStatus::from_raw(1 << 8)), VM_LOST_STATUS);
}

fn channel_sink() -> (EventSink, std::sync::mpsc::Receiver<PodEvent>) {
    let (tx, rx) = std::sync::mpsc::channel();
    let tx = Mutex::new(tx);
    let sink: EventSink = Arc::new(move |e| {
        let _ = tx.lock().unwrap_or_else(|e| e.into_inner()).send(e);
    });
    (sink, rx)
}

fn blocking_pod() -> (Pod, FakeVm, Arc<FakeAgent>) {
    let vm = FakeVm::new();
    let agent = Arc::new(FakeAgent::blocking());
    agent.create_container("c1", b"{}").unwrap();
    let pod = Pod::from_parts(agent.clone(), Box::new(vm.clone()), started());
    (pod, vm, agent)
}

#[test]
fn the_watcher_sends_a_process_exit_as_an_event() {
    let (pod, vm, agent) = blocking_pod();
    pod.container("c1").start().unwrap();
    let (sink, rx) = channel_sink();
    let watcher = pod.watch(sink).unwrap();
    watcher.process("c1", "");
    assert!(
        rx.recv_timeout(Duration::from_millis(200)).is_err(),
        "nothing yet"
    );
    agent.exit("c1", "", 3);
    match rx.recv_timeout(Duration::from_secs(5)).unwrap() {
        PodEvent::Exited { cid, exec_id, exit } => {
            assert_eq!((cid.as_str(), exec_id.as_str()), ("c1", ""));
            assert_eq!(pod.exit_of(&cid, &exit, Duration::ZERO), 3);
        }
        e => panic!("unexpected {e:?}"),
    }
    pod.shutdown(Duration::from_secs(1)).unwrap();
    assert!(matches!(
        rx.recv_timeout(Duration::from_secs(5)).unwrap(),
        PodEvent::VmExited
    ));
    assert!(!vm.running());
    agent.disconnect();
}

#[test]
fn the_watcher_reports_the_vm_dying_under_a_process() {
    let (pod, vm, agent) = blocking_pod();
    pod.container("c1").start().unwrap();
    let (sink, rx) = channel_sink();
    pod.watch(sink).unwrap().process("c1", "");
    vm.die(libc::SIGSEGV);
    assert!(matches!(
        rx.recv_timeout(Duration::from_secs(5)).unwrap(),
        PodEvent::VmExited
    ));
    assert_eq!(pod.poll_exit(), Some(128 + libc::SIGSEGV));
    // The agent connection goes with the VM: the wait fails, and the
    // process gets the VM's status.
    agent.disconnect();
    match rx.recv_timeout(Duration::from_secs(5)).unwrap() {
        PodEvent::Exited { cid, exit, .. } => {
            assert!(exit.is_err());
            assert_eq!(
                pod.exit_of(&cid, &exit, Duration::ZERO),
                128 + libc::SIGSEGV
            );
        }
        e => panic!("unexpected {e:?}"),
    }
}

#[test]
fn watching_a_pod_whose_vm_is_gone_reports_it_at_once() {
    let (pod, _vm, _) = pod();
    pod.kill();
    let (sink, rx) = channel_sink();
    pod.watch(sink).unwrap();
    assert!(matches!(rx.try_recv().unwrap(), PodEvent::VmExited));
}

#[test]
fn the_container_handle_drives_one_container() {
    let (pod, _vm, agent) = pod();
    agent.create_container("c1", b"{}").unwrap();
    let c = pod.container("c1");
    assert_eq!(c.id(), "c1");
    c.start().unwrap();
    c.pause().unwrap();
    c.resume().unwrap();
    c.update(b"{}").unwrap();
    c.signal("", 9, false).unwrap();
    assert!(c.stats().is_ok());
    c.remove().unwrap();
    assert!(pod.container("c1").start().is_err(), "removed");
    assert!(pod.container("nope").stats().is_err());
}

/// The VMM's counters reach the pod's owner bounded (the detailed hostile
/// answers are `metrics::vmm`'s tests), and only while the VMM runs.
#[test]
fn vmm_counters_come_bounded_from_the_vmms_status() {
    let (pod, vm, _) = pod();
    assert_eq!(
        pod.vmm_counters(),
        Some(Default::default()),
        "a VMM that reports none"
    );
    let device = |kind: &str, name: &str| nacre_vmm_api::DeviceCounters {
        device: kind.into(),
        name: name.into(),
        notifications: 1,
        ..Default::default()
    };
    let mut devices = vec![device("fs", "nacre"), device("vsock", "bad\n\"}")];
    devices.extend((0..1000).map(|i| device("net", &format!("tap{i}"))));
    vm.set_vmm_status(nacre_vmm_api::Response {
        guest_errors: Some(
            (0..100)
                .map(|i| (format!("kind_{i}"), 1))
                .chain([("fs_dropped_request".to_owned(), 7)])
                .collect(),
        ),
        devices: Some(devices),
        ..Default::default()
    });
    let got = pod.vmm_counters().unwrap();
    assert_eq!(
        got.guest_errors,
        [("fs_dropped_request".to_owned(), 7)].into()
    );
    assert_eq!(got.devices.len(), crate::metrics::DEVICES_MAX);
    assert_eq!(got.devices[0], device("fs", "nacre"));
    assert_eq!(got.devices[1].name, "bad___");
    pod.kill();
    assert_eq!(pod.vmm_counters(), None, "no VMM to ask");
}
