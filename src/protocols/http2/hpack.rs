//! HPACK (RFC 7541) header block decoding, one decoder per direction of a connection.
//!
//! Written here rather than taken from a crate: the hyperium `h2` crate keeps its HPACK codec private, and the
//! standalone HPACK crates are unmaintained forks. A passive observer also needs a decoder that never panics
//! on garbage and bounds its memory, which is simplest to guarantee in a small codec of our own. The encoder
//! is only what the tests need to build blocks.

use std::collections::VecDeque;
use std::sync::OnceLock;

use super::huffman_table::CODES;

/// The static table (RFC 7541, Appendix A), index 1..=61.
const STATIC: [(&str, &str); 61] = [
    (":authority", ""),
    (":method", "GET"),
    (":method", "POST"),
    (":path", "/"),
    (":path", "/index.html"),
    (":scheme", "http"),
    (":scheme", "https"),
    (":status", "200"),
    (":status", "204"),
    (":status", "206"),
    (":status", "304"),
    (":status", "400"),
    (":status", "404"),
    (":status", "500"),
    ("accept-charset", ""),
    ("accept-encoding", "gzip, deflate"),
    ("accept-language", ""),
    ("accept-ranges", ""),
    ("accept", ""),
    ("access-control-allow-origin", ""),
    ("age", ""),
    ("allow", ""),
    ("authorization", ""),
    ("cache-control", ""),
    ("content-disposition", ""),
    ("content-encoding", ""),
    ("content-language", ""),
    ("content-length", ""),
    ("content-location", ""),
    ("content-range", ""),
    ("content-type", ""),
    ("cookie", ""),
    ("date", ""),
    ("etag", ""),
    ("expect", ""),
    ("expires", ""),
    ("from", ""),
    ("host", ""),
    ("if-match", ""),
    ("if-modified-since", ""),
    ("if-none-match", ""),
    ("if-range", ""),
    ("if-unmodified-since", ""),
    ("last-modified", ""),
    ("link", ""),
    ("location", ""),
    ("max-forwards", ""),
    ("proxy-authenticate", ""),
    ("proxy-authorization", ""),
    ("range", ""),
    ("referer", ""),
    ("refresh", ""),
    ("retry-after", ""),
    ("server", ""),
    ("set-cookie", ""),
    ("strict-transport-security", ""),
    ("transfer-encoding", ""),
    ("user-agent", ""),
    ("vary", ""),
    ("via", ""),
    ("www-authenticate", ""),
];

/// The initial dynamic table size, before any SETTINGS_HEADER_TABLE_SIZE change (RFC 7540 6.5.2).
pub const DEFAULT_TABLE_SIZE: usize = 4096;
/// A peer may raise its table size through SETTINGS; beyond this an observer stops following (memory bound).
const MAX_TABLE_SIZE: usize = 1 << 20;
/// One decoded header block may not grow past this (the same bound as a frame-size limit in practice).
const MAX_BLOCK_OUTPUT: usize = 16 << 20;

/// One decoded header field.
pub type Field = (Vec<u8>, Vec<u8>);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HpackError(pub &'static str);

impl std::fmt::Display for HpackError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HPACK: {}", self.0)
    }
}

/// The dynamic table of one direction. Newest entry first; each entry costs its lengths + 32 (RFC 7541 4.1).
#[derive(Debug, Default)]
struct DynamicTable {
    entries: VecDeque<Field>,
    size: usize,
    max: usize,
}

impl DynamicTable {
    fn evict_to(&mut self, limit: usize) {
        while self.size > limit {
            match self.entries.pop_back() {
                Some((n, v)) => self.size -= n.len() + v.len() + 32,
                None => break,
            }
        }
    }

    fn insert(&mut self, name: Vec<u8>, value: Vec<u8>) {
        let cost = name.len() + value.len() + 32;
        if cost > self.max {
            // An entry larger than the table empties it and is not added.
            self.entries.clear();
            self.size = 0;
            return;
        }
        self.evict_to(self.max - cost);
        self.size += cost;
        self.entries.push_front((name, value));
    }
}

pub struct Decoder {
    table: DynamicTable,
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder::new()
    }
}

