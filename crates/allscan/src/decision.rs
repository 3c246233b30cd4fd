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

/// Why a [`Decision`] cannot call anything: its classes do not fit its head or its threshold
/// is not a probability.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DecisionError {
    /// The number of class names is not the head's.
    #[error("a {task:?} head has {expected} classes but {got} class names were given ({names:?})")]
    ClassCount {
        /// The head.
        task: Task,
        /// Classes the head has (binary: 2).
        expected: usize,
        /// Class names given.
        got: usize,
        /// The names.
        names: Vec<String>,
    },
    /// A leukemia class that is not one of the class names.
    #[error("leukemia class `{class}` is not one of the class names {names:?}")]
    UnknownLeukemiaClass {
        /// The unknown class.
        class: String,
        /// The class names.
        names: Vec<String>,
    },
    /// A threshold outside [0, 1] (or NaN).
    #[error("threshold {0} is not in [0, 1]")]
    Threshold(f64),
}

impl Decision {
    /// A decision whose classes fit its head (binary: two names; subtype: one per output),
    /// whose leukemia classes are among them and whose threshold is in [0, 1]. Every
    /// decision read from a bundle or given to a predictor is checked here.
    pub fn new(
        task: Task,
        class_names: Vec<String>,
        leukemia_classes: Vec<String>,
        threshold: f64,
    ) -> Result<Self, DecisionError> {
        let expected = task.num_outputs().max(2);
        if class_names.len() != expected {
            return Err(DecisionError::ClassCount { task, expected, got: class_names.len(), names: class_names });
        }
        if let Some(class) = leukemia_classes.iter().find(|c| !class_names.contains(c)) {
            return Err(DecisionError::UnknownLeukemiaClass { class: class.clone(), names: class_names });
        }
        if !(0.0..=1.0).contains(&threshold) {
            return Err(DecisionError::Threshold(threshold));
        }
        Ok(Self { task, class_names, leukemia_classes, threshold })
    }

    /// The binary decision: classes [`HEALTHY`], [`LEUKEMIA`]; leukemia at `threshold`.
    pub fn binary(threshold: f64) -> Result<Self, DecisionError> {
        Self::new(Task::Binary, vec![HEALTHY.into(), LEUKEMIA.into()], vec![LEUKEMIA.into()], threshold)
    }

    /// The same classes with another threshold (checked as [`Decision::new`] checks it).
    pub fn with_threshold(&self, threshold: f64) -> Result<Self, DecisionError> {
        Self::new(self.task, self.class_names.clone(), self.leukemia_classes.clone(), threshold)
    }

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
        Decision::new(
            Task::Subtype { num_classes: 4 },
            ["Benign", "Early", "Pre", "Pro"].map(String::from).to_vec(),
            ["Early", "Pre", "Pro"].map(String::from).to_vec(),
            0.5,
        )
        .unwrap()
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
        let d = Decision::binary(0.25).unwrap();
        assert_eq!(d.p_leukemia(&[0.25]), 0.25);
        assert_eq!(d.predicted_class(&[0.25]), 1);
        assert_eq!(d.label(0.25), LEUKEMIA);
        assert_eq!(d.label(0.24), HEALTHY);
    }

    #[test]
    fn a_decision_whose_classes_do_not_fit_its_head_or_threshold_is_refused() {
        let four = Task::Subtype { num_classes: 4 };
        let names = |n: usize| (0..n).map(|i| format!("c{i}")).collect::<Vec<_>>();
        assert!(matches!(
            Decision::new(four, names(3), vec![], 0.5),
            Err(DecisionError::ClassCount { expected: 4, got: 3, .. })
        ));
        assert!(matches!(
            Decision::new(Task::Binary, names(2), vec!["blast".into()], 0.5),
            Err(DecisionError::UnknownLeukemiaClass { .. })
        ));
        for t in [-0.1, 1.5, f64::NAN] {
            assert!(matches!(Decision::binary(t), Err(DecisionError::Threshold(_))), "{t}");
        }
        let d = Decision::new(four, names(4), names(4)[1..].to_vec(), 0.5).unwrap();
        assert_eq!(d.with_threshold(0.7).unwrap().threshold, 0.7);
        assert!(d.with_threshold(2.0).is_err());
        // A message names what is wrong.
        let e = Decision::new(four, names(3), vec![], 0.5).unwrap_err().to_string();
        assert!(e.contains("4 classes") && e.contains("3 class names"), "{e}");
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
