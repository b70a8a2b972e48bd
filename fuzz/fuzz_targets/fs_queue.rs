//! virtio-fs: the device's FUSE server (the `NoDeviceNodes` filter over
//! `PassthroughFs`) serving the hiprio and request queues over a guest
//! memory the fuzzer fills, on a scratch share next to a directory it
//! must never reach.
//!
//! Inputs are structure-aware: a FUSE_INIT, then requests with a valid
//! header (opcode, node, optional corrupted length), a body and names
//! picked from a list that includes `..`, symlinks out of the share and
//! absolute paths, laid out as request + reply descriptor chains. The
//! hiprio queue takes raw fuzzer descriptors.
//!
//! Invariants: the directory next to the share is unchanged and nothing
//! of it (file content or entry names) reaches guest memory; no device
//! node appears in the share; the device writes guest memory only inside
//! device-writable buffers and the used rings; used lengths fit their
//! chains.

#![no_main]

use std::cell::RefCell;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use nacre_fuzz::guest::{self, QueueSpec, Ring, DATA};
use nacre_fuzz::oracle::{self, Before};
use nacre_vmm::devices::virtio::fs::fuzzing::Server;
use virtio_queue::desc::split::Descriptor;
use vm_memory::{Bytes, GuestAddress};

const SECRET: &[u8] = b"NACRE-OUTSIDE-SECRET-CONTENT";
const SECRET_NAME: &str = "nacre-outside-entry-name";
const OPCODES: [u32; 48] = [
    1, 2, 3, 4, 5, 6, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 20, 21, 22, 23, 24, 25, 26, 27, 28,
    29, 30, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 45, 46, 47, 48, 49, 50,
];
const SLOT: u64 = 0x1000;
const REPLY_AT: u64 = 0x800;

#[derive(Arbitrary, Debug)]
enum Opcode {
    Known(u8),
    Raw(u32),
}

#[derive(Arbitrary, Debug)]
enum Name {
    Dotdot,
    Dot,
    File,
    Dir,
    LinkOut,
    AbsOut,
    New,
    Escape,
    Outside,
    Raw(String),
}

impl Name {
    fn bytes(&self, root: &Path) -> Vec<u8> {
        let s = match self {
            Name::Dotdot => "..".into(),
            Name::Dot => ".".into(),
            Name::File => "a".into(),
            Name::Dir => "d".into(),
            Name::LinkOut => "link_out".into(),
            Name::AbsOut => "abs_out".into(),
            Name::New => "new".into(),
            Name::Escape => "d/../../outside".into(),
            Name::Outside => root.join("outside").display().to_string(),
            Name::Raw(s) => s.clone(),
        };
        let mut b = s.into_bytes();
        b.push(0);
        b
    }
}

#[derive(Arbitrary, Debug)]
struct Req {
    opcode: Opcode,
    nodeid: u8,
    body: Vec<u8>,
    name: Option<Name>,
    name2: Option<Name>,
    reply: u16,
    split: u8,
    len_delta: Option<i8>,
}

#[derive(Arbitrary, Debug)]
struct Input {
    reqs: Vec<Req>,
    hiprio: QueueSpec,
    data: Vec<u8>,
}

struct Scratch {
    root: PathBuf,
    share: PathBuf,
    outside: Vec<String>,
}

/// What must not change outside the share: every entry under `outside`
/// and the scratch root's own listing.
fn fingerprint(root: &Path) -> Vec<String> {
    fn walk(dir: &Path, out: &mut Vec<String>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir).unwrap().flatten().collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let m = std::fs::symlink_metadata(e.path()).unwrap();
            out.push(format!(
                "{} {:o} {} {} {}",
                e.path().display(),
                m.mode(),
                m.len(),
                m.mtime_nsec(),
                m.nlink()
            ));
            if m.is_dir() {
                walk(&e.path(), out);
            }
        }
    }
    let mut out = Vec::new();
    let m = std::fs::symlink_metadata(root.join("outside")).unwrap();
    out.push(format!("outside {:o} {}", m.mode(), m.mtime_nsec()));
    walk(&root.join("outside"), &mut out);
    let mut top: Vec<String> = std::fs::read_dir(root)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    top.sort();
    out.push(top.join(","));
    out
}

