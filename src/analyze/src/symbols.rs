//! Offline symbolization: from the modules a dump recorded and the files on disk to function,
//! file and line. DWARF first (with inlined frames), then the ELF symbol tables (`.symtab`, else
//! `.dynsym`: Debian's stripped `redis-server` still names `zmalloc` or `_sdsMakeRoomFor` there),
//! else `module+offset`. Names are demangled (Rust and C++). Each address is looked up once.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use rustc_hash::FxHashMap;
use serde::Serialize;
use zmtrace_format::{Dump, Module};

/// One frame of a symbolized stack. An address with inlined calls gives several frames, the
/// innermost (inlined) first; all but the last of them have `inlined` set.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Frame {
    pub function: Option<String>,
    pub file: Option<String>,
    pub line: Option<u32>,
    pub module: Option<String>,
    /// The return address in the process, in hex.
    pub address: String,
    pub inlined: bool,
}

impl Frame {
    /// The name people see: the function, else `module+0xoffset`, else the address.
    pub fn label(&self) -> String {
        match (&self.function, &self.module) {
            (Some(f), _) => f.clone(),
            (None, Some(m)) => {
                let name = Path::new(m)
                    .file_name()
                    .map_or(m.as_str(), |n| n.to_str().unwrap_or(m.as_str()));
                format!("{name}+{}", self.address)
            }
            (None, None) => self.address.clone(),
        }
    }

    /// `file:line` where known.
    pub fn location(&self) -> Option<String> {
        match (&self.file, self.line) {
            (Some(f), Some(l)) => Some(format!("{f}:{l}")),
            (Some(f), None) => Some(f.clone()),
            _ => None,
        }
    }
}

/// What makes two frames the same for people: function, file, line, and module (or, for a
/// frame with neither name nor line, its address: the offset in its module, where it has one).
pub type FrameKey = (Option<String>, Option<String>, Option<u32>, Option<String>);

pub fn frame_key(f: &Frame) -> FrameKey {
    let unknown = f.function.is_none() && f.line.is_none();
    (
        f.function.clone(),
        f.file.clone(),
        f.line,
        // Frames without names or lines differ by address, not by module.
        if unknown {
            Some(f.address.clone())
        } else {
            f.module.clone()
        },
    )
}

/// One return address resolved: its frames, and per frame what [`Symbolizer::site_group`]
/// needs (so that grouping every stack clones no frame and hashes no string).
struct Resolved {
    frames: Rc<Vec<Frame>>,
    keys: Rc<[FrameBits]>,
    /// In the recorder's own library (left out of stacks). Found once per address: a path
    /// parsed per frame of every stack was a third of `zmtrace report` on a python3 dump.
    recorder: bool,
}

#[derive(Clone, Copy)]
struct FrameBits {
    /// The frame's [`frame_key`], interned.
    id: u32,
    /// The frame is `main`'s.
    main: bool,
    /// The frame is the C library's start code ([`is_start_code`]).
    start: bool,
    /// Its module (index in the dump's modules; `u32::MAX`: none).
    module: u32,
}

/// A loaded module file: its DWARF, and its symbol table with sizes.
struct ModuleFile {
    loader: Option<addr2line::Loader>,
    /// (start, size, name), sorted by start: `.symtab`, else `.dynsym`.
    symbols: Vec<(u64, u64, String)>,
}

impl ModuleFile {
    const NONE: ModuleFile = ModuleFile {
        loader: None,
        symbols: Vec::new(),
    };

    /// The function symbol containing `probe`. Unlike a nearest-preceding lookup, an address
    /// past the end of a symbol (in a static function missing from `.dynsym`) is not named after
    /// its neighbour.
    fn symbol(&self, probe: u64) -> Option<&str> {
        let i = self
            .symbols
            .partition_point(|s| s.0 <= probe)
            .checked_sub(1)?;
        let (start, size, name) = &self.symbols[i];
        (probe < start + (*size).max(1)).then_some(name.as_str())
    }
}

