//! The fields of a text log line, written so that a logfmt reader (Loki's `logfmt`, Vector,
//! `hl`) splits them where they are: `key=value`, a value with a space, a quote, an `=` or a
//! control character in it quoted and escaped, whichever way the call site recorded it.
//!
//! The subscriber's default writes text fields (`route = name`) quoted and displayed ones
//! (`error = %e`) as they are, so `error=Connection refused (os error 111) failures_in_a_row=1`
//! reads as a field `error=Connection` and stray words. JSON lines need none of this: every
//! value is a JSON string or number there.

use std::fmt::{self, Write as _};

use tracing::field::{Field, Visit};
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::FormatFields;

/// The text format's fields: see the module's doc.
pub(crate) struct TextFields;

impl<'w> FormatFields<'w> for TextFields {
    fn format_fields<R: RecordFields>(&self, writer: Writer<'w>, fields: R) -> fmt::Result {
        let mut visitor = Visitor {
            writer,
            result: Ok(()),
            first: true,
        };
        fields.record(&mut visitor);
        visitor.result
    }
}

struct Visitor<'w> {
    writer: Writer<'w>,
    result: fmt::Result,
    first: bool,
}

impl Visitor<'_> {
    /// Writes `name=` and `value` as [`Value`] takes it; the message as it is, but for
    /// characters that would rewrite the terminal.
    fn write(&mut self, name: &str, value: fmt::Arguments<'_>) {
        self.write_as(name, |writer, space| match name {
            "message" => write!(writer, "{space}{}", Escaped(&value.to_string(), false)),
            _ => write!(writer, "{space}{name}={}", Value(&value.to_string())),
        });
    }

    /// Writes a field by `how`, given the space that comes before it. Numbers and text are
    /// written straight (every access line has several: no string made for each).
    fn write_as(&mut self, name: &str, how: impl FnOnce(&mut Writer<'_>, &str) -> fmt::Result) {
        // The `log` crate's metadata, which the formatter shows in the line's own place.
        if self.result.is_err() || name.starts_with("log.") {
            return;
        }
        let space = if std::mem::take(&mut self.first) {
            ""
        } else {
            " "
        };
        self.result = how(&mut self.writer, space);
    }
}

impl Visit for Visitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        // Text stays quoted, as the default writes it (`route="chat"`), so a field's form
        // does not change with what it holds.
        match field.name() {
            "message" => self.write("message", format_args!("{value}")),
            name => self.write_as(name, |w, space| {
                write!(w, "{space}{name}=\"{}\"", Escaped(value, true))
            }),
        }
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        let name = field.name();
        self.write_as(name, |w, space| write!(w, "{space}{name}={value}"));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        let name = field.name();
        self.write_as(name, |w, space| write!(w, "{space}{name}={value}"));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        let name = field.name();
        self.write_as(name, |w, space| write!(w, "{space}{name}={value}"));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.write(field.name(), format_args!("{value:?}"))
    }
}

/// A value as logfmt takes it: as it is if it is one plain word (`10.1.2.3:51344`, `502`),
/// else [`Escaped`] in quotes.
struct Value<'a>(&'a str);

impl fmt::Display for Value<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = self.0;
        let plain = |c: char| !(c.is_whitespace() || c.is_control() || matches!(c, '"' | '='));
        match !text.is_empty() && text.chars().all(plain) {
            true => f.write_str(text),
            false => write!(f, "\"{}\"", Escaped(text, true)),
        }
    }
}

/// Text with the escapes logfmt readers decode (go-logfmt's, which Loki's parser is adapted
/// from, are JSON's): a newline, a return and a tab as `\n`, `\r`, `\t`, any other control
/// character as `\u00XX`, and, in a quoted value (`.1`), `"` and `\` after a backslash; every
/// other character as it is (an accent, a no-break space), as the JSON lines have it.
struct Escaped<'a>(&'a str, bool);

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Escaped(text, quoted) = *self;
        for c in text.chars() {
            match c {
                '"' | '\\' if quoted => write!(f, "\\{c}")?,
                '\n' => f.write_str("\\n")?,
                '\r' => f.write_str("\\r")?,
                '\t' => f.write_str("\\t")?,
                c if c.is_control() => write!(f, "\\u{:04x}", u32::from(c))?,
                c => f.write_char(c)?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// The lines `log` writes through a text subscriber with [`TextFields`], without time.
    fn written(log: impl FnOnce()) -> String {
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let sink = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .fmt_fields(TextFields)
            .without_time()
            .with_ansi(false)
            .with_target(false)
            .with_writer(move || Sink(sink.clone()))
            .finish();
        tracing::subscriber::with_default(subscriber, log);
        let bytes = buffer.lock().unwrap().clone();
        String::from_utf8(bytes).unwrap()
    }

    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn every_value_reads_as_one_logfmt_field() {
        let error = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let line = written(|| {
            tracing::warn!(
                route = "chat",
                backend = %"10.0.0.1:9001",
                %error,
                failures = 2,
                late = false,
                delta = -3,
                empty = %"",
                quoted = %"a \"b\" c",
                forged = %"\"a\" b=\"c\"",
                esc = %"x\u{1b}[31m",
                path = %std::path::Path::new("/etc/wsgate.toml").display(),
                named = %"\"chat\"",
                accent = "cafe\u{301} x\u{a0}y",
                "backend put aside for {:?}\u{1b}[2J",
                std::time::Duration::from_secs(1)
            )
        });
        assert_eq!(
            line,
            " WARN backend put aside for 1s\\u001b[2J route=\"chat\" backend=10.0.0.1:9001 \
             error=\"connection refused\" failures=2 late=false delta=-3 empty=\"\" quoted=\"a \\\"b\\\" c\" forged=\"\\\"a\\\" b=\\\"c\\\"\" \
             esc=\"x\\u001b[31m\" path=/etc/wsgate.toml \
             named=\"\\\"chat\\\"\" accent=\"cafe\u{301} x\u{a0}y\"\n"
        );
    }
}
