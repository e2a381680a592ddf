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
        }
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
            let limit = self.limit;
            *self = Follow::with_limit(&path, limit);
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
        let replay = self
            .replay
            .get_or_insert_with(|| Replay::new(&piece, false));
        replay.feed(&piece);
        self.carry = piece.carry();
        self.offset += used;
        add(&mut self.dump, piece, self.offset);
        self.last.replay = replaying.elapsed();
        Ok(())
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
}
