//! Go's `encoding/json` as flannel's files rely on it: an object's keys
//! match a struct's fields case-insensitively (`"network"` is `Network`).

use serde_json::{Map, Value};

/// The value under `key` in `m`: the exact key first, else the first key
/// equal to it but for ASCII case, as Go's decoder finds a field.
pub(crate) fn get<'a>(m: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    m.get(key).or_else(|| {
        m.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v)
    })
}
