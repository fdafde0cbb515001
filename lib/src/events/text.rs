//! Which characters a text field may hold.
//!
//! Text that tollgate stores is shown again later: in the dashboard, in
//! exports, in a terminal reading the logs. Two kinds of character make
//! such text lie about itself, so they are refused at the door:
//!
//! - control characters (C0 U+0000–U+001F, DEL U+007F, C1 U+0080–U+009F):
//!   an ANSI escape (ESC, U+001B) rewrites a terminal, a line break forges
//!   a log line;
//! - the bidirectional controls (Unicode's `Bidi_Control` property: U+061C,
//!   U+200E, U+200F, U+202A–U+202E, U+2066–U+2069): U+202E RIGHT-TO-LEFT
//!   OVERRIDE shows the file name `gpj.exe` as `exe.jpg`.
//!
//! How strict depends on what the text is ([`TextKind`]): names, ids,
//! URLs, versions and file names are one line of plain text and refuse all
//! of them; free text that people write (a page title, a string property)
//! may hold tab and line breaks, and the three invisible direction *marks*,
//! which right-to-left text carries legitimately and which, unlike the
//! embeddings, overrides and isolates, can't reorder the text around them.

/// What a text field holds, which decides the characters it may contain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextKind {
    /// One line of plain text: names, ids, URLs, paths, versions, property
    /// keys, file names. No control character and no bidirectional control.
    Plain,
    /// Free text written by people: page titles and string property values.
    /// Tab, line feed and carriage return are allowed, and so are the marks
    /// U+200E, U+200F and U+061C; other controls, and the bidirectional
    /// embeddings, overrides and isolates, are not.
    Prose,
}

impl TextKind {
    /// The rule, for error messages.
    pub fn rule(self) -> &'static str {
        match self {
            TextKind::Plain => {
                "names, ids and URLs may not contain control characters (U+0000–U+001F, \
                 U+007F–U+009F) or bidirectional controls (U+061C, U+200E, U+200F, \
                 U+202A–U+202E, U+2066–U+2069)"
            }
            TextKind::Prose => {
                "free text may not contain control characters other than tab and line breaks, \
                 or the bidirectional embeddings, overrides and isolates (U+202A–U+202E, \
                 U+2066–U+2069)"
            }
        }
    }

    fn allows(self, c: char) -> bool {
        match self {
            TextKind::Plain => !is_control(c) && !is_bidi_control(c),
            TextKind::Prose => {
                matches!(c, '\t' | '\n' | '\r' | '\u{061C}' | '\u{200E}' | '\u{200F}')
                    || (!is_control(c) && !is_bidi_control(c))
            }
        }
    }
}

/// A character a field may not hold, and where.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Forbidden {
    /// The character.
    pub character: char,
    /// Its position in the text, counted in characters from 1.
    pub position: usize,
}

impl std::fmt::Display for Forbidden {
    /// "U+202E (RIGHT-TO-LEFT OVERRIDE) at character 4".
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let code = self.character as u32;
        match name_of(self.character) {
            Some(name) => write!(f, "U+{code:04X} ({name})"),
            None => write!(f, "U+{code:04X}"),
        }?;
        write!(f, " at character {}", self.position)
    }
}

/// The first character of `text` that `kind` refuses, if any.
pub fn find_forbidden(text: &str, kind: TextKind) -> Option<Forbidden> {
    // Every refused character is a control (ASCII or two-byte UTF-8) or a
    // bidi control (two or three bytes): printable ASCII can't be one,
    // which makes the common case a byte scan.
    if text.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return None;
    }
    text.chars()
        .enumerate()
        .find(|&(_, c)| !kind.allows(c))
        .map(|(at, character)| Forbidden {
            character,
            position: at + 1,
        })
}

/// `text` without the characters `kind` refuses, for derived values that
/// are cleaned rather than rejected.
pub fn without_forbidden(text: &str, kind: TextKind) -> String {
    text.chars().filter(|&c| kind.allows(c)).collect()
}

/// A C0 or C1 control character, or DEL (Unicode category Cc).
fn is_control(c: char) -> bool {
    c.is_control()
}

/// Unicode's `Bidi_Control` characters.
fn is_bidi_control(c: char) -> bool {
    matches!(
        c,
        '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}'
    )
}

