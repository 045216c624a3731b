"""A discrete-event simulation of one host running batch jobs (see benchmarks/simulate.py).

- `engine`: the clock, processor sharing of the cores, PSI, and jobs as generator processes;
- `model`: the host's task limit and memory, loky pools and the job policies, the daemon
  driving the project's real `BudgetLedger`;
- `cells`: one run of one policy in one cell, and its figures.
"""
