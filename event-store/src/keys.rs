//! The storage layout: one ordered key space, a one-byte prefix per kind of entry, big-endian
//! integers so byte order is numeric order.
//!
//! | prefix | key                                   | value                    |
//! |--------|---------------------------------------|--------------------------|
//! | `L`    | last position of the frame (u64)      | a log frame of encoded records (`frame`) |
//! | `S`    | len (u16), stream id, first version (u64) | a run: first position (u64), count (u32); for a short run, a copy of its records as a log frame |
//! | `I`    | event id (16 bytes)                   | position (u64)           |
//! | `K`    | checkpoint name                       | value (u64)              |
//! | `N`    | stream id                             | encoded snapshot         |
//! | `M`    | name                                  | store metadata           |
//! | `X`    | anything                              | application data (read models); never touched by the store |
//!
//! A stream's head is the end of the run in the last `S` key under its prefix; the log head is
//! the key of the last `L` frame. No counter is stored twice, so nothing can disagree after a
//! crash.

pub(crate) const LOG: u8 = b'L';
pub(crate) const STREAM: u8 = b'S';
pub(crate) const EVENT_ID: u8 = b'I';
pub(crate) const CHECKPOINT: u8 = b'K';
pub(crate) const SNAPSHOT: u8 = b'N';
pub(crate) const META: u8 = b'M';
/// Keys starting with this byte belong to the application (read models, ...): the store never
/// writes, reads or verifies them, so they can share its database and atomic batches.
pub const APP: u8 = b'X';

pub(crate) fn log(position: u64) -> [u8; 9] {
    let mut k = [LOG; 9];
    k[1..].copy_from_slice(&position.to_be_bytes());
    k
}

/// `[LOG, LOG+1)`: every log record.
pub(crate) fn log_end() -> [u8; 1] {
    [LOG + 1]
}

fn prefixed(tag: u8, name: &str, extra: usize) -> Vec<u8> {
    let mut k = Vec::with_capacity(3 + name.len() + extra);
    k.push(tag);
    // Stream ids and categories are at most 256 bytes (validated), so they fit a u16.
    let len = u16::try_from(name.len()).unwrap_or(u16::MAX);
    k.extend_from_slice(&len.to_be_bytes());
    k.extend_from_slice(name.as_bytes());
    k
}

pub(crate) fn stream_prefix(stream: &str) -> Vec<u8> {
    prefixed(STREAM, stream, 8)
}

pub(crate) fn stream(stream: &str, version: u64) -> Vec<u8> {
    let mut k = prefixed(STREAM, stream, 8);
    k.extend_from_slice(&version.to_be_bytes());
    k
}

pub(crate) fn event_id(id: &uuid::Uuid) -> [u8; 17] {
    let mut k = [EVENT_ID; 17];
    k[1..].copy_from_slice(id.as_bytes());
    k
}

pub(crate) fn checkpoint(name: &str) -> Vec<u8> {
    let mut k = vec![CHECKPOINT];
    k.extend_from_slice(name.as_bytes());
    k
}

pub(crate) fn snapshot(stream: &str) -> Vec<u8> {
    let mut k = vec![SNAPSHOT];
    k.extend_from_slice(stream.as_bytes());
    k
}

pub(crate) fn meta(name: &str) -> Vec<u8> {
    let mut k = vec![META];
    k.extend_from_slice(name.as_bytes());
    k
}

/// The trailing big-endian u64 of a key or value, if it has one.
pub(crate) fn trailing_u64(bytes: &[u8]) -> Option<u64> {
    let start = bytes.len().checked_sub(8)?;
    let arr: [u8; 8] = bytes[start..].try_into().ok()?;
    Some(u64::from_be_bytes(arr))
}

/// The smallest key greater than every key starting with `prefix`.
pub(crate) fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return end;
        }
    }
    vec![u8::MAX; prefix.len() + 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_keys_of_a_prefix_stream_do_not_interleave() {
        // "order-1" must not sort inside "order-1x" nor the other way round.
        let a = stream_prefix("order-1");
        let b = stream("order-1x", 1);
        assert!(!b.starts_with(&a));
        assert!(stream("order-1", u64::MAX) < prefix_end(&a));
    }

    #[test]
    fn log_keys_sort_numerically() {
        assert!(log(255) < log(256));
        assert!(log(u64::MAX).as_slice() < log_end().as_slice());
        assert_eq!(trailing_u64(&log(42)), Some(42));
    }

    #[test]
    fn prefix_end_handles_all_ones() {
        assert_eq!(prefix_end(&[1, 0xff]), vec![2]);
        assert_eq!(prefix_end(&[0xff]), vec![0xff, 0xff]);
    }
}
