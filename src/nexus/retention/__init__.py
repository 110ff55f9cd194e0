"""The retention report: how much of the teacher each phase's student keeps, per capability,
with intervals and paired tests (``nexus retention RESULTS_DIR``; the release's model card).

* :class:`~nexus.retention.config.RetentionConfig` -- measures and their row limits;
* :func:`~nexus.retention.run.run_retention` -- models, cache, ``retention.md/.json/.png``;
* :mod:`nexus.retention.measures` (per-row scoring), :mod:`nexus.retention.report` (the table).
"""
