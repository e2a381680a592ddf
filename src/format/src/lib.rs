//! The zmtrace dump format, defined once for the writer (the recorder inside the traced process) and
//! the reader (the offline analyzer).
//!
//! # Layout (version 6)
//!
//! ```text
//! file    := MAGIC (8 bytes "ZMTRACE\0") VERSION (u32 LE) record*
//! record  := kind (u8) len (u32 LE) crc32 (u32 LE, over kind and payload) payload (len bytes)
//! ```
//!
//! A dump is written incrementally, one whole record per `write(2)`, so a process that dies (SIGKILL,
//! SIGSEGV) leaves a file that is valid up to its last flush. Every record carries its own length and
//! checksum: the reader takes every intact record, says what it could not read, and resynchronises
//! after a damaged one.
//!
//! Integers in payloads are LEB128 varints unless said otherwise; strings and byte strings are a
//! varint length followed by the bytes. The record kinds, in the order a writer usually emits them:
//!
//! | kind | payload |
//! |---|---|
//! | [`RecordKind::Process`] | pid, ppid, origin (0 start, 1 fork, 2 exec), parent pid, seq at fork, start time (Unix ns), session, executable path, argv, aggregated (u8, version 2), arguments left out of argv (varint; absent: none), sampling interval in bytes (varint; absent: not sampled) and all-blocks (u8) |
//! | [`RecordKind::Module`] | load bias, path, build-id, segments (start, end) — a module mapped in the process — then the event sequence number from which it was mapped (absent from older writers: 0, from the start) |
//! | [`RecordKind::ModuleGone`] | load bias — the module was unloaded (`dlclose`) — then the event sequence number from which it was not mapped any more (absent from older writers: 0, unknown) |
//! | [`RecordKind::Stacks`] | raw length, then zstd-compressed (version 1: plain): count, then per stack: id, frame count, frames (first absolute, then zigzag deltas) |
//! | [`RecordKind::Events`] | stream, thread id, raw length, (version 3) prefix length, zstd-compressed event bytes (see [`event`]; version 4 regroups them by field first, see [`lanes`]; version 3 packs them as a compact stream of interned sites, block references and millisecond marks, and a record may continue the tables of its stream's previous one, whose last *prefix length* raw bytes are then its zstd prefix): allocations, frees, reallocs, failed calls, and the program's own `mmap`/`munmap`/`mremap` calls (`Map`, `Unmap`, `Remap`: a metric of their own, never heap blocks) |
//! | [`RecordKind::Inherited`] | raw length, zstd-compressed blocks (addr, size, usable, stack) live in a forked child at birth |
//! | [`RecordKind::Exec`] | path: the process called `execve`; its new image writes a dump of its own |
//! | [`RecordKind::End`] | how the process ended and the recorder's own counters ([`End`]) |
//! | [`RecordKind::Late`] | thread id: a thread allocated or freed after the `End` record (e.g. while another thread ran `exit`); its events from then on are not in the dump |
//! | [`RecordKind::Aggregate`] | raw length, zstd-compressed [`Aggregate`]: per-stack counters of an aggregated recording (no `Events` records); the last one in the file holds the totals |
//! | [`RecordKind::LiveAtEnd`] | raw length, zstd-compressed per-stack sums (stack, blocks, bytes, usable bytes, blocks that went through a realloc, leak kind) of the blocks live when an aggregated recording ended; the last one counts |
//! | [`RecordKind::Reach`] | a leak check ([`Reach`]): trigger, sequence number, scan figures, per [`LeakKind`] blocks and bytes, then raw length and the zstd-compressed addresses of each kind (count, then ascending: first absolute, then deltas), then (optional, absent from older writers) the blocks and bytes that could not be wholly read |
//! | [`RecordKind::Snapshot`] | a snapshot on demand ([`Snapshot`]): time (ns since the start), sequence number; in an aggregated dump the `Aggregate` and `LiveAtEnd` records that follow it are its own |
//!
//! The event kinds `Map`, `Unmap` and `Remap` came later within version 2: a reader older than
//! them reports an `Events` record that holds one as damaged from there on (it keeps the events
//! before it), so it never takes a mapping for a heap block.
//!
//! Version 2 added the last three kinds (`zmtrace run --aggregate`, the leak check) and
//! compressed the `Stacks` records. Version 3 changed only the `Events` records (no
//! per-event time, interned sites, frees naming their block by a distance back, small records
//! in groups that share their tables and zstd history, a prefix length in the payload; a
//! version-2 reader would take them for damage, so the version says it). Version 4 changed only
//! how an `Events` record's packed bytes are laid out before compression: regrouped by field into
//! [`lanes`] (the events and their packing are version 3's; a record the split does not take is
//! stored as it is), for dumps 10-25 % smaller. Version 5 changed one thing in the packed
//! events: a free (a realloc's old block) of a block its group did not see allocated is written
//! as its difference to the last such block, not to the last address named (see [`event`],
//! "Version 5"); its groups also name up to twice as many addresses. Dumps 3-8 % smaller.
//! Version 6 changed only the lanes again: the varints of the address lanes are cut in two,
//! their first bytes in one lane and the rest in another ([`lanes`], "Version 6"), and the
//! writer ends a zstd block at each lane of some size (which any zstd reader reads as before);
//! every 8th record of a stream it also compresses as packed events, and keeps those records
//! packed until the next try when that is smaller (a record that is not in lanes has always
//! read as packed events, so the reader is the same). Events 1-30 % smaller, Redis's 19 %.
//! This crate reads versions 1 to 6;
//! an older reader refuses a newer dump with "upgrade zmtrace" rather than take its records for
//! damage. An intact
//! record of a kind this reader does not know (from a newer writer) is skipped with a warning that
//! says so, not counted as lost bytes.
//!
//! Stacks are interned: an event names its stack by id, and the `Stacks` record defining an id is
//! written before the first `Events` record that uses it. Stack frames are raw return addresses
//! (the first one is the return address into the allocating function's caller chain, innermost
//! first); symbolization happens offline against the `Module` records.
//!
//! Events carry a process-wide sequence number taken from one atomic counter: a free is numbered
//! before the real `free` runs and an allocation after the real `malloc` returns, so sorting by it
//! gives an order in which an address is never handed out twice without a free between.

