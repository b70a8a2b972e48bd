//! `exec`: a new process in a running container, in the foreground (this
//! process relays its stdio and exits with its status) or detached under
//! a small exec monitor of its own.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use crate::agent::AgentClient;
use crate::pod::ContainerHandle;

use super::launch::Reporter;
use super::monitor::{connect_agent, console_io, write_pid_file};
use super::ops::load;
use super::paths::ContainerPaths;
use super::relay::start_relay;
use super::state::Status;
use super::ContainerError;

/// What the command line says about the process, beside `--process`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecOverrides {
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: Option<String>,
    /// `uid[:gid]`; without a gid the process keeps its own (runc).
    pub user: Option<String>,
    pub tty: bool,
    /// `--cap`: added to every capability set, as runc adds them.
    pub caps: Vec<String>,
    /// `--additional-gids`: added to the process's supplementary groups.
    pub additional_gids: Vec<u32>,
    /// `--no-new-privs`.
    pub no_new_privs: bool,
}

/// The OCI `process` object to run: the `--process` file as given, or the
/// container's own process with the command line's args, env, cwd, user
/// and terminal applied.
pub fn build_process(
    process_file: Option<&Path>,
    container_process: Option<&Value>,
    o: &ExecOverrides,
) -> Result<Value, ContainerError> {
    let bad = |reason: String| ContainerError::BadConfig {
        path: process_file.map_or_else(|| "exec".into(), Path::to_path_buf),
        reason,
    };
    let mut p = if let Some(file) = process_file {
        let bytes = std::fs::read(file).map_err(|source| ContainerError::ReadConfig {
            path: file.to_path_buf(),
            source,
        })?;
        serde_json::from_slice::<Value>(&bytes).map_err(|source| ContainerError::ParseConfig {
            path: file.to_path_buf(),
            source,
        })?
    } else {
        if o.args.is_empty() {
            return Err(bad(
                "no command given (args after the id, or --process)".into()
            ));
        }
        let mut base = container_process
            .cloned()
            .unwrap_or_else(|| json!({"cwd": "/"}));
        base["args"] = json!(o.args);
        base
    };
    if !p.is_object() {
        return Err(bad("the process is not a JSON object".into()));
    }
    if o.tty {
        p["terminal"] = json!(true);
    } else if process_file.is_none() {
        p["terminal"] = json!(false);
    }
    if let Some(cwd) = &o.cwd {
        p["cwd"] = json!(cwd);
    }
    if !o.env.is_empty() {
        let mut env: Vec<Value> = p
            .get("env")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        env.extend(o.env.iter().map(|e| json!(e)));
        p["env"] = Value::Array(env);
    }
    if let Some(user) = &o.user {
        // runc: uid[:gid] replaces those two; the rest of the user (its
        // additional gids, umask) and, without `:gid`, the gid stay.
        let (uid, gid) = match user.split_once(':') {
            Some((u, g)) => (u, Some(g)),
            None => (user.as_str(), None),
        };
        let bad_user = || bad(format!("bad --user {user:?}: want uid[:gid]"));
        let uid: u32 = uid.parse().map_err(|_| bad_user())?;
        let gid: Option<u32> = gid.map(|g| g.parse().map_err(|_| bad_user())).transpose()?;
        if !p.get("user").is_some_and(Value::is_object) {
            p["user"] = json!({"uid": 0, "gid": 0});
        }
        p["user"]["uid"] = json!(uid);
        if let Some(gid) = gid {
            p["user"]["gid"] = json!(gid);
        }
    }
    if !o.additional_gids.is_empty() {
        if !p.get("user").is_some_and(Value::is_object) {
            p["user"] = json!({"uid": 0, "gid": 0});
        }
        let mut gids: Vec<Value> = p["user"]
            .get("additionalGids")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        gids.extend(o.additional_gids.iter().map(|g| json!(g)));
        p["user"]["additionalGids"] = Value::Array(gids);
    }
    if !o.caps.is_empty() {
        // runc 1.1's getProcess: bounding, effective and permitted; ambient
        // only when the process has an inheritable set (exec --cap sets no
        // inheritable bits, CVE-2022-29162).
        if !p.get("capabilities").is_some_and(Value::is_object) {
            p["capabilities"] = json!({});
        }
        let has_inheritable = p["capabilities"]
            .get("inheritable")
            .is_some_and(|v| !v.is_null());
        let mut sets = vec!["bounding", "effective", "permitted"];
        if has_inheritable {
            sets.push("ambient");
        }
        for set in sets {
            let mut caps: Vec<Value> = p["capabilities"]
                .get(set)
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            caps.extend(o.caps.iter().map(|c| json!(c)));
            p["capabilities"][set] = Value::Array(caps);
        }
    }
    if o.no_new_privs {
        p["noNewPrivileges"] = json!(true);
    }
    if p.get("cwd").is_none() {
        p["cwd"] = json!("/");
    }
    match p.get("args").and_then(Value::as_array) {
        Some(a) if !a.is_empty() => Ok(p),
        _ => Err(bad("the process has no args".into())),
    }
}

