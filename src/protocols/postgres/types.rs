//! Values on the wire <-> readable values in the mocks, per type OID, in text and binary formats.
//!
//! A readable value is a JSON value: numbers for integers and floats, booleans, strings for everything with
//! a text form (numeric keeps its scale as `"12.50"`, timestamps `"2024-05-01 10:00:00.5"`, bytea
//! `"\\x0102"`, uuid, json), arrays for binary arrays. A recorded value is kept readable only when encoding
//! it again gives exactly the bytes the server sent; otherwise it is stored as `{base64: ...}` so replay
//! stays byte-exact. The binary layouts are PostgreSQL's `*_send` functions; postgres-protocol covers some
//! of them but not numeric, and the readable text forms are doppel's own, so this is done here.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Map, Number, Value};

use super::wire::Format;

/// Built-in types doppel knows by name: (oid, name, array element oid or 0, fixed size or -1).
const TYPES: &[(u32, &str, u32, i16)] = &[
    (0, "unspecified", 0, -1),
    (16, "bool", 0, 1),
    (17, "bytea", 0, -1),
    (18, "char", 0, 1),
    (19, "name", 0, 64),
    (20, "int8", 0, 8),
    (21, "int2", 0, 2),
    (22, "int2vector", 0, -1),
    (23, "int4", 0, 4),
    (24, "regproc", 0, 4),
    (25, "text", 0, -1),
    (26, "oid", 0, 4),
    (27, "tid", 0, 6),
    (28, "xid", 0, 4),
    (29, "cid", 0, 4),
    (30, "oidvector", 0, -1),
    (114, "json", 0, -1),
    (142, "xml", 0, -1),
    (194, "pg_node_tree", 0, -1),
    (199, "_json", 114, -1),
    (650, "cidr", 0, -1),
    (700, "float4", 0, 4),
    (701, "float8", 0, 8),
    (705, "unknown", 0, -2),
    (790, "money", 0, 8),
    (869, "inet", 0, -1),
    (1000, "_bool", 16, -1),
    (1001, "_bytea", 17, -1),
    (1002, "_char", 18, -1),
    (1003, "_name", 19, -1),
    (1005, "_int2", 21, -1),
    (1007, "_int4", 23, -1),
    (1009, "_text", 25, -1),
    (1014, "_bpchar", 1042, -1),
    (1015, "_varchar", 1043, -1),
    (1016, "_int8", 20, -1),
    (1021, "_float4", 700, -1),
    (1022, "_float8", 701, -1),
    (1028, "_oid", 26, -1),
    (1042, "bpchar", 0, -1),
    (1043, "varchar", 0, -1),
    (1082, "date", 0, 4),
    (1083, "time", 0, 8),
    (1114, "timestamp", 0, 8),
    (1115, "_timestamp", 1114, -1),
    (1182, "_date", 1082, -1),
    (1183, "_time", 1083, -1),
    (1184, "timestamptz", 0, 8),
    (1185, "_timestamptz", 1184, -1),
    (1186, "interval", 0, 16),
    (1231, "_numeric", 1700, -1),
    (1266, "timetz", 0, 12),
    (1700, "numeric", 0, -1),
    (2205, "regclass", 0, 4),
    (2206, "regtype", 0, 4),
    (2249, "record", 0, -1),
    (2278, "void", 0, 4),
    (2950, "uuid", 0, 16),
    (2951, "_uuid", 2950, -1),
    (3802, "jsonb", 0, -1),
    (3807, "_jsonb", 3802, -1),
];

/// The name of a type OID: `int4`, or the number for types doppel does not know (`"16385"`).
pub fn type_name(oid: u32) -> String {
    TYPES.iter().find(|t| t.0 == oid).map(|t| t.1.to_string()).unwrap_or_else(|| oid.to_string())
}

/// The OID of a name written by `type_name`.
pub fn type_oid(name: &str) -> Option<u32> {
    TYPES.iter().find(|t| t.1 == name).map(|t| t.0).or_else(|| name.parse().ok())
}

fn element_of(oid: u32) -> Option<u32> {
    TYPES.iter().find(|t| t.0 == oid && t.2 != 0).map(|t| t.2)
}

