"""The wrapping primitive: round trips, and every alteration is refused, never misread."""

from __future__ import annotations

import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fleetkeep.keys.wrapping import (
    WRAPPED_BYTES,
    UnwrapFailed,
    key_check_value,
    unwrap_dek,
    wrap_dek,
)

keys = st.binary(min_size=32, max_size=32)
contexts = st.text(max_size=40)


@given(ekey=keys, dek=keys, context=contexts)
def test_wrap_then_unwrap_returns_the_dek(ekey: bytes, dek: bytes, context: str) -> None:
    wrapped = wrap_dek(ekey, dek, context)
    assert len(wrapped) == WRAPPED_BYTES
    assert dek not in wrapped
    assert unwrap_dek(ekey, wrapped, context) == dek


@given(ekey=keys, dek=keys, position=st.integers(0, WRAPPED_BYTES - 1), bit=st.integers(0, 7))
def test_any_flipped_bit_fails_authentication(
    ekey: bytes, dek: bytes, position: int, bit: int
) -> None:
    wrapped = bytearray(wrap_dek(ekey, dek, "user:1"))
    wrapped[position] ^= 1 << bit
    with pytest.raises(UnwrapFailed):
        unwrap_dek(ekey, bytes(wrapped), "user:1")


@given(ekey=keys, dek=keys, cut=st.integers(0, WRAPPED_BYTES - 1))
def test_truncated_wrapped_keys_are_refused_with_their_length(
    ekey: bytes, dek: bytes, cut: int
) -> None:
    wrapped = wrap_dek(ekey, dek, "user:1")[:cut]
    with pytest.raises(UnwrapFailed, match=f"got {cut}"):
        unwrap_dek(ekey, wrapped, "user:1")


@given(ekey=keys, other=keys, dek=keys)
def test_another_key_or_another_user_cannot_unwrap(ekey: bytes, other: bytes, dek: bytes) -> None:
    wrapped = wrap_dek(ekey, dek, "user:1")
    with pytest.raises(UnwrapFailed, match="authentication failed"):
        unwrap_dek(ekey, wrapped, "user:2")
    if other != ekey:
        with pytest.raises(UnwrapFailed):
            unwrap_dek(other, wrapped, "user:1")


def test_key_check_values_identify_keys_without_revealing_them() -> None:
    a, b = os.urandom(32), os.urandom(32)
    assert key_check_value(a) == key_check_value(a)
    assert key_check_value(a) != key_check_value(b)
    assert len(key_check_value(a)) == 16
    assert a.hex()[:16] != key_check_value(a)


def test_wrong_sizes_are_refused() -> None:
    with pytest.raises(ValueError, match="organization key is 32 bytes"):
        wrap_dek(b"short", os.urandom(32), "user:1")
    with pytest.raises(ValueError, match="data key is 32 bytes"):
        wrap_dek(os.urandom(32), b"short", "user:1")