impl Decoder {
    pub fn new() -> Decoder {
        Decoder { table: DynamicTable { max: DEFAULT_TABLE_SIZE, ..DynamicTable::default() } }
    }

    fn lookup(&self, index: usize) -> Result<(&[u8], &[u8]), HpackError> {
        match index {
            0 => Err(HpackError("index 0")),
            1..=61 => {
                let (n, v) = STATIC[index - 1];
                Ok((n.as_bytes(), v.as_bytes()))
            }
            _ => self
                .table
                .entries
                .get(index - 62)
                .map(|(n, v)| (n.as_slice(), v.as_slice()))
                .ok_or(HpackError("index past the dynamic table")),
        }
    }

    /// Decodes one complete header block into `out`, updating the dynamic table.
    pub fn decode(&mut self, mut block: &[u8], out: &mut Vec<Field>) -> Result<(), HpackError> {
        let mut produced = 0usize;
        while let Some(&first) = block.first() {
            let field = if first & 0x80 != 0 {
                // Indexed field.
                let (index, rest) = integer(block, 7)?;
                block = rest;
                let (n, v) = self.lookup(index)?;
                (n.to_vec(), v.to_vec())
            } else if first & 0xe0 == 0x20 {
                // Dynamic table size update.
                let (size, rest) = integer(block, 5)?;
                block = rest;
                if size > MAX_TABLE_SIZE {
                    return Err(HpackError("dynamic table size update too large"));
                }
                self.table.max = size;
                self.table.evict_to(size);
                continue;
            } else {
                // Literal: with incremental indexing (01), without (0000) or never indexed (0001).
                let incremental = first & 0xc0 == 0x40;
                let prefix = if incremental { 6 } else { 4 };
                let (index, rest) = integer(block, prefix)?;
                block = rest;
                let name = if index == 0 {
                    let (name, rest) = string(block)?;
                    block = rest;
                    name
                } else {
                    self.lookup(index)?.0.to_vec()
                };
                let (value, rest) = string(block)?;
                block = rest;
                if incremental {
                    self.table.insert(name.clone(), value.clone());
                }
                (name, value)
            };
            produced += field.0.len() + field.1.len();
            if produced > MAX_BLOCK_OUTPUT {
                return Err(HpackError("header block too large"));
            }
            out.push(field);
        }
        Ok(())
    }
}

/// Decodes an HPACK integer with an N-bit prefix; returns it and the bytes after it.
fn integer(data: &[u8], prefix: u8) -> Result<(usize, &[u8]), HpackError> {
    let mask = (1u16 << prefix) as u8 - 1;
    let first = *data.first().ok_or(HpackError("truncated integer"))?;
    let mut value = usize::from(first & mask);
    if value < usize::from(mask) {
        return Ok((value, &data[1..]));
    }
    let mut shift = 0u32;
    for (i, &b) in data.iter().enumerate().skip(1) {
        if shift > 28 {
            return Err(HpackError("integer overflow"));
        }
        value += usize::from(b & 0x7f) << shift;
        shift += 7;
        if b & 0x80 == 0 {
            return Ok((value, &data[i + 1..]));
        }
    }
    Err(HpackError("truncated integer"))
}

/// Decodes a string literal (plain or Huffman-coded).
fn string(data: &[u8]) -> Result<(Vec<u8>, &[u8]), HpackError> {
    let huffman = data.first().ok_or(HpackError("truncated string"))? & 0x80 != 0;
    let (len, rest) = integer(data, 7)?;
    if rest.len() < len {
        return Err(HpackError("truncated string"));
    }
    let (raw, rest) = rest.split_at(len);
    let value = if huffman { huffman_decode(raw)? } else { raw.to_vec() };
    Ok((value, rest))
}

/// A binary decoding tree: node i has children `tree[i][bit]`; values >= LEAF are symbols.
const LEAF: u16 = 0x8000;

