"""The steps of ``bench/gpu_check.py``: one module each, run as ``python bench/gpu_check.py --step
NAME`` subprocesses so that each has its own time limit and a crash stops only itself.

Every step writes ``<out>/<NAME>.json`` (``common.StepReport``: status, notes, its figures) as it
goes, so a step stopped by its time limit still leaves what it measured, plus CSV files.
"""

# name -> module of this package; the order is the order of the list (the schedule is
# bench/gpu_check.py's PHASES)
STEPS = {
    "env": "env",
    "correctness": "correctness",
    "speed": "speed",
    "throughput": "throughput",
    "science": "science",
}
