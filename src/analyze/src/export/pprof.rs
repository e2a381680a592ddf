//! pprof's `profile.proto`, gzipped: what `go tool pprof`, Pyroscope and Parca read.
//!
//! The message types are written out here with prost's derive (the schema is small and stable,
//! and generating them would need `protoc` at build time). The profile is built as pprof's own
//! writers build one:
//!
//! - the string table starts with "";
//! - one `Mapping` per `PT_LOAD` segment of each module a stack goes through, with the module's
//!   path, its build-id in hex, and the segment's file offset (from the file on disk; without it,
//!   the offset a position-independent file has), so pprof can symbolize again from the files;
//! - one `Location` per return address, at the call instruction (the address less one), with
//!   its inlined calls as `Line`s, innermost first; an address no symbol covers has no line
//!   (and its mapping no `has_functions`), for pprof to symbolize itself;
//! - one `Function` per (name, file), named as the reports name frames (demangled, in full);
//! - each stack starts at its site, the first frame outside allocator wrappers, as `report`
//!   names sites (Go's heap profiles start at the code that allocated, not in the allocator):
//!   `go tool pprof -top` then lists per function what `report` lists per site.

use std::collections::HashMap;
use std::io::Write;
use std::rc::Rc;

use prost::Message;
use zmtrace_format::Dump;

use super::{Profile, SampleType};
use crate::reports::site_start;
use crate::symbols::{Frame, Symbolizer};

