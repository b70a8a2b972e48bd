//! Root tier: the sandbox share (`SharedDir`) against a hostile guest,
//! with real mounts and no VM. The guest is simulated by writing as root
//! straight into `<dir>/shared`: that is what the VMM's virtio-fs
//! passthrough server does on the guest's behalf, and root gets `EROFS`
//! there just like the VMM.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

use std::fs;
use std::io::ErrorKind;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use nacre_runtime::container::mounts::{self, mount_id, mount_table};
use nacre_runtime::container::share::SharedDir;
use nacre_runtime::container::spec::Bundle;
use nacre_runtime::container::{ContainerError, ContainerPaths};
use nacre_runtime::testing::root_with_tools;

fn sh(cmd: &str) {
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{cmd}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A scratch directory with a bundle and a share; unmounts and removes
/// everything on drop.
struct Fixture {
    base: PathBuf,
    share: SharedDir,
    bundle: Bundle,
}

/// Bundle mounts: 1 `data` (rw dir), 2 `ro` (ro dir with a tmpfs
/// submount `sub`, the source a noexec tmpfs), 3 `rro` (rro dir with a
/// submount), 4 `noexec` (rw, the source a noexec tmpfs), 5 a file.
fn fixture(name: &str) -> Fixture {
    let base = std::env::temp_dir().join(format!("nacre-share-{name}-{}", std::process::id()));
    if base.exists() {
        let _ = mounts::unmount_tree(&base, true);
        fs::remove_dir_all(&base).unwrap();
    }
    let b = base.join("bundle");
    for d in ["rootfs", "data", "ro", "rro", "noexec"] {
        fs::create_dir_all(b.join(d)).unwrap();
    }
    let d = b.display();
    sh(&format!(
        "mount -t tmpfs -o noexec,size=1m nacre-test {d}/ro"
    ));
    sh(&format!(
        "mkdir {d}/ro/sub && mount -t tmpfs -o size=1m nacre-test {d}/ro/sub"
    ));
    sh(&format!(
        "mkdir {d}/rro/sub && mount -t tmpfs -o size=1m nacre-test {d}/rro/sub"
    ));
    sh(&format!(
        "mount -t tmpfs -o noexec,size=1m nacre-test {d}/noexec"
    ));
    fs::write(b.join("file"), "x").unwrap();
    fs::write(
        b.join("config.json"),
        r#"{"ociVersion": "1.0.2", "process": {"args": ["sh"], "cwd": "/"},
            "root": {"path": "rootfs"},
            "mounts": [
              {"destination": "/proc", "type": "proc", "source": "proc"},
              {"destination": "/data", "type": "bind", "source": "data", "options": ["rbind"]},
              {"destination": "/ro", "type": "bind", "source": "ro", "options": ["rbind", "ro"]},
              {"destination": "/rro", "type": "bind", "source": "rro", "options": ["rbind", "rro"]},
              {"destination": "/noexec", "type": "bind", "source": "noexec", "options": ["rbind"]},
              {"destination": "/f", "type": "bind", "source": "file", "options": ["bind"]}
            ]}"#,
    )
    .unwrap();
    let bundle = Bundle::load(&b).unwrap();
    let share = SharedDir::create(&base.join("sb")).unwrap();
    Fixture {
        base,
        share,
        bundle,
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let torn = self.share.teardown();
        let _ = mounts::unmount_tree(&self.base, true);
        let _ = fs::remove_dir_all(&self.base);
        if !std::thread::panicking() {
            torn.unwrap();
        }
    }
}

fn errno(r: std::io::Result<()>) -> i32 {
    r.expect_err("the guest's write must fail")
        .raw_os_error()
        .unwrap()
}

fn statvfs_flags(p: &Path) -> u64 {
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: statvfs is plain integers; all-zero is a valid value.
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a NUL-terminated path and a statvfs buffer outliving the call.
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut s) };
    assert_eq!(rc, 0, "{}", p.display());
    s.f_flag
}

/// A bind of the container's rootfs is a mount point in rw and, by
/// propagation, in shared.
fn assert_bound(f: &Fixture, cid: &str) {
    let rw = f.share.rw();
    for view in [&rw, &f.share.shared()] {
        let rootfs = view.join(cid).join("rootfs");
        assert_ne!(
            mount_id(&rootfs).unwrap(),
            mount_id(&view.join(cid)).unwrap(),
            "{} is not a mount point",
            rootfs.display()
        );
    }
}

