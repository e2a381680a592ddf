//! The modules mapped in this process, read with `dl_iterate_phdr`: what the dump records for
//! offline symbolization (path, load bias, segments, build-id) and what the unwinder needs (the
//! in-memory `.eh_frame_hdr` and `.eh_frame`).
//!
//! Paths come from the loader and `/proc/self/exe`, never from `dladdr` or `argv[0]`: programs such
//! as Redis rewrite `argv[0]` into a process title.
//!
//! `MODULES` holds the list and the master copy of the unwinder; `refresh_modules` re-reads
//! them after a `dlopen` or `dlclose` and bumps `MODULES_GENERATION`, which tells each thread
//! to copy the new unwinder.

use std::ffi::CStr;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use framehop::x86_64::UnwinderX86_64;
use framehop::{ExplicitModuleSectionInfo, Module as FhModule, Unwinder};

use crate::sync::SpinLock;

/// One mapped module, with the addresses of its unwind tables in memory.
#[derive(Clone, Debug)]
pub struct LoadedModule {
    pub info: zmtrace_format::Module,
    /// From the lowest to the highest `PT_LOAD` address.
    pub range: Range<u64>,
    eh_frame_hdr: Option<Range<u64>>,
    exec_segment: Option<Range<u64>>,
}

/// Enumerates the modules mapped now. Allocates: call it under the recorder guard.
pub fn enumerate() -> Vec<LoadedModule> {
    let mut out: Vec<LoadedModule> = Vec::new();
    // SAFETY: the callback only reads the program headers the loader hands it.
    unsafe {
        libc::dl_iterate_phdr(
            Some(callback),
            &mut out as *mut Vec<LoadedModule> as *mut libc::c_void,
        );
    }
    out
}

unsafe extern "C" fn callback(
    info: *mut libc::dl_phdr_info,
    _size: libc::size_t,
    data: *mut libc::c_void,
) -> libc::c_int {
    let out = &mut *(data as *mut Vec<LoadedModule>);
    let info = &*info;
    let bias = info.dlpi_addr;
    let name = if info.dlpi_name.is_null() {
        String::new()
    } else {
        CStr::from_ptr(info.dlpi_name)
            .to_string_lossy()
            .into_owned()
    };
    let phdrs = std::slice::from_raw_parts(info.dlpi_phdr, info.dlpi_phnum as usize);
    let mut segments = Vec::new();
    let mut eh_frame_hdr = None;
    let mut exec_segment = None;
    let mut build_id = Vec::new();
    for ph in phdrs {
        let start = bias.wrapping_add(ph.p_vaddr);
        let end = start.wrapping_add(ph.p_memsz);
        match ph.p_type {
            libc::PT_LOAD => {
                segments.push((start, end));
                if ph.p_flags & libc::PF_X != 0 && exec_segment.is_none() {
                    exec_segment = Some(start..end);
                }
            }
            libc::PT_GNU_EH_FRAME => eh_frame_hdr = Some(start..end),
            libc::PT_NOTE if build_id.is_empty() => {
                build_id = find_build_id(std::slice::from_raw_parts(
                    start as *const u8,
                    ph.p_memsz as usize,
                ));
            }
            _ => {}
        }
    }
    if segments.is_empty() {
        return 0;
    }
    let path = if name.is_empty() && out.is_empty() {
        // The first entry with no name is the main program.
        std::fs::read_link("/proc/self/exe")
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default()
    } else {
        name
    };
    let lo = segments.iter().map(|s| s.0).min().unwrap_or(0);
    let hi = segments.iter().map(|s| s.1).max().unwrap_or(0);
    out.push(LoadedModule {
        info: zmtrace_format::Module {
            base: bias,
            path,
            build_id,
            segments,
            seq: 0,
        },
        range: lo..hi,
        eh_frame_hdr,
        exec_segment,
    });
    0
}

