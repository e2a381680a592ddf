//! Reading a dump: every intact record is taken, damage is skipped and reported in
//! [`Dump::warnings`], and nothing in the data can make the reader panic.
//!
//! Opening a dump maps the file and reads everything but the events (process, modules, stacks,
//! inherited blocks, end): one pass that checks every record's checksum and notes where the
//! `Events` records are. [`Dump::events`] then streams the events in sequence order, merging the
//! threads' records as it goes: at most two decoded records per thread are in memory at a time
//! (the one being read and the next), so a dump of any size is analyzed in the memory its live
//! set needs, not its event count.
//!
//! # Decoding ahead
//!
//! Each record is compressed on its own, and a stream's records are decoded in order (a version-3
//! record may continue the tables of its stream's previous one: [`crate::event::Packer`]), so
//! while the caller consumes one record's events a second thread decompresses and decodes the
//! next record of the same stream: the replay and the decoding each take a core instead of taking
//! turns on one. The decoding thread works on requests, one per stream at most, in each stream's
//! order, and keeps each stream's tables; what it holds is bounded by the number of streams,
//! never by the dump's length.

use std::collections::{BinaryHeap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex};

use crate::event::{decode_events_in_version, decode_events_v2, is_continuation, Tables};
use crate::varint::{unzigzag, Cursor, Malformed};
use crate::words::human_bytes;
use crate::{
    Aggregate, AggregateSite, Block, Churn, End, EndReason, Event, KindTotal, LiveSite, Module,
    ModuleGone, Origin, Process, Reach, ReachTrigger, RecordKind, Snapshot, FILE_HEADER_LEN, MAGIC,
    MAX_RECORD_LEN, RECORD_HEADER_LEN, VERSION,
};

/// Why a file could not be read as a dump at all.
#[derive(Debug)]
pub enum ReadError {
    Io(PathBuf, std::io::Error),
    IsDirectory(PathBuf),
    Empty(PathBuf),
    NotADump(PathBuf),
    FutureVersion(PathBuf, u32),
}

impl fmt::Display for ReadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReadError::Io(p, e) => write!(f, "cannot read {}: {e}", p.display()),
            ReadError::IsDirectory(p) => {
                write!(f, "{} is a directory, not a zmtrace dump", p.display())
            }
            ReadError::Empty(p) => write!(f, "{} is empty: no dump was written", p.display()),
            ReadError::NotADump(p) => {
                write!(f, "{} is not a zmtrace dump (bad magic)", p.display())
            }
            ReadError::FutureVersion(p, v) => write!(
                f,
                "{} is a version {v} dump; this zmtrace reads versions up to {VERSION}: upgrade zmtrace",
                p.display()
            ),
        }
    }
}

impl std::error::Error for ReadError {}

/// Everything read from one dump.
#[derive(Debug, Default)]
pub struct Dump {
    pub path: PathBuf,
    pub version: u32,
    pub file_len: u64,
    pub process: Option<Process>,
    /// Modules in the order they were recorded (a module unloaded later is still listed).
    pub modules: Vec<Module>,
    /// Modules recorded as unloaded, in the order they were.
    pub modules_gone: Vec<ModuleGone>,
    pub stacks: HashMap<u32, Vec<u64>>,
    /// Where the `Events` records are: read by [`Dump::events`].
    event_records: Vec<EventsRef>,
    /// Blocks a forked child inherited from its parent.
    pub inherited: Vec<Block>,
    /// The counters of an aggregated recording (the last `Aggregate` record): such a dump has no
    /// events, so no timeline and no peak.
    pub aggregate: Option<Aggregate>,
    /// Per stack, the blocks live when an aggregated recording ended (the last `LiveAtEnd`
    /// record).
    pub live_at_end: Vec<LiveSite>,
    /// Set when the process called `execve` (the path).
    pub exec: Option<String>,
    /// Absent when the process did not end normally (crash, SIGKILL) or the dump is cut short.
    pub end: Option<End>,
    /// Threads that allocated or freed after the `End` record (their later events are missing).
    pub late_threads: Vec<u32>,
    /// The leak checks made in the process, in the order they were written.
    pub reach: Vec<Reach>,
    /// The snapshots taken on demand, in the order they were taken.
    pub snapshots: Vec<Snapshot>,
    /// The last record read was a snapshot marker of an aggregated dump: the `Aggregate` and
    /// `LiveAtEnd` records right after it are its own.
    snapshot_open: bool,
    /// Number of records read intact.
    pub records: u64,
    /// Bytes that could not be read (damaged or cut-off records).
    pub bytes_lost: u64,
    /// One line per problem met while reading.
    pub warnings: Vec<String>,
    /// Damaged spans met while reading (corrupt bytes skipped, intact records that did not
    /// parse), a cut-off end not counted: see [`Dump::damage`].
    pub damaged: u64,
    /// `Events` records that did not decode, found while streaming them.
    damaged_late: std::sync::atomic::AtomicU64,
    /// Problems met while streaming the events (a record whose events do not decode).
    late_warnings: Mutex<Vec<String>>,
    /// Shared with the thread that decodes records ahead of the replay ([`Dump::events`]).
    data: Arc<Data>,
    /// Each stream's tables left by the records before this dump's first (a piece of a dump
    /// being followed: [`Dump::continue_from`]), and those its last records leave.
    carry_in: HashMap<u32, Tables>,
    carry_out: Mutex<HashMap<u32, Tables>>,
}

/// What a stream's records leave for its next one (see [`Dump::carry`]).
#[derive(Default)]
pub struct Carry(HashMap<u32, Tables>);

/// An `Events` record, not yet decoded.
#[derive(Debug, Clone, Copy)]
struct EventsRef {
    /// Where its payload starts in the file, and its length.
    offset: usize,
    len: usize,
    stream: u32,
}

/// The file's bytes: mapped from disk, or owned (tests, small inputs).
#[derive(Debug, Default)]
enum Data {
    #[default]
    Empty,
    Mapped(memmap2::Mmap),
    Owned(Vec<u8>),
}

impl Data {
    fn bytes(&self) -> &[u8] {
        match self {
            Data::Empty => &[],
            Data::Mapped(m) => m,
            Data::Owned(v) => v,
        }
    }
}

impl Dump {
    /// Reads a dump from a file.
    pub fn open(path: &Path) -> Result<Dump, ReadError> {
        if path.is_dir() {
            return Err(ReadError::IsDirectory(path.to_owned()));
        }
        let io = |e| ReadError::Io(path.to_owned(), e);
        let file = std::fs::File::open(path).map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        if len == 0 {
            return Err(ReadError::Empty(path.to_owned()));
        }
        // SAFETY: the map is only read. A dump still being appended to keeps the length it had
        // when mapped; one truncated underneath us could fault, as with any mapped file.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io)?;
        Dump::read(path, Data::Mapped(map))
    }