/// H1 (bind-target race, CVE-2020-2026 class): while the host binds 200
/// new containers, the "guest" keeps planting symlinks to a host canary
/// directory at `shared/<cid>` and `shared/<cid>/mounts`. Safe outcome:
/// every planting attempt fails (EROFS, or ENOENT/EEXIST when the parent
/// is missing or the entry is the host's), every bind lands in rw, and
/// the canary stays empty and untouched.
#[test]
fn h1_bind_targets_cannot_be_redirected() {
    if !root_with_tools("h1_bind_targets_cannot_be_redirected", &[]) {
        return;
    }
    let f = fixture("h1");
    let canary = f.base.join("canary");
    fs::create_dir(&canary).unwrap();
    let before = fs::metadata(&canary).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let shared = f.share.shared();
    let guest = {
        let (stop, canary, shared) = (stop.clone(), canary.clone(), shared.clone());
        std::thread::spawn(move || {
            let (mut erofs, mut other) = (0u32, Vec::new());
            while !stop.load(Ordering::Relaxed) {
                for i in 0..200 {
                    let c = shared.join(format!("c{i}"));
                    for target in [c.clone(), c.join("mounts"), c.join("rootfs")] {
                        match std::os::unix::fs::symlink(&canary, &target) {
                            Ok(()) => panic!("planted {}", target.display()),
                            Err(e) if e.raw_os_error() == Some(libc::EROFS) => erofs += 1,
                            Err(e) => other.push(e.raw_os_error()),
                        }
                    }
                    if fs::create_dir(&c).is_ok() {
                        panic!("created {}", c.display());
                    }
                }
            }
            (erofs, other)
        })
    };
    for i in 0..200 {
        let cid = format!("c{i}");
        f.share.bind_container(&f.bundle, &cid).unwrap();
        assert_bound(&f, &cid);
    }
    stop.store(true, Ordering::Relaxed);
    let (erofs, other) = guest.join().unwrap();
    assert!(erofs > 0);
    assert!(
        other
            .iter()
            .all(|e| matches!(e, Some(libc::ENOENT) | Some(libc::EEXIST))),
        "{other:?}"
    );
    assert_eq!(fs::read_dir(&canary).unwrap().count(), 0, "canary touched");
    let after = fs::metadata(&canary).unwrap();
    assert_eq!(
        (before.mtime(), before.mtime_nsec(), before.ctime_nsec()),
        (after.mtime(), after.mtime_nsec(), after.ctime_nsec())
    );
    assert!(mount_table().iter().all(|m| !m.point.starts_with(&canary)));
    for i in 0..200 {
        f.share.remove_container(&format!("c{i}")).unwrap();
    }
    assert!(
        mounts::mounts_under(&shared).len() == 1,
        "only shared itself"
    );
    eprintln!(
        "h1: {erofs} plantings refused with EROFS, {} others",
        other.len()
    );
}

/// H1 teardown variant (CVE-2020-2024 class): a victim bind mount outside
/// the share must survive 200 remove_container calls while the "guest"
/// renames container directories away and plants symlinks to the victim
/// (in the share's structure: refused; inside the writable rootfs:
/// allowed, and irrelevant). Safe outcome: the victim's mount keeps its
/// id and content, every container is fully unmounted and removed.
#[test]
fn h1_teardown_cannot_be_redirected() {
    if !root_with_tools("h1_teardown_cannot_be_redirected", &[]) {
        return;
    }
    let f = fixture("td");
    let victim = f.base.join("victim");
    fs::create_dir_all(victim.join("rootfs")).unwrap();
    sh(&format!(
        "mount -t tmpfs -o size=1m nacre-victim {}/rootfs && echo v > {}/rootfs/marker",
        victim.display(),
        victim.display()
    ));
    let victim_id = mount_id(&victim.join("rootfs")).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let shared = f.share.shared();
    let guest = {
        let (stop, victim, shared) = (stop.clone(), victim.clone(), shared.clone());
        std::thread::spawn(move || {
            let mut refused = 0u32;
            while !stop.load(Ordering::Relaxed) {
                for i in 0..200 {
                    let c = shared.join(format!("c{i}"));
                    let _ = std::os::unix::fs::symlink(&victim, c.join("rootfs/evil"));
                    if fs::rename(&c, shared.join("moved")).is_err()
                        && std::os::unix::fs::symlink(&victim, &c).is_err()
                        && std::os::unix::fs::symlink(&victim, c.join("mounts")).is_err()
                    {
                        refused += 1;
                    } else {
                        panic!("the guest changed the share's structure at {}", c.display());
                    }
                }
            }
            refused
        })
    };
    for i in 0..200 {
        let cid = format!("c{i}");
        f.share.bind_container(&f.bundle, &cid).unwrap();
        // Writable rootfs: the guest may put a symlink inside it.
        let _ = std::os::unix::fs::symlink(&victim, shared.join(&cid).join("rootfs/evil2"));
        f.share.remove_container(&cid).unwrap();
        assert!(!f.share.rw().join(&cid).exists());
        assert_eq!(mount_id(&victim.join("rootfs")).unwrap(), victim_id);
    }
    stop.store(true, Ordering::Relaxed);
    let refused = guest.join().unwrap();
    assert!(refused > 0);
    assert_eq!(
        fs::read_to_string(victim.join("rootfs/marker")).unwrap(),
        "v\n"
    );
    assert!(mount_table().iter().any(|m| m.id == victim_id));
    sh(&format!("umount {}/rootfs", victim.display()));
}

