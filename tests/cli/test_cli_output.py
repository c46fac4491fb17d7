"""The CLI's one way to print ``--json``, tables and sizes."""

from __future__ import annotations

import pytest

from loft.cli import output


def test_json_is_indented_with_sorted_keys(capsys: pytest.CaptureFixture[str]) -> None:
    output.echo_json({"b": [1], "a": None})
    assert capsys.readouterr().out == '{\n  "a": null,\n  "b": [\n    1\n  ]\n}\n'


@pytest.mark.parametrize(
    ("n", "people", "compact"),
    [
        (0, "0 B", "0"),
        (512, "512 B", "512"),
        (1536, "1.5 KiB", "1.5K"),
        (4 << 20, "4.0 MiB", "4M"),
        (16 << 30, "16.0 GiB", "16G"),
        (3 << 40, "3072.0 GiB", "3T"),
    ],
)
def test_sizes_for_people_and_as_size_options_take_them(n: int, people: str, compact: str) -> None:
    assert output.size(n) == people
    assert output.size(n, compact=True) == compact


def test_table_prints_columns_and_rows(capsys: pytest.CaptureFixture[str]) -> None:
    output.table([["v", "1M"], ["w", "3G"]], ["NAME", "SIZE"])
    lines = capsys.readouterr().out.splitlines()
    assert any("NAME" in line and "SIZE" in line for line in lines)
    assert any("w" in line and "3G" in line for line in lines)
    output.table([["name", "v"]], ["FIELD", "VALUE"], show_header=False)
    assert "FIELD" not in capsys.readouterr().out
