//! Evaluation: metrics, plots, report.
