//! A dump still being written, followed as it grows: `zmtrace run --serve` answers each scrape
//! with the heap as of now (its follower thread calls [`Follow::update`] continuously, a bounded
//! batch at a time), and replaying the whole dump for each one costs as much as a `zmtrace
//! report` of it (6.3 s a scrape at a 446 MB dump). [`Follow::update`] reads only the
//! bytes appended since the last update and hands their events to a [`Replay`] kept from one
//! update to the next; [`Follow::analysis`] is then what [`crate::analyze`] finds on the dump
//! read so far.
//!
//! A dump is append-only and made of whole records, so the bytes after the last whole record
//! read, preceded by the file's 12-byte header, read as a dump of their own (a *piece*: no
//! process record, only the stacks, modules and events added). The piece's records that are not
//! events (stacks, modules, leak checks, the end) are added to [`Follow::dump`], which has no
//! events: it is what the symbolizer and the profile's header need. A record still being
//! written when the piece is read is left for the next update (the reader counts it as a cut-off
//! end).
//!
//! One update reads at most [`Follow::limit`] bytes (64 MiB unless set): a large backlog is
//! replayed a bounded batch at a time (the state can be looked at between two, and memory does
//! not grow with the backlog); the next update goes on from there ([`Follow::behind`] says how far the dump is ahead). A record larger than the limit
//! (none the writer makes: it bounds them) is read whole all the same.
//!
//! Two kinds of dump are read whole at each update, as before: an aggregated one (no events: it
//! is its counters, which a later record replaces), and one the reader found damaged (its records
//! cannot be told from the damage in a piece).

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use zmtrace_format::{Dump, FILE_HEADER_LEN};

use crate::analysis::{analyze, Analysis, Replay};

/// A dump followed as it grows (see the module's documentation).
pub struct Follow {
    path: PathBuf,
    /// The records read so far, without their events (those went to `replay`), or the whole
    /// dump when it is read whole.
    dump: Dump,
    replay: Option<Replay>,
    /// Read whole at each update (aggregated, or damaged).
    whole: bool,
    /// Where the next piece starts: the end of the last whole record read.
    offset: u64,
    /// The file's header, put before each piece so that it reads as a dump.
    header: Vec<u8>,
    /// Bytes read from the file, in all.
    bytes_read: u64,
    /// What the last piece's events left for the next piece's (a thread's records continue the
    /// tables of its previous one).
    carry: zmtrace_format::read::Carry,
    /// The most bytes one update reads (see the module's documentation).
    limit: u64,
    /// The file's length at the last update.
    file_len: u64,
    /// What the last update cost.
    last: UpdateCost,
    /// How long the replay holds the newest events back, and how many at most
    /// ([`Replay::with_hold`]).
    hold_ns: u64,
    max_held: usize,
    /// A piece said something that the records kept here do not (a record of an unknown kind,
    /// events that did not decode, inherited blocks after the replay began), or events came in
    /// late, or could have ([`Replay::overflowed`]): [`Follow::same_as_read`] is false.
    diverged: bool,
}

/// The bytes a [`Follow::update`] reads at most unless [`Follow::with_limit`] says otherwise:
/// ~1 s of replay on this machine's kind (a whole 446 MB dump replayed in 6.3 s).
pub const DEFAULT_LIMIT: u64 = 64 << 20;

/// What one [`Follow::update`] spent.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct UpdateCost {
    /// Reading the new bytes and parsing their records.
    pub read: Duration,
    /// Replaying their events.
    pub replay: Duration,
    /// Bytes read from the file.
    pub bytes: u64,
}

impl Follow {
    /// Follows the dump at `path`; nothing is read before [`Follow::update`].
    pub fn new(path: &Path) -> Follow {
        Follow::with_limit(path, DEFAULT_LIMIT)
    }

    /// [`Follow::new`], reading at most `limit` bytes an update (at least one whole record).
    pub fn with_limit(path: &Path, limit: u64) -> Follow {
        Follow {
            path: path.to_owned(),
            dump: Dump::default(),
            replay: None,
            whole: false,
            offset: 0,
            header: Vec::new(),
            bytes_read: 0,
            carry: Default::default(),
            limit: limit.max(1),
            file_len: 0,
            last: UpdateCost::default(),
            hold_ns: crate::analysis::HOLD_NS,
            max_held: usize::MAX,
            diverged: false,
        }
    }

