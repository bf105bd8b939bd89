//! Where a shipped function was written, read from the header of its Lua 5.4 bytecode
//! (`string.dump` with debug info): the chunk name and the line the function starts
//! on, e.g. `deploy.sloth:12`. The agent's audit log records it for every task.
//!
//! The bytecode comes off the network: this reads at most the header and two
//! variable-length integers, checks every bound, and gives `None` for anything it
//! does not recognise.

use crate::graph::{Graph, Value};

/// The fixed header `ldump.c` writes: signature, version 5.4, format 0, the
/// corruption-check bytes, the sizes of an instruction, an integer and a number, and
/// the check integer and number (8 bytes each).
const HEADER_LEN: usize = 4 + 1 + 1 + 6 + 3 + 8 + 8;
const SIGNATURE: &[u8] = b"\x1bLua\x54\x00";
/// Longest chunk name kept (a source string given to `load` can be a whole program).
const MAX_SOURCE: usize = 200;

/// `chunk:line` of a function's bytecode, or `None` when it is stripped or not Lua 5.4
/// bytecode.
pub fn of_bytecode(code: &[u8]) -> Option<String> {
    if code.len() < HEADER_LEN || !code.starts_with(SIGNATURE) {
        return None;
    }
    // After the header: the main function's upvalue count (a byte), then its source
    // string, its first line and its last line.
    let mut rest = code.get(HEADER_LEN + 1..)?;
    let size = varint(&mut rest)?;
    if size == 0 {
        return None; // stripped
    }
    let len = usize::try_from(size - 1).ok()?;
    let source = rest.get(..len)?;
    rest = rest.get(len..)?;
    let line = varint(&mut rest)?;
    Some(format!("{}:{line}", chunk_name(source)))
}

/// The origin of a task payload's function (its first root).
pub fn of_payload(payload: &Graph) -> Option<String> {
    let Some(Value::Function(f)) = payload.roots.first() else {
        return None;
    };
    let def = payload.functions.get(*f as usize)?;
    of_bytecode(payload.protos.get(def.proto as usize)?)
}

/// How Lua names a chunk: `@file` is a file, `=text` is literal, anything else is
/// the source code itself.
fn chunk_name(source: &[u8]) -> String {
    let text = String::from_utf8_lossy(source);
    let name = match text.as_bytes().first() {
        Some(b'@') | Some(b'=') => text[1..].to_string(),
        _ => "(string)".to_string(),
    };
    if name.len() > MAX_SOURCE {
        let cut = (0..=MAX_SOURCE)
            .rev()
            .find(|i| name.is_char_boundary(*i))
            .unwrap_or(0);
        format!("{}…", &name[..cut])
    } else {
        name
    }
}

/// `ldump.c`'s size encoding: 7 bits per byte, most significant first, the last
/// byte marked by its high bit.
fn varint(buf: &mut &[u8]) -> Option<u64> {
    let mut value: u64 = 0;
    for (i, b) in buf.iter().enumerate().take(10) {
        value = value.checked_mul(128)? | u64::from(b & 0x7f);
        if b & 0x80 != 0 {
            *buf = &buf[i + 1..];
            return Some(value);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> Vec<u8> {
        let mut h = SIGNATURE.to_vec();
        h.extend_from_slice(b"\x19\x93\r\n\x1a\n");
        h.extend_from_slice(&[4, 8, 8]);
        h.extend_from_slice(&0x5678i64.to_le_bytes());
        h.extend_from_slice(&370.5f64.to_le_bytes());
        assert_eq!(h.len(), HEADER_LEN);
        h.push(1); // upvalue count
        h
    }

    fn dumped(source: &[u8], line: u64) -> Vec<u8> {
        let mut b = header();
        push_varint(&mut b, source.len() as u64 + 1);
        b.extend_from_slice(source);
        push_varint(&mut b, line);
        push_varint(&mut b, line + 3);
        b
    }

    fn push_varint(b: &mut Vec<u8>, mut x: u64) {
        let mut groups = vec![];
        loop {
            groups.push((x & 0x7f) as u8);
            x >>= 7;
            if x == 0 {
                break;
            }
        }
        groups.reverse();
        let last = groups.len() - 1;
        groups[last] |= 0x80;
        b.extend_from_slice(&groups);
    }

    #[test]
    fn reads_chunk_and_line() {
        assert_eq!(
            of_bytecode(&dumped(b"@deploy.sloth", 12)).as_deref(),
            Some("deploy.sloth:12")
        );
        assert_eq!(
            of_bytecode(&dumped(b"=sloth-dsl", 300)).as_deref(),
            Some("sloth-dsl:300")
        );
        assert_eq!(
            of_bytecode(&dumped(b"return function() end", 1)).as_deref(),
            Some("(string):1")
        );
        let long = format!("@{}", "é".repeat(300));
        let o = of_bytecode(&dumped(long.as_bytes(), 5)).unwrap();
        assert!(o.ends_with("…:5") && o.len() < 220, "{o}");
    }

    #[test]
    fn stripped_truncated_and_foreign_code_give_none() {
        let mut stripped = header();
        push_varint(&mut stripped, 0);
        assert_eq!(of_bytecode(&stripped), None);
        let whole = dumped(b"@deploy.sloth", 12);
        for cut in 0..whole.len() - 2 {
            assert_eq!(of_bytecode(&whole[..cut]), None, "cut at {cut}");
        }
        assert_eq!(
            of_bytecode(b"\x1bLua\x53\x00 lua 5.3 code......................"),
            None
        );
        // A size that does not fit.
        let mut huge = header();
        huge.extend_from_slice(&[0x7f; 12]);
        assert_eq!(of_bytecode(&huge), None);
    }
}
