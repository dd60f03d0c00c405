"""workstream's benchmark scripts (not part of the installed package).

Run them from the project root, one at a time (see ``bench/README.md``)::

    .venv/bin/python -m bench.throughput --quick
    .venv/bin/python bench/latency.py --quick
"""
