//! The document as written: serde structs for quick-xml, and where each element and
//! attribute starts.
//!
//! quick-xml's serde errors carry no position (tafia/quick-xml#313), so the text is read
//! twice. The first pass walks the events, catches syntax errors (with their position),
//! bounds the depth and size, and records the byte offset of every element and
//! attribute under a path like `virtualWorkspace[0].headnode[0].partition[1].@device`.
//! The second pass is serde through `serde_path_to_error`; its error path is mapped onto
//! the same keys. Validation (`validate.rs`) reports through [`Document::error`] with the
//! same paths, so every error has a line and column.

use std::collections::HashMap;

use quick_xml::events::Event;
use quick_xml::Reader;
use serde::Deserialize;

use super::{Error, Position};

/// The root element's name.
const ROOT: &str = "virtualWorkspace";
/// Deepest element nesting accepted (the schema needs 4).
const MAX_DEPTH: usize = 16;
/// Most elements accepted (a cluster document needs a few dozen).
const MAX_ELEMENTS: usize = 4096;

/// A parsed document and the positions of its parts.
#[derive(Debug)]
pub(super) struct Document<'a> {
    text: &'a str,
    source: &'a str,
    offsets: HashMap<String, usize>,
    pub root: XWorkspace,
}

impl<'a> Document<'a> {
    pub fn parse(text: &'a str, source: &'a str) -> Result<Self, Error> {
        let offsets = index(text, source)?;
        let mut de = quick_xml::de::Deserializer::from_str(text);
        let mut doc = Document { text, source, offsets, root: XWorkspace::default() };
        doc.root = serde_path_to_error::deserialize(&mut de).map_err(|e| {
            let (path, message) = locate(&serde_path(e.path()), &e.inner().to_string());
            doc.error(&path, &message)
        })?;
        Ok(doc)
    }

    /// An error at `path` (relative to the root, `headnode.partition[1].@device`): at
    /// that element or attribute, or the nearest enclosing one the document has.
    pub fn error(&self, path: &str, message: &str) -> Error {
        Error::at(self.source, self.position(path), message.to_owned())
    }

    pub fn position(&self, path: &str) -> Position {
        let mut key = canonical(path);
        loop {
            if let Some(&offset) = self.offsets.get(&key) {
                return Position::of_offset(self.text, offset);
            }
            match key.rfind('.') {
                Some(i) => key.truncate(i),
                None => return Position { line: 1, column: 1 },
            }
        }
    }

    /// Whether the document has this element or attribute.
    pub fn has(&self, path: &str) -> bool {
        self.offsets.contains_key(&canonical(path))
    }
}

/// `headnode.partition[1].@device` → `virtualWorkspace[0].headnode[0].partition[1].@device`.
fn canonical(path: &str) -> String {
    let mut key = format!("{ROOT}[0]");
    for part in path.split('.').filter(|p| !p.is_empty()) {
        key.push('.');
        key.push_str(part);
        if !part.starts_with('@') && !part.ends_with(']') {
            key.push_str("[0]");
        }
    }
    key
}

/// The path serde was at, in our notation.
fn serde_path(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut out = String::new();
    for segment in path.iter() {
        match segment {
            Segment::Map { key } | Segment::Enum { variant: key } => {
                if key == "$text" || key == "$value" {
                    continue;
                }
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(key);
            }
            Segment::Seq { index } => out.push_str(&format!("[{index}]")),
            Segment::Unknown => break,
        }
    }
    out
}

