//! MySQL packet framing and the primitive encodings packets are made of.
//!
//! A packet is a 3-byte little-endian payload length, a 1-byte sequence id and the payload. A payload of
//! exactly 0xFFFFFF bytes continues in the next packet; the logical packet is the concatenation. Bytes may
//! arrive split anywhere: `Framer` buffers them and hands out whole logical packets.

/// Largest payload of one physical packet; a payload of this size continues in the next packet.
pub const MAX_PAYLOAD: usize = 0xFF_FFFF;

/// A logical packet: its first sequence id and the joined payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    pub seq: u8,
    pub payload: Vec<u8>,
}

/// Incremental de-framing of one direction of a connection.
#[derive(Default)]
pub struct Framer {
    buf: Vec<u8>,
    /// Where unread bytes start in `buf` (consumed bytes are dropped in batches, not per packet).
    start: usize,
    /// A logical packet whose physical parts are still arriving.
    partial: Option<Packet>,
}

impl Framer {
    pub fn new() -> Framer {
        Framer::default()
    }

    pub fn push(&mut self, data: &[u8]) {
        if self.start > 0 && self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        }
        self.buf.extend_from_slice(data);
    }

    /// Takes the bytes received past the last complete packet (the start of a TLS handshake after an
    /// SSLRequest), leaving the framer empty.
    pub fn take_rest(&mut self) -> Vec<u8> {
        let rest = self.buf[self.start..].to_vec();
        *self = Framer::default();
        rest
    }

    /// Bytes received but not yet part of a complete packet.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start + self.partial.as_ref().map_or(0, |p| p.payload.len())
    }

    /// The next complete logical packet, if all its bytes have arrived.
    pub fn next_packet(&mut self) -> Option<Packet> {
        loop {
            let rest = &self.buf[self.start..];
            if rest.len() < 4 {
                self.compact();
                return None;
            }
            let len = usize::from(rest[0]) | usize::from(rest[1]) << 8 | usize::from(rest[2]) << 16;
            let seq = rest[3];
            if rest.len() < 4 + len {
                self.compact();
                return None;
            }
            let body = &rest[4..4 + len];
            self.start += 4 + len;
            let packet = match self.partial.take() {
                Some(mut p) => {
                    p.payload.extend_from_slice(body);
                    p
                }
                None => Packet { seq, payload: body.to_vec() },
            };
            if len == MAX_PAYLOAD {
                self.partial = Some(packet);
                continue;
            }
            return Some(packet);
        }
    }

    /// Drops consumed bytes once they dominate the buffer, so a long stream does not grow it without bound.
    fn compact(&mut self) {
        if self.start > 0 && self.start * 2 >= self.buf.len() {
            self.buf.drain(..self.start);
            self.start = 0;
        }
    }
}

/// Appends `payload` as one logical packet (split into physical packets as needed) starting at `*seq`,
/// advancing `*seq` past the packets written.
pub fn write_packet(out: &mut Vec<u8>, seq: &mut u8, payload: &[u8]) {
    let mut rest = payload;
    loop {
        let n = rest.len().min(MAX_PAYLOAD);
        out.extend_from_slice(&[n as u8, (n >> 8) as u8, (n >> 16) as u8, *seq]);
        out.extend_from_slice(&rest[..n]);
        *seq = seq.wrapping_add(1);
        rest = &rest[n..];
        if n < MAX_PAYLOAD {
            return;
        }
    }
}

/// A bounds-checked reader over a payload. Every read returns `None` past the end instead of panicking.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub fn new(data: &'a [u8]) -> Reader<'a> {
        Reader { data, pos: 0 }
    }

    pub fn remaining(&self) -> usize {
        self.data.len() - self.pos
    }

    pub fn is_empty(&self) -> bool {
        self.remaining() == 0
    }

    pub fn peek(&self) -> Option<u8> {
        self.data.get(self.pos).copied()
    }

    pub fn bytes(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.pos.checked_add(n)?;
        let out = self.data.get(self.pos..end)?;
        self.pos = end;
        Some(out)
    }

    pub fn skip(&mut self, n: usize) -> Option<()> {
        self.bytes(n).map(|_| ())
    }

    pub fn u8(&mut self) -> Option<u8> {
        let b = self.peek()?;
        self.pos += 1;
        Some(b)
    }

    pub fn u16(&mut self) -> Option<u16> {
        self.bytes(2).map(|b| u16::from_le_bytes([b[0], b[1]]))
    }

    pub fn u24(&mut self) -> Option<u32> {
        self.bytes(3).map(|b| u32::from_le_bytes([b[0], b[1], b[2], 0]))
    }

    pub fn u32(&mut self) -> Option<u32> {
        self.bytes(4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub fn u64(&mut self) -> Option<u64> {
        let b = self.bytes(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Some(u64::from_le_bytes(a))
    }

    /// A length-encoded integer. `0xFB` (NULL in rows) and `0xFF` are not integers here.
    pub fn lenenc(&mut self) -> Option<u64> {
        match self.u8()? {
            n @ 0..=0xFA => Some(u64::from(n)),
            0xFC => self.u16().map(u64::from),
            0xFD => self.u24().map(u64::from),
            0xFE => self.u64(),
            _ => None,
        }
    }

    pub fn lenenc_bytes(&mut self) -> Option<&'a [u8]> {
        let n = usize::try_from(self.lenenc()?).ok()?;
        self.bytes(n)
    }

    pub fn lenenc_string(&mut self) -> Option<String> {
        self.lenenc_bytes().map(|b| String::from_utf8_lossy(b).into_owned())
    }

    /// Bytes up to a NUL (consumed), or to the end when there is none.
    pub fn nul_bytes(&mut self) -> &'a [u8] {
        let rest = &self.data[self.pos..];
        match rest.iter().position(|b| *b == 0) {
            Some(i) => {
                self.pos += i + 1;
                &rest[..i]
            }
            None => {
                self.pos = self.data.len();
                rest
            }
        }
    }

    pub fn nul_string(&mut self) -> String {
        String::from_utf8_lossy(self.nul_bytes()).into_owned()
    }

    pub fn rest(&mut self) -> &'a [u8] {
        let rest = &self.data[self.pos..];
        self.pos = self.data.len();
        rest
    }
}