/// The container's own `process`, from its bundle.
pub fn container_process(paths: &ContainerPaths) -> Result<Option<Value>, ContainerError> {
    let state = load(paths)?;
    let status = state.effective_status();
    if !matches!(status, Status::Running | Status::Created) {
        return Err(ContainerError::WrongStatus {
            id: state.id,
            status: status.as_str(),
            reason: "exec needs a created or running container",
        });
    }
    let path = state.bundle.join("config.json");
    let spec: Value = std::fs::read(&path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(Value::Null);
    Ok(spec.get("process").cloned())
}

/// A fresh exec id.
pub fn new_exec_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .subsec_nanos();
    format!("exec-{}-{nanos:x}", std::process::id())
}

/// Starts the process and relays its stdio until it exits; returns its
/// exit status. `reporter` hears once the process started.
pub fn run_exec(
    paths: &ContainerPaths,
    exec_id: &str,
    process: &Value,
    console_socket: Option<&Path>,
    pid_file: Option<&Path>,
    reporter: &mut Reporter,
) -> Result<i32, ContainerError> {
    let started = (|| {
        let agent: Arc<dyn AgentClient> = Arc::new(connect_agent(paths)?);
        let json =
            serde_json::to_vec(process).map_err(|e| ContainerError::Monitor(e.to_string()))?;
        let io = console_io(console_socket)?;
        ContainerHandle::attach(Arc::clone(&agent), paths.id()).exec(exec_id, &json)?;
        if let Some(pid_file) = pid_file {
            write_pid_file(pid_file, std::process::id())?;
        }
        Ok::<_, ContainerError>((agent, io))
    })();
    let (agent, io) = match started {
        Ok(s) => s,
        Err(e) => {
            reporter.fail(&e.to_string());
            return Err(e);
        }
    };
    reporter.ok();
    let terminal = process.get("terminal").and_then(Value::as_bool) == Some(true);
    let relay = start_relay(Arc::clone(&agent), paths.id(), exec_id, io, terminal);
    let exit = ContainerHandle::attach(agent, paths.id()).wait(exec_id)?;
    relay.finish(Duration::from_secs(5));
    Ok(exit.status)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn args_replace_the_container_process() {
        let base = json!({"args": ["sh"], "env": ["A=1"], "cwd": "/home", "terminal": true});
        let o = ExecOverrides {
            args: vec!["ls".into(), "-l".into()],
            env: vec!["B=2".into()],
            user: Some("1000:100".into()),
            ..Default::default()
        };
        let p = build_process(None, Some(&base), &o).unwrap();
        assert_eq!(p["args"], json!(["ls", "-l"]));
        assert_eq!(p["env"], json!(["A=1", "B=2"]));
        assert_eq!(p["cwd"], "/home");
        assert_eq!(p["terminal"], false);
        assert_eq!(p["user"], json!({"uid": 1000, "gid": 100}));
    }

    /// runc's getProcess: a uid alone keeps the gid, gids and caps are
    /// appended.
    #[test]
    fn user_gids_and_caps_as_runc() {
        let base = json!({"args": ["sh"], "user": {"uid": 0, "gid": 5, "additionalGids": [7]},
            "capabilities": {"bounding": ["CAP_KILL"], "effective": ["CAP_KILL"]}});
        let o = ExecOverrides {
            args: vec!["id".into()],
            user: Some("1000".into()),
            caps: vec!["CAP_SYS_ADMIN".into()],
            additional_gids: vec![10],
            no_new_privs: true,
            ..Default::default()
        };
        let p = build_process(None, Some(&base), &o).unwrap();
        assert_eq!(
            p["user"],
            json!({"uid": 1000, "gid": 5, "additionalGids": [7, 10]})
        );
        assert_eq!(
            p["capabilities"]["bounding"],
            json!(["CAP_KILL", "CAP_SYS_ADMIN"])
        );
        assert_eq!(p["capabilities"].get("inheritable"), None);
        assert_eq!(p["capabilities"].get("ambient"), None, "no inheritable set");
        assert_eq!(p["noNewPrivileges"], true);
    }

    #[test]
    fn process_file_and_errors() {
        let path = std::env::temp_dir().join(format!("nacre-exec-{}.json", std::process::id()));
        std::fs::write(&path, r#"{"args": ["true"], "terminal": true}"#).unwrap();
        let p = build_process(Some(&path), None, &ExecOverrides::default()).unwrap();
        assert_eq!(p["terminal"], true);
        assert_eq!(p["cwd"], "/");
        std::fs::write(&path, "{").unwrap();
        let err = build_process(Some(&path), None, &ExecOverrides::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains(&*path.to_string_lossy()), "{err}");
        std::fs::remove_file(&path).unwrap();
        assert!(build_process(None, None, &ExecOverrides::default()).is_err());
        let o = ExecOverrides {
            args: vec!["x".into()],
            user: Some("bob".into()),
            ..Default::default()
        };
        assert!(build_process(None, None, &o).is_err());
    }
}
