"""The paper's experiments as rerunnable functions (and ``isa-distill`` subcommands).

Each experiment takes an ``ExperimentSettings`` (dataset, IPC, preset, step budgets, seeds) and
an output directory, and writes ``table.md``, ``table.csv`` and ``plot.png`` there:

    ablate      paired ablation of the loss variants (accuracy, paired difference vs baseline)
    hardness    Figure 1: hard <-> easy KRR losses, and a PCA of kept / discarded targets
    diversity   k-NN precision / recall / coverage of real samples by each distilled set
    cross-arch  one distilled run evaluated on six architectures (Table 2)
    continual   class-incremental GDumb-style memories (Figure 4)
    mia         membership inference attacks (Table 5) and AUC vs target training epochs
"""

from .settings import ExperimentSettings, experiment_settings

__all__ = ["ExperimentSettings", "experiment_settings"]
