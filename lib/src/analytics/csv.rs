//! `format=csv`: a view written as one CSV table (RFC 4180: a header row,
//! CRLF line ends, fields quoted when they hold a comma, a quote or a line
//! break), the same for every view because it is derived from the view's
//! JSON fields.
//!
//! # Layout
//!
//! - The first column is `section`: where in the view's JSON the row comes
//!   from. The view's top-level numbers and strings (`view`, `key_id`,
//!   `generated_at`, `start`, `end`, totals such as `events`) form one row,
//!   section `summary`. A top-level object (`totals`) is one row, its
//!   section the field's name. Each element of a top-level list (`days`,
//!   `providers`, `names`, `top_paths`, …) is one row, its section the
//!   list's name.
//! - A list of objects inside a row (`daily[].days` of the providers view)
//!   is expanded: one row per element, section `<parent section>.<field>`
//!   (`daily.days`), carrying the parent's other fields (`provider`).
//! - An object inside a row is spread into columns named with dots
//!   (`previous.visitors`); a list of plain values inside a row is one
//!   cell holding it as JSON.
//! - Columns: `section`, then the row labels the view has (`day`,
//!   `provider`, `content_type`, `name`, `value`, in that order), then
//!   every other field name in alphabetical order. A row leaves the
//!   columns it does not have empty, as it does `null`s. A column appears
//!   when some row has it, so read columns by name, not by position.
//! - Sections come in order: `summary`, then the view's fields in
//!   alphabetical order; rows within a section keep the order of the list.
//!
//! # Formula injection
//!
//! A spreadsheet runs a cell that starts with `=`, `+`, `-` or `@` (and
//! some treat a leading tab or carriage return alike) as a formula, and
//! strings here come from visitors: event names, paths, referrers. Such a
//! string is written with a `'` in front, which spreadsheets show as text
//! (OWASP's advice for CSV injection). Numbers are written as they are.

use std::collections::BTreeMap;

use bytes::Bytes;
use serde_json::{Map, Value};

/// The content type of a CSV answer.
pub const CONTENT_TYPE: &str = "text/csv; charset=utf-8";

/// Columns that name what a row is about, put first.
const LABELS: [&str; 5] = ["day", "provider", "content_type", "name", "value"];

/// The section of the view's top-level plain fields.
const SUMMARY: &str = "summary";

/// First characters that make a spreadsheet read a cell as a formula.
const FORMULA_STARTS: [char; 6] = ['=', '+', '-', '@', '\t', '\r'];

/// One row: its section and its cells by column.
type Row = (String, BTreeMap<String, String>);

/// Writes a view's fields as CSV.
pub fn write(view: &Map<String, Value>) -> anyhow::Result<Bytes> {
    let rows = rows(view);
    let mut columns: Vec<&str> = LABELS
        .into_iter()
        .filter(|label| rows.iter().any(|(_, cells)| cells.contains_key(*label)))
        .collect();
    let others: std::collections::BTreeSet<&str> = rows
        .iter()
        .flat_map(|(_, cells)| cells.keys().map(String::as_str))
        .filter(|column| !LABELS.contains(column))
        .collect();
    columns.extend(others);

    let mut out = ::csv::WriterBuilder::new()
        .terminator(::csv::Terminator::CRLF)
        .from_writer(vec![]);
    out.write_record(std::iter::once("section").chain(columns.iter().copied()))?;
    for (section, cells) in &rows {
        let values = columns
            .iter()
            .map(|column| cells.get(*column).map_or("", String::as_str));
        out.write_record(std::iter::once(section.as_str()).chain(values))?;
    }
    Ok(out.into_inner()?.into())
}

/// The rows of a view, in the layout the module doc gives.
fn rows(view: &Map<String, Value>) -> Vec<Row> {
    let mut summary = BTreeMap::new();
    let mut rows = vec![];
    for (name, value) in view {
        match value {
            Value::Object(object) => expand(name, object, &BTreeMap::new(), &mut rows),
            Value::Array(items) => list(name, items, &BTreeMap::new(), &mut rows),
            plain => {
                summary.insert(name.clone(), cell(plain));
            }
        }
    }
    if !summary.is_empty() {
        rows.insert(0, (SUMMARY.to_owned(), summary));
    }
    rows
}

/// One row per element of a list, each carrying the cells of its parent.
fn list(section: &str, items: &[Value], carried: &BTreeMap<String, String>, rows: &mut Vec<Row>) {
    for item in items {
        match item {
            Value::Object(object) => expand(section, object, carried, rows),
            plain => {
                let mut cells = carried.clone();
                cells.insert("value".to_owned(), cell(plain));
                rows.push((section.to_owned(), cells));
            }
        }
    }
}

