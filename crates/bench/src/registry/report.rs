//! Figures for both registries: a table per workload on stdout, and the same as JSON.

use std::fmt::Write as _;

use serde::Serialize;

/// One thing for each of the two registries: the one measured, and the peer it is held
/// against.
#[derive(Serialize, Clone, Copy, Debug, PartialEq)]
pub struct Pair<T> {
    /// berth (or, with `--peer-only`, a second distribution).
    pub subject: T,
    /// Debian's docker-registry.
    pub peer: T,
}

impl<T> Pair<T> {
    /// Applies `f` to both.
    pub fn map<U>(self, mut f: impl FnMut(T) -> U) -> Pair<U> {
        Pair {
            subject: f(self.subject),
            peer: f(self.peer),
        }
    }
}

/// Which way content moves, for the summary.
#[derive(Serialize, Clone, Copy, PartialEq, Eq, Debug)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Client to registry.
    Push,
    /// Registry to client.
    Pull,
}

impl Direction {
    fn as_str(self) -> &'static str {
        match self {
            Direction::Push => "push",
            Direction::Pull => "pull",
        }
    }
}

/// Whether more of a unit is better (throughput) or worse (time, memory).
#[derive(Serialize, Clone, Copy, Debug)]
#[serde(rename_all = "lowercase")]
pub enum Better {
    /// Throughput.
    Higher,
    /// Time, memory.
    Lower,
}

/// One figure for both registries.
#[derive(Serialize, Debug)]
pub struct Row {
    metric: String,
    unit: &'static str,
    values: Pair<f64>,
    better: Better,
    /// subject/peer for throughput, peer/subject for time and memory: > 1 means the subject
    /// is better either way.
    ratio: f64,
    /// The summary line this figure counts towards, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    summary: Option<Direction>,
}

impl Row {
    /// A figure where more is better.
    pub fn throughput(
        metric: impl Into<String>,
        unit: &'static str,
        values: Pair<f64>,
        summary: Option<Direction>,
    ) -> Row {
        Row::new(metric.into(), unit, values, Better::Higher, summary)
    }

    /// A figure where less is better.
    pub fn cost(
        metric: impl Into<String>,
        unit: &'static str,
        values: Pair<f64>,
        summary: Option<Direction>,
    ) -> Row {
        Row::new(metric.into(), unit, values, Better::Lower, summary)
    }

    fn new(
        metric: String,
        unit: &'static str,
        values: Pair<f64>,
        better: Better,
        summary: Option<Direction>,
    ) -> Row {
        let ratio = match better {
            Better::Higher => values.subject / values.peer,
            Better::Lower => values.peer / values.subject,
        };
        Row {
            metric,
            unit,
            values,
            better,
            ratio,
            summary,
        }
    }
}

/// The figures of one workload.
#[derive(Serialize, Debug)]
pub struct Section {
    title: String,
    rows: Vec<Row>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    notes: Vec<String>,
}

impl Section {
    /// An empty section.
    pub fn new(title: impl Into<String>) -> Section {
        Section {
            title: title.into(),
            rows: Vec::new(),
            notes: Vec::new(),
        }
    }

    /// Adds a figure.
    pub fn row(&mut self, row: Row) {
        self.rows.push(row);
    }

    /// Adds a remark printed under the table.
    pub fn note(&mut self, note: impl Into<String>) {
        self.notes.push(note.into());
    }

    /// The section as a text table with a column per registry.
    pub fn render(&self, names: Pair<&str>) -> String {
        let metric_width = self
            .rows
            .iter()
            .map(|r| r.metric.len())
            .max()
            .unwrap_or(0)
            .max("metric".len());
        let unit_width = self
            .rows
            .iter()
            .map(|r| r.unit.len())
            .max()
            .unwrap_or(0)
            .max("unit".len());
        let subject_width = names.subject.len().max(10);
        let peer_width = names.peer.len().max(10);
        let mut out = format!("== {} ==\n", self.title);
        let _ = writeln!(
            out,
            "{:<metric_width$}  {:<unit_width$}  {:>subject_width$}  {:>peer_width$}  {:>7}",
            "metric", "unit", names.subject, names.peer, "ratio"
        );
        for row in &self.rows {
            let _ = writeln!(
                out,
                "{:<metric_width$}  {:<unit_width$}  {:>subject_width$}  {:>peer_width$}  {:>7}",
                row.metric,
                row.unit,
                number(row.values.subject),
                number(row.values.peer),
                format!("{}x", ratio(row.ratio)),
            );
        }
        for note in &self.notes {
            let _ = writeln!(out, "note: {note}");
        }
        out
    }
}

