#![allow(clippy::unwrap_used, reason = "tests")]

use super::*;

#[test]
fn binds_are_absolute_and_deduplicated() {
    let mut spec = JailSpec::new("/run/x/jail");
    spec.bind(Path::new("/a/b"), BindKind::ReadOnly).unwrap();
    spec.bind(Path::new("/a/b"), BindKind::ReadOnly).unwrap();
    spec.bind(Path::new("rel"), BindKind::ReadWrite).unwrap();
    assert_eq!(spec.binds.len(), 2);
    assert!(spec.binds.iter().all(|b| b.path.is_absolute()));
}

#[test]
fn a_relative_jail_directory_is_refused() {
    let err = enter(&JailSpec::new("jail")).unwrap_err();
    assert!(matches!(err, JailError::Relative(_)), "{err}");
}

#[test]
fn caps_follow_the_profile() {
    let mut spec = JailSpec::new("/j");
    assert!(creds::kept_caps(&spec).is_empty());
    assert!(!spec.stays_root());
    spec.share = true;
    assert_eq!(creds::kept_caps(&spec), SHARE_CAPS);
    assert!(spec.stays_root());
    spec.tap_by_name = true;
    assert_eq!(creds::kept_caps(&spec).len(), SHARE_CAPS.len() + 1);
}

#[test]
fn a_multithreaded_process_is_refused() {
    // The test harness runs tests on threads: this process has several.
    let t = std::thread::spawn(|| std::thread::sleep(std::time::Duration::from_millis(200)));
    let err = enter(&JailSpec::new("/nonexistent-jail")).unwrap_err();
    assert!(matches!(err, JailError::Threads(_)), "{err}");
    t.join().unwrap();
}
