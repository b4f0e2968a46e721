//! Stage 2 of the fast packet validator: walks the structural positions of stage 1
//! (`structural.rs`) and applies the wire contract (`packet.rs`) without building anything.
//!
//! It gives the verdict of [`PacketValidator::count_if_valid_serde`] (serde_json reading the
//! same four fields) on every input, including serde_json's particular rules, which are the
//! contract's in practice:
//!
//! - a payload is one log object or a non-empty array of them, with JSON whitespace (space,
//!   tab, line feed, carriage return) around tokens and nothing after the value;
//! - a log object has each of `timestamp`, `severity`, `source` and `message` exactly once
//!   (keys compared after unescaping); other keys may repeat and their values are any JSON,
//!   nested as deep as they like;
//! - `timestamp` is an integer in `i64` range (`-0` is not: serde_json reads it as a float), or
//!   a string `time` reads as RFC 3339; `severity` a string [`Severity::parse`] knows; `source`
//!   a non-empty string; `message` a string;
//! - strings hold no control byte; an escape is one of `\" \\ \/ \b \f \n \r \t` or `\u` with
//!   four hex digits; in the keys of a log object and in the four fields' strings (which serde
//!   decodes), a `\u` surrogate must be a leading one followed at once by a trailing one; in
//!   other values (which serde only skips) any four hex digits do;
//! - numbers are `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`; literals `true`, `false`,
//!   `null`; no trailing commas; the payload is UTF-8.
//!
//! [`PacketValidator::count_if_valid_serde`]: super::packet::PacketValidator::count_if_valid_serde

use std::borrow::Cow;

use super::packet::Severity;
use super::structural::{scan, Kernel, Structurals, Window};

/// The number of log messages in `payload` if it is a packet whose every element is valid.
pub(crate) fn count_valid(payload: &[u8], kernel: Kernel) -> Option<usize> {
    scan(payload, kernel, |structurals| {
        Walk {
            input: payload,
            structurals,
        }
        .packet()
    })
}

/// How a string is read: decoded (serde's `parse_str`: surrogates must pair) or skipped
/// (serde's `ignore_str`: any `\uXXXX`).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Strings {
    Decoded,
    Skipped,
}

/// A string's content, between its quotes.
struct Span {
    start: usize,
    end: usize,
    escaped: bool,
}

/// A key of a log object; the value of each contract field is its bit in the set of fields
/// seen, `Other` adds none.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Field {
    Timestamp = 1,
    Severity = 2,
    Source = 4,
    Message = 8,
    Other = 0,
}

/// Every contract field's bit.
const ALL_FIELDS: u8 = 0b1111;

impl Field {
    /// The field a key names. By length first, then one or two word compares.
    #[inline(always)]
    fn of(name: &[u8]) -> Field {
        match name.len() {
            9 if name == b"timestamp" => Field::Timestamp,
            8 if name == b"severity" => Field::Severity,
            6 if name == b"source" => Field::Source,
            7 if name == b"message" => Field::Message,
            _ => Field::Other,
        }
    }

    /// Adds this field to `seen`: false if it was there already (a contract field twice).
    #[inline(always)]
    fn first_time(self, seen: &mut u8) -> bool {
        let bit = self as u8;
        let first = *seen & bit == 0;
        *seen |= bit;
        first
    }
}

/// Whether the byte after a number or literal ends it: JSON whitespace, an operator, a quote, or
/// the end of the payload. Anything else would belong to the same token.
fn ends_token(byte: Option<&u8>) -> bool {
    matches!(
        byte,
        None | Some(b' ' | b'\t' | b'\n' | b'\r' | b'{' | b'}' | b'[' | b']' | b':' | b',' | b'"')
    )
}

fn hex4(digits: &[u8]) -> Option<u16> {
    let mut value = 0u16;
    for &d in digits.get(..4)? {
        value = value << 4 | (d as char).to_digit(16)? as u16;
    }
    Some(value)
}

const LEADING: std::ops::RangeInclusive<u16> = 0xd800..=0xdbff;
const TRAILING: std::ops::RangeInclusive<u16> = 0xdc00..=0xdfff;

struct Walk<'a, 's, 'b> {
    input: &'a [u8],
    structurals: &'s mut Structurals<'a, 'b>,
}

