//! Shapes of volatile values: what a timestamp, a UUID, a JWT or a random token looks like, so that a value
//! that changes on every run can still be checked for keeping its form.
//!
//! A shape is the recorded value with its volatile parts written as slots: `{uuid}`, `{timestamp}`,
//! `"sid={token:32}; Path=/"`. Literal braces are doubled (`{{`, `}}`). A value matches a shape when its
//! literal parts are the same and each slot holds a value of that class; with a clock tolerance (frozen time),
//! time slots must also be within that many seconds of the recorded value.
//!
//! Written by hand rather than with regexes: the classes are few, a regex engine would add a dependency for
//! a dozen patterns, and matching needs to know the class of each slot anyway (for times).

use serde_json::Value;

/// Seconds in a (mean) year, for plausibility windows.
const YEAR_S: f64 = 365.25 * 86_400.0;
/// Epoch values accepted in replay: 2000-01-01 to 2100-01-01.
const EPOCH_MIN: f64 = 946_684_800.0;
const EPOCH_MAX: f64 = 4_102_444_800.0;
/// A value within this many years of the recording is a plausible epoch time when detecting.
const DETECT_YEARS: f64 = 5.0;
/// Random tokens are at least this long (shorter strings are too often words or codes).
const MIN_TOKEN: usize = 20;
/// Hex strings (digests, ids, `token_hex`) are at least this long.
const MIN_HEX: usize = 16;
/// Longer values are not examined (bodies of text are not volatile fields).
const MAX_VALUE: usize = 4096;

/// A class of volatile value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    /// `5f0c4e1e-8a43-4c1a-9a55-0d1b8d2b8f27`
    Uuid,
    /// RFC 3339 / ISO 8601 date and time: `2026-11-27T10:00:00.123Z`, `2026-11-27 10:00:00`.
    Timestamp,
    /// RFC 9110 HTTP date: `Fri, 27 Nov 2026 10:00:00 GMT`.
    HttpDate,
    /// Seconds since the epoch (10 digits, maybe with a fraction).
    EpochSeconds,
    /// Milliseconds since the epoch (13 digits).
    EpochMillis,
    /// A JSON Web Token: three base64url parts, the first an encoded JSON header.
    Jwt,
    /// A hex string of this length.
    Hex(usize),
    /// A random-looking token (letters, digits, `-`, `_`) of this length.
    Token(usize),
    /// A salted password hash in a modular-crypt or framework format: bcrypt (`$2b$12$...`), argon2
    /// (`$argon2id$v=19$...`), scrypt, PBKDF2 (`pbkdf2_sha256$...`, `pbkdf2:sha256:...`), sha-crypt.
    PasswordHash,
    /// The random suffix of a slug (`how-to-train-your-dragon-z8r7nu`): lower-case letters and digits.
    Suffix(usize),
}

impl Slot {
    pub fn name(self) -> String {
        match self {
            Slot::Uuid => "uuid".into(),
            Slot::Timestamp => "timestamp".into(),
            Slot::HttpDate => "http_date".into(),
            Slot::EpochSeconds => "epoch_s".into(),
            Slot::EpochMillis => "epoch_ms".into(),
            Slot::Jwt => "jwt".into(),
            Slot::Hex(n) => format!("hex:{n}"),
            Slot::Token(n) => format!("token:{n}"),
            Slot::PasswordHash => "password_hash".into(),
            Slot::Suffix(n) => format!("suffix:{n}"),
        }
    }

    fn parse(name: &str) -> Option<Slot> {
        let sized = |prefix: &str| name.strip_prefix(prefix).and_then(|n| n.parse::<usize>().ok()).filter(|n| *n > 0);
        Some(match name {
            "uuid" => Slot::Uuid,
            "timestamp" => Slot::Timestamp,
            "http_date" => Slot::HttpDate,
            "epoch_s" => Slot::EpochSeconds,
            "epoch_ms" => Slot::EpochMillis,
            "jwt" => Slot::Jwt,
            "password_hash" => Slot::PasswordHash,
            _ => {
                if let Some(n) = sized("hex:") {
                    Slot::Hex(n)
                } else if let Some(n) = sized("suffix:") {
                    Slot::Suffix(n)
                } else {
                    Slot::Token(sized("token:")?)
                }
            }
        })
    }