/// The messages of pprof's `proto/profile.proto` (field numbers as there).
pub mod proto {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Profile {
        #[prost(message, repeated, tag = "1")]
        pub sample_type: Vec<ValueType>,
        #[prost(message, repeated, tag = "2")]
        pub sample: Vec<Sample>,
        #[prost(message, repeated, tag = "3")]
        pub mapping: Vec<Mapping>,
        #[prost(message, repeated, tag = "4")]
        pub location: Vec<Location>,
        #[prost(message, repeated, tag = "5")]
        pub function: Vec<Function>,
        #[prost(string, repeated, tag = "6")]
        pub string_table: Vec<String>,
        #[prost(int64, tag = "7")]
        pub drop_frames: i64,
        #[prost(int64, tag = "8")]
        pub keep_frames: i64,
        #[prost(int64, tag = "9")]
        pub time_nanos: i64,
        #[prost(int64, tag = "10")]
        pub duration_nanos: i64,
        #[prost(message, optional, tag = "11")]
        pub period_type: Option<ValueType>,
        #[prost(int64, tag = "12")]
        pub period: i64,
        #[prost(int64, repeated, tag = "13")]
        pub comment: Vec<i64>,
        #[prost(int64, tag = "14")]
        pub default_sample_type: i64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ValueType {
        #[prost(int64, tag = "1")]
        pub r#type: i64,
        #[prost(int64, tag = "2")]
        pub unit: i64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Sample {
        /// Innermost first.
        #[prost(uint64, repeated, tag = "1")]
        pub location_id: Vec<u64>,
        #[prost(int64, repeated, tag = "2")]
        pub value: Vec<i64>,
        #[prost(message, repeated, tag = "3")]
        pub label: Vec<Label>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Label {
        #[prost(int64, tag = "1")]
        pub key: i64,
        #[prost(int64, tag = "2")]
        pub str: i64,
        #[prost(int64, tag = "3")]
        pub num: i64,
        #[prost(int64, tag = "4")]
        pub num_unit: i64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Mapping {
        #[prost(uint64, tag = "1")]
        pub id: u64,
        #[prost(uint64, tag = "2")]
        pub memory_start: u64,
        #[prost(uint64, tag = "3")]
        pub memory_limit: u64,
        #[prost(uint64, tag = "4")]
        pub file_offset: u64,
        #[prost(int64, tag = "5")]
        pub filename: i64,
        #[prost(int64, tag = "6")]
        pub build_id: i64,
        #[prost(bool, tag = "7")]
        pub has_functions: bool,
        #[prost(bool, tag = "8")]
        pub has_filenames: bool,
        #[prost(bool, tag = "9")]
        pub has_line_numbers: bool,
        #[prost(bool, tag = "10")]
        pub has_inline_frames: bool,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Location {
        #[prost(uint64, tag = "1")]
        pub id: u64,
        #[prost(uint64, tag = "2")]
        pub mapping_id: u64,
        #[prost(uint64, tag = "3")]
        pub address: u64,
        /// Innermost (inlined) first.
        #[prost(message, repeated, tag = "4")]
        pub line: Vec<Line>,
        #[prost(bool, tag = "5")]
        pub is_folded: bool,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Line {
        #[prost(uint64, tag = "1")]
        pub function_id: u64,
        #[prost(int64, tag = "2")]
        pub line: i64,
        #[prost(int64, tag = "3")]
        pub column: i64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Function {
        #[prost(uint64, tag = "1")]
        pub id: u64,
        #[prost(int64, tag = "2")]
        pub name: i64,
        #[prost(int64, tag = "3")]
        pub system_name: i64,
        #[prost(int64, tag = "4")]
        pub filename: i64,
        #[prost(int64, tag = "5")]
        pub start_line: i64,
    }
}

/// Clamps a weight into pprof's signed values (a weight that large is a damaged dump).
fn value(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// What a mapping's locations turned out to have, for its `has_*` flags.
#[derive(Default)]
struct Seen {
    locations: u64,
    with_lines: u64,
    files: bool,
    line_numbers: bool,
    inlines: bool,
}

struct Builder<'a, 'd> {
    dump: &'d Dump,
    sym: &'a mut Symbolizer<'d>,
    strings: Vec<String>,
    string_ids: HashMap<String, i64>,
    /// (start, end, module index, segment index), sorted by start; a later module record for
    /// the same range wins (as in the symbolizer).
    ranges: Vec<(u64, u64, usize, usize)>,
    /// By (module, segment): the mapping id.
    mappings: HashMap<(usize, usize), u64>,
    seen: HashMap<u64, Seen>,
    functions: HashMap<(String, Option<String>), u64>,
    function_list: Vec<proto::Function>,
    /// By (return address, frames of it skipped as wrappers): the location id.
    locations: HashMap<(u64, usize), u64>,
    location_list: Vec<proto::Location>,
}

impl<'a, 'd> Builder<'a, 'd> {
    fn new(dump: &'d Dump, sym: &'a mut Symbolizer<'d>) -> Builder<'a, 'd> {
        let mut ranges: Vec<(u64, u64, usize, usize)> = dump
            .modules
            .iter()
            .enumerate()
            .flat_map(|(i, m)| {
                m.segments
                    .iter()
                    .enumerate()
                    .map(move |(j, &(s, e))| (s, e, i, j))
            })
            .collect();
        ranges.sort_by_key(|&(s, _, i, _)| (s, std::cmp::Reverse(i)));
        ranges.dedup_by_key(|r| r.0);
        let mut b = Builder {
            dump,
            sym,
            strings: Vec::new(),
            string_ids: HashMap::new(),
            ranges,
            mappings: HashMap::new(),
            seen: HashMap::new(),
            functions: HashMap::new(),
            function_list: Vec::new(),
            locations: HashMap::new(),
            location_list: Vec::new(),
        };
        // pprof requires string 0 to be "".
        b.string("");
        b
    }

    fn string(&mut self, s: &str) -> i64 {
        if let Some(&i) = self.string_ids.get(s) {
            return i;
        }
        let i = self.strings.len() as i64;
        self.strings.push(s.to_string());
        self.string_ids.insert(s.to_string(), i);
        i
    }

    fn mapping_of(&mut self, addr: u64) -> u64 {
        let Some(i) = self.ranges.partition_point(|r| r.0 <= addr).checked_sub(1) else {
            return 0;
        };
        let (s, e, m, j) = self.ranges[i];
        if !(s <= addr && addr < e) {
            return 0;
        }
        let next = self.mappings.len() as u64 + 1;
        *self.mappings.entry((m, j)).or_insert(next)
    }

    fn function(&mut self, f: &Frame) -> u64 {
        let name = f.label();
        let key = (name, f.file.clone());
        if let Some(&id) = self.functions.get(&key) {
            return id;
        }
        let id = self.function_list.len() as u64 + 1;
        let name = self.string(&key.0);
        let filename = key.1.as_deref().map_or(0, |f| self.string(f));
        self.function_list.push(proto::Function {
            id,
            name,
            // The symbolizer keeps demangled names only. A system name equal to the name would
            // be taken for a mangled one: pprof would shorten a C++ name (`make(int)` to
            // `make`) and no longer match the reports.
            system_name: 0,
            filename,
            start_line: 0,
        });
        self.functions.insert(key, id);
        id
    }

    /// The location of return address `ret` (0: none, a placeholder) with the first `skip` of
    /// its frames left out.
    fn location(&mut self, ret: u64, frames: &[Frame], skip: usize) -> u64 {
        if let Some(&id) = self.locations.get(&(ret, skip)) {
            return id;
        }
        let id = self.location_list.len() as u64 + 1;
        // The call instruction, not the one after it: what symbolizes to the call's line.
        let address = ret.saturating_sub(1);
        let mapping_id = if ret == 0 {
            0
        } else {
            self.mapping_of(address)
        };
        let kept = &frames[skip.min(frames.len())..];
        // A frame without a function is an address nothing covered: no line, for pprof to
        // symbolize from the mapping's file if it can.
        let named: Vec<&Frame> = kept.iter().filter(|f| f.function.is_some()).collect();
        let line: Vec<proto::Line> = named
            .iter()
            .map(|f| proto::Line {
                function_id: self.function(f),
                line: f.line.map_or(0, i64::from),
                column: 0,
            })
            .collect();
        if mapping_id != 0 {
            let s = self.seen.entry(mapping_id).or_default();
            s.locations += 1;
            s.with_lines += u64::from(!line.is_empty());
            s.files |= named.iter().any(|f| f.file.is_some());
            s.line_numbers |= named.iter().any(|f| f.line.is_some());
            s.inlines |= line.len() > 1;
        }
        self.location_list.push(proto::Location {
            id,
            mapping_id,
            address,
            line,
            is_folded: false,
        });
        self.locations.insert((ret, skip), id);
        id
    }

    /// A location for a stack that has no frames to show (missing from the dump, or empty).
    fn placeholder(&mut self, frames: &[Frame]) -> u64 {
        let frames: Vec<Frame> = if frames.is_empty() {
            vec![Frame {
                function: Some("<empty stack>".into()),
                file: None,
                line: None,
                module: None,
                address: "0x0".into(),
                inlined: false,
            }]
        } else {
            frames.to_vec()
        };
        let id = self.location_list.len() as u64 + 1;
        let line = frames
            .iter()
            .map(|f| proto::Line {
                function_id: self.function(f),
                line: f.line.map_or(0, i64::from),
                column: 0,
            })
            .collect();
        self.location_list.push(proto::Location {
            id,
            mapping_id: 0,
            address: 0,
            line,
            is_folded: false,
        });
        id
    }

    /// The locations of stack `id`, innermost first, from its site outwards.
    fn stack(&mut self, id: u32, wrappers: &[String]) -> Vec<u64> {
        let Some(addrs) = self.sym.stack_addresses(id) else {
            let frames = self.sym.stack(id);
            return vec![self.placeholder(&frames)];
        };
        let flat: Vec<Frame> = addrs.iter().flat_map(|(_, f)| f.iter().cloned()).collect();
        let mut skip = site_start(&flat, wrappers);
        let mut out = Vec::with_capacity(addrs.len());
        for (ret, frames) in &addrs {
            let frames: &Rc<Vec<Frame>> = frames;
            if skip >= frames.len() {
                skip -= frames.len();
                continue;
            }
            out.push(self.location(*ret, frames, skip));
            skip = 0;
        }
        if out.is_empty() {
            out.push(self.placeholder(&[]));
        }
        out
    }

    /// The mappings used, in module order (the program first: pprof takes the first mapping for
    /// the main binary).
    fn mappings(&mut self) -> Vec<proto::Mapping> {
        let mut used: Vec<((usize, usize), u64)> =
            self.mappings.iter().map(|(&k, &v)| (k, v)).collect();
        used.sort_unstable();
        let mut offsets: HashMap<usize, Vec<(u64, u64)>> = HashMap::new();
        let mut out = Vec::with_capacity(used.len());
        for ((m, j), id) in used {
            let module = &self.dump.modules[m];
            let (start, limit) = module.segments[j];
            let vaddr = start.wrapping_sub(module.base);
            let file_offset = offsets
                .entry(m)
                .or_insert_with(|| segment_offsets(&module.path))
                .iter()
                .find(|&&(a, _)| a == vaddr)
                .map_or(vaddr, |&(_, o)| o);
            let seen = self.seen.remove(&id).unwrap_or_default();
            let filename = self.string(&module.path);
            let build_id = if module.build_id.is_empty() {
                0
            } else {
                let hex: String = module.build_id.iter().map(|b| format!("{b:02x}")).collect();
                self.string(&hex)
            };
            out.push(proto::Mapping {
                id,
                memory_start: start,
                memory_limit: limit,
                file_offset,
                filename,
                build_id,
                has_functions: seen.locations > 0 && seen.with_lines == seen.locations,
                has_filenames: seen.files,
                has_line_numbers: seen.line_numbers,
                has_inline_frames: seen.inlines,
            });
        }
        out
    }
}

/// The `PT_LOAD` segments of the file at `path`: (virtual address, file offset). Empty when the
/// file is gone or not ELF (the offsets are then guessed, see [`Builder::mappings`]).
fn segment_offsets(path: &str) -> Vec<(u64, u64)> {
    use object::{Object, ObjectSegment};
    let Ok(data) = std::fs::read(path) else {
        return Vec::new();
    };
    let Ok(file) = object::File::parse(&*data) else {
        return Vec::new();
    };
    file.segments()
        .map(|s| (s.address(), s.file_range().0))
        .collect()
}

/// The profile of `p`, stacks symbolized by `sym`; `wrappers` as `report`'s (each stack starts
/// at its site); `shown` is the sample type pprof shows unless told otherwise (Go's heap
/// profiles: `inuse_space`).
pub fn build<'d>(
    dump: &'d Dump,
    p: &super::Profile,
    sym: &mut Symbolizer<'d>,
    wrappers: &[String],
    shown: SampleType,
) -> proto::Profile {
    build_with_types(dump, p, sym, wrappers, shown, &p.sample_types())
}

/// [`build`] with the sample types in the order given (those the profile lacks left out): a
/// scrape's `/debug/pprof/heap` puts the `inuse_*` types first, `/debug/pprof/allocs` the
/// `alloc_*` ones, for the scrapers that take the first.
pub fn build_with_types<'d>(
    dump: &'d Dump,
    p: &super::Profile,
    sym: &mut Symbolizer<'d>,
    wrappers: &[String],
    shown: SampleType,
    order: &[SampleType],
) -> proto::Profile {
    let have = p.sample_types();
    let types: Vec<SampleType> = order.iter().copied().filter(|t| have.contains(t)).collect();
    let mut b = Builder::new(dump, sym);
    let sample_type = types
        .iter()
        .map(|t| proto::ValueType {
            r#type: b.string(t.name()),
            unit: b.string(t.unit()),
        })
        .collect();
    let mut sample = Vec::with_capacity(p.stacks.len());
    for (id, w) in &p.stacks {
        let location_id = b.stack(*id, wrappers);
        sample.push(proto::Sample {
            location_id,
            value: types.iter().map(|&t| value(w.get(t))).collect(),
            label: Vec::new(),
        });
    }
    let mapping = b.mappings();
    let period_type = Some(proto::ValueType {
        r#type: b.string("space"),
        unit: b.string("bytes"),
    });
    let mut comments = Vec::new();
    if let Some(proc) = &dump.process {
        comments.push(format!(
            "zmtrace: {} (pid {})",
            proc.command().join(" "),
            proc.pid
        ));
    }
    comments.push(if p.aggregated {
        "inuse_*: live at the end of the recording (aggregated dump)".to_string()
    } else if !dump.is_complete() {
        "inuse_*: live where the dump ends (the process did not end normally)".to_string()
    } else {
        "inuse_*: live at exit".to_string()
    });
    if p.lost {
        comments.push("lost_space: definitely and indirectly lost at exit".into());
    }
    let comment = comments.iter().map(|c| b.string(c)).collect();
    let shown = if types.contains(&shown) {
        shown
    } else {
        SampleType::InuseSpace
    };
    let default_sample_type = b.string(shown.name());
    proto::Profile {
        sample_type,
        sample,
        mapping,
        location: std::mem::take(&mut b.location_list),
        function: std::mem::take(&mut b.function_list),
        string_table: std::mem::take(&mut b.strings),
        drop_frames: 0,
        keep_frames: 0,
        time_nanos: dump.process.as_ref().map_or(0, |p| value(p.start_unix_ns)),
        duration_nanos: value(p.duration_ns),
        period_type,
        period: value(p.period.max(1)),
        comment,
        default_sample_type,
    }
}

/// Writes the profile ([`build`]), gzipped (as pprof writes and expects it).
pub fn write<'d>(
    dump: &'d Dump,
    p: &Profile,
    sym: &mut Symbolizer<'d>,
    wrappers: &[String],
    shown: SampleType,
    out: impl Write,
) -> std::io::Result<()> {
    gzip(&build(dump, p, sym, wrappers, shown), out)
}

/// Says what "in use" means in a profile [`build`] made (a scrape: now; a snapshot: then),
/// in place of its comment about it.
pub fn set_inuse_comment(p: &mut proto::Profile, text: &str) {
    let i = p.string_table.len() as i64;
    p.string_table.push(text.to_owned());
    for c in &mut p.comment {
        if p.string_table[*c as usize].starts_with("inuse_*") {
            *c = i;
        }
    }
}

/// A built profile, encoded and gzipped.
pub fn gzip(profile: &proto::Profile, out: impl Write) -> std::io::Result<()> {
    let bytes = profile.encode_to_vec();
    let mut gz = flate2::write::GzEncoder::new(out, flate2::Compression::default());
    gz.write_all(&bytes)?;
    gz.finish()?.flush()
}

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::path::Path;

    use zmtrace_format::event::{encode_alloc, EventBuf};
    use zmtrace_format::{write, AllocKind, End, EndReason, Module, Process};

    use super::*;
    use crate::export::Weights;

    /// A program at base 0x10000 (a file that is not on disk) with two segments; stack 1 is
    /// two frames in its second segment, stack 2 one frame outside every module; stack 3 is
    /// allocated from but not in the dump. Stack 1 allocates 100 + 28 bytes (the 28 freed
    /// never), stack 2 allocates 7.
    fn dump() -> Dump {
        let mut out = write::file_header().to_vec();
        write::process(
            &mut out,
            &Process {
                pid: 42,
                ppid: 1,
                start_unix_ns: 1_000_000_007,
                session: "s".into(),
                exe: "/nonexistent/prog".into(),
                argv: vec!["prog".into(), "-x".into()],
                ..Default::default()
            },
        );
        write::module(
            &mut out,
            &Module {
                base: 0x10000,
                path: "/nonexistent/prog".into(),
                build_id: vec![0xde, 0xad, 0xbe, 0xef],
                segments: vec![(0x10000, 0x11000), (0x11000, 0x15000)],
                // Mapped from the start (the reader's module eras, merged after this test).
                seq: 0,
            },
        );
        let s1 = [0x11235u64, 0x12001];
        let s2 = [0x9_0000_0000u64];
        write::stacks(
            &mut out,
            [(1u32, &s1[..]), (2, &s2[..])].into_iter(),
            &mut |b| zstd::bulk::compress(b, 1).unwrap(),
        );
        let mut raw = Vec::new();
        for (seq, (addr, size, stack)) in [
            (0xa000u64, 100u64, 1u32),
            (0xb000, 28, 1),
            (0xc000, 7, 2),
            (0xd000, 5, 3),
        ]
        .into_iter()
        .enumerate()
        {
            let mut b = EventBuf::default();
            encode_alloc(
                &mut b,
                seq as u64 + 1,
                10,
                AllocKind::Malloc,
                addr,
                size,
                size,
                stack,
            );
            raw.extend_from_slice(b.as_slice());
        }
        let mut packed = Vec::new();
        zmtrace_format::event::pack(&raw, &mut packed);
        let z = zstd::bulk::compress(&packed, 1).unwrap();
        write::events(&mut out, 1, 1, packed.len(), &z);
        write::end(
            &mut out,
            &End {
                reason: EndReason::Exit,
                status: 0,
                events: 4,
                dropped: 0,
                untracked_frees: 0,
                free_null: 0,
                truncated_stacks: 0,
                compared_stacks: 0,
                mismatched_stacks: 0,
            },
        );
        Dump::from_bytes(Path::new("test.zmt"), out).unwrap()
    }

    fn decode(gz: &[u8]) -> proto::Profile {
        let mut bytes = Vec::new();
        flate2::read::GzDecoder::new(gz)
            .read_to_end(&mut bytes)
            .unwrap();
        proto::Profile::decode(&*bytes).unwrap()
    }

    #[test]
    fn profile_proto_has_mappings_locations_and_the_weights() {
        let d = dump();
        let a = crate::analyze(&d, false, &mut |_, _| {});
        let p = Profile::from_analysis(&a);
        let mut sym = Symbolizer::new(&d);
        let mut gz = Vec::new();
        write(&d, &p, &mut sym, &[], SampleType::InuseSpace, &mut gz).unwrap();
        let pr = decode(&gz);
        let s = |i: i64| pr.string_table[i as usize].as_str();
        assert_eq!(pr.string_table[0], "");
        // No leak check in this dump: no lost_space.
        let types: Vec<(&str, &str)> = pr
            .sample_type
            .iter()
            .map(|t| (s(t.r#type), s(t.unit)))
            .collect();
        assert_eq!(
            types,
            [
                ("alloc_objects", "count"),
                ("alloc_space", "bytes"),
                ("inuse_objects", "count"),
                ("inuse_space", "bytes")
            ]
        );
        assert_eq!(s(pr.default_sample_type), "inuse_space");
        let pt = pr.period_type.as_ref().unwrap();
        assert_eq!((s(pt.r#type), s(pt.unit), pr.period), ("space", "bytes", 1));
        assert_eq!(pr.time_nanos, 1_000_000_007);
        // Stacks 1, 2, 3 in order (nothing was freed: all in use).
        let values: Vec<&[i64]> = pr.sample.iter().map(|s| &s.value[..]).collect();
        assert_eq!(
            values,
            [&[2, 128, 2, 128][..], &[1, 7, 1, 7], &[1, 5, 1, 5]]
        );
        // Only the segment the frames are in, with the offset a PIE file has there (the file
        // is gone), and the build-id in hex; nothing was symbolized.
        assert_eq!(pr.mapping.len(), 1);
        let m = &pr.mapping[0];
        assert_eq!(
            (m.memory_start, m.memory_limit, m.file_offset),
            (0x11000, 0x15000, 0x1000)
        );
        assert_eq!(
            (s(m.filename), s(m.build_id)),
            ("/nonexistent/prog", "deadbeef")
        );
        assert!(!m.has_functions, "no frame was named");
        let loc = |id: u64| &pr.location[id as usize - 1];
        let s1: Vec<(u64, u64, usize)> = pr.sample[0]
            .location_id
            .iter()
            .map(|&id| (loc(id).address, loc(id).mapping_id, loc(id).line.len()))
            .collect();
        // At the calls (return address less one), in the mapping, left for pprof to symbolize.
        assert_eq!(s1, [(0x11234, m.id, 0), (0x12000, m.id, 0)]);
        let l2 = loc(pr.sample[1].location_id[0]);
        assert_eq!(
            (l2.address, l2.mapping_id, l2.line.len()),
            (0x8_ffff_ffff, 0, 0)
        );
        // The stack missing from the dump says so.
        let l3 = loc(pr.sample[2].location_id[0]);
        let f = &pr.function[l3.line[0].function_id as usize - 1];
        assert_eq!(s(f.name), "<stack 3 missing from the dump>");
        assert!(pr
            .comment
            .iter()
            .any(|&c| s(c) == "zmtrace: prog -x (pid 42)"));
    }

    #[test]
    fn a_sampled_recording_supplies_its_weights_and_period() {
        // What a sampled dump would hand the writer: estimates already scaled, and its rate.
        let d = dump();
        let p = Profile {
            stacks: vec![(
                1,
                Weights {
                    alloc_objects: 3,
                    alloc_space: 3 * 4096,
                    inuse_objects: 1,
                    inuse_space: 4096,
                    lost_space: 4096,
                },
            )],
            lost: true,
            period: 4096,
            aggregated: false,
            duration_ns: 5,
        };
        let mut sym = Symbolizer::new(&d);
        let mut gz = Vec::new();
        write(&d, &p, &mut sym, &[], SampleType::LostSpace, &mut gz).unwrap();
        let pr = decode(&gz);
        assert_eq!(
            pr.string_table[pr.default_sample_type as usize],
            "lost_space"
        );
        assert_eq!(pr.period, 4096);
        assert_eq!(pr.duration_nanos, 5);
        assert_eq!(pr.sample_type.len(), 5);
        assert_eq!(pr.sample[0].value, [3, 3 * 4096, 1, 4096, 4096]);
    }
}
