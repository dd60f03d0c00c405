"""workstream's benchmark suite (not part of the installed package).

Run it from the project root (see ``bench/README.md``)::

    python -m bench --quick            # every benchmark, short
    python -m bench.latency --quick    # one benchmark, with its own options
"""
