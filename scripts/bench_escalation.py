"""Escalation figures in one run, side by side (docs/escalation.md):

- the hand-off path's throughput (predict, result, outbox hand-off) with escalation on at
  5% escalated, as a ratio to off (target >= 0.97);
- the escalation round trip, p50 and p99, against a local server;
- on the digits test split, accuracy of the device alone (digits_int8) against the device
  plus escalation (band [--min, --max]) to a stronger model (--big).

Starts its own Mosquitto on a free port (never the machine's own).

    python scripts/bench_escalation.py [--big models/digits_big_float.tflite] [--json]
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edge_agent.config.settings import EscalateSettings, MqttSettings, OutboxSettings  # noqa: E402
from edge_agent.escalation.client import EscalationClient  # noqa: E402
from edge_agent.escalation.server import EscalationServer  # noqa: E402
from edge_agent.link.mqtt import MqttLink  # noqa: E402
from edge_agent.outbox.store import Outbox  # noqa: E402
from edge_agent.outbox.writer import OutboxWriter  # noqa: E402
from edge_agent.payloads import Envelope, ModelRef, ResultPayload  # noqa: E402
from edge_agent.runtime.backend import select_backend  # noqa: E402
from edge_agent.runtime.loader import load_model  # noqa: E402
from edge_agent.runtime.predictor import Predictor  # noqa: E402
from edge_agent.sources.base import Frame  # noqa: E402

MODELS = ROOT / "models"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait(predicate, timeout: float) -> bool:  # type: ignore[no-untyped-def]
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.02)
    return False


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--big", type=Path, default=MODELS / "digits_big_float.tflite")
    ap.add_argument("--min", type=float, default=0.0, help="band's lower end (0.0)")
    ap.add_argument("--max", type=float, default=0.9, help="band's upper end (0.9)")
    ap.add_argument("--frames", type=int, default=20000, help="frames per throughput run")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-escalation-"))
    port = free_port()
    (tmp / "m.conf").write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\n")
    broker = subprocess.Popen(
        ["/usr/sbin/mosquitto", "-c", str(tmp / "m.conf")], stderr=subprocess.DEVNULL
    )
    time.sleep(0.5)
    backend = select_backend("auto")
    device = Predictor(load_model(MODELS / "digits_int8.tflite", backend, (), 1))
    big = Predictor(load_model(args.big, backend, (), 1))
    server = EscalationServer(big, "127.0.0.1", port, client_id="bench-server").start()
    outbox = Outbox(tmp / "outbox.db", OutboxSettings(durability="normal"))
    writer = OutboxWriter(outbox, "edge", "bench")
    link = MqttLink(MqttSettings(enabled=True, port=port), "bench", dict)
    envelope = Envelope("bench")
    client = EscalationClient(link, outbox, writer, writer, "edge", "bench", envelope)
    client.start()
    link.start()
    assert link.connected.wait(5) and server.connected.wait(5)
    data = np.load(MODELS / "data" / "digits_test.npz")
    xs, ys = data["x"], data["y"]
    samples = [device.tensor_sample(x, "bench") for x in xs]
    quant = device.model.input.quant
    frame = Frame(np.zeros((8, 8), np.uint8), time.monotonic(), time.time(), 0)
    ref = ModelRef(name="digits", version="1", sha256="0")

    def result(i: int) -> ResultPayload:
        return ResultPayload.model_construct(
            id=envelope.new_id(),
            seq=envelope.next_seq(),
            ts=time.time(),
            boot_id=envelope.boot_id,
            device="bench",
            pipeline="digits",
            source={"name": "bench", "index": i},
            model=ref,
            delegate="cpu",
            cached=False,
            latency_ms={},
            result=device.predict([samples[i % len(samples)]], [None])[0].result,
        )

    def throughput(settings: EscalateSettings | None) -> float:
        started = time.perf_counter()
        for i in range(args.frames):
            payload = result(i)
            writer.put(payload)
            if settings is not None:
                client.offer(settings, payload, frame, samples[i % len(samples)], quant)
        rate = args.frames / (time.perf_counter() - started)
        writer.flush(30)
        return rate

    audit = EscalateSettings(
        enabled=True,
        min_score=0.0,
        max_score=0.0,
        sample_rate=0.05,
        send="tensor",
        max_per_minute=1_000_000,
        max_bytes_per_hour=10**12,
        queue=10_000,
    )
    rates_off, rates_on = [], []
    for _ in range(3):  # in turns, so drift hits both alike
        rates_off.append(throughput(None))
        before = client.counts.get("audit", 0)
        rates_on.append(throughput(audit))
        escalated_share = (client.counts.get("audit", 0) - before) / args.frames
    wait(lambda: client.snapshot()["in_flight"] == 0 and client._offers.empty(), 60)
    trips = sorted(client.round_trips) or [float("nan")]
    print("client counts:", client.snapshot(), file=sys.stderr)
    p50, p99 = (float(np.percentile(trips, q)) * 1000 for q in (50, 99))

    # Accuracy: every test digit through the device; those in the band escalated.
    band = audit.model_copy(
        update={"min_score": args.min, "max_score": args.max, "sample_rate": 0.0}
    )
    answered_before = client.counts.get("answered", 0)
    device_pred, originals = [], []
    for i in range(len(xs)):
        payload = result(i)
        originals.append(payload.id)
        device_pred.append(int(payload.result["top"][0]["label"]))
        client.offer(band, payload, frame, samples[i], quant)
    escalated = client.counts.get("band", 0)
    wait(lambda: client.counts.get("answered", 0) - answered_before >= escalated, 60)
    writer.flush(30)
    refined = {}
    for (body,) in outbox._db.execute("SELECT payload FROM messages WHERE class='result'"):
        r = json.loads(body)
        if r.get("escalation") == "answered":
            refined[r["refines"]] = int(r["result"]["top"][0]["label"])
    combined = [refined.get(rid, p) for rid, p in zip(originals, device_pred, strict=True)]
    acc_device = float(np.mean(np.array(device_pred) == ys))
    acc_both = float(np.mean(np.array(combined) == ys))
    big_alone = float(
        np.mean(
            [
                int(big.predict([big.tensor_sample(x, "b")], [None])[0].result["top"][0]["label"])
                == y
                for x, y in zip(xs, ys, strict=True)
            ]
        )
    )
    figures = {
        "throughput_off_fps": round(float(np.median(rates_off)), 1),
        "throughput_on_fps": round(float(np.median(rates_on)), 1),
        "throughput_ratio": round(float(np.median(rates_on) / np.median(rates_off)), 3),
        "escalated_share": round(escalated_share, 3),
        "round_trip_ms_p50": round(p50, 2),
        "round_trip_ms_p99": round(p99, 2),
        "round_trips": len(trips),
        "band": [args.min, args.max],
        "escalated_in_test_split": f"{escalated}/{len(xs)}",
        "accuracy_device_only": round(acc_device, 4),
        "accuracy_device_plus_escalation": round(acc_both, 4),
        "accuracy_big_model_alone": round(big_alone, 4),
    }
    client.stop()
    link.stop()
    server.stop()
    writer.close()
    outbox.close()
    broker.terminate()
    broker.wait(5)
    if args.json:
        print(json.dumps(figures))
    else:
        for k, v in figures.items():
            print(f"{k:34} {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
