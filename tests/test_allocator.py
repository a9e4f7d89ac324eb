"""glibc malloc tuning: freed memory stays in the heap (and nothing happens where there is no mallopt)."""

from __future__ import annotations

import ctypes
import sys

import pytest

from osdsr import allocator


class FakeLibc:
    def __init__(self) -> None:
        self.calls: list[tuple[int, int]] = []

    def mallopt(self, parameter: int, value: int) -> int:
        self.calls.append((parameter, value))
        return 1

    def malloc_trim(self, pad: int) -> int:
        self.calls.append(("trim", pad))
        return 1


def test_mmap_is_off_and_the_trim_threshold_high(monkeypatch: pytest.MonkeyPatch) -> None:
    libc = FakeLibc()
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setattr(ctypes, "CDLL", lambda name: libc)
    assert allocator.keep_freed_memory()
    assert libc.calls == [(allocator.M_MMAP_MAX, 0), (allocator.M_TRIM_THRESHOLD, allocator.TRIM_THRESHOLD_BYTES)]


def test_other_c_libraries_and_systems_are_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ctypes, "CDLL", lambda name: object())  # a libc without mallopt (musl)
    assert not allocator.keep_freed_memory()
    monkeypatch.setattr(sys, "platform", "darwin")
    assert not allocator.keep_freed_memory()


def test_release_trims_the_heap_once_and_only_with_glibc(monkeypatch: pytest.MonkeyPatch) -> None:
    libc = FakeLibc()
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setattr(ctypes, "CDLL", lambda name: libc)
    assert allocator.release_freed_memory()
    assert libc.calls == [("trim", 0)]
    monkeypatch.setattr(ctypes, "CDLL", lambda name: object())
    assert not allocator.release_freed_memory()
    monkeypatch.setattr(sys, "platform", "darwin")
    assert not allocator.release_freed_memory()