/// The fixed size of a type as RowDescription reports it, or -1.
pub fn type_size(oid: u32) -> i16 {
    TYPES.iter().find(|t| t.0 == oid).map(|t| t.3).unwrap_or(-1)
}

/// A readable value for bytes the server or the app sent; byte-exact (falls back to `{base64}`).
pub fn decode(oid: u32, format: Format, raw: &[u8]) -> Value {
    if let Some(v) = readable(oid, format, raw)
        && encode(oid, format, &v).as_deref() == Some(raw)
    {
        return v;
    }
    raw_value(raw)
}

fn raw_value(raw: &[u8]) -> Value {
    let mut m = Map::new();
    m.insert("base64".into(), Value::String(B64.encode(raw)));
    Value::Object(m)
}

/// A value as an optional cell (`None` is SQL NULL).
pub fn decode_cell(oid: u32, format: Format, raw: Option<&[u8]>) -> Value {
    raw.map(|r| decode(oid, format, r)).unwrap_or(Value::Null)
}

/// Bytes of a readable value in the given format; `None` when the value cannot be written as that type.
pub fn encode(oid: u32, format: Format, v: &Value) -> Option<Vec<u8>> {
    if let Value::Object(m) = v {
        return m.get("base64").and_then(Value::as_str).and_then(|b| B64.decode(b).ok());
    }
    match format {
        Format::Text => encode_text(oid, v),
        Format::Binary => encode_binary(oid, v),
    }
}

/// An encoded cell: `Value::Null` is SQL NULL.
pub fn encode_cell(oid: u32, format: Format, v: &Value) -> crate::error::Result<Option<Vec<u8>>> {
    if v.is_null() {
        return Ok(None);
    }
    encode(oid, format, v).map(Some).ok_or_else(|| {
        crate::error::Error::input(format!(
            "cannot write {v} as {} in {} format",
            type_name(oid),
            if format == Format::Binary { "binary" } else { "text" }
        ))
    })
}

fn readable(oid: u32, format: Format, raw: &[u8]) -> Option<Value> {
    match format {
        Format::Text => readable_text(oid, raw),
        Format::Binary => readable_binary(oid, raw),
    }
}

fn readable_text(oid: u32, raw: &[u8]) -> Option<Value> {
    let s = std::str::from_utf8(raw).ok()?;
    Some(match oid {
        20 | 21 | 23 | 26 => match s.parse::<i64>() {
            Ok(n) if n.to_string() == s => Value::from(n),
            _ => Value::String(s.into()),
        },
        16 => match s {
            "t" => Value::Bool(true),
            "f" => Value::Bool(false),
            _ => Value::String(s.into()),
        },
        _ => Value::String(s.into()),
    })
}

fn encode_text(oid: u32, v: &Value) -> Option<Vec<u8>> {
    Some(match v {
        Value::String(s) => s.as_bytes().to_vec(),
        Value::Bool(b) => {
            if *b {
                b"t".to_vec()
            } else {
                b"f".to_vec()
            }
        }
        Value::Number(n) => n.to_string().into_bytes(),
        Value::Array(items) => {
            // Arrays are readable as lists only when recorded in binary; text is written PostgreSQL's way.
            let elem = element_of(oid)?;
            let mut out = b"{".to_vec();
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                match item {
                    Value::Null => out.extend_from_slice(b"NULL"),
                    Value::Array(_) => out.extend(encode_text(oid, item)?),
                    Value::String(_) => {
                        let text = encode_text(elem, item)?;
                        out.push(b'"');
                        for b in text {
                            if b == b'"' || b == b'\\' {
                                out.push(b'\\');
                            }
                            out.push(b);
                        }
                        out.push(b'"');
                    }
                    other => out.extend(encode_text(elem, other)?),
                }
            }
            out.push(b'}');
            out
        }
        Value::Null | Value::Object(_) => return None,
    })
}

fn be_i16(b: &[u8]) -> Option<i16> {
    Some(i16::from_be_bytes(b.try_into().ok()?))
}
fn be_i32(b: &[u8]) -> Option<i32> {
    Some(i32::from_be_bytes(b.try_into().ok()?))
}
fn be_i64(b: &[u8]) -> Option<i64> {
    Some(i64::from_be_bytes(b.try_into().ok()?))
}

