"""The CPU laboratory (docs/lab.md): ``python -m sysout.lab.sweep`` runs the Bigram-Backcopy
sweep, ``python -m sysout.lab.report`` writes docs/results/sink-lab.md from it. The task itself is
data: :mod:`sysout.data.bigram_task`.
"""