pub fn put_u16(out: &mut Vec<u8>, v: u16) {
    out.extend_from_slice(&v.to_le_bytes());
}

pub fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}

pub fn put_lenenc(out: &mut Vec<u8>, v: u64) {
    match v {
        0..=0xFA => out.push(v as u8),
        0xFB..=0xFFFF => {
            out.push(0xFC);
            out.extend_from_slice(&(v as u16).to_le_bytes());
        }
        0x1_0000..=0xFF_FFFF => {
            out.push(0xFD);
            out.extend_from_slice(&(v as u32).to_le_bytes()[..3]);
        }
        _ => {
            out.push(0xFE);
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
}

pub fn put_lenenc_bytes(out: &mut Vec<u8>, b: &[u8]) {
    put_lenenc(out, b.len() as u64);
    out.extend_from_slice(b);
}

pub fn put_nul_str(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(s);
    out.push(0);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn frame_all(payloads: &[Vec<u8>]) -> Vec<u8> {
        let mut out = Vec::new();
        for (i, p) in payloads.iter().enumerate() {
            let mut seq = i as u8;
            write_packet(&mut out, &mut seq, p);
        }
        out
    }

    fn drain(f: &mut Framer) -> Vec<Packet> {
        std::iter::from_fn(|| f.next_packet()).collect()
    }

    #[test]
    fn split_at_every_byte_gives_the_same_packets() {
        let payloads = vec![vec![], b"\x03SELECT 1".to_vec(), vec![7; 300], vec![0xFE, 0, 0, 2, 0]];
        let wire = frame_all(&payloads);
        let mut whole = Framer::new();
        whole.push(&wire);
        let expected = drain(&mut whole);
        assert_eq!(expected.iter().map(|p| p.payload.clone()).collect::<Vec<_>>(), payloads);
        for cut in 0..=wire.len() {
            let mut f = Framer::new();
            let mut got = Vec::new();
            f.push(&wire[..cut]);
            got.extend(drain(&mut f));
            f.push(&wire[cut..]);
            got.extend(drain(&mut f));
            assert_eq!(got, expected, "split at {cut}");
            assert_eq!(f.buffered(), 0);
        }
    }

    #[test]
    fn a_16_mib_payload_spans_packets_and_is_joined() {
        let big = vec![b'x'; MAX_PAYLOAD + 10];
        let mut wire = Vec::new();
        let mut seq = 3;
        write_packet(&mut wire, &mut seq, &big);
        assert_eq!(seq, 5, "two physical packets");
        let mut f = Framer::new();
        for piece in wire.chunks(1 << 20) {
            f.push(piece);
        }
        let p = f.next_packet().unwrap();
        assert_eq!((p.seq, p.payload.len()), (3, big.len()));
        // Exactly 0xFFFFFF bytes is followed by an empty packet.
        let exact = vec![1u8; MAX_PAYLOAD];
        let mut wire = Vec::new();
        let mut seq = 0;
        write_packet(&mut wire, &mut seq, &exact);
        assert_eq!(wire.len(), MAX_PAYLOAD + 8);
        f.push(&wire);
        assert_eq!(f.next_packet().unwrap().payload.len(), MAX_PAYLOAD);
    }

    #[test]
    fn lenenc_round_trips_at_the_boundaries() {
        for v in [0, 250, 251, 0xFFFF, 0x1_0000, 0xFF_FFFF, 0x100_0000, u64::MAX] {
            let mut out = Vec::new();
            put_lenenc(&mut out, v);
            assert_eq!(Reader::new(&out).lenenc(), Some(v));
        }
        assert_eq!(Reader::new(&[0xFC, 1]).lenenc(), None);
        assert_eq!(Reader::new(&[0xFB]).lenenc(), None);
    }

    proptest! {
        #[test]
        fn framing_survives_any_split(payloads in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..600), 0..8), cuts in proptest::collection::vec(any::<usize>(), 0..6)) {
            let wire = frame_all(&payloads);
            let mut f = Framer::new();
            let mut got = Vec::new();
            let mut at = 0;
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (wire.len() + 1)).collect();
            cuts.sort_unstable();
            for c in cuts.into_iter().chain([wire.len()]) {
                f.push(&wire[at..c]);
                at = c;
                got.extend(drain(&mut f).into_iter().map(|p| p.payload));
            }
            prop_assert_eq!(got, payloads);
        }

        #[test]
        fn garbage_never_panics(data in proptest::collection::vec(any::<u8>(), 0..2000)) {
            let mut f = Framer::new();
            f.push(&data);
            while f.next_packet().is_some() {}
            let mut r = Reader::new(&data);
            let _ = r.lenenc_string();
            let _ = r.nul_string();
            let _ = r.u64();
        }
    }
}