    /// Whether `s` is a value of this class (replay side: any value of the class, no entropy test).
    pub fn accepts(self, s: &str) -> bool {
        match self {
            Slot::Uuid => is_uuid(s),
            Slot::Timestamp => parse_timestamp(s).is_some(),
            Slot::HttpDate => parse_http_date(s).is_some(),
            Slot::EpochSeconds => epoch_seconds_text(s).is_some_and(|t| (EPOCH_MIN..EPOCH_MAX).contains(&t)),
            Slot::EpochMillis => {
                s.len() == 13
                    && s.bytes().all(|b| b.is_ascii_digit())
                    && s.parse::<f64>().is_ok_and(|ms| (EPOCH_MIN..EPOCH_MAX).contains(&(ms / 1000.0)))
            }
            Slot::Jwt => is_jwt(s),
            Slot::Hex(n) => s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit()),
            Slot::Token(n) => s.len() == n && s.bytes().all(is_token_byte),
            Slot::PasswordHash => is_password_hash(s),
            Slot::Suffix(n) => s.len() == n && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()),
        }
    }

    /// Seconds since the epoch of a time value of this class.
    pub fn seconds(self, s: &str) -> Option<f64> {
        match self {
            Slot::Timestamp => parse_timestamp(s),
            Slot::HttpDate => parse_http_date(s),
            Slot::EpochSeconds => epoch_seconds_text(s),
            Slot::EpochMillis => s.parse::<f64>().ok().map(|ms| ms / 1000.0),
            _ => None,
        }
    }

    pub fn is_time(self) -> bool {
        matches!(self, Slot::Timestamp | Slot::HttpDate | Slot::EpochSeconds | Slot::EpochMillis)
    }

    /// Candidate lengths of a value of this class at the start of `s`, longest first.
    fn lengths(self, s: &str) -> Vec<usize> {
        let fixed = |n: usize| if s.len() >= n { vec![n] } else { Vec::new() };
        let run = |ok: fn(u8) -> bool, min: usize| {
            let max = s.bytes().take_while(|b| ok(*b)).count();
            (min..=max).rev().filter(|n| s.is_char_boundary(*n)).collect::<Vec<_>>()
        };
        match self {
            Slot::Uuid => fixed(36),
            Slot::HttpDate => fixed(29),
            Slot::EpochMillis => fixed(13),
            Slot::Hex(n) | Slot::Token(n) | Slot::Suffix(n) => fixed(n),
            Slot::PasswordHash => run(|b| b.is_ascii_alphanumeric() || b"$./+=,:_-".contains(&b), 20),
            Slot::EpochSeconds => run(|b| b.is_ascii_digit() || b == b'.', 10),
            Slot::Timestamp => run(|b| b.is_ascii_digit() || b"-:.+TtZz ".contains(&b), 19),
            Slot::Jwt => run(|b| is_token_byte(b) || b == b'.', 10),
        }
    }
}

/// One piece of a shape.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    Slot(Slot),
}

/// A parsed shape (see the module documentation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shape {
    parts: Vec<Part>,
}

impl Shape {
    /// Parses `{uuid}`-style text. Unknown slot names and unbalanced braces are errors.
    pub fn parse(text: &str) -> crate::error::Result<Shape> {
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut chars = text.char_indices().peekable();
        while let Some((at, c)) = chars.next() {
            match c {
                '{' if chars.peek().map(|(_, c)| *c) == Some('{') => {
                    chars.next();
                    literal.push('{');
                }
                '}' if chars.peek().map(|(_, c)| *c) == Some('}') => {
                    chars.next();
                    literal.push('}');
                }
                '{' => {
                    let rest = &text[at + 1..];
                    let end = rest
                        .find('}')
                        .ok_or_else(|| crate::error::Error::input(format!("like {text:?}: a `{{` is not closed")))?;
                    let name = &rest[..end];
                    let slot = Slot::parse(name).ok_or_else(|| {
                        crate::error::Error::input(format!(
                            "like {text:?}: unknown slot {{{name}}} (known: uuid, timestamp, http_date, epoch_s, \
                             epoch_ms, jwt, hex:N, token:N; write a literal brace as {{{{)"
                        ))
                    })?;
                    if !literal.is_empty() {
                        parts.push(Part::Literal(std::mem::take(&mut literal)));
                    }
                    parts.push(Part::Slot(slot));
                    for _ in 0..=name.chars().count() {
                        chars.next();
                    }
                }
                '}' => {
                    return Err(crate::error::Error::input(format!(
                        "like {text:?}: a lone `}}` (write a literal brace as }}}})"
                    )));
                }
                c => literal.push(c),
            }
        }
        if !literal.is_empty() {
            parts.push(Part::Literal(literal));
        }
        Ok(Shape { parts })
    }

