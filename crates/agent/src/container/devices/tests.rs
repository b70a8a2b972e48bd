//! The compiler, checked by running its programs in a small interpreter
//! of the instructions it emits against a direct reading of the rules.

use super::*;
use DeviceType::{All, Block, Char};

/// A device access request, as the kernel passes it.
#[derive(Debug, Clone, Copy)]
struct Request {
    dev: u16,
    access: u8,
    major: u32,
    minor: u32,
}

fn req(dev: u16, access: u8, major: u32, minor: u32) -> Request {
    Request {
        dev,
        access,
        major,
        minor,
    }
}

/// Runs `prog` on the context of `r`; r0 at exit. Panics on anything the
/// compiler should not emit or on a jump out of the program.
fn run(prog: &[Insn], r: Request) -> u64 {
    let ctx = [
        (u32::from(r.access) << 16) | u32::from(r.dev),
        r.major,
        r.minor,
    ];
    let mut reg = [0u64; 11];
    let mut pc = 0usize;
    let mut steps = 0;
    loop {
        steps += 1;
        assert!(steps <= prog.len(), "no loops in a device program");
        let i = prog[pc];
        let (dst, src) = (usize::from(i.dst()), usize::from(i.src()));
        let imm32 = u32::from_ne_bytes(i.imm.to_ne_bytes());
        let lo = |v: u64| v & 0xffff_ffff;
        let mut next = pc + 1;
        let jump = |cond: bool| {
            if cond {
                pc + 1 + usize::try_from(i.off).unwrap()
            } else {
                pc + 1
            }
        };
        match i.code {
            op::LDX_W => {
                assert_eq!(src, 1, "loads are from the context");
                let off = usize::try_from(i.off).unwrap();
                assert_eq!(off % 4, 0);
                reg[dst] = u64::from(ctx[off / 4]);
            }
            op::AND32_K => reg[dst] = lo(reg[dst]) & u64::from(imm32),
            op::AND32_X => reg[dst] = lo(reg[dst]) & lo(reg[src]),
            op::RSH32_K => reg[dst] = lo(reg[dst]) >> imm32,
            op::MOV32_K => reg[dst] = u64::from(imm32),
            op::MOV32_X => reg[dst] = lo(reg[src]),
            op::JNE32_K => next = jump(lo(reg[dst]) != u64::from(imm32)),
            op::JEQ32_K => next = jump(lo(reg[dst]) == u64::from(imm32)),
            op::JSET32_K => next = jump(lo(reg[dst]) & u64::from(imm32) != 0),
            op::EXIT => return reg[0],
            other => panic!("unexpected opcode {other:#x} at {pc}"),
        }
        pc = next;
        assert!(pc < prog.len(), "fell off the program");
    }
}

/// The rules read directly: default deny, the last match wins.
fn reference(rules: &[Rule], r: Request) -> bool {
    let matches = |rule: &Rule| {
        let kind = match rule.kind {
            All => true,
            Char => r.dev == DEV_CHAR,
            Block => r.dev == DEV_BLOCK,
        };
        let access = if rule.allow {
            r.access & !rule.access == 0
        } else {
            r.access & rule.access != 0
        };
        kind && access
            && rule.major.is_none_or(|m| m == r.major)
            && rule.minor.is_none_or(|m| m == r.minor)
    };
    rules
        .iter()
        .rev()
        .find(|rule| matches(rule))
        .is_some_and(|rule| rule.allow)
}

fn allowed(rules: &[Rule], r: Request) -> bool {
    match run(&compile(rules), r) {
        0 => false,
        1 => true,
        v => panic!("r0 = {v}"),
    }
}

fn deny(kind: DeviceType, major: Option<u32>, minor: Option<u32>, access: u8) -> Rule {
    Rule {
        allow: false,
        ..Rule::allow(kind, major, minor, access)
    }
}

const R: u8 = ACC_READ;
const W: u8 = ACC_WRITE;
const M: u8 = ACC_MKNOD;
const RW: u8 = ACC_READ | ACC_WRITE;

/// containerd's default: deny everything, then runc's defaults.
fn containerd_default() -> Vec<Rule> {
    enforced_rules(&[deny(All, None, None, ACC_ALL)], &[])
}

/// Every combination of a few types, numbers and accesses.
fn requests() -> Vec<Request> {
    let mut all = Vec::new();
    for dev in [DEV_BLOCK, DEV_CHAR] {
        for (major, minor) in [(1, 3), (1, 1), (4, 64), (5, 2), (136, 7), (10, 200), (8, 0)] {
            for access in 1..=ACC_ALL {
                all.push(req(dev, access, major, minor));
            }
        }
    }
    all
}

#[test]
fn the_default_rule_set() {
    let rules = containerd_default();
    let prog = compile(&rules);
    // 6 to load the request, 4 per mknod or pts rule, 5 per device, 2 to deny.
    assert_eq!(prog.len(), 60, "{prog:?}");
    assert_eq!(
        compile(&enforced_rules(&[], &[])),
        prog,
        "a leading deny is the default"
    );
    let c = |access, major, minor| allowed(&rules, req(DEV_CHAR, access, major, minor));
    assert!(c(RW, 1, 3), "/dev/null");
    assert!(c(R, 1, 9) && c(RW, 5, 2) && c(RW, 136, 0) && c(W, 10, 200));
    assert!(c(M, 4, 64), "mknod of any character device");
    assert!(allowed(&rules, req(DEV_BLOCK, M, 8, 0)), "and block device");
    assert!(!c(W, 4, 64) && !c(R, 4, 64), "ttyS0");
    assert!(!c(R, 1, 1), "/dev/mem");
    assert!(
        !allowed(&rules, req(DEV_BLOCK, R, 1, 3)),
        "block 1:3 is not null"
    );
    assert!(!c(M | R, 4, 64), "mknod is granted alone");
    for r in requests() {
        assert_eq!(allowed(&rules, r), reference(&rules, r), "{r:?}");
    }
}

