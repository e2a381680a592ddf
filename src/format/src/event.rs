//! Allocation events: how the recorder encodes them (into a fixed buffer, on the hot path), how
//! its writer packs them for the dump, and how the reader decodes them.
//!
//! On the hot path an event is a tag and varints with absolute values ([`encode_alloc`] and its
//! siblings): no per-thread encoder state, nothing to get wrong when a ring is drained at an
//! arbitrary point. The writer then rewrites each drained batch into the *packed* form stored in
//! `Events` records ([`pack`]), where every field is relative to the previous event of the same
//! record, which roughly halves what zstd has to compress. Each record starts from zero, so it
//! decodes on its own and a damaged record loses only its own events.
//!
//! ```text
//! Alloc       := 1 seq ts kind addr size usable stack
//! Free        := 2 seq ts addr
//! Realloc     := 3 seq ts old_addr new_addr size usable stack (seq - out_seq)
//! AllocFailed := 4 seq ts kind size stack
//! Map         := 5 seq ts addr len prot flags stack
//! Unmap       := 6 seq ts addr len
//! Remap       := 7 seq ts old_addr old_len new_addr new_len stack (seq - out_seq)
//! ```
//!
//! `Map`, `Unmap` and `Remap` are the program's own `mmap`/`mmap64`, `munmap` and `mremap`
//! calls (not the allocator's: glibc's malloc maps its chunks with internal calls, and another
//! allocator's calls are told apart by the front end). They are a metric of their own, never heap
//! blocks. `len` is what the program passed (the kernel rounds it up to whole pages); `prot` is
//! the `PROT_*` bits (read 1, write 2, exec 4); `flags` are [`MAP_ANONYMOUS`], [`MAP_SHARED`]
//! and [`MAP_FIXED`]. An `Unmap` is numbered before the system call (the range may be handed to
//! another thread's `mmap` as soon as it is gone) and written only if the call succeeded; a
//! `Remap`, like a `Realloc`, carries the number taken before the call (`out_seq`, when the old
//! range left: the reader yields an [`EventKind::RemapOut`] there) and the one after. A reader
//! older than these kinds takes a record that holds one for damage: it keeps the events before
//! it and says that the rest of the record was lost.
//!
//! Packed, per record: `seq` is the difference to the previous event's (varint), `ts` likewise
//! (zigzag), `seq - out_seq` is plain, addresses are zigzag differences to the previous address field (a realloc's new
//! address to its old one), `usable` is zigzag(usable - size), `stack` a zigzag difference to the
//! previous stack id; `size` and `kind` are plain. `ts` is nanoseconds since the process record's
//! start. A `Realloc` whose `new_addr` is 0 and `size` is 0 freed the block (`realloc(p, 0)` on
//! glibc). A realloc carries two sequence numbers: `out_seq`, taken before the real `realloc`
//! (the moment the old block may go back to the allocator, which can hand its address to another
//! thread at once), and `seq`, taken after it returned (the new block exists). The reader yields
//! a [`EventKind::ReallocOut`] at `out_seq` and the [`EventKind::Realloc`] at `seq`, so that in
//! sequence order an address is never live twice. A `realloc` that failed leaves its block alone and is recorded as `AllocFailed` of kind
//! [`AllocKind::Realloc`]; `realloc(NULL, n)` is an `Alloc` of that kind.

use crate::varint::{put_uvarint, unzigzag, zigzag, Cursor, FixedBuf, Malformed};

/// The largest encoded event: a tag and at most seven varints.
pub const MAX_EVENT_LEN: usize = 1 + 8 * crate::varint::MAX_VARINT_LEN;

pub type EventBuf = FixedBuf<MAX_EVENT_LEN>;

const TAG_ALLOC: u8 = 1;
const TAG_FREE: u8 = 2;
const TAG_REALLOC: u8 = 3;
const TAG_FAILED: u8 = 4;
const TAG_MAP: u8 = 5;
const TAG_UNMAP: u8 = 6;
const TAG_REMAP: u8 = 7;