    /// Reads only the first record (the process record), cheaply: used to pick the dumps that
    /// belong to one run out of a directory.
    pub fn peek_process(path: &Path) -> Option<Process> {
        use std::io::Read;
        let mut f = std::fs::File::open(path).ok()?;
        let mut head = vec![0u8; 64 * 1024];
        let mut n = 0;
        while n < head.len() {
            match f.read(&mut head[n..]) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(_) => return None,
            }
        }
        head.truncate(n);
        if n < FILE_HEADER_LEN + RECORD_HEADER_LEN || &head[..8] != MAGIC {
            return None;
        }
        let (kind, payload) = record_at(&head, FILE_HEADER_LEN)?;
        if kind != RecordKind::Process {
            return None;
        }
        parse_process(payload).ok()
    }

    /// Reads a dump already in memory. `path` is only used in messages.
    pub fn from_bytes(path: &Path, data: Vec<u8>) -> Result<Dump, ReadError> {
        Dump::read(path, Data::Owned(data))
    }

    fn read(path: &Path, owned: Data) -> Result<Dump, ReadError> {
        let data = owned.bytes();
        if data.is_empty() {
            return Err(ReadError::Empty(path.to_owned()));
        }
        let magic_len = data.len().min(MAGIC.len());
        if data[..magic_len] != MAGIC[..magic_len] {
            return Err(ReadError::NotADump(path.to_owned()));
        }
        let mut dump = Dump {
            path: path.to_owned(),
            file_len: data.len() as u64,
            ..Dump::default()
        };
        if data.len() < FILE_HEADER_LEN {
            dump.bytes_lost = data.len() as u64;
            dump.warnings.push(format!(
                "truncated: the file ends inside its {FILE_HEADER_LEN}-byte header ({})",
                human_bytes(data.len() as u64)
            ));
            return Ok(dump);
        }
        let version = u32::from_le_bytes(data[8..12].try_into().unwrap());
        if version > VERSION {
            return Err(ReadError::FutureVersion(path.to_owned(), version));
        }
        dump.version = version;

        let mut pos = FILE_HEADER_LEN;
        while pos < data.len() {
            let rest = data.len() - pos;
            if let Some(len) = unknown_record_at(data, pos) {
                dump.warnings.push(format!(
                    "a record of unknown kind {} at offset {pos} ({}) was skipped: written by a \
                     newer zmtrace?",
                    data[pos],
                    human_bytes(len as u64)
                ));
                pos += RECORD_HEADER_LEN + len;
                continue;
            }
            if let Some((kind, payload)) = record_at(data, pos) {
                if let Err(Damage(why)) = dump.take_record(kind, payload, pos + RECORD_HEADER_LEN) {
                    dump.damaged += 1;
                    dump.warnings.push(match why {
                        Some(why) => format!(
                            "malformed {kind:?} record at offset {pos} ({why}): it was skipped"
                        ),
                        None => format!(
                            "malformed {kind:?} record at offset {pos}: part of it was skipped"
                        ),
                    });
                }
                dump.records += 1;
                pos += RECORD_HEADER_LEN + payload.len();
                continue;
            }
            // Not an intact record here. A record that runs past the end of the file is the
            // normal shape of a dump cut short by a crash or a kill.
            if rest < RECORD_HEADER_LEN || plausible_cut_record(data, pos) {
                dump.bytes_lost += rest as u64;
                dump.warnings.push(format!(
                    "truncated: the last {} (from offset {pos}) are an incomplete record",
                    human_bytes(rest as u64)
                ));
                break;
            }
            // Damage: skip to the next intact record, if any.
            let next = (pos + 1..data.len())
                .find(|&p| record_at(data, p).is_some() || unknown_record_at(data, p).is_some());
            let end = next.unwrap_or(data.len());
            dump.damaged += 1;
            dump.bytes_lost += (end - pos) as u64;
            dump.warnings.push(format!(
                "corrupt data at offset {pos}: {} skipped{}",
                human_bytes((end - pos) as u64),
                if next.is_some() {
                    ""
                } else {
                    " (to the end of the file)"
                }
            ));
            pos = end;
        }
        if dump.process.is_none() {
            dump.warnings
                .push("the process record is missing: who was traced is unknown".into());
        }
        drop(dump.data);
        dump.data = Arc::new(owned);
        Ok(dump)
    }

    /// This dump holds the records that follow those of another read (a piece of a dump being
    /// followed as it grows): its first records may continue the tables those left ([`Dump::carry`]
    /// of the reader of the piece before).
    pub fn continue_from(&mut self, carry: Carry) {
        self.carry_in = carry.0;
    }

    /// What each stream's last record leaves for the next one, once [`Dump::events`] has streamed
    /// them all: for the reader of the bytes that follow ([`Dump::continue_from`]).
    pub fn carry(&self) -> Carry {
        Carry(
            self.carry_out
                .lock()
                .map(|mut m| std::mem::take(&mut *m))
                .unwrap_or_default(),
        )
    }

    /// Every event, in sequence order, streamed from the file. A record whose events do not
    /// decode yields the events before the damage and adds a line to [`Dump::late_warnings`].
    pub fn events(&self) -> Events<'_> {
        // A second core, and more than one record to decode: decode ahead on it.
        let ahead = self.event_records.len() > 1
            && std::thread::available_parallelism().is_ok_and(|n| n.get() > 1);
        self.events_with(ahead)
    }

    /// [`Dump::events`], decoding ahead on a thread of its own or not (tests compare the two).
    fn events_with(&self, ahead: bool) -> Events<'_> {
        let mut per_stream: HashMap<u32, usize> = HashMap::new();
        let mut streams: Vec<StreamCursor> = Vec::new();
        let mut stream_of = Vec::with_capacity(self.event_records.len());
        for (i, r) in self.event_records.iter().enumerate() {
            let s = *per_stream.entry(r.stream).or_insert_with(|| {
                streams.push(StreamCursor {
                    id: r.stream,
                    tables: self.carry_in.get(&r.stream).cloned(),
                    ..StreamCursor::default()
                });
                streams.len() - 1
            });
            streams[s].records.push(i);
            stream_of.push(s);
        }
        let ahead = if ahead { Ahead::start(self) } else { None };
        let mut ev = Events {
            dump: self,
            streams,
            heap: BinaryHeap::new(),
            loaded: 0,
            zstd: None,
            ahead,
            stream_of,
            current: None,
            last_seq: None,
            skipped: 0,
        };
        // Every stream's first record is asked for at once, so they decode while the first
        // arrives.
        for s in 0..ev.streams.len() {
            ev.ask(s);
        }
        for s in 0..ev.streams.len() {
            ev.refill(s);
        }
        ev
    }

    /// How many events the process made (the [`crate::EventKind::ReallocOut`] and
    /// [`crate::EventKind::RemapOut`] markers, halves of reallocs and remaps, are not counted): what the `End` record's count must equal.
    pub fn count_events(&self) -> u64 {
        self.events()
            .filter(|e| {
                !matches!(
                    e.kind,
                    crate::EventKind::ReallocOut { .. } | crate::EventKind::RemapOut { .. }
                )
            })
            .count() as u64
    }

    /// All events in a vector: for small dumps and tests. Analyses use [`Dump::events`].
    pub fn all_events(&self) -> Vec<Event> {
        self.events().collect()
    }

    /// Problems found while streaming the events so far.
    pub fn late_warnings(&self) -> Vec<String> {
        self.late_warnings
            .lock()
            .map(|w| w.clone())
            .unwrap_or_default()
    }

    /// Notes a record whose events did not decode (`line`, from [`decode_record`]).
    fn late_damage(&self, line: String) {
        // Once per record, however often the events are streamed.
        if let Ok(mut w) = self.late_warnings.lock() {
            if !w.contains(&line) {
                w.push(line);
                self.damaged_late
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
    }

    /// One line when the dump is damaged (not merely cut short): how many damaged spans or
    /// records were skipped and the first of them. Records of `Events` count once they have been
    /// streamed. The intact records around the damage are read all the same.
    pub fn damage(&self) -> Option<String> {
        let late = self.damaged_late.load(std::sync::atomic::Ordering::Relaxed);
        let n = self.damaged + late;
        if n == 0 {
            return None;
        }
        let late_warnings = self.late_warnings();
        let first = self
            .warnings
            .iter()
            .chain(late_warnings.iter())
            .find(|w| {
                w.starts_with("malformed")
                    || w.starts_with("corrupt")
                    || w.contains("does not decode")
            })
            .cloned()
            .unwrap_or_default();
        Some(format!(
            "{}: damaged: {n} part(s) could not be read and were skipped, the intact records \
             were read (first: {first})",
            self.path.display()
        ))
    }

    /// True when the dump holds everything the process did: it ended through `exit`, `_exit`,
    /// `abort` or `exec`, and nothing was lost in between.
    pub fn is_complete(&self) -> bool {
        self.bytes_lost == 0
            && (!self.is_aggregated() || self.aggregate.is_some())
            && self.late_threads.is_empty()
            && matches!(self.end, Some(e) if e.dropped == 0 && e.reason != EndReason::WriteError)
    }

    /// True for a dump of `zmtrace run --aggregate`: counters and the live set, no events.
    /// The mean sampling interval in bytes of a sampled recording (`zmtrace run --sample`),
    /// or None: every block was recorded.
    pub fn sample_interval(&self) -> Option<u64> {
        self.process
            .as_ref()
            .map(|p| p.sample_interval)
            .filter(|&i| i > 0)
    }

    /// A sampled recording made with `--all-blocks` (the leak check saw every block).
    pub fn all_blocks(&self) -> bool {
        self.process.as_ref().is_some_and(|p| p.all_blocks)
    }

    pub fn is_aggregated(&self) -> bool {
        self.process.as_ref().is_some_and(|p| p.aggregated)
    }

    /// One line on how the recorded process ended, for people.
    pub fn ending(&self) -> String {
        match self.end {
            Some(e) if e.reason == EndReason::Signal => format!(
                "did not end normally: killed by {}; everything up to the signal is in the dump",
                crate::signal_name(e.status)
            ),
            Some(e) if e.reason == EndReason::WriteError => format!(
                "recording stopped: could not write the dump ({}); what the program did after \
                 that is not in the dump",
                crate::os_error_text(e.status)
            ),
            Some(e) if !self.late_threads.is_empty() => format!(
                "did not end normally: {} while {} still allocated; what they did after that \
                 is not in the dump",
                e.reason.describe(),
                crate::words::plural(self.late_threads.len() as u64, "other thread")
            ),
            Some(e) if e.reason == EndReason::Abort => "did not end normally: the program \
                called abort(); every event up to it is in the dump"
                .into(),
            Some(e) if e.reason == EndReason::UnderscoreExit => {
                format!("ended normally (_exit({}))", e.status)
            }
            Some(e) => format!("ended normally ({})", e.reason.describe()),
            None => "did not end normally: the process crashed or was killed, or the dump was cut \
                     short; events after its last flush are missing"
                .into(),
        }
    }

    fn take_record(
        &mut self,
        kind: RecordKind,
        payload: &[u8],
        offset: usize,
    ) -> Result<(), Damage> {
        let mut c = Cursor::new(payload);
        // The stacks and modules the snapshot's counters name may be written between them.
        let open = if matches!(
            kind,
            RecordKind::Stacks | RecordKind::Module | RecordKind::ModuleGone
        ) {
            self.snapshot_open
        } else {
            std::mem::take(&mut self.snapshot_open)
        };
        match kind {
            RecordKind::Process => self.process = Some(parse_process(payload)?),
            RecordKind::Module => {
                let base = c.uvarint()?;
                let path = c.string()?;
                let build_id = c.bytes()?.to_vec();
                let n = c.uvarint()?;
                let mut segments = Vec::new();
                for _ in 0..n {
                    segments.push((c.uvarint()?, c.uvarint()?));
                }
                // Appended later: absent, the module was there from the start.
                let seq = if c.is_empty() { 0 } else { c.uvarint()? };
                self.modules.push(Module {
                    base,
                    path,
                    build_id,
                    segments,
                    seq,
                });
            }
            RecordKind::ModuleGone => {
                let base = c.uvarint()?;
                let seq = if c.is_empty() { 0 } else { c.uvarint()? };
                self.modules_gone.push(ModuleGone { base, seq });
            }
            RecordKind::Stacks => {
                let raw;
                let mut c = if self.version >= 2 {
                    raw = decompress(c.uvarint()?, c.rest())?;
                    Cursor::new(&raw)
                } else {
                    c
                };
                let n = c.uvarint()?;
                for _ in 0..n {
                    let id = c.u32()?;
                    let len = c.uvarint()?;
                    let mut frames = Vec::with_capacity(len.min(1024) as usize);
                    let mut prev = 0u64;
                    for i in 0..len {
                        let v = c.uvarint()?;
                        prev = if i == 0 {
                            v
                        } else {
                            prev.wrapping_add(unzigzag(v) as u64)
                        };
                        frames.push(prev);
                    }
                    self.stacks.insert(id, frames);
                }
            }
            RecordKind::Events => {
                let stream = c.u32()?;
                self.event_records.push(EventsRef {
                    offset,
                    len: payload.len(),
                    stream,
                });
            }
            RecordKind::Inherited => {
                let raw = decompress(c.uvarint()?, c.rest())?;
                let mut c = Cursor::new(&raw);
                while !c.is_empty() {
                    self.inherited.push(Block {
                        addr: c.uvarint()?,
                        size: c.uvarint()?,
                        usable: c.uvarint()?,
                        stack: c.u32()?,
                    });
                }
            }
            RecordKind::Exec => self.exec = Some(c.string()?),
            RecordKind::End => {
                let reason = EndReason::from_u8(c.u8()?).ok_or(Malformed)?;
                let status = unzigzag(c.uvarint()?) as i32;
                let mut v = [0u64; 7];
                for x in &mut v {
                    *x = c.uvarint()?;
                }
                self.end = Some(End {
                    reason,
                    status,
                    events: v[0],
                    dropped: v[1],
                    untracked_frees: v[2],
                    free_null: v[3],
                    truncated_stacks: v[4],
                    compared_stacks: v[5],
                    mismatched_stacks: v[6],
                });
            }
            RecordKind::Late => {
                // Once per thread: the writer names a thread still allocating as the dump
                // ends, and the thread may then name itself as it allocates after the end.
                let tid = c.u32()?;
                if !self.late_threads.contains(&tid) {
                    self.late_threads.push(tid);
                }
            }
            RecordKind::Aggregate => {
                let raw = decompress(c.uvarint()?, c.rest())?;
                let a = parse_aggregate(&raw)?;
                if let Some(s) = self.snapshots.last_mut().filter(|_| open) {
                    s.aggregate = Some(a.clone());
                    self.snapshot_open = true;
                }
                self.aggregate = Some(a);
            }
            RecordKind::LiveAtEnd => {
                let raw = decompress(c.uvarint()?, c.rest())?;
                let mut c = Cursor::new(&raw);
                let mut sites = Vec::new();
                while !c.is_empty() {
                    sites.push(LiveSite {
                        stack: c.u32()?,
                        blocks: c.uvarint()?,
                        bytes: c.uvarint()?,
                        usable: c.uvarint()?,
                        via_realloc: c.uvarint()?,
                        kind: c.u8()?,
                    });
                }
                if let Some(s) = self.snapshots.last_mut().filter(|_| open) {
                    s.live = Some(sites.clone());
                }
                self.live_at_end = sites;
            }
            RecordKind::Reach => self.reach.push(parse_reach(&mut c)?),
            RecordKind::Snapshot => {
                self.snapshots.push(Snapshot {
                    ts_ns: c.uvarint()?,
                    seq: c.uvarint()?,
                    ..Snapshot::default()
                });
                self.snapshot_open = true;
            }
        }
        Ok(())
    }
}

/// Decodes the `Events` record `r` of `data` into `out` (appended), after the tables its
/// stream's previous record left (`tables`, which it then holds what this one leaves). On damage
/// `out` keeps the events before it, and the line that says so is returned (for
/// [`Dump::late_damage`]).
fn decode_record(
    data: &[u8],
    version: u32,
    r: EventsRef,
    zstd: &mut Option<zstd::zstd_safe::DCtx<'static>>,
    tables: &mut Option<Tables>,
    out: &mut Vec<Event>,
) -> Option<String> {
    let had_tables = tables.is_some();
    let payload = data.get(r.offset..r.offset + r.len);
    let result = (|| -> Result<(), Damage> {
        let mut c = Cursor::new(payload.ok_or(Malformed)?);
        let _stream = c.u32()?;
        let tid = c.u32()?;
        let raw_len = c.uvarint()?;
        let lost = || {
            Damage(Some(
                "it continues an earlier record of its thread, which did not decode".into(),
            ))
        };
        let prefix_len = if version >= 3 { c.uvarint()? } else { 0 };
        let prev = tables.take();
        let raw = if prefix_len == 0 {
            decompress_capped(zstd, raw_len, MAX_EVENTS_RAW_LEN, c.rest())?
        } else {
            let prev = prev.as_ref().ok_or_else(lost)?;
            let at = (prev.raw.len() as u64)
                .checked_sub(prefix_len)
                .ok_or(Malformed)?;
            decompress_after(&prev.raw[at as usize..], raw_len, c.rest())?
        };
        if version < 3 {
            return Ok(decode_events_v2(&raw, tid, out)?);
        }
        // Version 4 regroups the packed events by field (see `lanes`), version 6 cuts some
        // fields' varints in two; the next record's prefix is this one's bytes as compressed,
        // in lanes.
        let merged;
        let packed = if crate::lanes::layout_of(version, &raw).is_some() {
            let mut m = Vec::with_capacity(raw.len());
            crate::lanes::merge(&raw, &mut m)
                .map_err(|_| Damage(Some("its field lanes do not add up".into())))?;
            merged = m;
            &merged[..]
        } else {
            &raw[..]
        };
        if is_continuation(packed) && !had_tables {
            return Err(lost());
        }
        *tables = prev;
        decode_events_in_version(version, packed, tid, tables, out)?;
        if let Some(t) = tables.as_mut() {
            t.raw = raw;
        }
        Ok(())
    })();
    let Err(Damage(why)) = result else {
        return None;
    };
    Some(format!(
        "the events record at offset {} does not decode{}: its remaining events are lost",
        r.offset - RECORD_HEADER_LEN,
        why.map(|w| format!(" ({w})")).unwrap_or_default()
    ))
}

/// One record decoded by the thread that decodes ahead.
struct Decoded {
    /// Its index in [`Dump::event_records`].
    record: usize,
    events: Vec<Event>,
    damage: Option<String>,
}

/// The thread that decodes records ahead of the replay (see the module docs), and the two
/// channels to it: asks (a record, and a spent buffer to decode it into) and answers, both in
/// the order asked.
struct Ahead {
    ask: Option<mpsc::Sender<(usize, Vec<Event>)>>,
    answers: mpsc::Receiver<Decoded>,
    /// Returns each stream's tables as its last record decoded left them.
    thread: Option<std::thread::JoinHandle<HashMap<u32, Tables>>>,
    /// Buffers of records read to the end, for the next asks (no allocation per record).
    spare: Vec<Vec<Event>>,
}

impl Ahead {
    /// None when no thread can be started: the caller then decodes on its own.
    fn start(dump: &Dump) -> Option<Ahead> {
        keep_freed_memory();
        let (ask, asks) = mpsc::channel::<(usize, Vec<Event>)>();
        let (answer, answers) = mpsc::channel();
        let data = Arc::clone(&dump.data);
        let records = dump.event_records.clone();
        let version = dump.version;
        let mut tables = dump.carry_in.clone();
        let thread = std::thread::Builder::new()
            .name("zmtrace-decode".into())
            .spawn(move || {
                let mut zstd = None;
                // Ends when the reader is dropped (the asks' sender with it).
                for (record, mut events) in asks {
                    events.clear();
                    let r = records[record];
                    // A stream's records are asked for in order: its tables carry over.
                    let mut t = tables.remove(&r.stream);
                    let damage =
                        decode_record(data.bytes(), version, r, &mut zstd, &mut t, &mut events);
                    if let Some(t) = t {
                        tables.insert(r.stream, t);
                    }
                    let done = Decoded {
                        record,
                        events,
                        damage,
                    };
                    if answer.send(done).is_err() {
                        break;
                    }
                }
                tables
            })
            .ok()?;
        Some(Ahead {
            ask: Some(ask),
            answers,
            thread: Some(thread),
            spare: Vec::new(),
        })
    }
}

/// Tells glibc's malloc to keep what the reader frees, once per process. Each record's
/// decompressed bytes are a new large buffer, freed a record later: often at the top of the
/// decode thread's arena, so malloc handed the pages back to the kernel (madvise) and the next
/// record faulted them in again, zeroed. On 10 M events that was 50,000 page faults and a fifth
/// of the report's CPU; with the thresholds fixed, 3,600. What it costs: the process keeps up to
/// 16 MiB it freed at the top of an arena until it exits, and only a process that reads dumps
/// with a thread decoding ahead sets this (the recorder never does).
fn keep_freed_memory() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // Fixing one threshold turns off glibc's adjustment of both, so both are set. No
        // trimming below 16 MiB free at the top (at 4 MiB most of the faults came back; at 256
        // the jq dump's report kept 2 MiB more). Blocks of 1 MiB and more are mapped on their
        // own: a group's address lists, the live set's larger tables, the decoded events'
        // buffers. Freed, they go back whole, and a growing one is moved by `mremap`, not
        // copied. A record's bytes (64 KiB at most from the recorder) stay in the arena, where
        // the faults were. At 32 MiB (glibc's largest), a group's lists, dropped and grown again
        // beside the other buffers, left holes the arena did not reuse: sites.c's report peaked
        // at 55.6 MiB of RSS for 19 MiB of heap, 45.7 at 1 MiB. The cost is on a dump of 5 M
        // live blocks, whose live set's tables, now mapped, fault in afresh as they grow: 43 K
        // page faults there before, 70 K now.
        // SAFETY: mallopt only sets malloc's parameters; it may be called at any time.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
            libc::mallopt(libc::M_TRIM_THRESHOLD, 16 << 20);
        }
    });
}