fn symbol_table(path: &Path) -> Vec<(u64, u64, String)> {
    use object::{Object, ObjectSymbol, ObjectSymbolTable, SymbolKind};
    let Ok(data) = std::fs::read(path) else {
        return Vec::new();
    };
    let Ok(file) = object::File::parse(&*data) else {
        return Vec::new();
    };
    let Some(table) = file.symbol_table().or_else(|| file.dynamic_symbol_table()) else {
        return Vec::new();
    };
    let mut out: Vec<(u64, u64, String)> = table
        .symbols()
        .filter(|s| s.kind() == SymbolKind::Text && s.is_definition() && s.address() != 0)
        .filter_map(|s| Some((s.address(), s.size(), s.name().ok()?.to_string())))
        .collect();
    // Aliases share an address: keep one name (the first in the table).
    out.sort_by_key(|s| s.0);
    out.dedup_by_key(|s| s.0);
    out
}

/// Frames found in module files, kept from one [`Symbolizer`] to the next (by
/// [`Symbolizer::with_frames`] and [`Symbolizer::take_frames`]): a dump followed while it is
/// written (`zmtrace run --serve`) gets a Symbolizer per scrape, since a Symbolizer borrows its
/// dump, and without this each scrape looked every address up in the DWARF again (and loaded
/// every module's DWARF again), however few were new. Keyed by what a lookup depends on: the
/// module (path, build-id, load bias) and the return address.
#[derive(Default)]
pub struct FrameCache {
    frames: HashMap<(String, Vec<u8>, u64, u64), Vec<Frame>>,
    /// Lookups made in module files (cache misses), for whoever measures.
    pub lookups: u64,
}

/// Symbolizes the stacks of one dump.
///
/// # Modules by time
///
/// A library unloaded and another loaded at the same addresses are two modules for one address
/// range. Each `Module` record says from which event sequence number the module was mapped and
/// each `ModuleGone` from which it was not any more, so each module has an era `[from, to)`.
/// A frame is resolved against the module mapped at the time of the stack: the recorder gives a
/// stack through an unloaded module's code no new events once the module is gone (it takes such
/// stacks out of its store, so the same addresses in the next module are a stack of their own),
/// so a stack id belongs to one era, and the first event that names it tells which. Interning
/// per (stack, era) in the analyzer instead would split every site by era for nothing: the
/// recorder already does it where it matters. The first uses are found with one pass over the
/// events, made only for a dump in which two modules share addresses; a stack with no event (an
/// aggregated dump, a block inherited at a fork) and older dumps (every era from 0, no end)
/// resolve as before: against the module recorded last for the range.
pub struct Symbolizer<'d> {
    dump: &'d Dump,
    /// Modules by address range: (start, end, index into dump.modules), sorted by start, then
    /// by recording order (latest first).
    ranges: Vec<(u64, u64, usize)>,
    /// Per module, the event sequence numbers `[from, to)` while it was mapped.
    eras: Vec<(u64, u64)>,
    /// Two modules share addresses: frames resolve by time.
    by_time: bool,
    /// The sequence number of the first event of each stack (found on first need).
    first_use: Option<HashMap<u32, u64>>,
    files: HashMap<PathBuf, ModuleFile>,
    /// Frames by return address and module, with what grouping stacks needs of each frame.
    addresses: FxHashMap<(u64, usize), Resolved>,
    /// [`Symbolizer::module_of`] by address, where the answer does not depend on the time.
    modules_at: FxHashMap<u64, Option<usize>>,
    stacks: HashMap<u32, Rc<Vec<Frame>>>,
    /// Frames interned by [`frame_key`]: equal keys, equal ids.
    frame_ids: FxHashMap<FrameKey, u32>,
    /// Stacks interned by their frames' key ids (see [`Symbolizer::site_group`]).
    group_ids: FxHashMap<Vec<u32>, u32>,
    groups: FxHashMap<u32, u32>,
    /// Problems met (a module missing on disk, a build-id that no longer matches): one line
    /// each, each said once.
    pub warnings: Vec<String>,
    /// Frames found in module files, possibly by an earlier Symbolizer.
    found: FrameCache,
}