fn tree() -> &'static Vec<[u16; 2]> {
    static TREE: OnceLock<Vec<[u16; 2]>> = OnceLock::new();
    TREE.get_or_init(|| {
        let mut nodes: Vec<[u16; 2]> = vec![[0, 0]];
        for (symbol, &(code, len)) in CODES.iter().enumerate() {
            let mut node = 0usize;
            for i in (0..len).rev() {
                let bit = ((code >> i) & 1) as usize;
                if i == 0 {
                    nodes[node][bit] = LEAF | symbol as u16;
                } else {
                    if nodes[node][bit] == 0 {
                        nodes.push([0, 0]);
                        nodes[node][bit] = (nodes.len() - 1) as u16;
                    }
                    node = usize::from(nodes[node][bit]);
                }
            }
        }
        nodes
    })
}

/// Decodes a Huffman-coded string; padding must be at most 7 one-bits (a prefix of EOS), and EOS itself is
/// an error (RFC 7541 5.2).
pub fn huffman_decode(data: &[u8]) -> Result<Vec<u8>, HpackError> {
    let tree = tree();
    let mut out = Vec::with_capacity(data.len() * 8 / 5);
    let mut node = 0usize;
    // Bits consumed since the last symbol, and whether they were all ones.
    let mut pending = 0u32;
    let mut all_ones = true;
    for &byte in data {
        for i in (0..8).rev() {
            let bit = usize::from((byte >> i) & 1);
            let next = tree[node][bit];
            pending += 1;
            all_ones &= bit == 1;
            if next & LEAF != 0 {
                let symbol = next & !LEAF;
                if symbol == 256 {
                    return Err(HpackError("EOS in a Huffman string"));
                }
                out.push(symbol as u8);
                node = 0;
                pending = 0;
                all_ones = true;
            } else if next == 0 {
                return Err(HpackError("invalid Huffman code"));
            } else {
                node = usize::from(next);
            }
        }
    }
    if pending > 7 || !all_ones {
        return Err(HpackError("invalid Huffman padding"));
    }
    Ok(out)
}

/// Huffman-codes a string.
#[cfg(test)]
pub fn huffman_encode(data: &[u8], out: &mut Vec<u8>) {
    let mut acc: u64 = 0;
    let mut bits = 0u32;
    for &b in data {
        let (code, len) = CODES[usize::from(b)];
        acc = (acc << len) | u64::from(code);
        bits += u32::from(len);
        while bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
        acc &= (1u64 << bits) - 1;
    }
    if bits > 0 {
        // Pad with the most significant bits of EOS (all ones).
        out.push(((acc << (8 - bits)) | ((1u64 << (8 - bits)) - 1)) as u8);
    }
}

#[cfg(test)]
fn encode_integer(value: usize, prefix: u8, flags: u8, out: &mut Vec<u8>) {
    let mask = (1usize << prefix) - 1;
    if value < mask {
        out.push(flags | value as u8);
        return;
    }
    out.push(flags | mask as u8);
    let mut rest = value - mask;
    while rest >= 128 {
        out.push((rest % 128 + 128) as u8);
        rest /= 128;
    }
    out.push(rest as u8);
}

#[cfg(test)]
fn encode_string(s: &[u8], huffman: bool, out: &mut Vec<u8>) {
    if huffman {
        let mut coded = Vec::new();
        huffman_encode(s, &mut coded);
        encode_integer(coded.len(), 7, 0x80, out);
        out.extend_from_slice(&coded);
    } else {
        encode_integer(s.len(), 7, 0, out);
        out.extend_from_slice(s);
    }
}

/// A small encoder: static-table names and exact matches, literals with incremental indexing (so the
/// dynamic table is exercised), Huffman on request. Used by tests and by doppel's own crafted traffic.
#[derive(Default)]
#[cfg(test)]
pub struct Encoder {
    table: DynamicTable,
}

#[cfg(test)]
impl Encoder {
    pub fn new() -> Encoder {
        Encoder { table: DynamicTable { max: DEFAULT_TABLE_SIZE, ..DynamicTable::default() } }
    }

