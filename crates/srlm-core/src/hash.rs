//! FNV-1a: a stable 64-bit hash (same on every platform and Rust version) for seeds derived
//! from names and ids, and for fingerprints.

const OFFSET: u64 = 0xcbf29ce484222325;
const PRIME: u64 = 0x100000001b3;

/// FNV-1a of `bytes`, starting from the standard offset basis xor `basis`.
pub fn fnv1a_from(basis: u64, bytes: &[u8]) -> u64 {
    let mut h = OFFSET ^ basis;
    for b in bytes {
        h ^= *b as u64;
        h = h.wrapping_mul(PRIME);
    }
    h
}

/// FNV-1a of `bytes`.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    fnv1a_from(0, bytes)
}

#[cfg(test)]
mod tests {
    #[test]
    fn known_values() {
        // Reference values of 64-bit FNV-1a.
        assert_eq!(super::fnv1a(b""), 0xcbf29ce484222325);
        assert_eq!(super::fnv1a(b"a"), 0xaf63dc4c8601ec8c);
    }
}