pub mod event;
#[doc(hidden)]
pub mod fuzz;
pub mod lanes;
pub mod read;
pub mod varint;
pub mod words;
pub mod write;

pub use event::{AllocKind, Event, EventKind};
pub use read::{Dump, ReadError};

/// The first eight bytes of every dump.
pub const MAGIC: &[u8; 8] = b"ZMTRACE\0";
/// The format version this crate writes and the newest it reads.
pub const VERSION: u32 = 6;
/// Bytes before the first record: magic and version.
pub const FILE_HEADER_LEN: usize = 12;
/// Bytes of a record header: kind, length, crc32.
pub const RECORD_HEADER_LEN: usize = 9;
/// No record is larger than this; a larger length field means a damaged record.
pub const MAX_RECORD_LEN: usize = 1 << 30;

/// The kind byte of a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum RecordKind {
    Process = 1,
    Module = 2,
    ModuleGone = 3,
    Stacks = 4,
    Events = 5,
    Inherited = 6,
    Exec = 7,
    End = 8,
    Late = 9,
    Aggregate = 10,
    LiveAtEnd = 11,
    Reach = 12,
    Snapshot = 13,
}

impl RecordKind {
    pub fn from_u8(b: u8) -> Option<RecordKind> {
        Some(match b {
            1 => RecordKind::Process,
            2 => RecordKind::Module,
            3 => RecordKind::ModuleGone,
            4 => RecordKind::Stacks,
            5 => RecordKind::Events,
            6 => RecordKind::Inherited,
            7 => RecordKind::Exec,
            8 => RecordKind::End,
            9 => RecordKind::Late,
            10 => RecordKind::Aggregate,
            11 => RecordKind::LiveAtEnd,
            12 => RecordKind::Reach,
            13 => RecordKind::Snapshot,
            _ => return None,
        })
    }
}

