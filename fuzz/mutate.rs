//! The mutators: byte-level ones for any input, token- and tree-aware ones
//! for JSON and `KEY=VALUE` text, and field-aware ones for the headers of a
//! packet (virtio-net, IPv4, TCP/UDP) with their checksums fixed or not.

use rand::Rng as _;
use rand::seq::IndexedRandom;
use serde_json::Value;

use weft::wire::{checksum_finish, checksum_sum, tcp};

use crate::Rng;

/// Numbers at the edges of every integer type a parser may narrow to, and
/// floats that are not integers at all.
pub const NUMS: &[&str] = &[
    "0",
    "-1",
    "1",
    "2",
    "24",
    "30",
    "31",
    "32",
    "33",
    "255",
    "256",
    "576",
    "65535",
    "65536",
    "16777215",
    "16777216",
    "2147483647",
    "2147483648",
    "4294967295",
    "4294967296",
    "9223372036854775807",
    "9223372036854775808",
    "-9223372036854775808",
    "18446744073709551615",
    "18446744073709551616",
    "1e308",
    "-1e308",
    "1e400",
    "1.5",
    "-0",
    "0.0",
    "1e-7",
];

/// Strings that are edge cases of the addresses, names and CIDRs weft reads.
pub const STRS: &[&str] = &[
    "",
    " ",
    "0.0.0.0/0",
    "255.255.255.255/32",
    "10.244.0.0/31",
    "10.244.0.0/30",
    "::/0",
    "fd00::/64",
    "10.244.0.0/16",
    "10.244.1.0/24",
    "10.244.1.1/24",
    "10.244.1.0-24",
    "10.244.1.0-33",
    "0.0.0.0",
    "255.255.255.255",
    "10.244.1.1",
    "192.0.2.1",
    "::1",
    "02:00:00:00:00:01",
    "ff:ff:ff:ff:ff:ff",
    "0:0:0:0:0:0:0",
    "vxlan",
    "VXLAN",
    "udp",
    "true",
    "false",
    "null",
    "1.0.0",
    "0.3.1",
    "1.1.0",
    "9.9.9",
    "eth0",
    "cni0",
    "..",
    "a/b",
    "a:b",
    "\u{0}",
    "\n",
    "ümlaut",
    "日本語",
    "\u{1F600}",
    "\u{FEFF}10.244.1.0/24",
];

/// A random string worth putting where a string goes.
pub fn any_string(rng: &mut Rng, dict: &[&str]) -> String {
    match rng.random_range(0..10) {
        0 => "x".repeat(rng.random_range(256..5000)),
        1 => "é".repeat(rng.random_range(1..300)),
        2 | 3 if !dict.is_empty() => dict.choose(rng).map_or("", |s| s).to_string(),
        4 => NUMS.choose(rng).map_or("0", |s| s).to_string(),
        _ => STRS.choose(rng).map_or("", |s| s).to_string(),
    }
}

fn idx(rng: &mut Rng, len: usize) -> usize {
    if len == 0 {
        0
    } else {
        rng.random_range(0..len)
    }
}

/// An extreme (or random) value for an integer field of `bits` bits.
fn extreme(rng: &mut Rng, bits: u32) -> u64 {
    let max = if bits == 64 {
        u64::MAX
    } else {
        (1u64 << bits) - 1
    };
    match rng.random_range(0..8) {
        0 => 0,
        1 => 1,
        2 => max,
        3 => max >> 1,
        4 => (max >> 1) + 1,
        5 => max - 1,
        _ => rng.random::<u64>() & max,
    }
}

/// Byte-level mutations, 1 to 4 stacked: bit flips, bytes set to 0 / 0x7f /
/// 0x80 / 0xff, 16/32/64-bit fields set to extremes (either byte order) at
/// random offsets, arithmetic, truncation, extension, insertion, deletion
/// and duplication of runs, and splicing with another seed. The result stays
/// within `max` bytes.
pub fn bytes(rng: &mut Rng, v: &mut Vec<u8>, seeds: &[Vec<u8>], max: usize) {
    let rounds = 1 + rng.random_range(0..4u32).min(rng.random_range(0..4u32));
    for _ in 0..rounds {
        byte_op(rng, v, seeds, max);
    }
    v.truncate(max);
}

