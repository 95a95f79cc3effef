//! Figures and REPORT.md generated from results on disk.
