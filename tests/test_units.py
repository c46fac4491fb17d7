import pytest
from hypothesis import given
from hypothesis import strategies as st

from loft.units import format_size, parse_size


@pytest.mark.parametrize(
    ("text", "value"),
    [("4096", 4096), ("4K", 4096), ("4M", 4 << 20), ("16G", 16 << 30), ("1TiB", 1 << 40)],
)
def test_parse_size(text: str, value: int) -> None:
    assert parse_size(text) == value


@pytest.mark.parametrize("text", ["", "G", "-1G", "1.5G", "12X"])
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_size(text)


@given(st.integers(min_value=0, max_value=1 << 50))
def test_format_parse_round_trip_for_whole_units(n: int) -> None:
    text = format_size(n)
    if "." not in text:
        assert parse_size(text) == n
