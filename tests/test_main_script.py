"""A job that pickles the main script's own functions and classes with plain pickle (a
``multiprocessing.Pool``, a PyTorch DataLoader) works under every start method: the
definitions cloudpickle sent by value are bound under their names in the child's
``__main__``. And the processes such a job forks are not workers: terminating them
neither raises ``Cancelled`` in them nor cancels the job."""

from __future__ import annotations

import importlib.util
import pathlib
import subprocess
import sys
import textwrap

import pytest

METHODS = ["fork", "forkserver", "spawn"]

POOL_SCRIPT = textwrap.dedent('''
    import multiprocessing, pickle, sys
    import workstream

    def square(x):
        return x * x

    class Box:
        def __init__(self, v):
            self.v = v

    def job(method):
        with multiprocessing.get_context(method).Pool(2) as pool:
            yield pool.map(square, range(5))
        yield pickle.loads(pickle.dumps(Box(3))).v

    if __name__ == "__main__":
        method = sys.argv[1]
        j = workstream.start(job, method, start_method=method)
        items = list(j)
        outcome = j.wait(timeout=60)
        print(items, outcome.kind, getattr(outcome, "error", ""))
''')

LOADER_SCRIPT = textwrap.dedent('''
    import sys
    import workstream

    class Numbers:
        def __len__(self):
            return 16
        def __getitem__(self, i):
            import torch
            return torch.tensor([float(i)])

    def job():
        from torch.utils.data import DataLoader
        for batch in DataLoader(Numbers(), batch_size=4, num_workers=2):
            yield batch.flatten().tolist()

    if __name__ == "__main__":
        with workstream.Worker(start_method=sys.argv[1]) as worker:
            j = worker.start(job)
            items = list(j)
            print(items, j.wait(timeout=60).kind)
''')


def run_script(tmp_path: pathlib.Path, source: str, *args: str) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "main_script.py"
    script.write_text(source)
    return subprocess.run(
        [sys.executable, str(script), *args], cwd=tmp_path, capture_output=True, text=True,
        timeout=100,
    )


@pytest.mark.timeout(120)
@pytest.mark.parametrize("method", METHODS)
def test_a_pool_inside_the_job_pickles_the_scripts_definitions(
    tmp_path: pathlib.Path, method: str
) -> None:
    done = run_script(tmp_path, POOL_SCRIPT, method)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[[0, 1, 4, 9, 16], 3] completed", done.stdout + done.stderr
    assert "Cancelled" not in done.stderr, done.stderr  # the pool's terminate() is not ours


@pytest.mark.timeout(120)
@pytest.mark.parametrize("method", ["forkserver", "spawn"])
def test_a_dataloader_with_the_scripts_dataset(tmp_path: pathlib.Path, method: str) -> None:
    if importlib.util.find_spec("torch") is None:
        pytest.skip("torch is not installed (it is in the test extra on Python 3.11)")
    done = run_script(tmp_path, LOADER_SCRIPT, method)
    assert done.returncode == 0, done.stderr
    expected = "[[0.0, 1.0, 2.0, 3.0], [4.0, 5.0, 6.0, 7.0], [8.0, 9.0, 10.0, 11.0], " \
        "[12.0, 13.0, 14.0, 15.0]] completed"
    assert done.stdout.strip() == expected, done.stdout + done.stderr
