"""A module whose import, inside a worker, commits the fault set in workers_faults.

Imported only by ``workers_faults.import_with_fault`` (in the child); importing it
anywhere else does nothing.
"""

import workers_faults
import workstream

if workstream.in_worker() and workers_faults.IMPORT_FAULT is not None:
    workers_faults.commit(*workers_faults.IMPORT_FAULT)
