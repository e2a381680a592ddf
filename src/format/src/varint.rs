//! LEB128 varints and a bounds-checked cursor. Writing into a fixed array keeps the recorder's hot
//! path free of allocation; reading never panics on damaged input.

/// The longest encoding of a u64.
pub const MAX_VARINT_LEN: usize = 10;

/// Appends `v` to a growable buffer.
pub fn put_uvarint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

pub fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    put_uvarint(out, b.len() as u64);
    out.extend_from_slice(b);
}

pub fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

pub fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

/// A fixed-size encoder for one event: no allocation, and the caller sizes the array so that the
/// largest event fits (each field at most [`MAX_VARINT_LEN`] bytes).
pub struct FixedBuf<const N: usize> {
    pub buf: [u8; N],
    pub len: usize,
}

impl<const N: usize> Default for FixedBuf<N> {
    fn default() -> Self {
        FixedBuf {
            buf: [0; N],
            len: 0,
        }
    }
}

impl<const N: usize> FixedBuf<N> {
    #[inline]
    pub fn uvarint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.buf[self.len] = (v as u8) | 0x80;
            self.len += 1;
            v >>= 7;
        }
        self.buf[self.len] = v as u8;
        self.len += 1;
    }
    pub fn as_slice(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

/// Where an event is encoded: a [`FixedBuf`], or (the recorder's hot path) the ring's free
/// space itself, so that the event is stored once and never loaded back for a copy.
///
/// Fields are fixed-width little-endian: the hot path's events are not varints, whose
/// byte-at-a-time loops cost more than the ring bytes they save (the writer packs anyway).
pub trait Sink {
    /// Appends `bytes`.
    fn put<const N: usize>(&mut self, bytes: [u8; N]);

    #[inline(always)]
    fn u8(&mut self, b: u8) {
        self.put([b])
    }
    #[inline(always)]
    fn u32(&mut self, v: u32) {
        self.put(v.to_le_bytes())
    }
    #[inline(always)]
    fn u64(&mut self, v: u64) {
        self.put(v.to_le_bytes())
    }
}

impl<const M: usize> Sink for FixedBuf<M> {
    #[inline]
    fn put<const N: usize>(&mut self, bytes: [u8; N]) {
        self.buf[self.len..self.len + N].copy_from_slice(&bytes);
        self.len += N;
    }
}

/// The input ended or held a malformed value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Malformed;

/// Reads values from a byte slice; every read is bounds-checked.
pub struct Cursor<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Cursor { data, pos: 0 }
    }
    pub fn is_empty(&self) -> bool {
        self.pos >= self.data.len()
    }
    /// Bytes not read yet.
    pub fn remaining(&self) -> usize {
        self.data.len().saturating_sub(self.pos)
    }
    pub fn u8(&mut self) -> Result<u8, Malformed> {
        let b = *self.data.get(self.pos).ok_or(Malformed)?;
        self.pos += 1;
        Ok(b)
    }
    pub fn uvarint(&mut self) -> Result<u64, Malformed> {
        let mut v: u64 = 0;
        for shift in (0..64).step_by(7) {
            let b = self.u8()?;
            if shift == 63 && b > 1 {
                return Err(Malformed);
            }
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(Malformed)
    }
    /// The next `n` bytes, whole or not at all.
    #[inline]
    pub fn take(&mut self, n: usize) -> Result<&'a [u8], Malformed> {
        let end = self.pos.checked_add(n).ok_or(Malformed)?;
        let b = self.data.get(self.pos..end).ok_or(Malformed)?;
        self.pos = end;
        Ok(b)
    }
    pub fn u32(&mut self) -> Result<u32, Malformed> {
        u32::try_from(self.uvarint()?).map_err(|_| Malformed)
    }
    pub fn bytes(&mut self) -> Result<&'a [u8], Malformed> {
        let n = usize::try_from(self.uvarint()?).map_err(|_| Malformed)?;
        let end = self.pos.checked_add(n).ok_or(Malformed)?;
        let b = self.data.get(self.pos..end).ok_or(Malformed)?;
        self.pos = end;
        Ok(b)
    }
    pub fn string(&mut self) -> Result<String, Malformed> {
        Ok(String::from_utf8_lossy(self.bytes()?).into_owned())
    }
    /// What is left, without reading it.
    pub fn rest_peek(&self) -> &'a [u8] {
        &self.data[self.pos.min(self.data.len())..]
    }
    pub fn rest(&mut self) -> &'a [u8] {
        let r = &self.data[self.pos.min(self.data.len())..];
        self.pos = self.data.len();
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uvarint_round_trips_edge_values() {
        for v in [0, 1, 127, 128, 300, u32::MAX as u64, u64::MAX - 1, u64::MAX] {
            let mut out = Vec::new();
            put_uvarint(&mut out, v);
            let mut fixed = FixedBuf::<10>::default();
            fixed.uvarint(v);
            assert_eq!(fixed.as_slice(), &out[..]);
            assert_eq!(Cursor::new(&out).uvarint(), Ok(v));
        }
    }

    #[test]
    fn overlong_or_short_varints_are_malformed() {
        assert_eq!(Cursor::new(&[0x80]).uvarint(), Err(Malformed));
        assert_eq!(Cursor::new(&[0xff; 11]).uvarint(), Err(Malformed));
        assert_eq!(Cursor::new(&[5, 1, 2]).bytes(), Err(Malformed));
    }

    #[test]
    fn zigzag_round_trips() {
        for v in [0i64, -1, 1, i64::MIN, i64::MAX, -4096] {
            assert_eq!(unzigzag(zigzag(v)), v);
        }
    }
}