/// The next events of one thread's stream: its records in file order, and the current one
/// decoded.
#[derive(Default)]
struct StreamCursor {
    /// The stream's id in its records.
    id: u32,
    /// Decoding here: the tables its last record decoded left (see [`decode_record`]).
    tables: Option<Tables>,
    records: Vec<usize>,
    next_record: usize,
    buf: Vec<Event>,
    pos: usize,
    /// Decoding ahead: the stream's next record has been asked for.
    asked: bool,
    /// Decoding ahead: its next record, when it arrived while another stream's was awaited.
    ready: Option<Decoded>,
}

/// Streams a dump's events in sequence order: a k-way merge of the threads' streams, each of
/// which is in sequence order already (a thread numbers its events as it makes them).
pub struct Events<'a> {
    dump: &'a Dump,
    streams: Vec<StreamCursor>,
    /// (Reverse(seq), stream) of each stream's next event.
    heap: BinaryHeap<(std::cmp::Reverse<u64>, usize)>,
    /// Records decoded so far.
    loaded: usize,
    /// One decompression context for all records (decoding here).
    zstd: Option<zstd::zstd_safe::DCtx<'static>>,
    /// The thread decoding ahead, if there is one.
    ahead: Option<Ahead>,
    /// The stream of each record (by index in [`Dump::event_records`]).
    stream_of: Vec<usize>,
    /// The stream whose next event comes next, kept out of the heap.
    current: Option<usize>,
    last_seq: Option<u64>,
    /// Events dropped as duplicates or out of order (damage).
    skipped: u64,
}

impl Drop for Events<'_> {
    fn drop(&mut self) {
        let mut carry = self.dump.carry_in.clone();
        for st in &mut self.streams {
            match st.tables.take() {
                Some(t) => carry.insert(st.id, t),
                None => carry.remove(&st.id),
            };
        }
        if let Some(mut a) = self.ahead.take() {
            // No more asks: the thread finishes the record at hand and ends.
            drop(a.ask.take());
            if let Some(Ok(tables)) = a.thread.take().map(|t| t.join()) {
                // It decoded every record (the thread answers in turn, it cannot stop early
                // unless it panicked).
                for st in &self.streams {
                    match tables.get(&st.id) {
                        Some(t) => carry.insert(st.id, t.clone()),
                        None => carry.remove(&st.id),
                    };
                }
            }
        }
        if let Ok(mut c) = self.dump.carry_out.lock() {
            *c = carry;
        }
        if self.skipped > 0 {
            if let Ok(mut w) = self.dump.late_warnings.lock() {
                let line = format!(
                    "{} events repeated or out of order (damaged records) were skipped",
                    self.skipped
                );
                if !w.contains(&line) {
                    w.push(line);
                }
            }
        }
    }
}

