//! Identifiers for grants, sessions and recordings: a short kind prefix and
//! 80 random bits in lower-case base32 (`g-7kq2m4x9fz3ba6dc`). Readable,
//! copy-pasteable, and never guessable from another one.

use ring::rand::{SecureRandom, SystemRandom};

const ALPHABET: &[u8; 32] = b"abcdefghijkmnpqrstuvwxyz23456789";

/// Fills `buf` from the operating system's CSPRNG.
pub fn random_bytes(buf: &mut [u8]) {
    // The system RNG only fails when the OS has no entropy source at all;
    // nothing sensible can continue then.
    SystemRandom::new().fill(buf).expect("operating system random number generator failed");
}

pub fn new_id(prefix: &str) -> String {
    let mut raw = [0u8; 10];
    random_bytes(&mut raw);
    let mut bits: u128 = 0;
    for b in raw {
        bits = bits << 8 | b as u128;
    }
    let mut out = String::with_capacity(prefix.len() + 17);
    out.push_str(prefix);
    out.push('-');
    for i in (0..16).rev() {
        out.push(ALPHABET[(bits >> (i * 5) & 31) as usize] as char);
    }
    out
}

/// True when `id` has the shape `new_id(prefix)` produces.
pub fn looks_like(id: &str, prefix: &str) -> bool {
    id.strip_prefix(prefix)
        .and_then(|r| r.strip_prefix('-'))
        .is_some_and(|r| r.len() == 16 && r.bytes().all(|b| ALPHABET.contains(&b)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_have_their_shape_and_differ() {
        let a = new_id("g");
        let b = new_id("g");
        assert!(looks_like(&a, "g"), "{a}");
        assert_ne!(a, b);
        assert!(!looks_like("g-../../etc/passwd", "g"));
        assert!(!looks_like(&a, "s"));
    }
}