#[test]
fn default_deny_and_the_last_match_wins() {
    assert!(!allowed(&[], req(DEV_CHAR, R, 1, 3)));
    assert_eq!(compile(&[]).len(), 8);
    let rules = [
        Rule::allow(Char, Some(4), None, ACC_ALL),
        deny(Char, Some(4), Some(64), W),
    ];
    assert!(
        allowed(&rules, req(DEV_CHAR, R, 4, 64)),
        "read is not denied"
    );
    assert!(
        !allowed(&rules, req(DEV_CHAR, RW, 4, 64)),
        "any denied bit denies"
    );
    assert!(
        allowed(&rules, req(DEV_CHAR, RW, 4, 65)),
        "the wildcard minor"
    );
    // The other order: the allow comes last and wins.
    let swapped = [rules[1], rules[0]];
    assert!(allowed(&swapped, req(DEV_CHAR, RW, 4, 64)));
    for rules in [&rules[..], &swapped[..]] {
        for r in requests() {
            assert_eq!(allowed(rules, r), reference(rules, r), "{rules:?} {r:?}");
        }
    }
}

#[test]
fn wildcards_and_access_subsets() {
    let rules = [
        Rule::allow(All, Some(1), None, R),
        Rule::allow(Block, None, Some(0), RW),
        deny(Char, None, Some(0), M),
    ];
    assert!(
        allowed(&rules, req(DEV_CHAR, R, 1, 9)),
        "any type, any minor"
    );
    assert!(allowed(&rules, req(DEV_BLOCK, R, 1, 9)));
    assert!(
        !allowed(&rules, req(DEV_CHAR, RW, 1, 9)),
        "rw is not within r"
    );
    assert!(allowed(&rules, req(DEV_BLOCK, RW, 8, 0)), "any major");
    assert!(!allowed(&rules, req(DEV_CHAR, RW, 8, 0)), "block only");
    assert!(!allowed(&rules, req(DEV_BLOCK, M, 8, 0)));
    // Two allows do not add up within one request (see the module doc).
    let split = [
        Rule::allow(Char, Some(1), Some(3), R),
        Rule::allow(Char, Some(1), Some(3), W),
    ];
    assert!(!allowed(&split, req(DEV_CHAR, RW, 1, 3)));
    assert!(allowed(&split, req(DEV_CHAR, W, 1, 3)));
    // Numbers above i32::MAX compare as 32 bits.
    let big = [Rule::allow(Char, Some(u32::MAX), Some(0x8000_0000), R)];
    assert!(allowed(&big, req(DEV_CHAR, R, u32::MAX, 0x8000_0000)));
    assert!(!allowed(&big, req(DEV_CHAR, R, u32::MAX, 0)));
    for rules in [&rules[..], &split[..], &big[..]] {
        for r in requests() {
            assert_eq!(allowed(rules, r), reference(rules, r), "{rules:?} {r:?}");
        }
    }
}

#[test]
fn a_privileged_container_reaches_every_device() {
    let rules = enforced_rules(&[Rule::allow(All, None, None, ACC_ALL)], &[]);
    for r in requests() {
        assert!(allowed(&rules, r), "{r:?}");
    }
    // A total rule ends the program; the rules before it are not emitted.
    let rules = [
        Rule::allow(Char, Some(1), Some(3), ACC_ALL),
        deny(All, None, None, ACC_ALL),
    ];
    assert_eq!(compile(&rules).len(), 8);
    for r in requests() {
        assert!(!allowed(&rules, r), "{r:?}");
    }
}

#[test]
fn device_nodes_are_allowed_before_the_defaults() {
    let rules = enforced_rules(
        &[deny(All, None, None, ACC_ALL)],
        &[Rule::allow(Char, Some(4), Some(64), ACC_ALL)],
    );
    assert!(allowed(&rules, req(DEV_CHAR, RW, 4, 64)));
    assert!(!allowed(&rules, req(DEV_CHAR, RW, 4, 65)));
}

#[test]
fn instruction_encoding() {
    // ldxw r4, [r1 + 4]: the major.
    let prog = compile(&[]);
    assert_eq!(
        prog[4],
        Insn {
            code: 0x61,
            regs: 0x14,
            off: 4,
            imm: 0
        }
    );
    // The rule's jumps land on the next rule's first instruction.
    let prog = compile(&[Rule::allow(Char, Some(1), Some(3), R)]);
    assert_eq!(prog.len(), 6 + 6 + 2);
    for (i, insn) in prog.iter().enumerate().take(10).skip(6) {
        assert_eq!(i + 1 + usize::try_from(insn.off).unwrap(), 12, "{insn:?}");
    }
    assert_eq!(
        prog[10],
        Insn {
            code: op::MOV32_K,
            regs: 0,
            off: 0,
            imm: 1
        }
    );
}