fn byte_op(rng: &mut Rng, v: &mut Vec<u8>, seeds: &[Vec<u8>], max: usize) {
    let len = v.len();
    match rng.random_range(0..14) {
        0 if len > 0 => {
            let i = idx(rng, len);
            v[i] ^= 1 << rng.random_range(0..8);
        }
        1 if len > 0 => {
            let i = idx(rng, len);
            v[i] = *[0u8, 0x7f, 0x80, 0xff, 1, 0xfe].choose(rng).unwrap_or(&0);
        }
        2 if len > 0 => {
            let i = idx(rng, len);
            v[i] = rng.random();
        }
        3 if len >= 2 => {
            let i = idx(rng, len - 1);
            // A u16 from a u64 masked to 16 bits: no loss.
            let x = u16::try_from(extreme(rng, 16)).unwrap_or(u16::MAX);
            let b = if rng.random() {
                x.to_be_bytes()
            } else {
                x.to_le_bytes()
            };
            v[i..i + 2].copy_from_slice(&b);
        }
        4 if len >= 4 => {
            let i = idx(rng, len - 3);
            let x = u32::try_from(extreme(rng, 32)).unwrap_or(u32::MAX);
            let b = if rng.random() {
                x.to_be_bytes()
            } else {
                x.to_le_bytes()
            };
            v[i..i + 4].copy_from_slice(&b);
        }
        5 if len >= 8 => {
            let i = idx(rng, len - 7);
            let x = extreme(rng, 64);
            let b = if rng.random() {
                x.to_be_bytes()
            } else {
                x.to_le_bytes()
            };
            v[i..i + 8].copy_from_slice(&b);
        }
        6 if len > 0 => {
            let i = idx(rng, len);
            let d: u8 = rng.random_range(1..=35);
            v[i] = if rng.random() {
                v[i].wrapping_add(d)
            } else {
                v[i].wrapping_sub(d)
            };
        }
        7 => v.truncate(idx(rng, len + 1)),
        8 => {
            let n = rng.random_range(1..=64usize).min(max.saturating_sub(len));
            let fill: u8 = *[0u8, 0xff, b'A', b'0'].choose(rng).unwrap_or(&0);
            if rng.random() {
                v.extend((0..n).map(|_| rng.random::<u8>()));
            } else {
                v.extend(std::iter::repeat_n(fill, n));
            }
        }
        9 => {
            let at = idx(rng, len + 1);
            let n = rng.random_range(1..=32usize);
            let run: Vec<u8> = if rng.random() {
                (0..n).map(|_| rng.random()).collect()
            } else {
                vec![rng.random(); n]
            };
            v.splice(at..at, run);
        }
        10 if len > 0 => {
            let at = idx(rng, len);
            let n = rng.random_range(1..=32usize).min(len - at);
            v.drain(at..at + n);
        }
        11 if len > 0 => {
            let from = idx(rng, len);
            let n = rng.random_range(1..=64usize).min(len - from);
            let run = v[from..from + n].to_vec();
            let at = idx(rng, len + 1);
            v.splice(at..at, run);
        }
        12 if !seeds.is_empty() => {
            // Splice: this input's head, another seed's tail.
            let other = &seeds[idx(rng, seeds.len())];
            let cut = idx(rng, len.min(other.len()) + 1);
            v.truncate(cut);
            v.extend_from_slice(&other[cut.min(other.len())..]);
        }
        _ if len > 0 => {
            // Overwrite a run with one copied from elsewhere in the input.
            let from = idx(rng, len);
            let to = idx(rng, len);
            let n = rng.random_range(1..=16usize).min(len - from).min(len - to);
            v.copy_within(from..from + n, to);
        }
        _ => v.push(rng.random()),
    }
}

/// Text mutations for JSON inputs: on the parsed tree (values type-swapped,
/// numbers and strings set to edge cases, keys dropped, added from `dict`,
/// case-flipped, values nested), on its tokens (numbers replaced by literals
/// no `f64` holds, members duplicated, strings replaced), or on the bytes.
pub fn json(rng: &mut Rng, v: &mut Vec<u8>, seeds: &[Vec<u8>], dict: &[&str], max: usize) {
    match rng.random_range(0..20) {
        0..=8 => {
            if let Ok(mut tree) = serde_json::from_slice::<Value>(v) {
                for _ in 0..1 + rng.random_range(0..3u32).min(rng.random_range(0..3u32)) {
                    tree_op(rng, &mut tree, dict);
                }
                let text = if rng.random_ratio(1, 4) {
                    serde_json::to_vec_pretty(&tree)
                } else {
                    serde_json::to_vec(&tree)
                };
                if let Ok(t) = text {
                    *v = t;
                }
            } else {
                token_op(rng, v, dict);
            }
        }
        9..=15 => {
            for _ in 0..1 + rng.random_range(0..2) {
                token_op(rng, v, dict);
            }
        }
        16 => splice_lines(rng, v, seeds),
        _ => bytes(rng, v, seeds, max),
    }
    v.truncate(max);
}