/// H2/M1 (share-root flood and chmod): the guest creates files, a big
/// file and directories at the share root and in a container's directory,
/// and chmods/chowns the root. Safe outcome: all EROFS; writing inside
/// the container's rootfs still works.
#[test]
fn share_structure_is_read_only() {
    if !root_with_tools("share_structure_is_read_only", &[]) {
        return;
    }
    let f = fixture("flood");
    f.share.bind_container(&f.bundle, "c0").unwrap();
    let shared = f.share.shared();
    for dir in [shared.clone(), shared.join("c0"), shared.join("c0/mounts")] {
        let e = fs::write(dir.join("flood"), vec![0u8; 1 << 20]);
        assert_eq!(errno(e), libc::EROFS, "{}", dir.display());
        assert_eq!(errno(fs::create_dir(dir.join("d"))), libc::EROFS);
        let e = fs::set_permissions(&dir, fs::Permissions::from_mode(0o777));
        assert_eq!(errno(e), libc::EROFS);
        let e = std::os::unix::fs::chown(&dir, Some(65534), None);
        assert_eq!(errno(e), libc::EROFS);
    }
    assert_eq!(
        errno(fs::remove_dir(shared.join("c0/mounts/1"))),
        libc::EROFS
    );
    fs::write(shared.join("c0/rootfs/ok"), "guest data").unwrap();
    assert_eq!(
        fs::read_to_string(f.share.rw().join("c0/rootfs/ok")).unwrap(),
        "guest data"
    );
    let mode = fs::metadata(&shared).unwrap().mode() & 0o7777;
    assert_eq!(mode, 0o700);
}

/// M1 (setuid planting, CVE-2021-41091 class): guest root makes a
/// setuid-root file and a device node inside the container's rootfs
/// through the share. Safe outcome: every host path to them (rw and
/// shared) is on a nosuid,nodev mount, so neither the setuid bit nor the
/// device is usable there.
#[test]
fn share_binds_are_nosuid_nodev() {
    if !root_with_tools("share_binds_are_nosuid_nodev", &[]) {
        return;
    }
    let f = fixture("suid");
    f.share.bind_container(&f.bundle, "c0").unwrap();
    let shared = f.share.shared();
    let suid = shared.join("c0/rootfs/suid");
    fs::copy("/bin/true", &suid).unwrap();
    fs::set_permissions(&suid, fs::Permissions::from_mode(0o4755)).unwrap();
    assert_eq!(fs::metadata(&suid).unwrap().mode() & 0o4000, 0o4000);
    let null = shared.join("c0/rootfs/null");
    let c = std::ffi::CString::new(null.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a NUL-terminated path; makes the char device 1:3.
    let rc = unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR | 0o666, libc::makedev(1, 3)) };
    assert_eq!(rc, 0);
    for view in [f.share.rw(), shared.clone()] {
        for m in [
            "rootfs", "mounts/1", "mounts/2", "mounts/3", "mounts/4", "mounts/5",
        ] {
            let p = view.join("c0").join(m);
            let fl = statvfs_flags(&p);
            assert_ne!(fl & libc::ST_NOSUID, 0, "{} not nosuid", p.display());
            assert_ne!(fl & libc::ST_NODEV, 0, "{} not nodev", p.display());
        }
        let e = fs::File::open(view.join("c0/rootfs/null")).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EACCES), "nodev");
    }
    // Submounts of a volume are nosuid,nodev too.
    let fl = statvfs_flags(&shared.join("c0/mounts/2/sub"));
    assert_ne!(fl & libc::ST_NOSUID, 0);
    assert_ne!(fl & libc::ST_NODEV, 0);
}