    /// What values of this shape are, in the plural, for messages (`password hashes`, `UUIDs`).
    pub fn plural(&self) -> &'static str {
        let slot = self.parts.iter().find_map(|p| match p {
            Part::Slot(s) => Some(*s),
            Part::Literal(_) => None,
        });
        match slot {
            Some(Slot::Uuid) => "UUIDs",
            Some(Slot::Timestamp | Slot::HttpDate) => "timestamps",
            Some(Slot::EpochSeconds | Slot::EpochMillis) => "epoch times",
            Some(Slot::Jwt) => "JWTs",
            Some(Slot::Hex(_)) => "hex strings",
            Some(Slot::Token(_)) => "random tokens",
            Some(Slot::PasswordHash) => "password hashes",
            Some(Slot::Suffix(_)) => "random slug suffixes",
            None => "values",
        }
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        for p in &self.parts {
            match p {
                Part::Literal(l) => out.push_str(&l.replace('{', "{{").replace('}', "}}")),
                Part::Slot(s) => {
                    out.push('{');
                    out.push_str(&s.name());
                    out.push('}');
                }
            }
        }
        out
    }

    fn single(slot: Slot) -> Shape {
        Shape { parts: vec![Part::Slot(slot)] }
    }

    /// The shape of a recorded string when it holds something volatile; `around` is the recording time
    /// (seconds since the epoch), for telling epoch times from other numbers.
    pub fn of(value: &str, around: f64) -> Option<Shape> {
        if value.len() > MAX_VALUE || value.len() < 10 {
            return None;
        }
        let whole = classify(value, around);
        // A slug with a random suffix keeps its words: `how-to-train-your-dragon-{suffix:8}`, not a token.
        if matches!(whole, None | Some(Slot::Token(_) | Slot::Hex(_)))
            && let Some(at) = slug_suffix(value)
        {
            let parts = vec![Part::Literal(value[..at].to_string()), Part::Slot(Slot::Suffix(value.len() - at))];
            return Some(Shape { parts });
        }
        if let Some(slot) = whole {
            return Some(Shape::single(slot));
        }
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut found = false;
        for (piece, is_token) in split(value, is_delimiter) {
            if !is_token {
                literal.push_str(piece);
                continue;
            }
            if let Some(slot) = classify(piece, around) {
                found = true;
                if !literal.is_empty() {
                    parts.push(Part::Literal(std::mem::take(&mut literal)));
                }
                parts.push(Part::Slot(slot));
                continue;
            }
            // `user:5f0c...`, `order.5f0c...`: look inside on the finer separators too.
            for (sub, sub_token) in split(piece, |c| c == ':' || c == '.') {
                match classify(sub, around).filter(|_| sub_token) {
                    Some(slot) => {
                        found = true;
                        if !literal.is_empty() {
                            parts.push(Part::Literal(std::mem::take(&mut literal)));
                        }
                        parts.push(Part::Slot(slot));
                    }
                    None => literal.push_str(sub),
                }
            }
        }
        if !literal.is_empty() {
            parts.push(Part::Literal(literal));
        }
        found.then_some(Shape { parts })
    }

    /// The shape of a recorded JSON number when it is an epoch time.
    pub fn of_number(n: &serde_json::Number, around: f64) -> Option<Shape> {
        let v = n.as_f64()?;
        let plausible = |t: f64| (t - around).abs() <= DETECT_YEARS * YEAR_S;
        let int_digits = (v.abs().trunc() as u64).to_string().len();
        if int_digits == 10 && plausible(v) {
            Some(Shape::single(Slot::EpochSeconds))
        } else if int_digits == 13 && n.is_u64() && plausible(v / 1000.0) {
            Some(Shape::single(Slot::EpochMillis))
        } else {
            None
        }
    }

    /// The shape of a recorded JSON value (strings and numbers; other values have none).
    pub fn of_json(value: &Value, around: f64) -> Option<Shape> {
        match value {
            Value::String(s) => Shape::of(s, around),
            Value::Number(n) => Shape::of_number(n, around),
            _ => None,
        }
    }

    pub fn matches(&self, s: &str) -> bool {
        self.captures(s).is_some()
    }

    /// The text each slot matched, in order, or `None` when `s` does not have this shape.
    pub fn captures<'a>(&self, s: &'a str) -> Option<Vec<(Slot, &'a str)>> {
        let mut caps = Vec::new();
        capture(&self.parts, s, &mut caps).then_some(caps)
    }

    /// Whether a JSON value has this shape: strings by their text, numbers as epoch times or by their text.
    pub fn matches_json(&self, value: &Value) -> bool {
        match value {
            Value::String(s) => self.matches(s),
            Value::Number(n) => match self.parts.as_slice() {
                [Part::Slot(Slot::EpochSeconds)] => n.as_f64().is_some_and(|t| (EPOCH_MIN..EPOCH_MAX).contains(&t)),
                [Part::Slot(Slot::EpochMillis)] => {
                    n.as_f64().is_some_and(|t| (EPOCH_MIN..EPOCH_MAX).contains(&(t / 1000.0)))
                }
                _ => self.matches(&n.to_string()),
            },
            _ => false,
        }
    }

    /// With a frozen clock: whether every time slot of `actual` is within `tolerance` seconds of the same
    /// slot in `expected`. Both must have this shape.
    pub fn times_close(&self, expected: &Value, actual: &Value, tolerance: f64) -> bool {
        let text = |v: &Value| match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        let (e, a) = (text(expected), text(actual));
        let (Some(ec), Some(ac)) = (self.captures(&e), self.captures(&a)) else { return false };
        ec.iter().zip(&ac).filter(|((slot, _), _)| slot.is_time()).all(|((slot, ev), (_, av))| {
            match (slot.seconds(ev), slot.seconds(av)) {
                (Some(x), Some(y)) => (x - y).abs() <= tolerance,
                _ => false,
            }
        })
    }

    pub fn has_time(&self) -> bool {
        self.parts.iter().any(|p| matches!(p, Part::Slot(s) if s.is_time()))
    }
}