/// [`EventKind::Map`] flags: an anonymous mapping (else a file's).
pub const MAP_ANONYMOUS: u32 = 1;
/// A shared mapping (else private, copy-on-write).
pub const MAP_SHARED: u32 = 2;
/// Placed at a fixed address (`MAP_FIXED`, `MAP_FIXED_NOREPLACE`): it replaced whatever was mapped
/// there.
pub const MAP_FIXED: u32 = 4;

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
    /// The block at `addr` is being reallocated: from here on (in sequence order) its address
    /// may belong to another block. The matching [`EventKind::Realloc`] of the same thread
    /// follows.
    ReallocOut {
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
    /// The program mapped `[addr, addr + len)` (`mmap`); a fixed mapping replaced what was there.
    Map {
        addr: u64,
        len: u64,
        prot: u32,
        flags: u32,
        stack: u32,
    },
    /// The program unmapped `[addr, addr + len)` (`munmap`): any part of any mapping.
    Unmap {
        addr: u64,
        len: u64,
    },
    /// The range `[addr, addr + len)` is being remapped: from here on (in sequence order) it may
    /// belong to another mapping. The matching [`EventKind::Remap`] of the same thread follows.
    RemapOut {
        addr: u64,
        len: u64,
    },
    /// The program moved or resized a mapping (`mremap`): the old range is gone (at its
    /// [`EventKind::RemapOut`]), the new one mapped from this stack.
    Remap {
        old_addr: u64,
        old_len: u64,
        new_addr: u64,
        new_len: u64,
        stack: u32,
    },
}

impl EventKind {
    /// The stack the event was made from, for the kinds that have one.
    pub fn stack(&self) -> Option<u32> {
        match *self {
            EventKind::Alloc { stack, .. }
            | EventKind::Realloc { stack, .. }
            | EventKind::AllocFailed { stack, .. }
            | EventKind::Map { stack, .. }
            | EventKind::Remap { stack, .. } => Some(stack),
            EventKind::Free { .. }
            | EventKind::ReallocOut { .. }
            | EventKind::Unmap { .. }
            | EventKind::RemapOut { .. } => None,
        }
    }
}

// One argument per field of the wire format, on the hot path: a struct would only be unpacked.
#[allow(clippy::too_many_arguments)]
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

