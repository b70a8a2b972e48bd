//! Field formatting that stops after a number of bytes, so a guest-sized
//! value (fuse-backend-rs logs a whole request body in `Debug` form) is
//! never held in memory in full.

use std::fmt;

use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::format::{DefaultFields, Writer};
use tracing_subscriber::fmt::FormatFields;

/// [`DefaultFields`] with at most `max` bytes of output per event.
#[derive(Debug)]
pub struct BoundedFields {
    inner: DefaultFields,
    max: usize,
}

impl BoundedFields {
    /// Formats at most `max` bytes of fields.
    pub fn new(max: usize) -> Self {
        Self {
            inner: DefaultFields::new(),
            max,
        }
    }
}

/// Passes on the first `left` bytes and counts the rest.
struct Bounded<'a, 'w> {
    out: &'a mut Writer<'w>,
    left: usize,
    cut: usize,
}

impl fmt::Write for Bounded<'_, '_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        if self.left >= s.len() {
            self.left -= s.len();
            return self.out.write_str(s);
        }
        let mut end = self.left;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        self.left = 0;
        self.cut += s.len() - end;
        self.out.write_str(&s[..end])
    }
}

impl<'w> FormatFields<'w> for BoundedFields {
    fn format_fields<R: RecordFields>(&self, mut writer: Writer<'w>, fields: R) -> fmt::Result {
        let mut bounded = Bounded {
            out: &mut writer,
            left: self.max,
            cut: 0,
        };
        self.inner
            .format_fields(Writer::new(&mut bounded), fields)?;
        let cut = bounded.cut;
        if cut > 0 {
            write!(writer, " [{cut} more bytes cut]")?;
        }
        Ok(())
    }
}