impl Events<'_> {
    /// (records decoded so far, records in the dump): for a progress bar.
    pub fn progress(&self) -> (usize, usize) {
        (self.loaded, self.dump.event_records.len())
    }

    /// The sequence number of stream `s`'s next event, decoding its next record if needed;
    /// None when the stream is exhausted.
    fn advance(&mut self, s: usize) -> Option<u64> {
        while self.streams[s].pos >= self.streams[s].buf.len() {
            let st = &mut self.streams[s];
            if st.next_record >= st.records.len() {
                return None;
            }
            let record = st.records[st.next_record];
            st.next_record += 1;
            st.pos = 0;
            self.loaded += 1;
            let damage = if self.ahead.is_some() {
                self.take_ahead(s, record)
            } else {
                let st = &mut self.streams[s];
                st.buf.clear();
                let r = self.dump.event_records[record];
                decode_record(
                    self.dump.data.bytes(),
                    self.dump.version,
                    r,
                    &mut self.zstd,
                    &mut st.tables,
                    &mut st.buf,
                )
            };
            if let Some(line) = damage {
                self.dump.late_damage(line);
            }
            // The one after it decodes while this one is read.
            self.ask(s);
        }
        let st = &self.streams[s];
        Some(st.buf[st.pos].seq)
    }

    /// Decoding ahead: asks for stream `s`'s next record, unless it is asked already or there
    /// is none.
    fn ask(&mut self, s: usize) {
        let Some(a) = self.ahead.as_mut() else {
            return;
        };
        let st = &mut self.streams[s];
        let Some(&record) = st.records.get(st.next_record) else {
            return;
        };
        if st.asked {
            return;
        }
        let buf = a.spare.pop().unwrap_or_default();
        if a.ask
            .as_ref()
            .is_some_and(|t| t.send((record, buf)).is_ok())
        {
            st.asked = true;
        } else {
            // The thread is gone (it panicked): decode here from now on.
            self.ahead = None;
        }
    }

    /// Decoding ahead: waits for stream `s`'s `record` (asked for before) and makes it the
    /// stream's current one; the damage line, if its events did not all decode.
    fn take_ahead(&mut self, s: usize, record: usize) -> Option<String> {
        let decoded = loop {
            if let Some(d) = self.streams[s].ready.take() {
                break Some(d);
            }
            let Some(a) = self.ahead.as_mut() else {
                break None;
            };
            match a.answers.recv() {
                // Another stream's record (asked before this one): kept for it.
                Ok(d) => {
                    let t = self.stream_of[d.record];
                    self.streams[t].ready = Some(d);
                }
                Err(_) => {
                    self.ahead = None;
                    break None;
                }
            }
        };
        let st = &mut self.streams[s];
        st.asked = false;
        match decoded {
            Some(d) => {
                debug_assert_eq!(d.record, record);
                let spent = std::mem::replace(&mut st.buf, d.events);
                if let Some(a) = self.ahead.as_mut() {
                    a.spare.push(spent);
                }
                d.damage
            }
            None => {
                // The thread died: decode this one here (a record that continues one the thread
                // decoded is lost with the thread's tables).
                st.buf.clear();
                let r = self.dump.event_records[record];
                decode_record(
                    self.dump.data.bytes(),
                    self.dump.version,
                    r,
                    &mut self.zstd,
                    &mut st.tables,
                    &mut st.buf,
                )
            }
        }
    }

    fn refill(&mut self, s: usize) {
        if let Some(seq) = self.advance(s) {
            self.heap.push((std::cmp::Reverse(seq), s));
        }
    }
}

impl Iterator for Events<'_> {
    type Item = Event;

    fn next(&mut self) -> Option<Event> {
        loop {
            let s = match self.current.take() {
                Some(s) => s,
                None => self.heap.pop()?.1,
            };
            let st = &mut self.streams[s];
            let e = st.buf[st.pos];
            st.pos += 1;
            if let Some(seq) = self.advance(s) {
                // Stay on this stream while it is ahead of every other: a run of one thread's
                // events costs no heap operation.
                match self.heap.peek() {
                    Some(&(std::cmp::Reverse(other), _)) if other < seq => {
                        self.heap.push((std::cmp::Reverse(seq), s));
                    }
                    _ => self.current = Some(s),
                }
            }
            // A writer never numbers two events alike nor goes back: only a damaged dump (a
            // record written twice, say) does, and those events are not the process's.
            if self.last_seq.is_some_and(|l| e.seq <= l) {
                self.skipped += 1;
                continue;
            }
            self.last_seq = Some(e.seq);
            return Some(e);
        }
    }
}

fn parse_aggregate(raw: &[u8]) -> Result<Aggregate, Malformed> {
    let mut c = Cursor::new(raw);
    let mut t = [0u64; 8];
    for x in &mut t {
        *x = c.uvarint()?;
    }
    let n = c.uvarint()?;
    // A site takes 15 bytes at least: a count the data cannot back reserves no more than that.
    let mut sites = Vec::with_capacity(n.min(c.remaining() as u64 / 15) as usize);
    for _ in 0..n {
        let stack = c.u32()?;
        let mut v = [0u64; 13];
        for x in &mut v {
            *x = c.uvarint()?;
        }
        let k = c.uvarint()?;
        let mut steps = Vec::with_capacity(k.min(c.remaining() as u64 / 2) as usize);
        for _ in 0..k {
            steps.push((c.uvarint()?, c.uvarint()?));
        }
        sites.push(AggregateSite {
            stack,
            allocations: v[0],
            bytes: v[1],
            temporary: v[2],
            failed: v[3],
            churn: Churn {
                reallocs: v[4],
                grew: v[5],
                shrank: v[6],
                moved: v[7],
                in_place: v[8],
                bytes_copied: v[9],
                longest_chain: v[10],
                ratio_sum: f64::from_bits(v[11]),
                other_steps: v[12],
                steps,
            },
        });
    }
    if !c.is_empty() {
        return Err(Malformed);
    }
    Ok(Aggregate {
        allocations: t[0],
        frees: t[1],
        reallocs: t[2],
        failed: t[3],
        bytes_allocated: t[4],
        temporary: t[5],
        threads: t[6],
        calls: t[7],
        sites,
    })
}

/// zstd's densest encoding: a block of at most 128 KiB of one repeated byte, stored as a 3-byte
/// block header and that byte. No zstd data decompresses to more than this many bytes per byte.
const ZSTD_MAX_EXPANSION: u64 = 128 * 1024 / 4;
/// The largest raw (decompressed) length any record may claim. The writer's largest records
/// (the blocks a forked child inherits, the addresses of a leak check) hold a few bytes per
/// block: a gigabyte is tens of millions of blocks.
pub const MAX_RAW_LEN: u64 = MAX_RECORD_LEN as u64;
/// The largest raw length of an `Events` record. The writer cuts them at 32 KiB; an event takes
/// at least three bytes and becomes an [`Event`] of 48, so this bounds one decoded record too.
pub const MAX_EVENTS_RAW_LEN: u64 = 64 << 20;
/// What the decompressed output may reserve before it has been produced.
const FIRST_RESERVE: u64 = 256 * 1024;

/// Why a record could not be read: malformed, and when known, how.
#[derive(Debug, Default)]
pub(crate) struct Damage(Option<String>);

impl From<Malformed> for Damage {
    fn from(_: Malformed) -> Damage {
        Damage(None)
    }
}

/// Decompresses one zstd payload that its record says is `raw_len` bytes, trusting nothing: the
/// claim is checked against what `data` can decompress to (zstd's largest expansion, and the
/// frame header's content size when it has one) before any memory is reserved, and the output
/// grows only as it is produced, up to the claim, so a lie costs what the data really holds.
fn decompress_capped(
    ctx: &mut Option<zstd::zstd_safe::DCtx<'static>>,
    raw_len: u64,
    cap: u64,
    data: &[u8],
) -> Result<Vec<u8>, Damage> {
    use std::io::Read;
    let holds = (data.len() as u64).saturating_mul(ZSTD_MAX_EXPANSION);
    if raw_len > cap || raw_len > holds {
        return Err(Damage(Some(format!(
            "it claims {} decompressed, more than {}",
            human(raw_len),
            if raw_len > cap {
                format!("any record may hold ({})", human(cap))
            } else {
                format!("its {} compressed bytes can hold", data.len())
            }
        ))));
    }
    match zstd::zstd_safe::get_frame_content_size(data) {
        Ok(Some(n)) if n != raw_len => {
            return Err(Damage(Some(format!(
                "it claims {} decompressed, its zstd frame {}",
                human(raw_len),
                human(n)
            ))))
        }
        Ok(_) => {}
        Err(_) => return Err(Damage(Some("it holds no zstd frame".into()))),
    }
    if ctx.is_none() {
        let mut d = zstd::zstd_safe::DCtx::try_create().ok_or(Malformed)?;
        // Streaming keeps a window buffer sized by the frame header: the writer's frames (level
        // 1) use 512 KiB at most, a crafted header must not make zstd reserve more than 16 MiB.
        d.set_parameter(zstd::zstd_safe::DParameter::WindowLogMax(24))
            .map_err(|_| Malformed)?;
        *ctx = Some(d);
    }
    let dctx = ctx.as_mut().ok_or(Malformed)?;
    let mut out = Vec::with_capacity(raw_len.min(FIRST_RESERVE) as usize);
    // One byte past the claim, to tell a record that holds more than it says.
    let read = zstd::stream::read::Decoder::with_context(data, dctx)
        .take(raw_len + 1)
        .read_to_end(&mut out);
    match read {
        Ok(n) if n as u64 == raw_len => Ok(out),
        Ok(n) if n as u64 > raw_len => Err(Damage(Some(format!(
            "it claims {} decompressed, its data more",
            human(raw_len),
        )))),
        Ok(n) => Err(Damage(Some(format!(
            "it claims {} decompressed, its data {}",
            human(raw_len),
            human(n as u64)
        )))),
        Err(_) => Err(Damage(Some(format!(
            "its zstd data does not decompress (after {} of the {} it claims)",
            human(out.len() as u64),
            human(raw_len)
        )))),
    }
}

