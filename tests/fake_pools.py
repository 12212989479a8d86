"""A stand-in for a process pool whose worker dies on one item (fault injection for the jobs' pools)."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures.process import BrokenProcessPool
from typing import Any


class FakeFuture:
    def __init__(self, value: Any = None, broken: bool = False) -> None:
        self.value, self.broken = value, broken

    def result(self) -> Any:
        if self.broken:
            raise BrokenProcessPool("a worker died")
        return self.value

    def done(self) -> bool:
        return True

    def cancelled(self) -> bool:
        return False

    def exception(self) -> BaseException | None:
        return BrokenProcessPool("a worker died") if self.broken else None

    def cancel(self) -> bool:
        return False


def dying_pool(is_victim: Callable[[Any], bool]) -> type:
    """A pool class that runs each task in this process, except that the victim's fails the way a dead
    worker's does."""

    class FakePool:
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            pass

        def submit(self, function: Callable[[Any], Any], item: Any) -> FakeFuture:
            return FakeFuture(broken=True) if is_victim(item) else FakeFuture(function(item))

        def shutdown(self, wait: bool = True, cancel_futures: bool = False) -> None:
            pass

        def __enter__(self) -> FakePool:
            return self

        def __exit__(self, *exc: Any) -> bool:
            return False

    return FakePool
