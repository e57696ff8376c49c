//! Python values written as JSON exactly as orjson writes them (no spaces, keys in order, raw
//! UTF-8, the same escapes and the same shortest float form), so that a record written here is
//! byte for byte the one `orjson.dumps` makes of the reference's dict.

use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyFloat, PyInt, PyList, PyString, PyTuple};

pub fn push_str(out: &mut Vec<u8>, text: &str) {
    out.push(b'"');
    let bytes = text.as_bytes();
    let mut start = 0;
    for (at, &byte) in bytes.iter().enumerate() {
        let escape: &[u8] = match byte {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            0x00..=0x1f => b"",
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..at]);
        if escape.is_empty() {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.extend_from_slice(b"\\u00");
            out.push(HEX[(byte >> 4) as usize]);
            out.push(HEX[(byte & 15) as usize]);
        } else {
            out.extend_from_slice(escape);
        }
        start = at + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

pub fn push_int(out: &mut Vec<u8>, value: i64) {
    out.extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
}

/// orjson's float: the shortest form that reads back the same (ryu), with a "+" on a positive
/// exponent ("1e+16"). `None` for a value JSON cannot hold.
pub fn push_float(out: &mut Vec<u8>, value: f64) -> Option<()> {
    if !value.is_finite() {
        return None;
    }
    let mut buffer = ryu::Buffer::new();
    let text = buffer.format_finite(value).as_bytes();
    match text.iter().position(|&byte| byte == b'e') {
        Some(at) if text.get(at + 1) != Some(&b'-') => {
            out.extend_from_slice(&text[..=at]);
            out.push(b'+');
            out.extend_from_slice(&text[at + 1..]);
        }
        _ => out.extend_from_slice(text),
    }
    Some(())
}

/// Nesting deeper than this is left to Python (orjson refuses past 255 levels; a value that
/// contains itself must not overflow the stack here).
const DEPTH_MAX: usize = 64;

/// Any value the records hold: str, int, float, bool, None, list, tuple, dict with str keys.
/// `None` for anything else (or an int beyond 64 bits, or nesting past DEPTH_MAX), which the
/// caller leaves to Python.
pub fn push_value(out: &mut Vec<u8>, value: &Bound<'_, PyAny>) -> Option<()> {
    push_nested(out, value, 0)
}

fn push_nested(out: &mut Vec<u8>, value: &Bound<'_, PyAny>, depth: usize) -> Option<()> {
    if let Ok(text) = value.downcast::<PyString>() {
        push_str(out, text.to_str().ok()?);
    } else if value.is_none() {
        out.extend_from_slice(b"null");
    } else if let Ok(flag) = value.downcast_exact::<PyBool>() {
        out.extend_from_slice(if flag.is_true() { b"true" } else { b"false" });
    } else if let Ok(number) = value.downcast_exact::<PyInt>() {
        match number.extract::<i64>() {
            Ok(small) => push_int(out, small),
            Err(_) => out.extend_from_slice(itoa::Buffer::new().format(number.extract::<u64>().ok()?).as_bytes()),
        }
    } else if let Ok(number) = value.downcast_exact::<PyFloat>() {
        push_float(out, number.value())?;
    } else if depth >= DEPTH_MAX {
        return None;
    } else if let Ok(items) = value.downcast_exact::<PyList>() {
        push_sequence(out, items.iter(), depth + 1)?;
    } else if let Ok(items) = value.downcast_exact::<PyTuple>() {
        push_sequence(out, items.iter(), depth + 1)?;
    } else if let Ok(map) = value.downcast_exact::<PyDict>() {
        out.push(b'{');
        for (index, (key, item)) in map.iter().enumerate() {
            if index > 0 {
                out.push(b',');
            }
            push_str(out, key.downcast_exact::<PyString>().ok()?.to_str().ok()?);
            out.push(b':');
            push_nested(out, &item, depth + 1)?;
        }
        out.push(b'}');
    } else {
        return None;
    }
    Some(())
}

/// Strings as a JSON array.
pub fn push_strs(out: &mut Vec<u8>, texts: &[impl AsRef<str>]) {
    out.push(b'[');
    for (index, text) in texts.iter().enumerate() {
        if index > 0 {
            out.push(b',');
        }
        push_str(out, text.as_ref());
    }
    out.push(b']');
}

fn push_sequence<'py>(out: &mut Vec<u8>, items: impl Iterator<Item = Bound<'py, PyAny>>, depth: usize) -> Option<()> {
    out.push(b'[');
    for (index, item) in items.enumerate() {
        if index > 0 {
            out.push(b',');
        }
        push_nested(out, &item, depth)?;
    }
    out.push(b']');
    Some(())
}
