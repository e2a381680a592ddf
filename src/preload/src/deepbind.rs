//! Libraries loaded with `RTLD_DEEPBIND`: their symbols are looked up in their own scope (the
//! library and its dependencies, libc among them) before the global one, so their `malloc` and
//! `free` bind to libc's, past our hooks. Their allocations would be missed, and a block of the
//! program's that they free would stay live in the dump (a phantom).
//!
//! After such a `dlopen`, the relocations of every module it loaded that name one of our hooks
//! (`R_X86_64_JUMP_SLOT`, `R_X86_64_GLOB_DAT`, `R_X86_64_64`) are pointed at the hook instead,
//! as heaptrack does; a slot in the RELRO part is made writable for the write and read-only
//! again. Resolved slots are overwritten; lazily bound ones never reach the resolver.

use std::ffi::{c_char, c_int, c_void, CStr};

extern "C" {
    // entry.S and exec_variadic.c: hooks that are not Rust functions.
    fn exit(status: c_int) -> !;
    fn _exit(status: c_int) -> !;
    fn _Exit(status: c_int) -> !;
    fn execl(path: *const c_char, arg: *const c_char, ...) -> c_int;
    fn execlp(file: *const c_char, arg: *const c_char, ...) -> c_int;
    fn execle(path: *const c_char, arg: *const c_char, ...) -> c_int;
}

/// The symbols we interpose that a library's allocator calls may name.
fn hook_for(name: &[u8]) -> Option<usize> {
    let f: usize = match name {
        b"malloc" => crate::malloc as *const () as usize,
        b"calloc" => crate::calloc as *const () as usize,
        b"realloc" => crate::realloc as *const () as usize,
        b"reallocarray" => crate::reallocarray as *const () as usize,
        b"free" => crate::free as *const () as usize,
        b"malloc_usable_size" => crate::malloc_usable_size as *const () as usize,
        b"memalign" => crate::memalign as *const () as usize,
        b"aligned_alloc" => crate::aligned_alloc as *const () as usize,
        b"valloc" => crate::valloc as *const () as usize,
        b"pvalloc" => crate::pvalloc as *const () as usize,
        b"posix_memalign" => crate::posix_memalign as *const () as usize,
        // One function under both names (maps.c).
        b"mmap" | b"mmap64" => crate::mmap as *const () as usize,
        b"munmap" => crate::munmap as *const () as usize,
        b"mremap" => crate::mremap as *const () as usize,
        // The rest of what we interpose: a library bound past them would deadlock a thread that
        // asks for its own attributes first (see `crate::pthread_getattr_np`), end the process
        // without the check knowing its caller's frame, exec a program without its dump, load
        // or unload modules unseen, or close or replace the dump's descriptor and the
        // recorder's signal handlers.
        b"pthread_getattr_np" => crate::pthread_getattr_np as *const () as usize,
        b"exit" => exit as *const () as usize,
        b"_exit" => _exit as *const () as usize,
        b"_Exit" => _Exit as *const () as usize,
        b"abort" => crate::abort as *const () as usize,
        b"execve" => crate::execve as *const () as usize,
        b"execv" => crate::execv as *const () as usize,
        b"execvp" => crate::execvp as *const () as usize,
        b"execvpe" => crate::execvpe as *const () as usize,
        b"fexecve" => crate::fexecve as *const () as usize,
        b"execl" => execl as *const () as usize,
        b"execlp" => execlp as *const () as usize,
        b"execle" => execle as *const () as usize,
        b"dlopen" => crate::dlopen as *const () as usize,
        b"dlclose" => crate::dlclose as *const () as usize,
        b"close" => crate::fds::close as *const () as usize,
        b"dup" => crate::fds::dup as *const () as usize,
        b"dup2" => crate::fds::dup2 as *const () as usize,
        b"dup3" => crate::fds::dup3 as *const () as usize,
        b"close_range" => crate::fds::close_range as *const () as usize,
        b"closefrom" => crate::fds::closefrom as *const () as usize,
        b"sigaction" => crate::signals::sigaction as *const () as usize,
        b"signal" => crate::signals::signal as *const () as usize,
        _ => return None,
    };
    Some(f)
}

/// The load addresses of the modules loaded now.
pub fn loaded() -> Vec<usize> {
    unsafe extern "C" fn cb(info: *mut libc::dl_phdr_info, _: usize, data: *mut c_void) -> c_int {
        (*(data as *mut Vec<usize>)).push((*info).dlpi_addr as usize);
        0
    }
    let mut v = Vec::new();
    // SAFETY: the callback only reads the address the loader hands it.
    unsafe { libc::dl_iterate_phdr(Some(cb), &mut v as *mut Vec<usize> as *mut c_void) };
    v
}

