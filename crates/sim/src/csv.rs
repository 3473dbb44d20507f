//! A small reader for the traces' CSV: comma-separated, a header line, no quoting (the openb and
//! Philly files have none; a quote character is refused rather than misread). Every field keeps
//! its line and column so that a bad value is reported as `file:line:column: reason`.

use std::collections::HashMap;

use crate::error::{Result, SimError};

/// One parsed CSV document.
#[derive(Debug)]
pub(crate) struct Csv<'a> {
    pub file: &'a str,
    columns: HashMap<&'a str, usize>,
    names: Vec<&'a str>,
    text: &'a str,
}

/// One data row.
#[derive(Debug)]
pub(crate) struct Row<'a> {
    pub file: &'a str,
    pub line: usize,
    fields: Vec<(usize, &'a str)>,
    names: &'a [&'a str],
}

impl<'a> Csv<'a> {
    /// Read the header and check that `required` columns are present.
    pub fn new(file: &'a str, text: &'a str, required: &[&str]) -> Result<Csv<'a>> {
        let header = text.lines().next().unwrap_or("");
        let header = header.strip_prefix('\u{feff}').unwrap_or(header);
        let names: Vec<&str> = header.split(',').map(|s| s.trim()).collect();
        let columns: HashMap<&str, usize> =
            names.iter().enumerate().map(|(i, n)| (*n, i)).collect();
        for r in required {
            if !columns.contains_key(r) {
                return Err(SimError::Row {
                    file: file.to_string(),
                    line: 1,
                    column: 1,
                    reason: format!(
                        "missing column {r:?} in the header (found: {})",
                        names.join(",")
                    ),
                });
            }
        }
        Ok(Csv {
            file,
            columns,
            names,
            text,
        })
    }

    /// Index of a column (checked by [`Csv::new`] when it was required).
    pub fn col(&self, name: &str) -> Option<usize> {
        self.columns.get(name).copied()
    }

    /// Data rows, skipping blank lines.
    pub fn rows(&'a self) -> impl Iterator<Item = Result<Row<'a>>> + 'a {
        self.text
            .lines()
            .enumerate()
            .skip(1)
            .filter(|(_, l)| !l.trim().is_empty())
            .map(move |(i, l)| {
                let line = i + 1;
                let l = l.strip_suffix('\r').unwrap_or(l);
                if let Some(pos) = l.find('"') {
                    return Err(SimError::Row {
                        file: self.file.to_string(),
                        line,
                        column: l[..pos].chars().count() + 1,
                        reason: "quoted fields are not supported in trace files".into(),
                    });
                }
                let mut fields = Vec::with_capacity(self.names.len());
                let mut col = 1;
                for f in l.split(',') {
                    fields.push((col, f));
                    col += f.chars().count() + 1;
                }
                if fields.len() != self.names.len() {
                    return Err(SimError::Row {
                        file: self.file.to_string(),
                        line,
                        column: col.saturating_sub(1).max(1),
                        reason: format!(
                            "expected {} fields ({}), found {}",
                            self.names.len(),
                            self.names.join(","),
                            fields.len()
                        ),
                    });
                }
                Ok(Row {
                    file: self.file,
                    line,
                    fields,
                    names: &self.names,
                })
            })
    }
}

impl<'a> Row<'a> {
    /// The raw text of column `i`.
    pub fn raw(&self, i: usize) -> &'a str {
        self.fields[i].1.trim()
    }

    /// An error about column `i`.
    pub fn err(&self, i: usize, reason: impl std::fmt::Display) -> SimError {
        SimError::Row {
            file: self.file.to_string(),
            line: self.line,
            column: self.fields[i].0,
            reason: format!("column {}: {reason}", self.names[i]),
        }
    }

    /// Column `i` as a non-negative integer.
    pub fn u64(&self, i: usize) -> Result<u64> {
        let v = self.raw(i);
        v.parse::<u64>()
            .map_err(|_| self.err(i, format!("{v:?} is not a non-negative integer")))
    }

    /// Column `i` as a finite non-negative number.
    pub fn f64(&self, i: usize) -> Result<f64> {
        let v = self.raw(i);
        match v.parse::<f64>() {
            Ok(x) if x.is_finite() && x >= 0.0 => Ok(x),
            _ => Err(self.err(i, format!("{v:?} is not a finite non-negative number"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_carry_line_and_column() {
        let text = "a,b,c\n1,2,3\n\n10,xx,30\n";
        let csv = Csv::new("t.csv", text, &["a", "b"]).expect("header");
        let rows: Vec<_> = csv.rows().collect::<Result<_>>().expect("rows");
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].u64(2).expect("c"), 3);
        let err = rows[1].u64(1).expect_err("xx").to_string();
        assert_eq!(
            err,
            "t.csv:4:4: column b: \"xx\" is not a non-negative integer"
        );
    }

    #[test]
    fn wrong_field_count_and_missing_header() {
        let csv = Csv::new("t.csv", "a,b\n1,2,3\n", &["a"]).expect("header");
        let err = csv
            .rows()
            .next()
            .expect("row")
            .expect_err("count")
            .to_string();
        assert!(err.starts_with("t.csv:2:"), "{err}");
        assert!(err.contains("expected 2 fields"), "{err}");
        let err = Csv::new("t.csv", "a,b\n", &["c"])
            .expect_err("missing")
            .to_string();
        assert!(err.contains("missing column \"c\""), "{err}");
    }
}
