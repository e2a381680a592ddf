//! The reader's fuzz target: any bytes at all must read without a panic or a hang, and what is
//! read must hold the reader's promises. Used by the short fuzz run in the tests
//! (`tests/fuzz_reader.rs`) and by the cargo-fuzz target in `fuzz/` (`cargo +nightly fuzz run
//! reader`).

use std::path::Path;

use crate::{Dump, EventKind};

/// Reads `data` as a dump and streams all its events, checking what the reader promises.
pub fn check_reader(data: &[u8]) {
    let Ok(dump) = Dump::from_bytes(Path::new("fuzz"), data.to_vec()) else {
        return;
    };
    assert!(dump.bytes_lost <= data.len() as u64);
    let mut last = None;
    for e in dump.events() {
        // Strict sequence order, whatever the damage: no event twice, none out of place.
        assert!(last.is_none_or(|l| l < e.seq), "events out of order");
        last = Some(e.seq);
        if let EventKind::ReallocOut { addr } = e.kind {
            let _ = addr;
        }
    }
    for r in &dump.reach {
        // Lookups rely on each list being strictly ascending.
        for list in &r.addrs {
            assert!(
                list.windows(2).all(|w| w[0] < w[1]),
                "addresses out of order"
            );
        }
    }
    let _ = dump.damage();
    let _ = dump.ending();
    let _ = dump.is_complete();
}
