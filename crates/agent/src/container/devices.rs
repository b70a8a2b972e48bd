//! Device control: `linux.resources.devices` as a cgroup v2 device
//! program (`BPF_PROG_TYPE_CGROUP_DEVICE`), as runc does on cgroup v2.
//!
//! The rules a container gets ([`enforced_rules`]) are the spec's
//! `linux.resources.devices`, then an allow-`rwm` rule per `linux.devices`
//! node, then runc's default allowed devices ([`default_rules`]). They are
//! judged like this: everything is denied unless a rule matches, and the
//! last matching rule wins. An allow rule matches a request of its device
//! type (any for `a`), major and minor (absent: any) asking only for
//! access the rule grants; a deny rule matches one asking for any access
//! it names. Two allow rules for the same device do not add up (`r` then
//! `w` does not grant `rw` in one open): the filter errs towards denying.
//!
//! [`compile`] is pure (and unit-tested with an interpreter);
//! [`DeviceFilter`] loads the program and attaches it to a cgroup through
//! the `bpf` system call ([`bpf`]). This module neither creates cgroups nor
//! decides which ones get a program: the engine does.

mod bpf;

use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};

pub use bpf::DeviceError;

/// `BPF_DEVCG_ACC_MKNOD`: the access bit of `mknod`.
pub const ACC_MKNOD: u8 = 1;
/// `BPF_DEVCG_ACC_READ`.
pub const ACC_READ: u8 = 2;
/// `BPF_DEVCG_ACC_WRITE`.
pub const ACC_WRITE: u8 = 4;
/// `rwm`.
pub const ACC_ALL: u8 = ACC_MKNOD | ACC_READ | ACC_WRITE;

/// `BPF_DEVCG_DEV_BLOCK`, the device type in the program's context.
pub const DEV_BLOCK: u16 = 1;
/// `BPF_DEVCG_DEV_CHAR`.
pub const DEV_CHAR: u16 = 2;

/// The devices a rule covers, by type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceType {
    /// `a`: every device.
    All,
    /// `c`: character devices.
    Char,
    /// `b`: block devices.
    Block,
}

/// One device rule, validated (see [`super::spec`] for the parsing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    /// Allow (true) or deny.
    pub allow: bool,
    /// The device type.
    pub kind: DeviceType,
    /// The major number; `None` for any.
    pub major: Option<u32>,
    /// The minor number; `None` for any.
    pub minor: Option<u32>,
    /// `ACC_*` bits.
    pub access: u8,
}

impl Rule {
    /// An allow rule.
    #[must_use]
    pub const fn allow(
        kind: DeviceType,
        major: Option<u32>,
        minor: Option<u32>,
        access: u8,
    ) -> Rule {
        Rule {
            allow: true,
            kind,
            major,
            minor,
            access,
        }
    }

    /// Whether the rule covers every device and access (`a *:* rwm`).
    #[must_use]
    pub fn is_total(&self) -> bool {
        self.kind == DeviceType::All
            && self.major.is_none()
            && self.minor.is_none()
            && self.access == ACC_ALL
    }
}

/// runc's default allowed devices (specconv `AllowedDevices`), appended to
/// every container's rules.
#[must_use]
pub fn default_rules() -> Vec<Rule> {
    use DeviceType::{Block, Char};
    let node = |major, minor| Rule::allow(Char, Some(major), Some(minor), ACC_ALL);
    vec![
        // mknod of any device (opening it is another matter).
        Rule::allow(Char, None, None, ACC_MKNOD),
        Rule::allow(Block, None, None, ACC_MKNOD),
        node(1, 3),                                  // /dev/null
        node(1, 8),                                  // /dev/random
        node(1, 7),                                  // /dev/full
        node(5, 0),                                  // /dev/tty
        node(1, 5),                                  // /dev/zero
        node(1, 9),                                  // /dev/urandom
        Rule::allow(Char, Some(136), None, ACC_ALL), // /dev/pts/*
        node(5, 2),                                  // /dev/ptmx
        node(10, 200),                               // /dev/net/tun
    ]
}

/// The rules enforced for a container: `resources` (the spec's
/// `linux.resources.devices`), then `nodes` (one allow rule per
/// `linux.devices` entry), then [`default_rules`].
#[must_use]
pub fn enforced_rules(resources: &[Rule], nodes: &[Rule]) -> Vec<Rule> {
    let mut rules = Vec::with_capacity(resources.len() + nodes.len() + 11);
    rules.extend_from_slice(resources);
    rules.extend_from_slice(nodes);
    rules.extend(default_rules());
    rules
}

/// One eBPF instruction, laid out as the kernel's `struct bpf_insn`
/// (8 bytes: opcode, two 4-bit registers, a 16-bit offset, a 32-bit
/// immediate).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Insn {
    /// The opcode: class | operation | source.
    pub code: u8,
    /// `dst_reg:4, src_reg:4` as C bit fields lay them out.
    pub regs: u8,
    /// The jump offset (instructions after the next one) or memory offset.
    pub off: i16,
    /// The immediate.
    pub imm: i32,
}

