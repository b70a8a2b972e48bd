//! Host memory of a process, from `/proc/<pid>/smaps_rollup`.

use serde::Serialize;

/// Resident and proportional set size of one process, in KiB.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct Memory {
    pub rss_kib: u64,
    pub pss_kib: u64,
}

impl std::ops::Add for Memory {
    type Output = Memory;
    fn add(self, o: Memory) -> Memory {
        Memory {
            rss_kib: self.rss_kib + o.rss_kib,
            pss_kib: self.pss_kib + o.pss_kib,
        }
    }
}

/// Reads the RSS and PSS of `pid`; `None` if the process is gone.
pub fn of_pid(pid: u32) -> Option<Memory> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    Some(parse_rollup(&text))
}

fn parse_rollup(text: &str) -> Memory {
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    Memory {
        rss_kib: field("Rss:"),
        pss_kib: field("Pss:"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rollup() {
        let text = "00400000-7fff [rollup]\nRss:               12345 kB\nPss:                6789 kB\nPss_Anon:  1 kB\n";
        assert_eq!(
            parse_rollup(text),
            Memory {
                rss_kib: 12345,
                pss_kib: 6789
            }
        );
    }

    #[test]
    fn own_process_has_memory() {
        let m = of_pid(std::process::id()).unwrap();
        assert!(m.rss_kib > 0 && m.pss_kib > 0);
    }
}
