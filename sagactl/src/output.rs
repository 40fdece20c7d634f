//! Everything `sagactl` writes on stdout: tables and lines for people by default, JSON with
//! `--json` (one document, or one compact document per line for `watch`), nothing else. Notes
//! for people (the next page's cursor, what a bulk command is about to do) go to stderr, so
//! stdout stays parseable.

use std::io::Write as _;

use chrono::{DateTime, Utc};
use comfy_table::{Table, presets};
use serde_json::Value;

use crate::error::CliError;

/// How results are written.
#[derive(Clone, Copy, Debug)]
pub struct Output {
    json: bool,
}

impl Output {
    /// Tables for people, or JSON when `json`.
    pub fn new(json: bool) -> Self {
        Self { json }
    }

    /// Whether `--json` was given.
    pub fn is_json(self) -> bool {
        self.json
    }

    /// Writes `text` and a newline on stdout.
    pub fn line(self, text: impl AsRef<str>) -> Result<(), CliError> {
        let mut out = std::io::stdout().lock();
        writeln!(out, "{}", text.as_ref()).map_err(CliError::io("writing the output"))
    }

    /// Writes `value` as pretty JSON on stdout.
    pub fn json(self, value: &Value) -> Result<(), CliError> {
        let text = serde_json::to_string_pretty(value).map_err(|e| CliError::Unexpected {
            what: "the output".into(),
            detail: e.to_string(),
        })?;
        self.line(text)
    }

    /// Writes `value` as one compact JSON line on stdout (a stream of documents).
    pub fn json_line(self, value: &Value) -> Result<(), CliError> {
        self.line(value.to_string())
    }

    /// Writes a table on stdout.
    pub fn table(self, table: &Table) -> Result<(), CliError> {
        self.line(table.trim_fmt())
    }

    /// Writes a note for people on stderr (never on stdout).
    pub fn note(self, text: impl AsRef<str>) {
        eprintln!("{}", text.as_ref());
    }
}

/// A borderless table with `header`, like `kubectl get` prints.
pub fn table(header: &[&str]) -> Table {
    let mut table = Table::new();
    table.load_style(presets::NOTHING);
    table.set_header(header.to_vec());
    for column in table.column_iter_mut() {
        column.set_padding((0, 2));
    }
    table
}

/// A borderless table of names and their values, without a header.
pub fn fields(rows: impl IntoIterator<Item = (&'static str, String)>) -> Table {
    let mut table = Table::new();
    table.load_style(presets::NOTHING);
    for (name, value) in rows {
        table.add_row(vec![name.to_owned(), value]);
    }
    for column in table.column_iter_mut() {
        column.set_padding((0, 2));
    }
    table
}

/// A time as `2026-05-01 12:00:01Z`, or `-`.
pub fn time(at: Option<DateTime<Utc>>) -> String {
    at.map_or_else(
        || "-".into(),
        |at| at.format("%Y-%m-%d %H:%M:%SZ").to_string(),
    )
}

/// A time with milliseconds, `12:00:01.234`, for lines that follow each other closely.
pub fn clock(at: Option<DateTime<Utc>>) -> String {
    at.map_or_else(
        || "--:--:--.---".into(),
        |at| at.format("%H:%M:%S%.3f").to_string(),
    )
}

/// How long from `start` to `end`: `340ms`, `2.5s`, `3m04s`; `-` when either is missing.
pub fn duration(start: Option<DateTime<Utc>>, end: Option<DateTime<Utc>>) -> String {
    let (Some(start), Some(end)) = (start, end) else {
        return "-".into();
    };
    let millis = (end - start).num_milliseconds().max(0);
    match millis {
        0..1_000 => format!("{millis}ms"),
        1_000..60_000 => format!("{:.1}s", millis as f64 / 1_000.0),
        _ => format!("{}m{:02}s", millis / 60_000, (millis % 60_000) / 1_000),
    }
}

/// `text` cut to `max` characters, with an ellipsis when it was longer; `-` when empty.
pub fn cut(text: &str, max: usize) -> String {
    let text = text.trim();
    if text.is_empty() {
        return "-".into();
    }
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let mut cut: String = text.chars().take(max.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

/// An optional text, or `-`.
pub fn or_dash(text: Option<&str>) -> String {
    text.filter(|t| !t.is_empty()).unwrap_or("-").to_owned()
}

/// A JSON object's fields as `key=value` pairs (strings unquoted).
pub fn pairs(map: &serde_json::Map<String, Value>) -> String {
    if map.is_empty() {
        return "-".into();
    }
    map.iter()
        .map(|(k, v)| match v {
            Value::String(s) => format!("{k}={s}"),
            other => format!("{k}={other}"),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_naturally() {
        let start = DateTime::from_timestamp_millis(0);
        let after = |ms| DateTime::from_timestamp_millis(ms);
        assert_eq!(duration(start, after(340)), "340ms");
        assert_eq!(duration(start, after(2_500)), "2.5s");
        assert_eq!(duration(start, after(184_000)), "3m04s");
        assert_eq!(duration(start, None), "-");
    }

    #[test]
    fn long_texts_are_cut() {
        assert_eq!(cut("abcdef", 4), "abc…");
        assert_eq!(cut("abc", 4), "abc");
        assert_eq!(cut("  ", 4), "-");
    }

    #[test]
    fn a_table_has_its_header_and_rows() {
        let mut t = table(&["ID", "STATE"]);
        t.add_row(vec!["s1", "running"]);
        let text = t.trim_fmt();
        assert!(text.contains("ID") && text.contains("running"), "{text}");
    }
}