fn name_of(c: char) -> Option<&'static str> {
    Some(match c {
        '\0' => "NUL",
        '\t' => "TAB",
        '\n' => "LINE FEED",
        '\r' => "CARRIAGE RETURN",
        '\u{1B}' => "ESCAPE",
        '\u{7F}' => "DELETE",
        '\u{061C}' => "ARABIC LETTER MARK",
        '\u{200E}' => "LEFT-TO-RIGHT MARK",
        '\u{200F}' => "RIGHT-TO-LEFT MARK",
        '\u{202A}' => "LEFT-TO-RIGHT EMBEDDING",
        '\u{202B}' => "RIGHT-TO-LEFT EMBEDDING",
        '\u{202C}' => "POP DIRECTIONAL FORMATTING",
        '\u{202D}' => "LEFT-TO-RIGHT OVERRIDE",
        '\u{202E}' => "RIGHT-TO-LEFT OVERRIDE",
        '\u{2066}' => "LEFT-TO-RIGHT ISOLATE",
        '\u{2067}' => "RIGHT-TO-LEFT ISOLATE",
        '\u{2068}' => "FIRST STRONG ISOLATE",
        '\u{2069}' => "POP DIRECTIONAL ISOLATE",
        c if c.is_control() => "a control character",
        _ => return None,
    })
}

/// The first `max` characters of `s`.
pub(crate) fn truncate_chars(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((at, _)) => &s[..at],
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BIDI_CONTROLS: [char; 12] = [
        '\u{061C}', '\u{200E}', '\u{200F}', '\u{202A}', '\u{202B}', '\u{202C}', '\u{202D}',
        '\u{202E}', '\u{2066}', '\u{2067}', '\u{2068}', '\u{2069}',
    ];

    fn controls() -> impl Iterator<Item = char> {
        (0u32..0x20)
            .chain(0x7f..0xa0)
            .map(|c| char::from_u32(c).unwrap())
    }

    #[test]
    fn plain_text_refuses_every_control_and_bidi_control() {
        for c in controls().chain(BIDI_CONTROLS) {
            let text = format!("ab{c}d");
            assert_eq!(
                find_forbidden(&text, TextKind::Plain),
                Some(Forbidden {
                    character: c,
                    position: 3
                }),
                "U+{:04X}",
                c as u32
            );
        }
    }

    #[test]
    fn prose_allows_tab_line_breaks_and_direction_marks_but_nothing_else() {
        let allowed = ['\t', '\n', '\r', '\u{061C}', '\u{200E}', '\u{200F}'];
        for c in controls().chain(BIDI_CONTROLS) {
            let found = find_forbidden(&format!("x{c}"), TextKind::Prose);
            assert_eq!(found.is_none(), allowed.contains(&c), "U+{:04X}", c as u32);
        }
        assert_eq!(
            find_forbidden("שלום\u{200F} (2)\r\n\tend", TextKind::Prose),
            None
        );
    }

    #[test]
    fn ordinary_unicode_is_text() {
        for text in [
            "Résumé 履歴書 📊",
            "مرحبا",
            "שלום",
            "zero\u{200B}width joiner\u{200D}",
            "",
        ] {
            assert_eq!(find_forbidden(text, TextKind::Plain), None, "{text}");
        }
    }

    #[test]
    fn the_position_counts_characters_and_the_message_names_the_character() {
        let found = find_forbidden("é\u{202E}gpj.exe", TextKind::Plain).unwrap();
        assert_eq!(found.position, 2);
        assert_eq!(
            found.to_string(),
            "U+202E (RIGHT-TO-LEFT OVERRIDE) at character 2"
        );
        let found = find_forbidden("\u{1b}[31mred", TextKind::Prose).unwrap();
        assert_eq!(found.to_string(), "U+001B (ESCAPE) at character 1");
        let found = find_forbidden("a\u{85}", TextKind::Plain).unwrap();
        assert_eq!(
            found.to_string(),
            "U+0085 (a control character) at character 2"
        );
    }

    #[test]
    fn refused_characters_can_be_dropped_instead() {
        assert_eq!(
            without_forbidden("news\u{202E}letter\u{1b}\0", TextKind::Plain),
            "newsletter"
        );
    }
}