impl<'d> Symbolizer<'d> {
    pub fn new(dump: &'d Dump) -> Symbolizer<'d> {
        let mut ranges: Vec<(u64, u64, usize)> = dump
            .modules
            .iter()
            .enumerate()
            .flat_map(|(i, m)| m.segments.iter().map(move |&(s, e)| (s, e, i)))
            .filter(|&(s, e, _)| s < e)
            .collect();
        ranges.sort_by_key(|&(s, _, i)| (s, std::cmp::Reverse(i)));
        // Another module where one was (overlapping segments): resolve by time.
        let by_time = {
            let mut by_start = ranges.clone();
            by_start.sort_by_key(|r| r.0);
            let mut end = 0u64;
            let mut owner = usize::MAX;
            let mut shared = false;
            for &(s, e, i) in &by_start {
                if s < end && i != owner {
                    shared = true;
                    break;
                }
                if e > end {
                    end = e;
                    owner = i;
                }
            }
            shared
        };
        let eras = dump
            .modules
            .iter()
            .map(|m| {
                let to = dump
                    .modules_gone
                    .iter()
                    .filter(|g| g.base == m.base && g.seq != 0 && g.seq >= m.seq)
                    .map(|g| g.seq)
                    .min()
                    .unwrap_or(u64::MAX);
                (m.seq, to)
            })
            .collect();
        Symbolizer {
            dump,
            ranges,
            eras,
            by_time,
            first_use: None,
            files: HashMap::new(),
            addresses: FxHashMap::default(),
            modules_at: FxHashMap::default(),
            stacks: HashMap::new(),
            frame_ids: FxHashMap::default(),
            group_ids: FxHashMap::default(),
            groups: FxHashMap::default(),
            warnings: Vec::new(),
            found: FrameCache::default(),
        }
    }

    /// A Symbolizer that looks up in module files only the addresses `found` does not have.
    pub fn with_frames(dump: &'d Dump, found: FrameCache) -> Symbolizer<'d> {
        let mut s = Symbolizer::new(dump);
        s.found = found;
        s
    }

    /// The frames found so far (with the ones given to [`Symbolizer::with_frames`]), for the
    /// next Symbolizer.
    pub fn take_frames(&mut self) -> FrameCache {
        std::mem::take(&mut self.found)
    }

    /// The module of `addr` at event sequence number `seq` (None: no time known): the one
    /// mapped then, else the one recorded last for the address.
    fn module_of(&self, addr: u64, seq: Option<u64>) -> Option<usize> {
        // Ranges are few (a handful per module): the ones starting at or below `addr`, latest
        // recorded first among equal starts.
        let upto = self.ranges.partition_point(|r| r.0 <= addr);
        let holding = || {
            self.ranges[..upto]
                .iter()
                .rev()
                .filter(move |&&(s, e, _)| s <= addr && addr < e)
                .map(|r| r.2)
        };
        if let Some(seq) = seq.filter(|_| self.by_time) {
            let at = holding()
                .filter(|&i| self.eras[i].0 <= seq && seq < self.eras[i].1)
                .max();
            if at.is_some() {
                return at;
            }
        }
        holding().max()
    }

    /// When stack `id` was first used: the sequence number of its first event.
    fn first_use(&mut self, id: u32) -> Option<u64> {
        if !self.by_time {
            return None;
        }
        let dump = self.dump;
        let map = self.first_use.get_or_insert_with(|| {
            let mut m: HashMap<u32, u64> = HashMap::new();
            for e in dump.events() {
                if let Some(stack) = e.kind.stack() {
                    m.entry(stack).or_insert(e.seq);
                }
            }
            m
        });
        map.get(&id).copied()
    }

    /// The frames of stack `id`, outermost last, without the recorder's own frames. Unknown ids
    /// (a damaged dump) give a single frame that says so.
    pub fn stack(&mut self, id: u32) -> Rc<Vec<Frame>> {
        if let Some(s) = self.stacks.get(&id) {
            return s.clone();
        }
        let frames = match self.stack_addresses(id) {
            Some(addrs) => {
                let mut out = Vec::with_capacity(addrs.len() + 4);
                for (_, f) in addrs {
                    out.extend(f.iter().cloned());
                }
                collapse_below_main(&mut out);
                out
            }
            None => vec![Frame {
                function: Some(format!("<stack {id} missing from the dump>")),
                file: None,
                line: None,
                module: None,
                address: "0x0".into(),
                inlined: false,
            }],
        };
        let frames = Rc::new(frames);
        self.stacks.insert(id, frames.clone());
        frames
    }

    /// The return addresses of stack `id`, innermost first, each with its frames (inlined calls
    /// first), without the recorder's own; `None` for an id the dump does not have. For exports
    /// that keep addresses (pprof's locations); [`Symbolizer::stack`] is these frames flattened.
    pub fn stack_addresses(&mut self, id: u32) -> Option<Vec<(u64, Rc<Vec<Frame>>)>> {
        let seq = self.first_use(id);
        let addrs = self.dump.stacks.get(&id)?;
        let mut out = Vec::with_capacity(addrs.len());
        for &a in addrs {
            let r = self.resolve(a, seq);
            if !r.recorder {
                out.push((a, r.frames.clone()));
            }
        }
        Some(out)
    }

    /// The frames at one return address (inlined calls first), in the module recorded last
    /// for it.
    pub fn address(&mut self, ret: u64) -> Rc<Vec<Frame>> {
        self.address_at(ret, None)
    }

    /// The frames at one return address in the module mapped at event `seq`.
    pub fn address_at(&mut self, ret: u64, seq: Option<u64>) -> Rc<Vec<Frame>> {
        self.resolve(ret, seq).frames.clone()
    }

    /// [`Symbolizer::module_of`], remembered per address when at most one module ever held it
    /// (then time does not matter): the scan of the ranges, once per frame of every stack, was
    /// a fifth of `zmtrace report` on a python3 dump of a hundred modules.
    fn module_at(&mut self, addr: u64, seq: Option<u64>) -> Option<usize> {
        if let Some(&m) = self.modules_at.get(&addr) {
            return m;
        }
        let m = self.module_of(addr, seq);
        let holders = || {
            let upto = self.ranges.partition_point(|r| r.0 <= addr);
            let mut held = self.ranges[..upto]
                .iter()
                .filter(|&&(s, e, _)| s <= addr && addr < e)
                .map(|r| r.2);
            let first = held.next();
            held.all(|i| Some(i) == first)
        };
        if !self.by_time || holders() {
            self.modules_at.insert(addr, m);
        }
        m
    }

    fn resolve(&mut self, ret: u64, seq: Option<u64>) -> &Resolved {
        let module = self.module_at(ret, seq);
        let key = (ret, module.unwrap_or(usize::MAX));
        if !self.addresses.contains_key(&key) {
            let frames = self.lookup(ret, module.map(|i| &self.dump.modules[i]));
            let keys = frames
                .iter()
                .map(|f| FrameBits {
                    id: self.frame_id(f),
                    main: f.function.as_deref() == Some("main"),
                    start: is_start_code(f),
                    module: module.map_or(u32::MAX, |m| m as u32),
                })
                .collect();
            let recorder = frames
                .first()
                .and_then(|f| f.module.as_deref())
                .is_some_and(is_recorder_module);
            let r = Resolved {
                frames: Rc::new(frames),
                keys,
                recorder,
            };
            self.addresses.insert(key, r);
        }
        &self.addresses[&key]
    }

    fn frame_id(&mut self, f: &Frame) -> u32 {
        let n = self.frame_ids.len() as u32;
        *self.frame_ids.entry(frame_key(f)).or_insert(n)
    }

    /// A number per site: two stacks get the same one exactly when their frames
    /// ([`Symbolizer::stack`]) have the same [`frame_key`]s, i.e. when they symbolize the same
    /// (one source line compiled into several calls, say). Cheaper than comparing the frames:
    /// every address is keyed once, and a stack is its addresses' key ids.
    pub fn site_group(&mut self, id: u32) -> u32 {
        if let Some(&g) = self.groups.get(&id) {
            return g;
        }
        let key = match self.stack_keys(id) {
            Some(k) => k,
            // The one frame `stack` gives an unknown id.
            None => {
                let f = &self.stack(id)[0];
                let f = f.clone();
                vec![self.frame_id(&f)]
            }
        };
        let n = self.group_ids.len() as u32;
        let g = *self.group_ids.entry(key).or_insert(n);
        self.groups.insert(id, g);
        g
    }

    /// The key ids of stack `id`'s frames as [`Symbolizer::stack`] gives them (the recorder's
    /// own frames left out, the start code below `main` collapsed); None for an unknown id.
    fn stack_keys(&mut self, id: u32) -> Option<Vec<u32>> {
        let seq = self.first_use(id);
        let dump = self.dump;
        let addrs = dump.stacks.get(&id)?;
        let mut bits: Vec<FrameBits> = Vec::with_capacity(addrs.len() + 4);
        for &a in addrs {
            let r = self.resolve(a, seq);
            if r.recorder {
                continue;
            }
            bits.extend(r.keys.iter().copied());
        }
        if let Some(main) = bits.iter().rposition(|b| b.main) {
            let below = &bits[main + 1..];
            if !below.is_empty() && below.iter().all(|b| b.start) {
                // As `collapse_below_main`: one frame named BELOW_MAIN in the module of the
                // first frame below main.
                let module = dump
                    .modules
                    .get(below[0].module as usize)
                    .map(|m| m.path.clone());
                bits.truncate(main + 1);
                let f = Frame {
                    function: Some(BELOW_MAIN.to_string()),
                    file: None,
                    line: None,
                    module,
                    address: String::new(),
                    inlined: false,
                };
                let id = self.frame_id(&f);
                bits.push(FrameBits {
                    id,
                    main: false,
                    start: false,
                    module: u32::MAX,
                });
            }
        }
        Some(bits.iter().map(|b| b.id).collect())
    }

    fn lookup(&mut self, ret: u64, module: Option<&'d Module>) -> Vec<Frame> {
        let address = format!("{ret:#x}");
        let Some(module) = module else {
            return vec![Frame {
                function: None,
                file: None,
                line: None,
                module: None,
                address,
                inlined: false,
            }];
        };
        let key = (
            module.path.clone(),
            module.build_id.clone(),
            module.base,
            ret,
        );
        if let Some(f) = self.found.frames.get(&key) {
            return f.clone();
        }
        let out = self.lookup_file(ret, module);
        self.found.lookups += 1;
        self.found.frames.insert(key, out.clone());
        out
    }

    /// [`Symbolizer::lookup`] in the module's file.
    fn lookup_file(&mut self, ret: u64, module: &'d Module) -> Vec<Frame> {
        let address = format!("{ret:#x}");
        // A return address points after the call: look up the call itself.
        let probe = ret.wrapping_sub(1).wrapping_sub(module.base);
        let path = PathBuf::from(&module.path);
        let unknown = |inlined| Frame {
            function: None,
            file: None,
            line: None,
            module: Some(module.path.clone()),
            address: format!("{probe:#x}"),
            inlined,
        };
        if !self.files.contains_key(&path) {
            let file = self.load(module);
            self.files.insert(path.clone(), file);
        }
        let mut out = Vec::new();
        if let Some(Ok(mut frames)) = self.files[&path]
            .loader
            .as_ref()
            .map(|l| l.find_frames(probe))
        {
            while let Ok(Some(f)) = frames.next() {
                let function = f
                    .function
                    .as_ref()
                    .and_then(|n| n.demangle().ok())
                    .map(|n| n.into_owned());
                out.push(Frame {
                    function,
                    file: f.location.as_ref().and_then(|l| l.file).map(str::to_owned),
                    line: f.location.as_ref().and_then(|l| l.line),
                    module: Some(module.path.clone()),
                    address: address.clone(),
                    inlined: true,
                });
            }
        }
        if out.iter().all(|f| f.function.is_none()) {
            out.clear();
            if let Some(name) = self.files[&path].symbol(probe) {
                out.push(Frame {
                    function: Some(addr2line::demangle_auto(name.into(), None).into_owned()),
                    file: None,
                    line: None,
                    module: Some(module.path.clone()),
                    address: address.clone(),
                    inlined: false,
                });
            }
        }
        match out.last_mut() {
            Some(last) => last.inlined = false,
            None => out.push(unknown(false)),
        }
        out
    }

    fn load(&mut self, module: &Module) -> ModuleFile {
        let path = Path::new(&module.path);
        if module.path.is_empty() || module.path.starts_with("linux-vdso") || !path.is_file() {
            if !module.path.is_empty() && !module.path.starts_with("linux-vdso") {
                self.warnings.push(format!(
                    "{} is not on disk any more: its frames are shown as module+offset",
                    module.path
                ));
            }
            return ModuleFile::NONE;
        }
        if !module.build_id.is_empty() {
            if let Some(on_disk) = build_id_of(path) {
                if on_disk != module.build_id {
                    // Other code at the same offsets: its names and lines would be confidently
                    // wrong (every frame of a rebuilt program named after some other function).
                    self.warnings.push(format!(
                        "{} was rebuilt since the run (its build-id differs): its frames are \
                         shown as module+offset",
                        module.path
                    ));
                    return ModuleFile::NONE;
                }
            }
        }
        let symbols = symbol_table(path);
        match addr2line::Loader::new(path) {
            Ok(l) => ModuleFile {
                loader: Some(l),
                symbols,
            },
            Err(e) => {
                self.warnings.push(format!(
                    "cannot read debug information of {}: {e}",
                    module.path
                ));
                ModuleFile {
                    loader: None,
                    symbols,
                }
            }
        }
    }
}

/// The recorder's own library: its frames never belong in a report.
/// The name of the one frame that stands for the C library's start code outward from `main`,
/// as memcheck shows it.
pub const BELOW_MAIN: &str = "(below main)";

/// Frames outward from `main` that are the C library's start code (`__libc_start_call_main`,
/// `__libc_start_main`, `_start`; without libc's debug info, `libc.so.6+0x27249`) say nothing
/// about the program: they become one `(below main)` frame, as in memcheck. A stack with
/// anything else outward from `main` is left as it is.
fn collapse_below_main(frames: &mut Vec<Frame>) {
    let Some(main) = frames
        .iter()
        .rposition(|f| f.function.as_deref() == Some("main"))
    else {
        return;
    };
    let below = &frames[main + 1..];
    if below.is_empty() || !below.iter().all(is_start_code) {
        return;
    }
    let address = below[0].address.clone();
    // The module of the frame whose address it keeps (libc's), so that the frame still says
    // where it is (a frame in no module reads as a raw address).
    let module = below[0].module.clone();
    frames.truncate(main + 1);
    frames.push(Frame {
        function: Some(BELOW_MAIN.to_string()),
        file: None,
        line: None,
        module,
        address,
        inlined: false,
    });
}

fn is_start_code(f: &Frame) -> bool {
    const START: [&str; 4] = [
        "_start",
        "__libc_start_main",
        "__libc_start_main_impl",
        "__libc_start_call_main",
    ];
    let in_libc = f.module.as_deref().is_some_and(|m| {
        Path::new(m)
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("libc.so") || n.starts_with("libc-"))
    });
    match f.function.as_deref() {
        Some(name) => START.contains(&name.split('@').next().unwrap_or(name)),
        // Unnamed: libc's own static start code (not in its `.dynsym`).
        None => in_libc,
    }
}

fn is_recorder_module(path: &str) -> bool {
    Path::new(path)
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with("libzmtrace"))
}