/// How a traced process came to be.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Origin {
    /// Started by `zmtrace run` or with `LD_PRELOAD` set.
    #[default]
    Start,
    /// A child of `fork`: its dump starts with the blocks it inherited.
    Fork,
    /// A new image after `execve` in an already traced process.
    Exec,
}

/// The `Process` record: who this dump is about. `Default` is for tests' fixtures: a process
/// started as `zmtrace run` starts one, with nothing set.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Process {
    pub pid: u32,
    pub ppid: u32,
    pub origin: Origin,
    /// For a forked child: the parent's pid (whose dump holds the events before the fork).
    pub parent_pid: u32,
    /// For a forked child: the parent's sequence counter at the fork.
    pub fork_seq: u64,
    pub start_unix_ns: u64,
    /// The `ZMTRACE_SESSION` token of the `zmtrace run` that started the process tree.
    pub session: String,
    pub exe: String,
    pub argv: Vec<String>,
    /// Recorded with `--aggregate`: per-stack counters, no events (version 2).
    pub aggregated: bool,
    /// Arguments left out of `argv` (`zmtrace run --no-argv`): `argv` then holds the program
    /// only. Written after `aggregated`; a dump without it left nothing out.
    pub args_left_out: u32,
    /// Recorded with `--sample BYTES`: the mean sampling interval in bytes (0: every block
    /// recorded, not sampled). Written after `args_left_out`, only when sampled; an older dump
    /// reads as not sampled. See [`sample_probability`].
    pub sample_interval: u64,
    /// Sampled with `--all-blocks`: every block was in the recorder's live set (address and size),
    /// so the leak check's totals per class are exact; only sampled blocks have events.
    pub all_blocks: bool,
}

/// The probability that a block of `size` bytes is sampled when every byte is picked
/// independently with probability `1/interval` (the recorder's countdown draws geometric gaps
/// with that mean): `1 - (1 - 1/interval)^size`. For a large interval this is tcmalloc's
/// `1 - exp(-size/interval)`; with `interval` 1 it is 1 (every block).
pub fn sample_probability(size: u64, interval: u64) -> f64 {
    if interval <= 1 {
        return 1.0;
    }
    let size = size.max(1) as f64;
    -(size * (-1.0 / interval as f64).ln_1p()).exp_m1()
}

/// The unbiased weight in *blocks* of one sampled block of `size` bytes: `1/p` (its weight in
/// bytes is `size/p`, tcmalloc's `size / (1 - exp(-size/interval))`). Summed over the sampled
/// blocks it estimates the count of all blocks (Horvitz-Thompson).
pub fn sample_weight(size: u64, interval: u64) -> f64 {
    1.0 / sample_probability(size, interval)
}

impl Process {
    /// The command line for people: `argv`, and "(N arguments left out)" when
    /// `zmtrace run --no-argv` kept them out of the dump.
    pub fn command(&self) -> Vec<String> {
        let mut words = self.argv.clone();
        match self.args_left_out {
            0 => {}
            1 => words.push("(1 argument left out)".into()),
            n => words.push(format!("({n} arguments left out)")),
        }
        words
    }
}

/// A module (executable or shared library) mapped into the process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Module {
    /// Load bias: the difference between the addresses in the process and in the file.
    pub base: u64,
    pub path: String,
    pub build_id: Vec<u8>,
    /// The address ranges of its `PT_LOAD` segments, in the process.
    pub segments: Vec<(u64, u64)>,
    /// The event sequence counter when the recorder found it mapped: events numbered from it on
    /// may run its code (an event takes its number after its stack is captured, so a module found
    /// during a capture is mapped for that event). 0: from the start, and in older dumps.
    pub seq: u64,
}

/// A `ModuleGone` record: the module at `base` was unloaded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ModuleGone {
    pub base: u64,
    /// The event sequence counter after the real `dlclose` returned: events numbered from it on
    /// are not in the module. 0 in older dumps: unknown.
    pub seq: u64,
}

/// A block live in a forked child at birth, inherited from the parent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Block {
    pub addr: u64,
    pub size: u64,
    pub usable: u64,
    pub stack: u32,
}