/// Where a serde error belongs and what it means in the document's terms (elements and
/// attributes rather than fields). `path` is where serde was: for an unknown or
/// duplicate field, the enclosing element.
fn locate(path: &str, message: &str) -> (String, String) {
    // serde_path_to_error may already have pushed the offending key.
    let field = message.strip_prefix("unknown field `").and_then(|r| r.split('`').next());
    let path = match (field, path.rsplit_once('.')) {
        (Some(f), Some((parent, last))) if last == f => parent,
        (Some(f), None) if path == f => "",
        _ => path,
    };
    let parent = match path.rsplit('.').next() {
        Some(last) if !last.is_empty() => last.split('[').next().unwrap_or(last),
        _ => ROOT,
    };
    let child =
        |name: &str| if path.is_empty() { name.to_owned() } else { format!("{path}.{name}") };
    if let Some(rest) = message.strip_prefix("unknown field `") {
        let (name, expected) = rest.split_once('`').unwrap_or((rest, ""));
        let expected = expected.replace("`@", "`").replace(", expected", "; expected");
        return match name.strip_prefix('@') {
            Some(attr) => {
                (child(name), format!("unknown attribute `{attr}` on <{parent}>{expected}"))
            }
            None => (child(name), format!("unknown element <{name}> in <{parent}>{expected}")),
        };
    }
    if let Some(rest) = message.strip_prefix("duplicate field `") {
        let name = rest.split('`').next().unwrap_or(rest);
        let message = format!("<{name}> appears more than once in <{parent}>; it may appear once");
        return (child(&format!("{name}[1]")), message);
    }
    (path.to_owned(), message.to_owned())
}

/// First pass: syntax, limits, and the offset of every element and attribute.
fn index(text: &str, source: &str) -> Result<HashMap<String, usize>, Error> {
    let at = |offset: u64| Position::of_offset(text, offset as usize);
    let mut reader = Reader::from_str(text);
    let mut offsets = HashMap::new();
    // (path, how many children of each name so far)
    let mut stack: Vec<(String, HashMap<String, usize>)> = vec![(String::new(), HashMap::new())];
    let mut elements = 0;
    loop {
        let start = reader.buffer_position();
        let event = reader.read_event().map_err(|e| {
            Error::at(source, at(reader.error_position()), format!("malformed XML: {e}"))
        })?;
        let (tag, is_start) = match event {
            Event::Eof => break,
            Event::Start(tag) => (tag, true),
            Event::Empty(tag) => (tag, false),
            Event::End(_) => {
                stack.pop();
                continue;
            }
            Event::DocType(_) => {
                let message = "a DOCTYPE is not allowed in a workspace document".to_owned();
                return Err(Error::at(source, at(start), message));
            }
            _ => continue,
        };
        // The tag's text, from `<` to `>` (only used to place attributes: anything odd
        // places them at the tag).
        let raw = text.get(start as usize..reader.buffer_position() as usize).unwrap_or("");
        let name = tag.name().into_inner().to_owned();
        elements += 1;
        if elements > MAX_ELEMENTS {
            let message = format!("more than {MAX_ELEMENTS} elements; is this a workspace?");
            return Err(Error::at(source, at(start), message));
        }
        let depth = stack.len();
        if depth == 1 && (name != ROOT || offsets.contains_key(&format!("{ROOT}[0]"))) {
            let message =
                format!("the document must have one root element <{ROOT}>, found <{name}>");
            return Err(Error::at(source, at(start), message));
        }
        if depth > MAX_DEPTH {
            let message = format!("elements nested deeper than {MAX_DEPTH} levels");
            return Err(Error::at(source, at(start), message));
        }
        let (parent, counts) = stack.last_mut().expect("the stack keeps its root entry");
        let n = counts.entry(name.clone()).or_insert(0);
        let path = if parent.is_empty() {
            format!("{name}[{n}]")
        } else {
            format!("{parent}.{name}[{n}]")
        };
        *n += 1;
        offsets.insert(path.clone(), start as usize);
        for attr in tag.attributes() {
            let attr = attr.map_err(|e| {
                Error::at(source, at(start), format!("malformed attribute in <{name}>: {e}"))
            })?;
            let key = attr.key.into_inner().to_owned();
            let offset = start as usize + attribute_offset(raw, &key);
            offsets.insert(format!("{path}.@{key}"), offset);
        }
        if is_start {
            stack.push((path, HashMap::new()));
        }
    }
    if !offsets.contains_key(&format!("{ROOT}[0]")) {
        return Err(Error::at(source, at(0), format!("no <{ROOT}> element")));
    }
    Ok(offsets)
}