impl Walk<'_, '_, '_> {
    /// The whole payload: one log object or an array of them, nothing after.
    fn packet(&mut self) -> Option<usize> {
        let first = self.next()?;
        let count = match self.input[first] {
            b'{' => {
                self.record()?;
                1
            }
            b'[' => {
                let mut count = 0;
                loop {
                    // As many elements of the common shape as the window holds, then one
                    // element (of any shape) position by position, unless the array ended.
                    let (elements, taken, closed) = common_elements(self.structurals.window());
                    self.structurals.take(taken);
                    count += elements;
                    if closed {
                        break;
                    }
                    self.expect(b'{')?;
                    self.record()?;
                    count += 1;
                    match self.next_byte()? {
                        b',' => {}
                        b']' => break,
                        _ => return None,
                    }
                }
                count
            }
            _ => return None,
        };
        if self.next().is_some() {
            return None;
        }
        self.structurals.clean().then_some(count)
    }

    #[inline(always)]
    fn next(&mut self) -> Option<usize> {
        self.structurals.next()
    }

    #[inline(always)]
    fn next_byte(&mut self) -> Option<u8> {
        let at = self.next()?;
        Some(self.input[at])
    }

    #[inline(always)]
    fn expect(&mut self, byte: u8) -> Option<usize> {
        let at = self.next()?;
        (self.input[at] == byte).then_some(at)
    }

    /// A log object, its `{` taken: every field checked, the four contract fields once each.
    /// The common shape in one go over the window of positions ([`common_record`]); anything
    /// else, valid or not, position by position.
    #[inline(always)]
    fn record(&mut self) -> Option<()> {
        let mut window = self.structurals.window();
        let available = window.len();
        if common_record(&mut window).is_some() {
            let taken = available - window.len();
            self.structurals.take(taken);
            return Some(());
        }
        self.any_record()
    }

    /// [`record`](Self::record), position by position: every shape.
    #[inline(never)]
    fn any_record(&mut self) -> Option<()> {
        let mut seen = 0u8;
        let mut at = self.next()?;
        loop {
            if self.input[at] != b'"' {
                return None;
            }
            let field = self.key(at)?;
            self.expect(b':')?;
            let value = self.next()?;
            if let Field::Other = field {
                self.skip_value(value)?;
            } else {
                if !field.first_time(&mut seen) {
                    return None;
                }
                match field {
                    Field::Timestamp => self.timestamp(value)?,
                    Field::Severity => self.severity(value)?,
                    Field::Source => {
                        let span = self.string_at(value)?;
                        if span.end == span.start {
                            return None;
                        }
                    }
                    Field::Message | Field::Other => {
                        self.string_at(value)?;
                    }
                }
            }
            match self.next_byte()? {
                b',' => at = self.next()?,
                b'}' => break,
                _ => return None,
            }
        }
        (seen == ALL_FIELDS).then_some(())
    }

    /// A key of a log object, decoded as serde decodes it.
    fn key(&mut self, open: usize) -> Option<Field> {
        let span = self.string(open, Strings::Decoded)?;
        let raw = &self.input[span.start..span.end];
        if !span.escaped {
            return Some(Field::of(raw));
        }
        let mut name = SmallText::default();
        unescape(raw, &mut name);
        Some(name.get().map_or(Field::Other, Field::of))
    }

    /// A decoded string that must start at `at`.
    fn string_at(&mut self, at: usize) -> Option<Span> {
        if self.input[at] != b'"' {
            return None;
        }
        self.string(at, Strings::Decoded)
    }

    /// The string whose opening quote is at `open`: its escapes checked, its end found.
    #[inline(always)]
    fn string(&mut self, open: usize, strings: Strings) -> Option<Span> {
        // Inside a string stage 1 lists only escaping backslashes and the closing quote.
        let mut at = self.next()?;
        let escaped = self.input[at] == b'\\';
        while self.input[at] == b'\\' {
            at = self.escape(at, strings)?;
        }
        Some(Span {
            start: open + 1,
            end: at,
            escaped,
        })
    }

    /// Checks the escape whose backslash is at `at`; returns the position after it.
    fn escape(&mut self, at: usize, strings: Strings) -> Option<usize> {
        match *self.input.get(at + 1)? {
            b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => self.next(),
            b'u' => {
                let unit = hex4(self.input.get(at + 2..)?)?;
                if strings == Strings::Decoded {
                    if TRAILING.contains(&unit) {
                        return None;
                    }
                    if LEADING.contains(&unit) {
                        // The trailing half must follow at once, as `\uDC00`..`\uDFFF`.
                        let next = self.next()?;
                        if next != at + 6
                            || self.input[next] != b'\\'
                            || self.input.get(next + 1) != Some(&b'u')
                        {
                            return None;
                        }
                        if !TRAILING.contains(&hex4(self.input.get(next + 2..)?)?) {
                            return None;
                        }
                    }
                }
                self.next()
            }
            _ => None,
        }
    }

    fn timestamp(&mut self, at: usize) -> Option<()> {
        match self.input[at] {
            b'"' => {
                let span = self.string(at, Strings::Decoded)?;
                let raw = &self.input[span.start..span.end];
                let text: Cow<'_, [u8]> = if span.escaped {
                    let mut text = Vec::with_capacity(raw.len());
                    unescape(raw, &mut text);
                    Cow::Owned(text)
                } else {
                    Cow::Borrowed(raw)
                };
                let text = std::str::from_utf8(&text).ok()?;
                time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
                    .ok()
                    .map(drop)
            }
            _ => self.epoch(at),
        }
    }

    fn epoch(&self, at: usize) -> Option<()> {
        epoch(self.input, at)
    }

    fn severity(&mut self, at: usize) -> Option<()> {
        let span = self.string_at(at)?;
        let raw = &self.input[span.start..span.end];
        let known = if span.escaped {
            let mut name = SmallText::default();
            unescape(raw, &mut name);
            name.get().and_then(Severity::parse_bytes)
        } else {
            Severity::parse_bytes(raw)
        };
        known.map(drop)
    }

    /// Any JSON value that starts at `at`, checked as serde skips it.
    fn skip_value(&mut self, at: usize) -> Option<()> {
        match self.input[at] {
            b'{' | b'[' => self.skip_nested(at),
            _ => self.skip_scalar(at),
        }
    }

    fn skip_scalar(&mut self, at: usize) -> Option<()> {
        let literal = |text: &[u8]| {
            let end = at + text.len();
            (self.input.get(at..end) == Some(text) && ends_token(self.input.get(end))).then_some(())
        };
        match self.input[at] {
            b'"' => self.string(at, Strings::Skipped).map(drop),
            b't' => literal(b"true"),
            b'f' => literal(b"false"),
            b'n' => literal(b"null"),
            b'-' | b'0'..=b'9' => self.skip_number(at),
            _ => None,
        }
    }

    fn skip_number(&self, at: usize) -> Option<()> {
        skip_number(self.input, at)
    }

    /// An array or object that opens at `open`, with everything inside it, however deep.
    fn skip_nested(&mut self, open: usize) -> Option<()> {
        let mut stack = Nesting::default();
        stack.push(self.input[open] == b'{');
        // `Some(at)`: `at` is the first token after an opening bracket.
        let mut opened = self.next();
        loop {
            if let Some(at) = opened.take() {
                if self.input[at] != stack.closer() {
                    opened = self.member(&mut stack, at)?;
                    continue;
                }
            } else {
                match self.next_byte()? {
                    b',' => {
                        let at = self.next()?;
                        opened = self.member(&mut stack, at)?;
                        continue;
                    }
                    byte if byte == stack.closer() => {}
                    _ => return None,
                }
            }
            // A closing bracket.
            stack.pop();
            if stack.is_empty() {
                return Some(());
            }
        }
    }

    /// One element of the innermost array or member of the innermost object, starting at `at`.
    /// `Some(Some(first))` when its value opened a container (`first`: the token after the
    /// bracket), `Some(None)` when the value is complete.
    fn member(&mut self, stack: &mut Nesting, mut at: usize) -> Option<Option<usize>> {
        if stack.in_object() {
            if self.input[at] != b'"' {
                return None;
            }
            self.string(at, Strings::Skipped)?;
            self.expect(b':')?;
            at = self.next()?;
        }
        match self.input[at] {
            byte @ (b'{' | b'[') => {
                stack.push(byte == b'{');
                Some(Some(self.next()?))
            }
            _ => self.skip_scalar(at).map(|()| None),
        }
    }
}

