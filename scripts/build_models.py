"""Build the example and test models under models/, each with a manifest.

Needs TensorFlow and scikit-learn (pip install tensorflow scikit-learn); the
agent never needs them: it only reads the .tflite files and manifests.

    python scripts/build_models.py [--out models]           # build, then check
    python scripts/build_models.py --only digits_slow       # build one model, then check
    python scripts/build_models.py --check [--out models]   # check only

--check imports no TensorFlow: run it in the agent's environment (numpy,
opencv-python-headless, ai-edge-litert) to verify every model under LiteRT.
Everything is seeded, so a rebuild gives the same files.
"""

import argparse
import hashlib
import json
import os
import time
from pathlib import Path

import numpy as np

SEED = 0
DIGITS_SAMPLES = (0, 3, 7)  # labels of the sample PNGs
DIGITS_INPUT = {"kind": "image", "color": "GRAY", "resize": "stretch", "range": [0.0, 16.0]}
DIGITS_LABELS = [str(i) for i in range(10)]
SCENE_W, SCENE_H = 160, 120
# Source-pixel rectangles (x0, y0, x1, y1). A centred letterbox to 96x96
# scales by 0.6 and adds 12 px bars top and bottom, so each rectangle covers
# whole 24x24 grid cells: red (row 1, cols 0-1), green (rows 1-2, col 3).
SCENE_RED = (0, 20, 80, 60)
SCENE_GREEN = (120, 20, 160, 100)


def write_manifest(
    out,
    tflite,
    name,
    task,
    description,
    input_,
    labels=None,
    decode=None,
    cpu_twin=None,
    version="1.0.0",
):
    path = out / tflite
    manifest = {
        "schema_version": 1,
        "name": name,
        "version": version,
        "file": tflite,
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "task": task,
        "description": description,
        "input": input_,
        "labels": labels,
        "cpu_twin": cpu_twin,
        "decode": decode,
    }
    (out / (path.stem + ".json")).write_text(json.dumps(manifest, indent=2) + "\n")


# --------------------------------------------------------------------- build


def convert(tf, fn, spec, rep, out_path, int8=True, output_type=None):
    """Convert `fn` for input `spec`; full-integer quantized on `rep` when int8."""
    module = tf.Module()  # a tracked owner keeps the serving signature
    module.fn = tf.function(fn, input_signature=[spec])
    conv = tf.lite.TFLiteConverter.from_concrete_functions(
        [module.fn.get_concrete_function()], module
    )
    if int8:
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.representative_dataset = lambda: ([x[None].astype(np.float32)] for x in rep)
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        conv.inference_input_type = tf.int8
        conv.inference_output_type = output_type or tf.int8
    out_path.write_bytes(conv.convert())
    print(f"wrote {out_path} ({out_path.stat().st_size} bytes)")


def build_mobilenet(tf, keras, out):
    # Random weights: the model exists for realistic timing, not for accuracy.
    keras.utils.set_random_seed(SEED)
    net = keras.applications.MobileNetV2(weights=None, input_shape=(224, 224, 3), classes=1000)
    model = keras.Sequential([keras.Input((224, 224, 3)), keras.layers.Rescaling(2.0, -1.0), net])
    rep = np.random.default_rng(SEED).random((8, 224, 224, 3), dtype=np.float32)
    rep[:, 0, 0, :], rep[:, -1, -1, :] = 0.0, 1.0  # exactly [0, 1]: scale 1/255, zp -128
    # None batch dimension, so the runtime can batch frames.
    convert(
        tf,
        lambda x: model(x, training=False),
        tf.TensorSpec([None, 224, 224, 3]),
        rep,
        out / "mobilenet_v2_int8.tflite",
    )
    (out / "mobilenet_v2.labels.txt").write_text("".join(f"class_{i}\n" for i in range(1000)))
    write_manifest(
        out,
        "mobilenet_v2_int8.tflite",
        "mobilenet_v2",
        "classification",
        "MobileNetV2 224x224 ImageNet-shaped classifier, random weights, for timing.",
        {"kind": "image", "color": "RGB", "resize": "stretch", "range": [0.0, 1.0]},
        "mobilenet_v2.labels.txt",
        {"top_k": 5},
    )


