//! Version 4's layout of an `Events` record before compression: the packed events (see
//! [`crate::event`]) regrouped by field into *lanes*, one after the other, so that zstd sees
//! each kind of field as a run of its own.
//!
//! Packed events interleave fields of very different kinds: tag bytes (a near-periodic pattern),
//! site numbers, allocation and free addresses. Interleaved, a repetition in one kind (the same
//! alloc/free pattern, the same sites in the same order) is broken up by the others, and zstd
//! finds few long matches. Measured on v3 dumps of the benchmark suite, the same records
//! re-compressed as the recorder does (zstd level 3, each record after its previous one,
//! `examples/recompress.rs`): the events took 23 % less room on `sites`, 10 % less on gawk and
//! 2 % less on `stl`, and 3 % more on python3, whose interleaved events repeat in long runs that
//! zstd matches whole.
//!
//! ```text
//! record   := 0x40 len(lane 0) … len(lane 9) lane 0 … lane 10   (lengths are varints)
//!           | packed events as in version 3                     (what split would not take)
//! lane 0   := the continuation header [9 n], then every item's tag byte, an allocation's or
//!             free's with its address's class in bits 4-5 (see `class`)
//! lane 1   := time deltas, sequence differences, realloc/remap back distances
//! lane 2   := site numbers (0 for a new site)
//! lane 3   := a new site's definition: kind byte, size, usable, stack
//! lane 4-6 := allocation addresses, by class: the bin's newest, a block named before, new
//! lane 7-9 := freed addresses (a free's, a realloc's old one), by class: a distance back, a
//!             place, new
//! lane 10  := a realloc's new address, the fields of failed calls and mappings
//! ```
//!
//! # Version 6: the address varints cut in two
//!
//! ```text
//! record   := 0x41 len(lane 0) … len(lane 14) lane 0 … lane 15
//! lane 0-10 := as above, but that in lanes 5 to 9 each varint keeps its first byte only
//! lane 11-15 := the bytes after the first of lane 5's varints, …, of lane 9's, in their order
//! ```
//!
//! An address code is a distance back or a difference: its first byte holds its low bits, which
//! are close to random, and the continuation bit, and its later bytes its high bits, few of which
//! are set. zstd codes a block's literals with one Huffman table; mixed in one lane, the two
//! kinds of byte cost about what the random ones cost. Apart, each gets a table of its own (the
//! writer ends a zstd block at each lane of some size, see [`Splitter::lane_ends`]). Measured on
//! the suite's dumps (the same records compressed both ways, zstd level 3 after the previous
//! record; `examples/recompress.rs` prints both), the events took 30 % less room than in
//! version 5's lanes on python3, 12 % on mix.c, 11 % on stl, 10 % on gawk, 9 % on sites, 8 % on
//! randdepth, 2 % on sqlite3 and 1 % on jq and manyblocks. Cutting the site numbers' lane 2 as
//! well cost sites 6 % (its two-byte numbers repeat in runs that zstd matches whole), so it
//! stays whole. Lane 4 (the bin's newest: codes below 16) has nothing to cut.
//!
//! The split reads only the bytes (no tables): which field comes next, and from which lane,
//! follows from the bytes already read (and the class its tag carries), so [`merge`] undoes any
//! [`split`] exactly, whatever the bytes mean. A packed record that the split does not parse (a kind of event added to the
//! packer later) is stored as it is: the marker byte is none of the bytes a packed record can
//! start with (an event tag, a time item or the continuation header).

// The packed grammar's bytes (event.rs, "Packed, version 3").
use crate::event::{
    ADDR_ABSOLUTE, SEQ_NEXT, TAG_ALLOC, TAG_CONTINUE, TAG_FAILED, TAG_FREE, TAG_LEFT, TAG_MAP,
    TAG_REALLOC, TAG_REMAP, TAG_TIME, TAG_UNMAP,
};
use crate::varint::{put_uvarint, Cursor, Malformed, MAX_VARINT_LEN};

