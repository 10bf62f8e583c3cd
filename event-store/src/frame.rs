//! Log frames: consecutive records stored under one key.
//!
//! The writer packs the records of one group commit into frames of about [`FRAME_TARGET`] bytes,
//! each stored under the log key of its **last** position:
//!
//! ```text
//! [format u8 = 2][count u32 LE] then count x ([len u32 LE][record])
//! ```
//!
//! A record is exactly the v1 record of [`crate::codec`] (its own header and checksum), so every
//! record is still verified on its own and a damaged one is reported by its position. Keying by
//! the last position means the frame holding position `p` is the first log key at or after `p`:
//! every read is a forward seek, and the log head is the last key, read without decoding.
//!
//! Why frames: sled's cost is per key (a leaf holds at most 16 keys; each key has its own node
//! entry, page-table share and copy-on-write work). One key per ~13 records instead of one per
//! record cuts the log's share of the keys by an order of magnitude; see ARCHITECTURE.md.

use std::ops::Range;

use crate::error::{Error, Result};
use crate::keys;
use crate::storage::Storage;

/// Frame format byte.
pub(crate) const FORMAT_V2: u8 = 2;
/// Bytes before the first record.
pub(crate) const HEAD: usize = 5;
/// A frame holds at most this many bytes. A leaf of 17 such frames stays under sled's inline
/// limit (a quarter of its 512 KiB segment), so frames do not become blob files; a single larger
/// record makes a frame of its own.
pub(crate) const FRAME_TARGET: usize = 4096;

/// Builds one frame.
#[derive(Debug)]
pub(crate) struct FrameBuilder {
    buf: Vec<u8>,
    count: u32,
    last: u64,
    /// Where the last record pushed starts in `buf`.
    last_start: usize,
}

impl Default for FrameBuilder {
    /// An empty builder; its buffer is allocated by the first record.
    fn default() -> Self {
        Self { buf: Vec::new(), count: 0, last: 0, last_start: 0 }
    }
}

impl FrameBuilder {
    /// Adds the record of `position` (the next one after the last pushed), `len` bytes written
    /// by `write`. When it would not fit, the frame so far is closed first and returned (its
    /// last position and bytes, to be stored).
    pub(crate) fn push(
        &mut self,
        position: u64,
        len: usize,
        write: impl FnOnce(&mut Vec<u8>),
    ) -> Option<(u64, Vec<u8>)> {
        let closed = (!self.is_empty() && self.buf.len() + 4 + len > FRAME_TARGET).then(|| self.take());
        if self.buf.is_empty() {
            self.buf.reserve(FRAME_TARGET + 1024);
        }
        self.push_with(position, write);
        closed
    }

    /// Adds a record however large the frame gets (a stream-index entry's inline copy of a
    /// short run, bounded by its caller).
    pub(crate) fn push_copy(&mut self, position: u64, record: &[u8]) {
        if self.buf.is_empty() {
            self.buf.reserve(HEAD + 4 + record.len());
        }
        self.push_with(position, |out| out.extend_from_slice(record));
    }

    /// The bytes of the record pushed last (it is always in the open frame: `push` closes the
    /// frame before a record that does not fit, never after).
    pub(crate) fn last_record(&self) -> &[u8] {
        self.buf.get(self.last_start..).unwrap_or_default()
    }

    fn push_with(&mut self, position: u64, write: impl FnOnce(&mut Vec<u8>)) {
        if self.buf.is_empty() {
            self.buf.push(FORMAT_V2);
            self.buf.extend_from_slice(&[0; 4]);
        }
        let len_at = self.buf.len();
        self.buf.extend_from_slice(&[0; 4]);
        self.last_start = len_at + 4;
        write(&mut self.buf);
        let len = (self.buf.len() - len_at - 4) as u32;
        self.buf[len_at..len_at + 4].copy_from_slice(&len.to_le_bytes());
        self.count += 1;
        self.last = position;
    }

    /// The frame's bytes so far.
    pub(crate) fn len(&self) -> usize {
        self.buf.len()
    }

