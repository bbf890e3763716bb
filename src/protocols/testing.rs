//! Helpers for the protocols' own tests: an observer fed a conversation piece by piece, its records kept in
//! memory and read back as the store would read them.

use std::time::{Instant, SystemTime};

use super::{Mock, Observer, ParseError, RecordCtx, Role};
use crate::store::MemorySink;

/// Feeds `pieces` (from the client?, bytes) in order to the observer `make` builds for a connection in
/// `role` opened at the epoch, each piece cut by `cut`, stopping at the first error; then closes it. Returns
/// the mocks it wrote and that error.
pub(crate) fn observe<O: Observer>(
    make: impl FnOnce(RecordCtx) -> O,
    role: Role,
    pieces: &[(bool, Vec<u8>)],
    cut: impl Fn(&[u8]) -> Vec<&[u8]>,
) -> (Vec<Mock>, Option<ParseError>) {
    let memory = MemorySink::new();
    let at = Instant::now();
    let mut obs = make(RecordCtx { opened_at: SystemTime::UNIX_EPOCH, opened: at, ..memory.ctx(role) });
    let mut error = None;
    'feed: for (from_client, bytes) in pieces {
        for piece in cut(bytes) {
            let r = if *from_client { obs.client(piece, at) } else { obs.server(piece, at) };
            if let Err(e) = r {
                error = Some(e);
                break 'feed;
            }
        }
    }
    obs.close(at);
    (memory.mocks(), error)
}

/// Each piece whole.
pub(crate) fn whole(b: &[u8]) -> Vec<&[u8]> {
    vec![b]
}