/// The first byte of a record in version 4's lanes (versions 4 and 5).
pub const LANES: u8 = 0x40;
/// The first byte of a record in version 6's lanes: the address varints cut in two.
pub const LANES_CUT: u8 = 0x41;
/// Version 4's lanes.
const COUNT: usize = 11;
/// The lanes whose varints version 6 cuts, from here up to [`OTHER`]; and their tails' count.
const FIRST_CUT: usize = ALLOC + 1;
const TAILS: usize = OTHER - FIRST_CUT;
/// Version 6's lanes, tails included.
const ALL: usize = COUNT + TAILS;
const TAGS: usize = 0;
const MISC: usize = 1;
const SITE: usize = 2;
const SITE_DEF: usize = 3;
/// Allocation addresses by their code's class ([`class`]): three lanes from here.
const ALLOC: usize = 4;
/// Freed addresses likewise.
const FREED: usize = 7;
const OTHER: usize = 10;
/// The lane that holds the later bytes of `lane`'s varints, when the layout cuts them.
#[inline(always)]
fn tail_of(lane: usize) -> Option<usize> {
    (FIRST_CUT..OTHER)
        .contains(&lane)
        .then(|| COUNT + lane - FIRST_CUT)
}

/// How a record's lanes are laid out: version 4's ([`LANES`]) or version 6's ([`LANES_CUT`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    Fields,
    FieldsCut,
}

impl Layout {
    fn marker(self) -> u8 {
        match self {
            Layout::Fields => LANES,
            Layout::FieldsCut => LANES_CUT,
        }
    }
    fn lanes(self) -> usize {
        match self {
            Layout::Fields => COUNT,
            Layout::FieldsCut => ALL,
        }
    }
    /// Where `lane`'s later varint bytes go, if elsewhere.
    #[inline(always)]
    fn tail(self, lane: usize) -> Option<usize> {
        match self {
            Layout::Fields => None,
            Layout::FieldsCut => tail_of(lane),
        }
    }
}

/// Where a tag byte keeps its address's class in lanes (bits no tag uses).
const CLASS_SHIFT: u32 = 4;
const CLASS_BITS: u8 = 3 << CLASS_SHIFT;

/// Where the fields go ([`split`]) or come from ([`merge`]): the one grammar walk both share.
trait Lanes {
    /// One varint into or out of `lane`; returns its value.
    fn varint(&mut self, lane: usize) -> Result<u64, Malformed>;
    fn byte(&mut self, lane: usize) -> Result<u8, Malformed>;
    /// An item's tag byte, as packed (in lanes it also carries its address's class).
    fn tag(&mut self) -> Result<u8, Malformed>;
    /// An address code (and the address after the code that says so) of an allocation
    /// (`free` false) or a free, in the lane of its class.
    fn classed_addr(&mut self, free: bool) -> Result<(), Malformed>;
    fn done(&self) -> bool;
}

/// An address code's class, which picks its lane: for an allocation the bin's newest (0), a
/// block named before (1), or a new address (2); for a free the distance back (0), the place
/// (1), or a new address (2). Codes of one class look alike, so apart they compress better.
#[inline(always)]
fn class(v: u64, free: bool) -> u8 {
    let absolute = v & 1 == 0 && v >> 1 == ADDR_ABSOLUTE;
    if v & 1 == 1 || absolute {
        2
    } else if free {
        ((v >> 1) & 1) as u8
    } else {
        u8::from(v >= 16)
    }
}

/// Walks one record's items, moving each field through `l`.
#[inline(always)]
fn walk(l: &mut impl Lanes) -> Result<(), Malformed> {
    if l.done() {
        return Ok(());
    }
    let mut b = l.tag()?;
    if b == TAG_CONTINUE {
        l.varint(TAGS)?;
        if l.done() {
            return Ok(());
        }
        b = l.tag()?;
    }
    loop {
        if b == TAG_TIME {
            l.varint(MISC)?;
        } else {
            event(l, b)?;
        }
        if l.done() {
            return Ok(());
        }
        b = l.tag()?;
    }
}

