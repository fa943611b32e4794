"""Inference runtime candidates for prediction: model-only images/s and top-1 agreement with eager PyTorch fp32.

    .venv/bin/python bench/predict_runtimes.py [--images DIR] [--models lite0,resnet18] [--compile]

Every candidate gets the same uint8 crops of the same real photos (default: the hymenoptera set) through
worker.core.runtimes.Normalized, in batches of 32, on torch's thread count (the cores). Models: the ImageNet-trained
EfficientNet-Lite0 with its 1000 classes (near-ties are common, so a runtime that changes results shows it) and
ResNet-18 (random weights here: the speed target; its agreement figure says little). A candidate whose package is
not installed is reported as skipped: onnxruntime and onnx are not Graft dependencies (pip install them to compare).
Graft adopts a candidate only with >= 99.5 % top-1 agreement (issue 3).
"""
from __future__ import annotations

import argparse
import copy
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
HYMENOPTERA = ROOT.parent / "shared" / "datasets" / "hymenoptera"

import numpy as np  # noqa: E402
import torch  # noqa: E402

Fn = Callable[[np.ndarray], np.ndarray]
BATCH = 32


def crops(paths: list[Path], prep) -> np.ndarray:  # noqa: ANN001 - a Preprocessing
    """uint8 (N, crop, crop, 3) eval crops, exactly as the predict path makes them."""
    from graft.worker.core.images import decode_image
    from graft.worker.core.predict import crop_batch

    return crop_batch([decode_image(p, prep.resize) for p in paths], prep)


def run(fn: Fn, x: np.ndarray) -> np.ndarray:
    return np.concatenate([np.asarray(fn(x[i : i + BATCH]), dtype=np.float32) for i in range(0, len(x), BATCH)])


def speed(fn: Fn, x: np.ndarray, passes: int) -> tuple[float, np.ndarray]:
    """Best images/s over passes (after a warm-up batch) and the logits."""
    fn(x[:BATCH])
    best, out = 0.0, None
    for _ in range(passes):
        t0 = time.perf_counter()
        out = run(fn, x)
        best = max(best, len(x) / (time.perf_counter() - t0))
    return best, out