fn capture<'a>(parts: &[Part], s: &'a str, caps: &mut Vec<(Slot, &'a str)>) -> bool {
    let Some((first, rest)) = parts.split_first() else { return s.is_empty() };
    match first {
        Part::Literal(l) => s.strip_prefix(l.as_str()).is_some_and(|tail| capture(rest, tail, caps)),
        Part::Slot(slot) => {
            for n in slot.lengths(s) {
                let Some(candidate) = s.get(..n) else { continue };
                if !slot.accepts(candidate) {
                    continue;
                }
                caps.push((*slot, candidate));
                if capture(rest, &s[n..], caps) {
                    return true;
                }
                caps.pop();
            }
            false
        }
    }
}

/// Characters that separate the parts of a compound value (`Bearer x`, `sid=x; Path=/`, `/users/x?y=z`).
fn is_delimiter(c: char) -> bool {
    c.is_whitespace() || ";,&?#\"'()<>[]{}/=|\\!*@".contains(c)
}

/// Splits into maximal runs of delimiters and non-delimiters; `true` marks a token (non-delimiter run).
pub fn split(s: &str, delimiter: impl Fn(char) -> bool) -> Vec<(&str, bool)> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut in_token = None;
    for (i, c) in s.char_indices() {
        let token = !delimiter(c);
        match in_token {
            Some(t) if t == token => {}
            Some(t) => {
                out.push((&s[start..i], t));
                start = i;
                in_token = Some(token);
            }
            None => in_token = Some(token),
        }
    }
    if let Some(t) = in_token {
        out.push((&s[start..], t));
    }
    out
}

/// Splits a value into the tokens that [`Shape::of`] examines, keeping the delimiters between them.
pub fn tokens(s: &str) -> Vec<(&str, bool)> {
    split(s, is_delimiter)
}

/// The volatile class of a whole value, if any (record side: tokens must also look random).
fn classify(s: &str, around: f64) -> Option<Slot> {
    if is_password_hash(s) {
        return Some(Slot::PasswordHash);
    }
    if is_uuid(s) {
        return Some(Slot::Uuid);
    }
    if is_jwt(s) {
        return Some(Slot::Jwt);
    }
    if parse_timestamp(s).is_some() {
        return Some(Slot::Timestamp);
    }
    if parse_http_date(s).is_some() {
        return Some(Slot::HttpDate);
    }
    let plausible = |t: f64| (t - around).abs() <= DETECT_YEARS * YEAR_S;
    if s.bytes().all(|b| b.is_ascii_digit()) {
        return match s.len() {
            10 => s.parse::<f64>().ok().filter(|t| plausible(*t)).map(|_| Slot::EpochSeconds),
            13 => s.parse::<f64>().ok().filter(|t| plausible(t / 1000.0)).map(|_| Slot::EpochMillis),
            _ => None,
        };
    }
    if looks_hex(s) {
        return Some(Slot::Hex(s.len()));
    }
    if looks_random(s) {
        return Some(Slot::Token(s.len()));
    }
    None
}