/// One event's fields after its tag byte `b`.
#[inline(always)]
fn event(l: &mut impl Lanes, b: u8) -> Result<(), Malformed> {
    {
        let tag = b & !SEQ_NEXT;
        let next = b & SEQ_NEXT != 0;
        if !(TAG_ALLOC..=TAG_REMAP).contains(&tag) && tag != TAG_LEFT {
            return Err(Malformed);
        }
        if !next {
            l.varint(MISC)?;
        }
        match tag {
            TAG_ALLOC => {
                site(l)?;
                l.classed_addr(false)?;
            }
            TAG_FREE | TAG_LEFT => l.classed_addr(true)?,
            TAG_REALLOC => {
                // The tag holds one class: the old address's.
                l.classed_addr(true)?;
                site(l)?;
                addr(l, OTHER)?;
                if !next {
                    l.varint(MISC)?;
                }
            }
            TAG_FAILED => {
                l.byte(OTHER)?;
                l.varint(OTHER)?;
                l.varint(OTHER)?;
            }
            TAG_MAP => {
                for _ in 0..5 {
                    l.varint(OTHER)?;
                }
            }
            TAG_UNMAP => {
                l.varint(OTHER)?;
                l.varint(OTHER)?;
            }
            _ => {
                for _ in 0..5 {
                    l.varint(OTHER)?;
                }
                if !next {
                    l.varint(MISC)?;
                }
            }
        }
    }
    Ok(())
}

#[inline(always)]
fn site(l: &mut impl Lanes) -> Result<(), Malformed> {
    if l.varint(SITE)? == 0 {
        l.byte(SITE_DEF)?;
        for _ in 0..3 {
            l.varint(SITE_DEF)?;
        }
    }
    Ok(())
}

/// Any address code (a block's, an allocation's): one varint, and the address after the code
/// that says so.
#[inline(always)]
fn addr(l: &mut impl Lanes, lane: usize) -> Result<(), Malformed> {
    let v = l.varint(lane)?;
    if v & 1 == 0 && v >> 1 == ADDR_ABSOLUTE {
        l.varint(lane)?;
    }
    Ok(())
}

/// The varint at `data[pos..]`: its value and the position after it. One byte is the usual
/// case (the packer's codes are small), so it goes first.
#[inline(always)]
fn varint_at(data: &[u8], pos: usize) -> Result<(u64, usize), Malformed> {
    let b = *data.get(pos).ok_or(Malformed)?;
    if b < 0x80 {
        return Ok((u64::from(b), pos + 1));
    }
    let mut v = 0u64;
    let mut p = pos;
    for shift in (0..64).step_by(7) {
        let b = *data.get(p).ok_or(Malformed)?;
        p += 1;
        if shift == 63 && b > 1 {
            return Err(Malformed);
        }
        v |= u64::from(b & 0x7f) << shift;
        if b < 0x80 {
            return Ok((v, p));
        }
    }
    Err(Malformed)
}

/// Appends a varint's bytes: mostly one, where `extend_from_slice` would call `memmove`.
#[inline(always)]
fn push(to: &mut Vec<u8>, bytes: &[u8]) {
    if let [b] = bytes {
        to.push(*b);
    } else {
        to.extend_from_slice(bytes);
    }
}

struct Split<'a> {
    data: &'a [u8],
    pos: usize,
    lanes: &'a mut [Vec<u8>; ALL],
    layout: Layout,
}

