"""What a bundle run does, stage by stage: pre-flight checks and the preparation stages (``stages``), the typed
switches and checks of the config (``settings``), locating the configs (``config_files``), and torchrun
(``distributed``)."""