/// Points the hooked symbols' relocations of every module loaded since `before` at our hooks.
pub fn rebind_new(before: &[usize]) {
    unsafe extern "C" fn cb(info: *mut libc::dl_phdr_info, _: usize, data: *mut c_void) -> c_int {
        let before = &*(data as *const Vec<usize>);
        let info = &*info;
        if !before.contains(&(info.dlpi_addr as usize)) && info.dlpi_addr != 0 {
            rebind(info);
        }
        0
    }
    let before = before.to_vec();
    // SAFETY: the callback reads the program headers and dynamic sections the loader mapped.
    unsafe { libc::dl_iterate_phdr(Some(cb), &before as *const Vec<usize> as *mut c_void) };
}

/// `Elf64_Dyn` (not in the libc crate).
#[repr(C)]
struct Dyn {
    tag: i64,
    val: u64,
}
const DT_NULL: i64 = 0;
const DT_PLTRELSZ: i64 = 2;
const DT_STRTAB: i64 = 5;
const DT_SYMTAB: i64 = 6;
const DT_RELA: i64 = 7;
const DT_RELASZ: i64 = 8;
const DT_JMPREL: i64 = 23;

const R_X86_64_64: u32 = 1;
const R_X86_64_GLOB_DAT: u32 = 6;
const R_X86_64_JUMP_SLOT: u32 = 7;

/// Rewrites one module's relocations of the hooked symbols.
unsafe fn rebind(info: &libc::dl_phdr_info) {
    let base = info.dlpi_addr as usize;
    let phdrs = std::slice::from_raw_parts(info.dlpi_phdr, info.dlpi_phnum as usize);
    let Some(dynamic) = phdrs.iter().find(|p| p.p_type == libc::PT_DYNAMIC) else {
        return;
    };
    let relro = phdrs
        .iter()
        .find(|p| p.p_type == libc::PT_GNU_RELRO)
        .map(|p| {
            // What the loader made read-only: whole pages only (`_dl_protect_relro`).
            let page = crate::real::page_size();
            let s = (base + p.p_vaddr as usize) & !(page - 1);
            s..(base + p.p_vaddr as usize + p.p_memsz as usize) & !(page - 1)
        });
    // The loader has made the dynamic section's addresses absolute (glibc on x86-64); an
    // address below the module's base is an offset still.
    let abs = |v: u64| -> usize {
        let v = v as usize;
        if v < base {
            base + v
        } else {
            v
        }
    };
    let (mut symtab, mut strtab) = (0usize, 0usize);
    let mut tables = [(0usize, 0usize); 2]; // (DT_RELA, DT_RELASZ), (DT_JMPREL, DT_PLTRELSZ)
    let mut d = (base + dynamic.p_vaddr as usize) as *const Dyn;
    while (*d).tag != DT_NULL {
        let v = (*d).val;
        match (*d).tag {
            DT_SYMTAB => symtab = abs(v),
            DT_STRTAB => strtab = abs(v),
            DT_RELA => tables[0].0 = abs(v),
            DT_RELASZ => tables[0].1 = v as usize,
            DT_JMPREL => tables[1].0 = abs(v),
            DT_PLTRELSZ => tables[1].1 = v as usize,
            _ => {}
        }
        d = d.add(1);
    }
    if symtab == 0 || strtab == 0 {
        return;
    }
    let page = crate::real::page_size();
    for (table, size) in tables {
        if table == 0 {
            continue;
        }
        let relas = std::slice::from_raw_parts(
            table as *const libc::Elf64_Rela,
            size / std::mem::size_of::<libc::Elf64_Rela>(),
        );
        for r in relas {
            let kind = (r.r_info & 0xffff_ffff) as u32;
            if !matches!(kind, R_X86_64_JUMP_SLOT | R_X86_64_GLOB_DAT | R_X86_64_64) {
                continue;
            }
            let sym = &*((symtab as *const libc::Elf64_Sym).add((r.r_info >> 32) as usize));
            if sym.st_name == 0 || (kind == R_X86_64_64 && r.r_addend != 0) {
                continue;
            }
            let name = CStr::from_ptr((strtab + sym.st_name as usize) as *const libc::c_char);
            let Some(hook) = hook_for(name.to_bytes()) else {
                continue;
            };
            let slot = (base + r.r_offset as usize) as *mut usize;
            if slot.read() == hook {
                continue;
            }
            let start = slot as usize & !(page - 1);
            let in_relro = relro.as_ref().is_some_and(|r| r.contains(&(slot as usize)));
            if in_relro
                && libc::mprotect(
                    start as *mut c_void,
                    page,
                    libc::PROT_READ | libc::PROT_WRITE,
                ) != 0
            {
                continue;
            }
            slot.write(hook);
            if in_relro {
                libc::mprotect(start as *mut c_void, page, libc::PROT_READ);
            }
        }
    }
}
