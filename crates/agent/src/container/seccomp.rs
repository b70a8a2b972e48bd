//! OCI seccomp profiles (`linux.seccomp`) compiled to BPF with the
//! `seccompiler` crate.
//!
//! seccompiler builds filters with one match action and one mismatch
//! action each, while a profile gives every rule its own action. A
//! profile becomes a stack of filters, which the kernel runs all of,
//! keeping the most restrictive result:
//! - a base filter: the default action for syscalls no rule names; every
//!   named syscall is allowed there (its ALLOW rule's argument conditions
//!   kept), so that the filters below decide for it;
//! - one filter per other action (ERRNO(n), KILL, TRAP, LOG...): that
//!   action for the syscalls (and argument conditions) of its rules,
//!   ALLOW otherwise.
//!
//! Unknown syscall names are skipped, as libseccomp does. Only x86_64 is
//! supported; `architectures` is not read.

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};
use serde::Deserialize;

use super::syscalls;

/// `linux.seccomp`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Profile {
    /// The action for syscalls no rule matches.
    pub default_action: String,
    /// errno of a default `SCMP_ACT_ERRNO`.
    pub default_errno_ret: Option<u32>,
    /// The rules.
    #[serde(default)]
    pub syscalls: Vec<Rule>,
}

/// `linux.seccomp.syscalls[]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Rule {
    /// Syscall names.
    #[serde(default)]
    pub names: Vec<String>,
    /// `SCMP_ACT_*`.
    pub action: String,
    /// errno of an `SCMP_ACT_ERRNO` (or the value of `SCMP_ACT_TRACE`).
    pub errno_ret: Option<u32>,
    /// Argument conditions, all of which must hold.
    #[serde(default)]
    pub args: Vec<Arg>,
}

/// `linux.seccomp.syscalls[].args[]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Arg {
    /// Argument index (0..=5).
    pub index: u8,
    /// The value (the mask for `SCMP_CMP_MASKED_EQ`).
    pub value: u64,
    /// The expected value of `SCMP_CMP_MASKED_EQ`.
    #[serde(default)]
    pub value_two: u64,
    /// `SCMP_CMP_*`.
    pub op: String,
}

fn action(name: &str, errno: Option<u32>, default_errno: u32) -> Result<SeccompAction, String> {
    Ok(match name {
        "SCMP_ACT_ALLOW" => SeccompAction::Allow,
        "SCMP_ACT_ERRNO" => SeccompAction::Errno(errno.unwrap_or(default_errno)),
        "SCMP_ACT_KILL" | "SCMP_ACT_KILL_THREAD" => SeccompAction::KillThread,
        "SCMP_ACT_KILL_PROCESS" => SeccompAction::KillProcess,
        "SCMP_ACT_TRAP" => SeccompAction::Trap,
        "SCMP_ACT_LOG" => SeccompAction::Log,
        "SCMP_ACT_TRACE" => SeccompAction::Trace(errno.unwrap_or(0)),
        other => return Err(format!("seccomp action {other} is not supported")),
    })
}

fn condition(arg: &Arg) -> Result<SeccompCondition, String> {
    let (op, value) = match arg.op.as_str() {
        "SCMP_CMP_EQ" => (SeccompCmpOp::Eq, arg.value),
        "SCMP_CMP_NE" => (SeccompCmpOp::Ne, arg.value),
        "SCMP_CMP_LT" => (SeccompCmpOp::Lt, arg.value),
        "SCMP_CMP_LE" => (SeccompCmpOp::Le, arg.value),
        "SCMP_CMP_GT" => (SeccompCmpOp::Gt, arg.value),
        "SCMP_CMP_GE" => (SeccompCmpOp::Ge, arg.value),
        "SCMP_CMP_MASKED_EQ" => (SeccompCmpOp::MaskedEq(arg.value), arg.value_two),
        other => return Err(format!("seccomp comparison {other} is not supported")),
    };
    SeccompCondition::new(arg.index, SeccompCmpArgLen::Qword, op, value)
        .map_err(|e| format!("seccomp argument {}: {e}", arg.index))
}

/// Rules per syscall number; an empty list matches unconditionally.
type Rules = BTreeMap<i64, Vec<SeccompRule>>;

fn add(
    rules: &mut Rules,
    nr: i64,
    conditions: Option<Vec<SeccompCondition>>,
) -> Result<(), String> {
    let rule = |c| SeccompRule::new(c).map_err(|e| e.to_string());
    match (rules.get_mut(&nr), conditions) {
        // Already unconditional: nothing to add.
        (Some(chain), _) if chain.is_empty() => {}
        (Some(chain), Some(c)) => chain.push(rule(c)?),
        (_, None) => {
            rules.insert(nr, Vec::new());
        }
        (None, Some(c)) => {
            rules.insert(nr, vec![rule(c)?]);
        }
    }
    Ok(())
}

