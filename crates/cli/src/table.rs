//! Text tables whose columns stay aligned whatever the length of a cell: each column is
//! as wide as its widest cell (the first left-aligned, the others right-aligned, unless
//! said otherwise).

use std::io::Write;

/// A table being filled.
#[derive(Debug, Default)]
pub struct Table {
    rows: Vec<Vec<String>>,
    /// Columns aligned to the left (by index; the first always is).
    left: Vec<usize>,
}

impl Table {
    /// A table with this header row.
    pub fn new<S: ToString>(header: &[S]) -> Table {
        Table {
            rows: vec![header.iter().map(ToString::to_string).collect()],
            left: vec![0],
        }
    }

    /// Aligns these columns to the left too.
    pub fn left(mut self, columns: &[usize]) -> Table {
        self.left.extend_from_slice(columns);
        self
    }

    /// Adds a row.
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// Writes every row, columns two spaces apart, with no trailing spaces.
    pub fn write(&self, out: &mut impl Write) -> std::io::Result<()> {
        let columns = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let width = |c: usize| {
            self.rows
                .iter()
                .filter_map(|r| r.get(c))
                .map(|cell| cell.chars().count())
                .max()
                .unwrap_or(0)
        };
        let widths: Vec<usize> = (0..columns).map(width).collect();
        for row in &self.rows {
            let mut line = String::new();
            for (c, cell) in row.iter().enumerate() {
                if c > 0 {
                    line.push_str("  ");
                }
                let pad = widths[c].saturating_sub(cell.chars().count());
                if self.left.contains(&c) {
                    line.push_str(cell);
                    line.push_str(&" ".repeat(pad));
                } else {
                    line.push_str(&" ".repeat(pad));
                    line.push_str(cell);
                }
            }
            writeln!(out, "{}", line.trim_end())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_stay_aligned_whatever_a_label_s_length() {
        let mut t = Table::new(&["figure", "A", "B"]);
        t.row(vec!["p50".into(), "1.5".into(), "2".into()]);
        t.row(vec![
            "node frontend's sidecars CPU cores per 1,000 req/s".into(),
            "-".into(),
            "0.25".into(),
        ]);
        let mut out = Vec::new();
        t.write(&mut out).expect("to memory");
        let text = String::from_utf8(out).expect("utf-8");
        let ends: Vec<usize> = text.lines().map(|l| l.chars().count()).collect();
        assert!(ends.iter().all(|e| *e == ends[0]), "{text}");
        assert!(
            text.lines().nth(1).expect("a row").starts_with("p50 "),
            "{text}"
        );
    }
}
