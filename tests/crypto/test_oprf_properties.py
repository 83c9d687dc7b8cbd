"""Properties of the OPRF layer: consistency of all paths, validation, and silent errors."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ndop_core.crypto import oprf

SK = oprf.generate_secret_key()
inputs_st = st.binary(max_size=40)
batches_st = st.lists(inputs_st, max_size=6)


def _valid_element() -> bytes:
    return oprf.hash_to_group(b"some input")


def _invalid_elements() -> dict[str, bytes]:
    valid = _valid_element()
    top_bit_flipped = valid[:31] + bytes([valid[31] ^ 0x80])
    low_bit_flipped = bytes([valid[0] ^ 0x01]) + valid[1:]  # "negative" s: not canonical
    return {
        "identity": bytes(32),
        "all-ff": b"\xff" * 32,
        "top-bit-flipped": top_bit_flipped,
        "low-bit-flipped": low_bit_flipped,
        "field-order": (2**255 - 19).to_bytes(32, "little"),
    }


def _assert_silent(error: BaseException, *elements: bytes) -> None:
    """The message names no element bytes, in any common rendering."""
    text = f"{error} {error!r} {error.args!r}"
    for element in elements:
        for rendering in (element.hex(), element.hex().upper(), repr(element), element[:8].hex()):
            assert rendering not in text


@settings(max_examples=50, deadline=None)
@given(data=inputs_st)
def test_finalize_of_blinded_equals_direct_evaluation(data: bytes) -> None:
    b, blinded = oprf.blind(data)
    output = oprf.finalize(data, b, oprf.evaluate(SK, blinded))
    assert output == oprf.evaluate_input(SK, data)
    assert len(output) == oprf.OUTPUT_SIZE


@settings(max_examples=25, deadline=None)
@given(batch=batches_st)
def test_batch_forms_equal_single_forms(batch: list[bytes]) -> None:
    blinds, packed = oprf.blind_batch(batch)
    assert len(blinds) == len(batch) and len(packed) == oprf.ELEMENT_SIZE * len(batch)
    elements = [packed[i : i + 32] for i in range(0, len(packed), 32)]
    assert elements == [oprf.blind(x, b)[1] for x, b in zip(batch, blinds, strict=True)]
    evaluated = oprf.evaluate_batch(SK, packed)
    assert evaluated == b"".join(oprf.evaluate(SK, e) for e in elements)
    singles = [
        oprf.finalize(x, b, evaluated[i * 32 : i * 32 + 32])
        for i, (x, b) in enumerate(zip(batch, blinds, strict=True))
    ]
    assert oprf.finalize_batch(batch, blinds, evaluated) == singles
    assert oprf.evaluate_input_batch(SK, batch) == singles
    assert singles == [oprf.evaluate_input(SK, x) for x in batch]


@settings(max_examples=200, deadline=None)
@given(element=st.binary(min_size=32, max_size=32))
def test_evaluate_random_bytes_never_leaks_runtime_error(element: bytes) -> None:
    try:
        out = oprf.evaluate(SK, element)
    except oprf.InvalidElementError as e:
        assert e.index is None
        _assert_silent(e, element)
    else:
        assert len(out) == oprf.ELEMENT_SIZE


def test_libsodium_rejects_identity_and_non_canonical_encodings() -> None:
    for name, element in _invalid_elements().items():
        with pytest.raises(oprf.InvalidElementError) as info:
            oprf.evaluate(SK, element)
        assert info.value.index is None, name
        _assert_silent(info.value, element)
    with pytest.raises(oprf.InvalidElementError, match="identity"):
        oprf.evaluate(SK, bytes(32))


@pytest.mark.parametrize("length", [0, 1, 31, 33, 64])
def test_evaluate_rejects_wrong_length(length: int) -> None:
    element = (_valid_element() * 3)[:length]
    with pytest.raises(oprf.InvalidElementError) as info:
        oprf.evaluate(SK, element)
    if length >= 8:  # shorter strings could occur in the message by chance
        _assert_silent(info.value, element)


@pytest.mark.parametrize("name", sorted(_invalid_elements()))
@pytest.mark.parametrize("position", [0, 3, 6])
def test_evaluate_batch_names_first_bad_index(name: str, position: int) -> None:
    good = [oprf.blind(bytes([i]))[1] for i in range(7)]
    bad = _invalid_elements()[name]
    elements = [*good[:position], bad, *good[position + 1 :]]
    elements[-1] = b"\xff" * 32 if position < 6 else elements[-1]  # a later bad one too
    with pytest.raises(oprf.InvalidElementError) as info:
        oprf.evaluate_batch(SK, b"".join(elements))
    assert info.value.index == position
    assert f"blinded element {position} " in str(info.value)
    _assert_silent(info.value, *elements)


def test_evaluate_batch_rejects_ragged_packing() -> None:
    with pytest.raises(ValueError, match="multiple of 32"):
        oprf.evaluate_batch(SK, bytes(33))
    assert oprf.evaluate_batch(SK, b"") == b""


def test_finalize_rejects_invalid_evaluated_element() -> None:
    b, _ = oprf.blind(b"x")
    for element in _invalid_elements().values():
        with pytest.raises(oprf.InvalidElementError) as info:
            oprf.finalize(b"x", b, element)
        _assert_silent(info.value, element)
        with pytest.raises(oprf.InvalidElementError) as info:
            oprf.finalize_batch([b"y", b"x"], [b, b], _valid_element() + element)
        assert info.value.index == 1
        _assert_silent(info.value, element)


def test_finalize_batch_inverts_once(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real: Callable[[bytes], bytes] = oprf._invert

    def counting(s: bytes) -> bytes:
        calls.append(1)
        return real(s)

    monkeypatch.setattr(oprf, "_invert", counting)
    batch = [bytes([i]) * i for i in range(9)]
    blinds, packed = oprf.blind_batch(batch)
    outputs = oprf.finalize_batch(batch, blinds, oprf.evaluate_batch(SK, packed))
    assert len(calls) == 1
    assert outputs == oprf.evaluate_input_batch(SK, batch)
    assert oprf.finalize_batch([], [], b"") == []


def test_finalize_batch_rejects_mismatched_counts_and_bad_blinds() -> None:
    blinds, packed = oprf.blind_batch([b"a", b"b"])
    evaluated = oprf.evaluate_batch(SK, packed)
    with pytest.raises(ValueError):
        oprf.finalize_batch([b"a"], blinds, evaluated)
    with pytest.raises(ValueError):
        oprf.finalize_batch([b"a", b"b"], blinds[:1], evaluated)
    with pytest.raises(ValueError, match="blind 1 "):
        oprf.finalize_batch([b"a", b"b"], [blinds[0], bytes(32)], evaluated)


GROUP_ORDER = 2**252 + 27742317777372353535851937790883648493


@pytest.mark.parametrize(
    "scalar", [bytes(32), b"\xff" * 32, b"\x01" * 31, GROUP_ORDER.to_bytes(32, "little")]
)
def test_bad_scalars_rejected(scalar: bytes) -> None:
    with pytest.raises(ValueError):
        oprf.blind(b"x", scalar)
    with pytest.raises(ValueError):
        oprf.evaluate(scalar, _valid_element())
    with pytest.raises(ValueError):
        oprf.finalize(b"x", scalar, _valid_element())
    with pytest.raises(ValueError):
        oprf.evaluate_input(scalar, b"x")
    with pytest.raises(ValueError):
        oprf.public_key(scalar)


def test_input_length_limit() -> None:
    too_long = bytes(65536)
    for call in (
        lambda: oprf.blind(too_long),
        lambda: oprf.evaluate_input(SK, too_long),
        lambda: oprf.blind_batch([b"", too_long]),
        lambda: oprf.evaluate_input_batch(SK, [too_long]),
    ):
        with pytest.raises(ValueError):
            call()
    assert oprf.evaluate_input(SK, bytes(65535)) == oprf.evaluate_input_batch(SK, [bytes(65535)])[0]


def test_keys() -> None:
    sk = oprf.generate_secret_key()
    assert len(sk) == oprf.SCALAR_SIZE and sk != bytes(32)
    assert len(oprf.public_key(sk)) == oprf.ELEMENT_SIZE
    with pytest.raises(ValueError):
        oprf.derive_key_pair(bytes(31), b"info")
    a = oprf.derive_key_pair(bytes(32), b"info")
    assert a == oprf.derive_key_pair(bytes(32), b"info") != oprf.derive_key_pair(bytes(32), b"")


def test_hash_to_scalar_dst() -> None:
    assert oprf.hash_to_scalar(b"m") == oprf.hash_to_scalar(
        b"m", b"HashToScalar-" + oprf.CONTEXT_STRING
    )
    assert oprf.hash_to_scalar(b"m") != oprf.hash_to_scalar(b"m", b"other")