/// [`decompress_capped`] for an `Events` record's frame made with `prefix` (the end of its
/// stream's previous record) as zstd's prefix. One-shot, into a buffer of the size the frame
/// says, which must be the size the record says (the writer's frames always say it).
fn decompress_after(prefix: &[u8], raw_len: u64, data: &[u8]) -> Result<Vec<u8>, Damage> {
    let holds = (data.len() as u64).saturating_mul(ZSTD_MAX_EXPANSION);
    if raw_len > MAX_EVENTS_RAW_LEN || raw_len > holds {
        return Err(Damage(Some(format!(
            "it claims {} decompressed, more than it can hold",
            human(raw_len)
        ))));
    }
    match zstd::zstd_safe::get_frame_content_size(data) {
        Ok(Some(n)) if n == raw_len => {}
        _ => {
            return Err(Damage(Some(format!(
                "its zstd frame does not say the {} it claims",
                human(raw_len)
            ))))
        }
    }
    let mut d = zstd::zstd_safe::DCtx::try_create().ok_or(Malformed)?;
    d.ref_prefix(prefix).map_err(|_| Malformed)?;
    let mut out = Vec::with_capacity(raw_len as usize);
    match d.decompress(&mut out, data) {
        Ok(n) if n as u64 == raw_len => Ok(out),
        _ => Err(Damage(Some(format!(
            "its zstd data does not decompress after its thread's previous record ({} claimed)",
            human(raw_len)
        )))),
    }
}

fn decompress(raw_len: u64, data: &[u8]) -> Result<Vec<u8>, Damage> {
    decompress_capped(&mut None, raw_len, MAX_RAW_LEN, data)
}

/// A byte count for messages: exact below a KiB, else in the largest binary unit.
fn human(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} bytes");
    }
    let mut v = n as f64 / 1024.0;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    format!("{v:.1} {}", UNITS[u])
}

fn parse_process(payload: &[u8]) -> Result<Process, Malformed> {
    let mut c = Cursor::new(payload);
    let pid = c.u32()?;
    let ppid = c.u32()?;
    let origin = match c.u8()? {
        0 => Origin::Start,
        1 => Origin::Fork,
        2 => Origin::Exec,
        _ => return Err(Malformed),
    };
    let parent_pid = c.u32()?;
    let fork_seq = c.uvarint()?;
    let start_unix_ns = c.uvarint()?;
    let session = c.string()?;
    let exe = c.string()?;
    let n = c.uvarint()?;
    let mut argv = Vec::new();
    for _ in 0..n {
        argv.push(c.string()?);
    }
    // Added in version 2; a version-1 dump ends here.
    let aggregated = !c.is_empty() && c.u8()? == 1;
    // Added later: absent when nothing was left out.
    let args_left_out = if c.is_empty() {
        0
    } else {
        u32::try_from(c.uvarint()?).map_err(|_| Malformed)?
    };
    // Added with sampled recording: absent when not sampled.
    let (sample_interval, all_blocks) = if c.is_empty() {
        (0, false)
    } else {
        (c.uvarint()?, c.u8()? == 1)
    };
    Ok(Process {
        pid,
        ppid,
        origin,
        parent_pid,
        fork_seq,
        start_unix_ns,
        session,
        exe,
        argv,
        aggregated,
        args_left_out,
        sample_interval,
        all_blocks,
    })
}

fn parse_reach(c: &mut Cursor<'_>) -> Result<Reach, Damage> {
    let trigger = ReachTrigger::from_u8(c.u8()?).ok_or(Malformed)?;
    let seq = c.uvarint()?;
    let scan_ns = c.uvarint()?;
    let threads_stopped = c.u32()?;
    let threads_unstopped = c.u32()?;
    let root_bytes = c.uvarint()?;
    let mut totals = [KindTotal::default(); 4];
    for t in &mut totals {
        t.blocks = c.uvarint()?;
        t.bytes = c.uvarint()?;
    }
    let raw = decompress(c.uvarint()?, c.rest())?;
    let mut c = Cursor::new(&raw);
    let mut addrs: [Vec<u64>; 4] = Default::default();
    for list in &mut addrs {
        let n = c.uvarint()?;
        // Every address takes a byte at least: a damaged count cannot reserve more than that.
        list.reserve(n.min(c.remaining() as u64) as usize);
        let mut prev = 0u64;
        for i in 0..n {
            let delta = c.uvarint()?;
            if i > 0 && delta == 0 {
                return Err(Malformed.into()); // lookups need strictly ascending addresses
            }
            prev = prev.checked_add(delta).ok_or(Malformed)?;
            list.push(prev);
        }
    }
    // Absent from the dumps of older writers.
    let (unreadable_blocks, unreadable_bytes) = if c.remaining() > 0 {
        (c.uvarint()?, c.uvarint()?)
    } else {
        (0, 0)
    };
    Ok(Reach {
        trigger,
        seq,
        scan_ns,
        threads_stopped,
        threads_unstopped,
        root_bytes,
        unreadable_blocks,
        unreadable_bytes,
        totals,
        addrs,
    })
}

/// An intact record of a kind this reader does not know (checksum right, whole): its payload
/// length. A newer writer's record, to be skipped and named rather than taken for damage.
fn unknown_record_at(data: &[u8], pos: usize) -> Option<usize> {
    let head = data.get(pos..pos + RECORD_HEADER_LEN)?;
    if head[0] == 0 || RecordKind::from_u8(head[0]).is_some() {
        return None;
    }
    let len = u32::from_le_bytes(head[1..5].try_into().unwrap()) as usize;
    let crc = u32::from_le_bytes(head[5..9].try_into().unwrap());
    if len > MAX_RECORD_LEN {
        return None;
    }
    let start = pos + RECORD_HEADER_LEN;
    let payload = data.get(start..start.checked_add(len)?)?;
    let mut h = crc32fast::Hasher::new();
    h.update(&head[..1]);
    h.update(payload);
    (h.finalize() == crc).then_some(len)
}

/// The intact record starting at `pos`, if there is one: known kind, whole, checksum right.
fn record_at(data: &[u8], pos: usize) -> Option<(RecordKind, &[u8])> {
    let head = data.get(pos..pos + RECORD_HEADER_LEN)?;
    let kind = RecordKind::from_u8(head[0])?;
    let len = u32::from_le_bytes(head[1..5].try_into().unwrap()) as usize;
    let crc = u32::from_le_bytes(head[5..9].try_into().unwrap());
    if len > MAX_RECORD_LEN {
        return None;
    }
    let start = pos + RECORD_HEADER_LEN;
    let payload = data.get(start..start.checked_add(len)?)?;
    let mut h = crc32fast::Hasher::new();
    h.update(&head[..1]);
    h.update(payload);
    (h.finalize() == crc).then_some((kind, payload))
}