fn is_uuid(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

/// Prefixes of the salted password-hash formats of crypt(3), passlib, Django and Werkzeug.
const HASH_PREFIXES: &[&str] = &[
    "$2a$",
    "$2b$",
    "$2x$",
    "$2y$",
    "$argon2i$",
    "$argon2d$",
    "$argon2id$",
    "$scrypt$",
    "$7$",
    "$pbkdf2",
    "$5$",
    "$6$",
    "argon2$",
    "bcrypt$",
    "bcrypt_sha256$",
    "pbkdf2_sha256$",
    "pbkdf2_sha1$",
    "scrypt$",
    "scrypt:",
    "pbkdf2:",
];

/// A salted password hash: a known scheme prefix, no spaces, and a digest of at least 16 characters after the
/// last `$`.
fn is_password_hash(s: &str) -> bool {
    let digest = s.rsplit('$').next().unwrap_or("");
    HASH_PREFIXES.iter().any(|p| s.starts_with(p))
        && s.len() <= 512
        && !s.contains(char::is_whitespace)
        && digest.len() >= 16
        && digest.bytes().all(|b| b.is_ascii_alphanumeric() || b"./+=".contains(&b))
}

/// `words-joined-by-dashes-z8r7nu`: a slug of at least two words whose last part is 5 to 12 lower-case letters
/// and digits that looks random: with a digit (`z8r7nu`, `43846321`), or four consonants in a row
/// (`aesgtj`), which words seldom have. Returns where that suffix starts.
fn slug_suffix(s: &str) -> Option<usize> {
    let (head, tail) = s.rsplit_once('-')?;
    let slug_byte = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let words = head.split('-').filter(|w| !w.is_empty() && w.bytes().all(slug_byte)).count();
    let consonant = |b: &u8| b.is_ascii_lowercase() && !b"aeiou".contains(b);
    let longest_consonants = tail.as_bytes().split(|b| !consonant(b)).map(<[u8]>::len).max().unwrap_or(0);
    let random = tail.bytes().any(|b| b.is_ascii_digit()) || longest_consonants >= 4;
    let suffix = (5..=12).contains(&tail.len()) && tail.bytes().all(slug_byte) && random;
    (suffix && words >= 2 && words == head.split('-').count() && head.bytes().any(|b| b.is_ascii_lowercase()))
        .then(|| s.len() - tail.len())
}

fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
}

fn is_jwt(s: &str) -> bool {
    let parts: Vec<&str> = s.split('.').collect();
    parts.len() == 3
        && s.starts_with("eyJ")
        && parts[0].len() >= 10
        && !parts[1].is_empty()
        && parts.iter().all(|p| p.bytes().all(is_token_byte))
}

/// Hex of a digest or random id: long enough, one case, with digits and letters.
fn looks_hex(s: &str) -> bool {
    s.len() >= MIN_HEX
        && s.bytes().all(|b| b.is_ascii_hexdigit())
        && s.bytes().any(|b| b.is_ascii_digit())
        && s.bytes().any(|b| b.is_ascii_alphabetic())
        && (s.bytes().all(|b| !b.is_ascii_uppercase()) || s.bytes().all(|b| !b.is_ascii_lowercase()))
}

/// A random token: long, of token characters, with digits, and mixed like random text is: characters of
/// different kinds (lower, upper, digit, punctuation) follow each other often, and few repeat. Words, codes
/// and dates (`ProductName2024`, `order-2026-11-27`) fail these tests.
fn looks_random(s: &str) -> bool {
    if s.len() < MIN_TOKEN || !s.bytes().all(is_token_byte) || !s.bytes().any(|b| b.is_ascii_digit()) {
        return false;
    }
    let kind = |b: u8| {
        if b.is_ascii_lowercase() {
            0
        } else if b.is_ascii_uppercase() {
            1
        } else if b.is_ascii_digit() {
            2
        } else {
            3
        }
    };
    let bytes = s.as_bytes();
    let changes = bytes.windows(2).filter(|w| kind(w[0]) != kind(w[1])).count();
    let change_ratio = changes as f64 / (bytes.len() - 1) as f64;
    let mut counts = [0usize; 128];
    for b in bytes {
        counts[*b as usize] += 1;
    }
    let n = bytes.len() as f64;
    let entropy: f64 = counts.iter().filter(|c| **c > 0).map(|c| *c as f64 / n).map(|p| -p * p.log2()).sum();
    // Random text over 62+ symbols reaches nearly log2(len) bits per character for short strings.
    let expected = n.min(64.0).log2();
    change_ratio >= 0.3 && entropy >= 0.8 * expected
}

