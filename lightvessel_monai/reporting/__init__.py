"""What a run reports: per-case evaluation (``evaluation``), ``report.md``/``report.csv`` (``run_report``), learning
curves (``learning_curves``) and pictures (``figures``)."""