/// A record header at `pos` that is sane but whose payload runs past the end of the file.
fn plausible_cut_record(data: &[u8], pos: usize) -> bool {
    let Some(head) = data.get(pos..pos + RECORD_HEADER_LEN) else {
        return false;
    };
    let len = u32::from_le_bytes(head[1..5].try_into().unwrap()) as usize;
    RecordKind::from_u8(head[0]).is_some()
        && len <= MAX_RECORD_LEN
        && pos + RECORD_HEADER_LEN + len > data.len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{encode_alloc, encode_free, EventBuf};
    use crate::{write, AllocKind, EventKind};

    fn sample() -> Vec<u8> {
        let mut out = write::file_header().to_vec();
        write::process(
            &mut out,
            &Process {
                pid: 7,
                ppid: 1,
                start_unix_ns: 5,
                session: "s".into(),
                exe: "/bin/x".into(),
                argv: vec!["x".into(), "-y".into()],
                ..Default::default()
            },
        );
        let frames = [0x1000u64, 0x0fff, 0x2000];
        write::stacks(&mut out, [(1u32, &frames[..])].into_iter(), &mut |b| {
            zstd::bulk::compress(b, 1).unwrap()
        });
        let mut raw = Vec::new();
        for i in 0..3u64 {
            let mut b = EventBuf::default();
            encode_alloc(&mut b, 2 * i + 1, i, AllocKind::Malloc, 0x10 + i, 8, 24, 1);
            raw.extend_from_slice(b.as_slice());
            let mut b = EventBuf::default();
            encode_free(&mut b, 2 * i + 2, i, 0x10 + i);
            raw.extend_from_slice(b.as_slice());
        }
        let mut packed = Vec::new();
        crate::event::pack(&raw, &mut packed);
        let z = zstd::bulk::compress(&packed, 1).unwrap();
        write::events(&mut out, 0, 99, packed.len(), &z);
        write::end(
            &mut out,
            &End {
                reason: EndReason::Exit,
                status: -1,
                events: 6,
                dropped: 0,
                untracked_frees: 0,
                free_null: 2,
                truncated_stacks: 0,
                compared_stacks: 0,
                mismatched_stacks: 0,
            },
        );
        out
    }

    /// Three threads' streams of five records each, their events interleaved in sequence, and
    /// (with `damaged`) one record in the middle whose compressed bytes are garbage.
    /// Five records per stream (three streams) as the recorder writes them: in lanes.
    fn many_records(damaged: bool) -> Vec<u8> {
        many_records_in(damaged, true)
    }

    fn many_records_in(damaged: bool, lanes: bool) -> Vec<u8> {
        let mut out = write::file_header().to_vec();
        write::process(&mut out, &Process::default());
        let frames = [0x1000u64];
        write::stacks(&mut out, [(1u32, &frames[..])].into_iter(), &mut |b| {
            zstd::bulk::compress(b, 1).unwrap()
        });
        // Records in groups of two (0-1, 2-3, 4): the second continues the first's tables.
        let mut packers: Vec<crate::event::Packer> = (0..3).map(|_| Default::default()).collect();
        let mut prevs = vec![Vec::new(); 3];
        for r in 0..5u64 {
            for stream in 0..3u32 {
                let p = &mut packers[stream as usize];
                if r % 2 == 0 {
                    p.reset();
                }
                let mut raw = Vec::new();
                for i in 0..100u64 {
                    // Sequence numbers: thread `stream` makes every third event.
                    let seq = 1 + 3 * (r * 100 + i) + u64::from(stream);
                    let mut b = EventBuf::default();
                    encode_alloc(&mut b, seq, seq, AllocKind::Malloc, 0x10 * seq, 8, 8, 1);
                    raw.extend_from_slice(b.as_slice());
                }
                let mut packed = Vec::new();
                p.pack_some(&raw, &mut packed, usize::MAX);
                p.finish_record(packed.len());
                assert_eq!(crate::event::is_continuation(&packed), r % 2 == 1);
                if lanes {
                    let mut body = Vec::new();
                    assert!(crate::lanes::split(&packed, &mut body));
                    packed = body;
                }
                // A continuation is compressed after its previous record, as the writer does.
                let prev = std::mem::replace(&mut prevs[stream as usize], packed.clone());
                let prefix = if r % 2 == 1 { &prev[..] } else { &[][..] };
                let z = if damaged && r == 2 && stream == 1 {
                    vec![0x55; 64]
                } else {
                    let mut c = zstd::zstd_safe::CCtx::create();
                    c.ref_prefix(prefix).unwrap();
                    let mut z = Vec::with_capacity(zstd::zstd_safe::compress_bound(packed.len()));
                    c.compress2(&mut z, &packed).unwrap();
                    z
                };
                let n = packed.len();
                write::events_after(&mut out, stream, 100 + stream, n, prefix.len(), &z);
            }
        }
        out
    }

    #[test]
    fn decoding_ahead_streams_what_decoding_in_turn_does() {
        for damaged in [false, true] {
            let a = Dump::from_bytes(Path::new("a"), many_records(damaged)).unwrap();
            let b = Dump::from_bytes(Path::new("b"), many_records(damaged)).unwrap();
            let ahead: Vec<Event> = a.events_with(true).collect();
            assert!(
                a.events_with(true).ahead.is_some(),
                "no thread decoding ahead"
            );
            let in_turn: Vec<Event> = b.events_with(false).collect();
            // A damaged record takes the one that continues it along.
            assert_eq!(ahead.len(), if damaged { 1300 } else { 1500 });
            assert_eq!(ahead, in_turn);
            assert!(ahead.windows(2).all(|w| w[0].seq < w[1].seq));
            assert_eq!(a.late_warnings(), b.late_warnings());
            assert_eq!(a.late_warnings().len(), 2 * usize::from(damaged));
            if damaged {
                let w = a.late_warnings();
                assert!(
                    w[1].contains("it continues an earlier record of its thread"),
                    "{w:?}"
                );
            }
            assert_eq!(a.damage().is_some(), damaged);
        }
    }

    #[test]
    fn a_piece_of_a_dump_continues_the_tables_the_records_before_it_left() {
        // How a dump being followed is read: the bytes after the last whole record read, behind
        // the file's header. Cut after record 0 of each stream: record 1 continues it.
        let data = many_records(false);
        let whole = Dump::from_bytes(Path::new("w"), data.clone()).unwrap();
        let want: Vec<Event> = whole.events().collect();
        let mut pos = FILE_HEADER_LEN;
        let mut events_seen = 0;
        while events_seen < 3 {
            let (kind, payload) = record_at(&data, pos).unwrap();
            events_seen += usize::from(kind == RecordKind::Events);
            pos += RECORD_HEADER_LEN + payload.len();
        }
        for ahead in [false, true] {
            let first = Dump::from_bytes(Path::new("1"), data[..pos].to_vec()).unwrap();
            let mut got: Vec<Event> = first.events_with(ahead).collect();
            let mut rest = data[..FILE_HEADER_LEN].to_vec();
            rest.extend_from_slice(&data[pos..]);
            let mut piece = Dump::from_bytes(Path::new("2"), rest.clone()).unwrap();
            piece.continue_from(first.carry());
            got.extend(piece.events_with(ahead));
            assert_eq!(got, want);
            assert!(piece.late_warnings().is_empty());
            // Without what the first part left, the piece's continuations are lost.
            let alone = Dump::from_bytes(Path::new("3"), rest).unwrap();
            assert_eq!(alone.events_with(ahead).count(), 900);
            assert_eq!(alone.late_warnings().len(), 3);
        }
    }

    #[test]
    fn records_in_lanes_read_as_the_packed_ones_do() {
        for damaged in [false, true] {
            let lanes = Dump::from_bytes(Path::new("a"), many_records_in(damaged, true)).unwrap();
            let plain = Dump::from_bytes(Path::new("b"), many_records_in(damaged, false)).unwrap();
            assert_eq!(lanes.version, VERSION);
            let a: Vec<Event> = lanes.events().collect();
            // Damage ends its group only: stream 1 loses records 2 and 3, and reads record 4.
            assert_eq!(a.len(), if damaged { 1300 } else { 1500 });
            assert_eq!(a, plain.events().collect::<Vec<_>>());
            assert_eq!(lanes.late_warnings().len(), 2 * usize::from(damaged));
        }
    }

    /// The end offset of every `Events` record in `data`.
    fn events_ends(data: &[u8]) -> Vec<usize> {
        let mut pos = FILE_HEADER_LEN;
        let mut ends = Vec::new();
        while let Some((kind, payload)) = record_at(data, pos) {
            pos += RECORD_HEADER_LEN + payload.len();
            if kind == RecordKind::Events {
                ends.push(pos);
            }
        }
        ends
    }

    #[test]
    fn a_dump_in_lanes_cut_anywhere_reads_every_record_before_the_cut() {
        // What a SIGKILL or a full disk leaves: the records written whole, then part of one.
        let full = many_records(false);
        let all: Vec<Event> = Dump::from_bytes(Path::new("f"), full.clone())
            .unwrap()
            .events()
            .collect();
        let ends = events_ends(&full);
        assert_eq!(ends.len(), 15);
        assert_eq!(all.len(), 1500);
        for cut in (FILE_HEADER_LEN..=full.len())
            .step_by(7)
            .chain(ends.iter().copied())
        {
            let d = Dump::from_bytes(Path::new("t"), full[..cut].to_vec()).unwrap();
            let got: Vec<Event> = d.events().collect();
            // Every record before the cut, 100 events each, and nothing made up.
            let whole = ends.iter().filter(|&&e| e <= cut).count();
            assert_eq!(got.len(), 100 * whole, "cut at {cut}");
            assert!(got.iter().all(|e| all.contains(e)));
            assert!(d.late_warnings().is_empty(), "{:?}", d.late_warnings());
        }
    }

    #[test]
    fn a_version_3_dump_still_reads() {
        // Made by the version-3 recorder (python3 under `zmtrace run --no-argv`).
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/v3-python3.zmt");
        let d = Dump::open(&path).unwrap();
        assert_eq!(d.version, 3);
        assert!(d.warnings.is_empty(), "{:?}", d.warnings);
        assert!(d.is_complete());
        let events: Vec<Event> = d.events().collect();
        assert!(d.late_warnings().is_empty(), "{:?}", d.late_warnings());
        // Every event the recorder counted, in order.
        let end = d.end.as_ref().unwrap();
        let counted = events
            .iter()
            .filter(|e| {
                !matches!(
                    e.kind,
                    EventKind::ReallocOut { .. } | EventKind::RemapOut { .. }
                )
            })
            .count() as u64;
        assert_eq!(counted, end.events);
        assert!(events.windows(2).all(|w| w[0].seq < w[1].seq));
        // As `zmtrace report` of it says (made with the version-3 reader): 1,126 frees.
        let frees = events
            .iter()
            .filter(|e| matches!(e.kind, EventKind::Free { .. }))
            .count();
        assert_eq!(frees, 1126);
    }

    /// A dump of `version` (4 or 5): one thread's events in records of groups of two, the
    /// second group freeing (in address order, between allocations of its own) blocks the first
    /// allocated, and a realloc chain through both.
    fn dump_freeing_earlier_groups_blocks(version: u32) -> (Vec<u8>, Vec<Event>) {
        let mut out = write::file_header().to_vec();
        out[8..12].copy_from_slice(&version.to_le_bytes());
        write::process(&mut out, &Process::default());
        let frames = [0x1000u64];
        write::stacks(&mut out, [(1u32, &frames[..])].into_iter(), &mut |b| {
            zstd::bulk::compress(b, 1).unwrap()
        });
        let mut p = if version >= 5 {
            crate::event::Packer::default()
        } else {
            crate::event::Packer::version3()
        };
        let mut want = Vec::new();
        let mut prev = Vec::new();
        let mut seq = 0u64;
        let long = |i: u64| 0x4000_0000 + 0x30 * i;
        for r in 0..4u64 {
            if r == 2 {
                p.reset();
            }
            let mut raw = Vec::new();
            let mut ev = |raw: &mut Vec<u8>, f: &dyn Fn(&mut EventBuf, u64)| {
                let mut b = EventBuf::default();
                seq += 2;
                f(&mut b, seq);
                raw.extend_from_slice(b.as_slice());
            };
            for i in 0..200u64 {
                let k = (r % 2) * 200 + i;
                if r < 2 {
                    ev(&mut raw, &|b, s| {
                        encode_alloc(b, s, s, AllocKind::Malloc, long(k), 40, 40, 1)
                    });
                } else {
                    let t = 0x9000_0000 + 0x20 * (i % 3);
                    ev(&mut raw, &|b, s| {
                        encode_alloc(b, s, s, AllocKind::Malloc, t, 16, 24, 1)
                    });
                    ev(&mut raw, &|b, s| encode_free(b, s, s, long(k)));
                    ev(&mut raw, &|b, s| encode_free(b, s, s, t));
                }
            }
            // A realloc chain of one block: allocated in the first group, moved in each record.
            ev(&mut raw, &|b, s| {
                crate::event::encode_realloc(
                    b,
                    s,
                    s - 1,
                    s,
                    0x7000_0000 + 0x100 * r,
                    0x7000_0100 + 0x100 * r,
                    64,
                    72,
                    1,
                )
            });
            if r == 0 {
                raw.splice(0..0, {
                    let mut b = EventBuf::default();
                    encode_alloc(&mut b, 1, 1, AllocKind::Malloc, 0x7000_0000, 8, 24, 1);
                    b.as_slice().to_vec()
                });
            }
            crate::event::decode_plain(&raw, 100, &mut want).unwrap();
            let mut packed = Vec::new();
            let continues = p.continues();
            p.pack_some(&raw, &mut packed, usize::MAX);
            p.finish_record(packed.len());
            let mut body = Vec::new();
            let layout = if version >= 6 {
                crate::lanes::Layout::FieldsCut
            } else {
                crate::lanes::Layout::Fields
            };
            assert!(crate::lanes::Splitter::default().split_as(layout, &packed, &mut body));
            let prefix = if continues { prev.clone() } else { Vec::new() };
            let mut c = zstd::zstd_safe::CCtx::create();
            c.ref_prefix(&prefix[..]).unwrap();
            let mut z = Vec::with_capacity(zstd::zstd_safe::compress_bound(body.len()));
            c.compress2(&mut z, &body).unwrap();
            write::events_after(&mut out, 0, 100, body.len(), prefix.len(), &z);
            prev = body;
        }
        want.sort_by_key(|e| e.seq);
        (out, want)
    }

    #[test]
    fn a_version_4_dump_reads_as_its_version_5_and_6_twins_do() {
        let mut read = Vec::new();
        for version in [4, 5, 6] {
            let (data, want) = dump_freeing_earlier_groups_blocks(version);
            let d = Dump::from_bytes(Path::new("v"), data).unwrap();
            assert_eq!(d.version, version);
            let got: Vec<Event> = d.events().collect();
            assert!(d.late_warnings().is_empty(), "{:?}", d.late_warnings());
            // 1 + 400 + 400 allocations, 400 + 400 frees, 4 reallocs and their ReallocOut.
            assert_eq!(got.len(), 1 + 800 + 800 + 8);
            let ms = crate::event::TIME_RESOLUTION_NS;
            let want: Vec<Event> = want
                .iter()
                .map(|e| Event {
                    ts_ns: e.ts_ns / ms * ms,
                    ..*e
                })
                .collect();
            assert_eq!(got, want, "version {version}");
            read.push(got);
        }
        assert_eq!(read[0], read[1]);
        assert_eq!(read[1], read[2]);
    }

    #[test]
    fn a_reader_dropped_early_stops_its_decoding_thread() {
        let d = Dump::from_bytes(Path::new("a"), many_records(false)).unwrap();
        for n in [0, 1, 150, 1499] {
            let got: Vec<Event> = d.events_with(true).take(n).collect();
            assert_eq!(got.len(), n);
        }
        // The map is shared with no thread any more: every decoding thread has ended.
        assert_eq!(Arc::strong_count(&d.data), 1);
    }

    #[test]
    fn reads_back_what_was_written() {
        let d = Dump::from_bytes(Path::new("t"), sample()).unwrap();
        assert!(d.warnings.is_empty(), "{:?}", d.warnings);
        assert!(d.is_complete());
        assert_eq!(d.process.as_ref().unwrap().argv, ["x", "-y"]);
        assert_eq!(d.stacks[&1], [0x1000, 0x0fff, 0x2000]);
        assert_eq!(d.all_events().len(), 6);
        assert_eq!(d.end.unwrap().free_null, 2);
    }

    #[test]
    fn aggregated_records_round_trip_and_the_last_counts() {
        let mut out = write::file_header().to_vec();
        let p = Process {
            pid: 7,
            ppid: 1,
            start_unix_ns: 5,
            exe: "/bin/x".into(),
            aggregated: true,
            ..Default::default()
        };
        write::process(&mut out, &p);
        let site = AggregateSite {
            stack: 3,
            allocations: 10,
            bytes: 800,
            temporary: 2,
            failed: 1,
            churn: Churn {
                reallocs: 4,
                grew: 3,
                shrank: 1,
                moved: 2,
                in_place: 2,
                bytes_copied: 96,
                longest_chain: 4,
                ratio_sum: 6.25,
                steps: vec![(8, 2), (32, 1)],
                other_steps: 0,
            },
        };
        for n in [1u64, 2] {
            let a = Aggregate {
                allocations: 10 * n,
                frees: 7,
                calls: 22,
                sites: vec![site.clone()],
                ..Aggregate::default()
            };
            let raw = write::aggregate_raw(&a);
            let z = zstd::bulk::compress(&raw, 1).unwrap();
            write::compressed(&mut out, RecordKind::Aggregate, raw.len(), &z);
        }
        let blocks = [LiveSite {
            stack: 3,
            blocks: 2,
            bytes: 24,
            usable: 40,
            via_realloc: 1,
            kind: crate::LeakKind::Possible as u8,
        }];
        let raw = write::live_raw(blocks.iter().copied());
        let z = zstd::bulk::compress(&raw, 1).unwrap();
        write::compressed(&mut out, RecordKind::LiveAtEnd, raw.len(), &z);
        let d = Dump::from_bytes(Path::new("t"), out.clone()).unwrap();
        assert!(d.warnings.is_empty(), "{:?}", d.warnings);
        assert!(d.is_aggregated());
        let a = d.aggregate.as_ref().unwrap();
        assert_eq!(a.allocations, 20, "the last snapshot wins");
        assert_eq!(a.sites, [site]);
        assert_eq!(d.live_at_end, blocks);
        // No End: an aggregated dump without its counters is not complete.
        assert!(!d.is_complete());
    }

    #[test]
    fn snapshots_keep_their_marker_and_an_aggregated_recordings_counters() {
        let mut out = write::file_header().to_vec();
        let p = Process {
            pid: 7,
            ppid: 1,
            start_unix_ns: 5,
            exe: "/bin/x".into(),
            aggregated: true,
            ..Default::default()
        };
        write::process(&mut out, &p);
        let counters = |n: u64| {
            let raw = write::aggregate_raw(&Aggregate {
                allocations: n,
                ..Aggregate::default()
            });
            (raw.len(), zstd::bulk::compress(&raw, 1).unwrap())
        };
        let live = |bytes: u64| {
            let raw = write::live_raw(std::iter::once(LiveSite {
                stack: 3,
                blocks: 1,
                bytes,
                ..LiveSite::default()
            }));
            (raw.len(), zstd::bulk::compress(&raw, 1).unwrap())
        };
        // A counters-only pass (not a snapshot's), then a snapshot: marker, a stack, counters,
        // live set; then a marker alone (an event recording's kind), then the end's counters.
        let (n, z) = counters(1);
        write::compressed(&mut out, RecordKind::Aggregate, n, &z);
        write::snapshot(&mut out, 100, 40);
        write::stacks(&mut out, [(3u32, &[0x1000u64][..])].into_iter(), &mut |b| {
            zstd::bulk::compress(b, 1).unwrap()
        });
        let (n, z) = counters(2);
        write::compressed(&mut out, RecordKind::Aggregate, n, &z);
        let (n, z) = live(64);
        write::compressed(&mut out, RecordKind::LiveAtEnd, n, &z);
        write::snapshot(&mut out, 200, 90);
        let (n, z) = counters(3);
        write::late(&mut out, 5);
        write::compressed(&mut out, RecordKind::Aggregate, n, &z);
        let d = Dump::from_bytes(Path::new("t"), out).unwrap();
        assert_eq!(d.snapshots.len(), 2, "{:?}", d.warnings);
        let (a, b) = (&d.snapshots[0], &d.snapshots[1]);
        assert_eq!((a.ts_ns, a.seq, b.ts_ns, b.seq), (100, 40, 200, 90));
        assert_eq!(a.aggregate.as_ref().map(|g| g.allocations), Some(2));
        assert_eq!(a.live.as_ref().map(|l| l[0].bytes), Some(64));
        // Another record came between the second marker and the counters: not its own.
        assert!(b.aggregate.is_none() && b.live.is_none());
        assert_eq!(d.aggregate.as_ref().map(|g| g.allocations), Some(3));
    }

    #[test]
    fn every_truncation_reads_a_prefix_without_panicking() {
        let full = sample();
        for cut in 0..full.len() {
            match Dump::from_bytes(Path::new("t"), full[..cut].to_vec()) {
                Err(ReadError::Empty(_)) => assert_eq!(cut, 0),
                Err(e) => panic!("cut at {cut}: {e}"),
                Ok(d) => {
                    assert!(d.all_events().len() <= 6);
                    assert!(!d.is_complete(), "cut at {cut} claims to be complete");
                    assert!(!d.warnings.is_empty() || d.end.is_none());
                }
            }
        }
    }

    #[test]
    fn corruption_is_skipped_and_reported() {
        let mut data = sample();
        // Damage one byte inside the stacks record (after the process record): it is lost, the
        // rest is read.
        let process_len = u32::from_le_bytes(data[FILE_HEADER_LEN + 1..][..4].try_into().unwrap());
        let stacks = FILE_HEADER_LEN + RECORD_HEADER_LEN + process_len as usize;
        assert_eq!(data[stacks], RecordKind::Stacks as u8);
        data[stacks + RECORD_HEADER_LEN + 2] ^= 0xff;
        let d = Dump::from_bytes(Path::new("t"), data).unwrap();
        assert!(d.bytes_lost > 0);
        assert!(d.warnings.iter().any(|w| w.contains("corrupt")));
        assert!(d.end.is_some());
    }

    proptest::proptest! {
        /// Whatever the damage (cut, flipped bytes, garbage inserted), reading and streaming the
        /// events never panics, never invents more events than were written, and keeps every
        /// event in sequence order.
        #[test]
        fn damaged_dumps_never_panic(
            cut in 0usize..2000,
            flips in proptest::collection::vec((0usize..2000, 1u8..=255), 0..6),
            insert_at in 0usize..2000,
            garbage in proptest::collection::vec(proptest::num::u8::ANY, 0..40),
        ) {
            let mut data = sample();
            for (at, x) in flips {
                let n = data.len();
                data[at % n] ^= x;
            }
            let at = insert_at % (data.len() + 1);
            data.splice(at..at, garbage);
            data.truncate(cut.max(1).min(data.len()));
            if let Ok(d) = Dump::from_bytes(Path::new("t"), data) {
                let events = d.all_events();
                proptest::prop_assert!(events.len() <= 6);
                proptest::prop_assert!(events.windows(2).all(|w| w[0].seq <= w[1].seq));
            }
        }
    }

    #[test]
    fn module_records_carry_when_they_took_effect_and_old_ones_mean_from_the_start() {
        let m = Module {
            base: 0x7f00_0000_0000,
            path: "/p/a.so".into(),
            build_id: vec![1, 2],
            segments: vec![(0x7f00_0000_1000, 0x7f00_0000_2000)],
            seq: 41,
        };
        let mut extra = Vec::new();
        write::module(&mut extra, &m);
        write::module_gone(&mut extra, m.base, 97);
        // An older writer's records: the same without the sequence numbers.
        let mut old = Vec::new();
        write::module(&mut old, &m);
        let cut = old.len() - 1;
        let mut payload = old[RECORD_HEADER_LEN..cut].to_vec();
        old.clear();
        write::record(&mut old, RecordKind::Module, &payload);
        payload.clear();
        crate::varint::put_uvarint(&mut payload, m.base);
        write::record(&mut old, RecordKind::ModuleGone, &payload);
        extra.extend_from_slice(&old);
        let d = Dump::from_bytes(Path::new("t"), sample_with(&extra)).unwrap();
        assert!(d.warnings.is_empty(), "{:?}", d.warnings);
        assert_eq!(
            d.modules,
            [
                m.clone(),
                Module {
                    seq: 0,
                    ..m.clone()
                }
            ]
        );
        assert_eq!(
            d.modules_gone,
            [
                ModuleGone {
                    base: m.base,
                    seq: 97
                },
                ModuleGone {
                    base: m.base,
                    seq: 0
                }
            ]
        );
    }

    /// `sample()` with `extra` records put before its `End` record.
    fn sample_with(extra: &[u8]) -> Vec<u8> {
        let mut data = sample();
        let mut end = Vec::new();
        write::end(
            &mut end,
            &Dump::from_bytes(Path::new("t"), data.clone())
                .unwrap()
                .end
                .unwrap(),
        );
        let at = data.len() - end.len();
        data.splice(at..at, extra.iter().copied());
        data
    }

    /// A CRC-valid record whose raw length says 32 GiB: it used to make the reader reserve
    /// 32 GiB and abort ("memory allocation of 34359738368 bytes failed").
    #[test]
    fn a_record_claiming_32_gib_is_skipped_and_the_rest_is_read() {
        const GIB32: u64 = 32 << 30;
        let frames = [0x5000u64, 0x5001];
        let mut stacks = Vec::new();
        write::stacks(&mut stacks, [(9u32, &frames[..])].into_iter(), &mut |b| {
            zstd::bulk::compress(b, 1).unwrap()
        });
        // The same stacks, their raw length replaced by 32 GiB (the frame says the truth).
        let mut lie = Vec::new();
        let z = zstd::bulk::compress(&[1, 9, 2, 0x80, 0xa0, 1, 2], 1).unwrap();
        write::compressed(&mut lie, RecordKind::Stacks, GIB32 as usize, &z);
        // An events record that claims 32 GiB too; and below the cap, a frame whose header
        // backs the claim of 512 MiB but whose 20 bytes cannot.
        write::events(&mut lie, 5, 77, GIB32 as usize, &z);
        let mut frame = 0xFD2F_B528u32.to_le_bytes().to_vec();
        frame.push(0xe0); // single segment, 8-byte content size
        frame.extend_from_slice(&(512u64 << 20).to_le_bytes());
        frame.extend_from_slice(&[0x03, 0x00, 0x10, 0x41]); // last, RLE, 128 KiB of 'A'
        write::compressed(&mut lie, RecordKind::Inherited, 512 << 20, &frame);
        let mut extra = stacks.clone();
        extra.extend_from_slice(&lie);
        let d = Dump::from_bytes(Path::new("t"), sample_with(&extra)).unwrap();
        // The intact records are all read: both stacks records, the events, the end.
        assert_eq!(d.stacks[&1], [0x1000, 0x0fff, 0x2000]);
        assert_eq!(d.stacks[&9], frames);
        assert_eq!(d.all_events().len(), 6);
        assert!(d.end.is_some());
        assert_eq!(d.bytes_lost, 0);
        assert_eq!(d.warnings.len(), 2, "{:?}", d.warnings);
        assert!(
            d.warnings[0].starts_with("malformed Stacks record at offset ")
                && d.warnings[0].ends_with(
                    "(it claims 32.0 GiB decompressed, more than any record may hold (1.0 \
                     GiB)): it was skipped"
                ),
            "{:?}",
            d.warnings
        );
        assert!(
            d.warnings[1].contains("malformed Inherited record")
                && d.warnings[1].contains(
                    "it claims 512.0 MiB decompressed, more than its 17 compressed bytes can hold"
                ),
            "{:?}",
            d.warnings
        );
        let late = d.late_warnings();
        assert_eq!(late.len(), 1, "{late:?}");
        assert!(
            late[0].contains(
                "(it claims 32.0 GiB decompressed, more than any record may hold (64.0 MiB))"
            ),
            "{late:?}"
        );
        assert!(d.damage().unwrap().contains("3 part(s) could not be read"));
        assert!(!d.is_complete() || d.damage().is_some());
    }

    /// Below every bound, a record whose data holds less (or more) than it claims costs only
    /// what the data holds, and says so.
    #[test]
    fn a_raw_length_the_data_does_not_hold_is_named() {
        let z = zstd::bulk::compress(&[7u8; 1000], 1).unwrap();
        let err = |claim: u64| {
            let mut ctx = None;
            decompress_capped(&mut ctx, claim, MAX_RAW_LEN, &z)
                .unwrap_err()
                .0
                .unwrap()
        };
        // The frame header holds the content size: a claim is checked against it first.
        assert_eq!(
            err(100_000),
            "it claims 97.7 KiB decompressed, its zstd frame 1000 bytes"
        );
        assert_eq!(
            err(999),
            "it claims 999 bytes decompressed, its zstd frame 1000 bytes"
        );
        // Without a content size in the header, the data itself is the judge.
        let mut c = zstd::bulk::Compressor::new(1).unwrap();
        c.set_parameter(zstd::zstd_safe::CParameter::ContentSizeFlag(false))
            .unwrap();
        let bare = c.compress(&[7u8; 1000]).unwrap();
        let mut ctx = None;
        let mut e = |claim| {
            decompress_capped(&mut ctx, claim, MAX_RAW_LEN, &bare)
                .unwrap_err()
                .0
                .unwrap()
        };
        assert_eq!(
            e(100_000),
            "it claims 97.7 KiB decompressed, its data 1000 bytes"
        );
        assert_eq!(e(10), "it claims 10 bytes decompressed, its data more");
        assert_eq!(
            decompress_capped(&mut ctx, 1000, MAX_RAW_LEN, &bare).unwrap(),
            [7u8; 1000]
        );
    }

    fn reach_record() -> Reach {
        let mut r = Reach {
            trigger: ReachTrigger::UnderscoreExit,
            seq: 77,
            scan_ns: 1234,
            threads_stopped: 2,
            threads_unstopped: 1,
            root_bytes: 4096,
            unreadable_blocks: 3,
            unreadable_bytes: 300_000,
            ..Reach::default()
        };
        r.addrs = [
            vec![0x1000, 0x1040],
            vec![],
            vec![0x7fff_0000_0000],
            vec![0x10, 0x20, 0x5555_0000_0010],
        ];
        for (k, list) in r.addrs.iter().enumerate() {
            r.totals[k] = KindTotal {
                blocks: list.len() as u64,
                bytes: 8 * list.len() as u64,
            };
        }
        r
    }

    #[test]
    fn reads_back_a_leak_check() {
        let mut data = sample();
        let r = reach_record();
        let raw = write::reach_raw(&r);
        write::reach(
            &mut data,
            &r,
            raw.len(),
            &zstd::bulk::compress(&raw, 1).unwrap(),
        );
        let d = Dump::from_bytes(Path::new("t"), data).unwrap();
        assert!(d.warnings.is_empty(), "{:?}", d.warnings);
        assert_eq!(d.reach, std::slice::from_ref(&r));
        assert_eq!(d.reach[0].kind_of(0x1040), Some(crate::LeakKind::Definite));
        assert_eq!(d.reach[0].kind_of(0x20), Some(crate::LeakKind::Reachable));
        assert_eq!(d.reach[0].kind_of(0x30), None);
    }

    #[test]
    fn a_leak_check_of_an_older_writer_has_no_unreadable_counts() {
        let mut data = sample();
        let r = reach_record();
        let mut raw = write::reach_raw(&r);
        // An older writer's lists end the raw part: drop the two varints after them.
        raw.truncate(raw.len() - 1 - 3);
        write::reach(
            &mut data,
            &r,
            raw.len(),
            &zstd::bulk::compress(&raw, 1).unwrap(),
        );
        let d = Dump::from_bytes(Path::new("t"), data).unwrap();
        assert!(d.warnings.is_empty(), "{:?}", d.warnings);
        assert_eq!(
            (d.reach[0].unreadable_blocks, d.reach[0].unreadable_bytes),
            (0, 0)
        );
        assert_eq!(d.reach[0].addrs, r.addrs);
    }

    #[test]
    fn an_intact_record_of_an_unknown_kind_is_named_and_skipped() {
        let mut data = sample();
        let end_len = {
            let d = Dump::from_bytes(Path::new("t"), data.clone()).unwrap();
            let mut e = Vec::new();
            write::end(&mut e, &d.end.unwrap());
            e.len()
        };
        let end = data.split_off(data.len() - end_len);
        assert_eq!(end[0], RecordKind::End as u8);
        // What a newer writer might add: kind 200, intact.
        let mut crc = crc32fast::Hasher::new();
        crc.update(&[200, 1, 2, 3]);
        data.push(200);
        data.extend_from_slice(&3u32.to_le_bytes());
        data.extend_from_slice(&crc.finalize().to_le_bytes());
        data.extend_from_slice(&[1, 2, 3]);
        data.extend_from_slice(&end);
        let d = Dump::from_bytes(Path::new("t"), data).unwrap();
        assert_eq!(d.bytes_lost, 0);
        assert_eq!(
            d.warnings,
            [format!(
                "a record of unknown kind 200 at offset {} (3 B) was skipped: written by a \
                 newer zmtrace?",
                d.file_len as usize - end_len - 12
            )]
        );
        assert!(d.end.is_some() && d.is_complete());
    }

    #[test]
    fn rejects_what_is_not_a_dump() {
        let future = {
            let mut d = sample();
            d[8] = 99;
            d
        };
        assert!(matches!(
            Dump::from_bytes(Path::new("t"), future),
            Err(ReadError::FutureVersion(_, 99))
        ));
        // The next version after this one's: one line that names it.
        let mut next = sample();
        next[8..12].copy_from_slice(&(VERSION + 1).to_le_bytes());
        let e = Dump::from_bytes(Path::new("next.zmt"), next).unwrap_err();
        assert_eq!(
            e.to_string(),
            "next.zmt is a version 7 dump; this zmtrace reads versions up to 6: upgrade zmtrace"
        );
        assert!(matches!(
            Dump::from_bytes(Path::new("t"), b"hello world, not a dump".to_vec()),
            Err(ReadError::NotADump(_))
        ));
        assert!(matches!(
            Dump::open(Path::new("/")),
            Err(ReadError::IsDirectory(_))
        ));
    }
}
