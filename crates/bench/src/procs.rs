//! Finding host processes by executable name and command line, and their
//! children, from `/proc`.

/// The executable name (last path part of `argv[0]`) and arguments of a
/// NUL-separated `/proc/<pid>/cmdline`.
pub fn parse_cmdline(raw: &[u8]) -> Vec<String> {
    raw.split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}

/// The parent pid in a `/proc/<pid>/stat` line (`pid (comm) state ppid ...`;
/// the command name may hold spaces and parentheses).
pub fn parse_ppid(stat: &str) -> Option<u32> {
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(1)?.parse().ok()
}

fn pids() -> Vec<u32> {
    std::fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_string_lossy().parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

fn exe_name(args: &[String]) -> Option<&str> {
    args.first().and_then(|a| a.rsplit('/').next())
}

/// Pids of the processes named `exe` with an argument containing `needle`.
pub fn pids_of(exe: &str, needle: &str) -> Vec<u32> {
    pids()
        .into_iter()
        .filter(|pid| {
            let raw = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let args = parse_cmdline(&raw);
            exe_name(&args) == Some(exe) && args.iter().any(|a| a.contains(needle))
        })
        .collect()
}

/// Pids of the processes named `exe` whose parent is `parent`.
pub fn children_named(parent: u32, exe: &str) -> Vec<u32> {
    pids()
        .into_iter()
        .filter(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let raw = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            parse_ppid(&stat) == Some(parent) && exe_name(&parse_cmdline(&raw)) == Some(exe)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cmdline_and_stat() {
        let args = parse_cmdline(b"/usr/bin/nacre-vmm\0--kernel\0/k\0");
        assert_eq!(args, ["/usr/bin/nacre-vmm", "--kernel", "/k"]);
        assert_eq!(exe_name(&args), Some("nacre-vmm"));
        assert_eq!(parse_ppid("42 (a (b) c) S 7 42 42 0"), Some(7));
        assert_eq!(parse_ppid("garbage"), None);
    }

    #[test]
    fn finds_own_process() {
        let me = std::process::id();
        let raw = std::fs::read("/proc/self/cmdline").unwrap();
        let args = parse_cmdline(&raw);
        let exe = exe_name(&args).unwrap().to_string();
        assert!(pids_of(&exe, &args[0]).contains(&me));
    }
}
