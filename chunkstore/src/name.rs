//! Image names `vo/name:tag` and image references (a name or a manifest id).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::{Error, ManifestId};

/// Longest accepted name, all parts included.
pub const MAX_NAME_LEN: usize = 200;

/// `vo/name:tag`: the virtual organisation that owns an image, the image's name and a
/// tag. A missing tag means `latest`. Parts use lowercase letters, digits, `.`, `_` and
/// `-` (tags may also use uppercase) and start with a letter or digit.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ImageName {
    vo: String,
    name: String,
    tag: String,
}

impl ImageName {
    /// The owning virtual organisation.
    pub fn vo(&self) -> &str {
        &self.vo
    }

    /// The image's name within its VO.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The tag.
    pub fn tag(&self) -> &str {
        &self.tag
    }
}

fn check_part(input: &str, part: &str, what: &str, upper_ok: bool) -> Result<(), Error> {
    let bad = |reason: String| Error::BadName { input: input.to_owned(), reason };
    let first = part.chars().next().ok_or_else(|| bad(format!("the {what} is empty")))?;
    if !first.is_ascii_alphanumeric() {
        return Err(bad(format!("the {what} must start with a letter or digit")));
    }
    let allowed = |c: char| {
        c.is_ascii_digit()
            || c.is_ascii_lowercase()
            || (upper_ok && c.is_ascii_uppercase())
            || matches!(c, '.' | '_' | '-')
    };
    if let Some(c) = part.chars().find(|&c| !allowed(c)) {
        return Err(bad(format!("the {what} contains {c:?}")));
    }
    Ok(())
}

impl FromStr for ImageName {
    type Err = Error;

    fn from_str(input: &str) -> Result<Self, Error> {
        let too_long = || Error::BadName {
            input: input.chars().take(40).collect::<String>() + "…",
            reason: format!("longer than {MAX_NAME_LEN} bytes with its tag"),
        };
        if input.len() > MAX_NAME_LEN {
            return Err(too_long());
        }
        let (vo, rest) = input.split_once('/').ok_or_else(|| Error::BadName {
            input: input.to_owned(),
            reason: "expected VO/NAME[:TAG]".into(),
        })?;
        let (name, tag) = rest.split_once(':').unwrap_or((rest, "latest"));
        check_part(input, vo, "VO", false)?;
        check_part(input, name, "name", false)?;
        check_part(input, tag, "tag", true)?;
        // The limit holds for the printed form, which gains `:latest` when the tag is
        // left out, so that every accepted name also parses back.
        if vo.len() + name.len() + tag.len() + 2 > MAX_NAME_LEN {
            return Err(too_long());
        }
        Ok(Self { vo: vo.into(), name: name.into(), tag: tag.into() })
    }
}

impl fmt::Display for ImageName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}:{}", self.vo, self.name, self.tag)
    }
}

impl fmt::Debug for ImageName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ImageName({self})")
    }
}

/// What a command names an image by: a name, or a manifest id (64 hex digits).
/// Serialised as that text.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub enum ImageRef {
    /// `vo/name:tag`.
    Name(ImageName),
    /// A manifest id.
    Id(ManifestId),
}

impl FromStr for ImageRef {
    type Err = Error;

    fn from_str(input: &str) -> Result<Self, Error> {
        if input.len() == 64 && input.bytes().all(|b| b.is_ascii_hexdigit()) {
            return input.parse().map(ImageRef::Id);
        }
        input.parse().map(ImageRef::Name)
    }
}

impl TryFrom<String> for ImageRef {
    type Error = Error;

    fn try_from(input: String) -> Result<Self, Error> {
        input.parse()
    }
}

impl From<ImageRef> for String {
    fn from(image: ImageRef) -> String {
        image.to_string()
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImageRef::Name(name) => name.fmt(f),
            ImageRef::Id(id) => write!(f, "{id:#}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(s: &str) -> String {
        s.parse::<ImageName>().err().map(|e| e.to_string()).unwrap_or_default()
    }

    #[test]
    fn parses_and_defaults_the_tag() {
        let n: ImageName = "grid3/worker:v1".parse().expect("valid");
        assert_eq!((n.vo(), n.name(), n.tag()), ("grid3", "worker", "v1"));
        assert_eq!(
            "grid3/base".parse::<ImageName>().expect("valid").to_string(),
            "grid3/base:latest"
        );
    }

    #[test]
    fn rejects_bad_names_saying_why() {
        assert!(err("worker").contains("expected VO/NAME[:TAG]"));
        assert!(err("/worker:v1").contains("the VO is empty"));
        assert!(err("grid3/Worker").contains("the name contains 'W'"));
        assert!(err("grid3/w:").contains("the tag is empty"));
        assert!(err("grid3/w:a/b").contains("the tag contains '/'"));
        assert!(err(&"a/".repeat(200)).contains("longer than"));
        // Accepted only if the printed form (with `:latest`) fits too.
        let long = format!("v/{}", "n".repeat(MAX_NAME_LEN - 2));
        assert!(err(&long).contains("longer than 200 bytes with its tag"), "{}", err(&long));
        let fits = format!("v/{}", "n".repeat(MAX_NAME_LEN - 2 - ":latest".len()));
        let parsed: ImageName = fits.parse().expect("fits");
        assert_eq!(parsed.to_string().parse::<ImageName>().ok(), Some(parsed));
    }

    #[test]
    fn a_ref_is_an_id_when_it_is_64_hex_digits() {
        let id = ManifestId::from(blake3::hash(b"x"));
        assert_eq!(id.to_hex().parse::<ImageRef>().ok(), Some(ImageRef::Id(id)));
        assert!(matches!("vo/a:b".parse::<ImageRef>(), Ok(ImageRef::Name(_))));
    }
}
