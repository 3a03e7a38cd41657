//! Reports: events, audit or maintenance records of a period (and optionally one site), as
//! CSV or PDF, generated in the background by the scheduler and kept in the blob store.
//!
//! Here: what a report request may be ([`ReportSpec::validate`]), a report's life
//! ([`ReportStatus`]), the table every report is ([`Table`]) and its two renderings
//! ([`csv`], [`pdf`]). PDF uses pdf-writer with the standard Helvetica font (built into every
//! reader: nothing to download or embed), WinAnsi-encoded; characters outside Latin-1 print
//! as `?`.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::ids::SiteId;
use crate::ports::BoxFuture;
use crate::store::StoreError;

/// The longest period one report covers.
pub const MAX_SPAN_MS: u64 = 366 * 86_400_000;
/// Rows in a CSV report, at most (past it, the report says it was cut).
pub const MAX_CSV_ROWS: usize = 500_000;
/// Rows in a PDF report, at most: a PDF is for reading, the CSV is for everything.
pub const MAX_PDF_ROWS: usize = 20_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReportKind {
    /// Gate events.
    Events,
    /// The audit log.
    Audit,
    /// Maintenance records.
    Maintenance,
}

impl ReportKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ReportKind::Events => "events",
            ReportKind::Audit => "audit",
            ReportKind::Maintenance => "maintenance",
        }
    }

    pub fn parse(s: &str) -> Option<ReportKind> {
        [
            ReportKind::Events,
            ReportKind::Audit,
            ReportKind::Maintenance,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReportFormat {
    Csv,
    Pdf,
}

impl ReportFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            ReportFormat::Csv => "csv",
            ReportFormat::Pdf => "pdf",
        }
    }

    pub fn parse(s: &str) -> Option<ReportFormat> {
        match s {
            "csv" => Some(ReportFormat::Csv),
            "pdf" => Some(ReportFormat::Pdf),
            _ => None,
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            ReportFormat::Csv => "text/csv; charset=utf-8",
            ReportFormat::Pdf => "application/pdf",
        }
    }
}

/// What a report covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportSpec {
    pub kind: ReportKind,
    /// One site (none: the whole fleet).
    pub site: Option<SiteId>,
    /// The period, wall clock: `from_ms` included, `to_ms` excluded.
    pub from_ms: u64,
    pub to_ms: u64,
    pub format: ReportFormat,
}

impl ReportSpec {
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.to_ms <= self.from_ms {
            return Err(("to_ms", "the period ends after it starts".into()));
        }
        if self.to_ms - self.from_ms > MAX_SPAN_MS {
            return Err(("to_ms", "a report covers at most 366 days".into()));
        }
        Ok(())
    }

    /// The file name a download gets.
    pub fn file_name(&self, id: Uuid) -> String {
        let site = self.site.as_ref().map_or("fleet", |s| s.as_str());
        format!(
            "gatehouse-{}-{site}-{}-{}.{}",
            self.kind.as_str(),
            crate::clock::utc(self.from_ms).get(..10).unwrap_or("start"),
            &id.simple().to_string()[..8],
            self.format.as_str()
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReportStatus {
    Queued,
    Running,
    Done,
    Failed,
}

impl ReportStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ReportStatus::Queued => "queued",
            ReportStatus::Running => "running",
            ReportStatus::Done => "done",
            ReportStatus::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<ReportStatus> {
        match s {
            "queued" => Some(ReportStatus::Queued),
            "running" => Some(ReportStatus::Running),
            "done" => Some(ReportStatus::Done),
            "failed" => Some(ReportStatus::Failed),
            _ => None,
        }
    }
}

/// A report as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub id: Uuid,
    pub spec: ReportSpec,
    pub status: ReportStatus,
    /// 0 to 100.
    pub progress: u8,
    pub rows: u64,
    /// Where the file is, once done.
    pub blob_key: Option<String>,
    pub size: Option<u64>,
    pub error: Option<String>,
    /// An audit actor (`user:<uuid>`), or `system` for scheduled ones.
    pub requested_by: String,
    pub created_at_ms: u64,
    pub finished_at_ms: Option<u64>,
}

