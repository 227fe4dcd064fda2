//! Object ids: 64 lowercase hex characters, as containerd's CRI plugin makes them.

use rand::RngCore;

pub fn generate() -> String {
    let mut b = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut b);
    hex::encode(b)
}

/// An id or id prefix from a request: non-empty, hex only. Anything else cannot name an object
/// and would otherwise reach file paths or containerd filters.
pub fn is_valid_ref(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_64_hex_and_distinct() {
        let a = generate();
        let b = generate();
        assert_eq!(a.len(), 64);
        assert!(is_valid_ref(&a));
        assert_ne!(a, b);
    }

    #[test]
    fn refs_reject_paths() {
        assert!(!is_valid_ref("../etc"));
        assert!(!is_valid_ref(""));
        assert!(is_valid_ref("abc123"));
    }
}
