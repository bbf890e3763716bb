//! What is noise in a response, beyond the rules a user writes: values that look volatile when recorded
//! (`volatile`), values that differ between replays of the same build (`learn`), and the shapes both use
//! (`shape`). The diff applies the resulting rules; this room only finds them.

pub(crate) mod learn;
pub(crate) mod shape;
pub(crate) mod volatile;