    /// Has the replay hold the newest events back `ns`, `max` of them at most (see
    /// [`Replay::with_hold`]); before the first update.
    pub fn with_hold(mut self, ns: u64, max: usize) -> Follow {
        self.hold_ns = ns;
        self.max_held = max;
        self
    }

    /// Reads what was appended since the last update (at most [`Follow::limit`] bytes of it),
    /// and replays its events.
    pub fn update(&mut self) -> Result<(), String> {
        self.last = UpdateCost::default();
        let started = Instant::now();
        let r = self.update_inner(started);
        if self.last.read.is_zero() {
            self.last.read = started.elapsed().saturating_sub(self.last.replay);
        }
        r
    }

    fn update_inner(&mut self, started: Instant) -> Result<(), String> {
        let path = self.path.clone();
        let io = |e: std::io::Error| format!("{}: {e}", path.display());
        let mut file = std::fs::File::open(&self.path).map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        self.file_len = len;
        if self.whole {
            if len != self.dump.file_len {
                self.dump = Dump::open(&self.path).map_err(|e| e.to_string())?;
                self.bytes_read += len;
                self.last.bytes += len;
            }
            return Ok(());
        }
        if len < self.offset {
            // Not the file we read: replaced under the same name. Start again.
            let (limit, hold, max) = (self.limit, self.hold_ns, self.max_held);
            *self = Follow::with_limit(&path, limit).with_hold(hold, max);
            self.file_len = len;
        }
        if len == self.offset || len == 0 {
            return Ok(());
        }
        let new = len - self.offset;
        let mut take = new.min(self.limit);
        let (mut piece, used) = loop {
            let mut data = if self.offset == 0 {
                Vec::new()
            } else {
                self.header.clone()
            };
            let prefix = data.len();
            file.seek(SeekFrom::Start(self.offset)).map_err(io)?;
            (&mut file).take(take).read_to_end(&mut data).map_err(io)?;
            let got = (data.len() - prefix) as u64;
            self.bytes_read += got;
            self.last.bytes += got;
            if self.offset == 0 && data.len() >= FILE_HEADER_LEN {
                self.header = data[..FILE_HEADER_LEN].to_vec();
            }
            let piece = Dump::from_bytes(&self.path, data).map_err(|e| e.to_string())?;
            if piece.damaged > 0 || piece.is_aggregated() {
                // A damaged span cannot be told from a cut-off end in a piece; an aggregated
                // dump is its last counters. Either is read whole from now on.
                self.whole = true;
                self.replay = None;
                self.dump = Dump::default();
                return self.update_inner(started);
            }
            // The reader counts a record cut off at the end as lost: it is read again next time.
            let used = (piece.file_len - piece.bytes_lost).saturating_sub(prefix as u64);
            let first = self.replay.is_none();
            if (used == 0 || (first && piece.process.is_none())) && take < new {
                // The limit ends inside the first record (at the start: the process record,
                // which the replay needs): that one is read whole.
                take = (take * 2).min(new);
                continue;
            }
            break (piece, used);
        };
        let first = self.replay.is_none();
        if used == 0 || (first && piece.process.is_none()) {
            return Ok(()); // not a whole record yet (or, at the start, not the process record)
        }
        self.last.read = started.elapsed();
        let replaying = Instant::now();
        piece.continue_from(std::mem::take(&mut self.carry));
        let (hold, max) = (self.hold_ns, self.max_held);
        let replay = self
            .replay
            .get_or_insert_with(|| Replay::new(&piece, false).with_hold(hold, max));
        replay.feed(&piece);
        // A piece's own warnings beyond these two are records the reader skipped (of an unknown
        // kind), which `add` does not keep.
        let expected =
            usize::from(!first && piece.process.is_none()) + usize::from(piece.bytes_lost > 0);
        // A forked child's inherited blocks come before its first event; the replay started
        // from the first piece, so any that a later piece brings are not in its heap.
        self.diverged |= replay.late > 0
            || replay.overflowed
            || piece.damage().is_some()
            || piece.warnings.len() > expected
            || (!first && !piece.inherited.is_empty());
        self.carry = piece.carry();
        self.offset += used;
        add(&mut self.dump, piece, self.offset);
        self.last.replay = replaying.elapsed();
        Ok(())
    }