fn scratch() -> &'static Scratch {
    static SCRATCH: OnceLock<Scratch> = OnceLock::new();
    SCRATCH.get_or_init(|| {
        let root = nacre_fuzz::scratch::dir("fs");
        let outside = root.join("outside");
        std::fs::create_dir_all(outside.join(SECRET_NAME)).unwrap();
        std::fs::write(outside.join("secret"), SECRET).unwrap();
        let share = root.join("share");
        std::fs::create_dir_all(&share).unwrap();
        let outside = fingerprint(&root);
        Scratch {
            root,
            share,
            outside,
        }
    })
}

/// A fresh share: a file, a directory, symlinks out of it.
fn reset_share(s: &Scratch) {
    if std::fs::remove_dir_all(&s.share).is_err() && s.share.exists() {
        panic!("cannot clear the scratch share {}", s.share.display());
    }
    std::fs::create_dir_all(s.share.join("d")).unwrap();
    std::fs::write(s.share.join("a"), b"hello").unwrap();
    std::fs::write(s.share.join("d/b"), b"inner").unwrap();
    std::os::unix::fs::symlink("../outside", s.share.join("link_out")).unwrap();
    std::os::unix::fs::symlink(s.root.join("outside/secret"), s.share.join("abs_out")).unwrap();
}

fn header(len: u32, opcode: u32, unique: u64, nodeid: u64) -> Vec<u8> {
    let mut h = Vec::with_capacity(40);
    h.extend_from_slice(&len.to_le_bytes());
    h.extend_from_slice(&opcode.to_le_bytes());
    h.extend_from_slice(&unique.to_le_bytes());
    h.extend_from_slice(&nodeid.to_le_bytes());
    h.extend_from_slice(&[0u8; 16]); // uid, gid, pid, total_extlen, padding
    h
}

fn init_request() -> Vec<u8> {
    let mut body = Vec::new();
    for v in [7u32, 31, 0x2_0000, 0] {
        body.extend_from_slice(&v.to_le_bytes());
    }
    let mut r = header(40 + body.len() as u32, 26, 1, 0);
    r.extend_from_slice(&body);
    r
}

fn request(req: &Req, unique: u64, root: &Path) -> Vec<u8> {
    let opcode = match req.opcode {
        Opcode::Known(i) => OPCODES[usize::from(i) % OPCODES.len()],
        Opcode::Raw(o) => o,
    };
    let mut body: Vec<u8> = req.body.iter().copied().take(0x400).collect();
    if let Some(n) = &req.name {
        body.extend(n.bytes(root));
    }
    if let Some(n) = &req.name2 {
        body.extend(n.bytes(root));
    }
    let len = (40 + body.len() as u32).wrapping_add_signed(i32::from(req.len_delta.unwrap_or(0)));
    let mut r = header(len, opcode, unique, u64::from(req.nodeid));
    r.extend_from_slice(&body);
    r.truncate(REPLY_AT as usize);
    r
}

/// Lays out the requests as chains in queue 1; returns its ring and the
/// number of chains.
fn lay_out_requests(
    mem: &guest::Mem,
    reqs: &[Vec<u8>],
    splits: &[u8],
    replies: &[u16],
) -> (Ring, u16) {
    let ring = Ring::of(1, guest::MAX_QUEUE);
    let mut next_desc = 0u16;
    let mut chains = 0u16;
    for (i, r) in reqs.iter().enumerate() {
        if next_desc + 3 > guest::MAX_QUEUE {
            break;
        }
        let slot = DATA + SLOT * i as u64;
        mem.write_slice(r, GuestAddress(slot)).unwrap();
        let head = next_desc;
        let split = usize::from(splits[i]).min(r.len());
        let mut parts = vec![
            (slot, split as u32),
            (slot + split as u64, (r.len() - split) as u32),
        ];
        parts.retain(|&(_, l)| l > 0);
        let reply = u32::from(replies[i]).min((SLOT - REPLY_AT) as u32);
        let mut descs: Vec<(u64, u32, u16)> = parts.into_iter().map(|(a, l)| (a, l, 0)).collect();
        if reply > 0 {
            descs.push((slot + REPLY_AT, reply, 2));
        }
        let n = descs.len();
        for (k, (addr, len, flags)) in descs.into_iter().enumerate() {
            let flags = if k + 1 < n { flags | 1 } else { flags };
            let d = Descriptor::new(addr, len, flags, next_desc + 1);
            mem.write_obj(d, GuestAddress(ring.desc + 16 * u64::from(next_desc)))
                .unwrap();
            next_desc += 1;
        }
        mem.write_obj(head, GuestAddress(ring.avail + 4 + 2 * u64::from(chains)))
            .unwrap();
        chains += 1;
    }
    mem.write_obj(chains, GuestAddress(ring.avail + 2)).unwrap();
    (ring, chains)
}

