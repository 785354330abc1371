//! Byte strings a word (8 bytes, little-endian) at a time, for the checks that test every
//! byte of a word at once: the subject fast path here, the string writer of the Python
//! plugin's serializer.

/// `s` (shorter than 8 bytes) as a little-endian word, the bytes past its end set to `pad`
/// (a byte the caller's test never flags), from at most two overlapping loads rather than
/// a byte loop.
#[inline(always)]
pub fn short_word(s: &[u8], pad: u8) -> u64 {
    // Longer input would lose its middle bytes: the two loads cover 8 bytes at most.
    debug_assert!(
        s.len() < 8,
        "short_word takes fewer than 8 bytes, got {}",
        s.len()
    );
    let n = s.len();
    let w = if n >= 4 {
        let lo = u64::from(u32::from_le_bytes([s[0], s[1], s[2], s[3]]));
        let hi = u64::from(u32::from_le_bytes([s[n - 4], s[n - 3], s[n - 2], s[n - 1]]));
        lo | hi << (8 * (n - 4))
    } else if n >= 2 {
        let lo = u64::from(u16::from_le_bytes([s[0], s[1]]));
        let hi = u64::from(u16::from_le_bytes([s[n - 2], s[n - 1]]));
        lo | hi << (8 * (n - 2))
    } else if n == 1 {
        u64::from(s[0])
    } else {
        0
    };
    // Overlapping bytes are equal, so OR-ing them is harmless; the bytes past `n` are 0.
    let padding =
        (0x0101_0101_0101_0101 * u64::from(pad)) & u64::MAX.checked_shl(8 * n as u32).unwrap_or(0);
    w | padding
}

#[cfg(test)]
mod tests {
    use super::short_word;

    #[test]
    fn every_short_length_loads_its_bytes_then_the_padding() {
        let text = b"abcdefg";
        for n in 0..8 {
            let mut want = [b'_'; 8];
            want[..n].copy_from_slice(&text[..n]);
            assert_eq!(
                short_word(&text[..n], b'_'),
                u64::from_le_bytes(want),
                "{n}"
            );
        }
    }
}
