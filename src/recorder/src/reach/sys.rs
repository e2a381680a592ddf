//! The check's own memory and its view of the process, both usable while other threads are
//! stopped inside `malloc`: [`Buf`], an array in an anonymous mapping of its own, and `/proc`
//! (the memory map, the threads, their blocked signals and stack pointers) read with plain
//! system calls into such arrays.

use std::ffi::{c_int, c_void, CStr};

/// A growable array in an anonymous mapping of its own: usable while other threads are stopped
/// inside `malloc`, and never part of the trace.
pub(crate) struct Buf<T> {
    ptr: *mut T,
    pub(super) len: usize,
    cap: usize,
}

impl<T> Buf<T> {
    pub(crate) const fn new() -> Buf<T> {
        Buf {
            ptr: std::ptr::null_mut(),
            len: 0,
            cap: 0,
        }
    }

    /// Room for `extra` more elements; false when the system refuses the memory.
    pub(crate) fn reserve(&mut self, extra: usize) -> bool {
        let Some(need) = self.len.checked_add(extra) else {
            return false;
        };
        if need <= self.cap {
            return true;
        }
        let size = std::mem::size_of::<T>().max(1);
        let cap = need.max(self.cap.saturating_mul(2)).max(4096 / size);
        let Some(bytes) = cap.checked_mul(size) else {
            return false;
        };
        // A raw system call, not the program's (interposed) `mmap`: the check's memory is
        // never taken for one of the program's own mappings.
        let Some(p) = crate::heap::map_anon(bytes) else {
            return false;
        };
        // SAFETY: a fresh private anonymous mapping; the old one is copied and unmapped.
        unsafe {
            if !self.ptr.is_null() {
                std::ptr::copy_nonoverlapping(self.ptr, p.as_ptr().cast::<T>(), self.len);
                crate::heap::unmap(self.ptr.cast(), self.cap * size);
            }
        }
        self.ptr = p.as_ptr().cast();
        self.cap = cap;
        true
    }

    pub(crate) fn push(&mut self, v: T) -> bool {
        if !self.reserve(1) {
            return false;
        }
        // SAFETY: reserve made room for one more.
        unsafe { self.ptr.add(self.len).write(v) };
        self.len += 1;
        true
    }

    /// Sets the length within the capacity (the elements up to it must be written).
    pub(super) fn set_len(&mut self, len: usize) {
        assert!(len <= self.cap || (len == 0 && self.cap == 0));
        self.len = len;
    }

    pub(super) fn pop(&mut self) -> Option<T> {
        if self.len == 0 {
            return None;
        }
        self.len -= 1;
        // SAFETY: below len, written by push.
        Some(unsafe { self.ptr.add(self.len).read() })
    }