impl Lanes for Split<'_> {
    #[inline(always)]
    fn varint(&mut self, lane: usize) -> Result<u64, Malformed> {
        let b = *self.data.get(self.pos).ok_or(Malformed)?;
        if b < 0x80 {
            self.lanes[lane].push(b);
            self.pos += 1;
            return Ok(u64::from(b));
        }
        let (v, end) = varint_at(self.data, self.pos)?;
        let bytes = &self.data[self.pos..end];
        match self.layout.tail(lane) {
            Some(t) => {
                self.lanes[lane].push(bytes[0]);
                self.lanes[t].extend_from_slice(&bytes[1..]);
            }
            None => self.lanes[lane].extend_from_slice(bytes),
        }
        self.pos = end;
        Ok(v)
    }
    #[inline(always)]
    fn byte(&mut self, lane: usize) -> Result<u8, Malformed> {
        let b = *self.data.get(self.pos).ok_or(Malformed)?;
        self.lanes[lane].push(b);
        self.pos += 1;
        Ok(b)
    }
    #[inline(always)]
    fn tag(&mut self) -> Result<u8, Malformed> {
        self.byte(TAGS)
    }
    #[inline(always)]
    fn classed_addr(&mut self, free: bool) -> Result<(), Malformed> {
        let c = class(varint_at(self.data, self.pos)?.0, free);
        // The tag just written (a valid one has no class bits: the walk checked it).
        *self.lanes[TAGS].last_mut().ok_or(Malformed)? |= c << CLASS_SHIFT;
        addr(self, if free { FREED } else { ALLOC } + usize::from(c))
    }
    #[inline(always)]
    fn done(&self) -> bool {
        self.pos >= self.data.len()
    }
}

/// Splits records into lanes, keeping its lanes' buffers from one record to the next (the
/// recorder's writer splits every record: no allocation per record).
#[derive(Default)]
pub struct Splitter {
    lanes: [Vec<u8>; ALL],
    /// Where each lane of the last split ends in its output.
    ends: Vec<usize>,
}

impl Splitter {
    /// For a `static` (the recorder's writer state).
    pub const fn new() -> Splitter {
        Splitter {
            lanes: [const { Vec::new() }; ALL],
            ends: Vec::new(),
        }
    }

    /// The lanes of the packed record `packed` in `out` (cleared first), in the layout this
    /// crate writes ([`Layout::FieldsCut`]); false when the split does not parse it, and `out`
    /// is then to be ignored (store `packed` itself).
    pub fn split(&mut self, packed: &[u8], out: &mut Vec<u8>) -> bool {
        self.split_as(Layout::FieldsCut, packed, out)
    }

    /// [`Splitter::split`] in `layout` (version 4's for a dump of version 4 or 5).
    pub fn split_as(&mut self, layout: Layout, packed: &[u8], out: &mut Vec<u8>) -> bool {
        out.clear();
        self.ends.clear();
        for l in &mut self.lanes {
            l.clear();
        }
        let mut s = Split {
            data: packed,
            pos: 0,
            lanes: &mut self.lanes,
            layout,
        };
        if walk(&mut s).is_err() {
            return false;
        }
        let lanes = &self.lanes[..layout.lanes()];
        out.reserve(packed.len() + 1 + lanes.len() * 3);
        out.push(layout.marker());
        for lane in &lanes[..lanes.len() - 1] {
            put_uvarint(out, lane.len() as u64);
        }
        for lane in lanes {
            out.extend_from_slice(lane);
            self.ends.push(out.len());
        }
        true
    }

    /// Where each lane of the last record split ends in its output (the header ends with the
    /// first lane): the places where a zstd block may end, so that each lane's literals get a
    /// Huffman table of their own. Empty when the last split did not take its record.
    pub fn lane_ends(&self) -> &[usize] {
        &self.ends
    }
}

/// [`Splitter::split`] with buffers of its own.
pub fn split(packed: &[u8], out: &mut Vec<u8>) -> bool {
    Splitter::default().split(packed, out)
}

struct Merger<'a> {
    lanes: [&'a [u8]; ALL],
    out: &'a mut Vec<u8>,
    /// The class the last tag carried.
    class: u8,
    layout: Layout,
}