/// `1764237600` or `1764237600.123`: seconds since the epoch.
fn epoch_seconds_text(s: &str) -> Option<f64> {
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    if int.len() != 10 || !int.bytes().all(|b| b.is_ascii_digit()) || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if s.ends_with('.') {
        return None;
    }
    s.parse().ok()
}

fn digits(s: &str, range: std::ops::Range<usize>) -> Option<u32> {
    let t = s.get(range)?;
    if t.bytes().all(|b| b.is_ascii_digit()) { t.parse().ok() } else { None }
}

fn unix(year: u32, month: u32, day: u32, hour: u32, minute: u32, second: u32) -> Option<f64> {
    let month = time::Month::try_from(u8::try_from(month).ok()?).ok()?;
    let date = time::Date::from_calendar_date(i32::try_from(year).ok()?, month, u8::try_from(day).ok()?).ok()?;
    let t =
        time::Time::from_hms(u8::try_from(hour).ok()?, u8::try_from(minute).ok()?, u8::try_from(second).ok()?).ok()?;
    Some(time::PrimitiveDateTime::new(date, t).assume_utc().unix_timestamp() as f64)
}

/// `2026-11-27T10:00:00Z`, `2026-11-27T10:00:00.123456+01:00`, `2026-11-27 10:00:00` (no offset: UTC).
pub fn parse_timestamp(s: &str) -> Option<f64> {
    let b = s.as_bytes();
    if b.len() < 19 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let base = unix(
        digits(s, 0..4)?,
        digits(s, 5..7)?,
        digits(s, 8..10)?,
        digits(s, 11..13)?,
        digits(s, 14..16)?,
        digits(s, 17..19)?,
    )?;
    let mut rest = &s[19..];
    let mut fraction = 0.0;
    if let Some(f) = rest.strip_prefix('.').or_else(|| rest.strip_prefix(',')) {
        let n = f.bytes().take_while(|b| b.is_ascii_digit()).count();
        if n == 0 {
            return None;
        }
        fraction = format!("0.{}", &f[..n]).parse().ok()?;
        rest = &f[n..];
    }
    let offset = match rest {
        "" | "Z" | "z" => 0.0,
        _ => {
            let sign = match rest.as_bytes()[0] {
                b'+' => 1.0,
                b'-' => -1.0,
                _ => return None,
            };
            let hm = rest[1..].replace(':', "");
            if !matches!(hm.len(), 2 | 4) || !hm.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            let hours: f64 = hm[..2].parse().ok()?;
            let minutes: f64 = if hm.len() == 4 { hm[2..].parse().ok()? } else { 0.0 };
            sign * (hours * 3600.0 + minutes * 60.0)
        }
    };
    Some(base + fraction - offset)
}

/// `Fri, 27 Nov 2026 10:00:00 GMT`.
pub fn parse_http_date(s: &str) -> Option<f64> {
    let b = s.as_bytes();
    if b.len() != 29 || &s[3..5] != ", " || &s[25..] != " GMT" || b[7] != b' ' || b[11] != b' ' || b[16] != b' ' {
        return None;
    }
    if !["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"].contains(&&s[..3]) {
        return None;
    }
    const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    let month = MONTHS.iter().position(|m| *m == &s[8..11])? as u32 + 1;
    if b[19] != b':' || b[22] != b':' {
        return None;
    }
    unix(digits(s, 12..16)?, month, digits(s, 5..7)?, digits(s, 17..19)?, digits(s, 20..22)?, digits(s, 23..25)?)
}

#[cfg(test)]
mod tests {