/// The GNU build-id note's descriptor, if the notes hold one.
fn find_build_id(notes: &[u8]) -> Vec<u8> {
    let mut pos = 0;
    let align4 = |n: usize| (n + 3) & !3;
    while pos + 12 <= notes.len() {
        let word = |i: usize| u32::from_ne_bytes(notes[i..i + 4].try_into().unwrap()) as usize;
        let (namesz, descsz, ty) = (word(pos), word(pos + 4), word(pos + 8));
        let name_start = pos + 12;
        let desc_start = name_start + align4(namesz);
        let next = desc_start + align4(descsz);
        if next > notes.len() {
            break;
        }
        if ty == 3 && namesz == 4 && &notes[name_start..name_start + 4] == b"GNU\0" {
            return notes[desc_start..desc_start + descsz].to_vec();
        }
        pos = next;
    }
    Vec::new()
}

/// Where `.eh_frame` starts, read from the `.eh_frame_hdr` header (its `eh_frame_ptr` field).
unsafe fn eh_frame_start(hdr: u64) -> Option<u64> {
    let p = hdr as *const u8;
    if *p != 1 {
        return None; // unknown eh_frame_hdr version
    }
    let enc = *p.add(1);
    let field = hdr + 4;
    let value: i64 = match enc & 0x0f {
        0x03 => std::ptr::read_unaligned(field as *const u32) as i64, // udata4
        0x0b => std::ptr::read_unaligned(field as *const i32) as i64, // sdata4
        0x04 | 0x0c => std::ptr::read_unaligned(field as *const i64), // (u|s)data8
        _ => return None,
    };
    match enc & 0x70 {
        0x00 => Some(value as u64),                              // absptr
        0x10 => Some((field as i64).wrapping_add(value) as u64), // pcrel
        0x30 => Some((hdr as i64).wrapping_add(value) as u64),   // datarel (relative to the hdr)
        _ => None,
    }
}

/// Where a module's code and unwind tables are in memory (actual addresses).
#[derive(Clone, Debug)]
pub struct UnwindSections {
    /// The module's address range (all its `PT_LOAD` segments).
    pub range: Range<u64>,
    /// The executable segment.
    pub text: Range<u64>,
    pub eh_frame_hdr: Range<u64>,
    /// `.eh_frame` has no length in the header: this runs to the end of its segment.
    pub eh_frame: Range<u64>,
}

impl LoadedModule {
    /// The module's unwind tables, read in place in memory.
    pub fn unwind_sections(&self) -> Option<UnwindSections> {
        let hdr = self.eh_frame_hdr.clone()?;
        // SAFETY: the range comes from the loader's program headers of a mapped module.
        let eh = unsafe { eh_frame_start(hdr.start)? };
        let seg_end = self
            .info
            .segments
            .iter()
            .find(|&&(s, e)| s <= eh && eh < e)
            .map(|s| s.1)?;
        Some(UnwindSections {
            range: self.range.clone(),
            text: self.exec_segment.clone().unwrap_or(0..0),
            eh_frame_hdr: hdr,
            eh_frame: eh..seg_end,
        })
    }

    /// The module as framehop needs it, with its unwind tables read in place in memory.
    pub fn unwind_module(&self) -> Option<FhModule<&'static [u8]>> {
        let s = self.unwind_sections()?;
        let bias = self.info.base;
        // SAFETY: the ranges come from the loader's program headers of a mapped module; the
        // module stays mapped until a `dlclose`, after which it is removed from the unwinder.
        let slice = |r: &Range<u64>| -> &'static [u8] {
            unsafe { std::slice::from_raw_parts(r.start as *const u8, (r.end - r.start) as usize) }
        };
        let svma = |r: &Range<u64>| (r.start - bias)..(r.end - bias);
        let info = ExplicitModuleSectionInfo {
            base_svma: 0,
            text_svma: self.exec_segment.as_ref().map(svma),
            text: self.exec_segment.as_ref().map(slice),
            eh_frame_hdr_svma: Some(svma(&s.eh_frame_hdr)),
            eh_frame_hdr: Some(slice(&s.eh_frame_hdr)),
            eh_frame_svma: Some(svma(&s.eh_frame)),
            eh_frame: Some(slice(&s.eh_frame)),
            ..Default::default()
        };
        Some(FhModule::new(
            self.info.path.clone(),
            self.range.clone(),
            bias,
            info,
        ))
    }
}

