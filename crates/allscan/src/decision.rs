//! Scoring core, the decision: one view's output probabilities -> p(leukemia) -> its call, and
//! a field's views -> the field's call ([`field_call`]). The one place that turns model outputs
//! into `leukemia` / `healthy`: the bundle, the predictor, training's validation and held-out
//! report, and eval all decide through a [`Decision`].

use allscan_preprocess::CellFlag;

use crate::model::Task;

/// Label of a field or cell at or above the threshold.
pub const LEUKEMIA: &str = "leukemia";
/// Label below the threshold.
pub const HEALTHY: &str = "healthy";
/// The documented aggregation rule ([`field_call`]), as reported in outputs.
pub const AGGREGATION_RULE: &str = "max p_leukemia over cells (cell mode: over cells not flagged small or smudge)";

/// How a model's outputs are called: its head, its classes and the threshold on p(leukemia).
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// Binary (output = p(leukemia)) or subtype (one softmax output per class).
    pub task: Task,
    /// Output classes in index order (binary: two names, negative first).
    pub class_names: Vec<String>,
    /// The class names whose probabilities sum to p(leukemia) (subtype heads).
    pub leukemia_classes: Vec<String>,
    /// `p_leukemia >= threshold` is called leukemia.
    pub threshold: f64,
}

impl Decision {
    /// p(leukemia) from one view's output probabilities (as [`crate::model::probabilities`]
    /// returns them): binary, the sigmoid output; subtype, the summed softmax probability of
    /// the leukemia classes.
    pub fn p_leukemia(&self, probs: &[f32]) -> f32 {
        match self.task {
            Task::Binary => probs.first().copied().unwrap_or(0.0),
            Task::Subtype { .. } => self
                .class_names
                .iter()
                .zip(probs)
                .filter(|(name, _)| self.leukemia_classes.contains(name))
                .map(|(_, p)| *p)
                .sum::<f32>()
                .clamp(0.0, 1.0),
        }
    }

    /// Whether p(leukemia) is called leukemia (a score equal to the threshold is).
    pub fn is_leukemia(&self, p_leukemia: f32) -> bool {
        f64::from(p_leukemia) >= self.threshold
    }

    /// [`LEUKEMIA`] or [`HEALTHY`] for p(leukemia).
    pub fn label(&self, p_leukemia: f32) -> &'static str {
        if self.is_leukemia(p_leukemia) {
            LEUKEMIA
        } else {
            HEALTHY
        }
    }

    /// Output index of one probability row: binary, 0/1 at the threshold; subtype, the most
    /// probable class ([`argmax`]).
    pub fn predicted_class(&self, probs: &[f32]) -> usize {
        match self.task {
            Task::Binary => usize::from(self.is_leukemia(self.p_leukemia(probs))),
            Task::Subtype { .. } => argmax(probs),
        }
    }

    /// The name of output class `k` (`?` past the end).
    pub fn class_name(&self, k: usize) -> &str {
        self.class_names.get(k).map(String::as_str).unwrap_or("?")
    }
}

/// Index of the largest value; the first one on ties (as scikit-learn), 0 for an empty row.
pub fn argmax<T: PartialOrd>(row: &[T]) -> usize {
    let mut best = 0;
    for (i, v) in row.iter().enumerate() {
        if *v > row[best] {
            best = i;
        }
    }
    best
}

/// Whether a cell with these flags may decide its field's call (not small, not a smudge).
pub fn cell_decides(flags: &[CellFlag]) -> bool {
    !flags.iter().any(|f| matches!(f, CellFlag::Small | CellFlag::Smudge))
}

/// The field call of [`AGGREGATION_RULE`] over a field's cells `(p_leukemia, decides)`: the
/// index and probability of the decisive cell (`None` for no cell). Training's validation and
/// held-out report, `eval` and inference all call fields through here.
pub fn field_call(cells: impl IntoIterator<Item = (f32, bool)>) -> Option<(usize, f32)> {
    let cells: Vec<(f32, bool)> = cells.into_iter().collect();
    // Cells that may decide; if none may, every cell does (a lone flagged cell is still a cell).
    let any_decides = cells.iter().any(|c| c.1);
    cells
        .iter()
        .enumerate()
        .filter(|(_, c)| !any_decides || c.1)
        .max_by(|a, b| a.1 .0.total_cmp(&b.1 .0))
        .map(|(i, c)| (i, c.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subtype() -> Decision {
        Decision {
            task: Task::Subtype { num_classes: 4 },
            class_names: ["Benign", "Early", "Pre", "Pro"].map(String::from).to_vec(),
            leukemia_classes: ["Early", "Pre", "Pro"].map(String::from).to_vec(),
            threshold: 0.5,
        }
    }

    #[test]
    fn subtype_p_leukemia_sums_the_leukemia_classes_and_argmax_picks_the_class() {
        let d = subtype();
        assert!((d.p_leukemia(&[0.1, 0.2, 0.3, 0.4]) - 0.9).abs() < 1e-6);
        assert_eq!(d.predicted_class(&[0.1, 0.2, 0.3, 0.4]), 3);
        assert_eq!(d.class_name(3), "Pro");
        assert_eq!(d.class_name(9), "?");
    }

    #[test]
    fn binary_calls_at_the_threshold_inclusive() {
        let d = Decision {
            task: Task::Binary,
            class_names: vec![HEALTHY.into(), LEUKEMIA.into()],
            leukemia_classes: vec![LEUKEMIA.into()],
            threshold: 0.25,
        };
        assert_eq!(d.p_leukemia(&[0.25]), 0.25);
        assert_eq!(d.predicted_class(&[0.25]), 1);
        assert_eq!(d.label(0.25), LEUKEMIA);
        assert_eq!(d.label(0.24), HEALTHY);
    }

    #[test]
    fn argmax_takes_the_first_maximum() {
        assert_eq!(argmax(&[0.2, 0.4, 0.4]), 1);
        assert_eq!(argmax::<f64>(&[]), 0);
    }

    #[test]
    fn a_field_is_called_by_its_most_suspicious_deciding_cell() {
        assert_eq!(field_call([(0.9, false), (0.3, true), (0.6, true)]), Some((2, 0.6)));
        assert_eq!(field_call([(0.9, false), (0.3, false)]), Some((0, 0.9)));
        assert_eq!(field_call([]), None);
    }
}
