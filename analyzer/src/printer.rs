//! `--print`: each log message as a line on stdout, for watching an analyzer by hand.
//!
//! ```text
//! 1020 WARN  app: hello world!
//! 2026-11-25T10:00:00Z INFO  web: GET /
//! ```

use std::io::{self, Write};

use logdist::protocol::packet::Timestamp;
use logdist::LogRecord;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// Writes one line per log message: timestamp, severity, source, message. Buffered; call
/// [`RecordPrinter::flush`] after each packet so lines appear as packets arrive.
pub struct RecordPrinter<W: Write> {
    out: io::BufWriter<W>,
}

impl<W: Write> RecordPrinter<W> {
    pub fn new(out: W) -> Self {
        RecordPrinter {
            out: io::BufWriter::new(out),
        }
    }

    pub fn print(&mut self, record: &LogRecord<'_>) -> io::Result<()> {
        match record.timestamp {
            Timestamp::Epoch(n) => write!(self.out, "{n}")?,
            Timestamp::UnixNanos(ns) => match OffsetDateTime::from_unix_timestamp_nanos(ns)
                .ok()
                .and_then(|t| t.format(&Rfc3339).ok())
            {
                Some(text) => self.out.write_all(text.as_bytes())?,
                None => write!(self.out, "{ns}ns")?,
            },
        }
        write!(self.out, " {:<5} ", record.severity.as_str())?;
        write_escaped(&mut self.out, &record.source)?;
        self.out.write_all(b": ")?;
        write_escaped(&mut self.out, &record.message)?;
        self.out.write_all(b"\n")
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    #[cfg(test)]
    pub fn into_inner(self) -> Result<W, io::Error> {
        self.out.into_inner().map_err(|e| e.into_error())
    }
}

/// Writes `text` with control characters escaped (`\n`, `\u{1b}`…), so a log message cannot
/// forge extra output lines or terminal escapes.
fn write_escaped(out: &mut impl Write, text: &str) -> io::Result<()> {
    let mut rest = text;
    while let Some(at) = rest.find(char::is_control) {
        out.write_all(&rest.as_bytes()[..at])?;
        let c = rest[at..]
            .chars()
            .next()
            .expect("found a char at this index");
        write!(out, "{}", c.escape_debug())?;
        rest = &rest[at + c.len_utf8()..];
    }
    out.write_all(rest.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use logdist::PacketValidator;

    #[test]
    fn one_line_per_message() {
        let payload = r#"[{"timestamp":1020,"severity":"warn","source":"app","message":"hello world!"},
            {"timestamp":"2026-11-25T10:00:00Z","severity":"INFO","source":"web","message":"it's \"GET /\"\nFAKE line"}]"#;
        let packet = PacketValidator::default()
            .parse(payload.as_bytes())
            .unwrap();
        let mut printer = RecordPrinter::new(Vec::new());
        for record in &packet.records {
            printer.print(record).unwrap();
        }
        let text = String::from_utf8(printer.into_inner().unwrap()).unwrap();
        assert_eq!(
            text,
            "1020 WARN  app: hello world!\n2026-11-25T10:00:00Z INFO  web: it's \"GET /\"\\nFAKE line\n"
        );
    }
}
