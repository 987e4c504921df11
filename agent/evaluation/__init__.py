"""Benchmark runs of the agent: the run itself (``run``), its report (``report``) and the
calibration of the decision thresholds on a run (``calibration``). The metrics and file
formats they use live in ``tools.evaluation``."""
