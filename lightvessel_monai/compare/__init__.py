"""Method comparisons: the grid of runs (``runs``), their tables and figures (``outputs``), and the paired
bootstrap over seeds and cases (``significance``). ``python -m lightvessel_monai.compare`` runs one."""