/// Compiles a profile (the JSON value of `linux.seccomp`) into the filters
/// to install, in order.
pub fn compile(value: &serde_json::Value) -> Result<Vec<BpfProgram>, String> {
    let profile: Profile =
        serde_json::from_value(value.clone()).map_err(|e| format!("seccomp profile: {e}"))?;
    let default_errno = profile
        .default_errno_ret
        .unwrap_or(u32::try_from(libc::EPERM).unwrap_or(1));
    let default = action(
        &profile.default_action,
        profile.default_errno_ret,
        default_errno,
    )?;

    let mut base: Rules = BTreeMap::new();
    let mut by_action: Vec<(SeccompAction, Rules)> = Vec::new();
    for rule in &profile.syscalls {
        let act = action(&rule.action, rule.errno_ret, default_errno)?;
        let conditions = if rule.args.is_empty() {
            None
        } else {
            Some(
                rule.args
                    .iter()
                    .map(condition)
                    .collect::<Result<Vec<_>, _>>()?,
            )
        };
        for name in &rule.names {
            let Some(nr) = syscalls::number(name) else {
                tracing::debug!("seccomp: unknown syscall {name} skipped");
                continue;
            };
            if act == default {
                continue;
            }
            // The base filter lets every named syscall through to the
            // filters of their actions; ALLOW keeps its conditions.
            let base_conditions = if act == SeccompAction::Allow {
                conditions.clone()
            } else {
                None
            };
            add(&mut base, nr, base_conditions)?;
            if act != SeccompAction::Allow {
                let slot = match by_action.iter().position(|(a, _)| *a == act) {
                    Some(i) => i,
                    None => {
                        by_action.push((act.clone(), BTreeMap::new()));
                        by_action.len() - 1
                    }
                };
                if let Some((_, rules)) = by_action.get_mut(slot) {
                    add(rules, nr, conditions.clone())?;
                }
            }
        }
    }

    let mut filters = Vec::new();
    let build = |rules: Rules, mismatch: SeccompAction, matched: SeccompAction| {
        SeccompFilter::new(rules, mismatch, matched, TargetArch::x86_64)
            .and_then(BpfProgram::try_from)
            .map_err(|e| format!("compiling the seccomp filter: {e}"))
    };
    if default != SeccompAction::Allow {
        filters.push(build(base, default, SeccompAction::Allow)?);
    }
    for (act, rules) in by_action {
        filters.push(build(rules, SeccompAction::Allow, act)?);
    }
    Ok(filters)
}

/// Installs the filters in the calling (single-threaded) process.
///
/// Not `seccompiler::apply_filter`: that always sets no_new_privs, which
/// the spec's `noNewPrivileges: false` must leave off (the caller holds
/// CAP_SYS_ADMIN then, which the kernel requires instead).
pub fn install(filters: &[BpfProgram]) -> Result<(), String> {
    for f in filters {
        let len = u16::try_from(f.len()).map_err(|_| "seccomp filter too long".to_owned())?;
        let prog = libc::sock_fprog {
            len,
            // seccompiler's sock_filter has the kernel's layout
            // (u16 code, u8 jt, u8 jf, u32 k), as libc's does.
            filter: f.as_ptr().cast::<libc::sock_filter>().cast_mut(),
        };
        // SAFETY: `prog` points at `f`, which outlives the call; the kernel
        // copies the program.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_seccomp,
                libc::SECCOMP_SET_MODE_FILTER,
                0 as libc::c_ulong,
                &prog as *const libc::sock_fprog,
            )
        };
        if ret != 0 {
            return Err(format!(
                "installing the seccomp filter: {}",
                std::io::Error::last_os_error()
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn compiles_an_allowlist() {
        let profile = json!({
            "defaultAction": "SCMP_ACT_ERRNO",
            "architectures": ["SCMP_ARCH_X86_64"],
            "syscalls": [
                {"names": ["read", "write", "exit_group", "no_such_syscall"], "action": "SCMP_ACT_ALLOW"},
                {"names": ["personality"], "action": "SCMP_ACT_ALLOW",
                 "args": [{"index": 0, "value": 0, "op": "SCMP_CMP_EQ"}]},
                {"names": ["mkdir"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13}
            ]
        });
        let filters = compile(&profile).unwrap();
        assert_eq!(filters.len(), 2, "base + ERRNO(13)");
        assert!(filters.iter().all(|f| !f.is_empty()));
    }

    #[test]
    fn default_allow_needs_no_base_filter() {
        let profile = json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_ERRNO"}]
        });
        assert_eq!(compile(&profile).unwrap().len(), 1);
        let none = json!({"defaultAction": "SCMP_ACT_ALLOW"});
        assert!(compile(&none).unwrap().is_empty());
    }

    #[test]
    fn rejects_what_it_cannot_do() {
        let bad = json!({"defaultAction": "SCMP_ACT_NOTIFY"});
        assert!(compile(&bad).unwrap_err().contains("SCMP_ACT_NOTIFY"));
        let bad = json!({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [
            {"names": ["read"], "action": "SCMP_ACT_ALLOW",
             "args": [{"index": 0, "value": 1, "op": "SCMP_CMP_FUZZY"}]}]});
        assert!(compile(&bad).unwrap_err().contains("SCMP_CMP_FUZZY"));
        assert!(compile(&json!({"syscalls": 1})).is_err());
    }
}
