//! A Rust program on zmtrace's global allocator, with known leaks and reallocs.
//!
//! Usage: zmtrace-sample-rust DIR   (traces into DIR; prints used memory before and after)
//!
//! The truth, per function, as src/cli/tests/integration/zmalloc.rs asserts it:
//! - `zs_leak_boxes`: 3 `Vec<u8>` of 1000 bytes forgotten: 3 blocks, 3000 bytes leaked.
//! - `zs_grow_vec`: pushes 1000 `u32` into a `Vec`: 1 allocation of 16 bytes (capacity 4), then
//!   8 reallocs doubling it to 4096 bytes (capacity 1024): geometric x2; freed.
//! - `zs_string_steps`: a `String` grown with `reserve_exact(8)` before each of 100 pushes of 8
//!   bytes: 1 allocation of 8 bytes, then 99 reallocs of exactly 8 more bytes: a fixed step of
//!   8; freed.
//! - Run once untraced first: `used_memory()` grows by exactly the 3000 leaked bytes (checked by
//!   the program itself, which exits 1 if not). The dump is of the second, traced, run.

use std::hint::black_box;

#[global_allocator]
static ALLOC: zmtrace::Zmalloc = zmtrace::Zmalloc::system();

#[inline(never)]
fn zs_leak_boxes() {
    for _ in 0..3 {
        std::mem::forget(black_box(vec![7u8; 1000]));
    }
}

#[inline(never)]
fn zs_grow_vec() -> usize {
    let mut v: Vec<u32> = Vec::new();
    for i in 0..1000u32 {
        v.push(black_box(i));
    }
    black_box(&v).len()
}

#[inline(never)]
fn zs_string_steps() -> usize {
    let mut s = String::new();
    for _ in 0..100 {
        s.reserve_exact(8);
        s.push_str(black_box("abcdefgh"));
    }
    black_box(&s).len()
}

fn workload() {
    zs_leak_boxes();
    assert_eq!(zs_grow_vec(), 1000);
    assert_eq!(zs_string_steps(), 800);
}

fn main() {
    let dir = std::env::args()
        .nth(1)
        .expect("usage: zmtrace-sample-rust DIR");
    let before = zmtrace::used_memory();
    workload();
    let grown = zmtrace::used_memory() - before;
    if grown != 3000 {
        eprintln!("used_memory grew by {grown} bytes, not the 3000 leaked");
        std::process::exit(1);
    }
    let tracing = zmtrace::Tracing::start_in(&dir).expect("start tracing");
    workload();
    drop(tracing);
}