/// A JSON Pointer to every node of `v`.
fn pointers(v: &Value, at: &mut String, out: &mut Vec<String>) {
    out.push(at.clone());
    let n = at.len();
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                at.push('/');
                at.push_str(&k.replace('~', "~0").replace('/', "~1"));
                pointers(x, at, out);
                at.truncate(n);
            }
        }
        Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                at.push('/');
                at.push_str(&i.to_string());
                pointers(x, at, out);
                at.truncate(n);
            }
        }
        _ => {}
    }
}

fn any_number(rng: &mut Rng) -> Value {
    let s = NUMS.choose(rng).map_or("0", |s| s);
    serde_json::from_str(s).unwrap_or(Value::from(u64::MAX))
}

fn any_scalar(rng: &mut Rng, dict: &[&str]) -> Value {
    match rng.random_range(0..6) {
        0 => any_number(rng),
        1 => Value::Null,
        2 => Value::Bool(rng.random()),
        _ => Value::String(any_string(rng, dict)),
    }
}

fn tree_op(rng: &mut Rng, tree: &mut Value, dict: &[&str]) {
    let mut ps = vec![];
    pointers(tree, &mut String::new(), &mut ps);
    let p = ps.choose(rng).cloned().unwrap_or_default();
    let copy = ps
        .choose(rng)
        .and_then(|q| tree.pointer(q))
        .cloned()
        .unwrap_or(Value::Null);
    let Some(node) = tree.pointer_mut(&p) else {
        return;
    };
    match rng.random_range(0..12) {
        // Type swaps: string <-> number <-> object <-> array <-> null.
        0 => {
            *node = match node.take() {
                Value::String(s) => s
                    .parse::<Value>()
                    .ok()
                    .filter(Value::is_number)
                    .unwrap_or_else(|| any_number(rng)),
                Value::Number(n) => Value::String(n.to_string()),
                Value::Object(_) => Value::Array(vec![]),
                Value::Array(a) => a.into_iter().next().unwrap_or(Value::Null),
                Value::Null => Value::Object(Default::default()),
                Value::Bool(b) => Value::String(b.to_string()),
            }
        }
        1 => *node = any_scalar(rng, dict),
        2 => *node = Value::Array(vec![node.take()]),
        3 => {
            let k = dict.choose(rng).map_or("x", |s| s).to_string();
            *node = serde_json::json!({ k: node.take() });
        }
        4 => *node = copy,
        5 => {
            *node = match node {
                Value::Number(_) => any_number(rng),
                Value::String(_) => Value::String(any_string(rng, dict)),
                _ => any_scalar(rng, dict),
            }
        }
        // Objects: keys dropped, added, case-flipped.
        6..=7 if node.is_object() => {
            let m = node.as_object_mut().expect("checked");
            let keys: Vec<String> = m.keys().cloned().collect();
            if let Some(k) = keys.choose(rng) {
                m.remove(k);
            }
        }
        8 if node.is_object() => {
            let m = node.as_object_mut().expect("checked");
            let k = dict.choose(rng).map_or("x", |s| s).to_string();
            let val = if rng.random() {
                copy
            } else {
                any_scalar(rng, dict)
            };
            m.insert(k, val);
        }
        9 if node.is_object() => {
            let m = node.as_object_mut().expect("checked");
            let keys: Vec<String> = m.keys().cloned().collect();
            if let Some(k) = keys.choose(rng) {
                if let Some(x) = m.remove(k) {
                    let flipped: String = k
                        .chars()
                        .map(|c| {
                            if c.is_ascii_uppercase() {
                                c.to_ascii_lowercase()
                            } else {
                                c.to_ascii_uppercase()
                            }
                        })
                        .collect();
                    m.insert(flipped, x);
                }
            }
        }
        // Arrays: elements dropped, duplicated, emptied.
        6..=9 if node.is_array() => {
            let a = node.as_array_mut().expect("checked");
            match rng.random_range(0..4) {
                0 if !a.is_empty() => {
                    let i = idx(rng, a.len());
                    a.remove(i);
                }
                1 if !a.is_empty() => {
                    let i = idx(rng, a.len());
                    let x = a[i].clone();
                    a.insert(i, x);
                }
                2 => a.clear(),
                _ => a.push(copy),
            }
        }
        10 => *node = Value::Null,
        _ => {
            // Deep nesting.
            let mut x = node.take();
            for _ in 0..rng.random_range(1..40) {
                x = Value::Array(vec![x]);
            }
            *node = x;
        }
    }
}

