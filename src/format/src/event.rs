//! Allocation events: how the recorder encodes them (into a fixed buffer, on the hot path) and how
//! the reader decodes them.
//!
//! Inside an `Events` record, after decompression, events follow each other with no framing:
//!
//! ```text
//! Alloc       := 1 seq ts kind addr size usable stack
//! Free        := 2 seq ts addr
//! Realloc     := 3 seq ts old_addr new_addr size usable stack
//! AllocFailed := 4 seq ts kind size stack
//! ```
//!
//! Every field is a varint with its absolute value, so each record decodes on its own (a damaged
//! record loses only its own events); zstd removes most of the redundancy. `ts` is nanoseconds since
//! the process record's start. A `Realloc` whose `new_addr` is 0 and `size` is 0 freed the block
//! (`realloc(p, 0)` on glibc). A `realloc` that failed leaves its block alone and is recorded as
//! `AllocFailed` of kind [`AllocKind::Realloc`]; `realloc(NULL, n)` is an `Alloc` of that kind.

use crate::varint::{Cursor, FixedBuf, Malformed};

/// The largest encoded event: a tag and at most seven varints.
pub const MAX_EVENT_LEN: usize = 1 + 7 * crate::varint::MAX_VARINT_LEN;

pub type EventBuf = FixedBuf<MAX_EVENT_LEN>;

const TAG_ALLOC: u8 = 1;
const TAG_FREE: u8 = 2;
const TAG_REALLOC: u8 = 3;
const TAG_FAILED: u8 = 4;

/// Which function produced a block.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum AllocKind {
    Malloc = 0,
    Calloc = 1,
    /// `realloc(NULL, n)`, or (for `AllocFailed`) a `realloc` that returned NULL.
    Realloc = 2,
    Memalign = 3,
    PosixMemalign = 4,
    AlignedAlloc = 5,
    Valloc = 6,
    Pvalloc = 7,
    Reallocarray = 8,
}

impl AllocKind {
    pub fn from_u8(b: u8) -> Option<AllocKind> {
        use AllocKind::*;
        Some(match b {
            0 => Malloc,
            1 => Calloc,
            2 => Realloc,
            3 => Memalign,
            4 => PosixMemalign,
            5 => AlignedAlloc,
            6 => Valloc,
            7 => Pvalloc,
            8 => Reallocarray,
            _ => return None,
        })
    }
    pub fn name(self) -> &'static str {
        use AllocKind::*;
        match self {
            Malloc => "malloc",
            Calloc => "calloc",
            Realloc => "realloc",
            Memalign => "memalign",
            PosixMemalign => "posix_memalign",
            AlignedAlloc => "aligned_alloc",
            Valloc => "valloc",
            Pvalloc => "pvalloc",
            Reallocarray => "reallocarray",
        }
    }
}

/// One decoded event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Event {
    pub seq: u64,
    pub ts_ns: u64,
    pub tid: u32,
    pub kind: EventKind,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    Alloc {
        kind: AllocKind,
        addr: u64,
        size: u64,
        usable: u64,
        stack: u32,
    },
    Free {
        addr: u64,
    },
    Realloc {
        old_addr: u64,
        new_addr: u64,
        size: u64,
        usable: u64,
        stack: u32,
    },
    AllocFailed {
        kind: AllocKind,
        size: u64,
        stack: u32,
    },
}

#[inline]
pub fn encode_alloc(
    b: &mut EventBuf,
    seq: u64,
    ts: u64,
    kind: AllocKind,
    addr: u64,
    size: u64,
    usable: u64,
    stack: u32,
) {
    b.u8(TAG_ALLOC);
    b.uvarint(seq);
    b.uvarint(ts);
    b.u8(kind as u8);
    b.uvarint(addr);
    b.uvarint(size);
    b.uvarint(usable);
    b.uvarint(u64::from(stack));
}

#[inline]
pub fn encode_free(b: &mut EventBuf, seq: u64, ts: u64, addr: u64) {
    b.u8(TAG_FREE);
    b.uvarint(seq);
    b.uvarint(ts);
    b.uvarint(addr);
}

#[inline]
pub fn encode_realloc(
    b: &mut EventBuf,
    seq: u64,
    ts: u64,
    old_addr: u64,
    new_addr: u64,
    size: u64,
    usable: u64,
    stack: u32,
) {
    b.u8(TAG_REALLOC);
    b.uvarint(seq);
    b.uvarint(ts);
    b.uvarint(old_addr);
    b.uvarint(new_addr);
    b.uvarint(size);
    b.uvarint(usable);
    b.uvarint(u64::from(stack));
}