impl Merger<'_> {
    /// The varint that starts `lane` (its later bytes in its tail, if the layout cuts it): its
    /// value, and how many bytes it takes of the lane and of the tail.
    #[inline(always)]
    fn peek(&self, lane: usize) -> Result<(u64, usize, usize), Malformed> {
        let l = self.lanes[lane];
        let Some(t) = self.layout.tail(lane) else {
            let (v, n) = varint_at(l, 0)?;
            return Ok((v, n, 0));
        };
        let first = *l.first().ok_or(Malformed)?;
        if first < 0x80 {
            return Ok((u64::from(first), 1, 0));
        }
        let tail = self.lanes[t];
        let (high, n) = varint_at(tail, 0)?;
        // At most ten bytes in all, the tenth holding bit 63 alone (as `varint_at` takes them).
        if n >= MAX_VARINT_LEN || (n == MAX_VARINT_LEN - 1 && high >> 56 > 1) {
            return Err(Malformed);
        }
        Ok((u64::from(first & 0x7f) | high << 7, 1, n))
    }
}

impl Lanes for Merger<'_> {
    #[inline(always)]
    fn varint(&mut self, lane: usize) -> Result<u64, Malformed> {
        let (v, n, t) = self.peek(lane)?;
        let l = self.lanes[lane];
        push(self.out, &l[..n]);
        self.lanes[lane] = &l[n..];
        if t > 0 {
            let tl = self.layout.tail(lane).ok_or(Malformed)?;
            let tail = self.lanes[tl];
            self.out.extend_from_slice(&tail[..t]);
            self.lanes[tl] = &tail[t..];
        }
        Ok(v)
    }
    #[inline(always)]
    fn byte(&mut self, lane: usize) -> Result<u8, Malformed> {
        let (&b, rest) = self.lanes[lane].split_first().ok_or(Malformed)?;
        self.out.push(b);
        self.lanes[lane] = rest;
        Ok(b)
    }
    #[inline(always)]
    fn tag(&mut self) -> Result<u8, Malformed> {
        let (&b, rest) = self.lanes[TAGS].split_first().ok_or(Malformed)?;
        self.lanes[TAGS] = rest;
        self.class = (b & CLASS_BITS) >> CLASS_SHIFT;
        if self.class > 2 {
            return Err(Malformed);
        }
        let b = b & !CLASS_BITS;
        self.out.push(b);
        Ok(b)
    }
    #[inline(always)]
    fn classed_addr(&mut self, free: bool) -> Result<(), Malformed> {
        let c = std::mem::replace(&mut self.class, 0);
        let lane = if free { FREED } else { ALLOC } + usize::from(c);
        let v = self.peek(lane)?.0;
        // What the split would have put elsewhere: not its own.
        if class(v, free) != c {
            return Err(Malformed);
        }
        addr(self, lane)
    }
    #[inline(always)]
    fn done(&self) -> bool {
        self.lanes[TAGS].is_empty()
    }
}

/// The layout of a record of a dump of `version` whose bytes are in lanes; None when they are
/// packed events as they are (or in a layout that version does not have).
pub fn layout_of(version: u32, raw: &[u8]) -> Option<Layout> {
    match raw.first() {
        Some(&LANES) if version >= 4 => Some(Layout::Fields),
        Some(&LANES_CUT) if version >= 6 => Some(Layout::FieldsCut),
        _ => None,
    }
}