/// A snapshot taken on demand while the program ran (`zmtrace run`'s snapshot signal,
/// `--snapshot-every`, `--snapshot-at-rss`): its time (ns since the dump's start) and the event
/// sequence number it was taken at (the events numbered below it came before it). An aggregated
/// recording writes its counters and live set with it (`aggregate`, `live`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Snapshot {
    pub ts_ns: u64,
    pub seq: u64,
    pub aggregate: Option<Aggregate>,
    pub live: Option<Vec<LiveSite>>,
}

/// The blocks of one stack live when an aggregated recording ended. Per stack, not per block:
/// a server's live set is its whole keyspace, and the reports need only these sums.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LiveSite {
    pub stack: u32,
    pub blocks: u64,
    pub bytes: u64,
    pub usable: u64,
    /// Of the blocks, those that went through a realloc.
    pub via_realloc: u64,
    /// What the leak check at the end found these blocks to be ([`LeakKind`] as a number), or
    /// [`LiveSite::UNCHECKED`]: a stack has one entry per kind.
    pub kind: u8,
}

impl LiveSite {
    /// The blocks were not seen by a leak check (none was made, or they came after it).
    pub const UNCHECKED: u8 = 0xff;

    pub fn leak_kind(&self) -> Option<LeakKind> {
        LeakKind::ALL.get(usize::from(self.kind)).copied()
    }
}

/// The counters of an aggregated recording (`zmtrace run --aggregate`): what the analyzer would
/// compute by replaying the events, kept by the recorder instead. There is no timeline, so no
/// peak: everything else matches an event recording of the same run.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Aggregate {
    pub allocations: u64,
    pub frees: u64,
    pub reallocs: u64,
    pub failed: u64,
    pub bytes_allocated: u64,
    pub temporary: u64,
    pub threads: u64,
    /// Program calls aggregated (allocations, frees and reallocs, failed ones included).
    pub calls: u64,
    pub sites: Vec<AggregateSite>,
}

/// One stack's counters in an [`Aggregate`]: the meanings of the analyzer's per-site numbers.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AggregateSite {
    pub stack: u32,
    pub allocations: u64,
    pub bytes: u64,
    pub temporary: u64,
    pub failed: u64,
    pub churn: Churn,
}

/// The reallocs made from one stack. Defined here, once, for the analyzer replaying events and
/// the recorder counting them in an aggregated recording: both dumps of one run must say the
/// same.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Churn {
    pub reallocs: u64,
    pub grew: u64,
    pub shrank: u64,
    pub moved: u64,
    pub in_place: u64,
    /// Estimated bytes copied by moves: the smaller of the old and the new size.
    pub bytes_copied: u64,
    /// The most reallocs one block had gone through when it was reallocated here.
    pub longest_chain: u64,
    /// Growth steps (new size - old size) and how often each was seen, for the first
    /// [`MAX_STEPS`] distinct steps; and how many grows did not fit.
    pub steps: Vec<(u64, u64)>,
    pub other_steps: u64,
    /// Sum of new/old size ratios of the grows (for the mean growth factor).
    pub ratio_sum: f64,
}

/// Distinct growth steps kept per site.
pub const MAX_STEPS: usize = 16;

/// What one realloc from `old` to `new` bytes was, by the rules of [`Churn`]: also what the
/// page's timeline counts per time bucket, so that the two cannot disagree.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReallocShape {
    pub grew: bool,
    pub shrank: bool,
    pub moved: bool,
    /// Estimated bytes copied: the smaller of the two sizes when the block moved, else 0.
    pub bytes_copied: u64,
}

impl ReallocShape {
    pub fn of(old: u64, new: u64, moved: bool) -> ReallocShape {
        ReallocShape {
            grew: new > old,
            shrank: new < old,
            moved,
            bytes_copied: if moved { old.min(new) } else { 0 },
        }
    }
}

