//! The words and numbers of every text zmtrace prints (reports, warnings, `run`'s summary), in
//! one place so that they read alike everywhere: bytes as 1.5 KiB, counts as 692,694, and
//! "1 block" but "2 blocks". Here, at the bottom of the crates, so that the dump reader's own
//! warnings use them too.

/// Bytes for people: 1023 B, 1.5 KiB, 12.3 MiB.
pub fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// 1234567 -> "1,234,567".
pub fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// `n` and the noun, singular for one: "1 block", "2,048 blocks", "1 more frame". The plural is
/// the noun with an `s`, or the noun's `singular|plural` spelled out ("1 process", "2
/// processes" from `"process|processes"`).
pub fn plural(n: u64, noun: &str) -> String {
    let (one, many) = match noun.split_once('|') {
        Some((one, many)) => (one.to_string(), many.to_string()),
        None => (noun.to_string(), format!("{noun}s")),
    };
    format!("{} {}", thousands(n), if n == 1 { one } else { many })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plural_is_singular_for_one_only() {
        assert_eq!(plural(1, "block"), "1 block");
        assert_eq!(plural(0, "block"), "0 blocks");
        assert_eq!(plural(2048, "block"), "2,048 blocks");
        assert_eq!(plural(1, "more frame"), "1 more frame");
        assert_eq!(plural(3, "process|processes"), "3 processes");
        assert_eq!(plural(1, "process|processes"), "1 process");
    }
}