    #[test]
    fn password_hashes_and_slug_suffixes() {
        let hashes = [
            "$2b$12$KIXQJQ0n1mZc5y1uE4xJ3eQ8yq9m0r8kzP1Yb4rVd6c7wQxT1hG2a",
            "$argon2id$v=19$m=65536,t=3,p=4$c2FsdHNhbHRzYWx0$Zm9vYmFyYmF6cXV4Zm9vYmFyYmF6cXV4",
            "pbkdf2_sha256$600000$abcdefghijkl$Zm9vYmFyYmF6cXV4Zm9vYmFyYmF6cXV4PQ=",
            "scrypt:32768:8:1$abcdefgh$0123456789abcdef0123456789abcdef",
            "pbkdf2:sha256:600000$saltsalt$0123456789abcdef0123456789abcdef",
            "$pbkdf2-sha256$29000$N2YuJWTMWYtRyhnDOAdgrA$O1PYuMAXu4u5zq8AFJ3uAKLj5HjxLVu2y2Iez9aKl4w",
        ];
        for h in hashes {
            let shape = Shape::of(h, 0.0).unwrap_or_else(|| panic!("{h} has no shape"));
            assert_eq!(shape.render(), "{password_hash}", "{h}");
        }
        let bcrypt = Shape::of(hashes[0], 0.0).unwrap();
        assert!(bcrypt.matches("$2b$12$abcdefghijklmnopqrstuuq8yq9m0r8kzP1Yb4rVd6c7wQxT1hG2a"));
        assert!(!bcrypt.matches("hunter2-password-in-clear"));
        assert_eq!(Shape::of("$2b$12$short", 0.0), None);

        let slug = Shape::of("how-to-train-your-dragon-z8r7nu", 0.0).unwrap();
        assert_eq!(slug.render(), "how-to-train-your-dragon-{suffix:6}");
        assert!(slug.matches("how-to-train-your-dragon-k2m9xq"));
        assert!(!slug.matches("how-to-tame-your-dragon-k2m9xq"));
        assert!(Shape::of("ann-lee-aesgtj", 0.0).is_some());
        let long = Shape::of("how-to-train-your-dragon-1a2b3c4d", 0.0).unwrap();
        assert_eq!(long.render(), "how-to-train-your-dragon-{suffix:8}");
        assert_eq!(Shape::of("5f0c4e1e-8a43-4c1a-9a55-0d1b8d2b8f27", 0.0).unwrap().render(), "{uuid}");
        assert!(Shape::of("ann-lee-43846321", 0.0).is_some_and(|s| s.matches("ann-lee-399f5e8f")));
        for plain in ["order-2024", "my-post-title", "ord-apple-2", "sku-a1b2", "how-to-be-strong", "v-12345"] {
            assert_eq!(Shape::of(plain, 0.0), None, "{plain}");
        }
    }
    use super::*;

    const AROUND: f64 = 1_795_730_000.0; // 2026-11-26

    fn shape(s: &str) -> Option<String> {
        Shape::of(s, AROUND).map(|s| s.render())
    }

    #[test]
    fn whole_values() {
        assert_eq!(shape("5f0c4e1e-8a43-4c1a-9a55-0d1b8d2b8f27").as_deref(), Some("{uuid}"));
        assert_eq!(shape("2026-11-27T10:00:00.123456+00:00").as_deref(), Some("{timestamp}"));
        assert_eq!(shape("2026-11-27T10:00:00Z").as_deref(), Some("{timestamp}"));
        assert_eq!(shape("2026-11-27 10:00:00").as_deref(), Some("{timestamp}"));
        assert_eq!(shape("Fri, 27 Nov 2026 10:00:00 GMT").as_deref(), Some("{http_date}"));
        assert_eq!(shape("1795730921").as_deref(), Some("{epoch_s}"));
        assert_eq!(shape("1795730921123").as_deref(), Some("{epoch_ms}"));
        assert_eq!(
            shape("eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJhbm4ifQ.c2lnbmF0dXJlLWJ5dGVz").as_deref(),
            Some("{jwt}")
        );
        assert_eq!(
            shape("9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08").as_deref(),
            Some("{hex:64}")
        );
        assert_eq!(shape("Qm9vdF9z3Xk-aL0qP7wZ1nT8yR4cV2bE").as_deref(), Some("{token:32}"));
        assert_eq!(shape("01ARZ3NDEKTSV4RRFFQ69G5FAV").as_deref(), Some("{token:26}"));
    }