impl Report {
    pub fn queued(id: Uuid, spec: ReportSpec, requested_by: String, now_ms: u64) -> Report {
        Report {
            id,
            spec,
            status: ReportStatus::Queued,
            progress: 0,
            rows: 0,
            blob_key: None,
            size: None,
            error: None,
            requested_by,
            created_at_ms: now_ms,
            finished_at_ms: None,
        }
    }

    /// The blob key of its file.
    pub fn key(&self) -> String {
        format!("reports/{}.{}", self.id.simple(), self.spec.format.as_str())
    }
}

pub trait ReportStore: Send + Sync + 'static {
    fn insert_report(&self, report: Report) -> BoxFuture<'_, Result<(), StoreError>>;
    fn report(&self, id: Uuid) -> BoxFuture<'_, Result<Option<Report>, StoreError>>;
    /// Newest first, older than `before` (a report id) if given.
    fn reports(
        &self,
        before: Option<Uuid>,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<Report>, StoreError>>;
    /// Replaces a report's status, progress, rows, file and error.
    fn update_report(&self, report: Report) -> BoxFuture<'_, Result<(), StoreError>>;
    /// The oldest queued report, now marked running; none when nothing waits.
    /// `claimer` names who runs it (a cluster's node id; `local` for a node alone).
    fn claim_report(&self, claimer: String) -> BoxFuture<'_, Result<Option<Report>, StoreError>>;
    /// Reports left running by a process that stopped: queued again (answers how many). With
    /// `alive` (a cluster's live nodes), only those claimed by none of them.
    fn requeue_running(&self, alive: Option<Vec<String>>)
    -> BoxFuture<'_, Result<u64, StoreError>>;
    /// Whether a report of this spec was requested at or after `since_ms` (the monthly
    /// schedule asks before queueing one).
    fn has_report(
        &self,
        spec: ReportSpec,
        since_ms: u64,
    ) -> BoxFuture<'_, Result<bool, StoreError>>;
}

/// A report's content: a title, column names and rows of text.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Table {
    pub title: String,
    pub subtitle: String,
    pub columns: Vec<&'static str>,
    pub rows: Vec<Vec<String>>,
    /// Rows left out past the format's limit.
    pub cut: u64,
}

fn csv_field(out: &mut String, field: &str) {
    // Quoted when it holds a separator, quote or line break; a leading =, +, - or @ is
    // prefixed with ' so that a spreadsheet does not run it as a formula.
    let formula = field.starts_with(['=', '+', '-', '@']);
    let field = if formula {
        format!("'{field}")
    } else {
        field.to_owned()
    };
    if field.contains([',', '"', '\n', '\r']) {
        out.push('"');
        out.push_str(&field.replace('"', "\"\""));
        out.push('"');
    } else {
        out.push_str(&field);
    }
}

/// RFC 4180 CSV (CRLF line ends), header first.
pub fn csv(table: &Table) -> Vec<u8> {
    let mut out = String::new();
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut first = true;
        for cell in cells {
            if !first {
                out.push(',');
            }
            first = false;
            csv_field(&mut out, cell);
        }
        out.push_str("\r\n");
    };
    line(&mut table.columns.iter().copied());
    for row in &table.rows {
        line(&mut row.iter().map(String::as_str));
    }
    if table.cut > 0 {
        let _ = write!(out, "# {} more rows left out\r\n", table.cut);
    }
    out.into_bytes()
}

/// `s` in WinAnsi (Latin-1 for what matters here), `?` for the rest.
fn win_ansi(s: &str) -> Vec<u8> {
    s.chars()
        .map(|c| match c as u32 {
            0x20..=0x7e | 0xa0..=0xff => c as u32 as u8,
            _ => b'?',
        })
        .collect()
}

