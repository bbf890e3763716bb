//! HTTP/2 framing (RFC 9113 section 4): the connection preface and 9-byte frame headers, read incrementally
//! from pieces split anywhere. Only what a passive observer needs: frames are handed out by reference, and a
//! frame that arrived whole in one piece is never copied.

pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

pub const DATA: u8 = 0x0;
pub const HEADERS: u8 = 0x1;
pub const RST_STREAM: u8 = 0x3;
pub const SETTINGS: u8 = 0x4;
pub const PUSH_PROMISE: u8 = 0x5;
pub const CONTINUATION: u8 = 0x9;

pub const END_STREAM: u8 = 0x1;
pub const END_HEADERS: u8 = 0x4;
pub const PADDED: u8 = 0x8;
pub const PRIORITY: u8 = 0x20;

const HEADER_LEN: usize = 9;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame<'a> {
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
    pub payload: &'a [u8],
}

impl Frame<'_> {
    pub fn has(&self, flag: u8) -> bool {
        self.flags & flag != 0
    }

    /// The payload of a DATA or HEADERS frame without padding (and, for HEADERS, without the priority
    /// fields): the data or the header block fragment.
    pub fn content(&self) -> Result<&[u8], &'static str> {
        let mut p = self.payload;
        let mut pad = 0usize;
        if self.has(PADDED) && matches!(self.kind, DATA | HEADERS | PUSH_PROMISE) {
            pad = usize::from(*p.first().ok_or("padded frame without a pad length")?);
            p = &p[1..];
        }
        if self.kind == HEADERS && self.has(PRIORITY) {
            p = p.get(5..).ok_or("HEADERS frame too short for its priority fields")?;
        }
        if self.kind == PUSH_PROMISE {
            p = p.get(4..).ok_or("PUSH_PROMISE frame too short")?;
        }
        if pad > p.len() {
            return Err("padding longer than the frame");
        }
        Ok(&p[..p.len() - pad])
    }
}

/// Splits one direction of a connection into frames.
#[derive(Debug)]
pub struct FrameReader {
    /// Bytes of the preface still expected (client side only).
    preface_left: usize,
    /// An incomplete frame carried over from earlier pieces.
    carry: Vec<u8>,
}

impl FrameReader {
    pub fn client() -> FrameReader {
        FrameReader { preface_left: PREFACE.len(), carry: Vec::new() }
    }

    pub fn server() -> FrameReader {
        FrameReader { preface_left: 0, carry: Vec::new() }
    }

