"""lab's experiments: one package per recipe, each a config file and its wiring (`__main__.py`)."""

import os

# Every published number: the rows `python -m experiments.reproduce` checks, the references the
# configs' closing summaries quote (`lab.reference_table`), README's results table.
REFERENCE_TABLE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "reference_results.json")
