//! Offline symbolization: from the modules a dump recorded and the files on disk to function,
//! file and line. DWARF first (with inlined frames), then the ELF symbol tables (`.symtab`, else
//! `.dynsym`: Debian's stripped `redis-server` still names `zmalloc` or `_sdsMakeRoomFor` there),
//! else `module+offset`. Names are demangled (Rust and C++). Each address is looked up once.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::rc::Rc;

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
    /// Frames by return address and module.
    addresses: HashMap<(u64, usize), Rc<Vec<Frame>>>,
    stacks: HashMap<u32, Rc<Vec<Frame>>>,
    /// Problems met (a module missing on disk, a build-id that no longer matches): one line
    /// each, each said once.
    pub warnings: Vec<String>,
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
            addresses: HashMap::new(),
            stacks: HashMap::new(),
            warnings: Vec::new(),
        }
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
            let f = self.address_at(a, seq);
            if f.first()
                .and_then(|f| f.module.as_deref())
                .is_some_and(is_recorder_module)
            {
                continue;
            }
            out.push((a, f));
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
        let module = self.module_of(ret, seq);
        let key = (ret, module.unwrap_or(usize::MAX));
        if let Some(f) = self.addresses.get(&key) {
            return f.clone();
        }
        let frames = Rc::new(self.lookup(ret, module.map(|i| &self.dump.modules[i])));
        self.addresses.insert(key, frames.clone());
        frames
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
                    self.warnings.push(format!(
                        "{} was rebuilt since the run (its build-id differs): its symbols may be wrong",
                        module.path
                    ));
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
    fn an_older_dump_resolves_against_the_module_recorded_last() {
        let d = dump(false);
        let mut sym = Symbolizer::new(&d);
        assert_eq!(module_of_stack(&mut sym, 1), "/gone/b.so");
        assert_eq!(module_of_stack(&mut sym, 2), "/gone/b.so");
    }
}
