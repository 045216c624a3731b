"""Running the workers: the state machine (`states`, pure), the `supervisor` that carries
out its actions on the event loop, process trees (`proctree`), per-worker cgroups
(`cgroups`), their CPU weights per user (`cpushare`) and the workers' output (`output`).
"""