/// Opcodes used ([`Insn::code`]), from `linux/bpf.h` and `bpf_common.h`.
pub mod op {
    /// `BPF_LDX | BPF_MEM | BPF_W`: `dst = *(u32 *)(src + off)`.
    pub const LDX_W: u8 = 0x61;
    /// `BPF_ALU | BPF_AND | BPF_K`: `dst &= imm` (32 bits).
    pub const AND32_K: u8 = 0x54;
    /// `BPF_ALU | BPF_AND | BPF_X`: `dst &= src` (32 bits).
    pub const AND32_X: u8 = 0x5c;
    /// `BPF_ALU | BPF_RSH | BPF_K`: `dst >>= imm` (32 bits).
    pub const RSH32_K: u8 = 0x74;
    /// `BPF_ALU | BPF_MOV | BPF_K`: `dst = imm` (32 bits).
    pub const MOV32_K: u8 = 0xb4;
    /// `BPF_ALU | BPF_MOV | BPF_X`: `dst = src` (32 bits).
    pub const MOV32_X: u8 = 0xbc;
    /// `BPF_JMP32 | BPF_JNE | BPF_K`: jump if `dst != imm` (32 bits).
    pub const JNE32_K: u8 = 0x56;
    /// `BPF_JMP32 | BPF_JEQ | BPF_K`: jump if `dst == imm` (32 bits).
    pub const JEQ32_K: u8 = 0x16;
    /// `BPF_JMP32 | BPF_JSET | BPF_K`: jump if `dst & imm != 0` (32 bits).
    pub const JSET32_K: u8 = 0x46;
    /// `BPF_JMP | BPF_EXIT`: return `r0`.
    pub const EXIT: u8 = 0x95;
}

/// The instruction class of the conditional jumps (`BPF_JMP32`).
const BPF_JMP32: u8 = 0x06;

/// Registers: r0 the verdict, r1 the context, r2..r5 the request.
const R0: u8 = 0;
const R1: u8 = 1;
const R_TYPE: u8 = 2;
const R_ACCESS: u8 = 3;
const R_MAJOR: u8 = 4;
const R_MINOR: u8 = 5;

impl Insn {
    const fn new(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
        #[cfg(target_endian = "little")]
        let regs = dst | (src << 4);
        #[cfg(target_endian = "big")]
        let regs = (dst << 4) | src;
        Insn {
            code,
            regs,
            off,
            imm,
        }
    }

    /// The destination register.
    #[must_use]
    pub const fn dst(&self) -> u8 {
        #[cfg(target_endian = "little")]
        return self.regs & 0xf;
        #[cfg(target_endian = "big")]
        return self.regs >> 4;
    }

    /// The source register.
    #[must_use]
    pub const fn src(&self) -> u8 {
        #[cfg(target_endian = "little")]
        return self.regs >> 4;
        #[cfg(target_endian = "big")]
        return self.regs & 0xf;
    }
}

/// A 32-bit immediate of a device number (the kernel compares 32 bits).
const fn imm(v: u32) -> i32 {
    i32::from_ne_bytes(v.to_ne_bytes())
}

/// A conditional jump of a rule's block, to the next block (patched).
fn jump(code: u8, dst: u8, imm: i32) -> Insn {
    Insn::new(code, dst, 0, 0, imm)
}

/// The instructions of one rule: jumps past the block when the request
/// does not match, then the verdict.
fn rule_block(rule: &Rule) -> Vec<Insn> {
    let mut block = Vec::with_capacity(7);
    match rule.kind {
        DeviceType::All => {}
        DeviceType::Char => block.push(jump(op::JNE32_K, R_TYPE, i32::from(DEV_CHAR))),
        DeviceType::Block => block.push(jump(op::JNE32_K, R_TYPE, i32::from(DEV_BLOCK))),
    }
    if rule.allow {
        // Skip unless the request asks only for granted access (as runc,
        // an `rwm` rule checks nothing: the kernel has no other bits).
        if rule.access != ACC_ALL {
            let refused = !u16::from(rule.access);
            block.push(jump(op::JSET32_K, R_ACCESS, i32::from(refused)));
        }
    } else {
        // Skip unless the request asks for some denied access.
        block.push(Insn::new(op::MOV32_X, R1, R_ACCESS, 0, 0));
        block.push(Insn::new(op::AND32_K, R1, 0, 0, i32::from(rule.access)));
        block.push(jump(op::JEQ32_K, R1, 0));
    }
    if let Some(major) = rule.major {
        block.push(jump(op::JNE32_K, R_MAJOR, imm(major)));
    }
    if let Some(minor) = rule.minor {
        block.push(jump(op::JNE32_K, R_MINOR, imm(minor)));
    }
    block.push(Insn::new(op::MOV32_K, R0, 0, 0, i32::from(rule.allow)));
    block.push(Insn::new(op::EXIT, 0, 0, 0, 0));
    let len = block.len();
    for (i, insn) in block.iter_mut().enumerate() {
        if insn.code & 0x07 == BPF_JMP32 {
            // A jump to the first instruction after the block.
            insn.off = i16::try_from(len - i - 1).unwrap_or(i16::MAX);
        }
    }
    block
}

