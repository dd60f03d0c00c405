"""``workstream demo``: a small numpy network trained in a worker process, stopped cleanly.

Not part of the library: an application of it that imports only workstream's public API
(``workstream`` and ``workstream.qt``), and that nothing in the library imports. Run it
with ``workstream demo`` or ``python -m workstream demo`` (``--gui`` for the Qt window);
it needs ``pip install 'workstream[demo]'`` (and ``[qt]`` for the window).

::

    cli.py        the ``demo`` sub-command: checks dependencies, picks a front end
    jobs.py       --jobs N: N trainings on a Pool, one line each -> rich
    terminal.py   live progress bar, Stop on Ctrl-C              -> rich
    gui.py        the Qt window (Start / Stop / Kill now, plot)  -> workstream.qt
    settings.py   its options (argparse) and DemoSettings
    report.py     the one report both print; rung wording; left-over processes
    model.py      the worker: the network and its training       -> numpy only

Each imports only modules below it in this list (``cli`` imports ``jobs``, ``terminal``
or ``gui`` only when it runs one); ``tests/test_layers.py`` checks that the demo imports
nothing of workstream but its public API and has no import cycle.
"""
