"""Data quality: drift between two samples of data, and a cleaning report for a dataset."""

from deepseek.data.quality.drift import drift_report, load_matrix, psi

__all__ = ["drift_report", "load_matrix", "psi"]