    /// True when nothing was pushed.
    pub(crate) fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The frame's last position and its bytes; the builder is empty again.
    pub(crate) fn take(&mut self) -> (u64, Vec<u8>) {
        let mut done = std::mem::take(self);
        done.buf[1..HEAD].copy_from_slice(&done.count.to_le_bytes());
        (done.last, done.buf)
    }
}

/// A frame read back: where its records start and end.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FrameInfo {
    /// Its first position.
    pub first: u64,
    /// Its last position (the key).
    pub last: u64,
}

/// Checks a frame's header; `last` is the position in its key.
pub(crate) fn parse(bytes: &[u8], last: u64) -> Result<FrameInfo> {
    let damaged = |why: String| Error::corrupt(format!("position {last}"), why);
    if bytes.len() < HEAD {
        return Err(damaged(format!("log frame of {} bytes is truncated", bytes.len())));
    }
    if bytes[0] != FORMAT_V2 {
        return Err(damaged(format!("unknown log frame format {}", bytes[0])));
    }
    let count = u64::from(u32::from_le_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]));
    if count == 0 || count > last {
        return Err(damaged(format!("log frame claims {count} records")));
    }
    Ok(FrameInfo { first: last - count + 1, last })
}

/// Walks the records of a frame by byte offset.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Cursor {
    /// The position of the record at `offset`.
    pub position: u64,
    /// The frame's last position.
    pub last: u64,
    offset: usize,
}

impl Cursor {
    /// A cursor on the first record of a frame.
    pub(crate) fn new(info: FrameInfo) -> Self {
        Self { position: info.first, last: info.last, offset: HEAD }
    }

    /// True when every record was taken.
    pub(crate) fn done(&self) -> bool {
        self.position > self.last
    }

    /// Where the next record's bytes are in `bytes`; an error (and the end of the frame) when
    /// the framing is damaged.
    pub(crate) fn next(&mut self, bytes: &[u8]) -> Option<(u64, Result<Range<usize>>)> {
        if self.done() {
            return None;
        }
        let position = self.position;
        let start = self.offset + 4;
        let found = bytes
            .get(self.offset..start)
            .map(|l| start + u32::from_le_bytes([l[0], l[1], l[2], l[3]]) as usize)
            .filter(|end| *end <= bytes.len());
        match found {
            Some(end) => {
                self.offset = end;
                self.position += 1;
                Some((position, Ok(start..end)))
            }
            None => {
                self.position = self.last + 1;
                Some((
                    position,
                    Err(Error::corrupt(format!("position {position}"), "log frame is truncated")),
                ))
            }
        }
    }
}

/// The record of `position` in a frame (which must hold it).
pub(crate) fn record_at(bytes: &[u8], last: u64, position: u64) -> Result<&[u8]> {
    let info = parse(bytes, last)?;
    if position < info.first || position > info.last {
        return Err(Error::corrupt(
            format!("position {position}"),
            "not in the log frame that should hold it",
        ));
    }
    let mut cursor = Cursor::new(info);
    while let Some((p, record)) = cursor.next(bytes) {
        let range = record?;
        if p == position {
            return Ok(&bytes[range]);
        }
    }
    Err(Error::corrupt(format!("position {position}"), "missing from its log frame"))
}

/// The frame holding `position` (the first log key at or after it) and its last position.
pub(crate) fn frame_holding<S: Storage>(storage: &S, position: u64) -> Result<Option<(S::Value, u64)>> {
    match storage.range(&keys::log(position), &keys::log_end(), false).next() {
        None => Ok(None),
        Some(item) => {
            let (k, v) = item?;
            let last =
                keys::trailing_u64(k.as_ref()).ok_or_else(|| Error::corrupt("log key", "short key"))?;
            Ok(Some((v, last)))
        }
    }
}

/// Point reads of records, keeping the last frame read (consecutive positions of a stream are
/// often in one frame).
pub(crate) struct FrameCache<S: Storage> {
    frame: Option<(S::Value, FrameInfo)>,
}

