"""The job API shared by the CLI and the GUI: progress events, cancellation, summaries."""

from jamcaps_desktop.jobs.base import Cancelled, CancelToken, Progress, ProgressCallback

__all__ = ["CancelToken", "Cancelled", "Progress", "ProgressCallback"]