    pub fn encode(&mut self, fields: &[Field], huffman: bool, out: &mut Vec<u8>) {
        for (name, value) in fields {
            let exact = STATIC.iter().position(|(n, v)| n.as_bytes() == name && v.as_bytes() == value).map(|i| i + 1);
            let dynamic = self.table.entries.iter().position(|(n, v)| n == name && v == value).map(|i| i + 62);
            if let Some(index) = exact.or(dynamic) {
                encode_integer(index, 7, 0x80, out);
                continue;
            }
            match STATIC.iter().position(|(n, _)| n.as_bytes() == name) {
                Some(i) => encode_integer(i + 1, 6, 0x40, out),
                None => {
                    out.push(0x40);
                    encode_string(name, huffman, out);
                }
            }
            encode_string(value, huffman, out);
            self.table.insert(name.clone(), value.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn fields(list: &[(&str, &str)]) -> Vec<Field> {
        list.iter().map(|(n, v)| (n.as_bytes().to_vec(), v.as_bytes().to_vec())).collect()
    }

    #[test]
    fn rfc_c3_requests_without_huffman() {
        // RFC 7541 C.3: three requests on one connection, sharing the dynamic table.
        let mut d = Decoder::new();
        let mut out = Vec::new();
        let first = b"\x82\x86\x84\x41\x0fwww.example.com";
        d.decode(first, &mut out).unwrap();
        assert_eq!(
            out,
            fields(&[(":method", "GET"), (":scheme", "http"), (":path", "/"), (":authority", "www.example.com")])
        );
        out.clear();
        d.decode(b"\x82\x86\x84\xbe\x58\x08no-cache", &mut out).unwrap();
        assert_eq!(out[3], (b":authority".to_vec(), b"www.example.com".to_vec()));
        assert_eq!(out[4], (b"cache-control".to_vec(), b"no-cache".to_vec()));
    }

    #[test]
    fn rfc_c4_huffman() {
        // RFC 7541 C.4.1: "www.example.com" Huffman-coded.
        let block = b"\x82\x86\x84\x41\x8c\xf1\xe3\xc2\xe5\xf2\x3a\x6b\xa0\xab\x90\xf4\xff";
        let mut out = Vec::new();
        Decoder::new().decode(block, &mut out).unwrap();
        assert_eq!(out[3], (b":authority".to_vec(), b"www.example.com".to_vec()));
        let mut coded = Vec::new();
        huffman_encode(b"www.example.com", &mut coded);
        assert_eq!(coded, b"\xf1\xe3\xc2\xe5\xf2\x3a\x6b\xa0\xab\x90\xf4\xff");
    }

    #[test]
    fn bad_padding_and_eos_are_errors() {
        assert!(huffman_decode(&[0x00]).is_err()); // '0' then seven zero bits of padding
        assert!(huffman_decode(&[0xff, 0xff, 0xff, 0xff]).is_err()); // EOS
    }

    #[test]
    fn table_size_update_evicts() {
        let mut e = Encoder::new();
        let mut block = Vec::new();
        e.encode(&fields(&[("x-a", "1")]), false, &mut block);
        let mut d = Decoder::new();
        let mut out = Vec::new();
        d.decode(&block, &mut out).unwrap();
        assert_eq!(d.table.entries.len(), 1);
        d.decode(&[0x20], &mut out).unwrap();
        assert_eq!(d.table.entries.len(), 0);
        assert!(d.decode(&[0xbe], &mut out).is_err());
    }

    proptest! {
        #[test]
        fn decode_of_encode_is_identity(
            list in proptest::collection::vec(("[a-z:-]{1,12}", proptest::collection::vec(any::<u8>(), 0..40)), 0..20),
            huffman in any::<bool>(),
        ) {
            let list: Vec<Field> = list.into_iter().map(|(n, v)| (n.into_bytes(), v)).collect();
            let mut e = Encoder::new();
            let mut d = Decoder::new();
            // Two blocks on one connection, so the second uses entries the first added.
            for _ in 0..2 {
                let mut block = Vec::new();
                e.encode(&list, huffman, &mut block);
                let mut out = Vec::new();
                d.decode(&block, &mut out).unwrap();
                prop_assert_eq!(&out, &list);
            }
        }

        #[test]
        fn huffman_round_trip(data in proptest::collection::vec(any::<u8>(), 0..200)) {
            let mut coded = Vec::new();
            huffman_encode(&data, &mut coded);
            prop_assert_eq!(huffman_decode(&coded).unwrap(), data);
        }

        #[test]
        fn garbage_never_panics(data in proptest::collection::vec(any::<u8>(), 0..300)) {
            let mut out = Vec::new();
            let _ = Decoder::new().decode(&data, &mut out);
        }
    }
}
