"""The benchmark's chart and its rows of rounds, from made-up results (no benchmark is run)."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from bench import chart
from bench.report import Row, medians
from bench.spec import LoadResult


def result(rps: float) -> LoadResult:
    return LoadResult(requests=int(rps * 10), seconds=10.0, p50_ms=5.0, p99_ms=20.0, errors=0)


def test_chart_draws_throughput_and_the_gateway_share_of_the_baseline(tmp_path: Path) -> None:
    rows = [
        Row("viewer", "postgresql", "gateway", result(1_000)),
        Row("viewer", "postgresql", "baseline", result(5_000)),
        Row("viewer", "postgresql", "postgraphile", result(8_000)),
        Row("consume", "sqlite", "gateway", result(300)),
        Row("consume", "sqlite", "baseline", result(1_000)),
        Row("webhook", "sqlite", "gateway", result(0)),  # a failed run draws no bar
    ]
    drawn = chart.draw(rows, tmp_path / "out" / "20261124T173719Z.png")

    assert drawn.groups == ("viewer\nPostgreSQL", "consume\nSQLite", "webhook\nSQLite")
    assert drawn.ratio_labels == ("20%", "30%", "")
    with Image.open(drawn.path) as image:
        assert image.format == "PNG"
        width, height = image.size
        assert width >= 600 and height >= 700
        # Not a blank canvas: bars in several colours.
        assert len(image.convert("RGB").getcolors(maxcolors=1 << 16) or ()) > 10


def test_rounds_collapse_to_each_targets_median_run() -> None:
    rows = [
        Row("viewer", "postgresql", "gateway", result(900)),
        Row("viewer", "postgresql", "postgraphile", result(1_000)),
        Row("viewer", "postgresql", "gateway", result(1_200)),
        Row("viewer", "postgresql", "postgraphile", result(700)),
        Row("viewer", "postgresql", "gateway", result(1_100)),
        Row("viewer", "postgresql", "postgraphile", result(1_300)),
        Row("consume", "postgresql", "gateway", result(400)),
    ]
    collapsed = medians(rows)

    by_target = {(r.scenario, r.target): r for r in collapsed}
    assert len(collapsed) == 3
    assert by_target["viewer", "gateway"].result.rps == 1_100
    assert by_target["viewer", "postgraphile"].result.rps == 1_000
    assert by_target["viewer", "gateway"].notes == [
        "median of 3 rounds by req/s: 900, 1,200, 1,100"
    ]
    assert by_target["consume", "gateway"].notes == []
