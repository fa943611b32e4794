"""The one home of every request parameter (training, predict, a server dataset): name, type, default, bounds, help.

The API's request schemas (api.schemas, which also generate the OpenAPI document), the worker's TrainSpec
defaults (worker.core.spec) and the `graft train` options (cli.main) are all derived from the tables here;
tests/unit/test_params.py checks they agree.
Standard library only, so the API, the worker and the CLI can all import it cheaply.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# The label a prediction gets when reject_ood or a threshold rejects it: the worker sets it, the CLI and summaries
# read it (a pure module, so neither needs torch to know it).
UNKNOWN = "unknown"

BACKBONES = ("resnet18", "efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")
"""Names of the pretrained trunks (keys of worker.core.backbones.BACKBONES)."""
AUTO_BACKBONE = "auto"
"""The backbone choice that lets the worker pick the largest EfficientNet-Lite that fits the time budget."""
MODES = ("auto", "linear", "finetune", "full")
"""Training modes: auto picks; linear trains the head only; finetune unfreezes the last stages; full trains all."""
PRECISIONS = ("fp32", "bf16")
"""Inference precisions; bf16 (eager PyTorch only) is ~2x faster with native bf16, top-1 may differ on near-ties."""
RUNTIMES = ("openvino", "torch")
"""fp32 inference runtimes (worker.core.runtimes); bf16 always runs on torch."""


@dataclass(frozen=True)
class Param:
    """One request parameter: what the API accepts, the worker defaults to, and the CLI offers."""

    name: str
    type: type
    default: Any = None
    required: bool = False
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[Any, ...] | None = None
    nullable: bool = False
    max_length: int | None = None  # characters of a str
    help: str = ""
    flag: str | None = None  # the CLI option when it is not --name-with-dashes (kept short or historic: --lr)
    cli: bool = True  # offered as a generated CLI option (data sources have their own positional/--dataset)

    @property
    def option(self) -> str:
        """The CLI option: the explicit flag, --no-NAME for a bool that defaults to true, else --NAME."""
        if self.flag is not None:
            return self.flag
        dashed = self.name.replace("_", "-")
        return f"--no-{dashed}" if self.type is bool and self.default is True else f"--{dashed}"


DATA_SOURCES = ("data_dir", "dataset_id")
"""The training parameters that say where the images are (exactly one is given)."""
JOB_OPTIONS = ("callback_url", "model_name")
"""Parameters about the job, not the training (kept out of TrainSpec); the rest are hyper-parameters."""

CALLBACK_URL = Param("callback_url", str, None, nullable=True,
                     help="an http(s) URL that gets a POST of the job when it ends, signed with your webhook secret; "
                          "internal addresses only where GRAFT_WEBHOOK_ALLOW names them")

TRAIN_PARAMS: tuple[Param, ...] = (
    Param("data_dir", str, None, nullable=True, cli=False,
          help="a folder on the server under a train root (or give dataset_id)"),
    Param("dataset_id", str, None, nullable=True, cli=False, help="an uploaded dataset's id (or give data_dir)"),
    Param("model_name", str, None, nullable=True, max_length=200,
          help="the model's name (unset: the dataset's or folder's name and the backbone)"),
    Param("backbone", str, AUTO_BACKBONE, choices=(AUTO_BACKBONE, *BACKBONES),
          help="the trunk to transfer from; auto: the largest EfficientNet-Lite whose measured cost fits half the time budget (unset: a minute)"),
    Param("pretrained", bool, True, help="whether to start from ImageNet weights (false: random ones)"),
    Param("epochs", int, 10, minimum=1, maximum=500, help="most epochs to train"),
    Param("batch_size", int, 32, minimum=1, maximum=1024, help="images per training step"),
    Param("learning_rate", float, 1e-3, minimum=1e-7, maximum=1.0, flag="--lr",
          help="peak learning rate (the trunk's is a tenth of it when pretrained)"),
    Param("image_size", int, None, minimum=32, maximum=1024, nullable=True,
          help="side of the square input images, in pixels (unset: the backbone's own: 224, Lite1 240, Lite2 260)"),
    Param("val_split", float, 0.2, minimum=0.0, maximum=0.9, help="fraction of each class held out for validation"),
    Param("seed", int, 0, minimum=0, maximum=2**31 - 1,
          help="random seed of the validation split, augmentation and weights"),
    Param("freeze_epochs", int, None, minimum=0, maximum=500, nullable=True,
          help="head-only epochs before fine-tuning (unset: 40% of the epochs, at least 1, when pretrained)"),
    Param("mode", str, "auto", choices=MODES, help="which layers train: auto, linear, finetune or full"),
    Param("time_budget_s", float, None, minimum=1.0, maximum=7 * 24 * 3600, nullable=True, flag="--time-budget",
          help="wall-time budget in seconds (unset: 600 in auto mode, no limit in the others)"),
    Param("patience", int, 3, minimum=0, maximum=500,
          help="fine-tune epochs without a better val accuracy before stopping early (0: never)"),
    Param("views", int, 3, minimum=0, maximum=16, help="augmented views cached per training image"),
    Param("refit", bool, True, help="after choosing epochs and head regularisation on held-out images, train the "
          "final model again on every labelled image (the reported accuracy stays the held-out one)"),
    CALLBACK_URL,
)
"""Every parameter of a training request, in the order the API and the CLI list them."""

PREDICT_PARAMS: tuple[Param, ...] = (
    Param("model_id", str, required=True, help="the trained model to predict with"),
    Param("input_dir", str, None, nullable=True, help="a folder on the server (or give upload_id or files)"),
    Param("upload_id", str, None, nullable=True, help="an uploaded archive's id"),
    Param("top_k", int, 1, minimum=1, maximum=1000, help="classes reported per image"),
    Param("threshold", float, None, minimum=0.0, maximum=1.0, nullable=True,
          help="below this top-1 probability an image is reported as unknown"),
    Param("target_precision", float, None, minimum=0.5, maximum=1.0, nullable=True,
          help="per class, report as unknown the images below the confidence at which that class reached this "
               "precision on the model's validation split"),
    Param("reject_ood", bool, True,
          help="label images unlike the training images (ood_score above the model's threshold) unknown"),
    Param("recursive", bool, True, help="also classify images in subfolders"),
    Param("chunk_size", int, 256, minimum=1, maximum=100_000, help="images per chunk of a batch job"),
    Param("precision", str, "fp32", choices=PRECISIONS, help="inference precision"),
    Param("tta", bool, False, help="test-time augmentation: average each image's and its mirror image's "
          "probabilities (twice the compute)"),
    Param("runtime", str, None, nullable=True, choices=RUNTIMES,
          help="fp32 inference runtime (bf16 always runs on torch); unset: the server's default"),
    CALLBACK_URL,
)
"""Every parameter of a predict request."""

DATASET_PATH_PARAMS: tuple[Param, ...] = (
    Param("path", str, required=True, cli=False,
          help="a folder on the server under GRAFT_DATA_ROOTS, inspected in place"),
    Param("name", str, None, nullable=True, cli=False,
          help="the dataset's name (default: the folder's or the archive's name)"),
)
"""The JSON body of POST /datasets that names a server folder (an upload sends multipart instead)."""

HYPER_PARAMS: tuple[Param, ...] = tuple(p for p in TRAIN_PARAMS if p.name not in DATA_SOURCES + JOB_OPTIONS)
"""The training parameters that are hyper-parameters (TrainSpec fields), not data sources or job options."""


def train_defaults() -> dict[str, Any]:
    """Name -> default of every training hyper-parameter."""
    return {p.name: p.default for p in HYPER_PARAMS}