def torch_fn(net: torch.nn.Module) -> Fn:
    def fn(batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return net(torch.from_numpy(batch)).float().numpy()
    return fn


def normalized(model: torch.nn.Module, prep, dtype: torch.dtype = torch.float32) -> torch.nn.Module:  # noqa: ANN001
    from graft.worker.core.runtimes import Normalized

    return Normalized(model, prep.mean, prep.std, dtype).eval()


def plain(model: torch.nn.Module) -> torch.nn.Module:
    """A Classifier as one Sequential (stages, pool, head), which FX can trace without its frozen_stages argument."""
    return torch.nn.Sequential(*model.stages, torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(1), model.head).eval()


def candidates(model: torch.nn.Module, prep, x: np.ndarray, compile_: bool) -> dict[str, Callable[[], Fn]]:  # noqa: ANN001
    """name -> factory of the batch function (the factory's time is the candidate's setup cost)."""
    from graft.worker.core.predict import bf16_native, optimize_for_cpu
    from graft.worker.core.runtimes import OpenVINORunner, import_openvino

    folded = optimize_for_cpu(model)
    example = torch.from_numpy(x[:2])

    def jit() -> Fn:
        with torch.inference_mode(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(normalized(folded, prep), example)
            return torch_fn(torch.jit.optimize_for_inference(torch.jit.freeze(traced.eval())))

    def inductor() -> Fn:
        import torch._inductor.config as inductor_config

        inductor_config.freezing = True
        compiled = torch.compile(normalized(folded, prep), dynamic=False)
        fn = torch_fn(compiled)
        fn(x[:BATCH])  # compiles for the batch shape
        return fn

    def ort() -> Fn:
        import io

        import onnxruntime

        buffer = io.BytesIO()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(normalized(model, prep), (example,), buffer, dynamo=False, input_names=["x"],
                              dynamic_axes={"x": {0: "n"}}, opset_version=17)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = torch.get_num_threads(), 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        session = onnxruntime.InferenceSession(buffer.getvalue(), options, providers=["CPUExecutionProvider"])
        return lambda batch: session.run(None, {"x": batch})[0]

    def openvino_bf16() -> Fn:
        ov = import_openvino()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            converted = ov.convert_model(normalized(model, prep), example_input=example,
                                         input=[([-1, prep.crop, prep.crop, 3], ov.Type.u8)])
        compiled = ov.Core().compile_model(converted, "CPU", {"INFERENCE_PRECISION_HINT": "bf16",
                                                              "INFERENCE_NUM_THREADS": torch.get_num_threads()})
        request = compiled.create_infer_request()
        return lambda batch: request.infer({0: batch})[0].copy()

    def int8() -> Fn:
        from torch.ao.quantization import get_default_qconfig_mapping
        from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

        torch.backends.quantized.engine = "x86"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            net = plain(copy.deepcopy(model)).to(memory_format=torch.contiguous_format)
            prepared = prepare_fx(net, get_default_qconfig_mapping("x86"), example_inputs=(torch.zeros(1, 3, 224, 224),))
            calibrate = normalized(prepared, prep)
            with torch.inference_mode():
                for i in range(0, min(len(x), 128), BATCH):  # calibration: the first 128 images
                    calibrate(torch.from_numpy(x[i : i + BATCH]))
            return torch_fn(normalized(convert_fx(prepared), prep))

    out: dict[str, Callable[[], Fn]] = {
        "torch fp32 eager (reference)": lambda: torch_fn(normalized(model, prep)),
        "torch fp32 BN-folded channels-last": lambda: torch_fn(normalized(folded, prep)),
        "torch.jit trace+freeze+optimize fp32": jit,
    }
    if compile_:
        out["torch.compile inductor freezing fp32"] = inductor
    out["onnxruntime fp32 (CPU EP)"] = ort
    out["openvino fp32 (Graft default)"] = lambda: OpenVINORunner(normalized(model, prep), prep.crop,
                                                                   torch.get_num_threads())
    if bf16_native():
        out["torch bf16 BN-folded"] = lambda: torch_fn(normalized(copy.deepcopy(folded).to(torch.bfloat16), prep,
                                                                  torch.bfloat16))
        out["openvino bf16"] = openvino_bf16
    out["torch int8 x86 (FX PTQ, 128 calib.)"] = int8
    return out


def evaluate(title: str, model: torch.nn.Module, prep, x: np.ndarray, passes: int, compile_: bool) -> None:  # noqa: ANN001
    print(f"\n== {title}: {len(x)} images, batch {BATCH}, {torch.get_num_threads()} threads,"
          f" load {os.getloadavg()[0]:.2f}", flush=True)
    print(f"  {'candidate':40s} {'images/s':>9s} {'top-1 agree':>12s} {'max|dp|':>9s} {'setup s':>8s}")
    reference = None
    for name, factory in candidates(model, prep, x, compile_).items():
        try:
            t0 = time.perf_counter()
            fn = factory()
            setup = time.perf_counter() - t0
            ips, logits = speed(fn, x, passes)
        except ImportError as exc:
            print(f"  {name:40s} skipped: {exc}")
            continue
        except Exception as exc:  # noqa: BLE001 - one failing candidate must not end the comparison
            print(f"  {name:40s} failed: {type(exc).__name__}: {str(exc)[:200]}")
            continue
        if reference is None:
            reference = logits
        agree = float(np.mean(logits.argmax(1) == reference.argmax(1)))
        dp = float((torch.softmax(torch.from_numpy(logits), 1) - torch.softmax(torch.from_numpy(reference), 1)).abs().max())
        print(f"  {name:40s} {ips:9.1f} {agree * 100:11.2f}% {dp:9.1e} {setup:8.1f}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=Path, default=HYMENOPTERA, help="folder of real JPEG photos")
    parser.add_argument("--models", default="lite0,resnet18", help="comma-separated: lite0, resnet18")
    parser.add_argument("--passes", type=int, default=2, help="timed passes per candidate (best is shown)")
    parser.add_argument("--compile", action="store_true", help="also torch.compile (minutes of compiling)")
    args = parser.parse_args(argv)

    from graft.worker.core.backbones import BACKBONES, WeightsNotFound, build_model, lite0_imagenet
    from graft.worker.core.transforms import Preprocessing

    paths = sorted(p for p in args.images.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg"))
    if not paths:
        sys.exit(f"no JPEGs below {args.images}")
    print(f"{len(paths)} photos from {args.images}; cores {os.cpu_count()}; torch {torch.__version__}")
    models = args.models.split(",")
    if "lite0" in models:
        info = BACKBONES["efficientnet_lite0"]
        prep = Preprocessing.for_size(224, info.mean, info.std)
        try:
            lite0 = build_model("efficientnet_lite0", 1000, pretrained=True)
            lite0.head.load_state_dict(lite0_imagenet()._fc.state_dict())
            evaluate("EfficientNet-Lite0, ImageNet weights, 1000 classes", lite0.eval(), prep, crops(paths, prep),
                     args.passes, args.compile)
        except (WeightsNotFound, ImportError) as exc:
            print(f"lite0 skipped: {exc}")
    if "resnet18" in models:
        info = BACKBONES["resnet18"]
        prep = Preprocessing.for_size(224, info.mean, info.std)
        try:
            net, weights = build_model("resnet18", 1000, pretrained=True), "ImageNet trunk, random 1000-class head"
        except WeightsNotFound:
            torch.manual_seed(0)
            net, weights = build_model("resnet18", 2, pretrained=False), "random weights, 2 classes"
        evaluate(f"ResNet-18, {weights}", net.eval(), prep, crops(paths, prep), args.passes, args.compile)
    print(f"\nload average after: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