    #[test]
    fn ordinary_values_are_not_volatile() {
        for s in [
            "ProductName2024Edition",
            "order-2026-11-27",
            "hello world, how are you",
            "application/json",
            "2026-11-27",
            "1234567890",   // a 10-digit number far from the recording time
            "+14155552671", // a phone number
            "user12345678901234567",
            "abcdefabcdefabcdef", // hex letters only
            "the-quick-brown-fox-jumps",
        ] {
            assert_eq!(shape(s), None, "{s}");
        }
    }

    #[test]
    fn compound_values_keep_their_literal_parts() {
        assert_eq!(
            shape("sid=Qm9vdF9z3Xk-aL0qP7wZ1nT8yR4cV2bE; Path=/; HttpOnly").as_deref(),
            Some("sid={token:32}; Path=/; HttpOnly")
        );
        assert_eq!(
            shape("/api/users/5f0c4e1e-8a43-4c1a-9a55-0d1b8d2b8f27?x=1").as_deref(),
            Some("/api/users/{uuid}?x=1")
        );
        assert_eq!(shape("user:5f0c4e1e-8a43-4c1a-9a55-0d1b8d2b8f27").as_deref(), Some("user:{uuid}"));
        assert_eq!(shape("created {at} 2026-11-27T10:00:00Z").as_deref(), Some("created {{at}} {timestamp}"));
    }

    #[test]
    fn shapes_match_other_values_of_their_class_only() {
        let s = Shape::parse("sid={token:32}; Path=/").unwrap();
        assert!(s.matches("sid=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA9; Path=/"));
        assert!(!s.matches("sid=short; Path=/"));
        assert!(!s.matches("sid=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA9; Path=/x"));
        let t = Shape::parse("{timestamp}").unwrap();
        assert!(t.matches("2030-01-01T00:00:00Z"));
        assert!(!t.matches("yesterday"));
        assert!(t.matches_json(&Value::String("2030-01-01 00:00:00.5".into())));
        let e = Shape::parse("{epoch_s}").unwrap();
        assert!(e.matches_json(&serde_json::json!(1795730921.25)));
        assert!(!e.matches_json(&serde_json::json!(12)));
        let braces = Shape::parse("created {{at}} {timestamp}").unwrap();
        assert!(braces.matches("created {at} 2026-11-27T10:00:00Z"));
        assert!(Shape::parse("{nope}").is_err());
        assert!(Shape::parse("a}b").is_err());
    }

    #[test]
    fn time_slots_compare_with_a_tolerance() {
        let t = Shape::parse("at {timestamp}").unwrap();
        let e = Value::String("at 2026-11-27T10:00:00Z".into());
        assert!(t.times_close(&e, &Value::String("at 2026-11-27T11:00:01+01:00".into()), 2.0));
        assert!(!t.times_close(&e, &Value::String("at 2026-11-27T10:00:05Z".into()), 2.0));
        let n = Shape::parse("{epoch_ms}").unwrap();
        assert!(n.times_close(&serde_json::json!(1795730921000u64), &serde_json::json!(1795730922000u64), 1.5));
    }

    /// Random tokens as apps make them (`secrets.token_urlsafe`, base62 API keys, `token_hex`) are flagged
    /// nearly always; a deterministic generator keeps the test stable.
    #[test]
    fn random_tokens_are_recognised() {
        let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let alphabets = [
            "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_",
            "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789",
            "0123456789abcdef",
        ];
        for alphabet in alphabets {
            let chars: Vec<char> = alphabet.chars().collect();
            for len in [22, 32, 43, 48] {
                let mut flagged = 0;
                for _ in 0..200 {
                    let s: String = (0..len).map(|_| chars[(next() % chars.len() as u64) as usize]).collect();
                    if Shape::of(&s, AROUND).is_some() {
                        flagged += 1;
                    }
                }
                assert!(flagged >= 196, "{alphabet} x {len}: {flagged} of 200");
            }
        }
    }

    #[test]
    fn numbers_near_the_recording_are_epochs() {
        let n = |v: serde_json::Value| match v {
            Value::Number(n) => Shape::of_number(&n, AROUND).map(|s| s.render()),
            _ => None,
        };
        assert_eq!(n(serde_json::json!(1795730921)).as_deref(), Some("{epoch_s}"));
        assert_eq!(n(serde_json::json!(1795730921.5)).as_deref(), Some("{epoch_s}"));
        assert_eq!(n(serde_json::json!(1795730921123u64)).as_deref(), Some("{epoch_ms}"));
        assert_eq!(n(serde_json::json!(42)), None);
        assert_eq!(n(serde_json::json!(1234567890)), None);
    }
}