impl Churn {
    /// One realloc from `old` to `new` bytes; `chain`: the reallocs its block has now been
    /// through.
    pub fn add(&mut self, old: u64, new: u64, moved: bool, chain: u32) {
        let r = ReallocShape::of(old, new, moved);
        self.reallocs += 1;
        if r.grew {
            self.grew += 1;
            self.add_step(new - old, 1);
            if old > 0 {
                self.ratio_sum += new as f64 / old as f64;
            }
        } else if r.shrank {
            self.shrank += 1;
        }
        if r.moved {
            self.moved += 1;
            self.bytes_copied += r.bytes_copied;
        } else {
            self.in_place += 1;
        }
        self.longest_chain = self.longest_chain.max(u64::from(chain));
    }

    /// Adds another stack's reallocs (two stacks that symbolize the same, or two threads').
    pub fn merge(&mut self, o: &Churn) {
        self.reallocs += o.reallocs;
        self.grew += o.grew;
        self.shrank += o.shrank;
        self.moved += o.moved;
        self.in_place += o.in_place;
        self.bytes_copied += o.bytes_copied;
        self.longest_chain = self.longest_chain.max(o.longest_chain);
        self.ratio_sum += o.ratio_sum;
        self.other_steps += o.other_steps;
        for &(step, n) in &o.steps {
            self.add_step(step, n);
        }
    }

    fn add_step(&mut self, step: u64, n: u64) {
        if let Some((_, m)) = self.steps.iter_mut().find(|(s, _)| *s == step) {
            *m += n;
        } else if self.steps.len() < MAX_STEPS {
            self.steps.push((step, n));
        } else {
            self.other_steps += n;
        }
    }
}

/// How the traced process ended, as far as the recorder saw.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndReason {
    /// `exit` or a return from `main` (the library destructors ran).
    Exit,
    /// `_exit` or `_Exit`.
    UnderscoreExit,
    /// `abort`.
    Abort,
    /// `execve` succeeded; the new image writes its own dump.
    Exec,
    /// The recorder stopped because it could not write the dump (full disk, I/O error).
    WriteError,
    /// The program stopped tracing (`zmtrace_stop()`, or the Rust guard dropped).
    Stopped,
    /// A signal ended the process (`status` is its number): the recorder wrote everything up to
    /// it before the signal took its default action.
    Signal,
}

impl EndReason {
    pub fn from_u8(b: u8) -> Option<EndReason> {
        Some(match b {
            0 => EndReason::Exit,
            1 => EndReason::UnderscoreExit,
            2 => EndReason::Abort,
            3 => EndReason::Exec,
            4 => EndReason::WriteError,
            5 => EndReason::Stopped,
            6 => EndReason::Signal,
            _ => return None,
        })
    }
    pub fn describe(self) -> &'static str {
        match self {
            EndReason::Exit => "exit",
            EndReason::UnderscoreExit => "_exit",
            EndReason::Abort => "abort",
            EndReason::Exec => "exec",
            EndReason::WriteError => "recording stopped on a write error",
            EndReason::Stopped => "tracing stopped by the program",
            EndReason::Signal => "killed by a signal",
        }
    }
}

/// The `End` record: the last record of a dump whose process ended normally.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct End {
    pub reason: EndReason,
    /// Exit status where known (from `_exit`), else -1.
    pub status: i32,
    /// Events the recorder wrote: must equal [`Dump::count_events`] (the `ReallocOut` and
    /// `RemapOut` halves of reallocs and remaps are not events of their own).
    pub events: u64,
    /// Events lost: produced after the final flush (threads still running at exit) or while the
    /// dump could not be written.
    pub dropped: u64,
    /// `free`/`realloc` of addresses the recorder never saw allocated (e.g. from before it started).
    pub untracked_frees: u64,
    /// `free(NULL)` calls: no block, no event, but counted.
    pub free_null: u64,
    /// Stacks cut at the depth limit or where the unwinder found no unwind information.
    pub truncated_stacks: u64,
    /// With `ZMTRACE_UNWIND=compare`: stacks captured by both unwinders, and how many differed.
    pub compared_stacks: u64,
    pub mismatched_stacks: u64,
}

