"""The cluster's rules without a cluster: how a render node's capacity follows from its engine's timings, which
node a twin goes to, the refusal when none has room, and ``twincast cluster``'s refusals of bad flags (before any
Ray starts). The cluster itself runs in ``tests/test_cluster.py``."""

from __future__ import annotations

from pathlib import Path

import pytest

from stream.cluster import (
    Cluster,
    ClusterFullError,
    NodeOptions,
    NodeState,
    batch_sizes,
    capacity_from_timings,
)
from stream.config import ServeConfig
from stream.server import TwinSource
from twincast.cli import main
from twincast.errors import InputError

TIMINGS = {1: 0.003, 2: 0.006, 4: 0.010, 8: 0.016}  # seconds per call of 1, 2, 4 and 8 frames


def test_batch_sizes_double_up_to_the_largest_batch() -> None:
    assert batch_sizes(8) == [1, 2, 4, 8]
    assert batch_sizes(6) == [1, 2, 4, 6]
    assert batch_sizes(1) == [1]


def test_capacity_is_the_most_sessions_rendered_within_half_a_frame_period() -> None:
    # budget 0.5 / 25 fps = 20 ms: 8 sessions take one call of 8 (16 ms); 9 add a call of 1 (19 ms);
    # 10 add a call of 2 instead (22 ms): too much
    assert capacity_from_timings(TIMINGS, 8) == 9
    # a remainder between timed sizes is interpolated: 5 frames take 11.5 ms, so with a 12 ms budget 5 fit
    assert capacity_from_timings(TIMINGS, 8, headroom=0.012 * 25) == 5
    assert capacity_from_timings({1: 0.05}, 1) == 0  # one frame takes longer than half a period
    assert capacity_from_timings({1: 1e-6}, 1) == 256  # bounded by what a node's server allows


def test_capacity_refuses_timings_outside_the_batch_range() -> None:
    with pytest.raises(InputError, match="batch sizes in 1..8"):
        capacity_from_timings({}, 8)
    with pytest.raises(InputError, match="batch sizes in 1..8"):
        capacity_from_timings({16: 0.01}, 8)


def node(name: str, capacity: int, twins: int, *, alive: bool = True) -> NodeState:
    """A started node's state as the front door keeps it (no actor behind it: only the choice is tested)."""
    return NodeState(name, actor=None, info={"capacity": capacity}, alive=alive,
                     twins={f"{name}-twin-{i}" for i in range(twins)})


def cluster_of(*nodes: NodeState) -> Cluster:
    options = NodeOptions(config=ServeConfig(), sources=(TwinSource("tiny", Path("pack"), Path("twin.onnx")),),
                          operator_token="cluster-token")
    cluster = Cluster(options, launch=lambda _: None)
    cluster.nodes = {n.name: n for n in nodes}
    return cluster


def test_a_twin_goes_to_the_node_with_the_most_free_capacity() -> None:
    assert cluster_of(node("a", 3, 1), node("b", 5, 2)).nodes["b"].free == 3
    assert cluster_of(node("a", 3, 1), node("b", 5, 2))._choose().name == "b"
    assert cluster_of(node("a", 4, 2), node("b", 4, 2))._choose().name == "a"  # the first among equals
    assert cluster_of(node("a", 9, 0, alive=False), node("b", 2, 1))._choose().name == "b"  # never a dead one


def test_a_full_cluster_refuses_naming_every_node_s_capacity() -> None:
    with pytest.raises(ClusterFullError) as refused:
        cluster_of(node("a", 2, 2), node("b", 2, 2), node("c", 3, 0, alive=False))._choose()
    assert "every render node is at its capacity" in str(refused.value)
    assert "a 2/2, b 2/2, c 0/3 (dead)" in str(refused.value)
    assert refused.value.http_status == 503 and refused.value.limit == "node_capacity"
    assert [c["node"] for c in refused.value.capacities] == ["a", "b", "c"]
    with pytest.raises(ClusterFullError, match="no live render node"):
        cluster_of(node("a", 2, 0, alive=False))._choose()


def test_the_cluster_command_refuses_bad_flags_before_starting_ray(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    model = tmp_path / "twin.onnx"
    model.write_bytes(b"")
    twin = f"tiny={tmp_path},{model}"
    assert main(["cluster", "--twin", twin]) == 2
    assert "give --workers N" in capsys.readouterr().err
    assert main(["cluster", "--workers", "2"]) == 2
    assert "at least one --twin" in capsys.readouterr().err
    assert main(["cluster", "--workers", "2", "--capacity", "0", "--twin", twin]) == 2
    assert "--capacity 0 must be in 1..256" in capsys.readouterr().err
    assert main(["cluster", "--workers", "2", "--twin", f"tiny={tmp_path / 'nowhere'},{model}"]) == 2
    assert "the pack" in capsys.readouterr().err