/// Elements of a packet's array that are log objects of the common shape ([`common_record`]),
/// each with the `,` or `]` after it, as many in a row as `window` holds: how many, the
/// positions they took, and whether the last one closed the array. The element after them
/// (of another shape, cut by the window's end, or invalid) is left to the caller.
#[inline(always)]
fn common_elements(window: Window<'_, '_>) -> (usize, usize, bool) {
    let available = window.len();
    let mut read = window;
    let mut count = 0;
    loop {
        let mut element = read;
        let Some(open) = element.next::<1>() else {
            break;
        };
        if open.byte(0) != b'{' || common_record(&mut element).is_none() {
            break;
        }
        let Some(separator) = element.next::<1>() else {
            break;
        };
        match separator.byte(0) {
            b',' => {}
            b']' => return (count + 1, available - element.len(), true),
            _ => break,
        }
        count += 1;
        read = element;
    }
    (count, available - read.len(), false)
}

/// A valid log object of the common shape, read from the window of positions after its `{`
/// (consumed as it goes): plain keys (no escape), and values that are plain strings or
/// numbers. `None` for any other object, valid or not, which [`Walk::any_record`] then reads
/// from the same place. It never says valid where `any_record` would not: the same checks,
/// on fewer shapes.
///
/// It looks at fewer bytes than `any_record` because of what stage 1 lists: inside a string
/// only escaping backslashes and the closing quote, and `:` `,` `}` only outside strings. So
/// when the position after an opening quote's next one holds `:` (or `,` or `}`), that next
/// one was the closing quote and the string has no escape: the closing quote needs no look.
#[inline(always)]
fn common_record(window: &mut Window<'_, '_>) -> Option<()> {
    let mut seen = 0u8;
    loop {
        // `"key":`, the value's first position and the one after it: a string's closing
        // quote, or what follows a number.
        let member = window.next::<5>()?;
        if member.byte(0) != b'"' || member.byte(2) != b':' {
            return None;
        }
        let field = Field::of(member.between(0));
        let separator = match member.byte(3) {
            b'"' => {
                let text = member.between(3);
                let fits = match field {
                    Field::Severity => Severity::parse_bytes(text).is_some(),
                    Field::Source => !text.is_empty(),
                    Field::Message | Field::Other => true,
                    Field::Timestamp => false,
                };
                if !fits {
                    return None;
                }
                window.next::<1>()?.byte(0)
            }
            b'-' | b'0'..=b'9' => {
                let fits = match field {
                    Field::Timestamp => epoch(window.input(), member.at(3)).is_some(),
                    Field::Other => skip_number(window.input(), member.at(3)).is_some(),
                    _ => false,
                };
                if !fits {
                    return None;
                }
                member.byte(4)
            }
            _ => return None,
        };
        if !field.first_time(&mut seen) {
            return None;
        }
        match separator {
            b',' => {}
            b'}' => break,
            _ => return None,
        }
    }
    (seen == ALL_FIELDS).then_some(())
}

/// An integer epoch as serde_json reads one into an `i64`: a fraction, an exponent, `-0`
/// or anything out of range is not one.
#[inline(always)]
fn epoch(input: &[u8], at: usize) -> Option<()> {
    let negative = input[at] == b'-';
    let digits = input.get(at + usize::from(negative)..)?;
    let n = digit_count(digits);
    // No digit, a leading zero (`-0` included: serde_json reads it as a float), 20 digits or
    // more (without a leading zero that is >= 10^19, beyond any `i64`), or not the end of the
    // token: serde_json would not read an `i64`.
    if n == 0 || n >= 20 || (digits[0] == b'0' && (n > 1 || negative)) || !ends_token(digits.get(n))
    {
        return None;
    }
    // Up to 18 digits fit an `i64` with either sign; 19 may not.
    if n < 19 {
        return Some(());
    }
    let value = digits[..n]
        .iter()
        .fold(0u64, |v, &d| v * 10 + u64::from(d - b'0'));
    let in_range = if negative {
        value <= 1 << 63
    } else {
        value <= i64::MAX as u64
    };
    in_range.then_some(())
}