fn float_value(f: f64) -> Value {
    if f.is_nan() {
        Value::String("NaN".into())
    } else if f.is_infinite() {
        Value::String(if f > 0.0 { "Infinity" } else { "-Infinity" }.into())
    } else {
        Number::from_f64(f).map(Value::Number).unwrap_or(Value::Null)
    }
}

fn value_f64(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => match s.as_str() {
            "NaN" => Some(f64::NAN),
            "Infinity" => Some(f64::INFINITY),
            "-Infinity" => Some(f64::NEG_INFINITY),
            other => other.parse().ok(),
        },
        _ => None,
    }
}

fn value_i64(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

fn readable_binary(oid: u32, raw: &[u8]) -> Option<Value> {
    Some(match oid {
        16 => match raw {
            [0] => Value::Bool(false),
            [1] => Value::Bool(true),
            _ => return None,
        },
        21 => Value::from(be_i16(raw)?),
        23 => Value::from(be_i32(raw)?),
        20 => Value::from(be_i64(raw)?),
        26 | 24 | 2205 | 2206 => Value::from(be_i32(raw)? as u32),
        700 => {
            let f = f32::from_be_bytes(raw.try_into().ok()?);
            // Through its shortest decimal form, so 0.1f32 reads as 0.1 and not 0.10000000149011612.
            if f.is_finite() { float_value(f.to_string().parse().ok()?) } else { float_value(f as f64) }
        }
        701 => float_value(f64::from_be_bytes(raw.try_into().ok()?)),
        25 | 18 | 19 | 114 | 142 | 194 | 705 | 1042 | 1043 => Value::String(std::str::from_utf8(raw).ok()?.into()),
        3802 => match raw.split_first() {
            Some((1, rest)) => Value::String(std::str::from_utf8(rest).ok()?.into()),
            _ => return None,
        },
        17 => Value::String(bytea_hex(raw)),
        2950 => Value::String(uuid_text(raw)?),
        1082 => Value::String(date_text(be_i32(raw)?)?),
        1083 => Value::String(time_text(be_i64(raw)?)?),
        1114 => Value::String(timestamp_text(be_i64(raw)?, "")?),
        1184 => Value::String(timestamp_text(be_i64(raw)?, "+00")?),
        1700 => Value::String(numeric_text(raw)?),
        _ => return readable_array(oid, raw),
    })
}

fn encode_binary(oid: u32, v: &Value) -> Option<Vec<u8>> {
    Some(match oid {
        16 => vec![u8::from(v.as_bool()?)],
        21 => i16::try_from(value_i64(v)?).ok()?.to_be_bytes().to_vec(),
        23 => i32::try_from(value_i64(v)?).ok()?.to_be_bytes().to_vec(),
        20 => value_i64(v)?.to_be_bytes().to_vec(),
        26 | 24 | 2205 | 2206 => u32::try_from(value_i64(v)?).ok()?.to_be_bytes().to_vec(),
        700 => (value_f64(v)? as f32).to_be_bytes().to_vec(),
        701 => value_f64(v)?.to_be_bytes().to_vec(),
        25 | 18 | 19 | 114 | 142 | 194 | 705 | 1042 | 1043 => v.as_str()?.as_bytes().to_vec(),
        3802 => {
            let mut out = vec![1];
            out.extend_from_slice(v.as_str()?.as_bytes());
            out
        }
        17 => parse_bytea_hex(v.as_str()?)?,
        2950 => parse_uuid(v.as_str()?)?,
        1082 => parse_date(v.as_str()?)?.to_be_bytes().to_vec(),
        1083 => parse_time(v.as_str()?)?.to_be_bytes().to_vec(),
        1114 => parse_timestamp(v.as_str()?, "")?.to_be_bytes().to_vec(),
        1184 => parse_timestamp(v.as_str()?, "+00")?.to_be_bytes().to_vec(),
        1700 => parse_numeric(v.as_str()?)?,
        _ => encode_array(oid, v)?,
    })
}

fn bytea_hex(raw: &[u8]) -> String {
    let mut s = String::with_capacity(2 + raw.len() * 2);
    s.push_str("\\x");
    for b in raw {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

fn parse_bytea_hex(s: &str) -> Option<Vec<u8>> {
    let hex = s.strip_prefix("\\x")?;
    if hex.len() % 2 != 0 {
        return None;
    }
    (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok()).collect()
}

fn uuid_text(raw: &[u8]) -> Option<String> {
    if raw.len() != 16 {
        return None;
    }
    let h: String = raw.iter().map(|b| format!("{b:02x}")).collect();
    Some(format!("{}-{}-{}-{}-{}", &h[..8], &h[8..12], &h[12..16], &h[16..20], &h[20..]))
}

fn parse_uuid(s: &str) -> Option<Vec<u8>> {
    let hex: String = s.chars().filter(|c| *c != '-').collect();
    if hex.len() != 32 {
        return None;
    }
    parse_bytea_hex(&format!("\\x{hex}"))
}

/// Julian day number of 2000-01-01, PostgreSQL's epoch for dates and timestamps.
const PG_EPOCH_JDN: i32 = 2_451_545;
const MICROS_PER_DAY: i64 = 86_400_000_000;

fn date_text(days: i32) -> Option<String> {
    match days {
        i32::MAX => return Some("infinity".into()),
        i32::MIN => return Some("-infinity".into()),
        _ => {}
    }
    let d = time::Date::from_julian_day(PG_EPOCH_JDN.checked_add(days)?).ok()?;
    if d.year() < 1 {
        return None; // BC dates are written differently; kept as base64
    }
    Some(format!("{:04}-{:02}-{:02}", d.year(), d.month() as u8, d.day()))
}

fn parse_date(s: &str) -> Option<i32> {
    match s {
        "infinity" => return Some(i32::MAX),
        "-infinity" => return Some(i32::MIN),
        _ => {}
    }
    let mut parts = s.splitn(3, '-');
    let y: i32 = parts.next()?.parse().ok()?;
    let m: u8 = parts.next()?.parse().ok()?;
    let d: u8 = parts.next()?.parse().ok()?;
    let date = time::Date::from_calendar_date(y, time::Month::try_from(m).ok()?, d).ok()?;
    Some(date.to_julian_day() - PG_EPOCH_JDN)
}

fn time_text(micros: i64) -> Option<String> {
    if !(0..=MICROS_PER_DAY).contains(&micros) {
        return None;
    }
    let secs = micros / 1_000_000;
    let frac = micros % 1_000_000;
    let mut s = format!("{:02}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60);
    if frac > 0 {
        let f = format!(".{frac:06}");
        s.push_str(f.trim_end_matches('0'));
    }
    Some(s)
}

fn parse_time(s: &str) -> Option<i64> {
    let (hms, frac) = s.split_once('.').unwrap_or((s, ""));
    let mut p = hms.split(':');
    let h: i64 = p.next()?.parse().ok()?;
    let m: i64 = p.next()?.parse().ok()?;
    let sec: i64 = p.next()?.parse().ok()?;
    if p.next().is_some() || frac.len() > 6 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let micros: i64 = if frac.is_empty() { 0 } else { format!("{frac:0<6}").parse().ok()? };
    Some(((h * 60 + m) * 60 + sec) * 1_000_000 + micros)
}

fn timestamp_text(micros: i64, zone: &str) -> Option<String> {
    match micros {
        i64::MAX => return Some("infinity".into()),
        i64::MIN => return Some("-infinity".into()),
        _ => {}
    }
    let days = i32::try_from(micros.div_euclid(MICROS_PER_DAY)).ok()?;
    let rest = micros.rem_euclid(MICROS_PER_DAY);
    Some(format!("{} {}{zone}", date_text(days)?, time_text(rest)?))
}

fn parse_timestamp(s: &str, zone: &str) -> Option<i64> {
    match s {
        "infinity" => return Some(i64::MAX),
        "-infinity" => return Some(i64::MIN),
        _ => {}
    }
    let s = s.strip_suffix(zone)?;
    let (date, time) = s.split_once(' ')?;
    let day_micros = i64::from(parse_date(date)?).checked_mul(MICROS_PER_DAY)?;
    day_micros.checked_add(parse_time(time)?)
}

const NUMERIC_NEG: u16 = 0x4000;
const NUMERIC_NAN: u16 = 0xC000;
const NUMERIC_PINF: u16 = 0xD000;
const NUMERIC_NINF: u16 = 0xF000;

/// Binary numeric: ndigits, weight (of the first base-10000 digit), sign, display scale, digits.
fn numeric_text(raw: &[u8]) -> Option<String> {
    if raw.len() < 8 {
        return None;
    }
    let ndigits = usize::try_from(be_i16(&raw[0..2])?).ok()?;
    let weight = i32::from(be_i16(&raw[2..4])?);
    let sign = u16::from_be_bytes([raw[4], raw[5]]);
    let dscale = usize::from(u16::from_be_bytes([raw[6], raw[7]]));
    if raw.len() != 8 + 2 * ndigits || dscale > 1000 {
        return None;
    }
    match sign {
        NUMERIC_NAN => return Some("NaN".into()),
        NUMERIC_PINF => return Some("Infinity".into()),
        NUMERIC_NINF => return Some("-Infinity".into()),
        0 | NUMERIC_NEG => {}
        _ => return None,
    }
    let digits: Vec<i32> = (0..ndigits).map(|i| i32::from(raw[8 + 2 * i]) << 8 | i32::from(raw[9 + 2 * i])).collect();
    if digits.iter().any(|d| *d > 9999) {
        return None;
    }
    // Digit k stands for 10000^(weight - k).
    let digit = |power: i32| -> i32 {
        let k = weight - power;
        if k >= 0 { digits.get(k as usize).copied().unwrap_or(0) } else { 0 }
    };
    let mut s = String::new();
    if sign == NUMERIC_NEG {
        s.push('-');
    }
    if weight < 0 {
        s.push('0');
    } else {
        for p in (0..=weight).rev() {
            if p == weight {
                s.push_str(&digit(p).to_string());
            } else {
                s.push_str(&format!("{:04}", digit(p)));
            }
        }
    }
    if dscale > 0 {
        s.push('.');
        let mut frac = String::new();
        let mut p = -1;
        while frac.len() < dscale {
            frac.push_str(&format!("{:04}", digit(p)));
            p -= 1;
        }
        frac.truncate(dscale);
        s.push_str(&frac);
    }
    Some(s)
}

fn parse_numeric(s: &str) -> Option<Vec<u8>> {
    let (sign, digits, weight, dscale): (u16, Vec<i16>, i16, u16) = match s {
        "NaN" => (NUMERIC_NAN, vec![], 0, 0),
        "Infinity" => (NUMERIC_PINF, vec![], 0, 0),
        "-Infinity" => (NUMERIC_NINF, vec![], 0, 0),
        _ => {
            let (neg, body) = match s.strip_prefix('-') {
                Some(b) => (true, b),
                None => (false, s),
            };
            let (int, frac) = body.split_once('.').unwrap_or((body, ""));
            if int.is_empty() || !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit()) {
                return None;
            }
            let dscale = u16::try_from(frac.len()).ok()?;
            let pad_left = (4 - int.len() % 4) % 4;
            let pad_right = (4 - frac.len() % 4) % 4;
            let all = format!("{}{int}{frac}{}", "0".repeat(pad_left), "0".repeat(pad_right));
            let mut groups: Vec<i16> =
                (0..all.len()).step_by(4).map(|i| all[i..i + 4].parse::<i16>()).collect::<Result<_, _>>().ok()?;
            let mut weight = i16::try_from((pad_left + int.len()) / 4).ok()? - 1;
            while groups.first() == Some(&0) {
                groups.remove(0);
                weight -= 1;
            }
            while groups.last() == Some(&0) {
                groups.pop();
            }
            if groups.is_empty() {
                weight = 0;
            }
            (if neg && !groups.is_empty() { NUMERIC_NEG } else { 0 }, groups, weight, dscale)
        }
    };
    let mut out = Vec::with_capacity(8 + digits.len() * 2);
    out.extend_from_slice(&(digits.len() as i16).to_be_bytes());
    out.extend_from_slice(&weight.to_be_bytes());
    out.extend_from_slice(&sign.to_be_bytes());
    out.extend_from_slice(&dscale.to_be_bytes());
    for d in digits {
        out.extend_from_slice(&d.to_be_bytes());
    }
    Some(out)
}

/// Binary arrays: dimensions, null flag, element type, (length, lower bound) per dimension, then elements.
/// Read as nested lists when the lower bounds are 1 (the usual case).
fn readable_array(oid: u32, raw: &[u8]) -> Option<Value> {
    let elem = element_of(oid)?;
    if raw.len() < 12 {
        return None;
    }
    let ndim = usize::try_from(be_i32(&raw[0..4])?).ok()?;
    if ndim > 6 || be_i32(&raw[8..12])? as u32 != elem {
        return None;
    }
    let mut pos = 12;
    let mut dims = Vec::with_capacity(ndim);
    for _ in 0..ndim {
        let len = usize::try_from(be_i32(raw.get(pos..pos + 4)?)?).ok()?;
        if be_i32(raw.get(pos + 4..pos + 8)?)? != 1 {
            return None;
        }
        dims.push(len);
        pos += 8;
    }
    let total: usize = if ndim == 0 { 0 } else { dims.iter().try_fold(1usize, |a, d| a.checked_mul(*d))? };
    let mut items = Vec::with_capacity(total.min(raw.len()));
    for _ in 0..total {
        let len = be_i32(raw.get(pos..pos + 4)?)?;
        pos += 4;
        if len == -1 {
            items.push(Value::Null);
            continue;
        }
        let len = usize::try_from(len).ok()?;
        items.push(decode(elem, Format::Binary, raw.get(pos..pos + len)?));
        pos += len;
    }
    if pos != raw.len() {
        return None;
    }
    Some(nest(&mut items.into_iter(), &dims))
}

fn nest(items: &mut impl Iterator<Item = Value>, dims: &[usize]) -> Value {
    match dims {
        [] => Value::Array(vec![]),
        [n] => Value::Array(items.take(*n).collect()),
        [n, rest @ ..] => Value::Array((0..*n).map(|_| nest(items, rest)).collect()),
    }
}

fn encode_array(oid: u32, v: &Value) -> Option<Vec<u8>> {
    let elem = element_of(oid)?;
    let Value::Array(top) = v else { return None };
    let mut dims = Vec::new();
    let mut probe = v;
    while let Value::Array(a) = probe {
        if a.is_empty() && !dims.is_empty() {
            return None;
        }
        if a.is_empty() {
            break;
        }
        dims.push(a.len());
        probe = &a[0];
    }
    let mut flat = Vec::new();
    flatten(top, dims.len(), &mut flat)?;
    let mut out = Vec::new();
    out.extend_from_slice(&(dims.len() as i32).to_be_bytes());
    out.extend_from_slice(&i32::from(flat.iter().any(|x| x.is_null())).to_be_bytes());
    out.extend_from_slice(&elem.to_be_bytes());
    for d in &dims {
        out.extend_from_slice(&i32::try_from(*d).ok()?.to_be_bytes());
        out.extend_from_slice(&1i32.to_be_bytes());
    }
    for item in flat {
        if item.is_null() {
            out.extend_from_slice(&(-1i32).to_be_bytes());
        } else {
            let b = encode(elem, Format::Binary, item)?;
            out.extend_from_slice(&i32::try_from(b.len()).ok()?.to_be_bytes());
            out.extend_from_slice(&b);
        }
    }
    Some(out)
}

fn flatten<'a>(items: &'a [Value], depth: usize, out: &mut Vec<&'a Value>) -> Option<()> {
    for item in items {
        if depth > 1 {
            let Value::Array(inner) = item else { return None };
            flatten(inner, depth - 1, out)?;
        } else {
            out.push(item);
        }
    }
    Some(())
}

/// A value for a miss message: `42`, `'bob'`, `NULL`.
pub fn show(v: &Value) -> String {
    match v {
        Value::Null => "NULL".into(),
        Value::String(s) => {
            let short: String = s.chars().take(60).collect();
            format!("'{short}{}'", if short.len() < s.len() { "..." } else { "" })
        }
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn bin(oid: u32, raw: &[u8]) -> Value {
        decode(oid, Format::Binary, raw)
    }

    #[test]
    fn binary_values_are_readable() {
        assert_eq!(bin(23, &42i32.to_be_bytes()), json!(42));
        assert_eq!(bin(20, &(-7i64).to_be_bytes()), json!(-7));
        assert_eq!(bin(16, &[1]), json!(true));
        assert_eq!(bin(700, &0.1f32.to_be_bytes()), json!(0.1));
        assert_eq!(bin(701, &f64::NAN.to_be_bytes()), json!("NaN"));
        assert_eq!(bin(25, b"hi"), json!("hi"));
        assert_eq!(bin(3802, b"\x01{\"a\": 1}"), json!("{\"a\": 1}"));
        assert_eq!(bin(17, &[0, 255]), json!("\\x00ff"));
        assert_eq!(bin(2950, &[0x12; 16]), json!("12121212-1212-1212-1212-121212121212"));
        assert_eq!(bin(1082, &0i32.to_be_bytes()), json!("2000-01-01"));
        assert_eq!(bin(1114, &1_500_000i64.to_be_bytes()), json!("2000-01-01 00:00:01.5"));
        assert_eq!(bin(1184, &(-1i64).to_be_bytes()), json!("1999-12-31 23:59:59.999999+00"));
        // 12.50: one digit 12 at weight 0, then 5000 at weight -1, scale 2.
        let n = [0, 2, 0, 0, 0, 0, 0, 2, 0, 12, 0x13, 0x88];
        assert_eq!(bin(1700, &n), json!("12.50"));
        assert_eq!(bin(1700, &[0, 0, 0, 0, 0, 0, 0, 0]), json!("0"));
        // int4[] {1,NULL,3}
        let mut a = vec![0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 23, 0, 0, 0, 3, 0, 0, 0, 1];
        for v in [Some(1i32), None, Some(3)] {
            match v {
                Some(x) => {
                    a.extend_from_slice(&4i32.to_be_bytes());
                    a.extend_from_slice(&x.to_be_bytes());
                }
                None => a.extend_from_slice(&(-1i32).to_be_bytes()),
            }
        }
        assert_eq!(bin(1007, &a), json!([1, null, 3]));
        // Unknown types and odd bytes stay exact.
        assert_eq!(bin(99999, &[1, 2]), json!({"base64": "AQI="}));
        assert_eq!(bin(23, &[1, 2]), json!({"base64": "AQI="}));
    }

    #[test]
    fn text_values() {
        assert_eq!(decode(23, Format::Text, b"42"), json!(42));
        assert_eq!(decode(23, Format::Text, b"042"), json!("042"));
        assert_eq!(decode(16, Format::Text, b"t"), json!(true));
        assert_eq!(decode(1700, Format::Text, b"1.50"), json!("1.50"));
        assert_eq!(encode(1007, Format::Text, &json!([1, null])).unwrap(), b"{1,NULL}");
    }

    #[test]
    fn numerics_round_trip() {
        for s in ["0", "0.00", "1", "-1", "12.50", "10000", "0.0001", "123456789.000001", "-0.5", "99999999", "NaN"] {
            let raw = parse_numeric(s).unwrap();
            assert_eq!(numeric_text(&raw).unwrap(), s, "{s}");
        }
    }

    #[test]
    fn cross_format() {
        // A value recorded in binary can be served in text, and the other way round.
        let v = bin(1114, &0i64.to_be_bytes());
        assert_eq!(encode(1114, Format::Text, &v).unwrap(), b"2000-01-01 00:00:00");
        assert_eq!(encode(23, Format::Binary, &decode(23, Format::Text, b"7")).unwrap(), 7i32.to_be_bytes());
    }

    proptest! {
        #[test]
        fn binary_decode_is_exact(oid in proptest::sample::select(TYPES.iter().map(|t| t.0).collect::<Vec<_>>()),
                                  raw in proptest::collection::vec(any::<u8>(), 0..40)) {
            let v = bin(oid, &raw);
            prop_assert_eq!(encode(oid, Format::Binary, &v).unwrap(), raw);
        }

        #[test]
        fn ints_and_timestamps(x in any::<i64>()) {
            for oid in [20u32, 1114, 1184] {
                let raw = x.to_be_bytes();
                prop_assert_eq!(encode(oid, Format::Binary, &bin(oid, &raw)).unwrap(), raw.to_vec());
            }
        }

        #[test]
        fn text_decode_is_exact(oid in proptest::sample::select(vec![16u32, 20, 21, 23, 25, 1700]), s in "\\PC{0,12}") {
            let v = decode(oid, Format::Text, s.as_bytes());
            prop_assert_eq!(encode(oid, Format::Text, &v).unwrap(), s.as_bytes().to_vec());
        }
    }
}
