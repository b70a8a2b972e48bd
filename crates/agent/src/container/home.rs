//! `HOME` for a container process, as runc sets it: when the process's
//! environment has no `HOME` (or an empty one), the home directory of its
//! uid in the container's `/etc/passwd`, or `/` when there is none.
//!
//! Pure functions over the file's text: the child reads the file (after
//! the switch to the container's root, before giving up privileges).

/// The home directory of `uid` in a passwd file's text.
#[must_use]
pub fn passwd_home(passwd: &str, uid: u32) -> Option<&str> {
    passwd.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        match fields.as_slice() {
            [_, _, id, _, _, home, ..] if id.parse::<u32>().ok() == Some(uid) => Some(*home),
            _ => None,
        }
    })
}

/// `env` with `HOME` set from `passwd` (the file's text, if readable)
/// when it is missing or empty; other entries are kept in order.
#[must_use]
pub fn with_home(env: &[String], passwd: Option<&str>, uid: u32) -> Vec<String> {
    let set = env
        .iter()
        .any(|e| e.strip_prefix("HOME=").is_some_and(|v| !v.is_empty()));
    if set {
        return env.to_vec();
    }
    let home = passwd
        .and_then(|p| passwd_home(p, uid))
        .filter(|h| !h.is_empty())
        .unwrap_or("/");
    let mut out: Vec<String> = env
        .iter()
        .filter(|e| e.as_str() != "HOME=")
        .cloned()
        .collect();
    out.push(format!("HOME={home}"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
                          # comment\n\
                          broken line\n\
                          app:x:1000:1000:An App:/home/app:/bin/sh\n";

    fn env(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn finds_the_uid_home() {
        assert_eq!(passwd_home(PASSWD, 0), Some("/root"));
        assert_eq!(passwd_home(PASSWD, 1000), Some("/home/app"));
        assert_eq!(passwd_home(PASSWD, 5), None);
    }

    #[test]
    fn sets_home_only_when_missing_or_empty() {
        assert_eq!(
            with_home(&env(&["PATH=/bin"]), Some(PASSWD), 1000),
            env(&["PATH=/bin", "HOME=/home/app"])
        );
        assert_eq!(
            with_home(&env(&["HOME=", "A=1"]), Some(PASSWD), 0),
            env(&["A=1", "HOME=/root"])
        );
        assert_eq!(
            with_home(&env(&["HOME=/x"]), Some(PASSWD), 0),
            env(&["HOME=/x"])
        );
        // Unknown uid, or no passwd file: "/", as runc.
        assert_eq!(with_home(&[], Some(PASSWD), 7), env(&["HOME=/"]));
        assert_eq!(with_home(&[], None, 0), env(&["HOME=/"]));
    }
}