/// How many of the leading bytes of `bytes` are ASCII digits: a word at a time (SWAR) while
/// eight bytes are left.
#[inline(always)]
fn digit_count(bytes: &[u8]) -> usize {
    let mut n = 0;
    while let Some(word) = word(bytes, n) {
        let m = leading_digits(word);
        n += m;
        if m < 8 {
            return n;
        }
    }
    n + bytes[n..].iter().take_while(|d| d.is_ascii_digit()).count()
}

/// Eight bytes from `at` as a little-endian word (the first byte lowest), if there are eight.
#[inline(always)]
fn word(bytes: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(bytes.get(at..at + 8)?.try_into().ok()?))
}

/// How many of a word's bytes, from the first, are ASCII digits.
#[inline(always)]
fn leading_digits(word: u64) -> usize {
    // A digit is 0x30..=0x39: high nibble 3, and still 3 after adding 6. A byte that carries
    // into the next one (0xfa and up) is itself no digit, so the first one flagged is the
    // first that is not a digit.
    let high = word & 0xf0f0_f0f0_f0f0_f0f0;
    let plus_six = word.wrapping_add(0x0606_0606_0606_0606) & 0xf0f0_f0f0_f0f0_f0f0;
    let flagged = (high ^ 0x3030_3030_3030_3030) | (plus_six ^ 0x3030_3030_3030_3030);
    flagged.trailing_zeros() as usize / 8
}