/// The extent of the JSON value starting at `v[i]` (after whitespace).
fn value_end(v: &[u8], mut i: usize) -> Option<usize> {
    while v.get(i).is_some_and(u8::is_ascii_whitespace) {
        i += 1;
    }
    match *v.get(i)? {
        b'"' => string_end(v, i),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut j = i;
            while j < v.len() {
                match v[j] {
                    b'"' => j = string_end(v, j)? - 1,
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(j + 1);
                        }
                    }
                    _ => {}
                }
                j += 1;
            }
            None
        }
        _ => {
            let mut j = i;
            while j < v.len() && !matches!(v[j], b',' | b'}' | b']') && !v[j].is_ascii_whitespace()
            {
                j += 1;
            }
            Some(j)
        }
    }
}

/// The end (one past the closing quote) of the string starting at `v[i]`.
fn string_end(v: &[u8], i: usize) -> Option<usize> {
    let mut j = i + 1;
    while j < v.len() {
        match v[j] {
            b'\\' => j += 2,
            b'"' => return Some(j + 1),
            _ => j += 1,
        }
    }
    None
}

/// Token spans: `(start, end, is_number)` of every string and number.
fn tokens(v: &[u8]) -> Vec<(usize, usize, bool)> {
    let mut out = vec![];
    let mut i = 0;
    while i < v.len() {
        match v[i] {
            b'"' => {
                let e = string_end(v, i).unwrap_or(v.len());
                out.push((i, e, false));
                i = e;
            }
            b'-' | b'0'..=b'9' => {
                let mut j = i + 1;
                while j < v.len() && matches!(v[j], b'0'..=b'9' | b'.' | b'e' | b'E' | b'+' | b'-')
                {
                    j += 1;
                }
                out.push((i, j, true));
                i = j;
            }
            _ => i += 1,
        }
    }
    out
}

fn token_op(rng: &mut Rng, v: &mut Vec<u8>, dict: &[&str]) {
    let toks = tokens(v);
    let nums: Vec<_> = toks.iter().filter(|t| t.2).collect();
    let strs: Vec<_> = toks.iter().filter(|t| !t.2).collect();
    match rng.random_range(0..5) {
        0 | 1 if !nums.is_empty() => {
            let &&(s, e, _) = nums.choose(rng).expect("not empty");
            let lit = NUMS.choose(rng).map_or("0", |s| s);
            v.splice(s..e, lit.bytes());
        }
        2 if !strs.is_empty() => {
            let &&(s, e, _) = strs.choose(rng).expect("not empty");
            let lit = serde_json::to_string(&any_string(rng, dict)).unwrap_or_default();
            v.splice(s..e, lit.into_bytes());
        }
        3 if !strs.is_empty() => {
            // Duplicate a member: `"k": value` again right after itself.
            let &&(s, e, _) = strs.choose(rng).expect("not empty");
            let mut j = e;
            while v.get(j).is_some_and(u8::is_ascii_whitespace) {
                j += 1;
            }
            if v.get(j) == Some(&b':') {
                if let Some(end) = value_end(v, j + 1) {
                    let mut member = vec![b','];
                    member.extend_from_slice(&v[s..end]);
                    if rng.random() {
                        // The duplicate with another value.
                        member.truncate(1 + (j + 1 - s));
                        member
                            .extend(serde_json::to_vec(&any_scalar(rng, dict)).unwrap_or_default());
                    }
                    v.splice(end..end, member);
                }
            }
        }
        _ if !toks.is_empty() => {
            // A number where a string was, or a string where a number was.
            let &(s, e, is_num) = toks.choose(rng).expect("not empty");
            if is_num {
                let q = format!("\"{}\"", String::from_utf8_lossy(&v[s..e]));
                v.splice(s..e, q.into_bytes());
            } else {
                let lit = NUMS.choose(rng).map_or("0", |s| s);
                v.splice(s..e, lit.bytes());
            }
        }
        _ => v.extend_from_slice(b" {}"),
    }
}

