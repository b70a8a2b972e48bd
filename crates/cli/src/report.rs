//! How a failed command is reported: its error chain as one line, each
//! cause once, and runc's exit code.

/// The error and its causes joined with `: `, skipping a cause whose text
/// the line already holds (thiserror messages often embed their source,
/// which anyhow's `{:#}` would then print twice).
pub fn error_text(e: &anyhow::Error) -> String {
    let mut text = e.to_string();
    for cause in e.chain().skip(1) {
        let cause = cause.to_string();
        if !cause.is_empty() && !text.contains(&cause) {
            text.push_str(": ");
            text.push_str(&cause);
        }
    }
    text
}

/// The exit code of a command that failed: runc exits 255 when `exec`
/// cannot run the process (unknown container or binary, unwritable pid
/// file), 1 otherwise.
pub fn failure_code(is_exec: bool) -> i32 {
    if is_exec {
        255
    } else {
        1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An error whose message embeds its source, as thiserror's
    /// `#[error("...: {source}")]` with `#[source]` does.
    #[derive(Debug)]
    struct Embeds {
        path: &'static str,
        source: std::io::Error,
    }

    impl std::fmt::Display for Embeds {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "writing {}: {}", self.path, self.source)
        }
    }

    impl std::error::Error for Embeds {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.source)
        }
    }

    #[test]
    fn each_cause_once() {
        let io = std::io::Error::from_raw_os_error(libc::ENOSPC);
        let e = anyhow::Error::new(Embeds {
            path: "/x",
            source: io,
        })
        .context("creating container c");
        assert_eq!(
            error_text(&e),
            "creating container c: writing /x: No space left on device (os error 28)"
        );
        let plain = anyhow::anyhow!("boom").context("outer");
        assert_eq!(error_text(&plain), "outer: boom");
    }
}