/// `s` cut to `max` characters, with `…` shown as `...`.
fn fit(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_owned();
    }
    let mut out: String = s.chars().take(max.saturating_sub(3)).collect();
    out.push_str("...");
    out
}

/// A landscape A4 PDF: the title, the subtitle, then the table in Helvetica 7 pt, columns as
/// wide as their longest cell (within bounds), as many pages as it takes.
pub fn pdf(table: &Table) -> Vec<u8> {
    use pdf_writer::{Content, Name, Pdf, Rect, Ref, Str};

    const WIDTH: f32 = 842.0;
    const HEIGHT: f32 = 595.0;
    const MARGIN: f32 = 36.0;
    const SIZE: f32 = 7.0;
    const LEADING: f32 = 9.5;
    // Helvetica's average glyph width, in ems: enough to size columns without metrics.
    const CHAR_W: f32 = 0.5 * SIZE;

    let usable = WIDTH - 2.0 * MARGIN;
    let max_chars = (usable / CHAR_W) as usize;
    let mut widths: Vec<usize> = table
        .columns
        .iter()
        .enumerate()
        .map(|(i, c)| {
            table
                .rows
                .iter()
                .map(|r| r.get(i).map_or(0, |s| s.chars().count()))
                .chain([c.len()])
                .max()
                .unwrap_or(1)
                .clamp(4, 60)
        })
        .collect();
    // Squeeze the widest columns until the row fits the page.
    while widths.iter().map(|w| w + 2).sum::<usize>() > max_chars {
        let Some(widest) = widths.iter_mut().max() else {
            break;
        };
        if *widest <= 4 {
            break;
        }
        *widest -= 1;
    }
    let line = |cells: &mut dyn Iterator<Item = &str>| -> Vec<(f32, String)> {
        let mut x = MARGIN;
        cells
            .zip(&widths)
            .map(|(cell, w)| {
                let at = x;
                x += (*w as f32 + 2.0) * CHAR_W;
                (at, fit(cell, *w))
            })
            .collect()
    };
    let per_page = ((HEIGHT - 2.0 * MARGIN - 40.0) / LEADING) as usize;
    let mut lines: Vec<Vec<(f32, String)>> = table
        .rows
        .iter()
        .map(|r| line(&mut r.iter().map(String::as_str)))
        .collect();
    if table.cut > 0 {
        lines.push(vec![(
            MARGIN,
            format!(
                "... {} more rows left out (the CSV has them all)",
                table.cut
            ),
        )]);
    }
    let header = line(&mut table.columns.iter().copied());
    let pages: Vec<&[Vec<(f32, String)>]> = if lines.is_empty() {
        vec![&[]]
    } else {
        lines.chunks(per_page.max(1)).collect()
    };

    let mut pdf = Pdf::new();
    let catalog = Ref::new(1);
    let tree = Ref::new(2);
    let font = Ref::new(3);
    let bold = Ref::new(4);
    let info = Ref::new(5);
    let first_page = 10;
    let page_ids: Vec<Ref> = (0..pages.len())
        .map(|i| Ref::new(first_page + 2 * i as i32))
        .collect();
    pdf.catalog(catalog).pages(tree);
    pdf.pages(tree)
        .kids(page_ids.iter().copied())
        .count(page_ids.len() as i32);
    pdf.type1_font(font)
        .base_font(Name(b"Helvetica"))
        .encoding_predefined(Name(b"WinAnsiEncoding"));
    pdf.type1_font(bold)
        .base_font(Name(b"Helvetica-Bold"))
        .encoding_predefined(Name(b"WinAnsiEncoding"));
    pdf.document_info(info)
        .title(pdf_writer::TextStr(&table.title))
        .producer(pdf_writer::TextStr("Gatehouse"));
    for (n, (page_lines, id)) in pages.iter().zip(&page_ids).enumerate() {
        let content_id = Ref::new(id.get() + 1);
        let mut c = Content::new();
        let mut y = HEIGHT - MARGIN;
        let text = |c: &mut Content, f: &[u8], size: f32, x: f32, y: f32, s: &str| {
            c.begin_text()
                .set_font(Name(f), size)
                .next_line(x, y)
                .show(Str(&win_ansi(s)))
                .end_text();
        };
        text(&mut c, b"F2", 12.0, MARGIN, y, &table.title);
        y -= 15.0;
        let sub = format!("{}  -  page {} of {}", table.subtitle, n + 1, pages.len());
        text(&mut c, b"F1", 8.0, MARGIN, y, &sub);
        y -= 16.0;
        for (x, s) in &header {
            text(&mut c, b"F2", SIZE, *x, y, s);
        }
        y -= LEADING;
        for l in *page_lines {
            for (x, s) in l {
                text(&mut c, b"F1", SIZE, *x, y, s);
            }
            y -= LEADING;
        }
        let data = c.finish();
        let mut page = pdf.page(*id);
        page.parent(tree)
            .media_box(Rect::new(0.0, 0.0, WIDTH, HEIGHT))
            .contents(content_id);
        page.resources()
            .fonts()
            .pair(Name(b"F1"), font)
            .pair(Name(b"F2"), bold);
        drop(page);
        pdf.stream(content_id, data.as_slice());
    }
    pdf.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(rows: usize) -> Table {
        Table {
            title: "Gate events".into(),
            subtitle: "north, 2026-11".into(),
            columns: vec!["time", "gate", "what"],
            rows: (0..rows)
                .map(|i| vec![format!("t{i}"), "n1".into(), format!("state {i}")])
                .collect(),
            cut: 0,
        }
    }

    #[test]
    fn csv_quotes_what_needs_it_and_disarms_formulas() {
        let t = Table {
            columns: vec!["a", "b"],
            rows: vec![
                vec!["plain".into(), "with, comma".into()],
                vec!["say \"hi\"".into(), "two\nlines".into()],
                vec!["=HYPERLINK(\"x\")".into(), "-1".into()],
            ],
            ..Table::default()
        };
        let text = String::from_utf8(csv(&t)).unwrap();
        assert_eq!(
            text,
            "a,b\r\nplain,\"with, comma\"\r\n\"say \"\"hi\"\"\",\"two\nlines\"\r\n\"'=HYPERLINK(\"\"x\"\")\",'-1\r\n"
        );
    }

    #[test]
    fn a_pdf_is_a_pdf_with_one_page_per_screenful() {
        let one = pdf(&table(3));
        assert!(one.starts_with(b"%PDF-"));
        assert!(one.ends_with(b"%%EOF") || one.ends_with(b"%%EOF\n"));
        let text = String::from_utf8_lossy(&one);
        assert!(
            text.contains("/Helvetica"),
            "a standard font, nothing embedded"
        );
        assert!(text.contains("/Count 1"));
        assert!(
            text.contains("(state 2)"),
            "cells are text in the content stream"
        );
        let many = pdf(&table(200));
        assert!(
            String::from_utf8_lossy(&many).contains("/Count 4"),
            "50 rows a page"
        );
        let empty = pdf(&table(0));
        assert!(String::from_utf8_lossy(&empty).contains("/Count 1"));
    }

    #[test]
    fn text_outside_latin_1_prints_as_a_question_mark() {
        assert_eq!(win_ansi("Caf\u{e9} \u{2192} ok"), b"Caf\xe9 ? ok");
    }

    #[test]
    fn periods_are_bounded() {
        let spec = ReportSpec {
            kind: ReportKind::Events,
            site: None,
            from_ms: 1_000,
            to_ms: 1_000,
            format: ReportFormat::Csv,
        };
        assert_eq!(spec.validate().unwrap_err().0, "to_ms");
        let long = ReportSpec {
            to_ms: 1_000 + MAX_SPAN_MS + 1,
            ..spec.clone()
        };
        assert_eq!(long.validate().unwrap_err().0, "to_ms");
        let ok = ReportSpec {
            to_ms: 2_000,
            ..spec
        };
        assert_eq!(ok.validate(), Ok(()));
    }
}