/// Swaps a line with one of another seed's (JSON pretty-printed or text).
fn splice_lines(rng: &mut Rng, v: &mut Vec<u8>, seeds: &[Vec<u8>]) {
    let other = &seeds[idx(rng, seeds.len())];
    let theirs: Vec<&[u8]> = other.split(|b| *b == b'\n').collect();
    let mut mine: Vec<Vec<u8>> = v.split(|b| *b == b'\n').map(<[u8]>::to_vec).collect();
    let i = idx(rng, mine.len());
    if let Some(l) = theirs.choose(rng) {
        mine.insert(i, l.to_vec());
    }
    *v = mine.join(&b'\n');
}

/// Mutations for `KEY=VALUE` lines (subnet.env, the CNI environment) and
/// other line-based text: lines dropped, duplicated, swapped; values set to
/// edge cases from `dict`, quoted, padded; keys case-flipped; CR line ends.
pub fn lines(rng: &mut Rng, v: &mut Vec<u8>, seeds: &[Vec<u8>], dict: &[&str], max: usize) {
    let text = String::from_utf8_lossy(v).into_owned();
    let mut ls: Vec<String> = text.split('\n').map(str::to_string).collect();
    let n = ls.len();
    let i = idx(rng, n);
    match rng.random_range(0..12) {
        0 if n > 1 => {
            ls.remove(i);
        }
        1 => {
            let l = ls[i].clone();
            ls.insert(i, l);
        }
        2 => {
            let j = idx(rng, n);
            ls.swap(i, j);
        }
        3..=5 => {
            let l = &mut ls[i];
            let sep = l.find(['=', ' ']).map_or(l.len(), |p| p + 1);
            l.truncate(sep);
            l.push_str(&any_string(rng, dict));
        }
        6 => {
            let l = &mut ls[i];
            if let Some(p) = l.find('=') {
                let (k, val) = l.split_at(p);
                *l = format!("{}=\"{}\"", k, &val[1..]);
            }
        }
        7 => ls[i] = format!("  {}  ", ls[i]),
        8 => ls[i] = ls[i].to_lowercase(),
        9 => ls[i].push('\r'),
        10 => {
            let k = dict.choose(rng).map_or("X", |s| s);
            ls.insert(i, format!("{k}={}", any_string(rng, dict)));
        }
        _ => {
            *v = ls.join("\n").into_bytes();
            if rng.random() {
                token_op(rng, v, dict);
            } else {
                bytes(rng, v, seeds, max);
            }
            return;
        }
    }
    *v = ls.join("\n").into_bytes();
    v.truncate(max);
}

/// Sets one field of the virtio-net header at `v[at..at + 10]` to 0, 1, its
/// maximum, a random value or one just past the packet that follows
/// (`pkt_len` bytes): flags, the gso type (known, with ECN, unknown),
/// hdr_len, gso_size, csum_start, csum_offset.
pub fn virtio(rng: &mut Rng, v: &mut [u8], at: usize, pkt_len: usize) {
    let Some(h) = v.get_mut(at..at + weft::wire::virtio::HEADER_LEN) else {
        return;
    };
    let past = u16::try_from(pkt_len).unwrap_or(u16::MAX);
    let val16 = |rng: &mut Rng| -> u16 {
        match rng.random_range(0..9) {
            0 => 0,
            1 => 1,
            2 => u16::MAX,
            3 => past,
            4 => past.saturating_sub(1),
            5 => past.saturating_add(1),
            6 => past.saturating_sub(rng.random_range(0..64)),
            7 => rng.random_range(0..128),
            _ => rng.random(),
        }
    };
    match rng.random_range(0..6) {
        0 => h[0] = *[0u8, 1, 2, 3, 0x80, 0xff].choose(rng).unwrap_or(&0),
        1 => {
            h[1] = *[0u8, 1, 3, 4, 5, 0x81, 0x85, 0x80, 2, 6, 0x7f, 0xff]
                .choose(rng)
                .unwrap_or(&0);
        }
        f => {
            let x = val16(rng);
            let o = 2 * (f - 1);
            h[o..o + 2].copy_from_slice(&x.to_ne_bytes());
        }
    }
}

