"""`fewstep report`: one sweep over systems (teacher step counts, students, engines) -> quality vs latency.

sweep.py reads the YAML sweep, measure.py measures one system, pareto.py finds the frontier, render.py writes
report.md / report.html / pareto.png / sample grids, run.py ties them together and resumes.
"""
