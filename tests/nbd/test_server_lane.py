"""A lane runs one connection's jobs in order, one at a time, on borrowed pool threads,
and answers each exactly once on the event loop."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from loft.nbd.server._lane import LANE_BATCH, Lane

pytestmark = pytest.mark.timeout(60)


class Boom(Exception):
    pass


def _job(
    lane: int, i: int, fails: bool, log: list[tuple[str, int, int]], busy: dict[int, int]
) -> Callable[[], Any]:
    def run() -> Any:
        busy[lane] += 1
        try:
            assert busy[lane] == 1, "two jobs of one lane at once"
            log.append(("run", lane, i))
            if fails:
                raise Boom(i)
            return (lane, i)
        finally:
            busy[lane] -= 1

    return run


@seed(11)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    plan=st.lists(st.tuples(st.integers(0, 3), st.booleans()), max_size=80),
    workers=st.integers(1, 4),
    yields=st.lists(st.booleans(), max_size=80),
)
def test_each_job_runs_in_order_once_and_is_answered_once_on_the_loop(
    plan: list[tuple[int, bool]], workers: int, yields: list[bool]
) -> None:
    """Jobs of up to four lanes on a small pool, some failing, submitted with the loop
    sometimes running in between: each lane's jobs run in submit order and never two at
    once, and each gets exactly one answer, on the loop thread, with its result or its
    exception."""
    log: list[tuple[str, int, int]] = []
    answers: list[tuple[int, int, Any, BaseException | None]] = []
    busy = {lane: 0 for lane in range(4)}

    async def main() -> None:
        loop = asyncio.get_running_loop()
        loop_thread = threading.get_ident()
        with ThreadPoolExecutor(max_workers=workers) as pool:
            lanes = [Lane(loop, pool) for _ in range(4)]

            def answered(lane: int, i: int) -> Callable[[Any, BaseException | None], None]:
                def done(result: Any, exc: BaseException | None) -> None:
                    assert threading.get_ident() == loop_thread
                    answers.append((lane, i, result, exc))

                return done

            for i, (lane, fails) in enumerate(plan):
                lanes[lane].submit(_job(lane, i, fails, log, busy), answered(lane, i))
                if i < len(yields) and yields[i]:
                    await asyncio.sleep(0)
            while len(answers) < len(plan):
                await asyncio.sleep(0.001)

    asyncio.run(asyncio.wait_for(main(), 30))
    assert sorted((lane, i) for lane, i, _, _ in answers) == sorted(
        (lane, i) for i, (lane, _) in enumerate(plan)
    )
    for lane in range(4):
        mine = [i for i, (ln, _) in enumerate(plan) if ln == lane]
        assert [i for _, ln, i in log if ln == lane] == mine
        assert [i for ln, i, _, _ in answers if ln == lane] == mine
    for lane, i, result, exc in answers:
        if plan[i][1]:
            assert result is None and isinstance(exc, Boom) and exc.args == (i,)
        else:
            assert result == (lane, i) and exc is None


def _until_the_lane_is_done(pool: ThreadPoolExecutor) -> None:
    """Block (the loop too) until the pool's only thread has finished the lane's jobs and
    given the thread back: a job queued behind them has then run."""
    assert pool.submit(lambda: None).result(10) is None


def test_a_busy_lane_gives_its_thread_back_to_the_pool() -> None:
    """A lane with more queued jobs than LANE_BATCH lets a job queued on the pool
    meanwhile run after LANE_BATCH of them, not after all."""
    order: list[str] = []
    gate = threading.Event()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        with ThreadPoolExecutor(max_workers=1) as pool:
            lane = Lane(loop, pool)
            answered = 0

            def done(result: Any, exc: BaseException | None) -> None:
                nonlocal answered
                answered += 1

            def first() -> None:
                gate.wait(10)
                order.append("lane")

            lane.submit(first, done)
            for _ in range(3 * LANE_BATCH):
                lane.submit(lambda: order.append("lane"), done)
            other = loop.run_in_executor(pool, order.append, "other")
            gate.set()
            await other
            while answered < 3 * LANE_BATCH + 1:
                await asyncio.sleep(0.001)

    asyncio.run(asyncio.wait_for(main(), 30))
    assert order.index("other") == LANE_BATCH
    assert order.count("lane") == 3 * LANE_BATCH + 1


def test_jobs_queued_when_the_pool_shuts_down_still_run() -> None:
    """The pool refuses new work once shut down: a lane that has jobs queued finishes
    them on the thread it has instead of stranding them; a new lane's submit raises and
    queues nothing."""
    gate = threading.Event()
    ran: list[int] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        pool = ThreadPoolExecutor(max_workers=1)
        lane = Lane(loop, pool)
        answers: list[int] = []
        lane.submit(lambda: gate.wait(10), lambda r, e: answers.append(-1))
        for i in range(2 * LANE_BATCH):
            lane.submit(lambda i=i: ran.append(i), lambda r, e: answers.append(0))
        pool.shutdown(wait=False)
        gate.set()
        while len(answers) < 2 * LANE_BATCH + 1:
            await asyncio.sleep(0.001)
        with pytest.raises(RuntimeError):
            Lane(loop, pool).submit(lambda: ran.append(-1), lambda r, e: None)
        await loop.run_in_executor(None, pool.shutdown, True)

    asyncio.run(asyncio.wait_for(main(), 30))
    assert ran == list(range(2 * LANE_BATCH))


def test_a_failing_answer_does_not_strand_the_others() -> None:
    """One result callback that raises goes to the loop's exception handler; the results
    delivered with it are still answered."""
    seen: list[Any] = []
    errors: list[dict[str, Any]] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda _loop, ctx: errors.append(ctx))
        with ThreadPoolExecutor(max_workers=1) as pool:
            lane = Lane(loop, pool)

            def bad(result: Any, exc: BaseException | None) -> None:
                raise Boom("bug")

            lane.submit(lambda: 1, bad)
            lane.submit(lambda: 2, lambda r, e: seen.append(r))
            _until_the_lane_is_done(pool)  # both results wait for one delivery
            while not seen:
                await asyncio.sleep(0.001)

    asyncio.run(asyncio.wait_for(main(), 30))
    assert seen == [2]
    assert len(errors) == 1 and isinstance(errors[0]["exception"], Boom)


def test_results_that_arrive_together_wake_the_loop_once() -> None:
    """Results finished while the loop is busy are delivered by one wake-up."""
    calls = 0

    async def main() -> None:
        nonlocal calls
        loop = asyncio.get_running_loop()
        real = loop.call_soon_threadsafe

        def counting(*args: Any, **kw: Any) -> Any:
            nonlocal calls
            calls += 1
            return real(*args, **kw)

        loop.call_soon_threadsafe = counting  # type: ignore[method-assign]
        answered: list[int] = []
        with ThreadPoolExecutor(max_workers=1) as pool:
            lane = Lane(loop, pool)
            for i in range(10):
                lane.submit(lambda i=i: i, lambda r, e: answered.append(r))
            _until_the_lane_is_done(pool)  # the loop does not run meanwhile
            while len(answered) < 10:
                await asyncio.sleep(0.001)
        assert answered == list(range(10))

    asyncio.run(asyncio.wait_for(main(), 30))
    assert calls == 1


def test_a_closed_loop_ends_the_run_quietly() -> None:
    """Once the loop is closed nobody waits for answers: the worker stops without an
    error and the pool stays usable."""
    loop = asyncio.new_event_loop()
    loop.close()
    with ThreadPoolExecutor(max_workers=1) as pool:
        lane = Lane(loop, pool)
        ran = threading.Event()
        lane.submit(ran.set, lambda r, e: None)
        assert ran.wait(10)
        assert pool.submit(lambda: 7).result(10) == 7
        ran.clear()
        lane.submit(ran.set, lambda r, e: None)  # the lane starts again
        assert ran.wait(10)
