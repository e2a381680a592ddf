//! The end-to-end tests of the `zmtrace` command, one test binary (as ripgrep's
//! `tests/integration/`): each module is what was its own test binary, named after what it
//! guards, and [`common`] is the harness they share (it builds the preload library and the
//! samples once per run, not once per binary). One binary links once, and `cargo test` runs all
//! of them in one process; `cargo test -p zmtrace-cli --test integration MODULE::` runs one
//! module.

mod cdp;
mod common;

mod aggregate;
mod analyze;
mod cli_errors;
mod crash;
mod debian_programs;
mod demo;
mod diff;
mod exec;
mod expected_files;
mod export;
mod fds;
mod fork;
mod forks;
mod format;
mod gate;
mod hostile;
mod hygiene;
mod leaky;
mod messages;
mod mmap;
mod modules;
mod newuser;
mod privacy;
mod reach;
mod redis;
mod roots;
mod run_follow;
mod sampling;
mod scrape;
mod serve;
mod signals;
mod sigterm;
mod snapshots;
mod suppressions;
mod threads;
mod tls;
mod unwind;
mod view;
mod zmalloc;