/// What a leak check found a block to be, with valgrind memcheck's meanings. The order is the
/// order of the lists in a [`Reach`] record, and the order reports show them in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LeakKind {
    /// No pointer to the block anywhere: neither from the roots nor from another block.
    Definite = 0,
    /// Pointed to only from lost blocks (the nodes of a list whose head is lost).
    Indirect = 1,
    /// Reached only through a pointer into its middle (or from a block reached that way).
    Possible = 2,
    /// A pointer to its start is reachable from the roots.
    Reachable = 3,
}

impl LeakKind {
    pub const ALL: [LeakKind; 4] = [
        LeakKind::Definite,
        LeakKind::Indirect,
        LeakKind::Possible,
        LeakKind::Reachable,
    ];

    /// The name on the command line and in JSON.
    pub fn name(self) -> &'static str {
        match self {
            LeakKind::Definite => "definite",
            LeakKind::Indirect => "indirect",
            LeakKind::Possible => "possible",
            LeakKind::Reachable => "reachable",
        }
    }

    /// The name for people, as memcheck prints it.
    pub fn describe(self) -> &'static str {
        match self {
            LeakKind::Definite => "definitely lost",
            LeakKind::Indirect => "indirectly lost",
            LeakKind::Possible => "possibly lost",
            LeakKind::Reachable => "still reachable",
        }
    }

    pub fn parse(s: &str) -> Option<LeakKind> {
        LeakKind::ALL.into_iter().find(|k| k.name() == s)
    }
}

/// What started a leak check.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ReachTrigger {
    /// `exit` or a return from `main`, after the program's own exit handlers.
    #[default]
    Exit,
    /// `_exit` or `_Exit`.
    UnderscoreExit,
    /// The program asked (`zmtrace_leak_check()`).
    Request,
}

impl ReachTrigger {
    pub fn from_u8(b: u8) -> Option<ReachTrigger> {
        Some(match b {
            0 => ReachTrigger::Exit,
            1 => ReachTrigger::UnderscoreExit,
            2 => ReachTrigger::Request,
            _ => return None,
        })
    }
    pub fn describe(self) -> &'static str {
        match self {
            ReachTrigger::Exit => "at exit",
            ReachTrigger::UnderscoreExit => "at _exit",
            ReachTrigger::Request => "on request",
        }
    }
    /// True for the checks made as the process ended: they classify what is live at the end.
    pub fn at_end(self) -> bool {
        self != ReachTrigger::Request
    }
}

/// Blocks and bytes (requested sizes) of one kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KindTotal {
    pub blocks: u64,
    pub bytes: u64,
}

/// The `Reach` record: one leak check made inside the traced process. The roots were the
/// writable segments of the loaded modules, the registers and stacks of the live threads and
/// their static TLS; the blocks were the live set at the check.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Reach {
    pub trigger: ReachTrigger,
    /// The event sequence counter at the check: events numbered below it came before.
    pub seq: u64,
    /// How long the check took, threads stopped and started again included (ns).
    pub scan_ns: u64,
    /// Threads stopped for the check (the checking thread not counted).
    pub threads_stopped: u32,
    /// Threads that could not be stopped (the signal blocked, or no answer in time): their
    /// whole stack mapping was scanned, or what of it could be found.
    pub threads_unstopped: u32,
    /// Bytes of roots scanned (segments, stacks, TLS).
    pub root_bytes: u64,
    /// Blocks not wholly readable (a page without read access inside them): what could be read
    /// was scanned, the rest not. What only they point to may be reported lost.
    pub unreadable_blocks: u64,
    pub unreadable_bytes: u64,
    /// Per [`LeakKind`], in its order.
    pub totals: [KindTotal; 4],
    /// The blocks' addresses per [`LeakKind`], ascending.
    pub addrs: [Vec<u64>; 4],
}

impl Reach {
    /// The kind of the block at `addr`, if the check saw it.
    pub fn kind_of(&self, addr: u64) -> Option<LeakKind> {
        LeakKind::ALL
            .into_iter()
            .find(|&k| self.addrs[k as usize].binary_search(&addr).is_ok())
    }
}