/// A number as serde_json skips one (any size, fraction, exponent), with what ends it.
fn skip_number(input: &[u8], at: usize) -> Option<()> {
    let digit = |i: usize| matches!(input.get(i), Some(b'0'..=b'9'));
    let digits = |mut i: usize| {
        while digit(i) {
            i += 1;
        }
        i
    };
    let mut i = at + usize::from(input[at] == b'-');
    match input.get(i)? {
        b'0' => i += 1,
        b'1'..=b'9' => i = digits(i + 1),
        _ => return None,
    }
    if input.get(i) == Some(&b'.') {
        if !digit(i + 1) {
            return None;
        }
        i = digits(i + 1);
    }
    if matches!(input.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(input.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        if !digit(i) {
            return None;
        }
        i = digits(i);
    }
    ends_token(input.get(i)).then_some(())
}

/// Open arrays and objects, innermost last: a bit each (1 = object), spilling to the heap only
/// past 128 levels.
#[derive(Default)]
struct Nesting {
    depth: usize,
    inline: u128,
    deeper: Vec<bool>,
}

impl Nesting {
    fn push(&mut self, object: bool) {
        if self.depth < 128 {
            self.inline = self.inline & !(1 << self.depth) | u128::from(object) << self.depth;
        } else {
            self.deeper.push(object);
        }
        self.depth += 1;
    }

    fn pop(&mut self) {
        self.depth -= 1;
        if self.depth >= 128 {
            self.deeper.pop();
        }
    }

    fn in_object(&self) -> bool {
        let top = self.depth - 1;
        if top < 128 {
            self.inline >> top & 1 == 1
        } else {
            self.deeper[top - 128]
        }
    }

    fn closer(&self) -> u8 {
        if self.in_object() {
            b'}'
        } else {
            b']'
        }
    }

    fn is_empty(&self) -> bool {
        self.depth == 0
    }
}

/// Where [`unescape`] writes.
trait Text {
    fn push(&mut self, bytes: &[u8]);
}

impl Text for Vec<u8> {
    fn push(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}

/// Up to 16 bytes of decoded text, on the stack: enough for every key and severity name the
/// contract knows; anything longer is none of them.
#[derive(Default)]
struct SmallText {
    bytes: [u8; 16],
    len: usize,
    too_long: bool,
}

impl SmallText {
    fn get(&self) -> Option<&[u8]> {
        (!self.too_long).then_some(&self.bytes[..self.len])
    }
}

impl Text for SmallText {
    fn push(&mut self, bytes: &[u8]) {
        match self.bytes.get_mut(self.len..self.len + bytes.len()) {
            Some(room) if !self.too_long => {
                room.copy_from_slice(bytes);
                self.len += bytes.len();
            }
            _ => self.too_long = true,
        }
    }
}

/// Decodes the content of a string whose escapes [`Walk::string`] has already checked as
/// decoded.
fn unescape(raw: &[u8], out: &mut impl Text) {
    let mut i = 0;
    while i < raw.len() {
        let plain = raw[i..]
            .iter()
            .position(|&b| b == b'\\')
            .unwrap_or(raw.len() - i);
        out.push(&raw[i..i + plain]);
        i += plain;
        if i == raw.len() {
            break;
        }
        let byte = match raw[i + 1] {
            b'b' => 0x08,
            b'f' => 0x0c,
            b'n' => b'\n',
            b'r' => b'\r',
            b't' => b'\t',
            b'u' => {
                let unit = hex4(&raw[i + 2..]).unwrap_or(0);
                let code = if LEADING.contains(&unit) {
                    let low = hex4(&raw[i + 8..]).unwrap_or(0xdc00);
                    i += 6;
                    0x1_0000 + ((u32::from(unit) - 0xd800) << 10 | (u32::from(low) - 0xdc00))
                } else {
                    u32::from(unit)
                };
                let mut utf8 = [0; 4];
                let c = char::from_u32(code).unwrap_or(char::REPLACEMENT_CHARACTER);
                out.push(c.encode_utf8(&mut utf8).as_bytes());
                i += 6;
                continue;
            }
            other => other,
        };
        out.push(&[byte]);
        i += 2;
    }
}

#[cfg(test)]
mod tests {
    use super::super::packet::PacketValidator;
    use super::*;
    use proptest::prelude::*;

    /// The careful path's verdict: `parse` finds a packet of n elements, none invalid.
    fn careful(v: &PacketValidator, payload: &[u8]) -> Option<usize> {
        match v.parse(payload) {
            Ok(p) if p.is_fully_valid() => Some(p.len()),
            _ => None,
        }
    }

    /// Every kernel of this CPU, the serde one-pass path and `parse` give the same verdict.
    fn assert_agree(payload: &[u8]) {
        let v = PacketValidator::default();
        let expected = careful(&v, payload);
        assert_eq!(
            v.count_if_valid_serde(payload),
            expected,
            "serde path vs parse on {:?}",
            String::from_utf8_lossy(payload)
        );
        for kernel in Kernel::available() {
            assert_eq!(
                count_valid(payload, kernel),
                expected,
                "{} kernel on {:?}",
                kernel.name(),
                String::from_utf8_lossy(payload)
            );
        }
    }

    const HELLO: &str =
        r#"{"timestamp":1020,"severity":"WARN","source":"app","message":"hello world!"}"#;

    fn record(timestamp: &str, severity: &str, source: &str, message: &str) -> String {
        format!(
            r#"{{"timestamp":{timestamp},"severity":{severity},"source":{source},"message":{message}}}"#
        )
    }

    #[test]
    fn the_simd_kernel_is_among_those_tested_where_the_cpu_has_it() {
        let names: Vec<_> = Kernel::available().iter().map(|k| k.name()).collect();
        assert_eq!(names[0], "portable");
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("pclmulqdq") {
            assert_eq!(names[..2], ["portable", "avx2"]);
            let avx512 = is_x86_feature_detected!("avx512bw");
            assert_eq!(names.len(), if avx512 { 3 } else { 2 });
            assert_eq!(
                Kernel::detect().name(),
                if avx512 { "avx512" } else { "avx2" }
            );
        }
    }

    #[test]
    fn digit_runs_a_word_at_a_time() {
        for text in [
            "",
            "x",
            "0",
            "7",
            "12",
            "1234567",
            "12345678",
            "123456789",
            "1764064800000",
            "123456789012345",
            "1234567890123456",
            "12345678901234567",
            "1234567890123456789",
            "99999999999999999999",
            "0000000000000000000001",
            "1,",
            "1764064800000}",
            "12345678:",
            "1234\u{ff}",
            "9\u{fa}9",
        ] {
            let n = text.bytes().take_while(u8::is_ascii_digit).count();
            assert_eq!(digit_count(text.as_bytes()), n, "{text:?}");
        }
        // Every byte value in every position of a word.
        let digits = *b"12345678";
        for at in 0..8 {
            for b in 0..=255u8 {
                let mut bytes = digits;
                bytes[at] = b;
                let n = bytes.iter().take_while(|d| d.is_ascii_digit()).count();
                assert_eq!(leading_digits(u64::from_le_bytes(bytes)), n, "{bytes:?}");
            }
        }
    }

    #[test]
    fn timestamps_at_the_edges_of_i64_and_of_serde() {
        for (timestamp, valid) in [
            ("0", true),
            ("-0", false),
            ("-1", true),
            ("999999999999999999", true),
            ("-999999999999999999", true),
            ("1000000000000000000", true),
            ("9999999999999999999", false),
            ("9223372036854775807", true),
            ("9223372036854775808", false),
            ("-9223372036854775808", true),
            ("-9223372036854775809", false),
            ("18446744073709551615", false),
            ("18446744073709551616", false),
            ("123456789012345678901234567890", false),
            ("1.0", false),
            ("1e3", false),
            ("01", false),
            ("-", false),
            ("1x", false),
            ("\"2026-11-25T10:00:00Z\"", true),
            ("\"2026-11-25t10:00:00.123456789123z\"", true),
            ("\"2026-11-25 10:00:00+01:00\"", true),
            ("\"2026-02-30T10:00:00Z\"", false),
            ("\"2026-11-25T10:00:00\\u005a\"", true),
            ("\"2026-11-25T10:00:00\"", false),
            ("true", false),
            ("null", false),
        ] {
            let payload = record(timestamp, "\"INFO\"", "\"s\"", "\"m\"");
            assert_agree(payload.as_bytes());
            let v = PacketValidator::default();
            assert_eq!(
                v.count_if_valid(payload.as_bytes()),
                valid.then_some(1),
                "{timestamp}"
            );
        }
    }

    #[test]
    fn escapes_and_surrogates_where_serde_decodes_and_where_it_skips() {
        for (string, decoded_ok, skipped_ok) in [
            (r#""plain""#, true, true),
            (r#""\n\t\r\b\f\/\\\"""#, true, true),
            (r#""\u00e9\u00E9""#, true, true),
            (r#""\ud83d\ude00""#, true, true),
            (r#""\ud800""#, false, true),
            (r#""\udc00""#, false, true),
            (r#""\ud800\u0041""#, false, true),
            (r#""\ud800\n""#, false, true),
            (r#""\ud800\ud800""#, false, true),
            (r#""\ud800"u"#, false, false),
            (r#""\x""#, false, false),
            (r#""\u12g4""#, false, false),
            (r#""\u12""#, false, false),
            ("\"tab\there\"", false, false),
            ("\"é ✓ 😀\"", true, true),
        ] {
            let decoded = record("1", "\"INFO\"", "\"s\"", string);
            let skipped = format!(
                r#"{{"x":{string},"timestamp":1,"severity":"INFO","source":"s","message":"m"}}"#
            );
            let as_key = format!(
                r#"{{{string}:1,"timestamp":1,"severity":"INFO","source":"s","message":"m"}}"#
            );
            let nested_key = format!(
                r#"{{"x":{{{string}:1}},"timestamp":1,"severity":"INFO","source":"s","message":"m"}}"#
            );
            let v = PacketValidator::default();
            for (payload, ok) in [
                (decoded, decoded_ok),
                (as_key, decoded_ok),
                (skipped, skipped_ok),
                (nested_key, skipped_ok),
            ] {
                assert_agree(payload.as_bytes());
                assert_eq!(
                    v.count_if_valid(payload.as_bytes()),
                    ok.then_some(1),
                    "{payload}"
                );
            }
        }
    }

    #[test]
    fn escaped_keys_and_severities_are_compared_decoded() {
        for payload in [
            r#"{"time\u0073tamp":1,"severity":"INFO","source":"s","message":"m"}"#,
            r#"{"timestamp":1,"severity":"\u0049nfo","source":"s","message":"m"}"#,
            r#"{"timestamp":1,"\u0074imestamp":2,"severity":"INFO","source":"s","message":"m"}"#,
            r#"{"timestamp":1,"severity":"INFO","source":"\u0000","message":"m"}"#,
            r#"{"timestamp":1,"severity":"INFORMATIONA\u004c","source":"s","message":"m"}"#,
            r#"{"timestamp":1,"severity":"INFORMATIONAL\u004c","source":"s","message":"m"}"#,
            r#"{"timestamp":1,"severity":"INFO","source":"s","message":"m","timestamp\u0000":3}"#,
        ] {
            assert_agree(payload.as_bytes());
        }
    }

    #[test]
    fn deep_nesting_in_extra_fields_is_valid_and_checked() {
        for depth in [1, 63, 64, 65, 127, 128, 129, 300, 5000] {
            let open = "[{\"a\":".repeat(depth);
            let close = "}]".repeat(depth);
            let good = format!(
                r#"{{"x":{open}1{close},"timestamp":1,"severity":"INFO","source":"s","message":"m"}}"#
            );
            assert_agree(good.as_bytes());
            assert_eq!(
                PacketValidator::default().count_if_valid(good.as_bytes()),
                Some(1)
            );
            let bad = good.replacen("}]", "]}", 1);
            assert_agree(bad.as_bytes());
        }
    }

    #[test]
    fn every_truncation_of_a_packet() {
        let rich = format!(
            " [ {HELLO} ,\n{}, {}\t]\r\n",
            r#"{"message":"q \" \\ \u00e9 \ud83d\ude00 é","source":"s\/x","extra":[1,-2.5e+3,true,false,null,{"k":"\udc00"}],"severity":"critical","timestamp":"2026-11-25T10:00:00.5+01:00"}"#,
            record("-7", "\"notice\"", "\"w\"", "\"\""),
        );
        let bytes = rich.as_bytes();
        assert_eq!(PacketValidator::default().count_if_valid(bytes), Some(3));
        for end in 0..=bytes.len() {
            assert_agree(&bytes[..end]);
        }
    }

    /// Every byte of a packet of the common shape replaced by each byte that means something
    /// to the scanner: what the common-shape path reads without looking (a closing quote, the
    /// byte a position holds) must still be checked somewhere, and control and non-ASCII bytes
    /// (which stage 1 notes only inside strings) must be refused or checked wherever they are.
    #[test]
    fn every_byte_replaced_by_a_structural_one() {
        let common = r#"{"timestamp":1764064800000,"severity":"INFO","source":"api","message":"GET /x","host":"n"}"#;
        let packet = format!("[{common},{HELLO}]");
        for payload in [packet.as_str(), common] {
            for at in 0..payload.len() {
                for &b in b"{}[]:,\"\\ x0-\t\n\x00\x1f\x7f\x80\xc3\xff" {
                    let mut bytes = payload.as_bytes().to_vec();
                    bytes[at] = b;
                    assert_agree(&bytes);
                }
            }
        }
    }

    /// A JSON string as an agent could write it, or nearly: plain, escaped, unicode, and
    /// broken in each way the validator must notice.
    fn string() -> impl Strategy<Value = String> {
        let piece = prop_oneof![
            40 => "[a-zA-Z0-9 _./:-]{0,12}",
            4 => Just("é".to_string()),
            4 => Just("😀".to_string()),
            8 => prop::sample::select(vec![
                "\\n", "\\t", "\\r", "\\b", "\\f", "\\/", "\\\\", "\\\"", "\\u00e9", "\\u0041",
                "\\u0000", "\\ud83d\\ude00", "\\uD83D\\uDE00",
            ])
            .prop_map(str::to_string),
            1 => prop::sample::select(vec![
                "\\ud800", "\\udc00", "\\ud800\\u0041", "\\ud800\\n", "\\x", "\\u12g4", "\\u12",
                "\\", "\t", "\u{1}", "\"",
            ])
            .prop_map(str::to_string),
        ];
        prop_oneof![
            1 => Just("\"\"".to_string()),
            12 => prop::collection::vec(piece, 1..6)
                .prop_map(|pieces| format!("\"{}\"", pieces.concat())),
        ]
    }

    /// A key: mostly the contract's names (so duplicates happen), some escaped, some others.
    fn key() -> impl Strategy<Value = String> {
        prop_oneof![
            1 => prop::sample::select(vec![
                "\"timestamp\"", "\"severity\"", "\"source\"", "\"message\"",
            ])
            .prop_map(str::to_string),
            12 => prop::sample::select(vec![
                "\"time\\u0073tamp\"", "\"\\u0073everity\"", "\"sourc\\u0065\"",
                "\"message \"", "\"Message\"", "\"host\"", "\"tags\"",
            ])
            .prop_map(str::to_string),
            1 => string(),
        ]
    }

    fn number() -> impl Strategy<Value = String> {
        prop_oneof![
            8 => any::<i64>().prop_map(|n| n.to_string()),
            1 => any::<u64>().prop_map(|n| n.to_string()),
            2 => prop::sample::select(vec![
                "0", "-0", "01", "-", "1.", "1.5", "-2.5e+3", "1e400", "1E-2", "9223372036854775808",
                "-9223372036854775809", "18446744073709551616", "1x", ".5", "+1", "0x10",
            ])
            .prop_map(str::to_string),
        ]
    }

    /// Whitespace between tokens: JSON's four, sometimes none, rarely a byte that is not.
    fn ws() -> impl Strategy<Value = String> {
        prop_oneof![
            40 => Just(String::new()),
            20 => "[ \t\r\n]{1,3}",
            1 => prop::sample::select(vec!["\u{b}", "\u{c}", "\u{a0}"]).prop_map(str::to_string),
        ]
    }

    /// Any JSON value (or near-JSON) for an extra field, nested.
    fn value() -> impl Strategy<Value = String> {
        let leaf = prop_oneof![
            string(),
            number(),
            prop::sample::select(vec!["true", "false", "null", "tru", "nulll", "True"])
                .prop_map(str::to_string),
        ];
        leaf.prop_recursive(4, 24, 4, |inner| {
            prop_oneof![
                8 => prop::collection::vec((ws(), inner.clone()), 0..4).prop_map(|items| {
                    let items: Vec<_> = items.into_iter().map(|(w, v)| w + &v).collect();
                    format!("[{}]", items.join(","))
                }),
                8 => prop::collection::vec((string(), ws(), inner), 0..4).prop_map(|members| {
                    let members: Vec<_> =
                        members.into_iter().map(|(k, w, v)| format!("{k}:{w}{v}")).collect();
                    format!("{{{}}}", members.join(","))
                }),
                1 => prop::sample::select(vec!["[1,]", "{\"a\":1,}", "[}", "{\"a\"}", "{1:2}"])
                    .prop_map(str::to_string),
            ]
        })
    }

    /// The value of a field: fitting for its key most of the time, anything sometimes.
    fn field_value(key: &str) -> BoxedStrategy<String> {
        let severity = prop_oneof![
            20 => "(TRACE|debug|Info|WARN|warning|Error|err|FATAL|critical|Crit|alert|emerg|panic|notice|informational)"
                .prop_map(|s| format!("\"{s}\"")),
            1 => "(LOUD||warnings|\\u0049NFO|\\u0049NFORMATIONAL|inf\\u006f)".prop_map(|s| format!("\"{s}\"")),
        ];
        let timestamp = prop_oneof![
            4 => number(),
            2 => prop::sample::select(vec![
                "\"2026-11-25T10:00:00Z\"", "\"2026-11-25T10:00:00.123+01:00\"",
                "\"2026-11-25t10:00:00.123456789012z\"", "\"2026-11-25T10:00:00\\u005a\"",
            ])
            .prop_map(str::to_string),
            1 => prop::sample::select(vec![
                "\"2026-13-01T00:00:00Z\"", "\"yesterday\"", "\"2026-11-25T10:00:00\"", "\"\"",
            ])
            .prop_map(str::to_string),
        ];
        match key {
            "\"timestamp\"" => prop_oneof![20 => timestamp, 1 => value()].boxed(),
            "\"severity\"" => prop_oneof![20 => severity, 1 => value()].boxed(),
            "\"source\"" | "\"message\"" => prop_oneof![20 => string(), 1 => value()].boxed(),
            _ => value().boxed(),
        }
    }

    /// A log object: the four fields in some order (one sometimes missing), extra fields,
    /// duplicates, whitespace.
    fn log_object() -> impl Strategy<Value = String> {
        let fields = prop::collection::vec(key(), 0..2).prop_flat_map(|extra| {
            let mut keys: Vec<String> =
                ["\"timestamp\"", "\"severity\"", "\"source\"", "\"message\""]
                    .map(str::to_string)
                    .to_vec();
            keys.extend(extra);
            let n = keys.len();
            let keep = prop_oneof![12 => Just(n), 1 => Just(n - 1)];
            (
                Just(keys),
                keep.prop_flat_map(move |k| {
                    prop::sample::subsequence((0..n).collect::<Vec<_>>(), k)
                }),
            )
                .prop_shuffle_keys()
        });
        fields
            .prop_flat_map(|keys| {
                let members: Vec<_> = keys
                    .into_iter()
                    .map(|k| (ws(), field_value(&k), ws(), Just(k)))
                    .collect();
                members
            })
            .prop_map(|members| {
                let members: Vec<_> = members
                    .into_iter()
                    .map(|(w1, v, w2, k)| format!("{w1}{k}{w2}:{v}"))
                    .collect();
                format!("{{{}}}", members.join(","))
            })
    }

    trait ShuffleKeys {
        fn prop_shuffle_keys(self) -> BoxedStrategy<Vec<String>>;
    }

    impl<S: Strategy<Value = (Vec<String>, Vec<usize>)> + 'static> ShuffleKeys for S {
        fn prop_shuffle_keys(self) -> BoxedStrategy<Vec<String>> {
            self.prop_map(|(keys, chosen)| chosen.into_iter().map(|i| keys[i].clone()).collect())
                .prop_shuffle()
                .boxed()
        }
    }

    /// A valid log object of varied shape: the fields in any order, escapes, unicode, extra
    /// fields with nested values, whitespace.
    fn valid_object() -> impl Strategy<Value = String> {
        let text = prop::collection::vec(
            prop_oneof![
                8 => "[a-zA-Z0-9 _./:-]{1,20}",
                1 => prop::sample::select(vec![
                    "é", "😀", "\\n", "\\\"", "\\\\", "\\u00e9", "\\ud83d\\ude00", "\\/",
                ])
                .prop_map(str::to_string),
            ],
            1..8,
        )
        .prop_map(|pieces| format!("\"{}\"", pieces.concat()));
        let timestamp = prop_oneof![
            4 => any::<i64>().prop_map(|n| n.to_string()),
            1 => Just("\"2026-11-25T10:00:00.25-03:30\"".to_string()),
        ];
        let severity = "(TRACE|debug|Info|WARN|warning|Error|FATAL|critical|notice|informational)"
            .prop_map(|s| format!("\"{s}\""));
        let extra = prop::sample::select(vec![
            "\"host\":\"node-3\"",
            "\"n\":-1.5e-3",
            "\"tags\":[1,{\"a\":null,\"b\":[true,false]},\"\\ud800\"]",
            "\"host\":{}",
            "\"x\":[[[]]]",
        ]);
        let ws = "[ \t\r\n]{0,2}";
        (
            timestamp,
            severity,
            text.clone(),
            text,
            prop::option::of(extra),
            ws,
        )
            .prop_flat_map(|(t, sev, src, msg, extra, ws)| {
                let mut members = vec![
                    format!("\"timestamp\":{t}"),
                    format!("\"severity\"{ws}:{sev}"),
                    format!("\"source\":{ws}{src}"),
                    format!("{ws}\"message\":{msg}"),
                ];
                members.extend(extra.map(str::to_string));
                Just(members).prop_shuffle()
            })
            .prop_map(|members| format!("{{{}}}", members.join(",")))
    }

    /// A payload: one object or an array of objects (sometimes something else), with leading
    /// whitespace that moves every byte across the 64-byte blocks.
    fn payload() -> impl Strategy<Value = String> {
        let element = prop_oneof![30 => log_object(), 1 => value()];
        prop_oneof![
            1 => (0usize..70, log_object()).prop_map(|(pad, o)| format!("{}{o}", " ".repeat(pad))),
            2 => (0usize..70, prop::collection::vec(valid_object(), 1..6)).prop_map(|(pad, objects)| {
                format!("{}[{}]", " ".repeat(pad), objects.join(","))
            }),
            3 => (0usize..70, prop::collection::vec((ws(), element), 1..5), ws(), prop::bool::weighted(0.05))
                .prop_map(|(pad, elements, end, trailing_comma)| {
                    let elements: Vec<_> = elements.into_iter().map(|(w, e)| w + &e).collect();
                    let comma = if trailing_comma { "," } else { "" };
                    format!("{}[{}{comma}{end}]", " ".repeat(pad), elements.join(","))
                }),
        ]
    }

    /// What can go wrong with a payload's bytes on the way: a cut, a byte changed, a byte
    /// inserted (invalid UTF-8 among them).
    #[derive(Debug, Clone)]
    enum Damage {
        None,
        Truncate(prop::sample::Index),
        Replace(prop::sample::Index, u8),
        Insert(prop::sample::Index, u8),
    }

    fn damage() -> impl Strategy<Value = Damage> {
        let byte = prop_oneof![
            prop::sample::select(b"{}[]:,\"\\ \t\nx0-e.".to_vec()),
            prop::sample::select(vec![0x00u8, 0x1f, 0x7f, 0x80, 0xbf, 0xc0, 0xe2, 0xf0, 0xff]),
        ];
        prop_oneof![
            12 => Just(Damage::None),
            1 => any::<prop::sample::Index>().prop_map(Damage::Truncate),
            1 => (any::<prop::sample::Index>(), byte.clone()).prop_map(|(i, b)| Damage::Replace(i, b)),
            1 => (any::<prop::sample::Index>(), byte).prop_map(|(i, b)| Damage::Insert(i, b)),
        ]
    }

    fn apply(payload: &str, damage: &Damage) -> Vec<u8> {
        let mut bytes = payload.as_bytes().to_vec();
        if bytes.is_empty() {
            return bytes;
        }
        match damage {
            Damage::None => {}
            Damage::Truncate(i) => bytes.truncate(i.index(bytes.len())),
            Damage::Replace(i, b) => {
                let at = i.index(bytes.len());
                bytes[at] = *b;
            }
            Damage::Insert(i, b) => {
                let at = i.index(bytes.len() + 1);
                bytes.insert(at, *b);
            }
        }
        bytes
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1000))]

        /// The fast path (each kernel) and the careful path agree on everything generated.
        #[test]
        fn fast_and_careful_paths_agree(payload in payload(), damage in damage()) {
            assert_agree(&apply(&payload, &damage));
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]

        /// ... and on every truncation of a generated packet.
        #[test]
        fn agree_on_every_truncation(payload in payload()) {
            let bytes = payload.as_bytes();
            for end in 0..=bytes.len() {
                assert_agree(&bytes[..end]);
            }
        }
    }

    /// The generators make valid packets often enough for agreement to mean something.
    #[test]
    fn generators_make_valid_packets_too() {
        use proptest::strategy::ValueTree;
        use proptest::test_runner::TestRunner;
        let mut runner = TestRunner::deterministic();
        let strategy = payload();
        let (mut valid, mut messages) = (0, 0);
        for _ in 0..500 {
            let payload = strategy.new_tree(&mut runner).unwrap().current();
            if let Some(n) = PacketValidator::default().count_if_valid(payload.as_bytes()) {
                valid += 1;
                messages += n;
            } else if std::env::var("SHOW").is_ok() {
                let why = match PacketValidator::default().parse(payload.as_bytes()) {
                    Ok(p) => format!("{:?}", p.invalid.first().map(|i| i.error.clone())),
                    Err(e) => e.to_string(),
                };
                eprintln!("{why} <- {payload}");
            }
        }
        assert!(
            valid >= 150 && messages >= 400,
            "{valid} valid payloads, {messages} messages"
        );
    }
}
