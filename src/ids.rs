//! One id generator: prefixed ULIDs (`cstm_01H...`), as in the spec.
use ulid::Ulid;

pub fn new_id(prefix: &str) -> String {
    format!("{prefix}_{}", Ulid::new())
}

/// A W3C trace id: 32 lowercase hex characters, never all zeros.
pub fn new_trace_id() -> String {
    format!("{:032x}", rand::random::<u128>() | 1)
}

/// Does `s` look like one of our ids with this prefix? Cheap check before touching storage.
pub fn is_id(prefix: &str, s: &str) -> bool {
    s.len() == prefix.len() + 27
        && s.starts_with(prefix)
        && s.as_bytes()[prefix.len()] == b'_'
        && Ulid::from_string(&s[prefix.len() + 1..]).is_ok()
}