    /// Feeds one piece; `on_frame` is called for every frame it completes, in order.
    pub fn feed<E>(
        &mut self,
        mut data: &[u8],
        mut on_frame: impl FnMut(Frame<'_>) -> Result<(), E>,
    ) -> Result<(), FeedError<E>> {
        if self.preface_left > 0 {
            let at = PREFACE.len() - self.preface_left;
            let n = self.preface_left.min(data.len());
            if data[..n] != PREFACE[at..at + n] {
                return Err(FeedError::Framing("the client did not start with the HTTP/2 preface"));
            }
            self.preface_left -= n;
            data = &data[n..];
        }
        if !self.carry.is_empty() {
            // Complete the carried frame first, copying no more than it needs.
            let need = match frame_len(&self.carry) {
                Some(len) => len,
                None => {
                    let take = (HEADER_LEN - self.carry.len()).min(data.len());
                    self.carry.extend_from_slice(&data[..take]);
                    data = &data[take..];
                    match frame_len(&self.carry) {
                        Some(len) => len,
                        None => return Ok(()),
                    }
                }
            };
            let take = (need - self.carry.len()).min(data.len());
            self.carry.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.carry.len() < need {
                return Ok(());
            }
            let carried = std::mem::take(&mut self.carry);
            on_frame(parse(&carried)).map_err(FeedError::Observer)?;
        }
        while let Some(len) = frame_len(data) {
            if data.len() < len {
                break;
            }
            let (frame, rest) = data.split_at(len);
            on_frame(parse(frame)).map_err(FeedError::Observer)?;
            data = rest;
        }
        self.carry.extend_from_slice(data);
        Ok(())
    }

    /// Whether bytes of an unfinished frame are waiting.
    #[cfg(test)]
    pub fn in_frame(&self) -> bool {
        !self.carry.is_empty()
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum FeedError<E> {
    Framing(&'static str),
    Observer(E),
}

/// Total length (header + payload) of the frame at the start of `data`, once its header is there.
fn frame_len(data: &[u8]) -> Option<usize> {
    let h = data.get(..HEADER_LEN)?;
    let payload = (usize::from(h[0]) << 16) | (usize::from(h[1]) << 8) | usize::from(h[2]);
    Some(HEADER_LEN + payload)
}

/// A frame whose bytes are all present.
fn parse(frame: &[u8]) -> Frame<'_> {
    let stream = u32::from_be_bytes([frame[5], frame[6], frame[7], frame[8]]) & 0x7fff_ffff;
    Frame { kind: frame[3], flags: frame[4], stream, payload: &frame[HEADER_LEN..] }
}

/// Writes one frame (tests and crafted traffic).
#[cfg(test)]
pub fn encode(kind: u8, flags: u8, stream: u32, payload: &[u8], out: &mut Vec<u8>) {
    let len = payload.len() as u32;
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    out.extend_from_slice(payload);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn collect(reader: &mut FrameReader, data: &[u8], out: &mut Vec<(u8, u8, u32, Vec<u8>)>) -> Result<(), String> {
        reader
            .feed(data, |f| {
                out.push((f.kind, f.flags, f.stream, f.payload.to_vec()));
                Ok::<(), ()>(())
            })
            .map_err(|e| format!("{e:?}"))
    }

    fn sample() -> Vec<u8> {
        let mut bytes = PREFACE.to_vec();
        encode(SETTINGS, 0, 0, &[0, 3, 0, 0, 0, 100], &mut bytes);
        encode(HEADERS, END_HEADERS, 1, b"\x82\x86\x84", &mut bytes);
        encode(DATA, END_STREAM, 1, b"hello", &mut bytes);
        encode(DATA, PADDED | END_STREAM, 3, b"\x02ab\0\0", &mut bytes);
        bytes
    }

    #[test]
    fn split_at_every_byte_gives_the_same_frames() {
        let bytes = sample();
        let mut whole = Vec::new();
        collect(&mut FrameReader::client(), &bytes, &mut whole).unwrap();
        assert_eq!(whole.len(), 4);
        for cut in 0..=bytes.len() {
            let mut got = Vec::new();
            let mut r = FrameReader::client();
            collect(&mut r, &bytes[..cut], &mut got).unwrap();
            collect(&mut r, &bytes[cut..], &mut got).unwrap();
            assert_eq!(got, whole, "cut at {cut}");
            assert!(!r.in_frame());
        }
        let mut one_by_one = Vec::new();
        let mut r = FrameReader::client();
        for b in &bytes {
            collect(&mut r, std::slice::from_ref(b), &mut one_by_one).unwrap();
        }
        assert_eq!(one_by_one, whole);
    }

    #[test]
    fn padding_is_removed() {
        let f = Frame { kind: DATA, flags: PADDED, stream: 3, payload: b"\x02ab\0\0" };
        assert_eq!(f.content().unwrap(), b"ab");
        let bad = Frame { kind: DATA, flags: PADDED, stream: 3, payload: b"\x09ab" };
        assert!(bad.content().is_err());
        let prio = Frame { kind: HEADERS, flags: PRIORITY, stream: 1, payload: b"\0\0\0\0\x10\x82" };
        assert_eq!(prio.content().unwrap(), b"\x82");
    }

    #[test]
    fn wrong_preface_is_an_error() {
        let mut got = Vec::new();
        assert!(collect(&mut FrameReader::client(), b"GET / HTTP/1.1\r\n", &mut got).is_err());
    }

    proptest! {
        #[test]
        fn garbage_never_panics(data in proptest::collection::vec(any::<u8>(), 0..400), cut in 0usize..400) {
            let mut r = FrameReader::server();
            let cut = cut.min(data.len());
            let mut got = Vec::new();
            let _ = collect(&mut r, &data[..cut], &mut got);
            let _ = collect(&mut r, &data[cut..], &mut got);
            for (kind, flags, stream, payload) in got {
                let _ = Frame { kind, flags, stream, payload: &payload }.content();
            }
        }
    }
}
