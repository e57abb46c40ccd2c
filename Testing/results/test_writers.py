"""The image writers' scheduler: results in order, errors raised, and no busy-wait while writers run."""

import time

import pytest

from SegUncertaintyLib.results.run_folder import IMAGE_WRITERS, _in_parallel


def test_writers_wait_without_spinning():
    # a short job finishes first: the caller then waits while IMAGE_WRITERS longer ones run. Waiting on the
    # finished future too returned at once and polled thousands of times in 1 s.
    durations = [0.05] + [0.3] * (2 * IMAGE_WRITERS)
    polls = []
    start = time.perf_counter()
    results = _in_parallel(lambda d: time.sleep(d) or d, durations, lambda: polls.append(1))
    elapsed = time.perf_counter() - start
    assert results == durations
    assert len(polls) <= len(durations) + elapsed / 0.1 + 5, len(polls)


def test_writers_raise_the_first_error():
    def job(n):
        if n == 1:
            raise ValueError("bad job")
        time.sleep(0.05)
        return n

    with pytest.raises(ValueError, match="bad job"):
        _in_parallel(job, range(6), lambda: None)
