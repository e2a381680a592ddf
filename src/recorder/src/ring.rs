//! A single-producer, single-consumer byte ring: one per thread. The owning thread appends whole
//! encoded events with plain stores and one release store, on cache lines the drainer does not
//! write; whoever holds the dump writer's lock drains it. No lock is taken on the hot path, and a thread never waits for the disk unless
//! its ring is full.

use std::alloc::{alloc, dealloc, Layout};
use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Keeps what it holds on cache lines of its own (two of them: the adjacent-line prefetcher
/// pulls lines in pairs), so that a store by one side does not take the other side's line away.
#[repr(align(128))]
struct Own<T>(T);

/// The producer's side: written by the owning thread on every push.
struct Producer {
    /// Producer position (monotonic). Written only by the owning thread.
    tail: AtomicUsize,
    /// The consumer position as the producer last read it: never ahead of `head`, so the room
    /// it gives is never more than there is. Read again only when that room does not suffice,
    /// so a push does not load the line the drainer writes.
    head_seen: Cell<usize>,
}

#[repr(C)]
pub struct Ring {
    /// Read-only after `new`: shared by both sides without traffic.
    buf: *mut u8,
    mask: usize,
    producer: Own<Producer>,
    /// Consumer position (monotonic). Written only by the drainer, once per chunk it packs.
    head: Own<AtomicUsize>,
}

// SAFETY: the producer's fields are touched by the owning thread only, the drainer's by the
// holder of the writer's lock; they meet through `tail` and `head` (release/acquire).
unsafe impl Sync for Ring {}
unsafe impl Send for Ring {}

impl Ring {
    /// `capacity` must be a power of two.
    pub fn new(capacity: usize) -> Ring {
        assert!(capacity.is_power_of_two());
        // Not zeroed: only published bytes are ever read, and pages the thread never fills are
        // never touched (a thread that records little does not pay for the whole ring).
        // SAFETY: a non-zero size.
        let buf = unsafe { alloc(Self::layout(capacity)) };
        if buf.is_null() {
            std::alloc::handle_alloc_error(Self::layout(capacity));
        }
        Ring {
            buf,
            mask: capacity - 1,
            producer: Own(Producer {
                tail: AtomicUsize::new(0),
                head_seen: Cell::new(0),
            }),
            head: Own(AtomicUsize::new(0)),
        }
    }

    fn layout(capacity: usize) -> Layout {
        Layout::from_size_align(capacity, 64).expect("ring layout")
    }

    pub fn capacity(&self) -> usize {
        self.mask + 1
    }

    pub fn len(&self) -> usize {
        self.producer
            .0
            .tail
            .load(Ordering::Acquire)
            .wrapping_sub(self.head.0.load(Ordering::Acquire))
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes pushed since the ring was made (wrapping): moves on whenever its thread records.
    pub fn pushed(&self) -> usize {
        self.producer.0.tail.load(Ordering::Acquire)
    }

    /// Room for `n` more bytes, as far as the producer knows: the drainer's position is read
    /// again only when the one seen last does not leave enough.
    #[inline(always)]
    fn has_room(&self, tail: usize, n: usize) -> bool {
        let p = &self.producer.0;
        if self.capacity() - tail.wrapping_sub(p.head_seen.get()) >= n {
            return true;
        }
        p.head_seen.set(self.head.0.load(Ordering::Acquire));
        self.capacity() - tail.wrapping_sub(p.head_seen.get()) >= n
    }

    /// More than half the ring is waiting for the drainer (the writer should be woken).
    ///
    /// # Safety
    /// Only the owning thread may ask (it reads the producer's own copy of the drainer's place).
    #[inline]
    pub unsafe fn over_half(&self) -> bool {
        let tail = self.producer.0.tail.load(Ordering::Relaxed);
        !self.has_room(tail, self.capacity() / 2)
    }

    /// Appends `bytes` whole, or returns false if they do not fit.
    ///
    /// # Safety
    /// Only the owning thread may push.
    #[inline]
    pub unsafe fn push(&self, bytes: &[u8]) -> bool {
        let tail = self.producer.0.tail.load(Ordering::Relaxed);
        if !self.has_room(tail, bytes.len()) {
            return false;
        }
        let start = tail & self.mask;
        let first = bytes.len().min(self.capacity() - start);
        let base = self.buf;
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), base.add(start), first);
        std::ptr::copy_nonoverlapping(bytes.as_ptr().add(first), base, bytes.len() - first);
        self.producer
            .0
            .tail
            .store(tail.wrapping_add(bytes.len()), Ordering::Release);
        true
    }

    /// Room for `n` bytes in one piece at the tail (not wrapping around), for the owner to
    /// write an event into in place and then [`Ring::publish`]; None when there is none there.
    ///
    /// # Safety
    /// Only the owning thread may ask, and nothing else may push before its `publish`.
    #[inline]
    pub unsafe fn slot(&self, n: usize) -> Option<*mut u8> {
        let tail = self.producer.0.tail.load(Ordering::Relaxed);
        let start = tail & self.mask;
        (self.capacity() - start >= n && self.has_room(tail, n)).then(|| self.buf.add(start))
    }

    /// Publishes the first `len` bytes of the [`Ring::slot`] just taken.
    ///
    /// # Safety
    /// As [`Ring::slot`], whose `n` was at least `len`; the bytes are written.
    #[inline]
    pub unsafe fn publish(&self, len: usize) {
        let tail = self.producer.0.tail.load(Ordering::Relaxed);
        self.producer
            .0
            .tail
            .store(tail.wrapping_add(len), Ordering::Release);
    }

    /// Everything published so far, in place: up to the end of the buffer, and what wrapped
    /// around to its start. The producer does not write there until [`Ring::consume`] lets it.
    ///
    /// # Safety
    /// Only one drainer at a time (the caller holds the dump writer's lock), and the slices are
    /// dropped before `consume`.
    pub unsafe fn readable(&self) -> (&[u8], &[u8]) {
        let head = self.head.0.load(Ordering::Relaxed);
        let tail = self.producer.0.tail.load(Ordering::Acquire);
        let n = tail.wrapping_sub(head);
        let start = head & self.mask;
        let first = n.min(self.capacity() - start);
        let base = self.buf as *const u8;
        (
            std::slice::from_raw_parts(base.add(start), first),
            std::slice::from_raw_parts(base, n - first),
        )
    }

    /// Gives `n` bytes read through [`Ring::readable`] back to the producer.
    ///
    /// # Safety
    /// As [`Ring::readable`]; `n` is at most what it returned.
    pub unsafe fn consume(&self, n: usize) {
        let head = self.head.0.load(Ordering::Relaxed);
        self.head.0.store(head.wrapping_add(n), Ordering::Release);
    }

    /// Moves everything published so far into `out`. The writer reads in place
    /// ([`Ring::readable`]); the tests check what was pushed with this.
    ///
    /// # Safety
    /// Only one drainer at a time (the caller holds the dump writer's lock).
    #[cfg(test)]
    pub unsafe fn drain_into(&self, out: &mut Vec<u8>) -> usize {
        let head = self.head.0.load(Ordering::Relaxed);
        let tail = self.producer.0.tail.load(Ordering::Acquire);
        let n = tail.wrapping_sub(head);
        if n == 0 {
            return 0;
        }
        let start = head & self.mask;
        let first = n.min(self.capacity() - start);
        let base = self.buf as *const u8;
        out.extend_from_slice(std::slice::from_raw_parts(base.add(start), first));
        out.extend_from_slice(std::slice::from_raw_parts(base, n - first));
        self.head.0.store(tail, Ordering::Release);
        n
    }

    /// Forgets the unread bytes: in a forked child they belong to the parent's dump.
    pub fn discard(&self) {
        self.head.0.store(
            self.producer.0.tail.load(Ordering::Acquire),
            Ordering::Release,
        );
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { dealloc(self.buf, Self::layout(self.capacity())) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wraps_around_and_refuses_what_does_not_fit() {
        let r = Ring::new(16);
        let mut out = Vec::new();
        unsafe {
            assert!(r.push(&[1; 10]));
            assert!(!r.push(&[2; 7]));
            assert_eq!(r.drain_into(&mut out), 10);
            assert!(r.push(&[3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14]));
            out.clear();
            r.drain_into(&mut out);
        }
        assert_eq!(out, [3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14]);
        assert!(r.is_empty());
    }

    #[test]
    fn a_slot_is_written_in_place_and_only_its_published_bytes_are_read() {
        let r = Ring::new(64);
        unsafe {
            for k in 0..3u8 {
                let p = r.slot(16).expect("room");
                std::ptr::write_bytes(p, k + 1, 16);
                r.publish(10);
            }
            assert_eq!(r.len(), 30);
            // 34 bytes left at the tail: a slot of 40 is refused there, one of 34 is not.
            assert!(r.slot(40).is_none());
            let mut out = Vec::new();
            assert_eq!(r.drain_into(&mut out), 30);
            let want: Vec<u8> = (1..=3).flat_map(|k| [k; 10]).collect();
            assert_eq!(out, want);
            // Drained, but the tail's piece is still 34 bytes: no slot of 40 wraps around.
            assert!(r.slot(40).is_none());
            assert!(r.slot(34).is_some());
            r.publish(0);
            assert_eq!(r.len(), 0);
        }
    }

    #[test]
    fn over_half_and_room_follow_the_drainer() {
        let r = Ring::new(64);
        unsafe {
            assert!(r.push(&[1; 32]));
            assert!(!r.over_half());
            assert!(r.push(&[2; 1]));
            assert!(r.over_half());
            assert!(r.push(&[3; 31]));
            // Full: the producer's copy of the drainer's place is stale until it is read again.
            assert!(!r.push(&[4]));
            assert_eq!(r.drain_into(&mut Vec::new()), 64);
            assert!(!r.over_half());
            assert!(r.push(&[5; 64]));
            assert!(!r.push(&[6]));
        }
    }

    #[test]
    fn read_in_place_then_consumed() {
        let r = Ring::new(16);
        unsafe {
            assert!(r.push(&[1; 12]));
            let (a, b) = r.readable();
            assert_eq!((a.len(), b.len()), (12, 0));
            r.consume(12);
            assert!(r.push(&[2, 3, 4, 5, 6, 7]));
            let (a, b) = r.readable();
            assert_eq!((a, b), (&[2, 3, 4, 5][..], &[6, 7][..]));
            r.consume(5);
            assert_eq!(r.readable(), (&[7][..], &[][..]));
            assert!(r.push(&[8; 15]));
            assert!(!r.push(&[9]));
        }
    }

    #[test]
    fn a_concurrent_drainer_sees_whole_pushes_in_order() {
        let r = std::sync::Arc::new(Ring::new(256));
        let p = r.clone();
        let producer = std::thread::spawn(move || {
            for i in 0..20_000u32 {
                let b = [(i % 251) as u8; 5];
                while !unsafe { p.push(&b) } {
                    std::thread::yield_now();
                }
            }
        });
        let mut got = Vec::new();
        while got.len() < 100_000 {
            unsafe { r.drain_into(&mut got) };
        }
        producer.join().unwrap();
        for (i, chunk) in got.chunks(5).enumerate() {
            assert!(chunk.iter().all(|&b| b == (i as u32 % 251) as u8));
        }
    }
}
