//! One allowed system call and the argument check that pins it, and the
//! compilation of a list of them into a seccompiler rule map.

use std::collections::BTreeMap;

use seccompiler::{SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompRule};

use super::SeccompError;

/// The flags glibc's `pthread_create` passes to `clone` (Rust's
/// `std::thread::spawn`): CLONE_VM | CLONE_FS | CLONE_FILES |
/// CLONE_SIGHAND | CLONE_THREAD | CLONE_SYSVSEM | CLONE_SETTLS |
/// CLONE_PARENT_SETTID | CLONE_CHILD_CLEARTID. Nothing else may clone:
/// no CLONE_NEW*, no fork.
pub const THREAD_CLONE_FLAGS: u64 = 0x003d_0f00;

/// The argument check of one rule.
#[derive(Debug, Clone, Copy)]
pub enum Arg {
    /// No check.
    Any,
    /// Argument `index` equals one of `values`.
    OneOf(u8, &'static [u64]),
    /// `ioctl`: the request is one of these, or (with `kvm`) any KVMIO
    /// (type 0xAE) request.
    Ioctl { kvm: bool, requests: &'static [u64] },
    /// `openat`: the flags (argument 2) have no bit outside this mask.
    OpenFlags(u64),
    /// Argument `index` has none of the bits of the mask set.
    NoBits(u8, u64),
    /// `tgkill`/`tgkill`-like: argument 0 is this process's pid.
    OwnPid,
}

/// One allowed system call.
#[derive(Debug, Clone, Copy)]
pub struct Rule {
    pub name: &'static str,
    pub nr: libc::c_long,
    pub arg: Arg,
}

/// An unconditional rule.
pub const fn allow(name: &'static str, nr: libc::c_long) -> Rule {
    Rule {
        name,
        nr,
        arg: Arg::Any,
    }
}

/// A rule with an argument check.
pub const fn with(name: &'static str, nr: libc::c_long, arg: Arg) -> Rule {
    Rule { name, nr, arg }
}

fn eq(index: u8, len: SeccompCmpArgLen, value: u64) -> Result<SeccompCondition, SeccompError> {
    Ok(SeccompCondition::new(index, len, SeccompCmpOp::Eq, value)?)
}

/// The seccompiler rules of one [`Rule`] (None: unconditional).
fn conditions(rule: &Rule, pid: u32) -> Result<Option<Vec<SeccompRule>>, SeccompError> {
    use SeccompCmpArgLen::{Dword, Qword};
    let single = |c: SeccompCondition| -> Result<Vec<SeccompRule>, SeccompError> {
        Ok(vec![SeccompRule::new(vec![c])?])
    };
    let rules = match rule.arg {
        Arg::Any => return Ok(None),
        Arg::OneOf(index, values) => values
            .iter()
            .map(|v| Ok(SeccompRule::new(vec![eq(index, Qword, *v)?])?))
            .collect::<Result<_, SeccompError>>()?,
        Arg::Ioctl { kvm, requests } => {
            // The request is an unsigned int: compare the low 32 bits.
            let mut rules = requests
                .iter()
                .map(|r| Ok(SeccompRule::new(vec![eq(1, Dword, *r)?])?))
                .collect::<Result<Vec<_>, SeccompError>>()?;
            if kvm {
                rules.push(SeccompRule::new(vec![SeccompCondition::new(
                    1,
                    Dword,
                    SeccompCmpOp::MaskedEq(0xff00),
                    0xae00,
                )?])?);
            }
            rules
        }
        Arg::OpenFlags(mask) => single(SeccompCondition::new(
            2,
            Dword,
            SeccompCmpOp::MaskedEq(!mask & 0xffff_ffff),
            0,
        )?)?,
        Arg::NoBits(index, mask) => single(SeccompCondition::new(
            index,
            Qword,
            SeccompCmpOp::MaskedEq(mask),
            0,
        )?)?,
        Arg::OwnPid => single(eq(0, Dword, u64::from(pid))?)?,
    };
    Ok(Some(rules))
}

/// Merges `lists` into one rule map: a call is allowed when any of its
/// rules matches (an unconditional rule wins).
pub fn compile(
    lists: &[&[Rule]],
    pid: u32,
) -> Result<BTreeMap<i64, Vec<SeccompRule>>, SeccompError> {
    let mut merged: BTreeMap<i64, Option<Vec<SeccompRule>>> = BTreeMap::new();
    for rule in lists.iter().flat_map(|l| l.iter()) {
        let new = conditions(rule, pid)?;
        let slot = merged.entry(rule.nr).or_insert_with(|| Some(Vec::new()));
        match (slot.as_mut(), new) {
            (Some(existing), Some(mut more)) => existing.append(&mut more),
            (_, None) => *slot = None,
            (None, Some(_)) => {}
        }
    }
    Ok(merged
        .into_iter()
        .map(|(nr, rules)| (nr, rules.unwrap_or_default()))
        .collect())
}
