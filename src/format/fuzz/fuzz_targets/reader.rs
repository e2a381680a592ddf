//! Coverage-guided fuzzing of the dump reader (needs nightly):
//! `cd src/format/fuzz && cargo +nightly fuzz run reader`. The stable short run is
//! `src/format/tests/fuzz_reader.rs`, in every `cargo test`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    zmtrace_format::fuzz::check_reader(data);
});
