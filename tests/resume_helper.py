"""The one resume contract, checked the same way for every stateful stage and for the whole loader.

A stage is anything iterable with ``state_dict()`` / ``load_state_dict(state)`` (torchdata.nodes'
``get_state`` / ``reset(state)``): the epoch dataset, the streaming loader, the trainer's
synthetic loader. :func:`assert_resumes_exactly` runs ``n`` items, saves the state, continues
``m`` more, restores a fresh instance from the saved state and asserts that its next ``m`` items
are identical, and (``reference``) that saving the state changed nothing: the interrupted run
equals an uninterrupted one.
"""

from __future__ import annotations

import copy
from itertools import chain, count, islice
from typing import Any, Callable, Iterable, Iterator

import torch

IGNORED = ("timing",)
"""Fields that measure the run rather than describe the data."""


def endless(stage: Iterable) -> Iterator:
    """The stage's items epoch after epoch (each ``iter()`` of a loader is one epoch)."""
    return chain.from_iterable(stage for _ in count())


def assert_same_batch(a: Any, b: Any, where: str = "batch") -> None:
    """Equal field by field: tensors in dtype, shape and every value, lists and scalars by ==."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), f"{where}: fields {sorted(a)} != {sorted(b)}"
        for k in a:
            if k not in IGNORED:
                assert_same_batch(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape, where
        assert torch.equal(a, b), f"{where}: values differ"
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_batch(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def _same(same: Callable[[Any, Any], None], a: Any, b: Any, where: str) -> None:
    if same is assert_same_batch:
        assert_same_batch(a, b, where)
    else:
        same(a, b)


def _close(*stages: Any) -> None:
    for s in stages:
        if hasattr(s, "close"):
            s.close()


def assert_resumes_exactly(make: Callable[[], Any], n: int, m: int, *, make_resumed: Callable[[], Any] | None = None,
                           items: Callable[[Any], Iterator] = endless,
                           same: Callable[[Any, Any], None] = assert_same_batch,
                           reference: bool = True, make_reference: Callable[[], Any] | None = None,
                           ) -> tuple[dict[str, Any], list, list]:
    """Run ``n`` items of ``make()``, save its state, run ``m`` more; a fresh ``(make_resumed or
    make)()`` loaded with the state must yield the same ``m`` items, and (``reference``) the
    ``n + m`` items equal the first ``n + m`` of a fresh ``(make_reference or make)()``.
    Returns (state, the first ``n`` items, the ``m`` after)."""
    first = make()
    it = items(first)
    before = list(islice(it, n))
    assert len(before) == n, f"the stage ran out after {len(before)} of {n} items"
    state = copy.deepcopy(first.state_dict())
    after = list(islice(it, m))
    assert len(after) == m, f"the stage ran out {len(after)} items after the saved state, wanted {m}"
    resumed = (make_resumed or make)()
    resumed.load_state_dict(copy.deepcopy(state))
    assert resumed.state_dict() == state, "a restored stage reports a different state"
    again = list(islice(items(resumed), m))
    assert len(again) == m, f"the restored stage yielded {len(again)} items, the original {m}"
    for i, (a, b) in enumerate(zip(after, again)):
        _same(same, a, b, f"item {n + i} after the restore")
    if reference:
        whole = (make_reference or make)()
        straight = list(islice(items(whole), n + m))
        for i, (a, b) in enumerate(zip(before + after, straight)):
            _same(same, a, b, f"item {i} against the uninterrupted run")
        _close(whole)
    _close(first, resumed)
    return state, before, after
