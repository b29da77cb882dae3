//! `json.dumps` as Python writes it (", " / ": " separators, indent with "," items, optional
//! ASCII escaping), which chat templates' `tojson` output must match byte for byte.

use std::io::{self, Write};

use serde::Serialize;
use serde_json::ser::{CharEscape, Formatter};
use serde_json::Value;

pub struct DumpOptions {
    /// Python's `indent`: None for one line, else the string each level is indented with.
    pub indent: Option<String>,
    /// Python's `separators` (item, key); None for Python's defaults.
    pub separators: Option<(String, String)>,
    pub ensure_ascii: bool,
    pub sort_keys: bool,
}

pub fn dumps(value: &Value, options: &DumpOptions) -> String {
    let (item_sep, key_sep) = options.separators.clone().unwrap_or_else(|| {
        // Python drops the space after "," when indenting.
        let item = if options.indent.is_some() { "," } else { ", " };
        (item.to_string(), ": ".to_string())
    });
    let mut sorted;
    let value = if options.sort_keys {
        sorted = value.clone();
        sort_keys(&mut sorted);
        &sorted
    } else {
        value
    };
    let formatter = PyFormatter {
        indent: options.indent.clone(),
        item_sep,
        key_sep,
        ensure_ascii: options.ensure_ascii,
        level: 0,
        has_value: false,
    };
    let mut out = Vec::new();
    let mut ser = serde_json::Serializer::with_formatter(&mut out, formatter);
    // Serializing a Value into memory cannot fail.
    let _ = value.serialize(&mut ser);
    String::from_utf8(out).unwrap_or_default()
}

fn sort_keys(value: &mut Value) {
    match value {
        Value::Object(map) => {
            map.sort_keys();
            map.values_mut().for_each(sort_keys);
        }
        Value::Array(items) => items.iter_mut().for_each(sort_keys),
        _ => {}
    }
}

struct PyFormatter {
    indent: Option<String>,
    item_sep: String,
    key_sep: String,
    ensure_ascii: bool,
    level: usize,
    has_value: bool,
}

impl PyFormatter {
    fn newline<W: ?Sized + Write>(&self, w: &mut W) -> io::Result<()> {
        if let Some(indent) = &self.indent {
            w.write_all(b"\n")?;
            for _ in 0..self.level {
                w.write_all(indent.as_bytes())?;
            }
        }
        Ok(())
    }

    fn begin<W: ?Sized + Write>(&mut self, w: &mut W, open: &[u8]) -> io::Result<()> {
        self.level += 1;
        self.has_value = false;
        w.write_all(open)
    }

    fn end<W: ?Sized + Write>(&mut self, w: &mut W, close: &[u8]) -> io::Result<()> {
        self.level -= 1;
        if self.has_value {
            self.newline(w)?;
        }
        w.write_all(close)
    }

    fn item<W: ?Sized + Write>(&mut self, w: &mut W, first: bool) -> io::Result<()> {
        if !first {
            w.write_all(self.item_sep.as_bytes())?;
        }
        self.newline(w)
    }
}

impl Formatter for PyFormatter {
    fn begin_array<W: ?Sized + Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.begin(w, b"[")
    }

    fn end_array<W: ?Sized + Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.end(w, b"]")
    }

    fn begin_array_value<W: ?Sized + Write>(&mut self, w: &mut W, first: bool) -> io::Result<()> {
        self.item(w, first)
    }

    fn end_array_value<W: ?Sized + Write>(&mut self, _w: &mut W) -> io::Result<()> {
        self.has_value = true;
        Ok(())
    }

    fn begin_object<W: ?Sized + Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.begin(w, b"{")
    }

    fn end_object<W: ?Sized + Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.end(w, b"}")
    }

    fn begin_object_key<W: ?Sized + Write>(&mut self, w: &mut W, first: bool) -> io::Result<()> {
        self.item(w, first)
    }

    fn begin_object_value<W: ?Sized + Write>(&mut self, w: &mut W) -> io::Result<()> {
        w.write_all(self.key_sep.as_bytes())
    }

    fn end_object_value<W: ?Sized + Write>(&mut self, _w: &mut W) -> io::Result<()> {
        self.has_value = true;
        Ok(())
    }

    fn write_string_fragment<W: ?Sized + Write>(
        &mut self,
        w: &mut W,
        fragment: &str,
    ) -> io::Result<()> {
        if !self.ensure_ascii {
            return w.write_all(fragment.as_bytes());
        }
        for c in fragment.chars() {
            if c.is_ascii() {
                w.write_all(&[c as u8])?;
            } else {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    write!(w, "\\u{unit:04x}")?;
                }
            }
        }
        Ok(())
    }

    fn write_char_escape<W: ?Sized + Write>(
        &mut self,
        w: &mut W,
        escape: CharEscape,
    ) -> io::Result<()> {
        serde_json::ser::CompactFormatter.write_char_escape(w, escape)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn opts(indent: Option<&str>) -> DumpOptions {
        DumpOptions {
            indent: indent.map(String::from),
            separators: None,
            ensure_ascii: false,
            sort_keys: false,
        }
    }

    #[test]
    fn python_spacing() {
        let v = json!({"z": [1, 2.5, null, true], "a": {"k": "v"}, "e": []});
        assert_eq!(
            dumps(&v, &opts(None)),
            r#"{"z": [1, 2.5, null, true], "a": {"k": "v"}, "e": []}"#
        );
        assert_eq!(
            dumps(&v, &opts(Some("  "))),
            "{\n  \"z\": [\n    1,\n    2.5,\n    null,\n    true\n  ],\n  \"a\": {\n    \"k\": \"v\"\n  },\n  \"e\": []\n}"
        );
    }

    #[test]
    fn ascii_escaping_and_sorting() {
        let v = json!({"b": "é😀\n", "a": 1});
        let mut o = opts(None);
        o.ensure_ascii = true;
        o.sort_keys = true;
        assert_eq!(dumps(&v, &o), r#"{"a": 1, "b": "\u00e9\ud83d\ude00\n"}"#);
        o.separators = Some((",".into(), ":".into()));
        assert_eq!(dumps(&v, &o), r#"{"a":1,"b":"\u00e9\ud83d\ude00\n"}"#);
    }
}
