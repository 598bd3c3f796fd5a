//! One id generator: prefixed ULIDs (`cstm_01H...`), as in the spec.
use ulid::{Generator, Ulid};

/// Ids made in the same millisecond still sort in the order they were made, so lists whose
/// ties (same creation millisecond) are broken by id keep creation order.
static IDS: parking_lot::Mutex<Generator> = parking_lot::Mutex::new(Generator::new());

pub fn new_id(prefix: &str) -> String {
    // The generator fails only when 2^80 ids were made in one millisecond.
    let ulid = IDS.lock().generate().unwrap_or_else(|_| Ulid::new());
    format!("{prefix}_{ulid}")
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

#[cfg(test)]
mod tests {
    #[test]
    fn ids_made_one_after_another_sort_in_that_order() {
        let ids: Vec<String> = (0..1000).map(|_| super::new_id("cstm")).collect();
        let mut sorted = ids.clone();
        sorted.sort();
        assert_eq!(ids, sorted);
        assert!(ids.iter().all(|id| super::is_id("cstm", id)));
    }
}
