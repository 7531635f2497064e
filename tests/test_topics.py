"""One module builds and parses every topic the agent and edge-fleet use."""

from __future__ import annotations

import subprocess
import sys

import pytest

from edge_agent.link import topics

EVERY_FORM: list[tuple[topics.Topic, str]] = [
    (topics.Status("edge", "cam-17"), "edge/cam-17/status"),
    (topics.Result("edge", "cam-17", "boxes"), "edge/cam-17/results/boxes"),
    (topics.Event("edge", "cam-17", "update"), "edge/cam-17/events/update"),
    (topics.Telemetry("edge", "cam-17"), "edge/cam-17/telemetry"),
    (topics.Command("edge", "ping", device="cam-17"), "edge/cam-17/cmd/ping"),
    (topics.Command("edge", "ping"), "edge/all/cmd/ping"),
    (topics.Command("edge", "ping", group="lobby"), "edge/group/lobby/cmd/ping"),
    (topics.Reply("edge", "cam-17", "fleet-1a2b"), "edge/cam-17/reply/fleet-1a2b"),
    (topics.TransferGet("edge", "cam-17", "t-9"), "edge/cam-17/transfer/t-9/get"),
    (
        topics.TransferData("edge", "cam-17", "t-9", "model", 12),
        "edge/cam-17/transfer/t-9/data/model/12",
    ),
]


@pytest.mark.parametrize(("value", "text"), EVERY_FORM, ids=[t for _, t in EVERY_FORM])
def test_each_form_builds_its_topic_and_parses_back(value: topics.Topic, text: str) -> None:
    assert value.topic == text
    assert topics.parse(text) == value


@pytest.mark.parametrize(
    "text",
    [
        "edge/cam-17",
        "edge/cam-17/results",
        "edge/cam-17/results/a/b",
        "edge/cam-17/unknown/x",
        "edge/cam-17/transfer/t-9/data/model/x",
        "edge/cam-17/transfer/t-9/data/model/-1",
        "edge/cam-17/transfer/t-9/put",
        "edge//status",
        "edge/+/status",
        "edge/cam-17/results/#",
        "edge/group/lobby/cmd",
    ],
)
def test_what_is_not_ours_parses_to_none(text: str) -> None:
    assert topics.parse(text) is None


def test_a_name_that_is_not_one_level_is_refused_in_one_line() -> None:
    with pytest.raises(ValueError, match=r"^transfer id 'a/b' cannot be one MQTT topic level$"):
        topics.TransferGet("edge", "cam-17", "a/b")
    with pytest.raises(ValueError, match="device 'cam#17'"):
        topics.Status("edge", "cam#17")
    with pytest.raises(ValueError, match="pipeline ''"):
        topics.Result("edge", "cam-17", "")
    with pytest.raises(ValueError, match="a device or a group, not both"):
        topics.Command("edge", "ping", device="cam-17", group="lobby")


def test_filters_for_subscribing() -> None:
    assert topics.command_filters("edge", "cam-17", ["lobby", "door"]) == [
        "edge/cam-17/cmd/+",
        "edge/all/cmd/+",
        "edge/group/lobby/cmd/+",
        "edge/group/door/cmd/+",
    ]
    assert topics.transfer_data_filter("edge", "cam-17") == "edge/cam-17/transfer/+/data/#"
    assert topics.transfer_data_filter("edge", "cam-17", "t-9") == "edge/cam-17/transfer/t-9/data/#"
    assert topics.Status("edge", topics.ANY).topic == "edge/+/status"
    assert topics.Reply("edge", topics.ANY, "r-1").topic == "edge/+/reply/r-1"
    assert topics.result_topic("edge", "cam-17", "boxes") == "edge/cam-17/results/boxes"


def test_it_loads_no_mqtt_or_numpy() -> None:
    """edge-fleet imports it: it must stay plain Python."""
    code = (
        "import sys, edge_agent.link.topics; "
        "print(sorted(m for m in ('paho', 'numpy', 'cv2') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