/// The row of an object, or, when it holds lists of objects, one row per
/// element of each, carrying the object's other fields (its own fields win
/// over carried ones of the same name).
fn expand(
    section: &str,
    object: &Map<String, Value>,
    carried: &BTreeMap<String, String>,
    rows: &mut Vec<Row>,
) {
    let mut cells = carried.clone();
    let mut nested = vec![];
    for (name, value) in object {
        match value {
            Value::Array(items) if items.iter().any(Value::is_object) => nested.push((name, items)),
            _ => spread(name, value, &mut cells),
        }
    }
    if nested.is_empty() {
        rows.push((section.to_owned(), cells));
        return;
    }
    for (name, items) in nested {
        list(&format!("{section}.{name}"), items, &cells, rows);
    }
}

/// A field's cells: one, or one per field of an object, named with dots.
fn spread(name: &str, value: &Value, cells: &mut BTreeMap<String, String>) {
    match value {
        Value::Object(object) => {
            for (inner, value) in object {
                spread(&format!("{name}.{inner}"), value, cells);
            }
        }
        _ => {
            cells.insert(name.to_owned(), cell(value));
        }
    }
}

/// A value as one cell: text defused against formulas, numbers and
/// booleans as JSON writes them, `null` empty, a list as its JSON.
fn cell(value: &Value) -> String {
    match value {
        Value::Null => String::new(),
        Value::String(text) => defuse(text),
        Value::Bool(_) | Value::Number(_) => value.to_string(),
        Value::Array(_) | Value::Object(_) => defuse(&value.to_string()),
    }
}

/// Text that a spreadsheet would run as a formula, made plain text.
fn defuse(text: &str) -> String {
    if text.starts_with(FORMULA_STARTS) {
        format!("'{text}")
    } else {
        text.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn csv(view: Value) -> String {
        let Value::Object(view) = view else {
            panic!("a view is an object")
        };
        String::from_utf8(write(&view).unwrap().to_vec()).unwrap()
    }

    #[test]
    fn plain_fields_form_the_summary_and_lists_their_sections() {
        let text = csv(json!({
            "view": "events", "events": 3,
            "names": [{"name": "signup", "events": 2}, {"name": "login", "events": 1}],
            "top_paths": [{"value": "/", "events": 3}],
        }));
        assert_eq!(
            text,
            "section,name,value,events,view\r\n\
             summary,,,3,events\r\n\
             names,signup,,2,\r\n\
             names,login,,1,\r\n\
             top_paths,,/,3,\r\n"
        );
    }

    #[test]
    fn an_object_is_one_row_and_nested_lists_carry_their_parent() {
        let text = csv(json!({
            "totals": {"requests": 5, "last_used_at": null},
            "daily": [{"provider": "s3", "days": [
                {"day": "2026-11-21", "uploads": 1},
                {"day": "2026-11-22", "uploads": 2},
            ]}],
        }));
        assert_eq!(
            text,
            "section,day,provider,last_used_at,requests,uploads\r\n\
             daily.days,2026-11-21,s3,,,1\r\n\
             daily.days,2026-11-22,s3,,,2\r\n\
             totals,,,,5,\r\n"
        );
    }

    #[test]
    fn nested_objects_spread_into_dotted_columns() {
        let text =
            csv(json!({"comparison": {"current": {"visitors": 4}, "previous": {"visitors": 3}}}));
        assert_eq!(
            text,
            "section,current.visitors,previous.visitors\r\ncomparison,4,3\r\n"
        );
    }

    #[test]
    fn text_a_spreadsheet_would_run_is_defused_and_quoted() {
        let text = csv(json!({"names": [
            {"name": "=HYPERLINK(\"https://evil.example\",\"x\")", "events": 1},
            {"name": "+1", "events": 1},
            {"name": "-2", "events": 1},
            {"name": "@SUM(A1)", "events": 1},
            {"name": "\tx", "events": 1},
            {"name": "a,b\r\nc", "events": -1},
        ]}));
        let mut reader = ::csv::Reader::from_reader(text.as_bytes());
        let names: Vec<(String, String)> = reader
            .records()
            .map(|record| {
                let record = record.unwrap();
                (record[1].to_owned(), record[2].to_owned())
            })
            .collect();
        assert_eq!(
            names,
            [
                ("'=HYPERLINK(\"https://evil.example\",\"x\")", "1"),
                ("'+1", "1"),
                ("'-2", "1"),
                ("'@SUM(A1)", "1"),
                ("'\tx", "1"),
                ("a,b\r\nc", "-1"),
            ]
            .map(|(name, events)| (name.to_owned(), events.to_owned()))
        );
        assert!(
            text.contains("\"'=HYPERLINK(\"\"https://evil.example\"\",\"\"x\"\")\""),
            "quotes are doubled inside a quoted field: {text}"
        );
    }
}