/// An OS error number as people read it ("No space left on device"), without the
/// "(os error 28)" that Rust's `Display` adds.
pub fn os_error_text(errno: i32) -> String {
    describe_os_error(&std::io::Error::from_raw_os_error(errno))
}

/// An I/O error as people read it: [`os_error_text`] for an OS error, else its message.
pub fn describe_os_error(e: &std::io::Error) -> String {
    let s = e.to_string();
    match (e.raw_os_error(), s.rfind(" (os error ")) {
        (Some(_), Some(i)) => s[..i].to_owned(),
        _ => s,
    }
}

/// The name of a signal number, for messages.
pub fn signal_name(sig: i32) -> String {
    let name = match sig {
        1 => "SIGHUP",
        2 => "SIGINT",
        3 => "SIGQUIT",
        4 => "SIGILL",
        6 => "SIGABRT",
        7 => "SIGBUS",
        8 => "SIGFPE",
        9 => "SIGKILL",
        11 => "SIGSEGV",
        13 => "SIGPIPE",
        14 => "SIGALRM",
        15 => "SIGTERM",
        24 => "SIGXCPU",
        25 => "SIGXFSZ",
        _ => return format!("signal {sig}"),
    };
    format!("{name} ({sig})")
}

#[cfg(test)]
mod sampling_tests {
    use super::*;

    #[test]
    fn weight_is_one_over_the_sampling_probability() {
        // Interval 1: every block, weight 1.
        for s in [0, 1, 64, 1 << 20] {
            assert_eq!(sample_probability(s, 1), 1.0);
            assert_eq!(sample_weight(s, 1), 1.0);
        }
        // Against the closed forms: 1 - (1 - 1/T)^s, and tcmalloc's 1 - exp(-s/T) for large T.
        let t = 524_288u64;
        for s in [1u64, 64, 4096, 524_288, 8 << 20] {
            let exact = 1.0 - (1.0 - 1.0 / t as f64).powf(s as f64);
            let p = sample_probability(s, t);
            assert!(
                (p - exact).abs() <= 1e-12 * exact.max(1e-300) + 1e-15,
                "{s}: {p} {exact}"
            );
            let tc = -(-(s as f64) / t as f64).exp_m1();
            assert!((p - tc).abs() / tc < 1e-5, "{s}: {p} vs tcmalloc's {tc}");
            assert!((sample_weight(s, t) * p - 1.0).abs() < 1e-12);
        }
        // Small blocks weigh about T/s + 1/2 (bytes: T + s/2); a block far larger than T, 1.
        let w = sample_weight(64, t);
        assert!((w - (t as f64 / 64.0 + 0.5)).abs() < 0.01, "{w}");
        assert!((sample_weight(64 << 20, t) - 1.0).abs() < 1e-9);
        // malloc(0) counts as one byte.
        assert_eq!(sample_weight(0, 4096), sample_weight(1, 4096));
    }

    #[test]
    fn sampling_fields_round_trip_and_old_dumps_read_as_unsampled() {
        let mut p = Process {
            pid: 1,
            ppid: 0,
            start_unix_ns: 5,
            session: "s".into(),
            exe: "/bin/x".into(),
            argv: vec!["x".into()],
            ..Default::default()
        };
        let dump = |p: &Process| {
            let mut out = write::file_header().to_vec();
            write::process(&mut out, p);
            Dump::from_bytes(std::path::Path::new("t.zmt"), out).unwrap()
        };
        let d = dump(&p);
        assert_eq!(d.sample_interval(), None);
        assert!(!d.all_blocks());
        // An unsampled Process record is byte for byte what older writers made.
        let mut unsampled = Vec::new();
        write::process(&mut unsampled, &p);
        p.sample_interval = 4096;
        p.all_blocks = true;
        let d = dump(&p);
        assert_eq!(d.sample_interval(), Some(4096));
        assert!(d.all_blocks());
        assert_eq!(d.process.as_ref(), Some(&p));
        let mut sampled = Vec::new();
        write::process(&mut sampled, &p);
        assert!(sampled.len() > unsampled.len());
    }
}