/// The geometric mean of the ratios counted towards one direction.
#[derive(Serialize, Debug)]
pub struct Summary {
    direction: Direction,
    ratio: f64,
    figures: usize,
}

impl Summary {
    /// One summary per direction over the figures of `sections`.
    pub fn of(sections: &[Section]) -> Vec<Summary> {
        [Direction::Push, Direction::Pull]
            .into_iter()
            .map(|direction| {
                let ratios: Vec<f64> = sections
                    .iter()
                    .flat_map(|s| &s.rows)
                    .filter(|r| r.summary == Some(direction))
                    .map(|r| r.ratio)
                    .collect();
                Summary {
                    direction,
                    ratio: geometric_mean(&ratios),
                    figures: ratios.len(),
                }
            })
            .collect()
    }

    /// The summary as a line of text.
    pub fn render(&self, names: Pair<&str>) -> String {
        format!(
            "{}: {}/{} = {}x (geometric mean of {} figures; > 1 means {} is better)",
            self.direction.as_str(),
            names.subject,
            names.peer,
            ratio(self.ratio),
            self.figures,
            names.subject,
        )
    }
}

/// Everything a run measured, as written by `--json`.
#[derive(Serialize, Debug)]
pub struct Report<P> {
    /// Names of the two registries.
    pub names: Pair<&'static str>,
    /// Sizes and counts the run used.
    pub parameters: P,
    /// A section per workload.
    pub sections: Vec<Section>,
    /// The summary per direction.
    pub summary: Vec<Summary>,
}

/// The geometric mean of `values`; NaN if there are none or any is not a positive number.
pub fn geometric_mean(values: &[f64]) -> f64 {
    if values.is_empty() || values.iter().any(|v| !(*v > 0.0 && v.is_finite())) {
        return f64::NAN;
    }
    (values.iter().map(|v| v.ln()).sum::<f64>() / values.len() as f64).exp()
}

/// The median of `values` (the upper one of the middle two for an even count); NaN if none.
pub fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

/// A figure with as many decimals as its size warrants.
fn number(v: f64) -> String {
    if !v.is_finite() {
        "-".to_owned()
    } else if v >= 1000.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else if v >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

fn ratio(v: f64) -> String {
    if v.is_finite() {
        format!("{v:.2}")
    } else {
        "-".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(subject: f64, peer: f64) -> Pair<f64> {
        Pair { subject, peer }
    }

    #[test]
    fn ratio_above_one_means_the_subject_is_better_for_either_unit() {
        let faster = Row::throughput("push", "MB/s", pair(200.0, 100.0), None);
        let quicker = Row::cost("copy", "s", pair(0.5, 1.0), None);
        assert_eq!(faster.ratio, 2.0);
        assert_eq!(quicker.ratio, 2.0);
    }

    #[test]
    fn summary_counts_only_its_direction() {
        let mut section = Section::new("s");
        section.row(Row::throughput(
            "a",
            "x",
            pair(4.0, 1.0),
            Some(Direction::Push),
        ));
        section.row(Row::throughput(
            "b",
            "x",
            pair(1.0, 1.0),
            Some(Direction::Push),
        ));
        section.row(Row::throughput("c", "x", pair(9.0, 1.0), None));
        section.row(Row::cost("d", "s", pair(1.0, 3.0), Some(Direction::Pull)));
        let summary = Summary::of(&[section]);
        assert_eq!(summary[0].direction, Direction::Push);
        assert!((summary[0].ratio - 2.0).abs() < 1e-9);
        assert_eq!(summary[0].figures, 2);
        assert!((summary[1].ratio - 3.0).abs() < 1e-9);
    }

    #[test]
    fn geometric_mean_of_nothing_or_of_a_failed_figure_is_nan() {
        assert!(geometric_mean(&[]).is_nan());
        assert!(geometric_mean(&[2.0, f64::NAN]).is_nan());
        assert!(geometric_mean(&[2.0, 0.0]).is_nan());
        assert!((geometric_mean(&[2.0, 8.0]) - 4.0).abs() < 1e-9);
    }

    #[test]
    fn median_picks_the_middle() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), 3.0);
        assert!(median(Vec::new()).is_nan());
    }

    #[test]
    fn renders_a_row_per_figure() {
        let mut section = Section::new("large blobs");
        section.row(Row::throughput(
            "push",
            "MB/s",
            pair(354.4, 200.0),
            Some(Direction::Push),
        ));
        section.note("checked");
        let text = section.render(Pair {
            subject: "berth",
            peer: "distribution",
        });
        assert_eq!(
            text,
            "== large blobs ==\n\
             metric  unit       berth  distribution    ratio\n\
             push    MB/s       354.4         200.0    1.77x\n\
             note: checked\n"
        );
    }
}
