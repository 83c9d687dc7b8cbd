"""RFC 9497 Appendix A vectors, OPRF(ristretto255, SHA-512) base mode (tests/vectors/oprf)."""

from __future__ import annotations

from typing import Any

import pytest

from ndop_core.crypto import oprf
from tests.vector_files import load_json

VECTOR_FILE = "oprf/ristretto255-SHA512.json"


def _mode0_suites() -> list[dict[str, Any]]:
    suites = [
        s
        for s in load_json(VECTOR_FILE)
        if s["mode"] == 0 and s["identifier"] == "ristretto255-SHA512"
    ]
    assert suites, f"no mode-0 ristretto255-SHA512 vectors in {VECTOR_FILE}"
    return suites


def _parts(vector: dict[str, Any], field: str) -> list[bytes]:
    """Split a field into per-element bytes (batched vectors are comma-separated hex)."""
    values = [bytes.fromhex(h) for h in str(vector[field]).split(",")]
    assert len(values) == int(vector["Batch"]), field
    return values


def _cases() -> list[Any]:
    return [
        pytest.param(suite, vector, id=f"suite{s}-vector{v}-batch{vector['Batch']}")
        for s, suite in enumerate(_mode0_suites())
        for v, vector in enumerate(suite["vectors"])
    ]


def _key(suite: dict[str, Any]) -> bytes:
    sk, pk = oprf.derive_key_pair(bytes.fromhex(suite["seed"]), bytes.fromhex(suite["keyInfo"]))
    assert sk.hex() == suite["skSm"]
    assert pk == oprf.public_key(sk)
    return sk


def test_suite_constants() -> None:
    for suite in _mode0_suites():
        assert suite["hash"] == "SHA512"
        assert bytes.fromhex(suite["groupDST"]) == b"HashToGroup-" + oprf.CONTEXT_STRING
    assert oprf.CONTEXT_STRING == b"OPRFV1-\x00-ristretto255-SHA512"


@pytest.mark.parametrize(("suite", "vector"), _cases())
def test_single(suite: dict[str, Any], vector: dict[str, Any]) -> None:
    sk = _key(suite)
    rows = zip(
        _parts(vector, "Input"),
        _parts(vector, "Blind"),
        _parts(vector, "BlindedElement"),
        _parts(vector, "EvaluationElement"),
        _parts(vector, "Output"),
        strict=True,
    )
    for data, b, blinded, evaluated, output in rows:
        assert oprf.blind(data, b) == (b, blinded)
        assert oprf.evaluate(sk, blinded) == evaluated
        assert oprf.finalize(data, b, evaluated) == output
        assert oprf.evaluate_input(sk, data) == output
        assert len(output) == oprf.OUTPUT_SIZE


FIELDS = ("Input", "Blind", "BlindedElement", "EvaluationElement", "Output")


def _check_batch(sk: bytes, columns: list[list[bytes]], monkeypatch: pytest.MonkeyPatch) -> None:
    """Batch forms on columns ordered as FIELDS reproduce the vectors' bytes."""
    inputs, blinds, blinded, evaluated, outputs = columns
    given = iter(blinds)
    with monkeypatch.context() as m:
        m.setattr(oprf, "_random_scalar", lambda: next(given))
        assert oprf.blind_batch(inputs) == (blinds, b"".join(blinded))
    assert oprf.evaluate_batch(sk, b"".join(blinded)) == b"".join(evaluated)
    assert oprf.finalize_batch(inputs, blinds, b"".join(evaluated)) == outputs
    assert oprf.evaluate_input_batch(sk, inputs) == outputs
    fresh_blinds, packed = oprf.blind_batch(inputs)  # random blinds: same outputs
    assert oprf.finalize_batch(inputs, fresh_blinds, oprf.evaluate_batch(sk, packed)) == outputs


@pytest.mark.parametrize(("suite", "vector"), _cases())
def test_batch_forms(
    suite: dict[str, Any], vector: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    _check_batch(_key(suite), [_parts(vector, f) for f in FIELDS], monkeypatch)


def test_all_vectors_as_one_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    for suite in _mode0_suites():
        columns: list[list[bytes]] = [[] for _ in FIELDS]
        for vector in suite["vectors"]:
            for column, field in zip(columns, FIELDS, strict=True):
                column.extend(_parts(vector, field))
        assert len(columns[0]) > 1
        _check_batch(_key(suite), columns, monkeypatch)