impl<S: Storage> Default for FrameCache<S> {
    fn default() -> Self {
        Self { frame: None }
    }
}

impl<S: Storage> FrameCache<S> {
    /// Runs `f` on the raw record at `position`; an error when the log does not hold it.
    pub(crate) fn with_record<T>(
        &mut self,
        storage: &S,
        position: u64,
        f: impl FnOnce(&[u8]) -> Result<T>,
    ) -> Result<T> {
        let cached = matches!(&self.frame, Some((_, i)) if i.first <= position && position <= i.last);
        if !cached {
            self.frame = None;
            let (v, last) = frame_holding(storage, position)?
                .ok_or_else(|| Error::corrupt(format!("position {position}"), "missing from the log"))?;
            let info = parse(v.as_ref(), last)?;
            self.frame = Some((v, info));
        }
        match &self.frame {
            Some((v, info)) => f(record_at(v.as_ref(), info.last, position)?),
            None => Err(Error::corrupt(format!("position {position}"), "missing from the log")),
        }
    }
}

/// Runs `f` on the raw record at `position`.
pub(crate) fn with_record<S: Storage, T>(
    storage: &S,
    position: u64,
    f: impl FnOnce(&[u8]) -> Result<T>,
) -> Result<T> {
    FrameCache::<S>::default().with_record(storage, position, f)
}

/// The raw records of positions `[from, to]`, frame by frame, in log order.
pub(crate) struct RecordScan<S: Storage> {
    frames: S::Iter,
    current: Option<(S::Value, Cursor)>,
    from: u64,
    to: u64,
    /// The position after the last frame taken.
    next_expected: u64,
    finished: bool,
}

impl<S: Storage> RecordScan<S> {
    /// Scans `[from, to]` (`from` of 0 reads from 1).
    pub(crate) fn new(storage: &S, from: u64, to: u64) -> Self {
        let from = from.max(1);
        Self {
            frames: storage.range(&keys::log(from), &keys::log_end(), false),
            current: None,
            from,
            to,
            next_expected: from,
            finished: from > to,
        }
    }

    /// The next record and its position. The bytes borrow the scan until the next call.
    pub(crate) fn next_record(&mut self) -> Option<(u64, Result<&[u8]>)> {
        loop {
            if self.finished {
                return None;
            }
            let Some((value, cursor)) = self.current.as_mut() else {
                match self.next_frame() {
                    Ok(true) => continue,
                    Ok(false) => {
                        self.finished = true;
                        return None;
                    }
                    Err((position, e)) => return Some((position, Err(e))),
                }
            };
            match cursor.next(value.as_ref()) {
                None => self.current = None,
                Some((p, _)) if p < self.from => {}
                Some((p, _)) if p > self.to => {
                    self.finished = true;
                    return None;
                }
                Some((p, Err(e))) => return Some((p, Err(e))),
                Some((p, Ok(range))) => {
                    let bytes = self.current.as_ref().map(|(v, _)| v.as_ref())?;
                    return Some((p, Ok(&bytes[range])));
                }
            }
        }
    }

    /// Takes the next frame: `Ok(false)` at the end; a damaged frame is an error at its place.
    fn next_frame(&mut self) -> std::result::Result<bool, (u64, Error)> {
        if self.next_expected > self.to {
            return Ok(false);
        }
        let (k, v) = match self.frames.next() {
            None => return Ok(false),
            Some(Ok(kv)) => kv,
            Some(Err(e)) => {
                self.finished = true;
                return Err((self.next_expected, e.into()));
            }
        };
        let Some(last) = keys::trailing_u64(k.as_ref()) else {
            return Err((self.next_expected, Error::corrupt("log key", "short key")));
        };
        let at = self.next_expected;
        self.next_expected = last.saturating_add(1);
        match parse(v.as_ref(), last) {
            Ok(info) => {
                self.current = Some((v, Cursor::new(info)));
                Ok(true)
            }
            Err(e) => Err((at, e)),
        }
    }
}