/// Sets one IPv4 or TCP/UDP header field of the packet at `v[at..]` to an
/// edge case (IHL, total length, flags and fragment offset, TTL, protocol,
/// addresses from `addrs`, TCP data offset, flags, sequence number), then
/// fixes the checksums three times in four so the packet gets past them.
pub fn ip_fields(rng: &mut Rng, v: &mut [u8], at: usize, addrs: &[[u8; 4]]) {
    let Some(p) = v.get_mut(at..) else { return };
    if p.len() >= 40 && p[0] >> 4 == 6 && rng.random_range(0..4) != 0 {
        return ip6_fields(rng, p);
    }
    if p.len() < 20 {
        return;
    }
    let ihl = usize::from(p[0] & 0x0f) * 4;
    let real = u16::try_from(p.len()).unwrap_or(u16::MAX);
    match rng.random_range(0..12) {
        0 => {
            p[0] = *[0x45u8, 0x46, 0x4f, 0x44, 0x40, 0x60, 0x55, 0x05]
                .choose(rng)
                .unwrap_or(&0x45)
        }
        1 => {
            let tl: u16 = match rng.random_range(0..7) {
                0 => 0,
                1 => 19,
                2 => 20,
                3 => real.saturating_add(1),
                4 => real.saturating_sub(1),
                5 => u16::MAX,
                _ => rng.random(),
            };
            p[2..4].copy_from_slice(&tl.to_be_bytes());
        }
        2 => {
            p[6] = *[0x00u8, 0x40, 0x20, 0x60, 0x1f, 0xff]
                .choose(rng)
                .unwrap_or(&0)
        }
        3 => p[7] = rng.random(),
        4 => p[8] = *[0u8, 1, 64, 255].choose(rng).unwrap_or(&64),
        5 => p[9] = *[1u8, 6, 17, 0, 4, 41, 255].choose(rng).unwrap_or(&6),
        6 => {
            let a = addrs.choose(rng).copied().unwrap_or([0; 4]);
            p[12..16].copy_from_slice(&a);
        }
        7 => {
            let a = addrs.choose(rng).copied().unwrap_or([0; 4]);
            p[16..20].copy_from_slice(&a);
        }
        8 if p.len() >= ihl + 20 && ihl >= 20 => {
            p[ihl + 12] = rng.random_range(0..16u8) << 4;
        }
        9 if p.len() >= ihl + 20 && ihl >= 20 => {
            p[ihl + 13] = *[
                0x10u8, 0x18, 0x02, 0x12, 0x01, 0x11, 0x04, 0x20, 0x40, 0x80, 0x90, 0xff,
            ]
            .choose(rng)
            .unwrap_or(&0x10);
        }
        10 if p.len() >= ihl + 8 && ihl >= 20 => {
            let s = u32::try_from(extreme(rng, 32)).unwrap_or(u32::MAX);
            p[ihl + 4..ihl + 8].copy_from_slice(&s.to_be_bytes());
        }
        _ => {
            // IP ID and the ports.
            let i = *[4usize, ihl, ihl + 2].choose(rng).unwrap_or(&4);
            if let Some(f) = p.get_mut(i..i + 2) {
                let x = u16::try_from(extreme(rng, 16)).unwrap_or(0);
                f.copy_from_slice(&x.to_be_bytes());
            }
        }
    }
    if rng.random_ratio(3, 4) {
        fix_checksums(p);
    }
}

/// Reorders a list of records at `i`: drops it, repeats it, or swaps it
/// with another (one of the three at random).
pub fn reorder<T: Clone>(rng: &mut Rng, rs: &mut Vec<T>, i: usize) {
    match rng.random_range(0..3) {
        0 => {
            rs.remove(i);
        }
        1 => {
            let r = rs[i].clone();
            rs.insert(i, r);
        }
        _ => {
            let j = rng.random_range(0..rs.len());
            rs.swap(i, j);
        }
    }
}