/// M3 (read-only volumes): writing through a `ro` volume fails on both
/// views; a submount below it stays writable (runc's non-recursive `ro`)
/// but not below an `rro` volume; the source's `noexec` is kept on ro and
/// rw volumes.
#[test]
fn read_only_volumes() {
    if !root_with_tools("read_only_volumes", &[]) {
        return;
    }
    let f = fixture("ro");
    f.share.bind_container(&f.bundle, "c0").unwrap();
    for view in [f.share.rw(), f.share.shared()] {
        let m = view.join("c0/mounts");
        assert_eq!(errno(fs::write(m.join("2/x"), "x")), libc::EROFS);
        fs::write(m.join("2/sub/x"), "x").unwrap();
        assert_eq!(errno(fs::write(m.join("3/x"), "x")), libc::EROFS);
        assert_eq!(errno(fs::write(m.join("3/sub/x"), "x")), libc::EROFS);
        fs::write(m.join("1/x"), "x").unwrap();
        fs::write(m.join("4/x"), "x").unwrap();
        let ro = statvfs_flags(&m.join("2"));
        assert_ne!(ro & libc::ST_RDONLY, 0);
        assert_ne!(ro & libc::ST_NOEXEC, 0, "the source's noexec is kept");
        let rw = statvfs_flags(&m.join("4"));
        assert_eq!(rw & libc::ST_RDONLY, 0);
        assert_ne!(rw & libc::ST_NOEXEC, 0, "the source's noexec is kept");
    }
    // The file volume.
    assert_eq!(
        fs::read_to_string(f.share.shared().join("c0/mounts/5")).unwrap(),
        "x"
    );
}

/// L6: hostile container ids are refused by name before any path is
/// built: `rw/../../etc` would be `<base>/etc`, whose marker survives.
#[test]
fn hostile_ids_are_refused() {
    if !root_with_tools("hostile_ids_are_refused", &[]) {
        return;
    }
    let f = fixture("ids");
    let etc = f.base.join("etc");
    fs::create_dir(&etc).unwrap();
    fs::write(etc.join("marker"), "m").unwrap();
    for id in ["../../etc", "a/b", "", "..", ".", "../etc"] {
        let bad = |r: Result<(), ContainerError>| matches!(r, Err(ContainerError::InvalidId(_)));
        assert!(bad(f.share.bind_container(&f.bundle, id)), "{id:?}");
        assert!(bad(f.share.remove_container(id)), "{id:?}");
        assert!(
            matches!(
                ContainerPaths::new(&f.base, id),
                Err(ContainerError::InvalidId(_))
            ),
            "{id:?}"
        );
    }
    assert_eq!(fs::read_to_string(etc.join("marker")).unwrap(), "m");
    assert_eq!(fs::read_dir(f.share.rw()).unwrap().count(), 0);
}

/// M1: under umask 000 every directory of the share is 0700; removing a
/// container or tearing down leaves no mount and no directory.
#[test]
fn share_dirs_are_private_whatever_the_umask() {
    if !root_with_tools("share_dirs_are_private_whatever_the_umask", &[]) {
        return;
    }
    // SAFETY: umask has no preconditions (it is process-wide: other tests
    // only get wider modes for their scratch files meanwhile).
    let old = unsafe { libc::umask(0) };
    let f = fixture("modes");
    f.share.bind_container(&f.bundle, "c0").unwrap();
    let sb = f.base.join("sb");
    let nested = f.base.join("new/parent/dir");
    mounts::ensure_private_dir(&nested).unwrap();
    // SAFETY: as above.
    unsafe { libc::umask(old) };
    for d in [
        sb.clone(),
        f.share.rw(),
        f.share.shared(),
        f.share.rw().join("c0"),
        f.share.rw().join("c0/mounts"),
        nested.clone(),
        f.base.join("new/parent"),
        f.base.join("new"),
    ] {
        let mode = fs::metadata(&d).unwrap().mode() & 0o7777;
        assert_eq!(mode, 0o700, "{}", d.display());
    }
    f.share.remove_container("c0").unwrap();
    assert!(!f.share.rw().join("c0").exists());
    f.share.teardown().unwrap();
    assert!(mounts::mounts_under(&sb).is_empty());
    assert!(!f.share.rw().exists() && !f.share.shared().exists());
    assert_eq!(
        fs::metadata(f.share.rw()).unwrap_err().kind(),
        ErrorKind::NotFound
    );
}