/// Byte range of the record of `position` inside a frame (tests damage records through it).
#[cfg(test)]
pub(crate) fn record_range(bytes: &[u8], last: u64, position: u64) -> std::ops::Range<usize> {
    let record = record_at(bytes, last, position).expect("record in frame");
    let start = record.as_ptr() as usize - bytes.as_ptr() as usize;
    start..start + record.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(first: u64, records: &[&[u8]]) -> (u64, Vec<u8>) {
        let mut b = FrameBuilder::default();
        for (i, r) in records.iter().enumerate() {
            b.push_with(first + i as u64, |out| out.extend_from_slice(r));
        }
        b.take()
    }

    #[test]
    fn records_come_back_in_order_with_their_positions() {
        let (last, bytes) = frame(10, &[b"a", b"", b"ccc"]);
        assert_eq!(last, 12);
        let info = parse(&bytes, last).expect("parse");
        assert_eq!((info.first, info.last), (10, 12));
        let mut c = Cursor::new(info);
        let mut got = Vec::new();
        while let Some((p, r)) = c.next(&bytes) {
            got.push((p, bytes[r.expect("record")].to_vec()));
        }
        assert_eq!(got, vec![(10, b"a".to_vec()), (11, vec![]), (12, b"ccc".to_vec())]);
        assert_eq!(record_at(&bytes, 12, 11).expect("at"), b"");
        assert!(record_at(&bytes, 12, 13).is_err());
        assert!(record_at(&bytes, 12, 9).is_err());
    }

    #[test]
    fn damaged_frames_are_errors_not_panics() {
        let (last, bytes) = frame(1, &[b"abc", b"def"]);
        for cut in 0..bytes.len() {
            let short = &bytes[..cut];
            if let Ok(info) = parse(short, last) {
                let mut c = Cursor::new(info);
                let mut errors = 0;
                while let Some((_, r)) = c.next(short) {
                    errors += usize::from(r.is_err());
                }
                assert!(cut == bytes.len() || errors == 1, "cut at {cut}");
            }
        }
        assert!(parse(&bytes, 1).is_err(), "two records cannot end at position 1");
        let mut other = bytes.clone();
        other[0] = 1;
        assert!(parse(&other, last).is_err());
        let mut zero = bytes.clone();
        zero[1..5].copy_from_slice(&0u32.to_le_bytes());
        assert!(parse(&zero, last).is_err());
        // A length that runs past the end.
        let mut long = bytes;
        long[5] = 0xff;
        let info = parse(&long, last).expect("header is fine");
        let (p, r) = Cursor::new(info).next(&long).expect("one item");
        assert_eq!(p, 1);
        assert!(r.is_err());
    }

    #[test]
    fn a_builder_closes_a_frame_before_it_overflows() {
        let mut b = FrameBuilder::default();
        assert!(b.is_empty());
        let small = vec![1u8; 1000];
        let mut closed = Vec::new();
        for p in 1..=9 {
            closed.extend(b.push(p, small.len(), |out| out.extend_from_slice(&small)));
        }
        // Four 1,000-byte records fit in 4 KiB with their framing; the fifth starts a new frame.
        assert_eq!(closed.iter().map(|(last, _)| *last).collect::<Vec<_>>(), vec![4, 8]);
        assert!(closed.iter().all(|(_, bytes)| bytes.len() <= FRAME_TARGET));
        // A record larger than a frame gets one of its own.
        let big = vec![7u8; 2 * FRAME_TARGET];
        let (last, _) = b.push(10, big.len(), |out| out.extend_from_slice(&big)).expect("closes frame 9");
        assert_eq!(last, 9);
        let (last, bytes) = b.take();
        assert_eq!(last, 10);
        assert_eq!(record_at(&bytes, 10, 10).expect("at").len(), 2 * FRAME_TARGET);
        assert!(b.is_empty());
        assert!(b.push(11, 1, |out| out.push(0)).is_none());
    }
}