    /// [`Follow::with_hold`] from the next update on (see [`Replay::set_hold`]).
    pub fn set_hold(&mut self, ns: u64) {
        self.hold_ns = ns;
        if let Some(r) = &mut self.replay {
            r.set_hold(ns);
        }
    }

    /// The most bytes an update reads.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Sets [`Follow::limit`] for the next updates (at least one byte: a record is read whole).
    pub fn set_limit(&mut self, limit: u64) {
        self.limit = limit.max(1);
    }

    /// What the last update cost.
    pub fn last_update(&self) -> UpdateCost {
        self.last
    }

    /// How many bytes of the file, as long as it was at the last update, are not read yet: the
    /// backlog a limited update left for the next.
    pub fn behind(&self) -> u64 {
        self.file_len.saturating_sub(self.len())
    }

    /// The file followed.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The dump's records read so far (without their events, unless it is read whole): for the
    /// symbolizer and the profiles.
    pub fn dump(&self) -> &Dump {
        &self.dump
    }

    /// What the dump read so far says.
    pub fn analysis(&self) -> Analysis {
        match &self.replay {
            Some(r) => r.analysis(&self.dump),
            None => analyze(&self.dump, false, &mut |_, _| {}),
        }
    }

    /// What the dump read so far says, once no more is to be read: [`Follow::analysis`] without
    /// the copy of the replay's state.
    pub fn finish(self) -> (Dump, Analysis) {
        let a = match self.replay {
            Some(r) => r.into_analysis(&self.dump),
            None => analyze(&self.dump, false, &mut |_, _| {}),
        };
        (self.dump, a)
    }

    /// True when [`Follow::dump`] and [`Follow::analysis`] are what [`Dump::open`] and
    /// [`analyze`] make of the file as long as it was at the last update, which has to have read
    /// all of it. Not when the file ends in a record cut off (the reader's warning about it is
    /// not kept here), when a piece had records the reader skipped or events that did not
    /// decode, or when events came in late (replayed out of order, see [`Replay`]).
    pub fn same_as_read(&self) -> bool {
        !self.diverged && self.behind() == 0 && self.dump.bytes_lost == 0
    }

    /// True once [`Follow::same_as_read`] cannot come true any more, however much is read: a
    /// piece said what the records kept here do not, or events came in late.
    pub fn diverged(&self) -> bool {
        self.diverged
    }

    /// Bytes read from the file so far, over every update.
    pub fn bytes_read(&self) -> u64 {
        self.bytes_read
    }

    /// The replay, when the dump is read a piece at a time.
    pub fn replay(&self) -> Option<&Replay> {
        self.replay.as_ref()
    }

    /// The length of the dump read (up to its last whole record).
    pub fn len(&self) -> u64 {
        if self.whole {
            self.dump.file_len
        } else {
            self.offset
        }
    }

