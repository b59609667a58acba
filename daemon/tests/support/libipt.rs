//! Shared by the libipt conformance tests (`libipt_ptdump.rs`, `libipt_ptxed.rs`, `flow_*`):
//! the corpus in `tests/data/libipt`, its `case.json` files, and the blank folding libipt's
//! `diff -ub` compares with. Each test uses a part of it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// The corpus folder.
pub fn corpus() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/data/libipt")
}

/// The case names (folder names under `cases/`), sorted; checks there are all 242.
pub fn case_names() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(corpus().join("cases"))
        .expect("tests/data/libipt/cases")
        .map(|entry| {
            entry
                .expect("directory entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    names.sort();
    assert_eq!(names.len(), 242, "the corpus has 242 cases");
    names
}

/// One case: its folder and parsed `case.json`.
pub struct Case {
    pub name: String,
    pub dir: PathBuf,
    pub json: json::Value,
}

impl Case {
    pub fn load(name: &str) -> Case {
        let dir = corpus().join("cases").join(name);
        let json = json::parse(&read(&dir.join("case.json"))).expect("case.json is JSON");
        Case {
            name: name.to_owned(),
            dir,
            json,
        }
    }

    /// The tool's option tokens (`options.<tool>.args`).
    pub fn args(&self, tool: &str) -> Vec<String> {
        self.json["options"][tool]["args"]
            .items()
            .iter()
            .map(|arg| arg.text().to_owned())
            .collect()
    }

    /// The raw trace bytes.
    pub fn trace(&self) -> Vec<u8> {
        std::fs::read(self.dir.join(self.json["pt"].text())).expect("the case's .pt")
    }

    /// The code images in order, as (address, bytes).
    pub fn images(&self) -> Vec<(u64, Vec<u8>)> {
        self.json["images"]
            .items()
            .iter()
            .map(|section| {
                let bytes =
                    std::fs::read(self.dir.join(section["file"].text())).expect("image file");
                let offset = match &section["offset"] {
                    json::Value::Number(n) => *n as usize,
                    _ => 0,
                };
                let end = match &section["size"] {
                    json::Value::Number(n) => offset + *n as usize,
                    _ => bytes.len(),
                };
                let bytes = bytes[offset.min(end)..end.min(bytes.len())].to_vec();
                (hex(section["address"].text()), bytes)
            })
            .collect()
    }

    /// A run's expected output of `tool`, or None when the run has none.
    pub fn expected(&self, run: &json::Value, tool: &str) -> Option<String> {
        let file = run["expect"][tool].text();
        (!file.is_empty()).then(|| read(&self.dir.join(file)))
    }
}

/// Collapses each run of blanks to one space and drops trailing blanks, as `diff -b` compares.
pub fn fold(line: &str) -> String {
    line.split([' ', '\t'])
        .filter(|word| !word.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Whether two outputs are equal line by line under [`fold`].
pub fn same_output(ours: &str, theirs: &str) -> bool {
    ours.lines().map(fold).eq(theirs.lines().map(fold))
}

/// A hex number with or without `0x`.
pub fn hex(text: &str) -> u64 {
    u64::from_str_radix(text.trim_start_matches("0x"), 16).expect("hex number")
}

pub fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Just enough JSON to read `case.json` files, so that the test needs no dependency.
pub mod json {
    use std::ops::Index;

    #[derive(Debug, PartialEq)]
    pub enum Value {
        Null,
        Bool(bool),
        Number(f64),
        Text(String),
        List(Vec<Value>),
        Object(Vec<(String, Value)>),
    }

    static NULL: Value = Value::Null;

    impl Value {
        pub fn items(&self) -> &[Value] {
            match self {
                Value::List(items) => items,
                _ => &[],
            }
        }

        /// The string, or "" for anything else (null included).
        pub fn text(&self) -> &str {
            match self {
                Value::Text(text) => text,
                _ => "",
            }
        }
    }

    impl Index<&str> for Value {
        type Output = Value;

        fn index(&self, key: &str) -> &Value {
            match self {
                Value::Object(fields) => fields
                    .iter()
                    .find(|(name, _)| name == key)
                    .map_or(&NULL, |(_, value)| value),
                _ => &NULL,
            }
        }
    }

    pub fn parse(text: &str) -> Result<Value, String> {
        let mut parser = Parser {
            bytes: text.as_bytes(),
            pos: 0,
        };
        let value = parser.value()?;
        parser.blanks();
        if parser.pos != parser.bytes.len() {
            return Err(format!("trailing text at {}", parser.pos));
        }
        Ok(value)
    }

    struct Parser<'a> {
        bytes: &'a [u8],
        pos: usize,
    }

    impl Parser<'_> {
        fn blanks(&mut self) {
            while self
                .bytes
                .get(self.pos)
                .is_some_and(u8::is_ascii_whitespace)
            {
                self.pos += 1;
            }
        }

        fn expect(&mut self, byte: u8) -> Result<(), String> {
            self.blanks();
            if self.bytes.get(self.pos) == Some(&byte) {
                self.pos += 1;
                Ok(())
            } else {
                Err(format!("expected '{}' at {}", byte as char, self.pos))
            }
        }

        fn value(&mut self) -> Result<Value, String> {
            self.blanks();
            let rest = &self.bytes[self.pos.min(self.bytes.len())..];
            for (word, value) in [
                ("null", Value::Null),
                ("true", Value::Bool(true)),
                ("false", Value::Bool(false)),
            ] {
                if rest.starts_with(word.as_bytes()) {
                    self.pos += word.len();
                    return Ok(value);
                }
            }
            match rest.first() {
                Some(b'"') => self.string().map(Value::Text),
                Some(b'[') => {
                    self.pos += 1;
                    self.sequence(b']', Self::value).map(Value::List)
                }
                Some(b'{') => {
                    self.pos += 1;
                    let field = |this: &mut Self| {
                        this.blanks();
                        let key = this.string()?;
                        this.expect(b':')?;
                        Ok((key, this.value()?))
                    };
                    self.sequence(b'}', field).map(Value::Object)
                }
                _ => {
                    let start = self.pos;
                    while self
                        .bytes
                        .get(self.pos)
                        .is_some_and(|b| b.is_ascii_digit() || b"+-.eE".contains(b))
                    {
                        self.pos += 1;
                    }
                    std::str::from_utf8(&self.bytes[start..self.pos])
                        .ok()
                        .and_then(|number| number.parse().ok())
                        .map(Value::Number)
                        .ok_or_else(|| format!("bad value at {start}"))
                }
            }
        }

        /// Comma-separated items up to `close` (the opening bracket already read).
        fn sequence<T>(
            &mut self,
            close: u8,
            item: impl Fn(&mut Self) -> Result<T, String>,
        ) -> Result<Vec<T>, String> {
            let mut items = Vec::new();
            self.blanks();
            if self.bytes.get(self.pos) == Some(&close) {
                self.pos += 1;
                return Ok(items);
            }
            loop {
                items.push(item(self)?);
                self.blanks();
                match self.bytes.get(self.pos) {
                    Some(b',') => self.pos += 1,
                    _ => break,
                }
            }
            self.expect(close)?;
            Ok(items)
        }

        fn string(&mut self) -> Result<String, String> {
            self.expect(b'"')?;
            let mut text = String::new();
            loop {
                let rest = std::str::from_utf8(&self.bytes[self.pos..])
                    .map_err(|_| format!("bad UTF-8 at {}", self.pos))?;
                let mut chars = rest.chars();
                let c = chars.next().ok_or("unterminated string")?;
                self.pos += c.len_utf8();
                match c {
                    '"' => return Ok(text),
                    '\\' => {
                        let escape = chars.next().ok_or("unterminated escape")?;
                        self.pos += 1;
                        text.push(match escape {
                            'n' => '\n',
                            't' => '\t',
                            'r' => '\r',
                            'b' => '\u{8}',
                            'f' => '\u{c}',
                            'u' => {
                                let hex = self
                                    .bytes
                                    .get(self.pos..self.pos + 4)
                                    .and_then(|h| std::str::from_utf8(h).ok())
                                    .and_then(|h| u32::from_str_radix(h, 16).ok())
                                    .ok_or("bad \\u escape")?;
                                self.pos += 4;
                                char::from_u32(hex).unwrap_or('\u{fffd}')
                            }
                            other => other,
                        });
                    }
                    c => text.push(c),
                }
            }
        }
    }
}