/// Compiles `rules` (in spec order) to a device program: default deny,
/// the last matching rule wins, so the blocks are emitted last rule first
/// and the first match in the program decides.
///
/// Leading deny rules are dropped (the default denies anyway), and a rule
/// covering every device and access ends the program (the rules before it
/// cannot decide anything).
#[must_use]
pub fn compile(rules: &[Rule]) -> Vec<Insn> {
    let first_allow = rules.iter().position(|r| r.allow).unwrap_or(rules.len());
    let mut prog = vec![
        // r2 = type: the low 16 bits of access_type.
        Insn::new(op::LDX_W, R_TYPE, R1, 0, 0),
        Insn::new(op::AND32_K, R_TYPE, 0, 0, 0xffff),
        // r3 = access: the high 16 bits of access_type.
        Insn::new(op::LDX_W, R_ACCESS, R1, 0, 0),
        Insn::new(op::RSH32_K, R_ACCESS, 0, 0, 16),
        // r4 = major, r5 = minor.
        Insn::new(op::LDX_W, R_MAJOR, R1, 4, 0),
        Insn::new(op::LDX_W, R_MINOR, R1, 8, 0),
    ];
    for rule in rules[first_allow..].iter().rev() {
        if rule.is_total() {
            prog.push(Insn::new(op::MOV32_K, R0, 0, 0, i32::from(rule.allow)));
            prog.push(Insn::new(op::EXIT, 0, 0, 0, 0));
            return prog;
        }
        prog.extend(rule_block(rule));
    }
    prog.push(Insn::new(op::MOV32_K, R0, 0, 0, 0));
    prog.push(Insn::new(op::EXIT, 0, 0, 0, 0));
    prog
}

/// A device program attached to a container's cgroup. It owns the
/// program's descriptor (the attachment outlives it, but replacing the
/// program names it), and remembers the container's `linux.devices`
/// rules so an update can rebuild the whole list.
#[derive(Debug)]
pub struct DeviceFilter {
    prog: Arc<OwnedFd>,
    nodes: Vec<Rule>,
    len: usize,
}

impl DeviceFilter {
    /// Compiles [`enforced_rules`]`(resources, nodes)`, loads the program
    /// and attaches it to the cgroup directory `cgroup` (with
    /// `BPF_F_ALLOW_MULTI`, so programs of parent cgroups still apply).
    pub fn attach(
        cgroup: &Path,
        resources: &[Rule],
        nodes: Vec<Rule>,
    ) -> Result<DeviceFilter, DeviceError> {
        let insns = compile(&enforced_rules(resources, &nodes));
        let prog = load_cached(&insns)?;
        bpf::attach(cgroup, &prog, None)?;
        Ok(DeviceFilter {
            prog,
            nodes,
            len: insns.len(),
        })
    }

    /// Replaces the attached program with one for new `resources` rules
    /// (`UpdateContainer`), atomically (`BPF_F_REPLACE`).
    pub fn replace(&mut self, cgroup: &Path, resources: &[Rule]) -> Result<(), DeviceError> {
        let insns = compile(&enforced_rules(resources, &self.nodes));
        let prog = load_cached(&insns)?;
        bpf::attach(cgroup, &prog, Some(&self.prog))?;
        self.prog = prog;
        self.len = insns.len();
        Ok(())
    }

    /// The number of instructions of the attached program.
    #[must_use]
    pub fn len(&self) -> usize {
        self.len
    }

    /// Never true: a program has at least its verdict.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// Programs loaded so far, by their instructions (most recent last): a
/// program has no state, so containers with the same rules share one and
/// the kernel's verifier runs once per rule set, not per container.
static PROGRAMS: Mutex<Vec<(Vec<Insn>, Arc<OwnedFd>)>> = Mutex::new(Vec::new());

/// The most programs [`PROGRAMS`] keeps (each holds a descriptor).
const PROGRAMS_KEPT: usize = 8;

/// The loaded program of `insns`, from [`PROGRAMS`] or loaded now.
fn load_cached(insns: &[Insn]) -> Result<Arc<OwnedFd>, DeviceError> {
    let mut cache = PROGRAMS.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(i) = cache.iter().position(|(k, _)| k == insns) {
        let entry = cache.remove(i);
        let prog = Arc::clone(&entry.1);
        cache.push(entry);
        return Ok(prog);
    }
    let prog = Arc::new(bpf::load(insns)?);
    if cache.len() >= PROGRAMS_KEPT {
        cache.remove(0);
    }
    cache.push((insns.to_vec(), Arc::clone(&prog)));
    Ok(prog)
}

/// Loads the program of `resources` and `nodes` ahead of any container
/// (the agent does it for the usual deny-all rules before a VM template
/// is snapshotted, so restored VMs skip the verifier).
pub fn preload(resources: &[Rule], nodes: &[Rule]) -> Result<(), DeviceError> {
    load_cached(&compile(&enforced_rules(resources, nodes))).map(drop)
}

/// How many programs are loaded and kept.
pub fn loaded_programs() -> usize {
    PROGRAMS
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .len()
}

#[cfg(test)]
mod tests;