def digits_split():
    """(x_tr, x_te, y_tr, y_te) of scikit-learn's 8x8 digits; x holds raw values 0..16."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    return train_test_split(
        d.images.astype(np.float32)[..., None],
        d.target.astype(np.int64),
        test_size=0.25,
        stratify=d.target,
        random_state=SEED,
    )


def build_digits(tf, keras, out):
    keras.utils.set_random_seed(SEED)
    x_tr, x_te, y_tr, y_te = digits_split()
    L = keras.layers
    model = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            L.Rescaling(1 / 16),
            L.Conv2D(16, 3, padding="same", activation="relu"),
            L.Conv2D(32, 3, activation="relu"),
            L.Flatten(),
            L.Dense(64, activation="relu"),
            L.Dense(10, activation="softmax"),
        ]
    )
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x_tr, y_tr, epochs=40, batch_size=32, verbose=0)
    print(f"digits keras float accuracy: {model.evaluate(x_te, y_te, verbose=0)[1]:.4f}")
    np.savez_compressed(out / "data" / "digits_test.npz", x=x_te, y=y_te)

    fn = lambda x: model(x, training=False)  # noqa: E731
    convert(tf, fn, tf.TensorSpec([None, 8, 8, 1]), None, out / "digits_float.tflite", int8=False)
    # Batch fixed at 1 so the runtime's one-by-one path is exercised.
    convert(tf, fn, tf.TensorSpec([1, 8, 8, 1]), x_tr, out / "digits_int8.tflite")
    for f, name, kind in (
        ("digits_float.tflite", "digits_float", "float32"),
        ("digits_int8.tflite", "digits", "int8"),
    ):
        write_manifest(
            out,
            f,
            name,
            "classification",
            f"Handwritten digit classifier (scikit-learn 8x8 digits), {kind}.",
            DIGITS_INPUT,
            DIGITS_LABELS,
            {"top_k": 3},
        )

    pred = model.predict(x_te, verbose=0).argmax(1)
    for label in DIGITS_SAMPLES:
        i = np.flatnonzero((y_te == label) & (pred == label))[0]
        img = np.round(x_te[i] * 255 / 16).astype(np.uint8)
        img = np.repeat(np.repeat(img, 8, 0), 8, 1)  # 64x64, nearest neighbour
        (out / "samples" / f"digit_{label}.png").write_bytes(tf.io.encode_png(img).numpy())


def build_digits_slow(tf, keras, out):
    """digits_int8's task, input and head behind three 256-filter 3x3 convs at 8x8.

    About 80 M multiply-adds per invoke against digits_int8's 0.25 M: a model
    update that regresses latency, for the rollback tests.
    """
    keras.utils.set_random_seed(SEED)
    x_tr, x_te, y_tr, y_te = digits_split()
    test = out / "data" / "digits_test.npz"
    if test.exists():  # the held-out split digits_int8 is checked on
        with np.load(test) as shipped:
            assert np.array_equal(shipped["x"], x_te), test
            assert np.array_equal(shipped["y"], y_te), test
    L = keras.layers
    model = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            L.Rescaling(1 / 16),
            L.Conv2D(16, 3, padding="same", activation="relu"),
            L.Conv2D(256, 3, padding="same", activation="relu"),
            L.Conv2D(256, 3, padding="same", activation="relu"),
            L.Conv2D(256, 3, padding="same", activation="relu"),
            L.Conv2D(32, 3, activation="relu"),
            L.Flatten(),
            L.Dense(64, activation="relu"),
            L.Dense(10, activation="softmax"),
        ]
    )
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x_tr, y_tr, epochs=40, batch_size=32, verbose=0)
    print(f"digits_slow keras float accuracy: {model.evaluate(x_te, y_te, verbose=0)[1]:.4f}")
    path = out / "digits_slow_int8.tflite"
    convert(tf, lambda x: model(x, training=False), tf.TensorSpec([1, 8, 8, 1]), x_tr, path)
    write_manifest(
        out,
        path.name,
        "digits",
        "classification",
        "Handwritten digit classifier (scikit-learn 8x8 digits), int8; a deliberately heavy"
        " variant (three 256-filter convs, far slower per invoke) for model-update tests.",
        DIGITS_INPUT,
        DIGITS_LABELS,
        {"top_k": 3},
        version="1.0.0-slow",
    )


def build_digits_big(tf, keras, out):
    """A stronger digits model for the escalation server (docs/escalation.md): wider convs,
    dropout, shifted training copies, more epochs; float32, as a server runs it. Checked on
    the same held-out split as digits_int8."""
    keras.utils.set_random_seed(SEED)
    x_tr, x_te, y_tr, y_te = digits_split()
    test = out / "data" / "digits_test.npz"
    if test.exists():
        with np.load(test) as shipped:
            assert np.array_equal(shipped["x"], x_te), test
    shifted = [np.roll(x_tr, (dy, dx), axis=(1, 2)) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
    x_aug, y_aug = np.concatenate(shifted), np.tile(y_tr, len(shifted))
    L = keras.layers
    model = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            L.Rescaling(1 / 16),
            L.Conv2D(64, 3, padding="same", activation="relu"),
            L.Conv2D(64, 3, padding="same", activation="relu"),
            L.Conv2D(128, 3, activation="relu"),
            L.Flatten(),
            L.Dropout(0.3),
            L.Dense(256, activation="relu"),
            L.Dropout(0.3),
            L.Dense(10, activation="softmax"),
        ]
    )
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x_aug, y_aug, epochs=30, batch_size=64, verbose=0)
    print(f"digits_big keras float accuracy: {model.evaluate(x_te, y_te, verbose=0)[1]:.4f}")
    path = out / "digits_big_float.tflite"
    fn = lambda x: model(x, training=False)  # noqa: E731
    convert(tf, fn, tf.TensorSpec([1, 8, 8, 1]), None, path, int8=False)
    write_manifest(
        out,
        path.name,
        "digits_big",
        "classification",
        "Handwritten digit classifier (scikit-learn 8x8 digits), float32; larger and trained"
        " longer on shifted copies: the escalation server's stronger model.",
        DIGITS_INPUT,
        DIGITS_LABELS,
        {"top_k": 3},
    )


def build_edgetpu(out):
    """Make the first op of digits_int8 the Edge TPU custom op.

    LiteRT cannot resolve it without libedgetpu, just like a real
    *_edgetpu.tflite file; the manifest names the CPU twin to fall back on.
    """
    from tensorflow.lite.python import schema_py_generated as fb
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model(str(out / "digits_int8.tflite"))
    code = fb.OperatorCodeT()
    code.builtinCode = code.deprecatedBuiltinCode = fb.BuiltinOperator.CUSTOM
    code.customCode, code.version = "edgetpu-custom-op", 1
    model.operatorCodes.append(code)
    op = model.subgraphs[0].operators[0]
    op.opcodeIndex = len(model.operatorCodes) - 1
    op.builtinOptionsType, op.builtinOptions, op.customOptions = fb.BuiltinOptions.NONE, None, None
    flatbuffer_utils.write_model(model, str(out / "digits_int8_edgetpu.tflite"))
    write_manifest(
        out,
        "digits_int8_edgetpu.tflite",
        "digits_edgetpu",
        "classification",
        "Digits classifier compiled for the Edge TPU; needs libedgetpu.",
        DIGITS_INPUT,
        DIGITS_LABELS,
        {"top_k": 3},
        cpu_twin="digits_int8.tflite",
    )


def sensor_windows(rng, n, kind="normal"):
    """3-axis sinusoids (1.5-4 cycles per window) plus noise, and anomalies on top."""
    t = np.arange(64)[None, :, None]
    freq, amp = rng.uniform(1.5, 4.0, (n, 1, 3)) / 64, rng.uniform(0.5, 1.0, (n, 1, 3))
    phase = rng.uniform(0, 2 * np.pi, (n, 1, 3))
    w = amp * np.sin(2 * np.pi * freq * t + phase) + rng.normal(0, 0.05, (n, 64, 3))
    for i in range(n):
        s = rng.integers(8, 32)
        if kind == "spike":  # a few large single-sample spikes
            for _ in range(3):
                w[i, rng.integers(64), rng.integers(3)] += rng.choice([-1, 1]) * rng.uniform(3, 4)
        elif kind == "flatline":  # stuck at one value for half the window or more
            w[i, s:] = w[i, s - 1]
        elif kind == "burst":  # strong noise on all axes
            w[i, s : s + 24] += rng.normal(0, 0.6, (24, 3))
    return w.astype(np.float32)


def anomalous_windows(rng, n):
    kinds = ("spike", "flatline", "burst")
    return np.concatenate(
        [sensor_windows(rng, n // 3 + (k < n % 3), kind) for k, kind in enumerate(kinds)]
    )


def build_sensor(tf, keras, out):
    keras.utils.set_random_seed(SEED)
    rng = np.random.default_rng(SEED)
    train = sensor_windows(rng, 20000)
    L = keras.layers
    ae = keras.Sequential(
        [
            keras.Input((64, 3)),
            L.Flatten(),
            L.Dense(128, activation="relu"),
            L.Dense(16),
            L.Dense(128, activation="relu"),
            L.Dense(192),
            L.Reshape((64, 3)),
        ]
    )
    ae.compile("adam", "mse")
    ae.fit(train, train, epochs=40, batch_size=64, verbose=0)

    def score(x):  # the model's output is the anomaly score itself
        err = tf.math.squared_difference(x, ae(x, training=False))
        return tf.reduce_mean(err, axis=[1, 2])[:, None]

    # Calibrate on anomalies too, so their scores do not saturate the int8 output.
    rep = np.concatenate([train[:400], anomalous_windows(rng, 100)])
    path = out / "sensor_anomaly_int8.tflite"
    convert(tf, score, tf.TensorSpec([1, 64, 3]), rep, path)

    # Threshold: the 99.9th percentile of int8 scores on fresh normal windows
    # (about 1 false alarm in 1000), half a quantization step up so that it
    # never ties an output level.
    scores, (s, _) = run_int8(interpreter_class(), path, sensor_windows(rng, 5000))
    threshold = round(float((np.round(np.percentile(scores, 99.9) / s) + 0.5) * s), 6)
    print(
        f"sensor: normal scores p50={np.median(scores):.4f} p99.9="
        f"{np.percentile(scores, 99.9):.4f} max={scores.max():.4f}; threshold {threshold}"
    )
    np.savez_compressed(
        out / "data" / "sensor_windows.npz",
        normal=sensor_windows(rng, 20),
        anomalous=anomalous_windows(rng, 20),
    )
    write_manifest(
        out,
        path.name,
        "sensor_anomaly",
        "anomaly",
        "Autoencoder over 64-sample 3-axis windows; outputs the reconstruction MSE.",
        {"kind": "sensor", "window": 64, "channels": 3},
        None,
        {"threshold": threshold},
    )


def build_detector(tf, out):
    """Fixed detector over a 4x4 grid of 24x24 cells of a 96x96 RGB image.

    Score: sigmoid(12 * (v - 0.5)), v being the cell mean of its brightest
    channel (HSV value), so saturated colours count as bright. Class: the
    dominant channel (0 red, 1 green, 2 blue). Boxes: the constant cell
    bounds [ymin, xmin, ymax, xmax] in [0, 1]. Count: 16.
    """
    edges = np.arange(4, dtype=np.float32) / 4
    ys, xs = np.meshgrid(edges, edges, indexing="ij")
    cells = np.stack([ys, xs, ys + 0.25, xs + 0.25], -1).reshape(1, 16, 4)

    def detect(x):
        cell = tf.nn.avg_pool2d(x, 24, 24, "VALID")  # [n, 4, 4, 3]
        n = tf.shape(x)[0]
        score = tf.reshape(tf.sigmoid(12.0 * (tf.reduce_max(cell, -1) - 0.5)), [n, 16])
        # Cast last: the class ids then stay out of int8 and come out exact.
        cls = tf.cast(tf.reshape(tf.argmax(cell, -1), [n, 16]), tf.float32)
        return {
            "boxes": tf.tile(tf.constant(cells), [n, 1, 1]),
            "classes": cls,
            "scores": score,
            "count": tf.fill([n], 16.0),
        }

    # Calibrate on images of flat cells, half of them saturated (0 or 1 per
    # channel), so every intermediate range spans black to white cells.
    rep = np.random.default_rng(SEED).random((32, 4, 4, 3), dtype=np.float32)
    rep[:16] = np.round(rep[:16])
    rep = np.repeat(np.repeat(rep, 24, 1), 24, 2)
    # int8 input, float32 outputs (as an SSD post-process gives): class ids
    # and the count stay exact.
    tmp = out / "detector.tmp.tflite"
    convert(tf, detect, tf.TensorSpec([1, 96, 96, 3]), rep, tmp, output_type=tf.float32)

    # Real exports disagree on output order and names (TF1 SSD post-process vs
    # TF2 signatures); write one of each so the runtime has to match outputs
    # by shape and meaning. Rows: (output, tensor name, signature key).
    ssd = "TFLite_Detection_PostProcess"
    layouts = {
        "detector_int8.tflite": [
            ("boxes", ssd, "detection_boxes"),
            ("classes", ssd + ":1", "detection_classes"),
            ("scores", ssd + ":2", "detection_scores"),
            ("count", ssd + ":3", "num_detections"),
        ],
        "detector_int8_reordered.tflite": [
            (key, f"StatefulPartitionedCall:{i}", f"output_{i}")
            for i, key in enumerate(("scores", "boxes", "count", "classes"))
        ],
    }
    names = ("detector", "detector_reordered")
    image = {"kind": "image", "color": "RGB", "resize": "letterbox", "range": [0.0, 1.0]}
    decode = {"score_threshold": 0.5, "max_detections": 20}
    for (fname, layout), name in zip(layouts.items(), names, strict=True):
        reorder_outputs(tmp, out / fname, layout)
        write_manifest(
            out,
            fname,
            name,
            "detection",
            "Toy 4x4-grid detector: bright cells, classed by dominant colour.",
            image,
            ["red", "green", "blue"],
            decode,
        )
    tmp.unlink()

    scene = np.zeros((SCENE_H, SCENE_W, 3), np.uint8)
    for (x0, y0, x1, y1), c in ((SCENE_RED, 0), (SCENE_GREEN, 1)):
        scene[y0:y1, x0:x1, c] = 255
    (out / "samples" / "detector_scene.png").write_bytes(tf.io.encode_png(scene).numpy())


def reorder_outputs(src, dst, layout):
    """Copy `src` with its outputs in `layout` order, renamed as it says."""
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model(str(src))
    sig, graph = model.signatureDefs[0], model.subgraphs[0]
    index = {m.name.decode(): m.tensorIndex for m in sig.outputs}
    graph.outputs = np.array([index[key] for key, _, _ in layout], np.int32)
    maps = []
    for key, tensor_name, sig_key in layout:
        graph.tensors[index[key]].name = tensor_name
        m = type(sig.outputs[0])()
        m.name, m.tensorIndex = sig_key, index[key]
        maps.append(m)
    sig.outputs = maps
    flatbuffer_utils.write_model(model, str(dst))


def build_xnnpack_refusal(tf, out):
    """A valid graph XNNPACK refuses at allocate_tensors() under LiteRT: a FULLY_CONNECTED
    with a rank-7 output. The built-in kernels run it: y = dot(x.ravel(), [1..6])."""

    def fn(x):
        v = tf.reshape(x, (1, 1, 1, 6))
        w = tf.reshape(tf.constant(np.arange(1, 7, dtype=np.float32)), (6, 1, 1, 1))
        return tf.expand_dims(tf.tensordot(v, w, axes=1), axis=-1)

    path = out / "xnnpack_refusal_f32.tflite"
    convert(tf, fn, tf.TensorSpec([1, 3, 2], tf.float32), None, path, int8=False)
    write_manifest(
        out,
        path.name,
        "xnnpack_refusal",
        "regression",
        "A valid graph XNNPACK refuses (rank-7 FULLY_CONNECTED); runs on built-in kernels.",
        {"kind": "tensor"},
    )


SENSOR_CLASSES = ("normal", "spike", "flatline", "burst")


def build_sensor_classifier(tf, keras, out):
    """[1,64,3] int8 -> [1,4]: which of SENSOR_CLASSES a window is, trained on the same
    synthetic windows as the anomaly model. Its held-out windows go to data/ for tests."""
    keras.utils.set_random_seed(SEED)
    rng = np.random.default_rng(SEED + 1)

    def windows(n):
        xs = [sensor_windows(rng, n, kind) for kind in SENSOR_CLASSES]
        ys = np.repeat(np.arange(len(SENSOR_CLASSES)), n)
        return np.concatenate(xs), ys

    train_x, train_y = windows(3000)
    test_x, test_y = windows(50)
    L = keras.layers
    net = keras.Sequential(
        [
            keras.Input((64, 3)),
            L.Conv1D(16, 5, activation="relu"),
            L.MaxPooling1D(2),
            L.Conv1D(16, 5, activation="relu"),
            L.GlobalMaxPooling1D(),
            L.Dense(len(SENSOR_CLASSES), activation="softmax"),
        ]
    )
    net.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    net.fit(train_x, train_y, epochs=8, batch_size=128, verbose=0, shuffle=True)
    accuracy = net.evaluate(test_x, test_y, verbose=0)[1]
    print(f"sensor classifier (keras): held-out accuracy {accuracy:.3f}")
    path = out / "sensor_classifier_int8.tflite"
    # Calibrated on every kind of window, spikes included, so none saturates.
    rep = train_x[rng.permutation(len(train_x))[:400]]
    convert(tf, lambda x: net(x, training=False), tf.TensorSpec([1, 64, 3]), rep, path)
    np.savez_compressed(out / "data" / "sensor_classes.npz", windows=test_x, labels=test_y)
    write_manifest(
        out,
        path.name,
        "sensor_classifier",
        "classification",
        "Which kind of 64-sample 3-axis window: normal, spike, flatline or burst.",
        {"kind": "sensor", "window": 64, "channels": 3},
        list(SENSOR_CLASSES),
        {"top_k": 2},
    )


# Post-processed SSD: TFLite's own TFLite_Detection_PostProcess custom op, made the way the
# TF2 Object Detection API export makes it (a function marked experimental_implements).
SSD_GRID, SSD_SIZE = 4, 96
SSD_POSTPROCESS = {
    "max_detections": ("i", 10),
    "max_classes_per_detection": ("i", 1),
    "use_regular_nms": ("b", "false"),
    "nms_score_threshold": ("f", 0.3),
    "nms_iou_threshold": ("f", 0.5),
    "y_scale": ("f", 10.0),
    "x_scale": ("f", 10.0),
    "h_scale": ("f", 5.0),
    "w_scale": ("f", 5.0),
    "num_classes": ("i", 3),
}


def build_ssd_postprocess(tf, out):
    """A 4x4-grid detector (cells scored by colour, as `detector`) whose boxes, classes,
    scores and count come from a real TFLite_Detection_PostProcess op. uint8 input, two
    output orders: TF 2.x's (count first) and the TF1 export's (boxes first)."""
    attrs = " ".join(
        f'attr {{ key: "{k}" value {{ {t}: {v} }} }}' for k, (t, v) in SSD_POSTPROCESS.items()
    )
    centres = (np.arange(SSD_GRID, dtype=np.float32) + 0.5) / SSD_GRID
    yc, xc = np.meshgrid(centres, centres, indexing="ij")
    side = np.full(SSD_GRID * SSD_GRID, 1 / SSD_GRID, np.float32)
    anchors = np.stack([yc.ravel(), xc.ravel(), side, side], -1)  # yc, xc, h, w

    @tf.function(experimental_implements='name: "TFLite_Detection_PostProcess" ' + attrs)
    def postprocess(box_encodings, class_predictions, anchors):
        # The converter replaces this call with the op; the body is never run.
        zero = tf.constant(0.0)
        return zero, zero, zero, zero

    class Ssd(tf.Module):
        @tf.function(
            input_signature=[tf.TensorSpec([1, SSD_SIZE, SSD_SIZE, 3], tf.float32, name="image")]
        )
        def serve(self, x):
            cells = SSD_GRID * SSD_GRID
            cell = tf.nn.avg_pool2d(x, SSD_SIZE // SSD_GRID, SSD_SIZE // SSD_GRID, "VALID")
            logits = tf.reshape(12.0 * (cell - 0.5), [1, cells, 3])
            background = tf.zeros([1, cells, 1])
            scores = tf.sigmoid(tf.concat([background, logits], -1))
            encodings = tf.zeros([1, cells, 4]) + 0.0 * tf.reduce_mean(x)  # box = anchor
            b, c, s, n = postprocess(encodings, scores, tf.constant(anchors))
            return {
                "detection_boxes": b,
                "detection_classes": c,
                "detection_scores": s,
                "num_detections": n,
            }

    module = Ssd()
    conv = tf.lite.TFLiteConverter.from_concrete_functions(
        [module.serve.get_concrete_function()], module
    )
    conv.allow_custom_ops = True
    rng = np.random.default_rng(SEED)

    def rep():
        for _ in range(32):
            v = np.round(rng.random((1, SSD_GRID, SSD_GRID, 3), dtype=np.float32))
            step = SSD_SIZE // SSD_GRID
            yield [np.repeat(np.repeat(v, step, 1), step, 2)]

    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = rep
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    conv.inference_input_type = tf.uint8
    path = out / "ssd_postprocess_uint8.tflite"
    path.write_bytes(conv.convert())
    reordered = "ssd_postprocess_uint8_reordered.tflite"
    reorder_outputs(
        path,
        out / reordered,
        [
            (key, f"TFLite_Detection_PostProcess{suffix}", key)
            for key, suffix in (
                ("detection_boxes", ""),
                ("detection_classes", ":1"),
                ("detection_scores", ":2"),
                ("num_detections", ":3"),
            )
        ],
    )
    image = {"kind": "image", "color": "RGB", "resize": "letterbox", "range": [0.0, 1.0]}
    for fname, name in ((path.name, "ssd_postprocess"), (reordered, "ssd_postprocess_reordered")):
        write_manifest(
            out,
            fname,
            name,
            "detection",
            "Toy 4x4-grid detector through a real TFLite_Detection_PostProcess op.",
            image,
            ["red", "green", "blue"],
            {"score_threshold": 0.5, "max_detections": 10},
        )


YOLO_CLASSES = 80
YOLO_STRIDES = (8, 16, 32)
YOLO_COLOURS = ["red", "green", "blue"]  # classes 0..2; the other 77 never score


def yolo_head(tf, x, size, version):
    """YOLO-shaped head over colour: every grid cell of every stride is a candidate box four
    cells wide at its centre, scored per class by how red/green/blue the cell is.
    v8: [1, 4 + 80, N], boxes normalised (as Ultralytics' TFLite export gives them);
    v5: [1, 3N, 5 + 80], boxes in input pixels, objectness = best colour score."""
    levels = []
    for stride in YOLO_STRIDES:
        g = size // stride
        cell = tf.nn.avg_pool2d(x, stride, stride, "VALID")
        c = (np.arange(g, dtype=np.float32) + 0.5) / g
        yy, xx = np.meshgrid(c, c, indexing="ij")
        wh = np.full(g * g, 4.0 / g, np.float32)
        box = np.stack([xx.ravel(), yy.ravel(), wh, wh], 0)[None]  # [1, 4, g*g]
        colour = tf.sigmoid(12.0 * (tf.reshape(cell, [1, g * g, 3]) - 0.5))
        # Zero rows that depend on the input: broadcast at run time, not stored.
        rest = tf.tile(colour[:, :, :1] * 0.0, [1, 1, YOLO_CLASSES - 3])
        scores = tf.concat([colour, rest], -1)  # [1, g*g, 80]
        if version == "v8":
            levels.append(tf.concat([tf.constant(box), tf.transpose(scores, [0, 2, 1])], 1))
        else:
            pixels = tf.constant(np.transpose(box[0]) * size)  # [g*g, 4]
            objectness = tf.reduce_max(colour, -1, keepdims=True)
            row = tf.concat([pixels[None] + 0.0 * objectness, objectness, scores], -1)
            levels.append(tf.tile(row, [1, 3, 1]))  # three anchors per cell
    return tf.concat(levels, 2 if version == "v8" else 1)


# Convolutions (stride, channels, repeats) with YOLOv8n's compute at 640 (about 8 GFLOPs),
# for the benchmark: its invoke time stands in for a real YOLOv8n's, beside which the
# decoder is measured. Each stage repeats one kernel, so the file stays small.
YOLOV8N_COMPUTE = ((2, 16, 1), (2, 32, 7), (2, 64, 7), (2, 64, 4), (2, 64, 4))


def yolov8n_compute(tf, x):
    """A scalar that depends on ~8 GFLOPs of convolutions over `x` (random weights)."""
    rng = np.random.default_rng(SEED)
    channels = 3
    for stride, width, repeats in YOLOV8N_COMPUTE:
        down = rng.normal(0, 0.1, (3, 3, channels, width)).astype(np.float32)
        x = tf.nn.relu(tf.nn.conv2d(x, tf.constant(down), stride, "SAME"))
        same = tf.constant(rng.normal(0, 0.1, (3, 3, width, width)).astype(np.float32))
        for _ in range(repeats - 1):
            x = tf.nn.relu(tf.nn.conv2d(x, same, 1, "SAME"))
        channels = width
    return tf.reduce_mean(x)


def build_yolo(tf, out):
    """YOLO-shaped heads: v8 int8 at 320 (2,100 candidates), v5 float at 320 (6,300), and
    for the decoder benchmark v8 float at 640 (8,400 x 80) behind YOLOv8n's compute."""
    rng = np.random.default_rng(SEED)
    builds = (
        ("yolov8_toy_int8.tflite", "yolov8_toy", 320, "v8", True),
        ("yolov5_toy_f32.tflite", "yolov5_toy", 320, "v5", False),
        ("yolov8_bench_640_f32.tflite", "yolov8_bench_640", 640, "v8", False),
    )

    def model(x, size, version):
        head = yolo_head(tf, x, size, version)
        if size == 640:  # the benchmark's: compute that changes nothing in the output
            # relu(-|c|) is 0 for every finite c, and no converter pass folds it away.
            head = head + tf.nn.relu(-tf.abs(yolov8n_compute(tf, x)))
        return head

    for fname, name, size, version, int8 in builds:
        rep = np.round(rng.random((16, 4, 4, 3), dtype=np.float32))
        rep = np.repeat(np.repeat(rep, size // 4, 1), size // 4, 2)
        convert(
            tf,
            lambda x, size=size, version=version: model(x, size, version),
            tf.TensorSpec([1, size, size, 3], tf.float32),
            rep,
            out / fname,
            int8=int8,
        )
        write_manifest(
            out,
            fname,
            name,
            "yolo",
            f"YOLO{version}-shaped toy head ({size}x{size}): boxes over red, green and blue "
            "regions, 80 classes of which 3 ever score.",
            {"kind": "image", "color": "RGB", "resize": "letterbox", "range": [0.0, 1.0]},
            YOLO_COLOURS + [f"class_{i}" for i in range(3, YOLO_CLASSES)],
            {"version": version},
        )


BUILDS = (  # in build order: edgetpu patches digits' digits_int8.tflite
    "mobilenet",
    "digits",
    "digits_slow",
    "digits_big",
    "edgetpu",
    "sensor",
    "detector",
    "xnnpack_refusal",
    "ssd_postprocess",
    "yolo",
    "sensor_classifier",
)


def build(out, only=None):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    import tensorflow as tf

    tf.config.experimental.enable_op_determinism()
    for d in (out / "data", out / "samples"):
        d.mkdir(parents=True, exist_ok=True)
    steps = {
        "mobilenet": lambda: build_mobilenet(tf, keras, out),
        "digits": lambda: build_digits(tf, keras, out),
        "digits_slow": lambda: build_digits_slow(tf, keras, out),
        "digits_big": lambda: build_digits_big(tf, keras, out),
        "edgetpu": lambda: build_edgetpu(out),
        "sensor": lambda: build_sensor(tf, keras, out),
        "detector": lambda: build_detector(tf, out),
        "xnnpack_refusal": lambda: build_xnnpack_refusal(tf, out),
        "ssd_postprocess": lambda: build_ssd_postprocess(tf, out),
        "yolo": lambda: build_yolo(tf, out),
        "sensor_classifier": lambda: build_sensor_classifier(tf, keras, out),
    }
    for name in BUILDS:
        if only is None or name in only:
            steps[name]()


# --------------------------------------------------------------------- check


def interpreter_class():
    try:
        from ai_edge_litert.interpreter import Interpreter

        return Interpreter
    except ImportError:  # building in an environment without LiteRT
        import tensorflow as tf

        print("note: ai_edge_litert not installed; checking with tf.lite.Interpreter")
        return tf.lite.Interpreter


def qparams(detail):
    q = detail["quantization_parameters"]
    return (float(q["scales"][0]), int(q["zero_points"][0])) if len(q["scales"]) else None


def run(it, x):
    """Invoke on float `x`, quantized as the input needs; float outputs in order."""
    d = it.get_input_details()[0]
    if qparams(d):
        s, zp = qparams(d)
        x = np.clip(np.round(x / s) + zp, np.iinfo(d["dtype"]).min, np.iinfo(d["dtype"]).max)
    it.set_tensor(d["index"], np.asarray(x, d["dtype"]))
    it.invoke()
    outs = []
    for o in it.get_output_details():
        y, q = it.get_tensor(o["index"]).astype(np.float32), qparams(o)
        outs.append((y - q[1]) * q[0] if q else y)
    return outs


def run_int8(cls, path, xs):
    """First output value per window (batch 1), and that output's (scale, zero point)."""
    it = cls(model_path=str(path))
    it.allocate_tensors()
    return (
        np.array([run(it, x[None])[0].ravel()[0] for x in xs]),
        qparams(it.get_output_details()[0]),
    )


def check_mobilenet(cls, out):
    path = out / "mobilenet_v2_int8.tflite"
    it = cls(model_path=str(path))
    d = it.get_input_details()[0]
    (s, zp), sig = qparams(d), d["shape_signature"].tolist()
    print(f"mobilenet input scale={s!r} (1/255={1 / 255!r}) zp={zp} shape_signature={sig}")
    assert abs(s - 1 / 255) < 1e-9 and zp == -128 and sig[0] == -1
    it.resize_tensor_input(d["index"], [2, 224, 224, 3])
    it.allocate_tensors()
    assert run(it, np.random.default_rng(0).random((2, 224, 224, 3)))[0].shape == (2, 1000)
    for threads in (1, 2):
        it = cls(model_path=str(path), num_threads=threads)
        it.allocate_tensors()
        run(it, np.zeros((1, 224, 224, 3)))
        times = []
        for _ in range(100):
            t0 = time.perf_counter()
            it.invoke()
            times.append((time.perf_counter() - t0) * 1e3)
        print(
            f"mobilenet_v2_int8 invoke, {threads} thread(s): median {np.median(times):.2f} ms,"
            f" min {min(times):.2f} ms"
        )


def median_invoke_ms(cls, path, runs=200):
    it = cls(model_path=str(path), num_threads=1)
    it.allocate_tensors()
    run(it, np.zeros((1, *it.get_input_details()[0]["shape"][1:])))
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        it.invoke()
        times.append((time.perf_counter() - t0) * 1e3)
    return float(np.median(times))


def check_digits(cls, out, cv2):
    data = np.load(out / "data" / "digits_test.npz")
    acc, its = {}, {}
    for name in ("digits_float", "digits_int8", "digits_slow_int8"):
        it = its[name] = cls(model_path=str(out / f"{name}.tflite"))
        it.allocate_tensors()
        pred = np.array([run(it, x[None])[0].argmax() for x in data["x"]])
        acc[name] = (pred == data["y"]).mean()
        print(f"{name}.tflite: held-out accuracy {acc[name]:.4f} on {len(pred)} samples")
    # The heavy variant stands in for digits_int8 in update tests: as accurate, far slower.
    assert acc["digits_slow_int8"] >= min(0.9, acc["digits_int8"] - 0.03), acc
    fast, slow = (
        median_invoke_ms(cls, out / f"{n}.tflite") for n in ("digits_int8", "digits_slow_int8")
    )
    print(
        f"median invoke, 1 thread: digits_int8 {fast:.4f} ms, digits_slow_int8 {slow:.4f} ms"
        f" ({slow / fast:.0f}x)"
    )
    assert slow >= 20 * fast
    for label in DIGITS_SAMPLES if cv2 else ():  # the path `infer` takes for a PNG
        img = cv2.imread(str(out / "samples" / f"digit_{label}.png"), cv2.IMREAD_GRAYSCALE)
        small = cv2.resize(img, (8, 8), interpolation=cv2.INTER_AREA).astype(np.float32)
        for name in ("digits_int8", "digits_slow_int8"):
            got = int(run(its[name], (small * 16 / 255)[None, :, :, None])[0].argmax())
            print(f"samples/digit_{label}.png -> {got} ({name})")
            assert got == label


def check_edgetpu(cls, out):
    try:
        cls(model_path=str(out / "digits_int8_edgetpu.tflite")).allocate_tensors()
    except Exception as e:  # report whatever the runtime raises
        print(
            f"digits_int8_edgetpu.tflite fails as intended: "
            f"{type(e).__module__}.{type(e).__name__}: {e}"
        )
        assert "edgetpu-custom-op" in str(e)
    else:
        raise AssertionError("the edgetpu model loaded without libedgetpu")


def check_sensor(cls, out):
    threshold = json.loads((out / "sensor_anomaly_int8.json").read_text())["decode"]["threshold"]
    data = np.load(out / "data" / "sensor_windows.npz")
    path = out / "sensor_anomaly_int8.tflite"
    normal, anomalous = (run_int8(cls, path, data[k])[0] for k in ("normal", "anomalous"))
    print(
        f"sensor threshold {threshold}: normal max {normal.max():.4f}, anomalous min "
        f"{anomalous.min():.4f}\n  anomalous scores {np.round(anomalous.astype(float), 3)}"
    )
    assert normal.max() < threshold < anomalous.min()


def expected_detections():
    """{cell: (class, source-pixel box [ymin, xmin, ymax, xmax])} for the scene."""
    scale = 96 / max(SCENE_W, SCENE_H)
    pad_x, pad_y = (96 - SCENE_W * scale) / 2, (96 - SCENE_H * scale) / 2
    cells = {}
    for (x0, y0, x1, y1), cls in ((SCENE_RED, 0), (SCENE_GREEN, 1)):
        for r in range(int((y0 * scale + pad_y) // 24), int((y1 * scale + pad_y) // 24)):
            for c in range(int((x0 * scale + pad_x) // 24), int((x1 * scale + pad_x) // 24)):
                box = [
                    (r * 24 - pad_y) / scale,
                    (c * 24 - pad_x) / scale,
                    ((r + 1) * 24 - pad_y) / scale,
                    ((c + 1) * 24 - pad_x) / scale,
                ]
                cells[r * 4 + c] = (cls, [round(v, 3) for v in box])
    return cells


def check_detector(cls, out, cv2):
    print("detector scene, expected (cell: class, source-pixel box [ymin, xmin, ymax, xmax]):")
    for cell, (c, box) in expected_detections().items():
        print(f"  cell {cell} (row {cell // 4}, col {cell % 4}): {['red', 'green'][c]} {box}")
    details = []
    for name in ("detector_int8.tflite", "detector_int8_reordered.tflite"):
        it = cls(model_path=str(out / name))
        it.allocate_tensors()
        details.append([(d["name"], d["shape"].tolist()) for d in it.get_output_details()])
        print(f"{name} outputs: {details[-1]}")
        if not cv2:
            continue
        img = cv2.imread(str(out / "samples" / "detector_scene.png"))
        img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
        scale = 96 / max(img.shape[:2])
        w, h = round(img.shape[1] * scale), round(img.shape[0] * scale)
        canvas = np.zeros((96, 96, 3), np.uint8)  # centred letterbox, black bars
        y0, x0 = (96 - h) // 2, (96 - w) // 2
        canvas[y0 : y0 + h, x0 : x0 + w] = cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA)
        outs = {}  # by shape; scores and classes share one, but classes are integral
        for y in run(it, canvas[None] / 255.0):
            outs[
                "boxes"
                if y.ndim == 3
                else "count"
                if y.ndim == 1
                else "classes"
                if np.all(y == np.round(y))
                else "scores"
            ] = y
        hits = np.flatnonzero(outs["scores"][0] > 0.5)
        found = {int(i): int(outs["classes"][0, i]) for i in hits}
        print(
            f"  scene -> cells {found}, count {outs['count']}, scores "
            f"{np.round(outs['scores'][0].astype(float), 3)}"
        )
        assert found == {i: c for i, (c, _) in expected_detections().items()}
        assert np.allclose(outs["boxes"][0, 5], [0.25, 0.25, 0.5, 0.5])
    (a, b) = details
    assert [s for _, s in a] != [s for _, s in b] and not {n for n, _ in a} & {n for n, _ in b}


def check_decoder_models(cls, out):
    """The post-process op, YOLO heads and sensor classifier give what they were built to."""
    grid = np.zeros((1, SSD_SIZE, SSD_SIZE, 3), np.float32)
    grid[:, 24:48, 0:48, 0] = 1.0  # red cells (1,0), (1,1)
    grid[:, 24:72, 72:96, 1] = 1.0  # green cells (1,3), (2,3)
    for name in ("ssd_postprocess_uint8.tflite", "ssd_postprocess_uint8_reordered.tflite"):
        it = cls(model_path=str(out / name))
        it.allocate_tensors()
        outs = run(it, grid)
        count = next(o for o in outs if o.shape == (1,))
        # Classes and scores share a shape; class ids are whole numbers. Entries past the
        # count are left unwritten by the op.
        n = int(count[0])
        classes = next(o for o in outs if o.shape == (1, 10) and np.all(o[0, :n] % 1 == 0))
        print(f"{name}: count {n}, classes {classes[0, :n]}")
        assert n == 4 and sorted(classes[0, :n].tolist()) == [0, 0, 1, 1]
    for name in ("yolov8_toy_int8.tflite", "yolov5_toy_f32.tflite", "yolov8_bench_640_f32.tflite"):
        it = cls(model_path=str(out / name))
        it.allocate_tensors()
        size = int(it.get_input_details()[0]["shape"][1])
        scene = np.zeros((1, size, size, 3), np.float32)
        scene[:, : size // 4, : size // 4, 0] = 1.0  # red top-left quarter
        (y,) = run(it, scene)
        pred = y[0] if y.shape[1] > y.shape[2] else y[0].T  # (N, fields)
        fields = pred.shape[1] - YOLO_CLASSES
        best = int(np.argmax(pred[:, fields:].max(1)))
        cx, cy = pred[best, :2] / (size if fields == 5 else 1)
        print(f"{name}: best candidate class {int(np.argmax(pred[best, fields:]))} at {cx, cy}")
        assert np.argmax(pred[best, fields:]) == 0 and cx < 0.25 and cy < 0.25
    data = np.load(out / "data" / "sensor_classes.npz")
    it = cls(model_path=str(out / "sensor_classifier_int8.tflite"))
    it.allocate_tensors()
    guesses = [int(np.argmax(run(it, w[None])[0])) for w in data["windows"]]
    accuracy = float(np.mean(np.array(guesses) == data["labels"]))
    print(f"sensor_classifier_int8: held-out accuracy {accuracy:.3f}")
    assert accuracy > 0.9


def check(out, cls):
    print(f"\n== checking {out} with {cls.__module__}.{cls.__name__}")
    try:
        import cv2
    except ImportError:
        cv2 = None
        print("opencv not installed: sample image checks skipped")
    for manifest in sorted(out.glob("*.json")):
        m = json.loads(manifest.read_text())
        assert hashlib.sha256((out / m["file"]).read_bytes()).hexdigest() == m["sha256"], manifest
    check_mobilenet(cls, out)
    check_digits(cls, out, cv2)
    check_edgetpu(cls, out)
    check_sensor(cls, out)
    check_detector(cls, out, cv2)
    check_decoder_models(cls, out)
    print("\n== summary")
    for path in sorted(out.glob("*.tflite")):
        print(f"{path.name}  {path.stat().st_size} bytes")
        try:
            it = cls(model_path=str(path))
            it.allocate_tensors()
        except Exception as e:
            print(f"  cannot load here: {type(e).__name__}")
            continue
        for kind, d in [("in", d) for d in it.get_input_details()] + [
            ("out", d) for d in it.get_output_details()
        ]:
            q = qparams(d)
            print(
                f"  {kind:3} {d['name']:31} {np.dtype(d['dtype']).name:7} "
                f"shape={d['shape'].tolist()} signature={d['shape_signature'].tolist()} "
                + (f"scale={q[0]:.6g} zp={q[1]}" if q else "float")
            )


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path("models"))
    ap.add_argument("--check", action="store_true", help="only verify, without TensorFlow")
    ap.add_argument(
        "--only",
        action="append",
        choices=BUILDS,
        metavar="NAME",
        help=f"build only this (repeatable; one of {', '.join(BUILDS)}), then check all",
    )
    args = ap.parse_args()
    if not args.check:
        build(args.out, args.only)
    check(args.out, interpreter_class())


if __name__ == "__main__":
    main()