/// Recomputes the IPv4 header checksum and, for TCP and UDP, the L4
/// checksum, as far as the header's lengths lie inside `p`.
pub fn fix_checksums(p: &mut [u8]) {
    if p.len() >= 40 && p[0] >> 4 == 6 {
        return fix_checksums6(p);
    }
    if p.len() < 20 || p[0] >> 4 != 4 {
        return;
    }
    let ihl = usize::from(p[0] & 0x0f) * 4;
    if ihl < 20 || ihl > p.len() {
        return;
    }
    p[10..12].copy_from_slice(&[0, 0]);
    let c = checksum_finish(checksum_sum(&p[..ihl], 0));
    p[10..12].copy_from_slice(&c.to_be_bytes());
    let tl = usize::from(u16::from_be_bytes([p[2], p[3]])).min(p.len());
    if tl < ihl {
        return;
    }
    let proto = p[9];
    let at = match proto {
        tcp::PROTO_TCP => tcp::CHECKSUM_OFFSET,
        tcp::PROTO_UDP => 6,
        _ => return,
    };
    let (src, dst) = (
        std::net::Ipv4Addr::new(p[12], p[13], p[14], p[15]),
        std::net::Ipv4Addr::new(p[16], p[17], p[18], p[19]),
    );
    let l4 = &mut p[ihl..tl];
    if l4.len() < at + 2 {
        return;
    }
    let Ok(l4_len) = u16::try_from(l4.len()) else {
        return;
    };
    l4[at..at + 2].copy_from_slice(&[0, 0]);
    let sum = tcp::pseudo_header_sum(src, dst, proto, l4_len, 0);
    let mut c = checksum_finish(checksum_sum(l4, sum));
    if proto == tcp::PROTO_UDP && c == 0 {
        c = 0xffff;
    }
    l4[at..at + 2].copy_from_slice(&c.to_be_bytes());
}

/// [`fix_checksums`] for IPv6: the TCP, UDP or ICMPv6 checksum over the
/// pseudo-header (no IP header checksum in IPv6).
fn fix_checksums6(p: &mut [u8]) {
    let end = (40 + usize::from(u16::from_be_bytes([p[4], p[5]]))).min(p.len());
    let next = p[6];
    let at = match next {
        tcp::PROTO_TCP => tcp::CHECKSUM_OFFSET,
        tcp::PROTO_UDP => 6,
        weft::wire::ipv6::PROTO_ICMPV6 => 2,
        _ => return,
    };
    let mut a = [0u8; 16];
    a.copy_from_slice(&p[8..24]);
    let src = std::net::Ipv6Addr::from(a);
    a.copy_from_slice(&p[24..40]);
    let dst = std::net::Ipv6Addr::from(a);
    let l4 = &mut p[40..end];
    if l4.len() < at + 2 {
        return;
    }
    l4[at..at + 2].copy_from_slice(&[0, 0]);
    let sum = weft::wire::ipv6::pseudo_header_sum(src, dst, next, l4.len() as u32, 0);
    let mut c = checksum_finish(checksum_sum(l4, sum));
    if next == tcp::PROTO_UDP && c == 0 {
        c = 0xffff;
    }
    l4[at..at + 2].copy_from_slice(&c.to_be_bytes());
}

/// [`ip_fields`] for an IPv6 header: the version, the payload length around
/// the real one, the next header (extension headers, fragments, ICMPv6), the
/// hop limit, or an address among the fuzzed world's subnets.
fn ip6_fields(rng: &mut Rng, p: &mut [u8]) {
    let real = u16::try_from(p.len().saturating_sub(40)).unwrap_or(u16::MAX);
    match rng.random_range(0..6) {
        0 => {
            p[0] = *[0x60u8, 0x40, 0x6f, 0x00, 0x70]
                .choose(rng)
                .unwrap_or(&0x60)
        }
        1 => {
            let pl: u16 = match rng.random_range(0..5) {
                0 => 0,
                1 => real.saturating_add(1),
                2 => real.saturating_sub(1),
                3 => u16::MAX,
                _ => rng.random(),
            };
            p[4..6].copy_from_slice(&pl.to_be_bytes());
        }
        2 => p[6] = *[0u8, 6, 17, 43, 44, 58, 59, 60].choose(rng).unwrap_or(&6),
        3 => p[7] = rng.random(),
        _ => {
            let at = if rng.random() { 8 } else { 24 };
            let host: u8 = rng.random();
            let net = *[1u8, 2, 3, 4, 9, 0xff].choose(rng).unwrap_or(&1);
            let a = [0xfc, 0, 0, 0, 0, 0, 0, net, 0, 0, 0, 0, 0, 0, 0, host];
            p[at..at + 16].copy_from_slice(&a);
        }
    }
    if rng.random() {
        fix_checksums(p);
    }
}