/// Where attribute `key` starts inside a tag's text (0 if not found).
fn attribute_offset(raw: &str, key: &str) -> usize {
    let mut from = 0;
    while let Some(i) = raw[from..].find(key) {
        let i = from + i;
        let before = raw[..i].chars().next_back();
        let after = raw[i + key.len()..].trim_start();
        if before.is_some_and(char::is_whitespace) && after.starts_with('=') {
            return i;
        }
        from = i + key.len();
    }
    0
}

// The document's shape. Everything is optional or text so that validation, not serde,
// says what is missing or malformed, with its position.

/// `<virtualWorkspace>`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct XWorkspace {
    #[serde(rename = "@xmlns")]
    pub _xmlns: Option<String>,
    #[serde(rename = "@type")]
    pub kind: Option<String>,
    #[serde(rename = "@name")]
    pub name: Option<String>,
    #[serde(rename = "@nodeNumber")]
    pub node_number: Option<String>,
    #[serde(rename = "@creationTime")]
    pub creation_time: Option<String>,
    #[serde(rename = "@staging")]
    pub staging: Option<String>,
    pub headnode: Option<XNode>,
    pub workernode: Option<XNode>,
    pub node: Option<XNode>,
}

/// `<headnode>`, `<workernode>` or `<node>`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct XNode {
    #[serde(rename = "@name")]
    pub name: Option<String>,
    #[serde(rename = "@count")]
    pub count: Option<String>,
    pub memory: Option<String>,
    pub vcpus: Option<String>,
    pub cpus: Option<String>,
    pub kernel: Option<XKernel>,
    pub bootloader: Option<XBootloader>,
    #[serde(default)]
    pub partition: Vec<XPartition>,
    pub swap: Option<XSwap>,
    #[serde(default)]
    pub nic: Vec<XNic>,
    pub integration: Option<XIntegration>,
    pub roles: Option<XRoles>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct XKernel {
    #[serde(rename = "@type")]
    pub mode: Option<String>,
    #[serde(rename = "@path")]
    pub path: Option<String>,
    #[serde(rename = "@ramdisk")]
    pub ramdisk: Option<String>,
    #[serde(rename = "@root")]
    pub root: Option<String>,
    #[serde(rename = "@extra")]
    pub extra: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct XBootloader {
    #[serde(rename = "@path")]
    pub path: Option<String>,
    #[serde(rename = "@args")]
    pub args: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct XPartition {
    #[serde(rename = "@image")]
    pub image: Option<String>,
    #[serde(rename = "@device")]
    pub device: Option<String>,
    #[serde(rename = "@role")]
    pub role: Option<String>,
    #[serde(rename = "@access")]
    pub access: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct XSwap {
    #[serde(rename = "@device")]
    pub device: Option<String>,
    #[serde(rename = "@size")]
    pub size: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct XNic {
    #[serde(rename = "@network")]
    pub network: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct XIntegration {
    #[serde(rename = "@strategy")]
    pub strategy: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct XRoles {
    #[serde(default)]
    pub nfs_server: Vec<XExport>,
    #[serde(default)]
    pub nfs_client: Vec<XMount>,
    pub batch_server: Option<XBatchServer>,
    pub batch_worker: Option<XEmpty>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct XExport {
    #[serde(rename = "@export")]
    pub export: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct XMount {
    #[serde(rename = "@export")]
    pub export: Option<String>,
    #[serde(rename = "@mount")]
    pub mount: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct XBatchServer {
    #[serde(rename = "@system")]
    pub system: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct XEmpty {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_paths_index_every_element() {
        assert_eq!(
            canonical("headnode.partition[1].@device"),
            "virtualWorkspace[0].headnode[0].partition[1].@device"
        );
        assert_eq!(canonical(""), "virtualWorkspace[0]");
    }

    #[test]
    fn attribute_offsets_skip_lookalikes() {
        let raw = r#"<partition image="a/device:1" device="xvda1">"#;
        assert_eq!(attribute_offset(raw, "device"), raw.find(" device=").map_or(0, |i| i + 1));
    }
}
