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
pub struct Symbolizer<'d> {
    dump: &'d Dump,
    /// Modules by address range: (start, end, index into dump.modules), sorted.
    ranges: Vec<(u64, u64, usize)>,
    files: HashMap<PathBuf, ModuleFile>,
    addresses: HashMap<u64, Rc<Vec<Frame>>>,
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
            .collect();
        // A later record for the same range (a module loaded where another was) wins.
        ranges.sort_by_key(|&(s, _, i)| (s, std::cmp::Reverse(i)));
        ranges.dedup_by_key(|r| r.0);
        Symbolizer {
            dump,
            ranges,
            files: HashMap::new(),
            addresses: HashMap::new(),
            stacks: HashMap::new(),
            warnings: Vec::new(),
        }
    }

    fn module_of(&self, addr: u64) -> Option<&'d Module> {
        let i = self
            .ranges
            .partition_point(|r| r.0 <= addr)
            .checked_sub(1)?;
        let (s, e, m) = self.ranges[i];
        (s <= addr && addr < e).then(|| &self.dump.modules[m])
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
        let addrs = self.dump.stacks.get(&id)?;
        let mut out = Vec::with_capacity(addrs.len());
        for &a in addrs {
            let f = self.address(a);
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

    /// The frames at one return address (inlined calls first).
    pub fn address(&mut self, ret: u64) -> Rc<Vec<Frame>> {
        if let Some(f) = self.addresses.get(&ret) {
            return f.clone();
        }
        let frames = Rc::new(self.lookup(ret));
        self.addresses.insert(ret, frames.clone());
        frames
    }

    fn lookup(&mut self, ret: u64) -> Vec<Frame> {
        let address = format!("{ret:#x}");
        let Some(module) = self.module_of(ret) else {
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
    frames.truncate(main + 1);
    frames.push(Frame {
        function: Some(BELOW_MAIN.to_string()),
        file: None,
        line: None,
        module: None,
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
