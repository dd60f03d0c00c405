"""Code that runs only inside the worker process.

Must not import ``workstream._supervisor``, ``workstream._api`` or any integration.
"""
