"""NHS number validation: the published examples, every accepted written form, every reason a
text is not a valid number, and properties of the modulus-11 rule checked with Hypothesis.

Only the two published examples (943 476 5919 valid, 987 654 4321 invalid) and synthetic
999-range numbers appear here as fixed data; the property tests generate digit strings in
memory and keep no example database, so no generated number is written to disk.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ndop_core.nhs_number import (
    INVALID,
    InvalidReason,
    canonical,
    canonical_bytes,
    check_digit,
    is_valid,
    parse,
    parse_values,
    validate_digits,
    with_check_digit,
)

PUBLISHED_VALID = "9434765919"
PUBLISHED_INVALID = "9876544321"

# No example database: generated digit strings are never written to disk.
PROPERTY = settings(database=None, max_examples=300, suppress_health_check=[HealthCheck.too_slow])


def naive_is_valid(text: str) -> bool:
    """Reference rule, written out the slow obvious way: ten ASCII digits, digits 1-9 weighted
    10..2, check = 11 - (sum mod 11), 11 means 0, 10 means never valid."""
    if len(text) != 10 or any(c not in "0123456789" for c in text):
        return False
    total = 0
    for position in range(9):
        total += int(text[position]) * (10 - position)
    check = 11 - (total % 11)
    if check == 11:
        check = 0
    if check == 10:
        return False
    return check == int(text[9])


def first_999_prefix_with_check_10() -> str:
    for prefix in range(999_000_000, 1_000_000_000):
        text = str(prefix)
        total = sum(int(d) * w for d, w in zip(text, range(10, 1, -1), strict=True))
        if 11 - total % 11 == 10:
            return text
    raise AssertionError("no 999 prefix has check digit 10")


PREFIX_CHECK_10 = first_999_prefix_with_check_10()


# --- the published examples ------------------------------------------------------------------


def test_published_valid_example() -> None:
    assert parse("9434765919") == "9434765919"
    assert is_valid("9434765919")
    assert check_digit("943476591") == 9


def test_published_invalid_example_is_a_check_digit_mismatch() -> None:
    result = parse("9876544321")
    assert result is InvalidReason.CHECK_DIGIT_MISMATCH
    assert str(result) == "check digit does not match"
    assert not is_valid("987 654 4321")


# --- accepted forms ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "9434765919",
        "943 476 5919",
        "943-476-5919",
        " 9434765919 ",
        "\t9434765919\t",
        " \t 943 476 5919 \t ",
        "9434765919,",
        "9434765919,\r\n",
        "9434765919,\n",
        "9434765919\r\n",
        "9434765919\n",
        "943-476-5919\r\n",
        "  943 476 5919,  \n",
    ],
)
def test_every_accepted_form_gives_the_canonical_number(text: str) -> None:
    assert parse(text) == PUBLISHED_VALID
    values, reasons = parse_values([text])
    assert reasons == {}
    assert values.tolist() == [int(PUBLISHED_VALID)]


def test_synthetic_999_number_in_every_form() -> None:
    number = with_check_digit("999000001")
    assert number is not None
    assert number.startswith("999")
    spaced = f"{number[:3]} {number[3:6]} {number[6:]}"
    hyphenated = f"{number[:3]}-{number[3:6]}-{number[6:]}"
    for text in (number, spaced, hyphenated, f"{number},", f" {spaced} \r\n", f"{number},\r\n"):
        assert parse(text) == number, text


# --- rejected forms ----------------------------------------------------------------------------


def test_check_digit_10_is_never_valid() -> None:
    assert PREFIX_CHECK_10.startswith("999")
    assert check_digit(PREFIX_CHECK_10) is None
    assert with_check_digit(PREFIX_CHECK_10) is None
    for last in "0123456789":
        assert parse(PREFIX_CHECK_10 + last) is InvalidReason.CHECK_DIGIT_10
        assert validate_digits(PREFIX_CHECK_10 + last) is InvalidReason.CHECK_DIGIT_10
    values, reasons = parse_values([PREFIX_CHECK_10 + "0"])
    assert values.tolist() == [INVALID]
    assert reasons == {0: InvalidReason.CHECK_DIGIT_10}


def test_wrong_check_digit() -> None:
    valid = with_check_digit("999123457")
    assert valid is not None
    wrong = valid[:9] + str((int(valid[9]) + 1) % 10)
    assert parse(wrong) is InvalidReason.CHECK_DIGIT_MISMATCH
    assert parse(f"{wrong[:3]} {wrong[3:6]} {wrong[6:]}") is InvalidReason.CHECK_DIGIT_MISMATCH


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("943476591", InvalidReason.WRONG_LENGTH),  # 9 digits
        ("94347659190", InvalidReason.WRONG_LENGTH),  # 11 digits
        ("943 476 591", InvalidReason.WRONG_LENGTH),
        ("943 476 59190", InvalidReason.WRONG_LENGTH),
        ("94347A5919", InvalidReason.NOT_DIGITS),
        ("abcdefghij", InvalidReason.NOT_DIGITS),
        ("943.476.5919", InvalidReason.NOT_DIGITS),
        ("943,476,5919", InvalidReason.NOT_DIGITS),
        ("9434765919,,", InvalidReason.NOT_DIGITS),
        ("\u0669\u0664\u0663\u0664\u0667\u0666\u0665\u0669\u0661\u0669", InvalidReason.NOT_DIGITS),
        ("\uff19\uff14\uff13\uff14\uff17\uff16\uff15\uff19\uff11\uff19", InvalidReason.NOT_DIGITS),
        ("94347659\u00b9\u2079", InvalidReason.NOT_DIGITS),  # superscripts: isdigit() but not ASCII
        ("", InvalidReason.EMPTY),
        ("   ", InvalidReason.EMPTY),
        ("\r\n", InvalidReason.EMPTY),
        ("9876544321", InvalidReason.CHECK_DIGIT_MISMATCH),
    ],
)
def test_invalid_forms_and_their_reasons(text: str, reason: InvalidReason) -> None:
    assert parse(text) is reason
    assert not is_valid(text)
    values, reasons = parse_values([text])
    assert values.tolist() == [INVALID]
    assert reasons == {0: reason}


def test_reasons_never_quote_the_input() -> None:
    for text in ("9876544321", "94347A5919", "943476591", PREFIX_CHECK_10 + "3"):
        reason = parse(text)
        assert isinstance(reason, InvalidReason)
        assert text not in str(reason)
        assert not any(ch.isdigit() for ch in str(reason).replace("10", ""))


def test_parse_values_positions_and_reasons() -> None:
    a = with_check_digit("999000001")
    b = with_check_digit("999765432")
    assert a is not None and b is not None
    texts = [a, "", f"{b[:3]} {b[3:6]} {b[6:]}", "9876544321", f"{a},", "x"]
    values, reasons = parse_values(texts)
    assert values.tolist() == [int(a), INVALID, int(b), INVALID, int(a), INVALID]
    assert reasons == {
        1: InvalidReason.EMPTY,
        3: InvalidReason.CHECK_DIGIT_MISMATCH,
        5: InvalidReason.NOT_DIGITS,
    }
    empty_values, empty_reasons = parse_values([])
    assert empty_values.tolist() == []
    assert empty_reasons == {}


# --- properties ------------------------------------------------------------------------------

nine_digits = st.text(alphabet="0123456789", min_size=9, max_size=9)
ten_digits = st.text(alphabet="0123456789", min_size=10, max_size=10)
prefix_999 = st.integers(min_value=999_000_000, max_value=999_999_999).map(str)


@st.composite
def valid_999(draw: st.DrawFn) -> str:
    prefix = draw(prefix_999.filter(lambda p: check_digit(p) is not None))
    number = with_check_digit(prefix)
    assert number is not None
    return number


@PROPERTY
@given(nine_digits)
def test_with_check_digit_always_gives_a_number_parse_accepts(first_nine: str) -> None:
    number = with_check_digit(first_nine)
    if number is None:
        assert parse(first_nine + "0") is InvalidReason.CHECK_DIGIT_10
        assert not naive_is_valid(first_nine + "5")
        return
    assert len(number) == 10
    assert number[:9] == first_nine
    assert parse(number) == number
    assert naive_is_valid(number)
    # exactly one final digit completes the prefix
    completions = [d for d in "0123456789" if is_valid(first_nine + d)]
    assert completions == [number[9]]


@PROPERTY
@given(nine_digits, st.integers(min_value=0, max_value=9), st.integers(min_value=1, max_value=9))
def test_changing_any_single_digit_makes_a_valid_number_invalid(
    first_nine: str, position: int, delta: int
) -> None:
    number = with_check_digit(first_nine)
    if number is None:
        return
    changed_digit = str((int(number[position]) + delta) % 10)
    changed = number[:position] + changed_digit + number[position + 1 :]
    assert changed != number
    result = parse(changed)
    assert isinstance(result, InvalidReason)
    assert result in (InvalidReason.CHECK_DIGIT_MISMATCH, InvalidReason.CHECK_DIGIT_10)


@PROPERTY
@given(nine_digits, st.integers(min_value=0, max_value=8))
def test_swapping_adjacent_different_digits_makes_a_valid_number_invalid(
    first_nine: str, position: int
) -> None:
    number = with_check_digit(first_nine)
    if number is None or number[position] == number[position + 1]:
        return
    swapped = number[:position] + number[position + 1] + number[position] + number[position + 2 :]
    assert not is_valid(swapped)


@PROPERTY
@given(ten_digits)
def test_parse_agrees_with_a_naive_reference_for_any_ten_digits(text: str) -> None:
    result = parse(text)
    assert (result == text) is naive_is_valid(text)
    assert isinstance(result, InvalidReason) is not naive_is_valid(text)
    values, reasons = parse_values([text])
    assert bool(values[0] != INVALID) is naive_is_valid(text)
    assert (0 in reasons) is not naive_is_valid(text)


@PROPERTY
@given(st.lists(st.one_of(valid_999(), prefix_999.map(lambda p: p + "7")), max_size=30))
def test_parse_agrees_with_the_naive_reference_in_the_999_range(texts: list[str]) -> None:
    for text in texts:
        assert is_valid(text) is naive_is_valid(text)


def _formats(number: str) -> list[str]:
    return [
        number,
        f"{number[:3]} {number[3:6]} {number[6:]}",
        f"{number[:3]}-{number[3:6]}-{number[6:]}",
        f"{number},",
        f"{number},\r\n",
        f"  {number}\t",
        f"{number} ,\n",
    ]


@st.composite
def written_999(draw: st.DrawFn) -> str:
    """A 999-range number, valid or with a wrong check digit, in one of the written forms."""
    prefix = draw(prefix_999)
    last = draw(st.sampled_from("0123456789"))
    return draw(st.sampled_from(_formats(prefix + last)))


mixed_texts = st.lists(
    st.one_of(
        valid_999().flatmap(lambda n: st.sampled_from(_formats(n))),
        written_999(),
        st.text(max_size=14),
        st.text(alphabet="0123456789 -,\t\r\n\u0660\u0669\uff10", max_size=14),
        st.sampled_from(["", " ", ",", "\r\n", "\u00a0", "\u2003999\u2003"]),
    ),
    max_size=40,
)


@PROPERTY
@given(mixed_texts)
def test_parse_values_agrees_with_parse(texts: list[str]) -> None:
    values, reasons = parse_values(texts)
    assert values.dtype == np.int64
    assert len(values) == len(texts)
    for position, text in enumerate(texts):
        expected = parse(text)
        if isinstance(expected, InvalidReason):
            assert values[position] == INVALID, (position, text)
            assert reasons.get(position) is expected, (position, text)
        else:
            assert int(values[position]) == int(expected), (position, text)
            assert position not in reasons, (position, text)
    assert set(reasons) <= set(range(len(texts)))


@PROPERTY
@given(st.lists(valid_999(), max_size=50))
def test_canonical_bytes_round_trips_values(numbers: list[str]) -> None:
    values = np.array([int(n) for n in numbers], dtype=np.int64)
    blob = canonical_bytes(values)
    assert len(blob) == 10 * len(numbers)
    text = blob.decode("ascii")
    pieces = [text[i : i + 10] for i in range(0, len(text), 10)]
    assert pieces == numbers
    assert pieces == [canonical(int(v)) for v in values.tolist()]
    back, reasons = parse_values(pieces)
    assert reasons == {}
    assert back.tolist() == values.tolist()


def test_canonical_keeps_leading_zeros() -> None:
    assert canonical(18) == "0000000018"
    assert canonical_bytes(np.array([18], dtype=np.int64)) == b"0000000018"
    assert canonical_bytes(np.empty(0, dtype=np.int64)) == b""


@PROPERTY
@given(
    st.lists(st.integers(0, 9_999_999_999), max_size=50),
    st.sampled_from([b"", b",", b",\r\n", b",\n"]),
)
def test_canonical_bytes_is_each_value_zero_padded(values: list[int], suffix: bytes) -> None:
    blob = canonical_bytes(np.array(values, dtype=np.int64), suffix)
    assert blob == b"".join(f"{value:010d}".encode() + suffix for value in values)