    pub(crate) fn as_slice(&self) -> &[T] {
        if self.ptr.is_null() {
            return &[];
        }
        // SAFETY: len elements were written.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }

    pub(crate) fn as_mut_slice(&mut self) -> &mut [T] {
        if self.ptr.is_null() {
            return &mut [];
        }
        // SAFETY: len elements were written; we hold the only reference.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

impl<T: Copy> Buf<T> {
    /// `n` copies of `v`.
    pub(super) fn filled(n: usize, v: T) -> Option<Buf<T>> {
        let mut b = Buf::new();
        if !b.reserve(n) {
            return None;
        }
        for _ in 0..n {
            b.push(v);
        }
        Some(b)
    }
}

/// Elements are plain data or atomics: nothing to drop but the mapping.
impl<T> Drop for Buf<T> {
    fn drop(&mut self) {
        if !self.ptr.is_null() {
            // Our own mapping, of cap elements.
            crate::heap::unmap(self.ptr.cast(), self.cap * std::mem::size_of::<T>().max(1));
        }
    }
}

/// Reads a whole (small) file into `out`.
pub(super) fn read_file(path: &CStr, out: &mut Buf<u8>) -> bool {
    out.len = 0;
    // SAFETY: plain syscalls into memory we own.
    unsafe {
        let fd = libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
        if fd < 0 {
            return false;
        }
        loop {
            if !out.reserve(4096) {
                break;
            }
            let n = libc::read(fd, out.ptr.add(out.len).cast(), out.cap - out.len);
            if n < 0 && *libc::__errno_location() == libc::EINTR {
                continue;
            }
            if n <= 0 {
                break;
            }
            out.len += n as usize;
        }
        libc::close(fd);
    }
    true
}

/// `/proc/self/task/<tid>/<leaf>` as a C string, in a buffer on the stack.
fn task_path<'a>(tid: u32, leaf: &[u8], buf: &'a mut [u8; 64]) -> Option<&'a CStr> {
    let mut digits = [0u8; 10];
    let mut n = 0;
    let mut t = tid;
    loop {
        digits[n] = b'0' + (t % 10) as u8;
        n += 1;
        t /= 10;
        if t == 0 {
            break;
        }
    }
    let head = b"/proc/self/task/";
    let len = head.len() + n + 1 + leaf.len();
    if len + 1 > buf.len() {
        return None;
    }
    buf[..head.len()].copy_from_slice(head);
    for i in 0..n {
        buf[head.len() + i] = digits[n - 1 - i];
    }
    buf[head.len() + n] = b'/';
    buf[head.len() + n + 1..len].copy_from_slice(leaf);
    buf[len] = 0;
    CStr::from_bytes_with_nul(&buf[..=len]).ok()
}

fn parse_hex(s: &[u8]) -> Option<u64> {
    let s = s.strip_prefix(b"0x").unwrap_or(s);
    if s.is_empty() || s.len() > 16 {
        return None;
    }
    let mut v = 0u64;
    for &c in s {
        let d = match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            b'A'..=b'F' => c - b'A' + 10,
            _ => return None,
        };
        v = v << 4 | u64::from(d);
    }
    Some(v)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum MapKind {
    /// `[heap]`: the `brk` heap, where the allocator keeps blocks.
    Heap,
    /// `[stack]`: the main thread's stack.
    Stack,
    Other,
}

#[derive(Clone, Copy, Debug)]
pub(super) struct Mapping {
    pub(super) start: u64,
    pub(super) end: u64,
    pub(super) readable: bool,
    pub(super) writable: bool,
    pub(super) executable: bool,
    /// Backed by a file (an inode), not anonymous memory.
    pub(super) file: bool,
    /// A character or block device is mapped: never read (`/dev/zero` is not one of them).
    pub(super) device: bool,
    pub(super) kind: MapKind,
}

/// `/proc/self/maps`, in address order.
pub(super) fn read_maps(text: &mut Buf<u8>, maps: &mut Buf<Mapping>) -> bool {
    maps.len = 0;
    if !read_file(c"/proc/self/maps", text) {
        return false;
    }
    for line in text.as_slice().split(|&c| c == b'\n') {
        let mut fields = line.split(|&c| c == b' ').filter(|f| !f.is_empty());
        let (Some(range), Some(perms)) = (fields.next(), fields.next()) else {
            continue;
        };
        let mut ends = range.split(|&c| c == b'-');
        let (Some(start), Some(end)) = (
            ends.next().and_then(parse_hex),
            ends.next().and_then(parse_hex),
        ) else {
            continue;
        };
        // offset, device, inode, then the name (if any)
        let _offset = fields.next();
        let dev = fields.next().unwrap_or(b"00:00");
        let inode = fields.next().unwrap_or(b"0");
        let name = fields.next().unwrap_or(b"");
        let kind = match name {
            b"[heap]" => MapKind::Heap,
            b"[stack]" => MapKind::Stack,
            _ => MapKind::Other,
        };
        let file = inode != b"0";
        // Device files live on devtmpfs (major 0, like every pseudo file system): a mapping of
        // one is named under /dev/ but is no regular file of /dev/shm.
        let device = file
            && name.starts_with(b"/dev/")
            && !name.starts_with(b"/dev/shm/")
            && name != b"/dev/zero"
            && dev.starts_with(b"00:");
        maps.push(Mapping {
            start,
            end,
            readable: perms.first() == Some(&b'r'),
            writable: perms.get(1) == Some(&b'w'),
            executable: perms.get(2) == Some(&b'x'),
            file,
            device,
            kind,
        });
    }
    true
}

pub(super) fn mapping_of(maps: &[Mapping], addr: u64) -> Option<Mapping> {
    let i = maps.partition_point(|m| m.start <= addr);
    let m = *maps.get(i.checked_sub(1)?)?;
    (addr < m.end).then_some(m)
}

/// The threads of this process (`/proc/self/task`).
pub(super) fn list_threads(out: &mut Buf<u32>) {
    out.len = 0;
    // SAFETY: plain syscalls; the directory entries are parsed within the bytes read.
    unsafe {
        let fd = libc::open(
            c"/proc/self/task".as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        );
        if fd < 0 {
            return;
        }
        let mut buf = [0u8; 4096];
        loop {
            let n = libc::syscall(libc::SYS_getdents64, fd, buf.as_mut_ptr(), buf.len());
            if n <= 0 {
                break;
            }
            let mut pos = 0usize;
            while pos + 19 < n as usize {
                // struct linux_dirent64: ino u64, off i64, reclen u16, type u8, name
                let reclen = u16::from_ne_bytes([buf[pos + 16], buf[pos + 17]]) as usize;
                if reclen == 0 || pos + reclen > n as usize {
                    break;
                }
                let name = &buf[pos + 19..pos + reclen];
                let name = &name[..name.iter().position(|&c| c == 0).unwrap_or(name.len())];
                let mut tid = 0u32;
                let numeric = !name.is_empty()
                    && name.iter().all(|&c| {
                        tid = tid
                            .wrapping_mul(10)
                            .wrapping_add(u32::from(c.wrapping_sub(b'0')));
                        c.is_ascii_digit()
                    });
                if numeric {
                    out.push(tid);
                }
                pos += reclen;
            }
        }
        libc::close(fd);
    }
}

/// True when thread `tid` blocks signal `sig` (`SigBlk` in its status): it cannot be stopped.
pub(super) fn blocks_signal(tid: u32, sig: c_int, text: &mut Buf<u8>) -> bool {
    let mut path = [0u8; 64];
    let Some(p) = task_path(tid, b"status", &mut path) else {
        return false;
    };
    if !read_file(p, text) {
        return false;
    }
    text.as_slice()
        .split(|&c| c == b'\n')
        .find_map(|l| l.strip_prefix(b"SigBlk:"))
        .and_then(|v| parse_hex(v.trim_ascii()))
        .is_some_and(|mask| sig >= 1 && mask >> (sig - 1) & 1 == 1)
}

/// The stack pointer of a thread blocked in a system call (`/proc/self/task/<tid>/syscall`).
pub(super) fn syscall_sp(tid: u32, text: &mut Buf<u8>) -> Option<u64> {
    let mut path = [0u8; 64];
    if !read_file(task_path(tid, b"syscall", &mut path)?, text) {
        return None;
    }
    // "nr arg1 … arg6 sp pc" in a system call, "-1 sp pc" blocked elsewhere, "running".
    let mut words = [0u64; 9];
    let mut n = 0;
    for w in text.as_slice().split(|c| c.is_ascii_whitespace()) {
        if w.is_empty() {
            continue;
        }
        if n == words.len() {
            return None;
        }
        words[n] = if w == b"-1" { u64::MAX } else { parse_hex(w)? };
        n += 1;
    }
    match n {
        9 => Some(words[7]),
        3 => Some(words[1]),
        _ => None,
    }
}

pub(super) fn gettid() -> u32 {
    // SAFETY: no preconditions.
    unsafe { libc::syscall(libc::SYS_gettid) as u32 }
}

/// The thread pointer: `%fs:0` holds the TCB's address (x86-64 TLS ABI, variant II).
#[inline(always)]
pub(super) fn thread_pointer() -> u64 {
    let fs: u64;
    // SAFETY: reads the first word of this thread's TCB, which points to itself.
    unsafe {
        std::arch::asm!("mov {}, qword ptr fs:[0]", out(reg) fs, options(nostack, readonly, preserves_flags));
    }
    fs
}

/// Reads `len` bytes of our own memory at `addr` without faulting; returns the bytes read.
pub(crate) fn read_own(addr: u64, buf: &mut [u64], len: usize) -> usize {
    let local = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: len.min(buf.len() * 8),
    };
    let remote = libc::iovec {
        iov_base: addr as *mut c_void,
        iov_len: local.iov_len,
    };
    // Every argument a full word: `syscall` is variadic and reads each as a `long`, and the last
    // one goes on the stack, where a 32-bit `0` leaves the upper half to whatever was there (the
    // kernel then refuses the flags with EINVAL and nothing is read).
    // SAFETY: the kernel copies into our buffer and fails instead of faulting.
    let n = unsafe {
        libc::syscall(
            libc::SYS_process_vm_readv,
            libc::getpid() as libc::c_long,
            &local as *const libc::iovec,
            1 as libc::c_ulong,
            &remote as *const libc::iovec,
            1 as libc::c_ulong,
            0 as libc::c_ulong,
        )
    };
    if n < 0 {
        0
    } else {
        (n as usize) & !7
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Leaves non-zero words in the stack below the caller's frame, where the next call's frame
    /// (and its stack-passed arguments) will be.
    #[inline(never)]
    fn dirty_the_stack() {
        let junk = [u64::MAX; 512];
        std::hint::black_box(&junk);
    }

    #[inline(never)]
    fn read_own_here(src: &[u64; 4]) -> usize {
        let mut buf = [0u64; 4];
        read_own(src.as_ptr() as u64, &mut buf, 32)
    }

    #[test]
    fn read_own_reads_from_a_dirty_stack() {
        // process_vm_readv's last argument goes on the stack: passed as a 32-bit int, its upper
        // half was whatever the stack held, and the kernel refused the call (EINVAL).
        let src = [1u64, 2, 3, 4];
        for _ in 0..3 {
            dirty_the_stack();
            assert_eq!(read_own_here(std::hint::black_box(&src)), 32);
        }
    }

    #[test]
    fn proc_helpers_parse_this_process() {
        let mut tids = Buf::new();
        list_threads(&mut tids);
        assert!(tids.as_slice().contains(&gettid()));
        let (mut text, mut maps) = (Buf::new(), Buf::new());
        assert!(read_maps(&mut text, &mut maps));
        let here = 0u64;
        let m = mapping_of(maps.as_slice(), &here as *const u64 as u64).expect("our stack");
        assert!(m.readable);
        let mut p = [0u8; 64];
        assert_eq!(
            task_path(1234, b"status", &mut p).unwrap().to_bytes(),
            b"/proc/self/task/1234/status"
        );
    }
}