/// An unwinder that knows every module in `modules`.
pub fn build_unwinder(modules: &[LoadedModule]) -> UnwinderX86_64<&'static [u8]> {
    let mut u = UnwinderX86_64::new();
    for m in modules {
        if let Some(fm) = m.unwind_module() {
            u.add_module(fm);
        }
    }
    u
}

/// A change of the module list not yet in the dump, in the order it was seen.
#[derive(Clone, Debug)]
pub(crate) enum ModuleChange {
    Loaded(zmtrace_format::Module),
    Gone { base: u64, seq: u64 },
}

/// The module list and the master copy of the unwinder; threads copy it when `generation` moves.
pub(crate) struct ModuleTable {
    pub list: Vec<LoadedModule>,
    /// Loads and unloads not yet in the dump. A module loaded and unloaded between two flushes
    /// of the writer is here twice, so the dump has it (its frames symbolize) and its end.
    pub pending: Vec<ModuleChange>,
    pub unwinder: Option<framehop::x86_64::UnwinderX86_64<&'static [u8]>>,
}
pub(crate) static MODULES: SpinLock<ModuleTable> = SpinLock::new(ModuleTable {
    list: Vec::new(),
    pending: Vec::new(),
    unwinder: None,
});
/// Bumped when the module list changes (`dlopen`, `dlclose`).
pub(crate) static MODULES_GENERATION: AtomicU64 = AtomicU64::new(0);
/// Set by [`crate::modules_changed`] until [`refresh_modules`] has re-read the list.
pub(crate) static MODULES_DIRTY: AtomicBool = AtomicBool::new(false);
/// The loader's counts of modules loaded and unloaded (`dlpi_adds`, `dlpi_subs`) when the list
/// was last read: a capture that meets code in no known module re-reads the list only when they
/// moved, so code that is in no module at all (a JIT's) costs one cheap query, not a re-read.
static LOADER_ADDS: AtomicU64 = AtomicU64::new(0);
static LOADER_SUBS: AtomicU64 = AtomicU64::new(0);

/// The loader's (adds, subs) counters now: `dl_iterate_phdr` stopped at its first module.
fn loader_counts() -> (u64, u64) {
    unsafe extern "C" fn first(
        info: *mut libc::dl_phdr_info,
        size: libc::size_t,
        data: *mut libc::c_void,
    ) -> libc::c_int {
        let out = &mut *(data as *mut (u64, u64));
        // The counters are there since glibc 2.4; `size` says whether this loader has them.
        if size >= std::mem::offset_of!(libc::dl_phdr_info, dlpi_subs) + 8 {
            *out = ((*info).dlpi_adds, (*info).dlpi_subs);
        }
        1 // stop: the counters are the same in every entry
    }
    let mut counts = (0u64, 0u64);
    // SAFETY: the callback writes only `counts`, which outlives the call.
    unsafe {
        libc::dl_iterate_phdr(
            Some(first),
            &mut counts as *mut (u64, u64) as *mut libc::c_void,
        );
    }
    counts
}

/// Re-reads the module list if it changed, and publishes a new unwinder generation.
pub(crate) fn refresh_modules() {
    if !MODULES_DIRTY.swap(false, Ordering::AcqRel) {
        return;
    }
    refresh();
}