/// One entry of the share as [`check_share`] sees it: path, inode, mode,
/// owner, size, link count, modification and change times, and a regular
/// file's content (times are kept at the kernel's coarse clock: a
/// same-size rewrite within one tick leaves them as they were).
type Entry = (PathBuf, [u64; 5], [i64; 4], Vec<u8>);

fn entry(path: &Path, m: &std::fs::Metadata) -> Entry {
    // Larger than any file of a fresh share: its size tells already.
    let content = if m.file_type().is_file() && m.len() <= 4096 {
        std::fs::read(path).unwrap()
    } else {
        Vec::new()
    };
    (
        path.to_path_buf(),
        [
            m.ino(),
            u64::from(m.mode()),
            (u64::from(m.uid()) << 32) | u64::from(m.gid()),
            m.len(),
            m.nlink(),
        ],
        [m.mtime(), m.mtime_nsec(), m.ctime(), m.ctime_nsec()],
        content,
    )
}

/// Panics if the share holds a device node; returns its state (the share
/// directory itself included), to tell whether an input changed it.
fn check_share(dir: &Path) -> Vec<Entry> {
    fn walk(dir: &Path, out: &mut Vec<Entry>) {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let m = std::fs::symlink_metadata(e.path()).unwrap();
            let t = m.file_type();
            assert!(
                !t.is_block_device() && !t.is_char_device(),
                "a device node in the share: {}",
                e.path().display()
            );
            out.push(entry(&e.path(), &m));
            if t.is_dir() {
                walk(&e.path(), out);
            }
        }
    }
    let mut out = vec![entry(dir, &std::fs::symlink_metadata(dir).unwrap())];
    walk(dir, &mut out);
    out.sort();
    out
}

thread_local! {
    /// The share's state right after its last reset, while no input has
    /// changed it since: the next input finds it as a reset would leave
    /// it (save access times), and skips rebuilding it (a third of an
    /// execution). None: it must be rebuilt.
    static PRISTINE: RefCell<Option<Vec<Entry>>> = const { RefCell::new(None) };
}

fuzz_target!(|input: Input| {
    let s = scratch();
    let pristine = match PRISTINE.with(|p| p.borrow_mut().take()) {
        Some(state) => state,
        None => {
            reset_share(s);
            check_share(&s.share)
        }
    };
    let mem = guest::memory(&input.data);
    let (mut hiprio, hring) = guest::lay_out(&mem, 0, &input.hiprio);
    let mut reqs = vec![init_request()];
    let mut splits = vec![0u8];
    let mut replies = vec![0x200u16];
    for (i, r) in input.reqs.iter().take(8).enumerate() {
        reqs.push(request(r, i as u64 + 2, &s.root));
        splits.push(r.split);
        replies.push(r.reply);
    }
    let (rring, chains) = lay_out_requests(&mem, &reqs, &splits, &replies);
    let mut request_q = guest::queue(&mem, rring, false);
    let before = Before::take(&mem, &[hring, rring]);
    let planted = nacre_fuzz::contains(before.data(), SECRET)
        || nacre_fuzz::contains(before.data(), SECRET_NAME.as_bytes());

    let mut server = Server::new(&s.share).unwrap();
    server.serve_queue(&mut hiprio, &mem);
    server.serve_queue(&mut request_q, &mem);
    drop(server);

    before.check_writes(&mem);
    oracle::check_used(&mem, &before, 0, &hring, input.hiprio.avail_idx());
    oracle::check_used(&mem, &before, 1, &rring, chains);
    assert_eq!(
        fingerprint(&s.root),
        s.outside,
        "the directory next to the share changed"
    );
    if !planted {
        let all = guest::region(&mem, DATA, guest::DATA_LEN);
        assert!(
            !nacre_fuzz::contains(all, SECRET),
            "content from outside the share reached the guest"
        );
        assert!(
            !nacre_fuzz::contains(all, SECRET_NAME.as_bytes()),
            "a name from outside the share reached the guest"
        );
    }
    if check_share(&s.share) == pristine {
        PRISTINE.with(|p| *p.borrow_mut() = Some(pristine));
    }
});
