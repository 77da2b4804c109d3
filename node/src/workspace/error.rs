//! Workspace document errors: each names the document and, where it has one, the line
//! and column.

use std::fmt;

/// A line and column in a document, both from 1 (columns count characters).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Position {
    /// Line, from 1.
    pub line: u32,
    /// Column in characters, from 1.
    pub column: u32,
}

impl Position {
    /// The position of byte `offset` in `text` (clamped to its end).
    pub fn of_offset(text: &str, offset: usize) -> Self {
        let mut offset = offset.min(text.len());
        while !text.is_char_boundary(offset) {
            offset -= 1;
        }
        let before = &text[..offset];
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let line = before.bytes().filter(|&b| b == b'\n').count() + 1;
        let column = before[line_start..].chars().count() + 1;
        Position { line: line as u32, column: column as u32 }
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.column)
    }
}

/// Why a workspace document was refused.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file could not be read.
    #[error("cannot read workspace {source_name}: {error}")]
    Io {
        /// The document's path.
        source_name: String,
        /// What the OS said.
        #[source]
        error: std::io::Error,
    },
    /// Larger than [`super::MAX_DOCUMENT`].
    #[error("workspace {source_name} is larger than {limit} bytes; is it the right file?")]
    TooLarge {
        /// The document's path.
        source_name: String,
        /// The limit.
        limit: usize,
    },
    /// A problem at a place in the document.
    #[error("{source_name}:{at}: {message}")]
    At {
        /// The document's path.
        source_name: String,
        /// Where.
        at: Position,
        /// What is wrong and what to do.
        message: String,
    },
}

impl Error {
    pub(crate) fn at(source: &str, at: Position, message: String) -> Self {
        Error::At { source_name: source.to_owned(), at, message }
    }

    /// Where in the document, if the error has a place.
    pub fn position(&self) -> Option<Position> {
        match self {
            Error::At { at, .. } => Some(*at),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_count_lines_and_characters() {
        let text = "ab\nçd\n";
        assert_eq!(Position::of_offset(text, 0), Position { line: 1, column: 1 });
        assert_eq!(Position::of_offset(text, 3), Position { line: 2, column: 1 });
        // `ç` is two bytes but one column.
        assert_eq!(Position::of_offset(text, 5), Position { line: 2, column: 2 });
        assert_eq!(Position::of_offset(text, 99), Position { line: 3, column: 1 });
    }
}
