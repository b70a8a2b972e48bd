//! Signal names and numbers as `runc kill` accepts them: `KILL`, `SIGKILL`,
//! `kill` and `9` all mean the same.

use super::ContainerError;

/// The signals a name is accepted for (Linux x86-64 numbers).
const SIGNALS: &[(&str, i32)] = &[
    ("HUP", 1),
    ("INT", 2),
    ("QUIT", 3),
    ("ILL", 4),
    ("TRAP", 5),
    ("ABRT", 6),
    ("IOT", 6),
    ("BUS", 7),
    ("FPE", 8),
    ("KILL", 9),
    ("USR1", 10),
    ("SEGV", 11),
    ("USR2", 12),
    ("PIPE", 13),
    ("ALRM", 14),
    ("TERM", 15),
    ("STKFLT", 16),
    ("CHLD", 17),
    ("CONT", 18),
    ("STOP", 19),
    ("TSTP", 20),
    ("TTIN", 21),
    ("TTOU", 22),
    ("URG", 23),
    ("XCPU", 24),
    ("XFSZ", 25),
    ("VTALRM", 26),
    ("PROF", 27),
    ("WINCH", 28),
    ("IO", 29),
    ("POLL", 29),
    ("PWR", 30),
    ("SYS", 31),
];

/// Highest real-time signal number on Linux.
const SIGRTMAX: i32 = 64;

/// Parses a signal given as a name (any case, with or without `SIG`), a
/// real-time `RTMIN+n`/`RTMAX-n`, or a number from 0 to 64 (0 checks that
/// the container's process lives, as `runc kill <id> 0`).
pub fn parse_signal(text: &str) -> Result<i32, ContainerError> {
    let unknown = || ContainerError::UnknownSignal(text.to_string());
    let trimmed = text.trim();
    if let Ok(n) = trimmed.parse::<i32>() {
        return if (0..=SIGRTMAX).contains(&n) {
            Ok(n)
        } else {
            Err(unknown())
        };
    }
    let upper = trimmed.to_ascii_uppercase();
    let name = upper.strip_prefix("SIG").unwrap_or(&upper);
    if let Some(&(_, n)) = SIGNALS.iter().find(|(s, _)| *s == name) {
        return Ok(n);
    }
    let rt = |base: i32, rest: &str, sign: i32| -> Option<i32> {
        let off: i32 = if rest.is_empty() {
            0
        } else {
            rest.parse().ok()?
        };
        let n = base + sign * off;
        (34..=SIGRTMAX).contains(&n).then_some(n)
    };
    let parsed = if let Some(rest) = name.strip_prefix("RTMIN") {
        rest.strip_prefix('+')
            .map_or_else(|| rest.is_empty().then_some(34), |r| rt(34, r, 1))
    } else if let Some(rest) = name.strip_prefix("RTMAX") {
        rest.strip_prefix('-').map_or_else(
            || rest.is_empty().then_some(SIGRTMAX),
            |r| rt(SIGRTMAX, r, -1),
        )
    } else {
        None
    };
    parsed.ok_or_else(unknown)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_with_and_without_prefix_and_numbers() {
        for s in ["KILL", "SIGKILL", "kill", "sigkill", "9"] {
            assert_eq!(parse_signal(s).unwrap(), 9, "{s}");
        }
        assert_eq!(parse_signal("TERM").unwrap(), 15);
        assert_eq!(parse_signal("SIGUSR1").unwrap(), 10);
        assert_eq!(parse_signal("WINCH").unwrap(), 28);
        assert_eq!(parse_signal("RTMIN").unwrap(), 34);
        assert_eq!(parse_signal("SIGRTMIN+2").unwrap(), 36);
        assert_eq!(parse_signal("RTMAX-1").unwrap(), 63);
        assert_eq!(parse_signal("64").unwrap(), 64);
        assert_eq!(parse_signal("0").unwrap(), 0, "a liveness probe");
    }

    #[test]
    fn rejects_unknown() {
        for s in [
            "FOO", "SIGFOO", "SIG0", "65", "-9", "", "RTMIN+40", "RTMAXX",
        ] {
            let err = parse_signal(s).unwrap_err().to_string();
            assert!(err.starts_with("unknown signal"), "{s}: {err}");
        }
        assert_eq!(
            parse_signal("FOO").unwrap_err().to_string(),
            "unknown signal FOO"
        );
    }
}