#[allow(clippy::too_many_arguments)]
#[inline]
pub fn encode_realloc(
    b: &mut EventBuf,
    seq: u64,
    out_seq: u64,
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
    b.uvarint(seq.saturating_sub(out_seq));
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

#[allow(clippy::too_many_arguments)]
#[inline]
pub fn encode_map(
    b: &mut EventBuf,
    seq: u64,
    ts: u64,
    addr: u64,
    len: u64,
    prot: u32,
    flags: u32,
    stack: u32,
) {
    b.u8(TAG_MAP);
    b.uvarint(seq);
    b.uvarint(ts);
    b.uvarint(addr);
    b.uvarint(len);
    b.uvarint(u64::from(prot));
    b.uvarint(u64::from(flags));
    b.uvarint(u64::from(stack));
}

#[inline]
pub fn encode_unmap(b: &mut EventBuf, seq: u64, ts: u64, addr: u64, len: u64) {
    b.u8(TAG_UNMAP);
    b.uvarint(seq);
    b.uvarint(ts);
    b.uvarint(addr);
    b.uvarint(len);
}

#[allow(clippy::too_many_arguments)]
#[inline]
pub fn encode_remap(
    b: &mut EventBuf,
    seq: u64,
    out_seq: u64,
    ts: u64,
    old_addr: u64,
    old_len: u64,
    new_addr: u64,
    new_len: u64,
    stack: u32,
) {
    b.u8(TAG_REMAP);
    b.uvarint(seq);
    b.uvarint(ts);
    b.uvarint(old_addr);
    b.uvarint(old_len);
    b.uvarint(new_addr);
    b.uvarint(new_len);
    b.uvarint(u64::from(stack));
    b.uvarint(seq.saturating_sub(out_seq));
}

fn u32_of(v: u64) -> Result<u32, Malformed> {
    u32::try_from(v).map_err(|_| Malformed)
}

/// Before a realloc (a remap), the moment its old block (range) left: `seq - back` in sequence
/// order, as a `ReallocOut` (`RemapOut`).
fn push_out(
    out: &mut Vec<Event>,
    seq: u64,
    back: u64,
    ts_ns: u64,
    tid: u32,
    kind: EventKind,
) -> Result<(), Malformed> {
    let left = match kind {
        EventKind::Realloc { old_addr, .. } => EventKind::ReallocOut { addr: old_addr },
        EventKind::Remap {
            old_addr, old_len, ..
        } => EventKind::RemapOut {
            addr: old_addr,
            len: old_len,
        },
        _ => return Ok(()),
    };
    if back == 0 {
        return Ok(()); // numbered as one: the event itself says the old block (range) left
    }
    let out_seq = seq.checked_sub(back).ok_or(Malformed)?;
    // It follows this thread's previous event, whose number it cannot reach or pass.
    if out.last().is_some_and(|p| p.tid == tid && p.seq >= out_seq) {
        return Err(Malformed);
    }
    out.push(Event {
        seq: out_seq,
        ts_ns,
        tid,
        kind: left,
    });
    Ok(())
}

/// Decodes hot-path (plain) events into `out`. On malformed input it keeps the events before the
/// damage and returns the error.
pub fn decode_plain(data: &[u8], tid: u32, out: &mut Vec<Event>) -> Result<(), Malformed> {
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
            TAG_REALLOC => {
                let kind = EventKind::Realloc {
                    old_addr: c.uvarint()?,
                    new_addr: c.uvarint()?,
                    size: c.uvarint()?,
                    usable: c.uvarint()?,
                    stack: c.u32()?,
                };
                push_out(out, seq, c.uvarint()?, ts_ns, tid, kind)?;
                kind
            }
            TAG_FAILED => EventKind::AllocFailed {
                kind: AllocKind::from_u8(c.u8()?).ok_or(Malformed)?,
                size: c.uvarint()?,
                stack: c.u32()?,
            },
            TAG_MAP => EventKind::Map {
                addr: c.uvarint()?,
                len: c.uvarint()?,
                prot: u32_of(c.uvarint()?)?,
                flags: u32_of(c.uvarint()?)?,
                stack: c.u32()?,
            },
            TAG_UNMAP => EventKind::Unmap {
                addr: c.uvarint()?,
                len: c.uvarint()?,
            },
            TAG_REMAP => {
                let kind = EventKind::Remap {
                    old_addr: c.uvarint()?,
                    old_len: c.uvarint()?,
                    new_addr: c.uvarint()?,
                    new_len: c.uvarint()?,
                    stack: c.u32()?,
                };
                push_out(out, seq, c.uvarint()?, ts_ns, tid, kind)?;
                kind
            }
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

/// Field-by-field delta state of a packed record.
#[derive(Default)]
struct Deltas {
    seq: u64,
    ts: u64,
    addr: u64,
    stack: u32,
}

impl Deltas {
    fn addr(&mut self, out: &mut Vec<u8>, a: u64) {
        put_uvarint(out, zigzag(a.wrapping_sub(self.addr) as i64));
        self.addr = a;
    }
    fn stack(&mut self, out: &mut Vec<u8>, s: u32) {
        put_uvarint(out, zigzag(i64::from(s) - i64::from(self.stack)));
        self.stack = s;
    }
    fn read_addr(&mut self, c: &mut Cursor) -> Result<u64, Malformed> {
        self.addr = self.addr.wrapping_add(unzigzag(c.uvarint()?) as u64);
        Ok(self.addr)
    }
    fn read_stack(&mut self, c: &mut Cursor) -> Result<u32, Malformed> {
        let s = i64::from(self.stack) + unzigzag(c.uvarint()?);
        self.stack = u32::try_from(s).map_err(|_| Malformed)?;
        Ok(self.stack)
    }
}

/// Rewrites plain events (as drained from a ring) into the packed form of an `Events` record,
/// appending to `out`; returns how many events it packed. Stops at the first malformed byte
/// (which the recorder never writes).
pub fn pack(plain: &[u8], out: &mut Vec<u8>) -> u64 {
    pack_some(plain, out, usize::MAX).0
}

/// [`pack`], stopping after the event that makes `out` reach `limit` bytes: one record's worth.
/// Returns (events packed, plain bytes consumed); the rest goes into the next record, which
/// starts its deltas from zero again.
pub fn pack_some(plain: &[u8], out: &mut Vec<u8>, limit: usize) -> (u64, usize) {
    let mut c = Cursor::new(plain);
    let mut d = Deltas::default();
    let mut n = 0;
    let mut one = |c: &mut Cursor, out: &mut Vec<u8>| -> Result<(), Malformed> {
        let tag = c.u8()?;
        let seq = c.uvarint()?;
        let ts = c.uvarint()?;
        let start = out.len();
        out.push(tag);
        put_uvarint(out, seq.wrapping_sub(d.seq));
        put_uvarint(out, zigzag(ts.wrapping_sub(d.ts) as i64));
        d.seq = seq;
        d.ts = ts;
        let r = (|| {
            match tag {
                TAG_ALLOC => {
                    out.push(c.u8()?);
                    d.addr(out, c.uvarint()?);
                    let size = c.uvarint()?;
                    put_uvarint(out, size);
                    put_uvarint(out, zigzag(c.uvarint()?.wrapping_sub(size) as i64));
                    d.stack(out, c.u32()?);
                }
                TAG_FREE => d.addr(out, c.uvarint()?),
                TAG_REALLOC => {
                    d.addr(out, c.uvarint()?);
                    d.addr(out, c.uvarint()?);
                    let size = c.uvarint()?;
                    put_uvarint(out, size);
                    put_uvarint(out, zigzag(c.uvarint()?.wrapping_sub(size) as i64));
                    d.stack(out, c.u32()?);
                    put_uvarint(out, c.uvarint()?);
                }
                TAG_FAILED => {
                    out.push(c.u8()?);
                    put_uvarint(out, c.uvarint()?);
                    d.stack(out, c.u32()?);
                }
                TAG_MAP => {
                    d.addr(out, c.uvarint()?);
                    put_uvarint(out, c.uvarint()?);
                    put_uvarint(out, c.uvarint()?);
                    put_uvarint(out, c.uvarint()?);
                    d.stack(out, c.u32()?);
                }
                TAG_UNMAP => {
                    d.addr(out, c.uvarint()?);
                    put_uvarint(out, c.uvarint()?);
                }
                TAG_REMAP => {
                    d.addr(out, c.uvarint()?);
                    put_uvarint(out, c.uvarint()?);
                    d.addr(out, c.uvarint()?);
                    put_uvarint(out, c.uvarint()?);
                    d.stack(out, c.u32()?);
                    put_uvarint(out, c.uvarint()?);
                }
                _ => return Err(Malformed),
            }
            Ok(())
        })();
        if r.is_err() {
            out.truncate(start);
        }
        r
    };
    let mut consumed = 0;
    while !c.is_empty() && out.len() < limit {
        if one(&mut c, out).is_err() {
            break;
        }
        n += 1;
        consumed = plain.len() - c.remaining();
    }
    (n, consumed)
}

/// Decodes the packed events of one `Events` record into `out`. On malformed input it keeps the
/// events before the damage and returns the error.
pub fn decode_events(data: &[u8], tid: u32, out: &mut Vec<Event>) -> Result<(), Malformed> {
    let mut c = Cursor::new(data);
    let mut d = Deltas::default();
    while !c.is_empty() {
        let tag = c.u8()?;
        d.seq = d.seq.wrapping_add(c.uvarint()?);
        d.ts = d.ts.wrapping_add(unzigzag(c.uvarint()?) as u64);
        let kind = match tag {
            TAG_ALLOC => {
                let kind = AllocKind::from_u8(c.u8()?).ok_or(Malformed)?;
                let addr = d.read_addr(&mut c)?;
                let size = c.uvarint()?;
                let usable = size.wrapping_add(unzigzag(c.uvarint()?) as u64);
                EventKind::Alloc {
                    kind,
                    addr,
                    size,
                    usable,
                    stack: d.read_stack(&mut c)?,
                }
            }
            TAG_FREE => EventKind::Free {
                addr: d.read_addr(&mut c)?,
            },
            TAG_REALLOC => {
                let old_addr = d.read_addr(&mut c)?;
                let new_addr = d.read_addr(&mut c)?;
                let size = c.uvarint()?;
                let usable = size.wrapping_add(unzigzag(c.uvarint()?) as u64);
                let kind = EventKind::Realloc {
                    old_addr,
                    new_addr,
                    size,
                    usable,
                    stack: d.read_stack(&mut c)?,
                };
                push_out(out, d.seq, c.uvarint()?, d.ts, tid, kind)?;
                kind
            }
            TAG_FAILED => EventKind::AllocFailed {
                kind: AllocKind::from_u8(c.u8()?).ok_or(Malformed)?,
                size: c.uvarint()?,
                stack: d.read_stack(&mut c)?,
            },
            TAG_MAP => EventKind::Map {
                addr: d.read_addr(&mut c)?,
                len: c.uvarint()?,
                prot: u32_of(c.uvarint()?)?,
                flags: u32_of(c.uvarint()?)?,
                stack: d.read_stack(&mut c)?,
            },
            TAG_UNMAP => EventKind::Unmap {
                addr: d.read_addr(&mut c)?,
                len: c.uvarint()?,
            },
            TAG_REMAP => {
                let old_addr = d.read_addr(&mut c)?;
                let old_len = c.uvarint()?;
                let new_addr = d.read_addr(&mut c)?;
                let new_len = c.uvarint()?;
                let kind = EventKind::Remap {
                    old_addr,
                    old_len,
                    new_addr,
                    new_len,
                    stack: d.read_stack(&mut c)?,
                };
                push_out(out, d.seq, c.uvarint()?, d.ts, tid, kind)?;
                kind
            }
            _ => return Err(Malformed),
        };
        out.push(Event {
            seq: d.seq,
            ts_ns: d.ts,
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
    fn mapping_events_round_trip() {
        let mut raw = Vec::new();
        let mut b = EventBuf::default();
        encode_map(
            &mut b,
            5,
            20,
            0x7f00_0000_0000,
            3 * 4096,
            3,
            MAP_ANONYMOUS,
            4,
        );
        raw.extend_from_slice(b.as_slice());
        let mut b = EventBuf::default();
        encode_unmap(&mut b, 6, 21, 0x7f00_0000_1000, 4096);
        raw.extend_from_slice(b.as_slice());
        let mut b = EventBuf::default();
        encode_remap(
            &mut b,
            9,
            7,
            22,
            0x7f00_0000_2000,
            4096,
            0x7e00_0000_0000,
            u64::MAX,
            u32::MAX,
        );
        assert!(b.len <= MAX_EVENT_LEN);
        raw.extend_from_slice(b.as_slice());
        let mut plain = Vec::new();
        decode_plain(&raw, 3, &mut plain).unwrap();
        let mut packed = Vec::new();
        assert_eq!(
            pack(&raw, &mut packed),
            3,
            "RemapOut is not an event written"
        );
        let mut unpacked = Vec::new();
        decode_events(&packed, 3, &mut unpacked).unwrap();
        assert_eq!(unpacked, plain);
        let kinds: Vec<(u64, EventKind)> = plain.iter().map(|e| (e.seq, e.kind)).collect();
        assert_eq!(
            kinds,
            [
                (
                    5,
                    EventKind::Map {
                        addr: 0x7f00_0000_0000,
                        len: 3 * 4096,
                        prot: 3,
                        flags: MAP_ANONYMOUS,
                        stack: 4
                    }
                ),
                (
                    6,
                    EventKind::Unmap {
                        addr: 0x7f00_0000_1000,
                        len: 4096
                    }
                ),
                (
                    7,
                    EventKind::RemapOut {
                        addr: 0x7f00_0000_2000,
                        len: 4096
                    }
                ),
                (
                    9,
                    EventKind::Remap {
                        old_addr: 0x7f00_0000_2000,
                        old_len: 4096,
                        new_addr: 0x7e00_0000_0000,
                        new_len: u64::MAX,
                        stack: u32::MAX
                    }
                ),
            ]
        );
        // A remap numbered out before its thread's previous event is damage.
        let mut b = EventBuf::default();
        encode_remap(&mut b, 10, 6, 23, 1, 1, 2, 2, 1);
        let mut bad = raw.clone();
        bad.extend_from_slice(b.as_slice());
        let mut out = Vec::new();
        assert!(decode_plain(&bad, 3, &mut out).is_err());
        assert_eq!(out.len(), 4);
    }

    #[test]
    fn an_unknown_event_kind_ends_its_record_cleanly() {
        // What a reader meets in a newer writer's record (as an older one meets `Map`): the
        // events before it are kept, the rest of the record is reported, nothing panics.
        let mut raw = Vec::new();
        let mut b = EventBuf::default();
        encode_map(&mut b, 1, 1, 0x1000, 4096, 3, MAP_ANONYMOUS, 1);
        raw.extend_from_slice(b.as_slice());
        raw.extend_from_slice(&[99, 2, 2, 0x10]);
        let mut packed = Vec::new();
        assert_eq!(pack(&raw, &mut packed), 1);
        packed.extend_from_slice(&[99, 1, 1, 0x10]);
        let mut out = Vec::new();
        assert!(decode_events(&packed, 1, &mut out).is_err());
        assert_eq!(out.len(), 1);
        assert!(matches!(out[0].kind, EventKind::Map { len: 4096, .. }));
    }

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
        encode_realloc(
            &mut b,
            2,
            2,
            11,
            0x7fff_0000_1000,
            0x5555_0000,
            4096,
            4104,
            8,
        );
        raw.extend_from_slice(b.as_slice());
        let mut b = EventBuf::default();
        encode_failed(&mut b, 3, 12, AllocKind::Malloc, u64::MAX, 9);
        raw.extend_from_slice(b.as_slice());
        let mut b = EventBuf::default();
        encode_free(&mut b, u64::MAX, u64::MAX, u64::MAX);
        raw.extend_from_slice(b.as_slice());
        assert!(b.len <= MAX_EVENT_LEN);

        let mut out = Vec::new();
        decode_plain(&raw, 42, &mut out).unwrap();
        let mut packed = Vec::new();
        assert_eq!(pack(&raw, &mut packed), 4);
        let mut unpacked = Vec::new();
        decode_events(&packed, 42, &mut unpacked).unwrap();
        assert_eq!(unpacked, out, "packing loses nothing");
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

        // A cut in the middle keeps the whole events before it.
        let mut out = Vec::new();
        assert!(decode_plain(&raw[..raw.len() - 2], 1, &mut out).is_err());
        assert_eq!(out.len(), 3);
        let mut cut = Vec::new();
        assert_eq!(pack(&raw[..raw.len() - 2], &mut cut), 3);
        // Packed one record's worth at a time, each record decodes on its own.
        let mut chunks = Vec::new();
        let mut pos = 0;
        while pos < raw.len() {
            let mut chunk = Vec::new();
            let (n, used) = pack_some(&raw[pos..], &mut chunk, 1);
            assert_eq!((n, used > 0), (1, true));
            decode_events(&chunk, 42, &mut chunks).unwrap();
            pos += used;
        }
        assert_eq!(chunks, unpacked);
        let mut out = Vec::new();
        assert!(decode_events(&packed[..packed.len() - 1], 1, &mut out).is_err());
        assert_eq!(out.len(), 3);
    }
}