/// The packed record that [`split`] made `raw` from, appended to `out`. Malformed when the lanes
/// do not add up (damage that zstd's checks let through): every lane must be used up exactly.
pub fn merge(raw: &[u8], out: &mut Vec<u8>) -> Result<(), Malformed> {
    let mut c = Cursor::new(raw);
    let layout = match c.u8()? {
        LANES => Layout::Fields,
        LANES_CUT => Layout::FieldsCut,
        _ => return Err(Malformed),
    };
    let count = layout.lanes();
    let mut lanes: [&[u8]; ALL] = [&[]; ALL];
    let mut lens = [0usize; ALL - 1];
    for l in &mut lens[..count - 1] {
        *l = usize::try_from(c.uvarint()?).map_err(|_| Malformed)?;
    }
    let mut rest = c.rest();
    for (i, &n) in lens[..count - 1].iter().enumerate() {
        if n > rest.len() {
            return Err(Malformed);
        }
        let (lane, after) = rest.split_at(n);
        lanes[i] = lane;
        rest = after;
    }
    lanes[count - 1] = rest;
    out.reserve(raw.len());
    let mut m = Merger {
        lanes,
        out,
        class: 0,
        layout,
    };
    walk(&mut m)?;
    if m.lanes.iter().any(|l| !l.is_empty()) {
        return Err(Malformed);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{self, AllocKind, EventBuf, Packer};

    /// Packed bytes of every event kind, in groups of several records, as the recorder packs
    /// them.
    fn packed_records() -> Vec<Vec<u8>> {
        let mut plain = Vec::new();
        let mut seq = 0u64;
        // Each event numbered `step` after the one before (1, or 2 for a realloc: the usual
        // cases), now and then a gap (then the packer writes the difference).
        let mut push = |step: u64, f: &mut dyn FnMut(&mut EventBuf, u64)| {
            seq += step + u64::from(seq % 7 == 3);
            let mut b = EventBuf::default();
            f(&mut b, seq);
            plain.extend_from_slice(b.as_slice());
        };
        for i in 0..3000u64 {
            let a = 0x5555_0000 + (i % 97) * 48;
            let ts = i * 300_000;
            let stack = (i % 13) as u32;
            push(1, &mut |b, s| {
                event::encode_alloc(b, s, ts, AllocKind::Malloc, a, 40, 40, stack)
            });
            if i % 5 == 0 {
                let (old, new) = (a, a + 0x10_0000);
                push(2, &mut |b, s| {
                    event::encode_realloc(b, s, s - 1, ts, old, new, 100, 104, 3)
                });
                push(2, &mut |b, s| {
                    event::encode_realloc(b, s, s - 1, ts, new, 0, 0, 0, 3)
                });
            } else {
                push(1, &mut |b, s| event::encode_free(b, s, ts, a));
            }
            if i % 101 == 0 {
                let (m, n) = (0x7f00_0000_0000, 0x7e00_0000_0000);
                push(1, &mut |b, s| {
                    event::encode_failed(b, s, ts, AllocKind::Calloc, 1 << 40, 7)
                });
                push(1, &mut |b, s| event::encode_map(b, s, ts, m, 8192, 3, 1, 2));
                push(2, &mut |b, s| {
                    event::encode_remap(b, s, s - 1, ts, m, 8192, n, 16384, 2)
                });
                push(1, &mut |b, s| event::encode_unmap(b, s, ts, n, 16384));
                // An address far from the others: written out whole.
                push(1, &mut |b, s| {
                    event::encode_alloc(b, s, ts, AllocKind::Calloc, u64::MAX - 15, 9, 24, 1)
                });
            }
        }
        let mut p = Packer::with_group_bytes(8 * 1024);
        let mut records = Vec::new();
        let mut pos = 0;
        while pos < plain.len() {
            let mut out = Vec::new();
            let (_, used) = p.pack_some(&plain[pos..], &mut out, 1024);
            assert!(used > 0);
            pos += used;
            p.finish_record(out.len());
            records.push(out);
        }
        records
    }

    /// The lanes of a split record, by their lengths.
    fn lanes_of(raw: &[u8]) -> Vec<&[u8]> {
        let count = if raw[0] == LANES_CUT { ALL } else { COUNT };
        let mut c = Cursor::new(&raw[1..]);
        let lens: Vec<usize> = (1..count).map(|_| c.uvarint().unwrap() as usize).collect();
        let mut rest = c.rest();
        let mut lanes = Vec::new();
        for n in lens {
            let (l, r) = rest.split_at(n);
            lanes.push(l);
            rest = r;
        }
        lanes.push(rest);
        lanes
    }

    #[test]
    fn merge_undoes_split_for_every_event_kind() {
        for layout in [Layout::Fields, Layout::FieldsCut] {
            merge_undoes_split_for_every_event_kind_in(layout);
        }
    }

    fn merge_undoes_split_for_every_event_kind_in(layout: Layout) {
        let records = packed_records();
        assert!(records.len() > 20, "{}", records.len());
        assert!(records.iter().any(|r| event::is_continuation(r)));
        let mut lanes = Vec::new();
        let mut events = Vec::new();
        let mut tables = None;
        let mut used = [0usize; ALL];
        let mut splitter = Splitter::default();
        for r in &records {
            assert!(
                splitter.split_as(layout, r, &mut lanes),
                "a record the packer made did not split"
            );
            assert_eq!(layout_of(crate::VERSION, &lanes), Some(layout));
            assert!(lanes.len() <= r.len() + 1 + (layout.lanes() - 1) * 3);
            // The lanes end where the writer may end zstd blocks, the last at the record's end.
            let ends = splitter.lane_ends();
            assert_eq!(ends.len(), layout.lanes());
            assert_eq!(ends.last(), Some(&lanes.len()));
            assert!(ends.windows(2).all(|w| w[0] <= w[1]));
            let l = lanes_of(&lanes);
            for (u, l) in used.iter_mut().zip(&l) {
                *u += l.len();
            }
            // The tags lane: one byte per item (events and time items), after the header.
            let before = events.len();
            event::decode_events_in(r, 1, &mut tables, &mut events).unwrap();
            let decoded = events[before..]
                .iter()
                .filter(|e| {
                    !matches!(
                        e.kind,
                        crate::EventKind::ReallocOut { .. } | crate::EventKind::RemapOut { .. }
                    )
                })
                .count();
            let header = if event::is_continuation(r) { 2 } else { 0 };
            let times = l[TAGS]
                .iter()
                .skip(header)
                .filter(|&&b| b == TAG_TIME)
                .count();
            assert_eq!(l[TAGS].len(), header + decoded + times);
            let mut back = Vec::new();
            merge(&lanes, &mut back).unwrap();
            assert_eq!(&back, r);
        }
        // Every kind was met, so every lane but some classes of addresses was used.
        for lane in [TAGS, MISC, SITE, SITE_DEF, OTHER] {
            assert!(used[lane] > 0, "{lane}: {used:?}");
        }
        // In the cut layout, some address varints had later bytes.
        assert_eq!(
            used[COUNT..].iter().any(|&u| u > 0),
            layout == Layout::FieldsCut,
            "{used:?}"
        );
        assert!(
            used[ALLOC..FREED].iter().filter(|&&u| u > 0).count() >= 2,
            "{used:?}"
        );
        assert!(
            used[FREED..OTHER].iter().filter(|&&u| u > 0).count() >= 2,
            "{used:?}"
        );
    }

    proptest::proptest! {
        #[test]
        fn merge_undoes_any_split_it_takes(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200)
        ) {
            // Mostly plausible tags, so that the walk gets far.
            let bytes: Vec<u8> = bytes
                .iter()
                .enumerate()
                .map(|(i, &b)| if i % 3 == 0 { (b % 10) | (b & 0x80) } else { b })
                .collect();
            let mut lanes = Vec::new();
            if split(&bytes, &mut lanes) {
                let mut back = Vec::new();
                merge(&lanes, &mut back).unwrap();
                proptest::prop_assert_eq!(back, bytes);
            }
        }
    }

    #[test]
    fn the_cut_layout_keeps_an_address_varints_first_byte_in_its_lane_and_the_rest_in_its_tail() {
        let mut whole = Vec::new();
        let mut cut = Vec::new();
        let mut s = Splitter::default();
        for r in &packed_records() {
            assert!(s.split_as(Layout::Fields, r, &mut whole));
            assert!(s.split_as(Layout::FieldsCut, r, &mut cut));
            let (w, c) = (lanes_of(&whole), lanes_of(&cut));
            for lane in 0..COUNT {
                match tail_of(lane) {
                    None => assert_eq!(w[lane], c[lane], "lane {lane}"),
                    Some(t) => {
                        // One byte per varint: its first; then its later bytes, in order.
                        let mut heads = Vec::new();
                        let mut tails = Vec::new();
                        let mut p = 0;
                        while p < w[lane].len() {
                            let (_, end) = varint_at(w[lane], p).unwrap();
                            heads.push(w[lane][p]);
                            tails.extend_from_slice(&w[lane][p + 1..end]);
                            p = end;
                        }
                        assert_eq!(c[lane], &heads[..], "lane {lane}");
                        assert_eq!(c[t], &tails[..], "lane {lane}'s tail");
                    }
                }
            }
        }
        // A varint of ten bytes (bit 63 set) is cut and merged back; an eleventh byte is damage.
        let mut packed = vec![TAG_FREE | SEQ_NEXT];
        put_uvarint(&mut packed, (1u64 << 63) | 7);
        assert_eq!(packed.len(), 11);
        assert!(s.split_as(Layout::FieldsCut, &packed, &mut cut));
        let lanes = lanes_of(&cut);
        assert_eq!(lanes[FREED + 2].len(), 1);
        assert_eq!(lanes[tail_of(FREED + 2).unwrap()].len(), 9);
        let mut back = Vec::new();
        merge(&cut, &mut back).unwrap();
        assert_eq!(back, packed);
        let mut longer = cut.clone();
        let at = cut.len() - 1;
        longer[at] |= 0x80;
        longer.push(1);
        // (its tail's length is the last lane's: whatever is left)
        assert!(merge(&longer, &mut Vec::new()).is_err());
        // A cut record is no lanes in a dump of version 5.
        assert_eq!(layout_of(5, &cut), None);
        assert_eq!(layout_of(6, &cut), Some(Layout::FieldsCut));
        assert_eq!(layout_of(5, &whole), Some(Layout::Fields));
    }

    #[test]
    fn what_split_does_not_parse_is_refused_and_merge_refuses_what_does_not_add_up() {
        let mut out = Vec::new();
        // Tag 11 is no event.
        assert!(!split(&[11, 1, 2], &mut out));
        // A refused record leaves no lane ends behind (the writer then makes one zstd block).
        let mut s = Splitter::default();
        assert!(s.split(&[TAG_FREE | SEQ_NEXT, 4], &mut out));
        assert_eq!(s.lane_ends().len(), ALL);
        assert!(!s.split(&[11, 1, 2], &mut out));
        assert!(s.lane_ends().is_empty());
        // Tag 10 (Left) is split as a Free is, and merges back.
        assert!(split(&[TAG_LEFT | SEQ_NEXT, 4], &mut out));
        let mut back = Vec::new();
        merge(&out, &mut back).unwrap();
        assert_eq!(back, [TAG_LEFT | SEQ_NEXT, 4]);
        out.clear();
        // A varint cut short.
        assert!(!split(&[TAG_FREE, 0x80], &mut out));
        assert!(split(
            &[TAG_FREE | SEQ_NEXT, 4, TAG_FREE | SEQ_NEXT, 6],
            &mut out
        ));
        let mut back = Vec::new();
        merge(&out, &mut back).unwrap();
        assert_eq!(back, [TAG_FREE | SEQ_NEXT, 4, TAG_FREE | SEQ_NEXT, 6]);
        // A byte more in a lane, a lane length past the end, not lanes at all.
        let mut longer = out.clone();
        longer.push(1);
        assert!(merge(&longer, &mut Vec::new()).is_err());
        let mut past = out.clone();
        past[1] = 100;
        assert!(merge(&past, &mut Vec::new()).is_err());
        assert!(merge(&[TAG_FREE, 4], &mut Vec::new()).is_err());
    }
}