    /// Nothing read yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// `piece`'s records, but its events, added to the records read before it; the dump read so far
/// is `len` bytes.
fn add(to: &mut Dump, mut piece: Dump, len: u64) {
    if to.process.is_none() {
        to.path = std::mem::take(&mut piece.path);
        to.version = piece.version;
        to.process = piece.process.take();
        // Only the first piece's warnings: a later one lacks the process record by design.
        to.warnings = std::mem::take(&mut piece.warnings);
        if piece.bytes_lost > 0 {
            // The last one says the piece ends in a record cut off: the next piece reads it.
            to.warnings.pop();
        }
    }
    to.file_len = len;
    to.modules.append(&mut piece.modules);
    to.modules_gone.append(&mut piece.modules_gone);
    to.stacks.extend(piece.stacks.drain());
    to.inherited.append(&mut piece.inherited);
    to.late_threads.append(&mut piece.late_threads);
    to.reach.append(&mut piece.reach);
    to.snapshots.append(&mut piece.snapshots);
    if piece.exec.is_some() {
        to.exec = piece.exec;
    }
    if piece.end.is_some() {
        to.end = piece.end;
    }
    to.records += piece.records;
    // What is lost is the record still being written: the newest piece's.
    to.bytes_lost = piece.bytes_lost;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use zmtrace_format::event::{encode_alloc, encode_free, pack, AllocKind, EventBuf};
    use zmtrace_format::{write, Process};

    /// (tid, seq, ts, alloc size or 0 for a free of `addr`, addr, stack)
    type Ev = (u32, u64, u64, u64, u64, u32);

    fn events_record(out: &mut Vec<u8>, tid: u32, events: &[Ev]) {
        let mut raw = Vec::new();
        for &(_, seq, ts, size, addr, stack) in events {
            let mut b = EventBuf::default();
            if size > 0 {
                encode_alloc(&mut b, seq, ts, AllocKind::Malloc, addr, size, size, stack);
            } else {
                encode_free(&mut b, seq, ts, addr);
            }
            raw.extend_from_slice(b.as_slice());
        }
        let mut packed = Vec::new();
        pack(&raw, &mut packed);
        let z = zstd::bulk::compress(&packed, 1).unwrap();
        write::events(out, tid, tid, packed.len(), &z);
    }

    fn start_dump() -> Vec<u8> {
        let mut out = write::file_header().to_vec();
        write::process(
            &mut out,
            &Process {
                pid: 42,
                ppid: 1,
                session: "s".into(),
                exe: "/bin/t".into(),
                argv: vec!["t".into()],
                ..Default::default()
            },
        );
        write::stacks(
            &mut out,
            [(1u32, &[0x1000u64][..]), (2, &[0x2000][..])].into_iter(),
            &mut |b| zstd::bulk::compress(b, 1).unwrap(),
        );
        out
    }

    /// `n` allocations of `size` bytes from stack 1 by thread 1, numbered from `seq`, one a ms
    /// from `ts`, at addresses from `addr`.
    fn allocs(n: u64, seq: u64, ts: u64, size: u64, addr: u64) -> Vec<Ev> {
        (0..n)
            .map(|i| (1, seq + i, ts + i * 1_000_000, size, addr + i * 0x100, 1))
            .collect()
    }

    fn append(path: &Path, bytes: &[u8]) {
        let mut f = std::fs::OpenOptions::new().append(true).open(path).unwrap();
        f.write_all(bytes).unwrap();
    }

    fn dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!("zmtrace-follow-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn each_update_reads_only_what_was_added_and_counts_it_all() {
        let path = dir().join("grow.zmt");
        let mut first = start_dump();
        events_record(&mut first, 1, &allocs(1000, 1, 0, 64, 0x10_0000));
        std::fs::write(&path, &first).unwrap();
        let mut f = Follow::new(&path);
        f.update().unwrap();
        assert_eq!(f.bytes_read(), first.len() as u64);
        let a = f.analysis();
        assert_eq!((a.allocations, a.leaked_blocks), (1000, 1000));
        assert_eq!(a.bytes_allocated, 64_000);

        // 500 more, and 200 of the first ones freed, in a record of another thread.
        let mut more = Vec::new();
        events_record(
            &mut more,
            1,
            &allocs(500, 1001, 1_000_000_000, 32, 0x90_0000),
        );
        let frees: Vec<Ev> = (0..200)
            .map(|i| (2, 1501 + i, 1_600_000_000 + i, 0, 0x10_0000 + i * 0x100, 0))
            .collect();
        events_record(&mut more, 2, &frees);
        append(&path, &more);
        f.update().unwrap();
        // Only the new bytes were read, and only the new events decoded.
        assert_eq!(f.bytes_read(), (first.len() + more.len()) as u64);
        let r = f.replay().unwrap();
        assert_eq!(r.decoded, 1700);
        let a = f.analysis();
        assert_eq!(a.allocations, 1500);
        assert_eq!(a.frees, 200);
        assert_eq!(a.bytes_allocated, 64_000 + 500 * 32);
        assert_eq!(a.leaked_blocks, 1300);
        assert_eq!(a.leaked_bytes, 800 * 64 + 500 * 32);
        assert_eq!(a.inconsistent, 0);
        // The same as a replay of the whole dump.
        let whole = analyze(&Dump::open(&path).unwrap(), false, &mut |_, _| {});
        assert_eq!(
            (
                whole.allocations,
                whole.frees,
                whole.leaked_bytes,
                whole.peak_bytes
            ),
            (a.allocations, a.frees, a.leaked_bytes, a.peak_bytes)
        );
        assert_eq!(whole.sites, a.sites);

        // Nothing new: nothing read.
        f.update().unwrap();
        assert_eq!(f.bytes_read(), (first.len() + more.len()) as u64);
    }

    #[test]
    fn a_record_cut_off_is_read_again_whole_and_late_events_are_put_in_order() {
        let path = dir().join("cut.zmt");
        let mut first = start_dump();
        events_record(&mut first, 1, &allocs(10, 1, 0, 100, 0x1000));
        std::fs::write(&path, &first).unwrap();
        let mut f = Follow::new(&path);
        f.update().unwrap();
        // Thread 2 frees block 0x1000 at seq 11 and thread 1 gets it back at seq 12; thread 1's
        // record is written first, and the piece read ends inside thread 2's. (Replayed as
        // read, the free would come after the new block and take it.)
        let mut t1 = Vec::new();
        events_record(
            &mut t1,
            1,
            &[
                (1, 12, 12_000_000, 50, 0x1000, 2),
                (1, 13, 13_000_000, 50, 0x5000, 2),
            ],
        );
        let mut t2 = Vec::new();
        events_record(&mut t2, 2, &[(2, 11, 11_000_000, 0, 0x1000, 0)]);
        append(&path, &t1);
        append(&path, &t2[..t2.len() - 3]);
        f.update().unwrap();
        assert_eq!(f.len(), (first.len() + t1.len()) as u64);
        append(&path, &t2[t2.len() - 3..]);
        f.update().unwrap();
        assert_eq!(f.len(), (first.len() + t1.len() + t2.len()) as u64);
        let a = f.analysis();
        // In sequence order: the free, then the new block at the same address.
        assert_eq!((a.allocations, a.frees, a.inconsistent), (12, 1, 0));
        assert_eq!(a.leaked_blocks, 11);
        assert_eq!(a.leaked_bytes, 9 * 100 + 2 * 50);
        assert_eq!(f.replay().unwrap().late, 0);
    }

    /// A backlog larger than the limit is read a limit at a time: each update reads at most the
    /// limit (or one record, when a record is larger), the next goes on where it stopped, and
    /// once caught up the figures are the whole dump's.
    #[test]
    fn a_limited_update_reads_at_most_its_limit_and_the_next_goes_on() {
        let path = dir().join("limited.zmt");
        let mut data = start_dump();
        let start = data.len() as u64;
        let mut records = Vec::new();
        for r in 0..20u64 {
            let before = data.len();
            events_record(
                &mut data,
                1,
                &allocs(
                    100,
                    1 + r * 100,
                    r * 100_000_000,
                    48,
                    0x10_0000 + r * 0x10_0000,
                ),
            );
            records.push((data.len() - before) as u64);
        }
        std::fs::write(&path, &data).unwrap();
        let biggest = *records.iter().max().unwrap();
        // Room for about three event records an update (the first also holds the header, the
        // process and the stacks, which are smaller than the limit).
        let limit = 3 * biggest + biggest / 2;
        assert!(start < limit);
        let mut f = Follow::with_limit(&path, limit);
        let mut updates = 0;
        let mut lens = Vec::new();
        while f.len() < data.len() as u64 {
            f.update().unwrap();
            updates += 1;
            let cost = f.last_update();
            assert!(cost.bytes <= limit, "read {} at limit {limit}", cost.bytes);
            assert!(cost.bytes > 0);
            assert_eq!(f.behind(), data.len() as u64 - f.len());
            lens.push(f.len());
            assert!(updates < 20, "no progress: {lens:?}");
        }
        // 20 records of ~`biggest` bytes, three a time: 7 updates, not one.
        assert!((6..=8).contains(&updates), "{updates} updates: {lens:?}");
        assert!(lens.windows(2).all(|w| w[0] < w[1]), "{lens:?}");
        assert_eq!(f.behind(), 0);
        let a = f.analysis();
        assert_eq!((a.allocations, a.leaked_blocks), (2000, 2000));
        assert_eq!(a.bytes_allocated, 2000 * 48);
        // Each byte read once, but for the record each limit cut in two (read again whole).
        assert!(f.bytes_read() < data.len() as u64 + updates * biggest);
        let whole = analyze(&Dump::open(&path).unwrap(), false, &mut |_, _| {});
        assert_eq!(whole.sites, a.sites);

        // A limit smaller than one record still reads a record an update.
        let mut g = Follow::with_limit(&path, 10);
        g.update().unwrap();
        assert!(!g.is_empty() && g.len() < data.len() as u64);
        assert!(g.analysis().allocations <= 100);
        let mut n = 1;
        while g.behind() > 0 {
            g.update().unwrap();
            n += 1;
            assert!(n <= 21, "no progress at {}", g.len());
        }
        assert_eq!(g.analysis().allocations, 2000);
    }

    /// Two threads: thread 1 allocates at one of 500 addresses, thread 2 frees each block 499
    /// steps later, and thread 1's next allocation takes that address back (`steps` of each).
    /// Each thread's events come in records of `chunk`, and thread 2's records are written a
    /// record late: replayed in the order read, each free would come after the allocation that
    /// reuses its address.
    fn two_threads(steps: u64, chunk: usize) -> Vec<Vec<u8>> {
        let addr = |i: u64| 0x40_0000 + (i % 500) * 0x100;
        // 0.2 ms apart: a record of 400 events of each thread spans 160 ms, within the hold.
        let ts = |seq: u64| seq * 200_000;
        let (mut t1, mut t2) = (Vec::new(), Vec::new());
        for i in 0..steps {
            let seq = 2 * i + 1;
            t1.push((1, seq, ts(seq), 16 + i % 50, addr(i), 1 + (i % 2) as u32));
            if i >= 499 {
                t2.push((2, seq + 1, ts(seq + 1), 0, addr(i + 1), 0));
            }
        }
        let (c1, c2): (Vec<&[Ev]>, Vec<&[Ev]>) =
            (t1.chunks(chunk).collect(), t2.chunks(chunk).collect());
        let mut records = Vec::new();
        for k in 0..c1.len().max(c2.len() + 1) {
            let mut r = Vec::new();
            if let Some(c) = c1.get(k) {
                events_record(&mut r, 1, c);
            }
            if let Some(c) = k.checked_sub(1).and_then(|k| c2.get(k)) {
                events_record(&mut r, 2, c);
            }
            records.push(r);
        }
        records
    }

    fn figures(a: &Analysis) -> (u64, u64, u64, u64, u64, u64, u64, u64) {
        (
            a.allocations,
            a.frees,
            a.bytes_allocated,
            a.peak_bytes,
            a.peak_seq,
            a.leaked_blocks,
            a.leaked_bytes,
            a.inconsistent,
        )
    }

    /// What `zmtrace run` does with a dump it followed while the program ran: pieces of a few
    /// records, events held back a quarter of a second, then, once the program is over, the
    /// rest read with nothing held. The result is the whole dump's, exactly.
    #[test]
    fn a_dump_followed_to_its_end_replays_as_the_whole_dump_does() {
        let path = dir().join("two-threads.zmt");
        let records = two_threads(3000, 400);
        std::fs::write(&path, start_dump()).unwrap();
        let mut f = Follow::with_limit(&path, 4096).with_hold(250_000_000, usize::MAX);
        for r in &records[..records.len() - 2] {
            append(&path, r);
            f.update().unwrap();
            while f.behind() > 0 {
                f.update().unwrap();
            }
        }
        assert!(f.replay().unwrap().replayed() > 0);
        assert!(f.replay().unwrap().held() > 0);
        for r in &records[records.len() - 2..] {
            append(&path, r);
        }
        f.set_limit(u64::MAX);
        f.set_hold(0);
        while f.behind() > 0 || f.replay().unwrap().held() > 0 {
            let before = f.len();
            f.update().unwrap();
            if f.len() == before {
                break;
            }
        }
        assert_eq!(f.replay().unwrap().late, 0);
        assert!(f.same_as_read());
        let whole = analyze(&Dump::open(&path).unwrap(), false, &mut |_, _| {});
        let (dump, a) = f.finish();
        assert_eq!(figures(&a), figures(&whole));
        // 3000 blocks, 2501 of them freed, none replayed out of order.
        assert_eq!((a.allocations, a.frees, a.inconsistent), (3000, 2501, 0));
        assert_eq!(a.leaked_blocks, 499);
        assert_eq!(a.sites, whole.sites);
        assert_eq!(dump.warnings, Dump::open(&path).unwrap().warnings);
    }

    /// A dump that ends in a record cut off, or whose events came in too late for the hold, is
    /// not taken for what `Dump::open` reads.
    #[test]
    fn a_record_cut_off_at_the_end_or_late_events_are_not_what_a_read_gives() {
        let records = two_threads(1000, 200);
        let path = dir().join("cut-at-end.zmt");
        std::fs::write(&path, start_dump()).unwrap();
        let mut f = Follow::new(&path).with_hold(250_000_000, usize::MAX);
        for r in &records {
            append(&path, r);
            f.update().unwrap();
        }
        f.set_hold(0);
        f.update().unwrap();
        assert!(f.same_as_read());
        let mut more = Vec::new();
        events_record(
            &mut more,
            1,
            &allocs(10, 10_000, 1_000_000_000, 8, 0x90_0000),
        );
        append(&path, &more[..more.len() - 4]);
        f.update().unwrap();
        assert!(!f.same_as_read(), "a record cut off at the end");
        append(&path, &more[more.len() - 4..]);
        f.update().unwrap();
        assert!(f.same_as_read(), "the record whole");

        // Held back for a nanosecond only: thread 2's frees, a record late, are replayed after
        // the allocations that took their addresses back.
        let path = dir().join("late.zmt");
        std::fs::write(&path, start_dump()).unwrap();
        let mut f = Follow::new(&path).with_hold(1, usize::MAX);
        for r in &records {
            append(&path, r);
            f.update().unwrap();
        }
        assert!(f.replay().unwrap().late > 0);
        assert!(!f.same_as_read());
        assert!(f.diverged());
    }

    /// At most so many events are held back, however new: one thread's events, which come in
    /// order, replay as the whole dump's all the same; two threads' overflow the bound, and could
    /// come in late.
    #[test]
    fn the_most_events_held_is_a_bound_and_only_threads_apart_come_in_late() {
        let path = dir().join("held-one.zmt");
        std::fs::write(&path, start_dump()).unwrap();
        let mut f = Follow::new(&path).with_hold(10_000_000_000, 1000);
        for r in 0..10u64 {
            let mut rec = Vec::new();
            let (seq, ts) = (1 + r * 2000, r * 2_000_000);
            events_record(
                &mut rec,
                1,
                &allocs(2000, seq, ts, 24, 0x10_0000 + r * 0x10_0000),
            );
            append(&path, &rec);
            f.update().unwrap();
            let held = f.replay().unwrap().held();
            assert!(held <= 1000, "{held} held");
        }
        assert_eq!(f.replay().unwrap().replayed(), 19_000);
        f.set_hold(0);
        f.update().unwrap();
        assert!(f.same_as_read());
        let whole = analyze(&Dump::open(&path).unwrap(), false, &mut |_, _| {});
        let (_, a) = f.finish();
        assert_eq!(figures(&a), figures(&whole));
        assert_eq!(a.allocations, 20_000);

        let path = dir().join("held-two.zmt");
        std::fs::write(&path, start_dump()).unwrap();
        let mut f = Follow::new(&path).with_hold(10_000_000_000, 100);
        for r in &two_threads(1000, 200) {
            append(&path, r);
            f.update().unwrap();
        }
        assert!(f.replay().unwrap().overflowed);
        assert!(f.diverged());
    }
}