/// For a capture that met a return address in no module it knows, inside the recorder guard:
/// re-reads the module list when the loader loaded or unloaded something since it was last
/// read (a library being loaded, whose constructors allocate before `dlopen` returns). True when
/// it did. Allocates only from the recorder's own heap and takes no lock that a thread can hold
/// while it captures: the loader's list lock (`dl_iterate_phdr` takes it, and `dlopen` does not
/// hold it while constructors run), then `MODULES`, then the recorder's heap, as
/// [`refresh_modules`] does.
#[cold]
#[inline(never)]
pub(crate) fn refresh_for_unknown_code() -> bool {
    let (adds, subs) = loader_counts();
    if adds == LOADER_ADDS.load(Ordering::Acquire) && subs == LOADER_SUBS.load(Ordering::Acquire) {
        return false;
    }
    refresh();
    true
}

/// Two entries of the loader's list are the same module: the same load bias and path. (A
/// library unloaded and another loaded at the same address, both unseen in between, are two.)
fn same_module(a: &LoadedModule, b: &LoadedModule) -> bool {
    a.info.base == b.info.base && a.info.path == b.info.path
}

/// The modules mapped when the recorder starts: all of them from the start (sequence 0).
pub(crate) fn install(list: Vec<LoadedModule>) {
    let counts = loader_counts();
    let mut t = MODULES.lock();
    t.unwinder = Some(build_unwinder(&list));
    t.pending = list
        .iter()
        .map(|m| ModuleChange::Loaded(m.info.clone()))
        .collect();
    t.list = list;
    drop(t);
    LOADER_ADDS.store(counts.0, Ordering::Release);
    LOADER_SUBS.store(counts.1, Ordering::Release);
    MODULES_GENERATION.fetch_add(1, Ordering::Release);
}

fn refresh() {
    let counts = loader_counts();
    let mut now = enumerate();
    let mut t = MODULES.lock();
    // Numbered under the lock, so that a load and an unload seen by two threads are in order:
    // an event takes its number after its stack is captured, so the events of a module found
    // during a capture are numbered from here on, and those before an unload below here.
    let seq = crate::state::SEQ.load(Ordering::Acquire);
    let gone: Vec<LoadedModule> = t
        .list
        .iter()
        .filter(|m| !now.iter().any(|n| same_module(m, n)))
        .cloned()
        .collect();
    now.retain(|n| !t.list.iter().any(|m| same_module(m, n)));
    if gone.is_empty() && now.is_empty() {
        LOADER_ADDS.store(counts.0, Ordering::Release);
        LOADER_SUBS.store(counts.1, Ordering::Release);
        return;
    }
    // The unwinder's rules for code that is gone (before the new generation is published, so
    // no thread that sees it can still find them).
    for m in &gone {
        crate::unwind::forget_module(m.range.clone());
        t.pending.push(ModuleChange::Gone {
            base: m.info.base,
            seq,
        });
    }
    // Keep the dump's order: modules already listed stay first, new ones are appended.
    t.list.retain(|m| !gone.iter().any(|g| same_module(m, g)));
    for mut m in now {
        m.info.seq = seq;
        t.pending.push(ModuleChange::Loaded(m.info.clone()));
        t.list.push(m);
    }
    let unwinder = build_unwinder(&t.list);
    t.unwinder = Some(unwinder);
    drop(t);
    // Stacks through code that is gone: a later module at the same addresses gets stacks of
    // its own, so each stack id belongs to one module era (what the analyzer relies on).
    for m in &gone {
        crate::stacks::retire(m.range.clone());
    }
    LOADER_ADDS.store(counts.0, Ordering::Release);
    LOADER_SUBS.store(counts.1, Ordering::Release);
    MODULES_GENERATION.fetch_add(1, Ordering::Release);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_test_binary_and_libc_with_unwind_tables() {
        let mods = enumerate();
        let exe = std::fs::read_link("/proc/self/exe").unwrap();
        let main = &mods[0];
        assert_eq!(main.info.path, exe.to_string_lossy());
        assert!(main.unwind_module().is_some());
        assert!(
            !main.info.build_id.is_empty(),
            "rustc links with a build-id"
        );
        let here = finds_the_test_binary_and_libc_with_unwind_tables as *const () as u64;
        assert!(main.range.contains(&here));
        assert!(mods.iter().any(|m| m.info.path.contains("libc.so")));
    }
}
