//! Lease tokens: a random 64-bit value written as exactly 16 lowercase hex digits. Only that
//! canonical form is accepted back (ACK, FAIL): `C2410D0D7897B3F2` or `+556a...` name no token, as
//! in the Postgres backend, which compares the text.

pub fn fmt_token(t: u64) -> String {
    format!("{t:016x}")
}

/// [`fmt_token`] into a stack buffer.
pub fn fmt_token_buf(t: u64) -> [u8; 16] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; 16];
    for (i, b) in out.iter_mut().enumerate() {
        *b = HEX[((t >> (60 - 4 * i)) & 0xf) as usize];
    }
    out
}

/// The token written as `b`, if `b` is the canonical form of one (16 of `0-9a-f`).
pub fn parse_token(b: &[u8]) -> Option<u64> {
    if b.len() != 16 {
        return None;
    }
    b.iter().try_fold(0u64, |acc, &c| {
        let d = match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            _ => return None,
        };
        Some(acc << 4 | d as u64)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_form_only() {
        for t in [0u64, 1, 0xc241_0d0d_7897_b3f2, u64::MAX] {
            let s = fmt_token_buf(t);
            assert_eq!(&s[..], fmt_token(t).as_bytes());
            assert_eq!(parse_token(&s), Some(t));
        }
        assert_eq!(parse_token(b"C2410D0D7897B3F2"), None);
        assert_eq!(parse_token(b"c2410D0d7897b3f2"), None);
        assert_eq!(parse_token(b"+556a0d0d7897b3f"), None);
        assert_eq!(parse_token(b"-556a0d0d7897b3f"), None);
        assert_eq!(parse_token(b" 556a0d0d7897b3f"), None);
        assert_eq!(parse_token(b"0x56a0d0d7897b3f"), None);
        assert_eq!(parse_token(b"c2410d0d7897b3f"), None);
        assert_eq!(parse_token(b"c2410d0d7897b3f20"), None);
        assert_eq!(parse_token(b""), None);
    }
}
