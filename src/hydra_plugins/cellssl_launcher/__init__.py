"""cellssl's Hydra launcher plugin: ``hydra/launcher=slurm_queue`` (:class:`.queue_launcher.QueueingSlurmLauncher`).

Hydra finds launchers only inside the ``hydra_plugins`` namespace package, so the class lives here, beside
hydra-submitit-launcher's; what it writes and how its jobs are followed is :mod:`cellssl.sweeps`.
"""