#[inline]
pub fn encode_failed(b: &mut EventBuf, seq: u64, ts: u64, kind: AllocKind, size: u64, stack: u32) {
    b.u8(TAG_FAILED);
    b.uvarint(seq);
    b.uvarint(ts);
    b.u8(kind as u8);
    b.uvarint(size);
    b.uvarint(u64::from(stack));
}

/// Counts the whole events in `data` without decoding them (the writer's tally for the `End`
/// record). Stops at the first malformed byte.
pub fn count_events(data: &[u8]) -> u64 {
    let mut c = Cursor::new(data);
    let mut n = 0;
    let skip = |c: &mut Cursor, k: usize| -> Result<(), Malformed> {
        for _ in 0..k {
            c.uvarint()?;
        }
        Ok(())
    };
    while !c.is_empty() {
        let ok = match c.u8() {
            Ok(TAG_ALLOC) => skip(&mut c, 2)
                .and_then(|_| c.u8())
                .and_then(|_| skip(&mut c, 4)),
            Ok(TAG_FREE) => skip(&mut c, 3),
            Ok(TAG_REALLOC) => skip(&mut c, 7),
            Ok(TAG_FAILED) => skip(&mut c, 2)
                .and_then(|_| c.u8())
                .and_then(|_| skip(&mut c, 2)),
            _ => Err(Malformed),
        };
        if ok.is_err() {
            break;
        }
        n += 1;
    }
    n
}

/// Decodes the events of one `Events` record into `out`. On malformed input it keeps the events
/// before the damage and returns the error.
pub fn decode_events(data: &[u8], tid: u32, out: &mut Vec<Event>) -> Result<(), Malformed> {
    let mut c = Cursor::new(data);
    while !c.is_empty() {
        let tag = c.u8()?;
        let seq = c.uvarint()?;
        let ts_ns = c.uvarint()?;
        let kind = match tag {
            TAG_ALLOC => EventKind::Alloc {
                kind: AllocKind::from_u8(c.u8()?).ok_or(Malformed)?,
                addr: c.uvarint()?,
                size: c.uvarint()?,
                usable: c.uvarint()?,
                stack: c.u32()?,
            },
            TAG_FREE => EventKind::Free { addr: c.uvarint()? },
            TAG_REALLOC => EventKind::Realloc {
                old_addr: c.uvarint()?,
                new_addr: c.uvarint()?,
                size: c.uvarint()?,
                usable: c.uvarint()?,
                stack: c.u32()?,
            },
            TAG_FAILED => EventKind::AllocFailed {
                kind: AllocKind::from_u8(c.u8()?).ok_or(Malformed)?,
                size: c.uvarint()?,
                stack: c.u32()?,
            },
            _ => return Err(Malformed),
        };
        out.push(Event {
            seq,
            ts_ns,
            tid,
            kind,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_event_kind_round_trips() {
        let mut raw = Vec::new();
        let mut b = EventBuf::default();
        encode_alloc(
            &mut b,
            1,
            10,
            AllocKind::Calloc,
            0x7fff_0000_1000,
            24,
            40,
            7,
        );
        raw.extend_from_slice(b.as_slice());
        let mut b = EventBuf::default();
        encode_realloc(&mut b, 2, 11, 0x7fff_0000_1000, 0x5555_0000, 4096, 4104, 8);
        raw.extend_from_slice(b.as_slice());
        let mut b = EventBuf::default();
        encode_failed(&mut b, 3, 12, AllocKind::Malloc, u64::MAX, 9);
        raw.extend_from_slice(b.as_slice());
        let mut b = EventBuf::default();
        encode_free(&mut b, u64::MAX, u64::MAX, u64::MAX);
        raw.extend_from_slice(b.as_slice());
        assert!(b.len <= MAX_EVENT_LEN);

        let mut out = Vec::new();
        decode_events(&raw, 42, &mut out).unwrap();
        assert_eq!(out.len(), 4);
        assert_eq!(
            out[0].kind,
            EventKind::Alloc {
                kind: AllocKind::Calloc,
                addr: 0x7fff_0000_1000,
                size: 24,
                usable: 40,
                stack: 7
            }
        );
        assert_eq!(out[1].seq, 2);
        assert_eq!(
            out[2].kind,
            EventKind::AllocFailed {
                kind: AllocKind::Malloc,
                size: u64::MAX,
                stack: 9
            }
        );
        assert_eq!(out[3].kind, EventKind::Free { addr: u64::MAX });
        assert!(out.iter().all(|e| e.tid == 42));
        assert_eq!(count_events(&raw), 4);

        // A cut in the middle keeps the whole events before it.
        let mut out = Vec::new();
        assert!(decode_events(&raw[..raw.len() - 2], 1, &mut out).is_err());
        assert_eq!(out.len(), 3);
    }
}