fn build_id_of(path: &Path) -> Option<Vec<u8>> {
    use object::Object;
    let data = std::fs::read(path).ok()?;
    let file = object::File::parse(&*data).ok()?;
    file.build_id().ok().flatten().map(|b| b.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use zmtrace_format::event::{encode_alloc, pack, EventBuf};
    use zmtrace_format::{write, AllocKind, Process};

    /// Two modules at one address range, A from event 1 to 10, B from 12 on, and a stack in
    /// each (the same return address, two ids); `eras` false writes them as an older writer
    /// did (no sequence numbers).
    fn dump(eras: bool) -> Dump {
        let mut out = write::file_header().to_vec();
        write::process(
            &mut out,
            &Process {
                pid: 1,
                ppid: 0,
                exe: "/x".into(),
                ..Default::default()
            },
        );
        for (path, from, to) in [("/gone/a.so", 1, 10), ("/gone/b.so", 12, 0)] {
            write::module(
                &mut out,
                &Module {
                    base: 0x7000_0000,
                    path: path.into(),
                    build_id: vec![],
                    segments: vec![(0x7000_1000, 0x7000_2000)],
                    seq: if eras { from } else { 0 },
                },
            );
            if to > 0 {
                write::module_gone(&mut out, 0x7000_0000, if eras { to } else { 0 });
            }
        }
        let frames = [0x7000_1234u64];
        write::stacks(
            &mut out,
            [(1u32, &frames[..]), (2, &frames[..])].into_iter(),
            &mut |b| zstd::bulk::compress(b, 1).unwrap(),
        );
        let mut raw = Vec::new();
        for (seq, stack) in [(5u64, 1u32), (15, 2)] {
            let mut b = EventBuf::default();
            encode_alloc(
                &mut b,
                seq,
                seq,
                AllocKind::Malloc,
                0x100 * seq,
                8,
                8,
                stack,
            );
            raw.extend_from_slice(b.as_slice());
        }
        let mut packed = Vec::new();
        pack(&raw, &mut packed);
        let z = zstd::bulk::compress(&packed, 1).unwrap();
        write::events(&mut out, 0, 1, packed.len(), &z);
        Dump::from_bytes(Path::new("t"), out).unwrap()
    }

    fn module_of_stack(sym: &mut Symbolizer<'_>, id: u32) -> String {
        sym.stack(id)[0].module.clone().unwrap()
    }

    #[test]
    fn frames_kept_for_the_next_symbolizer_are_not_looked_up_again() {
        let d = dump(true);
        let mut sym = Symbolizer::new(&d);
        assert_eq!(module_of_stack(&mut sym, 1), "/gone/a.so");
        assert_eq!(module_of_stack(&mut sym, 2), "/gone/b.so");
        // One address in two modules: two lookups.
        let found = sym.take_frames();
        assert_eq!(found.lookups, 2);
        // A later Symbolizer (the next scrape) gives the same frames with no lookup...
        let mut again = Symbolizer::with_frames(&d, found);
        assert_eq!(module_of_stack(&mut again, 1), "/gone/a.so");
        assert_eq!(module_of_stack(&mut again, 2), "/gone/b.so");
        assert_eq!(
            again.address(0x7000_1234)[0].module.as_deref(),
            Some("/gone/b.so")
        );
        assert_eq!(again.take_frames().lookups, 2);
        // ...and only a new address is looked up.
        let mut sym = Symbolizer::new(&d);
        sym.stack(1);
        let mut next = Symbolizer::with_frames(&d, sym.take_frames());
        next.stack(1);
        next.stack(2);
        assert_eq!(next.take_frames().lookups, 2);
    }

    #[test]
    fn a_stack_resolves_against_the_module_mapped_at_its_first_event() {
        let d = dump(true);
        assert!(d.warnings.is_empty(), "{:?}", d.warnings);
        let mut sym = Symbolizer::new(&d);
        assert_eq!(module_of_stack(&mut sym, 1), "/gone/a.so");
        assert_eq!(module_of_stack(&mut sym, 2), "/gone/b.so");
        // Without a time: the module recorded last.
        assert_eq!(
            sym.address(0x7000_1234)[0].module.as_deref(),
            Some("/gone/b.so")
        );
    }

    #[test]
    fn stacks_share_a_site_group_exactly_when_their_frames_have_the_same_keys() {
        use object::{Object, ObjectSymbol, SymbolKind};
        // Real frames: functions of this test program, which has line tables.
        let exe = std::env::current_exe().unwrap();
        let data = std::fs::read(&exe).unwrap();
        let file = object::File::parse(&*data).unwrap();
        let mut funcs: Vec<u64> = file
            .symbols()
            .filter(|s| s.kind() == SymbolKind::Text && s.size() > 64)
            .map(|s| s.address())
            .collect();
        funcs.sort_unstable();
        funcs.dedup();
        let funcs = &funcs[..40];
        let mut out = write::file_header().to_vec();
        write::process(&mut out, &Process::default());
        write::module(
            &mut out,
            &Module {
                base: 0,
                path: exe.to_str().unwrap().into(),
                build_id: vec![],
                segments: vec![(funcs[0], funcs[39] + 64)],
                seq: 0,
            },
        );
        // Per pair of functions: the same addresses twice, then a later call in the first one
        // (its own site or not, as its line says), and an address in no module.
        let mut stacks: Vec<Vec<u64>> = Vec::new();
        for w in funcs.windows(2) {
            stacks.push(vec![w[0] + 1, w[1] + 1]);
            stacks.push(vec![w[0] + 1, w[1] + 1]);
            stacks.push(vec![w[0] + 9, w[1] + 1]);
            stacks.push(vec![w[0] + 1, w[1] + 1, 0x10]);
        }
        write::stacks(
            &mut out,
            stacks
                .iter()
                .enumerate()
                .map(|(i, f)| (i as u32 + 1, &f[..])),
            &mut |b| zstd::bulk::compress(b, 1).unwrap(),
        );
        let d = Dump::from_bytes(Path::new("t"), out).unwrap();
        let mut sym = Symbolizer::new(&d);
        // An id the dump does not have is a site of its own.
        let ids: Vec<u32> = (1..=stacks.len() as u32 + 1).collect();
        let keys: Vec<Vec<FrameKey>> = ids
            .iter()
            .map(|&id| sym.stack(id).iter().map(frame_key).collect())
            .collect();
        assert!(keys[0][0].0.is_some(), "no function name: {:?}", keys[0]);
        let groups: Vec<u32> = ids.iter().map(|&id| sym.site_group(id)).collect();
        let (mut same, mut differ) = (0, 0);
        for i in 0..ids.len() {
            for j in 0..ids.len() {
                assert_eq!(
                    groups[i] == groups[j],
                    keys[i] == keys[j],
                    "stacks {} and {}",
                    ids[i],
                    ids[j]
                );
                if i != j && keys[i] == keys[j] {
                    same += 1;
                } else if i != j {
                    differ += 1;
                }
            }
        }
        assert!(same >= 39 && differ > 0, "{same} {differ}");
    }

    #[test]
    fn an_older_dump_resolves_against_the_module_recorded_last() {
        let d = dump(false);
        let mut sym = Symbolizer::new(&d);
        assert_eq!(module_of_stack(&mut sym, 1), "/gone/b.so");
        assert_eq!(module_of_stack(&mut sym, 2), "/gone/b.so");
    }
}
